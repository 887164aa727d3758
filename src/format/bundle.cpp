// Bundle codec. The grammar is in docs/bundle-format.md.
#include "megacache/bundle.h"

#include <sodium.h>
#include <zstd.h>
#include <zstd_errors.h>

#include <sys/utsname.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <system_error>
#include <thread>
#include <vector>

#include "util/byte_reader.h"
#include "util/hash.h"
#include "util/utf8.h"

namespace megacache::bundle {
namespace {

constexpr uint32_t kFlagSigned = 1;
constexpr uint32_t kFlagSignatureCoversPayloads = 2;
constexpr uint32_t kKnownFlags = kFlagSigned | kFlagSignatureCoversPayloads;
constexpr uint32_t kMaxFingerprintFields = 256;
constexpr size_t kTrailerBytes = 8;
// type(2+) key(4+) group(4) compression(1) offset(8) stored(8) raw(8) checksum(16)
constexpr size_t kMinEntryBytes = 2 + 4 + 4 + 1 + 8 + 8 + 8 + 16;

using util::append_uint_be;

void put_field(std::string& out, std::string_view value, int length_width) {
  append_uint_be(out, value.size(), length_width);
  out.append(value);
}

bool read_text(util::ByteReader& reader, std::string& out, size_t width, std::string_view what,
               Status& error) {
  const size_t at = reader.position();
  std::string_view raw;
  if (!reader.read_sized(raw, width, mega_cache::kMaxStringBytes, what, error)) return false;
  if (!util::is_valid_utf8(raw)) {
    error = Status::Corruption(at, std::string(what) + " is not valid UTF-8");
    return false;
  }
  out = raw;
  return true;
}

std::string describe(const Entry& entry) { return entry.type + " artifact '" + entry.key + "'"; }

// zstd contexts cost a large allocation each; one per thread is reused across calls.
ZSTD_CCtx* compression_context() {
  static thread_local std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)> context(ZSTD_createCCtx(),
                                                                                 ZSTD_freeCCtx);
  return context.get();
}

ZSTD_DCtx* decompression_context() {
  static thread_local std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)> context(ZSTD_createDCtx(),
                                                                                 ZSTD_freeDCtx);
  return context.get();
}

bool sodium_ready() {
  static const bool ready = sodium_init() >= 0;
  return ready;
}

// Where a payload starts in the bundle file: the offset a refused claim is reported at.
uint64_t payload_offset(const Bundle& bundle, const Entry& entry) {
  return static_cast<uint64_t>(bundle.payloads.data() - bundle.header_and_index.data()) +
         entry.offset;
}

constexpr uint32_t kZstdMagic = 0xFD2FB528;
// RFC 8878: no block regenerates more than 128 KiB, whatever the window.
constexpr uint64_t kZstdMaxBlockBytes = 128 * 1024;

// The most that the zstd frame `frame` can decode to, read from its block headers (RFC 8878
// 3.1.1): a raw or RLE block regenerates exactly the size its header gives, a compressed block
// at most 128 KiB. The frame header's content size is only a claim that any 14 bytes can make;
// the blocks are what back it, so this bound refuses a claim before anything is allocated.
// The frame must fill `frame` exactly. Errors: Corruption at the malformed block.
Result<uint64_t> decodable_bytes(std::string_view frame, uint64_t at, const Entry& entry) {
  auto byte = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(frame[i])); };
  if (frame.size() < 5 || (byte(0) | byte(1) << 8 | byte(2) << 16 | byte(3) << 24) != kZstdMagic) {
    return Status::Corruption(at, describe(entry) + ": payload is not a zstd frame");
  }
  const uint32_t descriptor = byte(4);
  const bool single_segment = (descriptor & 0x20) != 0;
  const bool has_checksum = (descriptor & 0x04) != 0;
  constexpr size_t kDictionaryIdBytes[] = {0, 1, 2, 4};
  constexpr size_t kContentSizeBytes[] = {0, 2, 4, 8};
  const size_t content_size_bytes =
      (descriptor >> 6) == 0 && single_segment ? 1 : kContentSizeBytes[descriptor >> 6];
  size_t position =
      5 + (single_segment ? 0 : 1) + kDictionaryIdBytes[descriptor & 3] + content_size_bytes;
  uint64_t decodable = 0;
  for (bool last = false; !last;) {
    const uint64_t block_at = at + position;
    if (position > frame.size() || frame.size() - position < 3) {
      return Status::Corruption(block_at, describe(entry) + ": zstd frame runs past its " +
                                              std::to_string(frame.size()) + " stored bytes");
    }
    const uint32_t header = byte(position) | byte(position + 1) << 8 | byte(position + 2) << 16;
    position += 3;
    last = (header & 1) != 0;
    const uint32_t type = (header >> 1) & 3;  // 0 raw, 1 RLE, 2 compressed, 3 reserved
    const uint32_t size = header >> 3;
    if (type == 3 || size > kZstdMaxBlockBytes) {
      return Status::Corruption(block_at, describe(entry) + ": malformed zstd block header");
    }
    const size_t stored = type == 1 ? 1 : size;  // an RLE block stores its one byte
    if (frame.size() - position < stored) {
      return Status::Corruption(block_at, describe(entry) + ": zstd block runs past its " +
                                              std::to_string(frame.size()) + " stored bytes");
    }
    position += stored;
    decodable += type == 2 ? kZstdMaxBlockBytes : size;
  }
  if (has_checksum) position += 4;
  if (position != frame.size()) {
    return Status::Corruption(at + std::min(position, frame.size()),
                              describe(entry) + ": zstd frame ends at byte " +
                                  std::to_string(position) + " of its " +
                                  std::to_string(frame.size()) + " stored bytes");
  }
  return decodable;
}

// Whether entry's stored bytes can back the raw size it claims, checked before that size is
// allocated: an uncompressed payload is its own raw bytes; a zstd frame must declare the
// claim and hold blocks that can decode to it.
Status check_claim(const Entry& entry, std::string_view stored, uint64_t at) {
  if (entry.compression == Compression::kNone) {
    if (stored.size() == entry.raw_size) return Status::OK();
    return Status::Corruption(at, describe(entry) + " is stored uncompressed with " +
                                      std::to_string(stored.size()) + " of " +
                                      std::to_string(entry.raw_size) + " bytes");
  }
  const unsigned long long declared = ZSTD_getFrameContentSize(stored.data(), stored.size());
  if (declared == ZSTD_CONTENTSIZE_ERROR) {
    return Status::Corruption(at, describe(entry) + ": payload is not a zstd frame");
  }
  if (declared != entry.raw_size) {
    return Status::Corruption(
        at, describe(entry) + ": zstd frame declares " +
                (declared == ZSTD_CONTENTSIZE_UNKNOWN ? std::string("no size")
                                                      : std::to_string(declared) + " bytes") +
                ", the index claims " + std::to_string(entry.raw_size));
  }
  Result<uint64_t> decodable = decodable_bytes(stored, at, entry);
  if (!decodable.ok()) return decodable.status();
  if (*decodable < entry.raw_size) {
    return Status::Corruption(at, describe(entry) + " claims " + std::to_string(entry.raw_size) +
                                      " bytes, but its zstd blocks can decode to at most " +
                                      std::to_string(*decodable));
  }
  return Status::OK();
}

// Decompresses a payload whose claim check_claim accepted into exactly out[0, raw_size): the
// output window is the claim, so zstd cannot write past it, and a frame that wants more or
// ends short is refused. The window covers the whole frame, so zstd decodes it in one pass
// straight into place, without a window buffer of its own.
Status decompress_claimed(const Entry& entry, std::string_view stored, uint64_t at, char* out) {
  if (entry.compression == Compression::kNone) {
    std::memcpy(out, stored.data(), stored.size());
    return Status::OK();
  }
  ZSTD_DCtx* context = decompression_context();
  ZSTD_DCtx_reset(context, ZSTD_reset_session_only);  // a refused frame leaves state behind
  ZSTD_inBuffer input{stored.data(), stored.size(), 0};
  ZSTD_outBuffer output{out, entry.raw_size, 0};
  const size_t left = ZSTD_decompressStream(context, &output, &input);
  const std::string claim = std::to_string(entry.raw_size) + " bytes it claims";
  if (ZSTD_isError(left)) {
    if (ZSTD_getErrorCode(left) == ZSTD_error_dstSize_tooSmall) {
      return Status::Corruption(
          at, describe(entry) + ": zstd payload decodes to more than the " + claim);
    }
    return Status::Corruption(at, describe(entry) + ": zstd payload does not decompress (" +
                                      ZSTD_getErrorName(left) + ")");
  }
  if (left != 0 && output.pos == output.size) {
    return Status::Corruption(at,
                              describe(entry) + ": zstd payload decodes to more than the " + claim);
  }
  if (left != 0 || output.pos != entry.raw_size || input.pos != input.size) {
    return Status::Corruption(at, describe(entry) + ": zstd payload ends after " +
                                      std::to_string(output.pos) + " of the " + claim);
  }
  return Status::OK();
}

// `raw`: the entry's decoded bytes, entry.raw_size of them.
Status check_checksum(const Entry& entry, std::string_view raw, uint64_t at) {
  if (util::xxh3_128(raw) != entry.checksum) {
    return Status::Corruption(at, describe(entry) + ": payload checksum mismatch");
  }
  return Status::OK();
}

// Decompresses and checks one stored payload into its place in the arena.
Status decode_payload(const Bundle& bundle, const Entry& entry, char* out) {
  const uint64_t at = payload_offset(bundle, entry);
  if (Status status = decompress_claimed(
          entry, bundle.payloads.substr(entry.offset, entry.stored_size), at, out);
      !status.ok()) {
    return status;
  }
  return check_checksum(entry, std::string_view(out, entry.raw_size), at);
}

// A bundle decoding at least this many bytes shares the work among threads: a fresh process
// loading a package waits for its decoding, and zstd decodes one frame on one core.
constexpr uint64_t kParallelDecodeBytes = uint64_t{1} << 20;
constexpr unsigned kMaxDecodeThreads = 8;

// Decodes the payloads of `distinct` (entry indexes, in file order) into `arena`, whose
// places `arena_start` gives; each place is written by one thread only. Large bundles are
// decoded on several threads, the largest payloads first; the failure reported is that of the
// first failing payload in file order, as a decoding in one thread would report.
Status decode_payloads(const Bundle& bundle, const std::vector<size_t>& distinct,
                       const std::vector<uint64_t>& arena_start, uint64_t total, char* arena) {
  const unsigned threads =
      total < kParallelDecodeBytes
          ? 1
          : std::min<size_t>({std::max(1u, std::thread::hardware_concurrency()), kMaxDecodeThreads,
                              distinct.size()});
  if (threads <= 1) {
    for (size_t i : distinct) {
      if (Status status = decode_payload(bundle, bundle.entries[i], arena + arena_start[i]);
          !status.ok()) {
        return status;
      }
    }
    return Status::OK();
  }
  std::vector<size_t> by_size(distinct.size());  // positions in `distinct`, largest payload first
  for (size_t k = 0; k < by_size.size(); ++k) by_size[k] = k;
  std::stable_sort(by_size.begin(), by_size.end(), [&](size_t a, size_t b) {
    return bundle.entries[distinct[a]].raw_size > bundle.entries[distinct[b]].raw_size;
  });
  std::vector<Status> results(distinct.size());
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t n = next++; n < by_size.size(); n = next++) {
      const size_t i = distinct[by_size[n]];
      results[by_size[n]] = decode_payload(bundle, bundle.entries[i], arena + arena_start[i]);
    }
  };
  std::vector<std::thread> helpers;
  for (unsigned t = 1; t < threads; ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no thread to be had (a process at its limit): the threads started decode it all
    }
  }
  work();
  for (std::thread& helper : helpers) helper.join();
  for (Status& status : results) {
    if (!status.ok()) return status;
  }
  return Status::OK();
}

// `claimed_before`: what the payloads decoded with this one have claimed already.
Status over_budget(const Entry& entry, uint64_t at, uint64_t claimed_before,
                   const DecodeLimits& limits) {
  return Status::Corruption(at, describe(entry) + " claims " + std::to_string(entry.raw_size) +
                                    " bytes, which after " + std::to_string(claimed_before) +
                                    " claimed before it exceeds the decode budget of " +
                                    std::to_string(limits.max_decoded_bytes) + " bytes");
}

}  // namespace

namespace {

// What a signature covers: the header and the index, then, when the signature covers the
// payloads (flag bit 1), the sha256 of the payload area's bytes as stored.
std::string signed_bytes(std::string_view header_and_index, std::string_view payloads,
                         bool covers_payloads) {
  std::string message(header_and_index);
  if (covers_payloads) {
    const util::Sha256Digest digest = util::sha256(payloads);
    message.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  }
  return message;
}

}  // namespace

SigningKey SigningKey::generate() {
  SigningKey key;
  if (!sodium_ready()) std::abort();  // libsodium cannot run without a random source
  crypto_sign_keypair(key.public_key.data(), key.secret.data());
  return key;
}

std::string write(const mega_cache::MegaCache& cache, const Fingerprint& fingerprint,
                  const WriteOptions& options) {
  // 2.7 records keep their per-type meaning (every record loads) as one group per type.
  std::vector<std::pair<uint32_t, const mega_cache::Artifact*>> ordered;
  if (cache.layout == mega_cache::Layout::kV2_7) {
    std::map<std::string_view, uint32_t> group_of_type;
    for (const mega_cache::Artifact* artifact : cache.loaded_artifacts()) {
      group_of_type.try_emplace(artifact->type, static_cast<uint32_t>(group_of_type.size()));
    }
    std::vector<std::vector<const mega_cache::Artifact*>> by_group(group_of_type.size());
    for (const mega_cache::Artifact* artifact : cache.loaded_artifacts()) {
      by_group[group_of_type[artifact->type]].push_back(artifact);
    }
    for (uint32_t g = 0; g < by_group.size(); ++g) {
      for (const mega_cache::Artifact* artifact : by_group[g]) ordered.emplace_back(g, artifact);
    }
  } else {
    for (uint32_t g = 0; g < cache.groups.size(); ++g) {
      for (const mega_cache::Artifact& artifact : cache.groups[g].artifacts) {
        ordered.emplace_back(g, &artifact);
      }
    }
  }

  std::vector<Entry> entries;
  std::string payloads;
  // Identical payloads are stored once: checksum -> (entry that first stored it).
  std::multimap<std::array<uint8_t, 16>, size_t> stored_by_checksum;
  ZSTD_CCtx* context = compression_context();
  std::string compressed;
  for (const auto& [group, artifact] : ordered) {
    Entry entry;
    entry.type = artifact->type;
    entry.key = artifact->key;
    entry.group = group;
    entry.raw_size = artifact->content.size();
    entry.checksum = util::xxh3_128(artifact->content);
    bool shared = false;
    auto [first, last] = stored_by_checksum.equal_range(entry.checksum);
    for (auto it = first; it != last && !shared; ++it) {
      const Entry& earlier = entries[it->second];
      if (earlier.raw_size == entry.raw_size &&
          ordered[it->second].second->content == artifact->content) {
        entry.compression = earlier.compression;
        entry.offset = earlier.offset;
        entry.stored_size = earlier.stored_size;
        shared = true;
      }
    }
    if (!shared) {
      compressed.resize(ZSTD_compressBound(artifact->content.size()));
      const size_t size =
          ZSTD_compressCCtx(context, compressed.data(), compressed.size(), artifact->content.data(),
                            artifact->content.size(), options.zstd_level);
      const bool use_zstd = !ZSTD_isError(size) && size < artifact->content.size();
      entry.compression = use_zstd ? Compression::kZstd : Compression::kNone;
      entry.offset = payloads.size();
      entry.stored_size = use_zstd ? size : artifact->content.size();
      payloads.append(use_zstd ? std::string_view(compressed.data(), size) : artifact->content);
      stored_by_checksum.emplace(entry.checksum, entries.size());
    }
    entries.push_back(std::move(entry));
  }

  std::string out(kMagic);
  append_uint_be(out, kVersion, 4);
  append_uint_be(out, options.signing_key ? kFlagSigned | kFlagSignatureCoversPayloads : 0, 4);
  append_uint_be(out, fingerprint.size(), 4);
  for (const auto& [name, value] : fingerprint) {
    put_field(out, name, 2);
    put_field(out, value, 4);
  }
  append_uint_be(out, entries.size(), 4);
  for (const Entry& entry : entries) {
    put_field(out, entry.type, 2);
    put_field(out, entry.key, 4);
    append_uint_be(out, entry.group, 4);
    append_uint_be(out, static_cast<uint8_t>(entry.compression), 1);
    append_uint_be(out, entry.offset, 8);
    append_uint_be(out, entry.stored_size, 8);
    append_uint_be(out, entry.raw_size, 8);
    out.append(reinterpret_cast<const char*>(entry.checksum.data()), entry.checksum.size());
  }
  const size_t index_end = out.size();
  const uint64_t checksum = util::xxh3_64(out);
  std::string signature;
  if (options.signing_key) {
    std::array<uint8_t, 64> value{};
    if (!sodium_ready()) std::abort();
    const std::string message =
        signed_bytes(std::string_view(out.data(), index_end), payloads, true);
    crypto_sign_detached(value.data(), nullptr,
                         reinterpret_cast<const unsigned char*>(message.data()), message.size(),
                         options.signing_key->secret.data());
    signature.append(reinterpret_cast<const char*>(options.signing_key->public_key.data()), 32);
    signature.append(reinterpret_cast<const char*>(value.data()), 64);
  }
  append_uint_be(out, payloads.size(), 8);
  out.append(payloads);
  out.append(signature);
  append_uint_be(out, checksum, 8);
  return out;
}

Result<Bundle> parse(std::string_view file) {
  if (file.size() < kMagic.size() + 8 || file.substr(0, kMagic.size()) != kMagic) {
    return Status::Corruption(0, "not a megacache bundle (magic \\x89MCBNDL\\n missing)");
  }
  util::ByteReader reader(file, kMagic.size());
  Status error;
  Bundle bundle;
  uint32_t flags = 0;
  uint32_t count = 0;
  if (!reader.read_uint(bundle.version, 4, "format version", error) ||
      !reader.read_uint(flags, 4, "flags", error)) {
    return error;
  }
  if (bundle.version != kVersion) {
    return Status::Corruption(kMagic.size(), "bundle format version " +
                                                 std::to_string(bundle.version) +
                                                 " is not supported (this megacache reads 1)");
  }
  if ((flags & kFlagSignatureCoversPayloads) && !(flags & kFlagSigned)) {
    return Status::Corruption(kMagic.size() + 4,
                              "flag bit 1 (the signature covers the payloads) "
                              "is set on an unsigned bundle");
  }
  if ((flags & ~kKnownFlags) != 0) {
    return Status::Corruption(kMagic.size() + 4, "unknown flags " + std::to_string(flags));
  }
  const size_t fingerprint_at = reader.position();
  if (!reader.read_uint(count, 4, "fingerprint field count", error)) return error;
  if (count > kMaxFingerprintFields) {
    return Status::Corruption(fingerprint_at, "fingerprint has " + std::to_string(count) +
                                                  " fields (limit " +
                                                  std::to_string(kMaxFingerprintFields) + ")");
  }
  for (uint32_t i = 0; i < count; ++i) {
    std::string name;
    std::string value;
    if (!read_text(reader, name, 2, "fingerprint name", error) ||
        !read_text(reader, value, 4, "fingerprint value", error)) {
      return error;
    }
    bundle.fingerprint.emplace_back(std::move(name), std::move(value));
  }
  const size_t entries_at = reader.position();
  if (!reader.read_uint(count, 4, "artifact count", error)) return error;
  if (count > reader.remaining() / kMinEntryBytes) {
    return Status::Corruption(entries_at, "artifact count " + std::to_string(count) +
                                              " cannot fit in the " +
                                              std::to_string(reader.remaining()) + " bytes left");
  }
  bundle.entries.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    Entry entry;
    const size_t at = reader.position();
    uint8_t compression = 0;
    std::string_view checksum;
    if (!read_text(reader, entry.type, 2, "artifact type", error) ||
        !read_text(reader, entry.key, 4, "artifact key", error) ||
        !reader.read_uint(entry.group, 4, "group", error) ||
        !reader.read_uint(compression, 1, "compression", error) ||
        !reader.read_uint(entry.offset, 8, "payload offset", error) ||
        !reader.read_uint(entry.stored_size, 8, "stored size", error) ||
        !reader.read_uint(entry.raw_size, 8, "raw size", error) ||
        !reader.read_fixed(checksum, 16, "checksum", error)) {
      return error;
    }
    if (compression > static_cast<uint8_t>(Compression::kZstd)) {
      return Status::Corruption(
          at, describe(entry) + " has unknown compression " + std::to_string(compression));
    }
    if (entry.raw_size > kMaxArtifactBytes) {
      return Status::Corruption(at, describe(entry) + " claims " + std::to_string(entry.raw_size) +
                                        " bytes (limit " + std::to_string(kMaxArtifactBytes) + ")");
    }
    if (!bundle.entries.empty() && entry.group < bundle.entries.back().group) {
      return Status::Corruption(at, describe(entry) + " is out of group order");
    }
    entry.compression = static_cast<Compression>(compression);
    std::memcpy(entry.checksum.data(), checksum.data(), 16);
    bundle.entries.push_back(std::move(entry));
  }
  const size_t index_end = reader.position();
  bundle.header_and_index = file.substr(0, index_end);
  const size_t payloads_at = reader.position();
  std::string_view payloads;
  if (!reader.read_sized(payloads, 8, mega_cache::kMaxBlobBytes, "payload area", error)) {
    return error;
  }
  bundle.payloads = payloads;
  for (const Entry& entry : bundle.entries) {
    if (entry.offset > payloads.size() || entry.stored_size > payloads.size() - entry.offset) {
      return Status::Corruption(payloads_at, describe(entry) + " points past the payload area");
    }
    if (entry.compression == Compression::kNone && entry.stored_size != entry.raw_size) {
      return Status::Corruption(payloads_at + 8 + entry.offset,
                                describe(entry) + " is stored uncompressed with " +
                                    std::to_string(entry.stored_size) + " of " +
                                    std::to_string(entry.raw_size) + " bytes");
    }
  }
  if (flags & kFlagSigned) {
    std::string_view key;
    std::string_view value;
    if (!reader.read_fixed(key, 32, "signer public key", error) ||
        !reader.read_fixed(value, 64, "signature", error)) {
      return error;
    }
    Signature signature;
    std::memcpy(signature.public_key.data(), key.data(), 32);
    std::memcpy(signature.value.data(), value.data(), 64);
    signature.covers_payloads = (flags & kFlagSignatureCoversPayloads) != 0;
    bundle.signature = signature;
  }
  const size_t trailer_at = reader.position();
  uint64_t stored_checksum = 0;
  if (!reader.read_uint(stored_checksum, kTrailerBytes, "trailing checksum", error)) return error;
  if (!reader.finished()) {
    return Status::Corruption(
        reader.position(), std::to_string(reader.remaining()) + " unexpected bytes after the end");
  }
  if (stored_checksum != util::xxh3_64(bundle.header_and_index)) {
    return Status::Corruption(trailer_at, "header and index checksum mismatch");
  }
  return bundle;
}

Result<std::string> Bundle::read(size_t index, const DecodeLimits& limits) const {
  const Entry& entry = entries.at(index);
  const std::string_view stored = payloads.substr(entry.offset, entry.stored_size);
  const uint64_t at = payload_offset(*this, entry);
  if (Status claim = check_claim(entry, stored, at); !claim.ok()) return claim;
  if (entry.raw_size > limits.max_decoded_bytes) return over_budget(entry, at, 0, limits);
  if (entry.compression == Compression::kNone) {
    if (Status status = check_checksum(entry, stored, at); !status.ok()) return status;
    return std::string(stored);
  }
  // Not a std::string yet: that would zero-fill the whole claim, and a claim the blocks can
  // back may still fail on its first block. Uninitialized pages fill only as bytes arrive.
  std::unique_ptr<char[]> raw(new (std::nothrow) char[entry.raw_size]);
  if (!raw) {
    return Status::IOError("cannot allocate " + std::to_string(entry.raw_size) + " bytes for " +
                           describe(entry));
  }
  if (Status status = decompress_claimed(entry, stored, at, raw.get()); !status.ok()) return status;
  if (Status status = check_checksum(entry, std::string_view(raw.get(), entry.raw_size), at);
      !status.ok()) {
    return status;
  }
  return std::string(raw.get(), entry.raw_size);
}

Status Bundle::read_into(size_t index, char* out) const {
  const Entry& entry = entries.at(index);
  const std::string_view stored = payloads.substr(entry.offset, entry.stored_size);
  const uint64_t at = payload_offset(*this, entry);
  if (Status claim = check_claim(entry, stored, at); !claim.ok()) return claim;
  if (Status status = decompress_claimed(entry, stored, at, out); !status.ok()) return status;
  return check_checksum(entry, std::string_view(out, entry.raw_size), at);
}

SignatureCheck check_signature(const Bundle& bundle) {
  if (!bundle.signature) return SignatureCheck::kUnsigned;
  if (!sodium_ready()) return SignatureCheck::kInvalid;
  const std::string message =
      signed_bytes(bundle.header_and_index, bundle.payloads, bundle.signature->covers_payloads);
  const int result = crypto_sign_verify_detached(
      bundle.signature->value.data(), reinterpret_cast<const unsigned char*>(message.data()),
      message.size(), bundle.signature->public_key.data());
  return result == 0 ? SignatureCheck::kValid : SignatureCheck::kInvalid;
}

namespace {

bool signed_by_one_of(const Signature& signature, const std::vector<PublicKey>& keys) {
  return std::find(keys.begin(), keys.end(), signature.public_key) != keys.end();
}

std::string key_hex(const Signature& signature) {
  return util::hex(
      std::string_view(reinterpret_cast<const char*>(signature.public_key.data()), 32));
}

}  // namespace

bool is_trusted(const Bundle& bundle, const std::vector<PublicKey>& trusted_keys) {
  return bundle.signature && check_signature(bundle) == SignatureCheck::kValid &&
         signed_by_one_of(*bundle.signature, trusted_keys);
}

Status check_trust(const Bundle& bundle, const std::vector<PublicKey>& trusted_keys) {
  if (!bundle.signature) {
    if (trusted_keys.empty()) return Status::OK();
    return Status::InvalidArgument(
        "the bundle is unsigned, and trusted keys are configured "
        "(MEGACACHE_TRUSTED_KEYS); sign it with 'megacache convert --sign'");
  }
  const Signature& signature = *bundle.signature;
  if (check_signature(bundle) != SignatureCheck::kValid) {
    return Status::InvalidArgument(
        "the bundle's signature does not verify: it was changed after "
        "signing, or signed by someone else than key " +
        key_hex(signature));
  }
  if (trusted_keys.empty()) return Status::OK();
  if (!signed_by_one_of(signature, trusted_keys)) {
    return Status::InvalidArgument("the bundle is signed by key " + key_hex(signature) +
                                   ", which is not among the trusted keys");
  }
  if (!signature.covers_payloads) {
    return Status::InvalidArgument(
        "the bundle's signature covers its header and index but not its payloads (signed before "
        "flag bit 1 existed): their XXH3 checksums are no cryptographic hash, so a trusted key "
        "cannot vouch for them; sign it again with 'megacache convert --sign'");
  }
  return Status::OK();
}

namespace {

template <size_t N>
bool parse_hex(std::string_view text, std::array<uint8_t, N>& out) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
    text.remove_prefix(1);
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
    text.remove_suffix(1);
  if (text.size() != 2 * N) return false;
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < N; ++i) {
    const int high = digit(text[2 * i]);
    const int low = digit(text[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    out[i] = static_cast<uint8_t>(high * 16 + low);
  }
  return true;
}

}  // namespace

Result<PublicKey> parse_public_key(std::string_view hex) {
  PublicKey key;
  if (!parse_hex(hex, key)) {
    return Status::InvalidArgument(
        "a public key is 64 hex digits (the .pub file megacache keygen writes)");
  }
  return key;
}

Result<SigningKey> parse_signing_key(std::string_view hex) {
  SigningKey key;
  if (!parse_hex(hex, key.secret)) {
    return Status::InvalidArgument(
        "a signing key is 128 hex digits (the file megacache keygen writes)");
  }
  // An Ed25519 secret key in libsodium's layout ends with its public key.
  std::memcpy(key.public_key.data(), key.secret.data() + 32, 32);
  return key;
}

std::vector<FingerprintMismatch> compare_fingerprints(const Fingerprint& built,
                                                      const Fingerprint& current) {
  std::vector<FingerprintMismatch> out;
  for (const auto& [name, value] : built) {
    for (const auto& [current_name, current_value] : current) {
      if (name == current_name && value != current_value)
        out.push_back({name, value, current_value});
    }
  }
  return out;
}

namespace {
// Compiled kernels use the instruction sets the building CPU reported (torch compiles with
// -march=native), so they travel only between CPUs reporting the same flags.
std::string cpu_flags_digest() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0 || line.rfind("Features", 0) == 0) {
      const size_t colon = line.find(':');
      return util::sha256_hex(colon == std::string::npos ? line : line.substr(colon + 1))
          .substr(0, 16);
    }
  }
  return {};
}
}  // namespace

Fingerprint host_fingerprint() {
  struct utsname host;
  Fingerprint out;
  if (::uname(&host) == 0) {
    out.emplace_back("cpu_arch", host.machine);
    if (std::string flags = cpu_flags_digest(); !flags.empty())
      out.emplace_back("cpu_flags", flags);
    out.emplace_back("os", std::string(host.sysname));
  }
  out.emplace_back("megacache", MEGACACHE_VERSION);
  return out;
}

Result<Decoded> decode(const Bundle& bundle, const DecodeLimits& limits) {
  // Each stored payload is decompressed once, straight into one arena; an entry sharing it
  // must carry the same checksum as the entry that was verified against it. Every claim is
  // checked, and the arena sized, before the first byte is allocated or decompressed.
  std::map<std::pair<uint64_t, uint64_t>, size_t> first_user;  // (offset, raw size) -> entry
  std::vector<uint64_t> arena_start(bundle.entries.size());
  uint64_t total = 0;
  for (size_t i = 0; i < bundle.entries.size(); ++i) {
    const Entry& entry = bundle.entries[i];
    const uint64_t at = payload_offset(bundle, entry);
    if (i > 0 && bundle.entries[i - 1].group == entry.group &&
        bundle.entries[i - 1].type != entry.type) {
      return Status::Corruption(at, describe(entry) + " shares group " +
                                        std::to_string(entry.group) + " with type " +
                                        bundle.entries[i - 1].type);
    }
    const auto [it, first] = first_user.try_emplace({entry.offset, entry.raw_size}, i);
    if (!first) {
      const Entry& shared = bundle.entries[it->second];
      if (shared.checksum != entry.checksum) {
        return Status::Corruption(at, describe(entry) + ": payload checksum mismatch");
      }
      if (shared.stored_size != entry.stored_size || shared.compression != entry.compression) {
        return Status::Corruption(at, describe(entry) + " shares the payload of " +
                                          describe(shared) +
                                          " but not its stored size and compression");
      }
      arena_start[i] = arena_start[it->second];
      continue;
    }
    if (Status claim =
            check_claim(entry, bundle.payloads.substr(entry.offset, entry.stored_size), at);
        !claim.ok()) {
      return claim;
    }
    if (entry.raw_size > limits.max_decoded_bytes - total) {
      return over_budget(entry, at, total, limits);
    }
    arena_start[i] = total;
    total += entry.raw_size;
  }
  // Stored payloads are identical (shared above) or disjoint, as write() makes them. Payloads
  // overlapping in other ways would let each stored byte back many claims: ten thousand
  // entries over the same 100 KiB, each a byte shorter, decode to a gigabyte. first_user is
  // ordered by offset, so each payload need only start past the end of the one before it.
  uint64_t stored_end = 0;
  const Entry* stored_last = nullptr;
  for (const auto& [place, i] : first_user) {
    const Entry& entry = bundle.entries[i];
    if (entry.stored_size == 0) continue;  // an empty payload holds no bytes
    if (stored_last != nullptr && entry.offset < stored_end) {
      return Status::Corruption(
          payload_offset(bundle, entry),
          describe(entry) + " overlaps the payload of " + describe(*stored_last));
    }
    stored_end = entry.offset + entry.stored_size;
    stored_last = &entry;
  }
  Decoded decoded;
  // Uninitialized on purpose: zero-filling would touch every page of the claims at once, while
  // untouched pages cost address space only, so memory grows as payloads really decompress.
  decoded.storage.reset(new (std::nothrow) char[total]);
  if (!decoded.storage) {
    return Status::IOError("cannot allocate " + std::to_string(total) +
                           " bytes for the bundle's decoded artifacts");
  }
  std::vector<size_t> distinct;  // one entry per stored payload, in file order
  distinct.reserve(first_user.size());
  for (const auto& [place, i] : first_user) distinct.push_back(i);
  if (Status status = decode_payloads(bundle, distinct, arena_start, total, decoded.storage.get());
      !status.ok()) {
    return status;
  }
  mega_cache::MegaCache& cache = decoded.cache;
  cache.layout = mega_cache::Layout::kV2_8;
  for (size_t i = 0; i < bundle.entries.size(); ++i) {
    const Entry& entry = bundle.entries[i];
    if (i == 0 || bundle.entries[i - 1].group != entry.group) {
      // A bundle has no blob offsets: a group's offset is the index of its first entry.
      cache.groups.push_back(mega_cache::TypeGroup{entry.type, i, {}, false});
    }
    cache.groups.back().artifacts.push_back(mega_cache::Artifact{
        entry.type, entry.key,
        std::string_view(decoded.storage.get() + arena_start[i], entry.raw_size)});
  }
  mega_cache::mark_dropped_groups(cache);
  return decoded;
}

Result<std::string> to_mega_cache(const Bundle& bundle) {
  Result<Decoded> decoded = decode(bundle);
  if (!decoded.ok()) return decoded.status();
  return mega_cache::write_groups(decoded->cache);
}

}  // namespace megacache::bundle
