// Factories of the store backends, one per file; store.cpp picks one by URL.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "megacache/store.h"
#include "util/file_system.h"

namespace megacache::store {

// Parameters after '?' in a store URL.
struct UrlOptions {
  std::vector<std::pair<std::string, std::string>> values;
  std::optional<std::string> get(std::string_view name) const {
    for (const auto& [key, value] : values) {
      if (key == name) return value;
    }
    return std::nullopt;
  }
};

// `files` is the layer every file of the store goes through, and must outlive the store;
// tests pass one that faults.
Result<std::unique_ptr<Store>> open_file_store(const std::string& url, const std::string& root,
                                               const UrlOptions& options,
                                               util::FileSystem& files = util::FileSystem::real());
Result<std::unique_ptr<Store>> open_redis_store(const std::string& url, const std::string& host,
                                                int port, int db, const UrlOptions& options);
std::unique_ptr<Store> make_tiered(const std::string& url, std::unique_ptr<Store> local,
                                   std::vector<std::unique_ptr<Store>> remotes);

}  // namespace megacache::store
