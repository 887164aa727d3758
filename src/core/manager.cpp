#include "megacache/manager.h"

#include <algorithm>
#include <functional>

#include "util/hash.h"

namespace megacache {
namespace {

// Only buckets the exact-repeat check, which then compares bytes, so it need not resist
// collisions; crc32 runs at memory speed where a general hash would dominate record().
uint64_t artifact_hash(std::string_view type, std::string_view key, std::string_view content) {
  const std::hash<std::string_view> hash;
  const uint64_t h = hash(type) * 0x9E3779B97F4A7C15ull ^ hash(key);
  return h * 0x9E3779B97F4A7C15ull ^ util::crc32(content);
}

}  // namespace

void CacheInfo::add(std::string_view type, std::string_view key) {
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const auto& entry) { return entry.first == type; });
  if (it == entries_.end()) {
    entries_.emplace_back(std::string(type), std::vector<std::string>{});
    it = entries_.end() - 1;
  }
  it->second.emplace_back(key);
}

size_t CacheInfo::count(std::string_view type) const {
  for (const auto& [name, keys] : entries_) {
    if (name == type) return keys.size();
  }
  return 0;
}

std::string_view ArtifactManager::content_of(const Recorded& artifact) {
  return artifact.serialized ? writer_.appended(artifact.offset, artifact.size)
                             : std::string_view(artifact.pending_content);
}

bool ArtifactManager::record(std::string_view type, std::string_view key,
                             std::string_view content) {
  const uint64_t h = artifact_hash(type, key, content);
  auto [first, last] = by_hash_.equal_range(h);
  for (auto it = first; it != last; ++it) {
    const Recorded& seen = recorded_[it->second];
    if (seen.type == type && seen.key == key && content_of(seen) == content) {
      return false;
    }
  }
  const size_t index = recorded_.size();
  recorded_.push_back(Recorded{std::string(type), std::string(key), std::string(content), 0,
                               content.size(), false});
  by_hash_.emplace(h, index);
  auto group = std::find_if(pending_.begin(), pending_.end(),
                            [&](const Pending& p) { return p.type == type; });
  if (group == pending_.end()) {
    pending_.push_back(Pending{std::string(type), {}});
    group = pending_.end() - 1;
  }
  group->recorded.push_back(index);
  return true;
}

Status ArtifactManager::record_blob(std::string_view blob) {
  Result<mega_cache::MegaCache> parsed = mega_cache::parse(blob);
  if (!parsed.ok()) return parsed.status();
  for (const mega_cache::Artifact* artifact : parsed->loaded_artifacts()) {
    record(artifact->type, artifact->key, artifact->content);
  }
  return Status::OK();
}

std::string_view ArtifactManager::serialize() {
  const bool repeats_a_type = std::any_of(pending_.begin(), pending_.end(), [&](const Pending& p) {
    return std::find(serialized_types_.begin(), serialized_types_.end(), p.type) !=
           serialized_types_.end();
  });
  // A second group of a type would hide the first from torch's loader (its groups become a
  // dict, so the last one of each type wins): a compile after a save would drop the graphs
  // saved before it.
  if (repeats_a_type) {
    rewrite_merged();
  } else {
    append_pending();
  }
  pending_.clear();
  if (info_.empty()) {
    return {};
  }
  return writer_.bytes();
}

void ArtifactManager::append_pending() {
  for (const Pending& group : pending_) {
    std::vector<mega_cache::Artifact> artifacts;
    for (size_t index : group.recorded) {
      const Recorded& artifact = recorded_[index];
      artifacts.push_back({artifact.type, artifact.key, artifact.pending_content});
      info_.add(artifact.type, artifact.key);
    }
    std::vector<uint64_t> offsets;
    writer_.append_group(group.type, artifacts, &offsets);
    serialized_types_.push_back(group.type);
    for (size_t i = 0; i < group.recorded.size(); ++i) {
      Recorded& artifact = recorded_[group.recorded[i]];
      artifact.offset = offsets[i];
      artifact.serialized = true;
      std::string().swap(artifact.pending_content);  // the blob holds the bytes now
    }
  }
}

void ArtifactManager::rewrite_merged() {
  // Every artifact, grouped by type in order of the type's first record and in record order
  // within it, so that a key recorded twice keeps its last content last.
  std::vector<std::string> types = serialized_types_;
  for (const Pending& group : pending_) {
    if (std::find(types.begin(), types.end(), group.type) == types.end()) {
      types.push_back(group.type);
    }
  }
  mega_cache::Writer merged;
  std::vector<std::pair<size_t, uint64_t>> placed;  // index into recorded_, new offset
  for (const std::string& type : types) {
    std::vector<size_t> indices;
    std::vector<mega_cache::Artifact> artifacts;
    for (size_t index = 0; index < recorded_.size(); ++index) {
      const Recorded& artifact = recorded_[index];
      if (artifact.type != type) continue;
      indices.push_back(index);
      // A view into the old blob or the pending bytes: both live until writer_ is replaced.
      artifacts.push_back({artifact.type, artifact.key, content_of(artifact)});
      if (!artifact.serialized) info_.add(artifact.type, artifact.key);
    }
    std::vector<uint64_t> offsets;
    merged.append_group(type, artifacts, &offsets);
    for (size_t i = 0; i < indices.size(); ++i) placed.emplace_back(indices[i], offsets[i]);
  }
  for (const auto& [index, offset] : placed) {
    Recorded& artifact = recorded_[index];
    artifact.offset = offset;
    artifact.serialized = true;
    std::string().swap(artifact.pending_content);
  }
  writer_ = std::move(merged);
  serialized_types_ = std::move(types);
}

void ArtifactManager::clear() {
  recorded_.clear();
  by_hash_.clear();
  pending_.clear();
  serialized_types_.clear();
  writer_.clear();
  info_.clear();
}

}  // namespace megacache
