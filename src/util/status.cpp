#include "megacache/status.h"

namespace megacache {

std::string Status::to_string() const {
  switch (code_) {
    case Code::kOk:
      return "OK";
    case Code::kCorruption:
      return "corruption at offset " + std::to_string(offset_.value_or(0)) + ": " + message_;
    case Code::kInvalidArgument:
      return "invalid input: " + message_;
    case Code::kIOError:
      return "I/O error: " + message_;
    case Code::kNotFound:
      return "not found: " + message_;
    case Code::kMismatch:
      return "mismatch: " + message_;
  }
  return message_;
}

}  // namespace megacache
