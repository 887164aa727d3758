// One entry point for every file megacache reads: a torch Mega-Cache blob (2.7 or 2.8+), a
// standalone_compile binary file, a megacache bundle, a precompile package, or a
// torch.compiler.precompile pair. It checks what each format allows
// (crc, checksums, signature and trust) and yields the artifacts torch would load.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/aot.h"
#include "megacache/bundle.h"
#include "megacache/mega_cache.h"
#include "megacache/populate.h"
#include "megacache/precompile.h"
#include "megacache/status.h"

namespace megacache {

enum class FileKind : uint8_t { kMegaCache, kStandalone, kBundle, kPackage, kAotPair };

struct OpenedFile {
  FileKind kind = FileKind::kMegaCache;
  std::optional<mega_cache::StandaloneArtifact> standalone;  // kStandalone
  std::optional<bundle::Bundle> bundle;                      // kBundle, kPackage, kAotPair
  bundle::Decoded decoded;  // owns the artifacts' bytes for a bundle
  // kPackage; held by pointer so that `direct` (its fallback artifacts) survives a move.
  std::shared_ptr<const precompile::Package> package;
  std::optional<mega_cache::MegaCache> direct;  // views into the file or the package otherwise
  std::shared_ptr<const aot::Pair> pair;        // kAotPair

  // The artifacts, or nullptr for an AOTCompiledArtifact (a pickle, no cache artifacts) and a
  // torch.compiler.precompile pair (whose cache only torch can open).
  const mega_cache::MegaCache* artifacts() const {
    if (kind == FileKind::kBundle) return &decoded.cache;
    return direct ? &*direct : nullptr;
  }
};

// Trusted signing keys from a comma-separated list whose items are 64-hex-digit public keys
// or paths of .pub files (the form of MEGACACHE_TRUSTED_KEYS). Errors: InvalidArgument,
// IOError, naming the item.
Result<std::vector<bundle::PublicKey>> parse_trusted_keys(std::string_view spec);

// Views point into `file`, which must outlive the result. Thread-safe. Errors: Corruption
// with the offset in `file`; InvalidArgument when a bundle's signature fails `trusted_keys`
// (see bundle::check_trust).
Result<OpenedFile> open_file(std::string_view file,
                             const std::vector<bundle::PublicKey>& trusted_keys);

// Writes what `opened` carries into a torch cache dir: its artifacts (populate), and for a
// package its kernels too (precompile::populate_package). Errors as those functions.
Result<PopulateReport> populate_file(const OpenedFile& opened, const std::string& cache_dir,
                                     const PopulateOptions& options = {});

// Everything loading `file` would check (format, checksums, signature and trust, every key),
// without writing. Returns how many files populate would write (0 for an AOTCompiledArtifact
// and a precompile pair; a package's kernels count).
Result<size_t> verify_file(std::string_view file,
                           const std::vector<bundle::PublicKey>& trusted_keys);

// open_file for what megacache loads and stores: a standalone_compile AOTCompiledArtifact,
// which carries a pickle instead, is refused with InvalidArgument saying how to load it.
Result<OpenedFile> open_loadable(std::string_view file,
                                 const std::vector<bundle::PublicKey>& trusted_keys);

// open_loadable for callers that need cache artifacts: a precompile pair, whose cache only
// torch can open, is refused too, with InvalidArgument saying how to load it.
Result<OpenedFile> open_artifacts(std::string_view file,
                                  const std::vector<bundle::PublicKey>& trusted_keys);

}  // namespace megacache
