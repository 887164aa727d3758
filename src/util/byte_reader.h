// Bounds-checked big-endian reading. Every read checks the remaining length first and
// reports the offset where it failed, so parsers never index past their buffer.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "megacache/status.h"

namespace megacache::util {

class ByteReader {
 public:
  explicit ByteReader(std::string_view data, size_t start = 0) : data_(data), pos_(start) {}

  size_t position() const { return pos_; }
  size_t remaining() const { return data_.size() - pos_; }
  bool finished() const { return pos_ == data_.size(); }

  // On failure `error` is set and the reader does not move.
  bool read_u64(uint64_t& out, std::string_view what, Status& error) {
    return read_uint(out, 8, what, error);
  }

  // A big-endian unsigned integer of `width` bytes (1 to 8).
  template <class T>
  bool read_uint(T& out, size_t width, std::string_view what, Status& error) {
    if (remaining() < width) {
      error = Status::Corruption(pos_, std::string(what) + ": needs " + std::to_string(width) +
                                           " bytes, " + std::to_string(remaining()) + " left");
      return false;
    }
    uint64_t value = 0;
    for (size_t i = 0; i < width; ++i) value = (value << 8) | static_cast<uint8_t>(data_[pos_ + i]);
    out = static_cast<T>(value);
    pos_ += width;
    return true;
  }

  // Exactly `length` bytes.
  bool read_fixed(std::string_view& out, size_t length, std::string_view what, Status& error) {
    if (remaining() < length) {
      error = Status::Corruption(pos_, std::string(what) + ": needs " + std::to_string(length) +
                                           " bytes, " + std::to_string(remaining()) + " left");
      return false;
    }
    out = data_.substr(pos_, length);
    pos_ += length;
    return true;
  }

  // A length of `width` bytes followed by that many bytes, at most `cap`.
  bool read_sized(std::string_view& out, size_t width, uint64_t cap, std::string_view what,
                  Status& error) {
    const size_t start = pos_;
    uint64_t length = 0;
    if (!read_uint(length, width, std::string(what) + " length", error)) return false;
    if (length > cap || length > remaining()) {
      error = Status::Corruption(
          start, std::string(what) + " length " + std::to_string(length) +
                     (length > cap
                          ? " exceeds the limit of " + std::to_string(cap)
                          : " runs past the end (" + std::to_string(remaining()) + " bytes left)"));
      pos_ = start;
      return false;
    }
    out = data_.substr(pos_, length);
    pos_ += length;
    return true;
  }

  // A u64 length followed by that many bytes, at most `cap`.
  bool read_bytes(std::string_view& out, uint64_t cap, std::string_view what, Status& error) {
    if (remaining() < 8) {
      error = Status::Corruption(pos_, std::string(what) + " length: needs 8 bytes, " +
                                           std::to_string(remaining()) + " left");
      return false;
    }
    const uint64_t length = load_u64_at(pos_);
    if (length > cap) {
      error = Status::Corruption(pos_, std::string(what) + " length " + std::to_string(length) +
                                           " exceeds the limit of " + std::to_string(cap));
      return false;
    }
    if (length > remaining() - 8) {
      error = Status::Corruption(pos_, std::string(what) + " length " + std::to_string(length) +
                                           " runs past the end (" +
                                           std::to_string(remaining() - 8) + " bytes left)");
      return false;
    }
    out = data_.substr(pos_ + 8, length);
    pos_ += 8 + length;
    return true;
  }

 private:
  uint64_t load_u64_at(size_t at) const {
    uint64_t value = 0;
    for (int i = 0; i < 8; ++i) {
      value = (value << 8) | static_cast<uint8_t>(data_[at + i]);
    }
    return value;
  }

  std::string_view data_;
  size_t pos_;
};

// Appends the low `width` bytes of `value`, big-endian.
inline void append_uint_be(std::string& out, uint64_t value, int width) {
  for (int shift = 8 * (width - 1); shift >= 0; shift -= 8) {
    out.push_back(static_cast<char>((value >> shift) & 0xff));
  }
}

inline void append_u64_be(std::string& out, uint64_t value) { append_uint_be(out, value, 8); }

inline uint32_t load_u32_be(std::string_view data) {
  return (uint32_t{static_cast<uint8_t>(data[0])} << 24) |
         (uint32_t{static_cast<uint8_t>(data[1])} << 16) |
         (uint32_t{static_cast<uint8_t>(data[2])} << 8) | uint32_t{static_cast<uint8_t>(data[3])};
}

inline void store_u32_be(char* out, uint32_t value) {
  out[0] = static_cast<char>(value >> 24);
  out[1] = static_cast<char>(value >> 16);
  out[2] = static_cast<char>(value >> 8);
  out[3] = static_cast<char>(value);
}

}  // namespace megacache::util
