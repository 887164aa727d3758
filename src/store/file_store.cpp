// file:// store: the embedded default. Layout under the root (docs/store-format.md):
//   v1/objects/<hh>/<xxh3-128 hex>   values, content-addressed, written once
//   v1/refs/<name>                   "<xxh3-128 hex> <size>\n"; its mtime is the last use
//   v1/locks/<name>                  flock() targets for single flight
//   v1/stats                         counters, updated in place under flock
// A put writes the object and then the ref, each to a hidden temp file renamed into place,
// so a crash or kill -9 leaves at most a hidden temp file, never a visible partial entry, and
// nothing relies on renaming directories (NFS).
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>
#include <thread>

#include "store/backends.h"
#include "util/byte_reader.h"
#include "util/file_system.h"
#include "util/hash.h"

namespace megacache::store {
namespace {

constexpr int kStatsFields = 7;
constexpr const char* kVersionDir = "v1";
constexpr const char* kObjects = "v1/objects";
constexpr const char* kRefs = "v1/refs";
constexpr const char* kLocks = "v1/locks";
constexpr const char* kStats = "v1/stats";
// "<32 hex digits> <at most 19 digits>\n"; anything longer is not a ref.
constexpr uint64_t kMaxRefBytes = 64;
constexpr uint64_t kDefaultMaxValueBytes = uint64_t{4} << 30;
// An object younger than this is never collected as unreferenced: its ref may be on its way.
constexpr int64_t kGraceSeconds = 600;

class FileLock final : public Lock {
 public:
  explicit FileLock(int fd) : fd_(fd) {}
  ~FileLock() override {
    ::flock(fd_, LOCK_UN);
    ::close(fd_);
  }

 private:
  int fd_;
};

class FileStore final : public Store {
 public:
  FileStore(std::string url, std::string root, uint64_t max_size, uint64_t max_value_bytes,
            util::FileSystem& files)
      : url_(std::move(url)),
        root_(std::move(root)),
        max_size_(max_size),
        max_value_bytes_(max_value_bytes),
        files_(files) {}

  const std::string& url() const override { return url_; }

  std::optional<std::string> get(const std::string& name) override {
    const std::optional<Ref> ref = read_ref(name);
    if (!ref) {
      count({.misses = 1});
      return std::nullopt;
    }
    // The ref says how large the value is; a bigger object file (another writer's, or a sparse
    // file planted in its place) is refused unread.
    Result<std::string> value = files_.read_file(root_, object_path(ref->hash), ref->size);
    if (!value.ok() || value->size() != ref->size || hash_hex(*value) != ref->hash) {
      // Collected or damaged under us: a miss, and the ref goes (unless a put has just replaced
      // it) so the next put repairs the entry.
      count({.misses = 1, .errors = value.ok() ? 1u : 0u});
      if (const std::optional<Ref> now = read_ref(name); now && now->hash == ref->hash) {
        (void)files_.remove_file(root_, ref_path(name));
      }
      return std::nullopt;
    }
    files_.touch(root_, ref_path(name));
    report_progress(value->size(), value->size());
    count({.hits = 1, .bytes_in = value->size()});
    return std::move(value).value();
  }

  Status put(const std::string& name, std::string_view value) override {
    if (Status valid = check_name(name); !valid.ok()) return valid;
    if (value.size() > max_value_bytes_) {
      return Status::InvalidArgument(url_ + ": '" + name + "' is " + std::to_string(value.size()) +
                                     " bytes, more than max_value_bytes (" +
                                     std::to_string(max_value_bytes_) + ")");
    }
    const std::string hash = hash_hex(value);
    const std::string object = object_path(hash);
    const std::optional<util::FileSystem::FileInfo> existing = files_.file_info(root_, object);
    if (!existing || existing->size != value.size()) {
      if (Status s = files_.create_directories(root_, parent(object)); !s.ok()) return s;
      if (Status s = files_.write_atomic(root_, object, value); !s.ok()) return s;
    } else {
      files_.touch(root_, object);  // keep it out of the unreferenced-object grace window
    }
    if (Status s = files_.create_directories(root_, kRefs); !s.ok()) return s;
    if (Status s = files_.write_atomic(root_, ref_path(name),
                                       hash + " " + std::to_string(value.size()) + "\n");
        !s.ok()) {
      return s;
    }
    report_progress(value.size(), value.size());
    count({.puts = 1, .bytes_out = value.size()});
    if (max_size_ > 0) (void)gc(max_size_);
    return Status::OK();
  }

  bool contains(const std::string& name) override { return read_ref(name).has_value(); }

  Status remove(const std::string& name) override {
    if (Status valid = check_name(name); !valid.ok()) return valid;
    return files_.remove_file(root_, ref_path(name));
  }

  std::vector<EntryInfo> list() override {
    std::vector<EntryInfo> out;
    for (const std::string& name : files_.list_directory(root_, kRefs)) {
      if (!check_name(name).ok()) continue;  // temp files
      const std::optional<Ref> ref = read_ref(name);
      const std::optional<util::FileSystem::FileInfo> info =
          files_.file_info(root_, ref_path(name));
      if (ref && info) out.push_back({name, ref->size, info->modified_unix});
    }
    std::sort(out.begin(), out.end(),
              [](const EntryInfo& a, const EntryInfo& b) { return a.name < b.name; });
    return out;
  }

  std::unique_ptr<Lock> lock(
      const std::string& name, std::chrono::milliseconds wait,
      std::chrono::milliseconds /*ttl: the kernel releases a dead holder's flock*/) override {
    if (!check_name(name).ok() || !files_.create_directories(root_, kLocks).ok()) return nullptr;
    Result<int> opened = files_.open_for_update(root_, std::string(kLocks) + "/" + name);
    if (!opened.ok()) {
      log_refusal(opened.status());
      return nullptr;
    }
    const int fd = *opened;
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        ::close(fd);
        return nullptr;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return std::make_unique<FileLock>(fd);
  }

  Result<uint64_t> gc(uint64_t max_bytes) override {
    // Least recently used refs go first, until the referenced objects fit.
    std::vector<EntryInfo> entries = list();
    std::sort(entries.begin(), entries.end(), [](const EntryInfo& a, const EntryInfo& b) {
      return a.last_used_unix < b.last_used_unix;
    });
    std::map<std::string, uint64_t> referenced;  // object hash -> size
    std::map<std::string, std::string> hash_of;  // name -> hash
    for (const EntryInfo& entry : entries) {
      if (const std::optional<Ref> ref = read_ref(entry.name)) {
        referenced[ref->hash] = ref->size;
        hash_of[entry.name] = ref->hash;
      }
    }
    uint64_t total = 0;
    for (const auto& [hash, size] : referenced) total += size;
    std::map<std::string, int> users;
    for (const auto& [name, hash] : hash_of) ++users[hash];
    for (const EntryInfo& entry : entries) {
      if (total <= max_bytes) break;
      if (Status s = files_.remove_file(root_, ref_path(entry.name)); !s.ok()) return s;
      const std::string& hash = hash_of[entry.name];
      if (--users[hash] == 0) {
        total -= referenced[hash];
        referenced.erase(hash);
      }
    }
    // Objects no ref names, and temp files a killed writer left, once past the grace period.
    uint64_t freed = 0;
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    // The file layer lists nothing through a link, so a planted v1/objects/<hh> -> elsewhere
    // is never walked and nothing outside the store is removed.
    for (const std::string& shard : files_.list_directory(root_, kObjects)) {
      const std::string shard_dir = std::string(kObjects) + "/" + shard;
      for (const std::string& file : files_.list_directory(root_, shard_dir)) {
        const std::string path = shard_dir + "/" + file;
        const std::optional<util::FileSystem::FileInfo> info = files_.file_info(root_, path);
        if (!info || referenced.count(file) || now - info->modified_unix < kGraceSeconds) continue;
        if (files_.remove_file(root_, path).ok()) freed += info->size;
      }
    }
    return freed;
  }

  Stats stats() override {
    Stats out;
    update_stats(out, /*add=*/nullptr, /*zero=*/false);
    return out;
  }

  void zero_stats() override {
    Stats ignored;
    update_stats(ignored, nullptr, true);
  }

 private:
  struct Ref {
    std::string hash;
    uint64_t size = 0;
  };

  // What the file layer refused (a planted link, a hard-linked stats file) is a miss, said
  // once per occurrence on stderr like the Redis backend's failures. It is not counted as an
  // error here: counting writes the stats file, which may be the very thing refused.
  void log_refusal(const Status& status) const {
    std::fprintf(stderr, "megacache: %s: %s; treating it as a miss\n", url_.c_str(),
                 status.message().c_str());
  }

  static std::string hash_hex(std::string_view value) {
    const util::Xxh3Digest digest = util::xxh3_128(value);
    return util::hex(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
  }

  static std::string parent(const std::string& path) {
    return path.substr(0, path.find_last_of('/'));
  }

  // Paths beneath the root.
  static std::string object_path(const std::string& hash) {
    return std::string(kObjects) + "/" + hash.substr(0, 2) + "/" + hash;
  }
  static std::string ref_path(const std::string& name) { return std::string(kRefs) + "/" + name; }

  std::optional<Ref> read_ref(const std::string& name) {
    if (!check_name(name).ok()) return std::nullopt;
    Result<std::string> text = files_.read_file(root_, ref_path(name), kMaxRefBytes);
    if (!text.ok()) {
      if (text.status().code() != Status::Code::kNotFound) log_refusal(text.status());
      return std::nullopt;
    }
    const size_t space = text->find(' ');
    if (space != 32 || text->size() < 35 || text->back() != '\n') return std::nullopt;
    Ref ref{text->substr(0, 32), 0};
    const std::string size = text->substr(33, text->size() - 34);
    if (size.empty() || size.size() > 19 ||
        size.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    ref.size = std::stoull(size);
    if (ref.size > max_value_bytes_) {
      log_refusal(Status::InvalidArgument("the ref of '" + name + "' claims " + size +
                                          " bytes, more than max_value_bytes (" +
                                          std::to_string(max_value_bytes_) + ")"));
      return std::nullopt;
    }
    return ref;
  }

  void count(const Stats& delta) {
    Stats ignored;
    update_stats(ignored, &delta, false);
  }

  // Reads the counters into `out`, adding `add` or zeroing them first, under an exclusive lock.
  void update_stats(Stats& out, const Stats* add, bool zero) {
    if (!files_.create_directories(root_, kVersionDir).ok()) return;
    Result<int> opened = files_.open_for_update(root_, kStats);
    if (!opened.ok()) {
      log_refusal(opened.status());
      return;
    }
    const int fd = *opened;
    ::flock(fd, LOCK_EX);
    uint64_t* fields[kStatsFields] = {&out.hits,      &out.misses, &out.puts,    &out.bytes_in,
                                      &out.bytes_out, &out.errors, &out.timeouts};
    char buffer[8 * kStatsFields] = {};
    if (!zero && ::pread(fd, buffer, sizeof buffer, 0) == static_cast<ssize_t>(sizeof buffer)) {
      util::ByteReader reader(std::string_view(buffer, sizeof buffer));
      Status ignored;
      for (uint64_t* field : fields) reader.read_u64(*field, "counter", ignored);
    }
    if (add != nullptr || zero) {
      const uint64_t deltas[kStatsFields] = {add ? add->hits : 0,      add ? add->misses : 0,
                                             add ? add->puts : 0,      add ? add->bytes_in : 0,
                                             add ? add->bytes_out : 0, add ? add->errors : 0,
                                             add ? add->timeouts : 0};
      std::string encoded;
      for (int i = 0; i < kStatsFields; ++i) {
        *fields[i] += deltas[i];
        util::append_u64_be(encoded, *fields[i]);
      }
      (void)!::pwrite(fd, encoded.data(), encoded.size(), 0);
    }
    ::flock(fd, LOCK_UN);
    ::close(fd);
  }

  std::string url_;
  std::string root_;
  uint64_t max_size_;
  uint64_t max_value_bytes_;
  util::FileSystem& files_;
};

}  // namespace

Result<std::unique_ptr<Store>> open_file_store(const std::string& url, const std::string& root,
                                               const UrlOptions& options, util::FileSystem& files) {
  if (root.empty() || root.front() != '/') {
    return Status::InvalidArgument("file store URL '" + url +
                                   "' needs an absolute path: file:///path");
  }
  uint64_t max_size = 0;
  if (const std::optional<std::string> text = options.get("max_size")) {
    Result<uint64_t> parsed = parse_size(*text);
    if (!parsed.ok())
      return Status::InvalidArgument(url + ": max_size: " + parsed.status().message());
    max_size = *parsed;
  }
  uint64_t max_value_bytes = kDefaultMaxValueBytes;
  if (const std::optional<std::string> text = options.get("max_value_bytes")) {
    Result<uint64_t> parsed = parse_size(*text);
    if (!parsed.ok() || *parsed == 0) {
      return Status::InvalidArgument(url + ": max_value_bytes must be a size above 0, e.g. 4G");
    }
    max_value_bytes = *parsed;
  }
  return std::unique_ptr<Store>(new FileStore(url, root, max_size, max_value_bytes, files));
}

}  // namespace megacache::store
