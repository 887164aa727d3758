// Fuzz target: what a Redis server sends back, which a fleet's shared server may make hostile:
// RESP replies parsed under the reader's limits, ref text, and the chunk replies a ref names.
// Besides not crashing, it checks the properties the store relies on and aborts when one
// breaks: a reply still incomplete never holds more than its limit (so buffering is bounded by
// what was asked), a complete reply is never complete on a shorter prefix, an accepted ref is
// its one canonical spelling, and an honest value always comes back whole.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "store/redis_protocol.h"

namespace {

using megacache::store::redis::ChunkAssembler;
using megacache::store::redis::ParseResult;
using megacache::store::redis::ParseState;
using megacache::store::redis::Reply;
using megacache::store::redis::ReplyLimits;

// Names the broken property before crashing, so a crash file explains itself.
void require_at(bool property, const char* text, int line) {
  if (property) return;
  std::fprintf(stderr, "fuzz_redis.cpp:%d: property broken: %s\n", line, text);
  std::abort();
}
#define require(property) require_at((property), #property, __LINE__)

// Reads fuzz bytes as numbers; zeros once they run out.
class ByteStream {
 public:
  explicit ByteStream(std::string_view bytes) : bytes_(bytes) {}
  uint64_t next(int width) {
    uint64_t value = 0;
    for (int i = 0; i < width; ++i) {
      value = value << 8 | (pos_ < bytes_.size() ? static_cast<uint8_t>(bytes_[pos_++]) : 0);
    }
    return value;
  }
  std::string_view rest() const { return bytes_.substr(pos_); }

 private:
  std::string_view bytes_;
  size_t pos_ = 0;
};

ParseResult checked_parse(std::string_view bytes, const ReplyLimits& limits, Reply& reply) {
  const ParseResult result = megacache::store::redis::parse_reply(bytes, limits, reply);
  if (result.state == ParseState::kIncomplete) require(bytes.size() < limits.max_bytes);
  if (result.state == ParseState::kComplete) {
    require(result.consumed > 0 && result.consumed <= bytes.size() &&
            result.consumed <= limits.max_bytes);
    Reply shorter;
    require(
        megacache::store::redis::parse_reply(bytes.substr(0, result.consumed - 1), limits, shorter)
            .state == ParseState::kIncomplete);
  }
  return result;
}

// What the store's read loop does with a GET pipeline for a ref's chunks: bytes arrive in
// pieces of `piece` bytes, each reply is parsed under the assembler's limits, and the first
// invalid one ends it. Returns the value when the pipeline yields it.
std::optional<std::string> read_chunks(const megacache::store::redis::Ref& ref,
                                       std::string_view wire, size_t piece) {
  ChunkAssembler assembler(ref);
  std::string buffer;
  size_t offset = 0;
  uint64_t replies = 0;
  while (replies < ref.chunks && offset < wire.size()) {
    const size_t take = std::min(piece, wire.size() - offset);
    buffer.append(wire.substr(offset, take));
    offset += take;
    size_t parsed = 0;
    while (replies < ref.chunks) {
      Reply reply;
      const ReplyLimits limits = assembler.next_limits();
      const ParseResult result =
          checked_parse(std::string_view(buffer).substr(parsed), limits, reply);
      if (result.state == ParseState::kInvalid) return std::nullopt;
      if (result.state == ParseState::kIncomplete) {
        // The memory bound: what is buffered is one reply within its limit and one read.
        require(buffer.size() - parsed < limits.max_bytes + piece);
        break;
      }
      parsed += result.consumed;
      (void)assembler.add(std::move(reply));
      ++replies;
      // Each reply's limit leaves room only for what the ref's size has left.
      require(assembler.bytes_received() <= ref.size);
    }
    buffer.erase(0, parsed);
  }
  if (replies < ref.chunks) return std::nullopt;
  megacache::Result<std::string> value = assembler.finish();
  if (!value.ok()) return std::nullopt;
  require(value->size() == ref.size &&
          megacache::store::redis::value_checksum(*value) == ref.checksum);
  return std::move(value).value();
}

// The raw bytes as a ref, and as replies under limits taken from the first bytes.
void raw_input(std::string_view bytes) {
  for (uint64_t cap : {uint64_t{1} << 20, UINT64_MAX}) {
    megacache::Result<megacache::store::redis::Ref> ref =
        megacache::store::redis::parse_ref(bytes, cap);
    if (ref.ok()) {
      require(megacache::store::redis::format_ref(*ref) == bytes && ref->size <= cap);
      require(ref->chunks <= ref->size && (ref->chunks == 0) == (ref->size == 0));
    }
  }
  ByteStream stream(bytes);
  const ReplyLimits limits{1 + stream.next(2), stream.next(1)};
  std::string_view rest = stream.rest();
  for (int i = 0; i < 64 && !rest.empty(); ++i) {
    Reply reply;
    const ParseResult result = checked_parse(rest, limits, reply);
    if (result.state != ParseState::kComplete) break;
    rest.remove_prefix(result.consumed);
  }
  // A first line as a ref (with a small cap), the rest as its chunk replies.
  const size_t newline = bytes.find('\n');
  if (newline != std::string_view::npos) {
    megacache::Result<megacache::store::redis::Ref> ref =
        megacache::store::redis::parse_ref(bytes.substr(0, newline), uint64_t{1} << 20);
    if (ref.ok()) (void)read_chunks(*ref, bytes.substr(newline + 1), 1 + bytes.size() % 97);
  }
}

// Appends `text` as a RESP bulk string. Built piece by piece: gcc 12 misreads
// `"$" + std::to_string(n)` at -O3 as an overlapping copy (-Wrestrict, GCC bug 105329).
void append_bulk(std::string& wire, std::string_view text) {
  wire += '$';
  wire += std::to_string(text.size());
  wire += "\r\n";
  wire += text;
  wire += "\r\n";
}

// The bytes as a recipe for a value, its ref and its chunk replies, some of them damaged the
// way a broken or hostile server would: a non-RESP input (the replay corpus is the golden
// files) still reaches every path of the assembler, and an undamaged value must come back.
void generated_input(std::string_view bytes) {
  ByteStream stream(bytes);
  const size_t size = stream.next(2) % 5000;
  const uint64_t chunk_size = 1 + stream.next(2) % 900;
  std::string value(size, '\0');
  for (size_t i = 0; i < size; ++i) value[i] = static_cast<char>(i * 131 + (i >> 8));
  megacache::store::redis::Ref ref{std::string(32, 'a'),
                                   megacache::store::redis::chunk_count(size, chunk_size), size,
                                   megacache::store::redis::value_checksum(value)};
  std::string wire;
  bool damaged = false;
  for (uint64_t i = 0; i < ref.chunks; ++i) {
    const std::string_view chunk = std::string_view(value).substr(i * chunk_size, chunk_size);
    switch (stream.next(1) % 16) {
      case 0:
        wire += "$-1\r\n";  // expired
        damaged = true;
        break;
      case 1:
        append_bulk(wire, std::string(chunk) + "x");  // one byte more than the ref says
        damaged = true;
        break;
      case 2:
        wire += "$8589934592\r\n" + std::string(chunk);  // claims 8 GiB and streams
        damaged = true;
        break;
      case 3:
        wire += "*2147483647\r\n";
        damaged = true;
        break;
      case 4:
        wire += ':';
        wire += std::to_string(chunk.size());
        wire += "\r\n";
        damaged = true;
        break;
      default:
        append_bulk(wire, chunk);
    }
  }
  const std::optional<std::string> read = read_chunks(ref, wire, 1 + stream.next(2) % 70000);
  if (!damaged) require(read && *read == value);
  if (read) require(*read == value);
  // The ref as written must read back.
  const std::string text = megacache::store::redis::format_ref(ref);
  megacache::Result<megacache::store::redis::Ref> parsed =
      megacache::store::redis::parse_ref(text, uint64_t{1} << 20);
  require(parsed.ok() && parsed->chunks == ref.chunks && parsed->size == ref.size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  raw_input(bytes);
  generated_input(bytes);
  return 0;
}
