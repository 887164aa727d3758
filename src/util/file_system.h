// The file-system layer. Every file the core touches goes through here, so that writes are
// atomic in one place, nothing beneath a root is reached through a link, and tests can inject
// failures by wrapping FileSystem.
//
// Paths under a cache dir, a store root or an unpacked package are a pair (root, relative).
// The root is the caller's configuration and is resolved like any path the user typed. The
// relative part is '/'-separated names (never empty, ".", ".." or holding a NUL) and is walked
// one directory at a time with openat(O_NOFOLLOW) from the root's descriptor, so a symbolic
// link planted anywhere beneath the root, by anyone who can write there, is refused with
// InvalidArgument naming it, never followed (docs/security.md).
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

  // mkdir -p of `root` (links followed: it is the user's) and then of `dir` beneath it
  // (links refused); existing directories are fine. `dir` may be empty.
  virtual Status create_directories(const std::string& root, std::string_view dir) = 0;
  // Names in `dir` (not "." or ".."); empty if it does not exist or is a link.
  virtual std::vector<std::string> list_directory(const std::string& root,
                                                  std::string_view dir) = 0;
  // True when `path` is a regular file holding exactly `content`; reads only as far as the
  // first difference and never more than `content.size()` bytes.
  virtual bool file_equals(const std::string& root, std::string_view path,
                           std::string_view content) = 0;
  // The whole regular file, which may hold at most `max_bytes`: a file anyone else can write
  // is an input, and its size a claim to check before reading it all. Errors: NotFound,
  // InvalidArgument (a link, not a regular file, larger than `max_bytes`), IOError.
  virtual Result<std::string> read_file(const std::string& root, std::string_view path,
                                        uint64_t max_bytes) = 0;
  // Writes a hidden temp file beside `path` and renames it over `path`: readers see the old
  // file or the whole new one, never a part. The parent directory must exist.
  virtual Status write_atomic(const std::string& root, std::string_view path,
                              std::string_view content) = 0;

  struct FileInfo {
    uint64_t size = 0;
    int64_t modified_unix = 0;  // seconds
  };
  // Size and modification time of the regular file at `path` (not a link), or nullopt.
  virtual std::optional<FileInfo> file_info(const std::string& root, std::string_view path) = 0;
  // Sets the modification time to now (LRU bookkeeping). Missing files and links are ignored.
  virtual void touch(const std::string& root, std::string_view path) = 0;
  // Removes a file, or a link itself (never its target); a missing one is fine.
  virtual Status remove_file(const std::string& root, std::string_view path) = 0;
  // Opens, creating it if missing, a regular file to update in place (a lock, counters).
  // Refuses a link and a file with other hard links, whose bytes would live elsewhere too.
  // The caller owns the descriptor and closes it.
  virtual Result<int> open_for_update(const std::string& root, std::string_view path) = 0;

  // The process's real file system. Thread-safe.
  static FileSystem& real();
};

// A file the user named (a command-line argument, a path given to the Python API): unlike
// paths beneath a root, links are followed, since the user chose them. write_named_file is
// atomic like write_atomic, replaces a link rather than writing through it, and creates the
// file with `mode` (less the umask) from the start.
Result<std::string> read_named_file(const std::string& path);
Status write_named_file(const std::string& path, std::string_view content, unsigned mode = 0666);

}  // namespace megacache::util
