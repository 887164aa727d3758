// ArtifactManager: the C++ counterpart of torch's CacheArtifactManager. It records cache
// artifacts as a compile produces them and serializes them into Mega-Cache bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "megacache/mega_cache.h"

namespace megacache {

// Keys per artifact type, types in the order they were first added (torch's CacheInfo).
class CacheInfo {
 public:
  void add(std::string_view type, std::string_view key);
  void clear() { entries_.clear(); }
  bool empty() const { return entries_.empty(); }
  size_t count(std::string_view type) const;
  const std::vector<std::pair<std::string, std::vector<std::string>>>& entries() const {
    return entries_;
  }

 private:
  std::vector<std::pair<std::string, std::vector<std::string>>> entries_;
};

// Not thread-safe: torch records under its compile lock, and callers must serialize
// access the same way.
class ArtifactManager {
 public:
  // Copies the bytes. An exact repeat of (type, key, content) is ignored, whether or not it
  // has been serialized since; the same key with other content is a new artifact.
  // Returns true when the artifact was new.
  bool record(std::string_view type, std::string_view key, std::string_view content);

  // Records what torch would load from a Mega-Cache blob (the last group of each type), as
  // record() does one artifact at a time: a bundle loaded from a store is kept when the
  // process publishes again. Errors: Corruption(offset, reason); nothing is recorded then.
  Status record_blob(std::string_view blob);

  // True when something was recorded since the last serialize().
  bool need_serialize() const { return !pending_.empty(); }

  // The whole blob of everything recorded so far, or an empty view when nothing ever was
  // (torch returns None then). Each type is one group, so a reader that keeps the last group
  // of a type (torch's load) still gets every artifact. When only new types were recorded
  // since the last call, their groups are appended (the cost is the new bytes); a type that
  // is already in the blob rewrites it. The view is valid until the next
  // record/serialize/clear.
  std::string_view serialize();

  // Everything serialized so far, per type.
  const CacheInfo& cache_info() const { return info_; }

  void clear();

 private:
  // A recorded artifact. Its bytes live here until serialize() appends them to the blob;
  // after that only their place in the blob is kept, so each payload is held once.
  struct Recorded {
    std::string type;
    std::string key;
    std::string pending_content;
    uint64_t offset = 0;  // in the blob, once serialized
    uint64_t size = 0;
    bool serialized = false;
  };
  struct Pending {
    std::string type;
    std::vector<size_t> recorded;  // indices into recorded_, in record order
  };

  std::string_view content_of(const Recorded& artifact);
  void append_pending();
  void rewrite_merged();

  std::vector<Recorded> recorded_;
  // Exact-repeat detection: hash of (type, key, content) -> indices into recorded_.
  std::unordered_multimap<uint64_t, size_t> by_hash_;
  std::vector<Pending> pending_;               // in order of first record since the last serialize
  std::vector<std::string> serialized_types_;  // the blob's groups, in order
  mega_cache::Writer writer_;
  CacheInfo info_;
};

}  // namespace megacache
