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
#include <utility>

#include "util/utf8.h"

namespace megacache::util {
namespace {

// Owns a descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(-1); }
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  void reset(int fd) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  int fd_ = -1;
};

std::string joined(const std::string& root, std::string_view path) {
  return path.empty() ? root : root + "/" + std::string(path);
}

std::string errno_text(const char* what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

Status link_refused(const std::string& where) {
  return Status::InvalidArgument(
      "refusing the symbolic link " + where +
      ": megacache never follows links beneath its cache dirs, stores and packages, since anyone "
      "who can write there could point them elsewhere; remove it (docs/security.md)");
}

// Why openat of `name` in `dir` failed, with errno as openat left it.
Status open_error(int dir, const std::string& name, const std::string& where) {
  const int error = errno;
  struct stat st;
  if ((error == ELOOP || error == ENOTDIR || error == EMLINK) &&
      ::fstatat(dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
    return link_refused(where);
  }
  errno = error;
  if (error == ENOENT) return Status::NotFound(errno_text("cannot open", where));
  if (error == ENOTDIR) return Status::InvalidArgument(where + " is not a directory");
  return Status::IOError(errno_text("cannot open", where));
}

// The names of `path`, each checked: none empty, ".", ".." or holding a NUL.
Result<std::vector<std::string>> names_of(const std::string& root, std::string_view path) {
  if (root.empty() || root.find('\0') != std::string::npos) {
    return Status::InvalidArgument("the directory '" + printable(root) +
                                   "' is empty or holds a NUL character");
  }
  std::vector<std::string> names;
  while (!path.empty()) {
    const size_t slash = path.find('/');
    const std::string_view name = path.substr(0, slash);
    if (name.empty() || name == "." || name == ".." || name.find('\0') != std::string_view::npos) {
      return Status::InvalidArgument("the path '" + printable(path) + "' beneath " + root +
                                     " has an empty, '.', '..' or NUL name");
    }
    names.emplace_back(name);
    path = slash == std::string_view::npos ? std::string_view() : path.substr(slash + 1);
  }
  return names;
}

// mkdir -p with links followed: for the root, which the user configured.
Status create_root(const std::string& dir) {
  struct stat st;
  if (dir.empty() || (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) return Status::OK();
  const size_t slash = dir.find_last_of('/');
  if (slash != std::string::npos && slash > 0) {
    if (Status parent = create_root(dir.substr(0, slash)); !parent.ok()) return parent;
  }
  if (::mkdir(dir.c_str(), 0777) != 0 &&
      !(errno == EEXIST && ::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode))) {
    return Status::IOError(errno_text("cannot create directory", dir));
  }
  return Status::OK();
}

// The directory `names[0..count)` beneath `root`, opened one level at a time without following
// links; missing levels are made when `create`.
Result<Fd> open_directory(const std::string& root, const std::vector<std::string>& names,
                          size_t count, bool create) {
  Fd dir(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) {
    return errno == ENOENT ? Status::NotFound(errno_text("cannot open", root))
                           : Status::IOError(errno_text("cannot open", root));
  }
  std::string where = root;
  for (size_t i = 0; i < count; ++i) {
    const std::string& name = names[i];
    where += "/" + name;
    constexpr int kFlags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
    int next = ::openat(dir.get(), name.c_str(), kFlags);
    if (next < 0 && errno == ENOENT && create) {
      if (::mkdirat(dir.get(), name.c_str(), 0777) != 0 && errno != EEXIST) {
        return Status::IOError(errno_text("cannot create directory", where));
      }
      next = ::openat(dir.get(), name.c_str(), kFlags);
    }
    if (next < 0) return open_error(dir.get(), name, where);
    dir = Fd(next);
  }
  return dir;
}

// The parent directory of `path` beneath `root`, and the last name in it.
struct Located {
  Fd parent;
  std::string name;
  std::string where;  // root/path, for messages
};

Result<Located> locate(const std::string& root, std::string_view path,
                       bool create_parents = false) {
  Result<std::vector<std::string>> names = names_of(root, path);
  if (!names.ok()) return names.status();
  if (names->empty()) return Status::InvalidArgument("no file name beneath " + root);
  Result<Fd> parent = open_directory(root, *names, names->size() - 1, create_parents);
  if (!parent.ok()) return parent.status();
  return Located{std::move(parent).value(), names->back(), joined(root, path)};
}

Result<std::string> read_all(int fd, const std::string& where, uint64_t max_bytes) {
  std::string out;
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::IOError(errno_text("cannot stat", where));
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument(where + " is not a regular file");
  auto too_large = [&](uint64_t size) {
    return Status::InvalidArgument(where + " holds " + std::to_string(size) +
                                   " bytes, more than the " + std::to_string(max_bytes) +
                                   " it may");
  };
  if (static_cast<uint64_t>(st.st_size) > max_bytes)
    return too_large(static_cast<uint64_t>(st.st_size));
  out.reserve(static_cast<size_t>(st.st_size));
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::IOError(errno_text("cannot read", where));
    }
    out.append(buffer, static_cast<size_t>(n));
    if (out.size() > max_bytes) return too_large(out.size());  // it grew while being read
  }
  return out;
}

// A leading dot hides the temp file from torch's cache lookups, which skip dot files;
// pid, thread and a counter keep concurrent writers apart.
std::string temp_name_for(const std::string& name) {
  static std::atomic<uint64_t> counter{0};
  return "." + name + "." + std::to_string(::getpid()) + "." +
         std::to_string(std::hash<std::thread::id>{}(std::this_thread::get_id()) % 1000000) + "." +
         std::to_string(counter.fetch_add(1)) + ".tmp";
}

// Writes `content` to a new temp file in `dir` and renames it to `name`.
Status write_atomic_in(int dir, const std::string& name, std::string_view content,
                       const std::string& where, unsigned mode = 0666) {
  const std::string temp = temp_name_for(name);
  Fd fd(::openat(dir, temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode));
  if (fd.get() < 0) return Status::IOError(errno_text("cannot create a temp file for", where));
  auto fail = [&](const char* what) {
    Status error = Status::IOError(errno_text(what, where));
    ::unlinkat(dir, temp.c_str(), 0);
    return error;
  };
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("cannot write");
    done += static_cast<size_t>(n);
  }
  if (::close(fd.release()) != 0) return fail("cannot write");
  // renameat replaces a link at `name` itself and never writes through it.
  if (::renameat(dir, temp.c_str(), dir, name.c_str()) != 0) return fail("cannot rename into");
  return Status::OK();
}

class PosixFileSystem final : public FileSystem {
 public:
  Status create_directories(const std::string& root, std::string_view dir) override {
    Result<std::vector<std::string>> names = names_of(root, dir);
    if (!names.ok()) return names.status();
    if (Status made = create_root(root); !made.ok()) return made;
    return open_directory(root, *names, names->size(), /*create=*/true).status();
  }

  std::vector<std::string> list_directory(const std::string& root, std::string_view dir) override {
    std::vector<std::string> names;
    Result<std::vector<std::string>> levels = names_of(root, dir);
    if (!levels.ok()) return names;
    Result<Fd> opened = open_directory(root, *levels, levels->size(), false);
    if (!opened.ok()) return names;
    DIR* handle = ::fdopendir(opened->get());
    if (handle == nullptr) return names;
    opened->release();  // closedir closes it
    while (const dirent* entry = ::readdir(handle)) {
      const std::string_view name = entry->d_name;
      if (name != "." && name != "..") names.emplace_back(name);
    }
    ::closedir(handle);
    return names;
  }

  bool file_equals(const std::string& root, std::string_view path,
                   std::string_view content) override {
    Result<Fd> fd = open_file(root, path, O_RDONLY);
    if (!fd.ok()) return false;
    struct stat st;
    bool equal = ::fstat(fd->get(), &st) == 0 && S_ISREG(st.st_mode) &&
                 static_cast<uint64_t>(st.st_size) == content.size();
    char buffer[1 << 16];
    size_t done = 0;
    while (equal && done < content.size()) {
      const ssize_t n = ::read(fd->get(), buffer, std::min(sizeof buffer, content.size() - done));
      if (n < 0 && errno == EINTR) continue;
      equal = n > 0 && std::memcmp(buffer, content.data() + done, static_cast<size_t>(n)) == 0;
      done += n > 0 ? static_cast<size_t>(n) : 0;
    }
    return equal;
  }

  Result<std::string> read_file(const std::string& root, std::string_view path,
                                uint64_t max_bytes) override {
    Result<Fd> fd = open_file(root, path, O_RDONLY);
    if (!fd.ok()) return fd.status();
    return read_all(fd->get(), joined(root, path), max_bytes);
  }

  Status write_atomic(const std::string& root, std::string_view path,
                      std::string_view content) override {
    Result<Located> at = locate(root, path);
    if (!at.ok()) return at.status();
    return write_atomic_in(at->parent.get(), at->name, content, at->where);
  }

  std::optional<FileInfo> file_info(const std::string& root, std::string_view path) override {
    Result<Located> at = locate(root, path);
    struct stat st;
    if (!at.ok() || ::fstatat(at->parent.get(), at->name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0 ||
        !S_ISREG(st.st_mode)) {
      return std::nullopt;
    }
    return FileInfo{static_cast<uint64_t>(st.st_size), static_cast<int64_t>(st.st_mtime)};
  }

  void touch(const std::string& root, std::string_view path) override {
    if (Result<Located> at = locate(root, path); at.ok()) {
      ::utimensat(at->parent.get(), at->name.c_str(), nullptr, AT_SYMLINK_NOFOLLOW);
    }
  }

  Status remove_file(const std::string& root, std::string_view path) override {
    Result<Located> at = locate(root, path);
    if (!at.ok()) return at.status().code() == Status::Code::kNotFound ? Status::OK() : at.status();
    if (::unlinkat(at->parent.get(), at->name.c_str(), 0) != 0 && errno != ENOENT) {
      return Status::IOError(errno_text("cannot remove", at->where));
    }
    return Status::OK();
  }

  Result<int> open_for_update(const std::string& root, std::string_view path) override {
    Result<Fd> fd = open_file(root, path, O_RDWR | O_CREAT);
    if (!fd.ok()) return fd.status();
    struct stat st;
    if (::fstat(fd->get(), &st) != 0)
      return Status::IOError(errno_text("cannot stat", joined(root, path)));
    if (!S_ISREG(st.st_mode) || st.st_nlink != 1) {
      return Status::InvalidArgument(
          joined(root, path) + " is not a regular file with one name (a hard link?); remove it");
    }
    return fd->release();
  }

 private:
  static Result<Fd> open_file(const std::string& root, std::string_view path, int flags) {
    Result<Located> at = locate(root, path);
    if (!at.ok()) return at.status();
    // O_NONBLOCK: a FIFO planted in place of a file must not block the open.
    const int fd = ::openat(at->parent.get(), at->name.c_str(),
                            flags | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, 0666);
    if (fd < 0) return open_error(at->parent.get(), at->name, at->where);
    Fd owned(fd);
    ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return owned;
  }
};

}  // namespace

FileSystem& FileSystem::real() {
  static PosixFileSystem instance;
  return instance;
}

Result<std::string> read_named_file(const std::string& path) {
  if (path.find('\0') != std::string::npos) {
    return Status::InvalidArgument("the path '" + printable(path) + "' holds a NUL character");
  }
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    return errno == ENOENT ? Status::NotFound(errno_text("cannot open", path))
                           : Status::IOError(errno_text("cannot open", path));
  }
  return read_all(fd.get(), path, UINT64_MAX);  // the user chose it
}

Status write_named_file(const std::string& path, std::string_view content, unsigned mode) {
  if (path.empty() || path.find('\0') != std::string::npos) {
    return Status::InvalidArgument("the path '" + printable(path) +
                                   "' is empty or holds a NUL character");
  }
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "."
                          : slash == 0               ? "/"
                                                     : path.substr(0, slash);
  const std::string name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (name.empty())
    return Status::InvalidArgument("the path '" + path + "' names a directory, not a file");
  Fd parent(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (parent.get() < 0) return Status::IOError(errno_text("cannot open the directory of", path));
  return write_atomic_in(parent.get(), name, content, path, mode);
}

}  // namespace megacache::util
