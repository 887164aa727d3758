// Native populate: writes Mega-Cache artifacts into a torch cache directory
// (TORCHINDUCTOR_CACHE_DIR) exactly where, and with exactly the bytes, torch's own
// CacheArtifact.populate_cache() would. Layout per type is in docs/torch-format.md.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/manager.h"
#include "megacache/mega_cache.h"
#include "megacache/status.h"

namespace megacache {

namespace util {
class FileSystem;
}

struct PopulateOptions {
  // torch rewrites PGO keys that start with "mast:" to the loading job's own key
  // (pgo.get_cache_key()). Called at most once, and only when such a key is present;
  // unset or returning "" keeps the keys as they are.
  std::function<std::string()> pgo_cache_key;
  // Artifact types beyond torch's built-in five that the caller populates itself: the types
  // registered in torch's CacheArtifactFactory (CacheArtifactFactory.register). Torch loads
  // them through their own populate_cache(), so they are checked for nothing but their type
  // and returned in PopulateReport::caller_populated instead of being written. Any other
  // unknown type refuses the whole input, as torch does.
  std::vector<std::string> caller_populated_types;
};

// One file that populate would write, relative to the cache dir.
struct PlannedFile {
  std::string relative_dir;  // "" for the cache dir itself
  // Empty for FX graph and AOTAutograd entries, which torch names by the sha256 of their
  // content (torch_sha256_name); populate computes it only when it has to write.
  std::string file_name;
  const mega_cache::Artifact* artifact = nullptr;
  bool caller_populates = false;  // one of PopulateOptions::caller_populated_types: no file
};

// Checks every artifact in every group (dropped ones too) and maps what torch would load to
// file paths. Nothing is touched on disk. Thread-safe. Errors: InvalidArgument naming the
// type, the key and the rule it breaks (unknown type, absolute path, "..", NUL, empty
// segment, control character, over-long name).
Result<std::vector<PlannedFile>> plan_populate(const mega_cache::MegaCache& cache,
                                               const PopulateOptions& options = {});

struct PopulateReport {
  CacheInfo info;  // what torch's populate_caches would return
  size_t files_written = 0;
  size_t files_unchanged = 0;  // already present with the same bytes
  // The artifacts of PopulateOptions::caller_populated_types, in torch's load order, copied
  // so that they outlive the input.
  std::vector<mega_cache::OwnedArtifact> caller_populated;
};

// plan_populate, then writes each file atomically. A file already holding the same bytes
// (for content-named entries: any file in the key's dir) is left alone, so a repeated load
// reads instead of hashing and writing. Safe while other processes populate or read the same dir.
// On an invalid input nothing is written. On an I/O error the files written before it stay (each is
// whole). Thread-safe for distinct or identical dirs.
Result<PopulateReport> populate(const mega_cache::MegaCache& cache, const std::string& cache_dir,
                                const PopulateOptions& options = {});
Result<PopulateReport> populate(const mega_cache::MegaCache& cache, const std::string& cache_dir,
                                const PopulateOptions& options, util::FileSystem& fs);

}  // namespace megacache
