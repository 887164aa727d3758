// RESP2 replies and refs under reader-set limits (redis_protocol.h).
#include "store/redis_protocol.h"

#include <algorithm>
#include <new>

#include "util/hash.h"
#include "util/utf8.h"

namespace megacache::store::redis {
namespace {

// One pass over a reply. With `build` false it only checks and measures, so that a reply
// still arriving is never materialized again and again; with `build` true (run once the
// reply is known complete and valid) it fills the Reply and cannot fail.
class ReplyParser {
 public:
  ReplyParser(std::string_view bytes, const ReplyLimits& limits)
      : bytes_(bytes), limits_(limits), elements_left_(limits.max_elements) {}

  ParseState parse(size_t& pos, int depth, Reply* out) {
    if (pos >= bytes_.size()) return incomplete_or_too_long(pos);
    const char type = bytes_[pos++];
    std::string_view line;
    if (ParseState state = read_line(pos, line); state != ParseState::kComplete) return state;
    switch (type) {
      case '+':
      case '-':
        if (out) {
          out->type = type == '+' ? Reply::Type::kStatus : Reply::Type::kError;
          out->text.assign(line);
        }
        return ParseState::kComplete;
      case ':': {
        int64_t value = 0;
        if (!parse_integer(line, value)) return invalid("an integer reply is not a number");
        if (out) {
          out->type = Reply::Type::kInteger;
          out->integer = value;
        }
        return ParseState::kComplete;
      }
      case '$':
        return parse_bulk(pos, line, out);
      case '*':
        return parse_array(pos, depth, line, out);
      default:
        return invalid("unknown reply type byte " +
                       std::to_string(static_cast<unsigned char>(type)));
    }
  }

  const std::string& error() const { return error_; }

 private:
  ParseState parse_bulk(size_t& pos, std::string_view header, Reply* out) {
    int64_t length = 0;
    if (!parse_integer(header, length) || length < -1)
      return invalid("a bulk length is not a length");
    if (length == -1) {
      if (out) out->type = Reply::Type::kNil;
      return ParseState::kComplete;
    }
    // Checked against the limit before waiting for the bytes: a server that announces
    // gigabytes is refused at the header, not after buffering them.
    const uint64_t needed = static_cast<uint64_t>(length) + 2;
    if (static_cast<uint64_t>(length) > limits_.max_bulk_bytes || needed > limits_.max_bytes ||
        pos > limits_.max_bytes - needed) {
      return invalid("a bulk reply of " + std::to_string(length) + " bytes exceeds the " +
                     std::to_string(std::min(limits_.max_bulk_bytes, limits_.max_bytes)) +
                     " bytes this reply may hold");
    }
    if (bytes_.size() - pos < needed) return ParseState::kIncomplete;
    if (bytes_[pos + length] != '\r' || bytes_[pos + length + 1] != '\n') {
      return invalid("a bulk reply does not end with CRLF");
    }
    if (out) {
      out->type = Reply::Type::kString;
      out->text.assign(bytes_.substr(pos, static_cast<size_t>(length)));
    }
    pos += needed;
    return ParseState::kComplete;
  }

  ParseState parse_array(size_t& pos, int depth, std::string_view header, Reply* out) {
    int64_t count = 0;
    if (!parse_integer(header, count) || count < -1)
      return invalid("an array length is not a length");
    if (count == -1) {
      if (out) out->type = Reply::Type::kNil;
      return ParseState::kComplete;
    }
    if (static_cast<uint64_t>(count) > elements_left_) {
      return invalid("an array of " + std::to_string(count) + " elements exceeds the " +
                     std::to_string(limits_.max_elements) + " this reply may hold");
    }
    if (depth + 1 > kMaxReplyDepth) return invalid("arrays nest too deep");
    elements_left_ -= static_cast<uint64_t>(count);
    if (out) {
      out->type = Reply::Type::kArray;
      out->elements.resize(static_cast<size_t>(count));  // bounded by max_elements, and complete
    }
    for (int64_t i = 0; i < count; ++i) {
      const ParseState state =
          parse(pos, depth + 1, out ? &out->elements[static_cast<size_t>(i)] : nullptr);
      if (state != ParseState::kComplete) return state;
    }
    return ParseState::kComplete;
  }

  // The text from `pos` to the next CRLF, which must end within the reply's limit; `pos`
  // moves past the CRLF.
  ParseState read_line(size_t& pos, std::string_view& line) {
    const size_t window_end =
        static_cast<size_t>(std::min<uint64_t>(bytes_.size(), limits_.max_bytes));
    for (size_t i = pos; i < window_end; ++i) {
      if (bytes_[i] == '\n') return invalid("a reply line holds a bare LF");
      if (bytes_[i] != '\r') continue;
      if (i + 1 >= bytes_.size()) return incomplete_or_too_long(i + 1);
      if (i + 1 >= limits_.max_bytes) return too_long();
      if (bytes_[i + 1] != '\n') return invalid("a reply line holds a bare CR");
      line = bytes_.substr(pos, i - pos);
      pos = i + 2;
      return ParseState::kComplete;
    }
    return incomplete_or_too_long(window_end);
  }

  // All bytes up to `pos` were fine and more are needed: incomplete while the reply may still
  // grow, refused once it has reached its limit.
  ParseState incomplete_or_too_long(size_t pos) {
    return pos >= limits_.max_bytes ? too_long() : ParseState::kIncomplete;
  }

  ParseState too_long() {
    return invalid("the reply runs past the " + std::to_string(limits_.max_bytes) +
                   " bytes it may hold");
  }

  ParseState invalid(std::string why) {
    error_ = std::move(why);
    return ParseState::kInvalid;
  }

  // RESP integers: an optional '-' and 1 to 19 digits, within int64.
  static bool parse_integer(std::string_view text, int64_t& value) {
    const bool negative = !text.empty() && text.front() == '-';
    if (negative) text.remove_prefix(1);
    if (text.empty() || text.size() > 19) return false;
    uint64_t magnitude = 0;
    for (char c : text) {
      if (c < '0' || c > '9') return false;
      magnitude = magnitude * 10 + static_cast<uint64_t>(c - '0');
    }
    if (magnitude > static_cast<uint64_t>(INT64_MAX)) return false;
    value = negative ? -static_cast<int64_t>(magnitude) : static_cast<int64_t>(magnitude);
    return true;
  }

  std::string_view bytes_;
  const ReplyLimits& limits_;
  uint64_t elements_left_;
  std::string error_;
};

bool is_lower_hex(std::string_view text, size_t length) {
  return text.size() == length && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// Canonical decimal: what std::to_string writes, so one value has one spelling.
bool parse_decimal(std::string_view text, uint64_t& value) {
  if (text.empty() || text.size() > 19 || (text.size() > 1 && text.front() == '0')) return false;
  value = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<uint64_t>(c - '0');
  }
  return true;
}

template <typename Args>
void append_command_args(std::string& out, const Args& args) {
  out += '*';
  out += std::to_string(args.size());
  out += "\r\n";
  for (std::string_view arg : args) {
    out += '$';
    out += std::to_string(arg.size());
    out += "\r\n";
    out += arg;
    out += "\r\n";
  }
}

}  // namespace

ParseResult parse_reply(std::string_view bytes, const ReplyLimits& limits, Reply& reply) {
  ParseResult result;
  size_t pos = 0;
  ReplyParser checker(bytes, limits);
  result.state = checker.parse(pos, 0, nullptr);
  if (result.state == ParseState::kInvalid) result.error = checker.error();
  if (result.state != ParseState::kComplete) return result;
  result.consumed = pos;
  reply = Reply{};
  size_t build_pos = 0;
  ReplyParser builder(bytes.substr(0, pos), limits);
  (void)builder.parse(build_pos, 0, &reply);  // the same bytes just passed the check
  return result;
}

void append_command(std::string& out, std::initializer_list<std::string_view> args) {
  append_command_args(out, args);
}

void append_command(std::string& out, const std::vector<std::string_view>& args) {
  append_command_args(out, args);
}

uint64_t chunk_count(uint64_t size, uint64_t chunk_size) {
  return size == 0 ? 0 : size / chunk_size + (size % chunk_size != 0 ? 1 : 0);
}

Result<Ref> parse_ref(std::string_view text, uint64_t max_value_bytes) {
  std::string_view fields[4];
  size_t count = 0;
  while (count < 4) {
    const size_t space = text.find(' ');
    fields[count++] = text.substr(0, space);
    if (space == std::string_view::npos) {
      text = {};
      break;
    }
    text.remove_prefix(space + 1);
    if (count == 4) return Status::Corruption(0, "the ref has more than four fields");
  }
  if (count != 4)
    return Status::Corruption(0, "the ref has " + std::to_string(count) + " fields, not four");
  Ref ref;
  if (!is_lower_hex(fields[0], 32))
    return Status::Corruption(0, "the ref's id is not 32 hex digits");
  if (!parse_decimal(fields[1], ref.chunks))
    return Status::Corruption(0, "the ref's chunk count is not a number");
  if (!parse_decimal(fields[2], ref.size))
    return Status::Corruption(0, "the ref's size is not a number");
  if (!is_lower_hex(fields[3], 32))
    return Status::Corruption(0, "the ref's checksum is not 32 hex digits");
  ref.id.assign(fields[0]);
  ref.checksum.assign(fields[3]);
  if (ref.size > max_value_bytes) {
    return Status::Corruption(0, "the ref claims " + std::to_string(ref.size) +
                                     " bytes, over max_value_bytes (" +
                                     std::to_string(max_value_bytes) + ")");
  }
  if (ref.chunks > kMaxChunks) {
    return Status::Corruption(0, "the ref claims " + std::to_string(ref.chunks) + " chunks, over " +
                                     std::to_string(kMaxChunks));
  }
  // If any chunk size gives this count, the smallest one that could, ceil(size / chunks),
  // gives it too; so one division decides. It also rules out empty chunks (chunks > size)
  // and bytes without chunks.
  const bool consistent =
      ref.chunks == 0 ? ref.size == 0
                      : chunk_count(ref.size, chunk_count(ref.size, ref.chunks)) == ref.chunks;
  if (!consistent) {
    return Status::Corruption(0, "no chunk size cuts " + std::to_string(ref.size) + " bytes into " +
                                     std::to_string(ref.chunks) + " chunks");
  }
  return ref;
}

std::string format_ref(const Ref& ref) {
  return ref.id + " " + std::to_string(ref.chunks) + " " + std::to_string(ref.size) + " " +
         ref.checksum;
}

std::string value_checksum(std::string_view value) {
  const util::Xxh3Digest digest = util::xxh3_128(value);
  return util::hex(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

ReplyLimits ChunkAssembler::next_limits() const {
  // Chunk i may take what the ref's size leaves after the chunks received, less a byte for
  // each chunk after it. Nothing is left once the value is over-full: only nil and short
  // replies fit then.
  const uint64_t later_chunks = next_index_ + 1 < ref_.chunks ? ref_.chunks - next_index_ - 1 : 0;
  const uint64_t left = ref_.size > received_ ? ref_.size - received_ : 0;
  const uint64_t max_chunk = left > later_chunks ? left - later_chunks : 0;
  return ReplyLimits{max_chunk + kBulkOverheadBytes, 0, max_chunk};
}

ChunkAssembler::Verdict ChunkAssembler::add(Reply&& reply) {
  const uint64_t index = next_index_++;
  if (index >= ref_.chunks)
    return lose(Verdict::kInvalid, "more chunk replies than the ref's chunks");
  if (reply.type == Reply::Type::kNil) {
    return lose(Verdict::kMissing,
                "chunk " + std::to_string(index) + " is gone (expired or replaced)");
  }
  if (reply.type == Reply::Type::kError) {
    // The server's own words (WRONGTYPE when someone stored another type at the chunk's key),
    // cut short: an error reply may be as long as the chunk it stands for.
    constexpr size_t kMaxQuotedBytes = 200;
    return lose(Verdict::kInvalid,
                "chunk " + std::to_string(index) + " is an error reply (" +
                    util::printable(std::string_view(reply.text).substr(0, kMaxQuotedBytes)) + ")");
  }
  if (reply.type != Reply::Type::kString) {
    return lose(Verdict::kInvalid, "chunk " + std::to_string(index) + " is not a string");
  }
  const uint64_t length = reply.text.size();
  received_ += length;  // counted even when refused, so that later limits keep shrinking
  const bool last = index + 1 == ref_.chunks;
  if (length == 0) return lose(Verdict::kInvalid, "chunk " + std::to_string(index) + " is empty");
  if (index == 0) {
    first_chunk_bytes_ = length;
    // The first chunk's length is the writer's chunk size, unless it is the only chunk.
    if (!last && chunk_count(ref_.size, length) != ref_.chunks) {
      return lose(Verdict::kInvalid, "a first chunk of " + std::to_string(length) +
                                         " bytes does not cut " + std::to_string(ref_.size) +
                                         " bytes into " + std::to_string(ref_.chunks) + " chunks");
    }
  } else if (last ? length > first_chunk_bytes_ : length != first_chunk_bytes_) {
    return lose(Verdict::kInvalid, "chunk " + std::to_string(index) + " has " +
                                       std::to_string(length) + " bytes where the first has " +
                                       std::to_string(first_chunk_bytes_));
  }
  if (loss_ != Verdict::kAccepted) return loss_;
  // The ref's size passed max_value_bytes and a first chunk arrived: only now is the whole
  // value's memory taken, so a ref whose chunks are gone costs no allocation. The size is
  // bounded, but by a setting, not by this machine's memory: a value too big to hold here is
  // a miss like any other, never an exception out of a Store method.
  try {
    if (index == 0) value_.reserve(ref_.size);
    value_.append(reply.text);
  } catch (const std::bad_alloc&) {
    return lose(Verdict::kInvalid,
                "no memory for a value of " + std::to_string(ref_.size) + " bytes");
  }
  return Verdict::kAccepted;
}

ChunkAssembler::Verdict ChunkAssembler::lose(Verdict verdict, std::string why) {
  if (loss_ == Verdict::kAccepted) {
    loss_ = verdict;
    error_ = std::move(why);
    value_ = std::string();  // what was assembled is of no use now
  }
  return loss_;
}

Result<std::string> ChunkAssembler::finish() {
  if (loss_ == Verdict::kMissing) return Status::NotFound(error_);
  if (loss_ == Verdict::kInvalid) return Status::Corruption(0, error_);
  if (next_index_ != ref_.chunks || received_ != ref_.size) {
    return Status::Corruption(0, "the chunks hold " + std::to_string(received_) +
                                     " bytes, not the ref's " + std::to_string(ref_.size));
  }
  if (value_checksum(value_) != ref_.checksum)
    return Status::Corruption(0, "the value's checksum does not match its ref");
  return std::move(value_);
}

}  // namespace megacache::store::redis
