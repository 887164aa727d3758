// What megacache reads from a Redis server, parsed under limits that the reader sets and the
// server cannot raise: RESP2 replies, the ref text of docs/store-format.md, and the chunks a
// ref names. A server shared by a fleet may be broken or hostile, so no length, count or size
// it sends decides an allocation before it is checked against what the request can need.
// Kept apart from the connection (redis_store.cpp) so that it needs no hiredis and can be
// fuzzed (fuzz/fuzz_redis.cpp).
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/status.h"

namespace megacache::store::redis {

// One RESP2 reply.
struct Reply {
  enum class Type : uint8_t { kString, kStatus, kError, kInteger, kNil, kArray };
  Type type = Type::kNil;
  std::string text;             // kString, kStatus and kError
  int64_t integer = 0;          // kInteger
  std::vector<Reply> elements;  // kArray
};

// What one reply may hold. A reply that could not fit is refused as soon as its headers say
// so, before the bytes they announce are buffered.
struct ReplyLimits {
  uint64_t max_bytes = 0;                // the whole reply as sent, headers and line ends included
  uint64_t max_elements = 0;             // array elements, nested ones counted
  uint64_t max_bulk_bytes = UINT64_MAX;  // one bulk string's payload, where that is tighter
};

// Arrays inside arrays; our commands' replies nest at most two deep (SCAN).
inline constexpr int kMaxReplyDepth = 4;
// A bulk string's "$<length>\r\n" and its closing "\r\n" at most.
inline constexpr uint64_t kBulkOverheadBytes = 1 + 20 + 2 + 2;

enum class ParseState : uint8_t { kComplete, kIncomplete, kInvalid };

struct ParseResult {
  ParseState state = ParseState::kIncomplete;
  size_t consumed = 0;  // the reply's length in bytes, when complete
  std::string error;    // why, when invalid
};

// Parses the reply at the start of `bytes`; `reply` is filled only when it is complete.
// kIncomplete means that `bytes` is a prefix of a reply within `limits`: read more and call
// again with everything. Parsing again from the start costs the headers, not the payload.
ParseResult parse_reply(std::string_view bytes, const ReplyLimits& limits, Reply& reply);

// Appends one command as RESP sends it: an array of bulk strings.
void append_command(std::string& out, std::initializer_list<std::string_view> args);
void append_command(std::string& out, const std::vector<std::string_view>& args);

// A value is stored as at most this many chunks; a ref naming more is refused.
inline constexpr uint64_t kMaxChunks = uint64_t{1} << 20;

// megacache:v1:ref:<name> holds "<id> <chunks> <size> <checksum>": the value's chunks are
// megacache:v1:chunk:<id>:<0..chunks-1>, together `size` bytes whose hex XXH3-128 is `checksum`.
struct Ref {
  std::string id;  // 32 lowercase hex digits, random per put
  uint64_t chunks = 0;
  uint64_t size = 0;
  std::string checksum;  // 32 lowercase hex digits
};

// Chunks a writer with `chunk_size` splits `size` bytes into.
uint64_t chunk_count(uint64_t size, uint64_t chunk_size);

// The ref text, checked before anything is allocated for the value it describes: exact
// syntax, size at most `max_value_bytes`, and a chunk count that some chunk size would give
// for that size (the writer's chunk_size is its own URL option, so a reader cannot assume its
// own). Errors: Corruption, saying what is wrong.
Result<Ref> parse_ref(std::string_view text, uint64_t max_value_bytes);
std::string format_ref(const Ref& ref);

// Collects a value's chunks from the replies to GET chunk 0, 1, ..., in order, and refuses any
// chunk that could not belong to the value the ref describes. A writer cuts `size` bytes into
// chunks of one length but the last, which is no longer, so every chunk is non-empty and
// leaves at least a byte for each chunk after it. Memory grows with the bytes received,
// never with what the ref or a reply header claims.
class ChunkAssembler {
 public:
  explicit ChunkAssembler(Ref ref) : ref_(std::move(ref)) {}

  // Limits for the reply to the next chunk's GET.
  ReplyLimits next_limits() const;

  enum class Verdict : uint8_t {
    kAccepted,
    kMissing,  // nil: expired or replaced underneath; the value is a plain miss
    kInvalid,  // cannot belong to the value (the store holds bad data), or cannot be held here
  };
  // The reply to the next chunk's GET. After the first kMissing or kInvalid the value is
  // lost and every later reply gets that same verdict, but the rest of the pipeline may still
  // be given (their limits still hold).
  Verdict add(Reply&& reply);

  // The value: all chunks arrived, their bytes total the ref's size and match its checksum.
  // Errors: NotFound when a chunk was gone, Corruption when one could not belong to the value
  // or the whole does not match the ref. Call once.
  Result<std::string> finish();

  uint64_t bytes_received() const { return received_; }
  const std::string& error() const { return error_; }

 private:
  Verdict lose(Verdict verdict, std::string why);

  Ref ref_;
  uint64_t next_index_ = 0;
  uint64_t received_ = 0;
  uint64_t first_chunk_bytes_ = 0;
  Verdict loss_ = Verdict::kAccepted;  // the first loss, if any
  std::string error_;
  std::string value_;
};

// Hex XXH3-128 of a value, as refs name it.
std::string value_checksum(std::string_view value);

}  // namespace megacache::store::redis
