// One package for every device index: the CUDA device index Inductor writes into generated
// code, found and rewritten. The forms are listed in docs/device-index.md; the Python adapter
// (python/megacache/torch/devices.py) applies the rewrite to torch's objects.
#include <algorithm>
#include <cctype>
#include <set>

#include "megacache/precompile.h"

namespace megacache::precompile {
namespace {

// Each form Inductor writes a CUDA device index in: the text before the digits, and what
// must follow them. Nothing else in generated code names a device by number.
struct IndexForm {
  std::string_view before;
  std::string_view after;  // one of these characters must follow the digits
};

constexpr IndexForm kForms[] = {
    {"_DeviceGuard(", ")"},         // the wrapper's `with torch.cuda._DeviceGuard(0):`
    {"set_device(", ")"},           // `torch.cuda.set_device(0)`
    {"get_raw_stream(", ")"},       // `stream0 = get_raw_stream(0)`
    {"type='cuda', index=", ",)"},  // DeviceProperties(...) and device(...) literals
    {"cuda:", ""},                  // "cuda:0" in strings and graph comments
};

bool is_identifier_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
}

// One device index in `text`: where its digits are and their value.
struct Mention {
  size_t digits_begin;
  size_t digits_end;
  int index;
};

// Every mention of a device index in `text`, in order of position.
std::vector<Mention> mentions_of(std::string_view text) {
  std::vector<Mention> found;
  for (const IndexForm& form : kForms) {
    for (size_t at = text.find(form.before); at != std::string_view::npos;
         at = text.find(form.before, at + 1)) {
      // Inside a longer name ("offset_device(2)", "xcuda:1") it is not a device.
      if (at > 0 && is_identifier_char(text[at - 1])) continue;
      size_t begin = at + form.before.size();
      size_t end = begin;
      // Device indices are small: at most 4 digits, so the value cannot overflow.
      while (end < text.size() && end - begin < 5 &&
             std::isdigit(static_cast<unsigned char>(text[end])))
        ++end;
      if (end == begin || end - begin > 4) continue;
      if (end < text.size() && std::isdigit(static_cast<unsigned char>(text[end]))) continue;
      // Inductor writes an index without leading zeros; "cuda:00" is not one of its forms, and
      // rewriting it could not be undone exactly (cuda:00 -> cuda:7 -> cuda:0).
      if (end - begin > 1 && text[begin] == '0') continue;
      if (!form.after.empty() &&
          (end >= text.size() || form.after.find(text[end]) == std::string_view::npos))
        continue;
      if (form.after.empty() && end < text.size() && is_identifier_char(text[end])) continue;
      found.push_back({begin, end, std::stoi(std::string(text.substr(begin, end - begin)))});
    }
  }
  std::sort(found.begin(), found.end(),
            [](const Mention& a, const Mention& b) { return a.digits_begin < b.digits_begin; });
  return found;
}

}  // namespace

std::vector<int> cuda_device_indices(std::string_view text) {
  std::set<int> indices;
  for (const Mention& mention : mentions_of(text)) indices.insert(mention.index);
  return {indices.begin(), indices.end()};
}

Result<std::string> remap_cuda_device(std::string_view text, int from, int to) {
  if (from < 0 || to < 0 || from > 9999 || to > 9999) {
    return Status::InvalidArgument("device indices must be between 0 and 9999, got " +
                                   std::to_string(from) + " and " + std::to_string(to));
  }
  std::string out;
  out.reserve(text.size() + 64);
  size_t copied = 0;
  const std::string replacement = std::to_string(to);
  for (const Mention& mention : mentions_of(text)) {
    if (mention.index != from) {
      return Status::InvalidArgument(
          "the generated code names cuda:" + std::to_string(mention.index) + " as well as cuda:" +
          std::to_string(from) + " (at byte " + std::to_string(mention.digits_begin) +
          "); code compiled for several GPUs is not moved to another one");
    }
    out.append(text.substr(copied, mention.digits_begin - copied));
    out.append(replacement);
    copied = mention.digits_end;
  }
  out.append(text.substr(copied));
  return out;
}

Result<std::vector<std::string>> triton_kernel_sources(std::string_view source) {
  constexpr std::string_view kCall = "async_compile.triton(";
  constexpr std::string_view kQuotes = "'''";
  std::vector<std::string> kernels;
  for (size_t at = source.find(kCall); at != std::string_view::npos;
       at = source.find(kCall, at + 1)) {
    // async_compile.triton('name', '''<source>''', device_str='cuda')
    size_t name_end = source.find(", '''", at + kCall.size());
    size_t line_end = source.find('\n', at);
    if (name_end == std::string_view::npos || name_end > line_end)
      continue;  // a call, not a kernel
    size_t begin = name_end + 2 + kQuotes.size();
    size_t end = source.find(kQuotes, begin);
    if (end == std::string_view::npos) {
      return Status::Corruption(begin,
                                "the Triton kernel literal that starts here has no closing '''");
    }
    std::string_view literal = source.substr(begin, end - begin);
    if (literal.find('\\') != std::string_view::npos) {
      // Its Python value would differ from its text; megacache does not decode escapes.
      return Status::InvalidArgument("the Triton kernel literal at byte " + std::to_string(begin) +
                                     " contains a backslash escape");
    }
    kernels.emplace_back(literal);
    at = end;
  }
  return kernels;
}

}  // namespace megacache::precompile
