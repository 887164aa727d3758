// Status and Result: how the core reports expected failures without exceptions.
//
// A Status is OK or carries a Code, a message and, for Corruption, the byte offset in the
// input where parsing failed. Result<T> is a T or a non-OK Status. Exceptions appear only
// at the CLI and Python binding edges, which turn a Status into a process exit code or a
// Python exception type.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <variant>

namespace megacache {

class Status {
 public:
  // Values are part of the Python binding's exception mapping; append only.
  enum class Code : uint8_t {
    kOk = 0,
    kCorruption = 1,       // input bytes are malformed; offset() says where
    kInvalidArgument = 2,  // well-formed input that we refuse (hostile key, unknown type)
    kIOError = 3,          // the file system failed
    kNotFound = 4,
    kMismatch = 5,  // a package built for another environment or function
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status Corruption(uint64_t offset, std::string reason) {
    return Status(Code::kCorruption, std::move(reason), offset);
  }
  static Status InvalidArgument(std::string message) {
    return Status(Code::kInvalidArgument, std::move(message), std::nullopt);
  }
  static Status IOError(std::string message) {
    return Status(Code::kIOError, std::move(message), std::nullopt);
  }
  static Status NotFound(std::string message) {
    return Status(Code::kNotFound, std::move(message), std::nullopt);
  }
  static Status Mismatch(std::string message) {
    return Status(Code::kMismatch, std::move(message), std::nullopt);
  }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::optional<uint64_t> offset() const { return offset_; }

  // "corruption at offset 12: artifact key length 9000 runs past the end (buffer is 40 bytes)"
  std::string to_string() const;

 private:
  Status(Code code, std::string message, std::optional<uint64_t> offset)
      : code_(code), message_(std::move(message)), offset_(offset) {}

  Code code_ = Code::kOk;
  std::string message_;
  std::optional<uint64_t> offset_;
};

// A value or the Status explaining why there is none. Never holds an OK Status.
template <class T>
class Result {
 public:
  Result(T value) : state_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : state_(std::move(status)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(state_); }
  const Status& status() const {
    static const Status kOk;
    return ok() ? kOk : std::get<Status>(state_);
  }
  T& value() & { return std::get<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T&& value() && { return std::get<T>(std::move(state_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  std::variant<T, Status> state_;
};

}  // namespace megacache
