// The matrix products Inductor's Python wrapper hands to cuBLAS, read from its text, so the
// loading side can have cuBLAS load their kernels while torch installs a package
// (python/megacache/torch/warm_up.py). The forms read are in docs/matrix-products.md; the
// wrapper is read line by line, and nothing is evaluated but integer arithmetic on sizes.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <map>
#include <optional>

#include "megacache/precompile.h"

namespace megacache::precompile {
namespace {

constexpr size_t kMaxDims = 8;
// How deep a view's base is followed. Inductor writes a view of a name; the cap bounds the work
// on text it did not write.
constexpr int kMaxViewDepth = 4;
// More distinct products than the warm-up would ever run; the cap bounds the dedup's work.
constexpr size_t kMaxProducts = 256;
// A size or stride beyond any tensor's; the cap keeps every value a plain int64 in Python.
constexpr int64_t kMaxExtent = int64_t{1} << 48;

// How deep parentheses in a size may nest; the cap bounds the recursion on text Inductor did
// not write.
constexpr int kMaxExpressionDepth = 16;

// What the wrapper has declared of one name so far.
struct Declared {
  std::optional<TensorLayout> layout;  // none when a size is not known
  std::string dtype;                   // empty when unknown (a graph input)
};

// Every name the wrapper has bound so far: tensors with what is known of them, and integers: a
// size input's example value, and each symbol bound to one (`s77 = arg2_1`).
struct Names {
  std::map<std::string, Declared, std::less<>> tensors;
  std::map<std::string, int64_t, std::less<>> integers;
  // The example sizes of each tensor input, from get_args: what `arg3_1.size(0)` reads.
  std::map<std::string, std::vector<int64_t>, std::less<>> example_sizes;
};

std::string_view trim(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
    text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  return text;
}

bool is_identifier(std::string_view text) {
  if (text.empty() || std::isdigit(static_cast<unsigned char>(text.front()))) return false;
  return std::all_of(text.begin(), text.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
  });
}

// "a, f(b, c), d" split at its top-level commas, each part trimmed; a trailing comma adds no
// part. None for brackets that do not balance.
std::optional<std::vector<std::string_view>> split_arguments(std::string_view text) {
  std::vector<std::string_view> parts;
  int depth = 0;
  size_t begin = 0;
  for (size_t i = 0; i <= text.size(); ++i) {
    const char c = i < text.size() ? text[i] : ',';
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if (depth < 0) return std::nullopt;
    if (c == ',' && depth == 0) {
      std::string_view part = trim(text.substr(begin, i - begin));
      if (!part.empty())
        parts.push_back(part);
      else if (i < text.size())
        return std::nullopt;  // ", ," is no argument list
      begin = i + 1;
    }
  }
  if (depth != 0) return std::nullopt;
  return parts;
}

// The arguments of `text` when it is exactly one call of `function`: "function(<arguments>)".
std::optional<std::vector<std::string_view>> call_of(std::string_view text,
                                                     std::string_view function) {
  if (text.size() < function.size() + 2 || text.substr(0, function.size()) != function ||
      text[function.size()] != '(' || text.back() != ')') {
    return std::nullopt;
  }
  return split_arguments(text.substr(function.size() + 1, text.size() - function.size() - 2));
}

// The items of a tuple literal "(a, (1, 2), b)", or none for anything else.
std::optional<std::vector<std::string_view>> tuple_items(std::string_view text) {
  if (text.size() < 2 || text.front() != '(' || text.back() != ')') return std::nullopt;
  return split_arguments(text.substr(1, text.size() - 2));
}

// A size as the wrapper writes it, "512", "2*s27", "256*s27 + 1", "(s0 // 2)" or
// "arg3_1.size(0)", evaluated over the integers `names` holds. Every value on the way stays
// within kMaxExtent either side; anything else (an unbound symbol, another function, a division
// by zero) has no value.
class IntegerExpression {
 public:
  IntegerExpression(std::string_view text, const Names& names) : text_(text), names_(names) {}

  std::optional<int64_t> value() {
    std::optional<int64_t> result = sum(0);
    skip_spaces();
    if (at_ != text_.size()) return std::nullopt;
    return result;
  }

 private:
  // sum = product (("+" | "-") product)*
  std::optional<int64_t> sum(int depth) {
    std::optional<int64_t> left = product(depth);
    while (left) {
      if (take("+")) {
        left = bounded(left, product(depth), [](int64_t a, int64_t b, int64_t* r) {
          return __builtin_add_overflow(a, b, r);
        });
      } else if (take("-")) {
        left = bounded(left, product(depth), [](int64_t a, int64_t b, int64_t* r) {
          return __builtin_sub_overflow(a, b, r);
        });
      } else {
        break;
      }
    }
    return left;
  }

  // product = unary (("*" | "//") unary)*; "//" is Python's, rounding toward minus infinity.
  std::optional<int64_t> product(int depth) {
    std::optional<int64_t> left = unary(depth);
    while (left) {
      if (take("//")) {
        std::optional<int64_t> right = unary(depth);
        if (!right || *right == 0) return std::nullopt;
        const int64_t quotient = *left / *right;
        left = quotient - ((*left % *right != 0) && ((*left < 0) != (*right < 0)) ? 1 : 0);
      } else if (take("*")) {
        left = bounded(left, unary(depth), [](int64_t a, int64_t b, int64_t* r) {
          return __builtin_mul_overflow(a, b, r);
        });
      } else {
        break;
      }
    }
    return left;
  }

  // unary = "-" unary | "(" sum ")" | INT | NAME | NAME ".size(" INT ")"
  std::optional<int64_t> unary(int depth) {
    if (depth == kMaxExpressionDepth) return std::nullopt;
    if (take("-")) {
      std::optional<int64_t> operand = unary(depth + 1);
      if (!operand) return std::nullopt;
      return -*operand;
    }
    if (take("(")) {
      std::optional<int64_t> inner = sum(depth + 1);
      if (!take(")")) return std::nullopt;
      return inner;
    }
    skip_spaces();
    const size_t begin = at_;
    while (at_ < text_.size() &&
           (std::isalnum(static_cast<unsigned char>(text_[at_])) != 0 || text_[at_] == '_')) {
      ++at_;
    }
    const std::string_view word = text_.substr(begin, at_ - begin);
    if (word.empty()) return std::nullopt;
    if (std::isdigit(static_cast<unsigned char>(word.front())) != 0) {
      int64_t value = 0;
      auto [end, error] = std::from_chars(word.data(), word.data() + word.size(), value);
      if (error != std::errc() || end != word.data() + word.size() || value > kMaxExtent) {
        return std::nullopt;
      }
      return value;
    }
    if (take(".size(")) {
      std::optional<int64_t> dim = unary(depth + 1);
      auto sizes = names_.example_sizes.find(word);
      if (!take(")") || !dim || sizes == names_.example_sizes.end() || *dim < 0 ||
          static_cast<size_t>(*dim) >= sizes->second.size()) {
        return std::nullopt;
      }
      return sizes->second[*dim];
    }
    auto found = names_.integers.find(word);
    if (found == names_.integers.end()) return std::nullopt;
    return found->second;
  }

  // `operation` on two values that both exist, if it neither overflows nor leaves kMaxExtent.
  template <typename Operation>
  static std::optional<int64_t> bounded(std::optional<int64_t> left, std::optional<int64_t> right,
                                        Operation operation) {
    int64_t result = 0;
    if (!left || !right || operation(*left, *right, &result) || result > kMaxExtent ||
        result < -kMaxExtent) {
      return std::nullopt;
    }
    return result;
  }

  void skip_spaces() {
    while (at_ < text_.size() && text_[at_] == ' ') ++at_;
  }

  bool take(std::string_view token) {
    skip_spaces();
    if (text_.substr(at_, token.size()) != token) return false;
    at_ += token.size();
    return true;
  }

  std::string_view text_;
  const Names& names_;
  size_t at_ = 0;
};

// "(512, 1536)", "(2*s27, 512)", "(1536, )" or "()": the sizes, each evaluated, or none when
// one has no value or lies outside [0, kMaxExtent].
std::optional<std::vector<int64_t>> size_tuple(std::string_view text, const Names& names) {
  std::optional<std::vector<std::string_view>> parts = tuple_items(text);
  if (!parts || parts->size() > kMaxDims) return std::nullopt;
  std::vector<int64_t> values;
  for (std::string_view part : *parts) {
    std::optional<int64_t> value = IntegerExpression(part, names).value();
    if (!value || *value < 0) return std::nullopt;
    values.push_back(*value);
  }
  return values;
}

std::optional<TensorLayout> layout_of(std::string_view sizes, std::string_view strides,
                                      const Names& names) {
  std::optional<std::vector<int64_t>> size_values = size_tuple(sizes, names);
  std::optional<std::vector<int64_t>> stride_values = size_tuple(strides, names);
  if (!size_values || !stride_values || size_values->size() != stride_values->size())
    return std::nullopt;
  return TensorLayout{std::move(*size_values), std::move(*stride_values)};
}

// A tensor expression of the wrapper: a declared name, or reinterpret_tensor(name, sizes,
// strides, offset), whose dtype is its base's.
Declared evaluate(std::string_view expression, const Names& names, int depth = 0) {
  if (is_identifier(expression)) {
    auto found = names.tensors.find(expression);
    return found == names.tensors.end() ? Declared{} : found->second;
  }
  std::optional<std::vector<std::string_view>> arguments =
      call_of(expression, "reinterpret_tensor");
  if (!arguments || arguments->size() != 4 || depth == kMaxViewDepth) return {};
  Declared base = evaluate((*arguments)[0], names, depth + 1);
  return {layout_of((*arguments)[1], (*arguments)[2], names), base.dtype};
}

size_t positional_operands(std::string_view op) {
  if (op == "mm" || op == "bmm") return 2;
  if (op == "addmm" || op == "baddbmm") return 3;
  return 0;  // not a product megacache knows
}

// Whether the operands' shapes multiply: what torch would check before calling cuBLAS.
bool shapes_multiply(std::string_view op, const std::vector<TensorLayout>& operands) {
  const bool batched = op == "bmm" || op == "baddbmm";
  const std::vector<int64_t>& a = operands[operands.size() - 2].sizes;
  const std::vector<int64_t>& b = operands[operands.size() - 1].sizes;
  if (batched) return a.size() == 3 && b.size() == 3 && a[0] == b[0] && a[2] == b[1];
  return a.size() == 2 && b.size() == 2 && a[1] == b[0];
}

// The product one `extern_kernels.<op>(...)` statement calls, if every part of it is spelled out.
std::optional<MatrixProduct> product_of(std::string_view statement, const Names& names) {
  constexpr std::string_view kPrefix = "extern_kernels.";
  const size_t open = statement.find('(');
  if (open == std::string_view::npos) return std::nullopt;
  const std::string_view op = statement.substr(kPrefix.size(), open - kPrefix.size());
  const size_t expected = positional_operands(op);
  std::optional<std::vector<std::string_view>> arguments =
      call_of(statement, statement.substr(0, open));
  if (expected == 0 || !arguments) return std::nullopt;
  MatrixProduct product{std::string(op), "", {}, {}};
  bool has_out = false;
  for (std::string_view argument : *arguments) {
    const size_t equals = argument.find('=');
    const bool keyword =
        equals != std::string_view::npos && is_identifier(trim(argument.substr(0, equals)));
    if (keyword && trim(argument.substr(0, equals)) != "out") continue;  // alpha=1, beta=1
    Declared value = evaluate(keyword ? trim(argument.substr(equals + 1)) : argument, names);
    if (!value.layout) return std::nullopt;
    // torch.mm and its kin take operands and a result of one dtype; any of them may declare it
    // (a graph input or an op's output does not).
    if (!value.dtype.empty() && !product.dtype.empty() && value.dtype != product.dtype)
      return std::nullopt;
    if (!value.dtype.empty()) product.dtype = std::move(value.dtype);
    if (keyword) {
      product.out = std::move(*value.layout);
      has_out = true;
    } else {
      product.operands.push_back(std::move(*value.layout));
    }
  }
  if (!has_out || product.dtype.empty() || product.operands.size() != expected ||
      !shapes_multiply(op, product.operands)) {
    return std::nullopt;
  }
  return product;
}

// A statement "name = <right>": what `name` now is, a tensor or an integer.
void declare(std::string_view name, std::string_view right, Names& names) {
  if (std::optional<int64_t> integer = IntegerExpression(right, names).value()) {
    names.integers.insert_or_assign(std::string(name), *integer);  // s77 = arg2_1
  } else if (auto bound = names.integers.find(name); bound != names.integers.end()) {
    names.integers.erase(bound);  // rebound to what is not an integer
  }
  Declared value;
  std::optional<std::vector<std::string_view>> arguments = call_of(right, "empty_strided_cuda");
  if (!arguments) arguments = call_of(right, "empty_strided_cpu");
  if (arguments) {
    // empty_strided_cuda(sizes, strides, torch.<dtype>), and _cpu in a CPU graph's wrapper
    if (arguments->size() == 3 && (*arguments)[2].substr(0, 6) == "torch." &&
        is_identifier((*arguments)[2].substr(6))) {
      value = {layout_of((*arguments)[0], (*arguments)[1], names),
               std::string((*arguments)[2].substr(6))};
    }
  } else {
    value = evaluate(right, names);  // an alias (buf1 = buf0) or a reinterpret_tensor view
  }
  // Anything else the name is bound to is not known, and must not keep an old layout.
  names.tensors.insert_or_assign(std::string(name), std::move(value));
}

// The arguments of assert_size_stride_grouped: each name has the layout at its position.
void declare_grouped(const std::vector<std::string_view>& arguments, Names& names) {
  if (arguments.size() != 3 && arguments.size() != 4) return;
  std::optional<std::vector<std::string_view>> grouped = tuple_items(arguments[0]);
  std::optional<std::vector<std::string_view>> sizes = tuple_items(arguments[1]);
  std::optional<std::vector<std::string_view>> strides = tuple_items(arguments[2]);
  if (!grouped || !sizes || !strides || sizes->size() != grouped->size() ||
      strides->size() != grouped->size())
    return;
  for (size_t i = 0; i < grouped->size(); ++i) {
    if (is_identifier((*grouped)[i]))
      names.tensors[std::string((*grouped)[i])].layout =
          layout_of((*sizes)[i], (*strides)[i], names);
  }
}

// The statements of `wrapper`, one a line: the text before the line's first '#' or ';'
// ("buf1 = buf0; del buf0  # reuse": the first statement is the one that binds), trimmed, with
// whether the line was indented.
template <typename OnStatement>
void for_each_statement(std::string_view wrapper, OnStatement on_statement) {
  size_t line_begin = 0;
  while (line_begin < wrapper.size()) {
    size_t line_end = wrapper.find('\n', line_begin);
    if (line_end == std::string_view::npos) line_end = wrapper.size();
    const std::string_view line = wrapper.substr(line_begin, line_end - line_begin);
    line_begin = line_end + 1;
    const bool indented = !line.empty() && (line.front() == ' ' || line.front() == '\t');
    if (!on_statement(trim(line.substr(0, std::min(line.find('#'), line.find(';')))), indented)) {
      return;
    }
  }
}

// The example values of the graph's inputs: the body of `def get_args():`, which Inductor
// writes for its benchmark harness, binds each input to what the graph was compiled with: a
// size input to an integer (its symbol's hint), a tensor to rand_strided(sizes, strides, ...).
Names example_inputs(std::string_view wrapper) {
  Names names;
  bool inside = false;
  for_each_statement(wrapper, [&](std::string_view statement, bool indented) {
    if (!indented && !statement.empty()) inside = statement == "def get_args():";
    const size_t equals = statement.find(" = ");
    if (!inside || !indented || equals == std::string_view::npos ||
        !is_identifier(statement.substr(0, equals))) {
      return true;
    }
    const std::string name(statement.substr(0, equals));
    const std::string_view right = trim(statement.substr(equals + 3));
    const Names none;
    if (std::optional<int64_t> integer = IntegerExpression(right, none).value()) {
      names.integers[name] = *integer;
    } else if (std::optional<std::vector<std::string_view>> arguments =
                   call_of(right, "rand_strided");
               arguments && arguments->size() >= 2) {
      if (std::optional<std::vector<int64_t>> sizes = size_tuple((*arguments)[0], none)) {
        names.example_sizes[name] = std::move(*sizes);
      }
    }
    return true;
  });
  return names;
}

}  // namespace

bool calls_cublas(std::string_view wrapper) {
  constexpr std::string_view kPrefix = "extern_kernels.";
  for (size_t at = wrapper.find(kPrefix); at != std::string_view::npos;
       at = wrapper.find(kPrefix, at + 1)) {
    if (at > 0 &&
        (std::isalnum(static_cast<unsigned char>(wrapper[at - 1])) != 0 || wrapper[at - 1] == '_'))
      continue;
    const size_t name_begin = at + kPrefix.size();
    const size_t open = wrapper.find('(', name_begin);
    if (open == std::string_view::npos) return false;
    const std::string_view name = wrapper.substr(name_begin, open - name_begin);
    if (positional_operands(name) != 0 || name == "_int_mm") return true;
  }
  return false;
}

std::vector<MatrixProduct> matrix_products(std::string_view wrapper) {
  // Sizes that depend on a dynamic dim are read at the graph's example values: the sizes it
  // was compiled for, which its first run most often has again.
  Names names = example_inputs(wrapper);
  std::vector<MatrixProduct> products;
  for_each_statement(wrapper, [&](std::string_view statement, bool) {
    if (std::optional<std::vector<std::string_view>> arguments =
            call_of(statement, "assert_size_stride")) {
      // assert_size_stride(name, sizes, strides[, 'the op that made it']): its layout, checked by
      // torch when the graph runs; the name keeps any dtype it had.
      if ((arguments->size() == 3 || arguments->size() == 4) && is_identifier((*arguments)[0])) {
        names.tensors[std::string((*arguments)[0])].layout =
            layout_of((*arguments)[1], (*arguments)[2], names);
      }
    } else if (std::optional<std::vector<std::string_view>> grouped =
                   call_of(statement, "assert_size_stride_grouped")) {
      // torch 2.15: assert_size_stride_grouped((names), (sizes of each), (strides of each)[, 'op'])
      declare_grouped(*grouped, names);
    } else if (statement.substr(0, 15) == "extern_kernels.") {
      std::optional<MatrixProduct> product = product_of(statement, names);
      if (product && std::find(products.begin(), products.end(), *product) == products.end()) {
        products.push_back(std::move(*product));
      }
    } else if (const size_t equals = statement.find(" = ");
               equals != std::string_view::npos && is_identifier(statement.substr(0, equals))) {
      declare(statement.substr(0, equals), trim(statement.substr(equals + 3)), names);
    }
    return products.size() < kMaxProducts;
  });
  return products;
}

}  // namespace megacache::precompile
