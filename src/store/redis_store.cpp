// redis:// store, through hiredis. Layout (docs/store-format.md):
//   megacache:v1:ref:<name>          "<id> <chunks> <size> <xxh3-128 hex>"
//   megacache:v1:chunk:<id>:<i>      the value in chunks of at most chunk_size bytes
//   megacache:v1:lock:<name>         single-flight lock: a random token, SET NX PX
// Chunks are written before the ref, so a reader sees the old value or the whole new one.
// Every failure is logged and counted and becomes a miss; after three in a row the backend
// is off for the rest of the process, so an outage costs at most a few timeouts.
#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <functional>
#include <random>
#include <thread>

#include "store/backends.h"
#include "util/hash.h"

namespace megacache::store {
namespace {

constexpr int kFailuresBeforeDisabling = 3;
constexpr const char* kPrefix = "megacache:v1:";
// Deletes the lock only if it still holds our token: never release another holder's lock.
constexpr const char* kReleaseScript =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end";

struct Reply {
  redisReply* reply = nullptr;
  explicit Reply(void* r) : reply(static_cast<redisReply*>(r)) {}
  ~Reply() {
    if (reply) freeReplyObject(reply);
  }
  Reply(Reply&& other) noexcept : reply(other.reply) { other.reply = nullptr; }
  Reply& operator=(Reply&&) = delete;
  Reply(const Reply&) = delete;
  Reply& operator=(const Reply&) = delete;
  bool ok() const { return reply != nullptr && reply->type != REDIS_REPLY_ERROR; }
};

std::string random_token() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char text[33];
  std::snprintf(text, sizeof text, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return text;
}

timeval to_timeval(int ms) { return timeval{ms / 1000, (ms % 1000) * 1000}; }

// One connection with its failure bookkeeping; shared with the locks it hands out.
class Connection {
 public:
  Connection(std::string url, std::string host, int port, int db, int connect_ms, int io_ms)
      : url_(std::move(url)), host_(std::move(host)), port_(port), db_(db),
        connect_ms_(connect_ms), io_ms_(io_ms) {}
  ~Connection() {
    if (context_) redisFree(context_);
  }

  bool disabled() const { return failures_ >= kFailuresBeforeDisabling; }

  // Runs a command; nullopt-like Reply (reply == nullptr) on any failure, which is counted.
  Reply command(Stats& stats, const std::vector<std::string>& args) {
    std::vector<std::vector<std::string>> one{args};
    std::vector<Reply> replies = pipeline(stats, one);
    if (replies.empty()) return Reply(nullptr);
    return std::move(replies.front());
  }

  // Sends all commands, then reads all replies, calling `on_reply` after each. Empty on failure.
  std::vector<Reply> pipeline(Stats& stats, const std::vector<std::vector<std::string>>& commands,
                              const std::function<void(size_t)>& on_reply = {}) {
    std::vector<Reply> replies;
    if (disabled() || !connect(stats)) return replies;
    for (const std::vector<std::string>& args : commands) {
      std::vector<const char*> argv;
      std::vector<size_t> lengths;
      for (const std::string& arg : args) {
        argv.push_back(arg.data());
        lengths.push_back(arg.size());
      }
      redisAppendCommandArgv(context_, static_cast<int>(args.size()), argv.data(), lengths.data());
    }
    replies.reserve(commands.size());
    for (size_t i = 0; i < commands.size(); ++i) {
      void* raw = nullptr;
      if (redisGetReply(context_, &raw) != REDIS_OK) {
        if (raw) freeReplyObject(raw);
        fail(stats, context_->errstr, context_->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK));
        replies.clear();
        return replies;
      }
      replies.emplace_back(raw);
      if (!replies.back().ok()) {
        fail(stats, replies.back().reply->str, false);
        replies.clear();
        return replies;
      }
      if (on_reply) on_reply(i);
    }
    failures_ = 0;
    return replies;
  }

 private:
  bool connect(Stats& stats) {
    if (context_) return true;
    const timeval connect_timeout = to_timeval(connect_ms_);
    context_ = redisConnectWithTimeout(host_.c_str(), port_, connect_timeout);
    if (context_ == nullptr || context_->err) {
      fail(stats, context_ ? context_->errstr : "cannot allocate a hiredis context", errno == EINPROGRESS);
      return false;
    }
    redisSetTimeout(context_, to_timeval(io_ms_));
    if (db_ != 0) {
      Reply select(redisCommand(context_, "SELECT %d", db_));
      if (!select.ok()) {
        fail(stats, "SELECT failed", false);
        return false;
      }
    }
    return true;
  }

  void fail(Stats& stats, const char* what, bool timeout) {
    ++(timeout ? stats.timeouts : stats.errors);
    ++failures_;
    std::fprintf(stderr, "megacache: %s: %s%s; treating it as a miss%s\n", url_.c_str(),
                 timeout ? "timeout: " : "", what ? what : "error",
                 disabled() ? " and turning this store off for the process" : "");
    if (context_) {  // a broken connection is not reused
      redisFree(context_);
      context_ = nullptr;
    }
  }

  std::string url_;
  std::string host_;
  int port_;
  int db_;
  int connect_ms_;
  int io_ms_;
  redisContext* context_ = nullptr;
  int failures_ = 0;
};

class RedisLock final : public Lock {
 public:
  RedisLock(std::shared_ptr<Connection> connection, Stats* stats, std::string key, std::string token)
      : connection_(std::move(connection)), stats_(stats), key_(std::move(key)), token_(std::move(token)) {}
  ~RedisLock() override {
    Stats ignored;
    connection_->command(stats_ ? *stats_ : ignored, {"EVAL", kReleaseScript, "1", key_, token_});
  }

 private:
  std::shared_ptr<Connection> connection_;
  Stats* stats_;
  std::string key_;
  std::string token_;
};

class RedisStore final : public Store {
 public:
  RedisStore(std::string url, std::shared_ptr<Connection> connection, uint64_t ttl_seconds,
             uint64_t chunk_size)
      : url_(std::move(url)), connection_(std::move(connection)), ttl_seconds_(ttl_seconds),
        chunk_size_(chunk_size) {}

  const std::string& url() const override { return url_; }

  std::optional<std::string> get(const std::string& name) override {
    std::optional<Manifest> manifest = read_manifest(name);
    if (!manifest) {
      ++stats_.misses;
      return std::nullopt;
    }
    std::vector<std::vector<std::string>> commands;
    for (uint64_t i = 0; i < manifest->chunks; ++i) commands.push_back({"GET", chunk_key(manifest->id, i)});
    std::vector<Reply> replies = connection_->pipeline(stats_, commands, [&](size_t i) {
      report_progress(std::min(manifest->size, (i + 1) * chunk_size_), manifest->size);
    });
    std::string value;
    value.reserve(manifest->size);
    for (const Reply& reply : replies) {
      if (reply.reply->type != REDIS_REPLY_STRING) break;  // expired or replaced underneath
      value.append(reply.reply->str, reply.reply->len);
    }
    if (replies.size() != manifest->chunks || value.size() != manifest->size ||
        checksum(value) != manifest->checksum) {
      ++stats_.misses;
      return std::nullopt;
    }
    ++stats_.hits;
    stats_.bytes_in += value.size();
    return value;
  }

  Status put(const std::string& name, std::string_view value) override {
    if (Status valid = check_name(name); !valid.ok()) return valid;
    const std::optional<Manifest> previous = read_manifest(name);
    const std::string id = random_token();
    const uint64_t chunks = value.empty() ? 0 : (value.size() + chunk_size_ - 1) / chunk_size_;
    std::vector<std::vector<std::string>> commands;
    for (uint64_t i = 0; i < chunks; ++i) {
      commands.push_back(with_ttl({"SET", chunk_key(id, i), std::string(value.substr(i * chunk_size_, chunk_size_))}));
    }
    commands.push_back(with_ttl({"SET", ref_key(name), id + " " + std::to_string(chunks) + " " +
                                                           std::to_string(value.size()) + " " + checksum(value)}));
    const auto on_reply = [&](size_t i) { report_progress(std::min<uint64_t>(value.size(), (i + 1) * chunk_size_), value.size()); };
    if (connection_->pipeline(stats_, commands, on_reply).size() != commands.size()) {
      return Status::IOError(url_ + ": could not store '" + name + "' (see the log above)");
    }
    if (previous) delete_chunks(*previous);
    ++stats_.puts;
    stats_.bytes_out += value.size();
    return Status::OK();
  }

  bool contains(const std::string& name) override { return read_manifest(name).has_value(); }

  Status remove(const std::string& name) override {
    if (Status valid = check_name(name); !valid.ok()) return valid;
    const std::optional<Manifest> manifest = read_manifest(name);
    Reply reply = connection_->command(stats_, {"DEL", ref_key(name)});
    if (manifest) delete_chunks(*manifest);
    return reply.ok() ? Status::OK() : Status::IOError(url_ + ": could not remove '" + name + "'");
  }

  std::vector<EntryInfo> list() override {
    std::vector<EntryInfo> out;
    std::string cursor = "0";
    const std::string pattern = std::string(kPrefix) + "ref:*";
    do {
      Reply reply = connection_->command(stats_, {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
      if (!reply.ok() || reply.reply->type != REDIS_REPLY_ARRAY || reply.reply->elements != 2) break;
      cursor.assign(reply.reply->element[0]->str, reply.reply->element[0]->len);
      const redisReply* keys = reply.reply->element[1];
      for (size_t i = 0; i < keys->elements; ++i) {
        const std::string name = std::string(keys->element[i]->str, keys->element[i]->len)
                                     .substr(std::string(kPrefix).size() + 4);
        if (std::optional<Manifest> manifest = read_manifest(name)) out.push_back({name, manifest->size, 0});
      }
    } while (cursor != "0");
    return out;
  }

  std::unique_ptr<Lock> lock(const std::string& name, std::chrono::milliseconds wait,
                             std::chrono::milliseconds ttl) override {
    if (!check_name(name).ok()) return nullptr;
    const std::string key = std::string(kPrefix) + "lock:" + name;
    const std::string token = random_token();
    const auto deadline = std::chrono::steady_clock::now() + wait;
    while (!connection_->disabled()) {
      Reply reply = connection_->command(
          stats_, {"SET", key, token, "NX", "PX", std::to_string(std::max<int64_t>(1, ttl.count()))});
      if (!reply.ok()) return nullptr;
      if (reply.reply->type == REDIS_REPLY_STATUS) {
        return std::make_unique<RedisLock>(connection_, &stats_, key, token);
      }
      if (std::chrono::steady_clock::now() >= deadline) return nullptr;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return nullptr;
  }

  Result<uint64_t> gc(uint64_t) override {
    return Status::InvalidArgument(url_ + ": Redis evicts by itself; configure maxmemory and "
                                          "maxmemory-policy allkeys-lru on the server");
  }

  Stats stats() override { return stats_; }
  void zero_stats() override { stats_ = Stats{}; }

 private:
  struct Manifest {
    std::string id;
    uint64_t chunks = 0;
    uint64_t size = 0;
    std::string checksum;
  };

  static std::string ref_key(const std::string& name) { return std::string(kPrefix) + "ref:" + name; }
  static std::string chunk_key(const std::string& id, uint64_t i) {
    return std::string(kPrefix) + "chunk:" + id + ":" + std::to_string(i);
  }
  static std::string checksum(std::string_view value) {
    const util::Xxh3Digest digest = util::xxh3_128(value);
    return util::hex(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
  }

  std::vector<std::string> with_ttl(std::vector<std::string> command) const {
    if (ttl_seconds_ > 0) {
      command.push_back("EX");
      command.push_back(std::to_string(ttl_seconds_));
    }
    return command;
  }

  std::optional<Manifest> read_manifest(const std::string& name) {
    if (!check_name(name).ok()) return std::nullopt;
    Reply reply = connection_->command(stats_, {"GET", ref_key(name)});
    if (!reply.ok() || reply.reply->type != REDIS_REPLY_STRING) return std::nullopt;
    char id[33] = {};
    char sum[33] = {};
    unsigned long long chunks = 0;
    unsigned long long size = 0;
    const std::string text(reply.reply->str, reply.reply->len);
    // A chunk holds at least one byte, so there are never more chunks than bytes.
    if (std::sscanf(text.c_str(), "%32s %llu %llu %32s", id, &chunks, &size, sum) != 4 ||
        chunks > size || chunks > (uint64_t{1} << 20)) {
      return std::nullopt;
    }
    return Manifest{id, chunks, size, sum};
  }

  void delete_chunks(const Manifest& manifest) {
    if (manifest.chunks == 0) return;
    std::vector<std::string> command{"DEL"};
    for (uint64_t i = 0; i < manifest.chunks; ++i) command.push_back(chunk_key(manifest.id, i));
    connection_->command(stats_, command);
  }

  std::string url_;
  std::shared_ptr<Connection> connection_;
  uint64_t ttl_seconds_;
  uint64_t chunk_size_;
  Stats stats_;
};

Result<uint64_t> option_number(const std::string& url, const UrlOptions& options, const char* name,
                               uint64_t fallback) {
  const std::optional<std::string> text = options.get(name);
  if (!text) return fallback;
  Result<uint64_t> value = parse_size(*text);
  if (!value.ok()) return Status::InvalidArgument(url + ": " + name + ": " + value.status().message());
  return *value;
}

}  // namespace

Result<std::unique_ptr<Store>> open_redis_store(const std::string& url, const std::string& host,
                                                int port, int db, const UrlOptions& options) {
  Result<uint64_t> connect_ms = option_number(url, options, "connect_timeout_ms", 200);
  Result<uint64_t> io_ms = option_number(url, options, "timeout_ms", 2000);
  Result<uint64_t> ttl = option_number(url, options, "ttl", 0);
  Result<uint64_t> chunk = option_number(url, options, "chunk_size", uint64_t{4} << 20);
  for (const Result<uint64_t>* value : {&connect_ms, &io_ms, &ttl, &chunk}) {
    if (!value->ok()) return value->status();
  }
  if (*chunk == 0) return Status::InvalidArgument(url + ": chunk_size must be positive");
  auto connection = std::make_shared<Connection>(url, host, port, db, static_cast<int>(*connect_ms),
                                                 static_cast<int>(*io_ms));
  return std::unique_ptr<Store>(new RedisStore(url, std::move(connection), *ttl, *chunk));
}

}  // namespace megacache::store
