// Codec for PyTorch's Mega-Cache bytes, the blob that torch.compiler.save_cache_artifacts()
// returns and load_cache_artifacts() accepts, and for the header of standalone_compile's
// binary files. The byte layouts are specified as grammars in docs/torch-format.md; read
// that first. Nothing here unpickles or interprets payloads: they are opaque bytes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/status.h"

namespace megacache::mega_cache {

// The artifact types torch 2.8+ registers, by their on-wire type string. Also the 2.7
// enum values in this order (INDUCTOR=0 AUTOTUNE=1 AOT_AUTOGRAD=2 PGO=3); never reorder.
inline constexpr std::string_view kInductor = "inductor";
inline constexpr std::string_view kAutotune = "autotune";
inline constexpr std::string_view kAotAutograd = "aot_autograd";
inline constexpr std::string_view kPgo = "pgo";
inline constexpr std::string_view kPrecompile = "precompile";

// True for the five types torch registers and populates; torch fails a whole load on
// any other type, and so does megacache's populate.
bool is_known_type(std::string_view type);

enum class Layout : uint8_t {
  kV2_7 = 0,  // torch 2.7: no crc, per-record u64 enum type, plain UTF-8 strings
  kV2_8 = 1,  // torch 2.8 and later: crc32, base64 strings, repeated type groups
};

// Refuse inputs beyond these before allocating for them.
inline constexpr uint64_t kMaxBlobBytes = uint64_t{1} << 36;  // 64 GiB
inline constexpr uint64_t kMaxStringBytes = 64 * 1024;        // type and key strings

struct Artifact {
  std::string type;
  std::string key;
  std::string_view content;  // points into the parsed buffer, or into owned storage
};

// An artifact that owns its bytes, for results that outlive the parsed buffer.
struct OwnedArtifact {
  std::string type;
  std::string key;
  std::string content;
};

struct TypeGroup {
  std::string type;
  uint64_t offset = 0;  // where the group starts in the blob
  std::vector<Artifact> artifacts;
  // torch loads the groups with dict(): only the last group of each type survives.
  bool dropped_by_torch = false;
};

struct MegaCache {
  Layout layout = Layout::kV2_8;
  uint32_t crc32 = 0;             // stored crc (2.8+ only); always verified by parse()
  std::vector<TypeGroup> groups;  // in file order; 2.7 records are grouped by runs of one type

  // What torch.compiler.load_cache_artifacts would populate, in its order: types in order
  // of first appearance, each with the artifacts of its last group.
  std::vector<const Artifact*> loaded_artifacts() const;
};

// Sets TypeGroup::dropped_by_torch: every group but the last of its type (2.8+ only).
void mark_dropped_groups(MegaCache& cache);

// Parses either layout. Artifact contents are views into `blob`, which must outlive the
// result. Thread-safe. Errors: Corruption(offset, reason) for any malformed byte; never a
// partial result.
Result<MegaCache> parse(std::string_view blob);

// Appends 2.8+ type groups to a growing blob and returns the whole valid blob at any time,
// as torch's AppendingByteSerializer does, but the crc is carried forward so each call
// costs only what was appended. Not thread-safe.
class Writer {
 public:
  Writer();
  // `content_offsets`, if given, receives where each content starts in the blob.
  void append_group(std::string_view type, const std::vector<Artifact>& artifacts,
                    std::vector<uint64_t>* content_offsets = nullptr);
  // The whole blob with a valid crc; valid until the next append or clear.
  std::string_view bytes();
  // Bytes already appended, without fixing the crc; valid until the next append or clear.
  std::string_view appended(uint64_t offset, uint64_t size) const {
    return std::string_view(buffer_).substr(offset, size);
  }
  void clear();

 private:
  void put_u64(uint64_t value);
  void put_bytes(std::string_view bytes);
  void put_str(std::string_view text);

  std::string buffer_;
  uint32_t crc_ = 0;  // crc32 of buffer_[4 : crc_covered_]
  size_t crc_covered_ = 4;
};

// Writes artifacts in the 2.8+ layout with each type exactly once, types in order of
// first appearance. Thread-safe.
std::string write(const std::vector<const Artifact*>& artifacts);

// Writes every group of `cache` as it stands, repeats included, in the 2.8+ layout: a 2.8+
// blob parsed and written back gives the same bytes. Thread-safe.
std::string write_groups(const MegaCache& cache);

// standalone_compile's binary files: torch._inductor.CompiledArtifact.save(format="binary").
enum class StandaloneKind : uint8_t {
  kCacheCompiledArtifact = 0,  // holds a Mega-Cache blob
  kAOTCompiledArtifact = 1,    // holds one pickle; no Mega-Cache inside
  kHeaderless2_8 = 2,          // torch 2.8/2.9: no kind header
};

struct StandaloneArtifact {
  StandaloneKind kind = StandaloneKind::kCacheCompiledArtifact;
  std::string_view torch_key;    // 32 raw bytes, sha256 of the torch build
  std::string aot_autograd_key;  // empty for kAOTCompiledArtifact
  std::string_view payload;      // the Mega-Cache blob, or the AOT pickle
};

// Recognises a standalone_compile binary file; views point into `file`.
// Errors: Corruption(offset, reason).
Result<StandaloneArtifact> parse_standalone(std::string_view file);

// The binary file torch's CompiledArtifact.save(format="binary") writes for `artifact`
// (CacheCompiledArtifact or the headerless 2.8 layout; an AOTCompiledArtifact with its
// pickle). parse_standalone(write_standalone(a)) gives `a` back. Thread-safe.
std::string write_standalone(const StandaloneArtifact& artifact);

// What a file holds, judged from its first bytes.
enum class FileFormat : uint8_t { kUnknown, kMegaCache2_7, kMegaCache2_8, kStandalone };
FileFormat sniff(std::string_view bytes);

// The Mega-Cache blob a file carries: the file itself, or the payload of a standalone_compile
// file (then `standalone` describes the wrapper). `blob` is empty for an AOTCompiledArtifact,
// which carries a pickle instead. Views point into `file`. Errors: Corruption from the
// standalone header; the blob itself is not parsed here.
struct FileContents {
  std::optional<StandaloneArtifact> standalone;
  std::string_view blob;
};
Result<FileContents> locate_mega_cache(std::string_view file);

}  // namespace megacache::mega_cache
