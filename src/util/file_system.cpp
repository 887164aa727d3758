#include "util/file_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <thread>

namespace megacache::util {
namespace {

std::string errno_text(const char* what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

class PosixFileSystem final : public FileSystem {
 public:
  Status create_directories(const std::string& dir) override {
    if (dir.empty() || is_directory(dir)) {
      return Status::OK();
    }
    const size_t slash = dir.find_last_of('/');
    if (slash != std::string::npos && slash > 0) {
      if (Status parent = create_directories(dir.substr(0, slash)); !parent.ok()) {
        return parent;
      }
    }
    if (::mkdir(dir.c_str(), 0777) != 0 && !(errno == EEXIST && is_directory(dir))) {
      return Status::IOError(errno_text("cannot create directory", dir));
    }
    return Status::OK();
  }

  std::vector<std::string> list_directory(const std::string& dir) override {
    std::vector<std::string> names;
    DIR* handle = ::opendir(dir.c_str());
    if (handle == nullptr) return names;
    while (const dirent* entry = ::readdir(handle)) {
      const std::string_view name = entry->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(handle);
    return names;
  }

  bool file_equals(const std::string& path, std::string_view content) override {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    struct stat st;
    bool equal = ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
                 static_cast<uint64_t>(st.st_size) == content.size();
    char buffer[1 << 16];
    size_t done = 0;
    while (equal && done < content.size()) {
      const ssize_t n = ::read(fd, buffer, std::min(sizeof buffer, content.size() - done));
      if (n < 0 && errno == EINTR) continue;
      equal = n > 0 && std::memcmp(buffer, content.data() + done, static_cast<size_t>(n)) == 0;
      done += n > 0 ? static_cast<size_t>(n) : 0;
    }
    ::close(fd);
    return equal;
  }

  std::optional<FileInfo> file_info(const std::string& path) override {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return std::nullopt;
    return FileInfo{static_cast<uint64_t>(st.st_size), static_cast<int64_t>(st.st_mtime)};
  }

  void touch(const std::string& path) override { ::utimensat(AT_FDCWD, path.c_str(), nullptr, 0); }

  Status remove_file(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return Status::IOError(errno_text("cannot remove", path));
    }
    return Status::OK();
  }

  Result<std::string> read_file(const std::string& path) override {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return errno == ENOENT ? Status::NotFound(errno_text("cannot open", path))
                             : Status::IOError(errno_text("cannot open", path));
    }
    std::string out;
    struct stat st;
    if (::fstat(fd, &st) == 0 && st.st_size > 0) {
      out.reserve(static_cast<size_t>(st.st_size));
    }
    char buffer[1 << 16];
    while (true) {
      const ssize_t n = ::read(fd, buffer, sizeof buffer);
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        Status error = Status::IOError(errno_text("cannot read", path));
        ::close(fd);
        return error;
      }
      out.append(buffer, static_cast<size_t>(n));
    }
    ::close(fd);
    return out;
  }

  Status write_atomic(const std::string& path, std::string_view content) override {
    const std::string temp = temp_path_for(path);
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0) {
      return Status::IOError(errno_text("cannot create", temp));
    }
    size_t done = 0;
    while (done < content.size()) {
      const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        Status error = Status::IOError(errno_text("cannot write", temp));
        ::close(fd);
        ::unlink(temp.c_str());
        return error;
      }
      done += static_cast<size_t>(n);
    }
    if (::close(fd) != 0) {
      Status error = Status::IOError(errno_text("cannot write", temp));
      ::unlink(temp.c_str());
      return error;
    }
    if (::rename(temp.c_str(), path.c_str()) != 0) {
      Status error = Status::IOError(errno_text("cannot rename into", path));
      ::unlink(temp.c_str());
      return error;
    }
    return Status::OK();
  }

 private:
  static bool is_directory(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  }

  // A leading dot hides the temp file from torch's cache lookups, which skip dot files;
  // pid, thread and a counter keep concurrent writers apart.
  static std::string temp_path_for(const std::string& path) {
    static std::atomic<uint64_t> counter{0};
    const size_t slash = path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
    const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
    return dir + "." + name + "." + std::to_string(::getpid()) + "." +
           std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id()) % 1000000) +
           "." + std::to_string(counter.fetch_add(1)) + ".tmp";
  }
};

}  // namespace

FileSystem& FileSystem::real() {
  static PosixFileSystem instance;
  return instance;
}

}  // namespace megacache::util
