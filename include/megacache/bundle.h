// megacache's own bundle format: the artifacts of a Mega-Cache blob, zstd-compressed and
// deduplicated, with an environment fingerprint, per-artifact checksums, a checksum over
// header and index, and an optional Ed25519 signature. Grammar: docs/bundle-format.md.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "megacache/mega_cache.h"
#include "megacache/status.h"

namespace megacache::bundle {

inline constexpr std::string_view kMagic{"\x89MCBNDL\n", 8};
inline constexpr uint32_t kVersion = 1;

// On-disk values; never change or reuse them.
enum class Compression : uint8_t { kNone = 0, kZstd = 1 };

// Named facts about the environment that produced the artifacts (python, torch, torch_key,
// triton, cuda, gpu, gpu_capability, cpu_arch, os, megacache), sorted by name.
using Fingerprint = std::vector<std::pair<std::string, std::string>>;

struct Entry {
  std::string type;
  std::string key;
  uint32_t group = 0;  // entries of one Mega-Cache type group share it, so conversion is lossless
  Compression compression = Compression::kNone;
  uint64_t offset = 0;  // into the payload area; deduplicated payloads share it
  uint64_t stored_size = 0;
  uint64_t raw_size = 0;
  std::array<uint8_t, 16> checksum{};  // XXH3-128 of the raw payload
};

using PublicKey = std::array<uint8_t, 32>;

struct SigningKey {
  std::array<uint8_t, 64> secret{};
  PublicKey public_key{};
  static SigningKey generate();
};

struct Signature {
  PublicKey public_key{};
  std::array<uint8_t, 64> value{};  // Ed25519 over signed_bytes (docs/bundle-format.md)
  // Flag bit 1: the signed bytes end with the sha256 of the payload area, so the signature
  // binds every payload byte, not only their XXH3 checksums, which are no cryptographic
  // hash. Bundles signed before it was set are refused under a trust policy.
  bool covers_payloads = false;
};

// The format's limits on what payloads claim to decode to (docs/bundle-format.md, Limits).
inline constexpr uint64_t kMaxArtifactBytes = uint64_t{4} << 30;         // one artifact, raw
inline constexpr uint64_t kMaxDecodedBytes = mega_cache::kMaxBlobBytes;  // all, deduplicated

// Budgets for decoding input that may be hostile. Whatever they say, no claim is allocated
// before the stored bytes are shown able to back it.
struct DecodeLimits {
  // Raw bytes that all distinct payloads may decode to together: the arena decode()
  // allocates. Lower it to bound what a store's bundle can cost a process.
  uint64_t max_decoded_bytes = kMaxDecodedBytes;
};

struct Bundle {
  uint32_t version = kVersion;
  Fingerprint fingerprint;
  std::vector<Entry> entries;
  std::optional<Signature> signature;
  std::string_view header_and_index;  // what the trailing checksum and the signature cover
  std::string_view payloads;

  // Decompresses entry `index` alone and checks its checksum; the caller owns the result.
  // Memory grows only as the payload really decompresses: its claim is checked against
  // what the stored bytes can decode to, and `limits`, before anything is allocated.
  // Errors: Corruption(payload offset, reason) naming the artifact. Thread-safe.
  Result<std::string> read(size_t index, const DecodeLimits& limits = {}) const;
  // The same into `out`, which the caller owns and which must hold entries[index].raw_size
  // bytes; nothing is written past them. Errors: Corruption as read. Thread-safe.
  Status read_into(size_t index, char* out) const;
};

// Parses the header and index and checks the trailing checksum; payloads are only located,
// so a file can be mmapped and read one artifact at a time. Views point into `file`.
// Errors: Corruption(offset, reason).
Result<Bundle> parse(std::string_view file);

enum class SignatureCheck : uint8_t { kUnsigned, kValid, kInvalid };
// Whether the signature verifies against the key it names. Whether that key is trusted is the
// caller's decision (is_trusted, check_trust).
SignatureCheck check_signature(const Bundle& bundle);
bool is_trusted(const Bundle& bundle, const std::vector<PublicKey>& trusted_keys);

// The trust policy: a signature that does not verify is always refused; with trusted keys
// configured, only bundles signed by one of them are accepted. Errors: InvalidArgument saying
// which rule failed and which key signed.
Status check_trust(const Bundle& bundle, const std::vector<PublicKey>& trusted_keys);

// Keys as lower-case hex text (64 hex digits public, 128 secret), as `megacache keygen`
// writes them; surrounding white space is ignored. Errors: InvalidArgument.
Result<PublicKey> parse_public_key(std::string_view hex);
Result<SigningKey> parse_signing_key(std::string_view hex);

// Fields present in both fingerprints whose values differ: (name, built, current).
struct FingerprintMismatch {
  std::string name;
  std::string built;
  std::string current;
};
std::vector<FingerprintMismatch> compare_fingerprints(const Fingerprint& built,
                                                      const Fingerprint& current);

// What megacache itself knows of this machine: cpu_arch, os and the megacache version.
Fingerprint host_fingerprint();

struct WriteOptions {
  int zstd_level = 3;
  const SigningKey* signing_key = nullptr;
};

// Every group of `cache` in file order (2.7 records grouped by type), so that to_mega_cache
// reproduces a 2.8+ blob byte for byte. Thread-safe.
std::string write(const mega_cache::MegaCache& cache, const Fingerprint& fingerprint,
                  const WriteOptions& options = {});

// All payloads decompressed and checked, as a MegaCache that populate accepts. `cache` views
// into `storage`, so a Decoded can be moved but not copied.
struct Decoded {
  Decoded() = default;
  Decoded(Decoded&&) = default;
  Decoded& operator=(Decoded&&) = default;
  Decoded(const Decoded&) = delete;
  Decoded& operator=(const Decoded&) = delete;

  std::unique_ptr<char[]> storage;  // every distinct payload, decompressed in place
  mega_cache::MegaCache cache;
};
// Every claim is checked against the bytes that must back it (a zstd frame's declared size
// and its blocks; an uncompressed payload's stored size; payloads shared whole or disjoint)
// and against `limits` before the one arena is allocated, whose pages then fill only as
// payloads really decompress.
// The result owns its bytes. Thread-safe. Errors: Corruption(payload offset, reason);
// IOError when memory for claims that pass every check cannot be had.
Result<Decoded> decode(const Bundle& bundle, const DecodeLimits& limits = {});

// The Mega-Cache blob the bundle was made from (2.8+ layout): decode, then
// mega_cache::write_groups, which callers holding a Decoded use directly. Errors: Corruption.
Result<std::string> to_mega_cache(const Bundle& bundle);

}  // namespace megacache::bundle
