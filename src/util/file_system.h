// The file-system layer. Every file the core writes goes through here, so that writes are
// atomic in one place and tests can inject failures by wrapping FileSystem.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/status.h"

namespace megacache::util {

class FileSystem {
 public:
  virtual ~FileSystem() = default;

  // mkdir -p; existing directories are fine.
  virtual Status create_directories(const std::string& dir) = 0;
  // Names in `dir` (not "." or ".."); empty if it does not exist.
  virtual std::vector<std::string> list_directory(const std::string& dir) = 0;
  // True when `path` is a regular file holding exactly `content`; reads only as far as the
  // first difference and never more than `content.size()` bytes.
  virtual bool file_equals(const std::string& path, std::string_view content) = 0;
  virtual Result<std::string> read_file(const std::string& path) = 0;
  // Writes a hidden temp file beside `path` and renames it over `path`: readers see the old
  // file or the whole new one, never a part. The parent directory must exist.
  virtual Status write_atomic(const std::string& path, std::string_view content) = 0;

  struct FileInfo {
    uint64_t size = 0;
    int64_t modified_unix = 0;  // seconds
  };
  // Size and modification time of the regular file at `path`, or nullopt.
  virtual std::optional<FileInfo> file_info(const std::string& path) = 0;
  // Sets the modification time to now (LRU bookkeeping). Missing files are ignored.
  virtual void touch(const std::string& path) = 0;
  // Removes a file; a missing one is fine.
  virtual Status remove_file(const std::string& path) = 0;

  // The process's real file system. Thread-safe.
  static FileSystem& real();
};

}  // namespace megacache::util
