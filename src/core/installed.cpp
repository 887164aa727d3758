// What depends only on the installed software (docs/installed-keys.md): the identity of an
// installed package's files.
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

#include "megacache/precompile.h"
#include "util/hash.h"

namespace megacache::precompile {

Result<std::string> installed_identity(const std::string& root) {
  namespace fs = std::filesystem;
  std::error_code error;
  if (!fs::is_directory(fs::symlink_status(root, error))) {
    return Status::NotFound(root + " is not a directory");
  }
  std::vector<std::string> lines;
  fs::recursive_directory_iterator it(root, fs::directory_options::none, error);
  // Every path the iterator yields starts with root and a separator (fs::relative would
  // resolve both paths on the file system for each of torch's 14,000 files).
  const size_t prefix = (fs::path(root) / "").native().size();
  if (error) return Status::IOError("cannot list " + root + ": " + error.message());
  for (; it != fs::recursive_directory_iterator(); it.increment(error)) {
    if (error) return Status::IOError("cannot list " + root + ": " + error.message());
    const fs::path& path = it->path();
    if (it->is_directory(error) && !it->is_symlink(error)) {
      // Bytecode Python writes on import: not what anything hashes, and it changes per machine.
      if (path.filename() == "__pycache__") it.disable_recursion_pending();
      continue;
    }
    struct stat info{};
    if (::lstat(path.c_str(), &info) != 0) {
      return Status::IOError("cannot stat " + path.string());
    }
    // Links and special files are named by what they are; regular files by size and mtime.
    lines.push_back(path.native().substr(prefix) + '\0' + std::to_string(info.st_mode) + '\0' +
                    std::to_string(info.st_size) + '\0' + std::to_string(info.st_mtim.tv_sec) +
                    '.' + std::to_string(info.st_mtim.tv_nsec) + '\n');
  }
  std::sort(lines.begin(), lines.end());
  std::string hashed;
  for (const std::string& line : lines) hashed += line;
  return util::sha256_hex(hashed);
}

}  // namespace megacache::precompile
