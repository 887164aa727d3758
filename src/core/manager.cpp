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

bool ArtifactManager::record(std::string_view type, std::string_view key,
                             std::string_view content) {
  const uint64_t h = artifact_hash(type, key, content);
  auto [first, last] = seen_.equal_range(h);
  for (auto it = first; it != last; ++it) {
    const Seen& seen = it->second;
    if (seen.type == type && seen.key == key && seen.content == content) {
      return false;
    }
  }
  const Seen& stored =
      seen_.emplace(h, Seen{std::string(type), std::string(key), std::string(content)})->second;
  auto group = std::find_if(pending_.begin(), pending_.end(),
                            [&](const Pending& p) { return p.type == type; });
  if (group == pending_.end()) {
    pending_.push_back(Pending{std::string(type), {}});
    group = pending_.end() - 1;
  }
  group->artifacts.push_back(mega_cache::Artifact{stored.type, stored.key, stored.content});
  return true;
}

std::string_view ArtifactManager::serialize() {
  for (const Pending& group : pending_) {
    for (const mega_cache::Artifact& artifact : group.artifacts) {
      info_.add(artifact.type, artifact.key);
    }
    writer_.append_group(group.type, group.artifacts);
  }
  pending_.clear();
  if (info_.empty()) {
    return {};
  }
  return writer_.bytes();
}

void ArtifactManager::clear() {
  seen_.clear();
  pending_.clear();
  writer_.clear();
  info_.clear();
}

}  // namespace megacache
