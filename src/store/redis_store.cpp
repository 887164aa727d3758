// redis:// store, through hiredis. Layout (docs/store-format.md):
//   megacache:v1:ref:<name>          "<id> <chunks> <size> <xxh3-128 hex>"
//   megacache:v1:chunk:<id>:<i>      the value in chunks of at most chunk_size bytes
//   megacache:v1:lock:<name>         single-flight lock: a random token, SET NX PX
// Chunks are written before the ref, so a reader sees the old value or the whole new one.
// Every failure is logged and counted and becomes a miss; after three connection failures
// in a row the backend is off for the rest of the process, so an outage costs at most a few
// timeouts. Bad data over a healthy connection (a poisoned ref, an error reply such as
// WRONGTYPE for another program's hash at one of our keys) is a counted miss that keeps the
// connection and does not turn the store off: whoever can write one key of a shared Redis
// must not be able to turn caching off for everyone else.
//
// A Redis shared by a fleet may be broken or hostile, so hiredis only opens the connection:
// requests and replies go through Connection::exchange, which ends every get, put, contains
// and remove by one deadline (timeout_ms) however slowly the server sends (a listing by its
// own bounds, kListTimeoutFactor and kMaxListedEntries), and through redis_protocol.h,
// whose limits come from what was asked (a ref is tiny, a chunk no longer than its ref
// leaves, a value no larger than max_value_bytes), never from what the server announces.
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <thread>
#include <unordered_set>

#include "store/backends.h"
#include "store/redis_protocol.h"

namespace megacache::store {
namespace {

using redis::Reply;
using redis::ReplyLimits;
using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

constexpr int kFailuresBeforeDisabling = 3;
constexpr const char* kPrefix = "megacache:v1:";
// Deletes the lock only if it still holds our token: never release another holder's lock.
constexpr const char* kReleaseScript =
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 "
    "end";
// Refs, statuses, integers, nil and error messages: a ref is under a hundred bytes.
constexpr ReplyLimits kSmallReply{1024, 0};
// A SCAN page: a cursor and the keys found. COUNT 1000 is a hint the server may exceed, so
// this is generous; it only stops a server that streams without end.
constexpr ReplyLimits kScanReply{uint64_t{16} << 20, 2 + 100000};
// Bytes asked of the socket per read: what a reply may overshoot its limit by in memory.
constexpr size_t kReadBytes = size_t{64} << 10;
// Keys per DEL: Redis refuses commands of more than about a million arguments.
constexpr size_t kKeysPerDelete = 1000;
// Bounds of one list(). SCAN walks the whole keyspace a page at a time, and a Redis shared
// with other programs may need many pages to find our few keys, so each page has its own
// timeout_ms. But a server that never returns cursor 0 would keep the walk going forever,
// so the listing as a whole stops starting pages after kListTimeoutFactor x timeout_ms (a
// minute with the default), and once it has named kMaxListedEntries entries: far more than
// a cache of compiled models holds, and at most about 130 MB of names (200 bytes each, kept
// twice: in the answer and in the set that drops SCAN's repeats).
constexpr int kListTimeoutFactor = 30;
constexpr size_t kMaxListedEntries = size_t{1} << 18;
// Server-sent text kept for one log line.
constexpr size_t kMaxLoggedReplyBytes = 200;

std::string random_token() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char text[33];
  std::snprintf(text, sizeof text, "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return text;
}

timeval to_timeval(std::chrono::milliseconds ms) {
  return timeval{static_cast<time_t>(ms.count() / 1000),
                 static_cast<suseconds_t>((ms.count() % 1000) * 1000)};
}

// Server-sent text for the log: a hostile server must not write terminal escapes into it.
std::string printable(std::string_view text) {
  std::string out;
  for (char c : text) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

// What a reply is, for a log line that says why it was not the one expected: an error
// reply's message (WRONGTYPE, OOM, ...), cut short, or the reply's kind.
std::string describe(const Reply& reply) {
  switch (reply.type) {
    case Reply::Type::kError: {
      const std::string_view text = std::string_view(reply.text).substr(0, kMaxLoggedReplyBytes);
      return "an error (" + printable(text) + (reply.text.size() > text.size() ? "...)" : ")");
    }
    case Reply::Type::kString:
      return "a string";
    case Reply::Type::kStatus:
      return "a status (" + printable(reply.text.substr(0, kMaxLoggedReplyBytes)) + ")";
    case Reply::Type::kInteger:
      return "an integer";
    case Reply::Type::kNil:
      return "nil";
    case Reply::Type::kArray:
      return "an array";
  }
  return "an unknown reply";
}

// Time left until `deadline`, rounded up so that a wait never ends just short of it.
std::chrono::milliseconds time_left(Deadline deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return std::max(left, std::chrono::milliseconds(0));
}

// One connection with its counters and failure bookkeeping: what a store shares with the
// locks it hands out. Held by shared_ptr, so that a lock that outlives its store (Python may
// hold a claim after the Store object is collected) still has all it needs to release.
class Connection {
 public:
  using LimitsFor = std::function<ReplyLimits(size_t index)>;
  using OnReply = std::function<void(size_t index, Reply&& reply)>;

  Connection(std::string url, std::string host, int port, int db,
             std::chrono::milliseconds connect_timeout)
      : url_(std::move(url)),
        host_(std::move(host)),
        port_(port),
        db_(db),
        connect_timeout_(connect_timeout) {}
  ~Connection() { drop(); }
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  bool disabled() const { return failures_ >= kFailuresBeforeDisabling; }
  // The store's counters; the locks count into them too.
  Stats& counters() { return counters_; }

  // Sends `request` (`replies` commands in RESP form) and hands each reply to `on_reply` in
  // order, all before `deadline`. Reply i must fit `limits_for(i)`, asked when reply i is
  // next. false on any failure of the connection: a timeout, a refused, closed or broken
  // connection, or bytes that are not RESP or break the limits. A failure is logged and
  // counted, drops the connection and counts toward turning the store off.
  // An error reply is no such failure: it answers a well-formed command over a connection
  // that is in step (WRONGTYPE when someone stored another type at one of our keys, OOM when
  // the server is full), so it goes to `on_reply` like any reply, and the caller reports it
  // with report_bad_data and makes it a miss or a failed write.
  bool exchange(Deadline deadline, std::string_view request, size_t replies,
                const LimitsFor& limits_for, const OnReply& on_reply) {
    if (disabled() || !connect(deadline)) return false;
    if (!transfer(deadline, request, replies, limits_for, on_reply)) return false;
    failures_ = 0;
    return true;
  }

  // All replies, each within `limits`; nullopt on failure (as exchange).
  std::optional<std::vector<Reply>> exchange_all(Deadline deadline, std::string_view request,
                                                 size_t replies, ReplyLimits limits = kSmallReply) {
    std::vector<Reply> out;
    out.reserve(replies);
    const bool ok = exchange(
        deadline, request, replies, [&](size_t) { return limits; },
        [&](size_t, Reply&& reply) { out.push_back(std::move(reply)); });
    if (!ok) return std::nullopt;
    return out;
  }

  // Bad data in a healthy connection (a malformed ref, a chunk that cannot belong to its
  // value, an error reply): logged and counted as an error, and the lookup is a miss. The
  // connection stays, and the store stays on: one poisoned entry is no outage.
  void report_bad_data(const std::string& what, const char* consequence = "treating it as a miss") {
    ++counters_.errors;
    log(what, consequence);
  }

  // A bound of our own that ran out (a listing that would not end), not the server's
  // failure to answer in time: counted as a timeout, but the connection stays, and the store
  // stays on.
  void report_own_bound(const std::string& what, const char* consequence) {
    ++counters_.timeouts;
    log(what, consequence);
  }

 private:
  void log(const std::string& what, const char* consequence) const {
    std::fprintf(stderr, "megacache: %s: %s; %s\n", url_.c_str(), what.c_str(), consequence);
  }

  bool connect(Deadline deadline) {
    if (context_) return true;
    const std::chrono::milliseconds left = time_left(deadline);
    if (left.count() == 0) return fail("no time left to connect within timeout_ms", true);
    context_ =
        redisConnectWithTimeout(host_.c_str(), port_, to_timeval(std::min(connect_timeout_, left)));
    if (context_ == nullptr || context_->err) {
      const bool timeout = errno == EINPROGRESS || errno == ETIMEDOUT;
      return fail(context_ ? context_->errstr : "cannot allocate a hiredis context", timeout);
    }
    // Every read and write from here on waits in poll() for at most the time left, so the
    // socket must never block.
    const int flags = ::fcntl(context_->fd, F_GETFL);
    if (flags < 0 || ::fcntl(context_->fd, F_SETFL, flags | O_NONBLOCK) < 0) {
      return fail(std::strerror(errno), false);
    }
    if (db_ != 0) {
      std::string select;
      redis::append_command(select, {"SELECT", std::to_string(db_)});
      std::optional<Reply> answer;
      const bool ok = transfer(
          deadline, select, 1, [](size_t) { return kSmallReply; },
          [&](size_t, Reply&& reply) { answer = std::move(reply); });
      if (!ok || !answer) return false;  // a transfer that succeeds delivers every reply
      // Unlike the error replies of our other commands, a refused SELECT (a database the
      // server does not have) says that the URL cannot work at all: it counts as a failure.
      if (answer->type != Reply::Type::kStatus) {
        return fail("SELECT " + std::to_string(db_) + " answered " + describe(*answer), false);
      }
    }
    return true;
  }

  bool transfer(Deadline deadline, std::string_view request, size_t replies,
                const LimitsFor& limits_for, const OnReply& on_reply) {
    const int fd = context_->fd;
    size_t written = 0;
    std::string input;  // received and not yet a whole reply
    size_t next = 0;
    // Writing and reading in one loop: a server may answer the first commands of a long
    // pipeline before reading the last, and neither side may stall the other.
    while (next < replies) {
      const std::chrono::milliseconds left = time_left(deadline);
      if (left.count() == 0) {
        return fail("no complete reply within timeout_ms (" + std::to_string(next) + " of " +
                        std::to_string(replies) + " replies)",
                    true);
      }
      pollfd ready{fd, static_cast<short>(POLLIN | (written < request.size() ? POLLOUT : 0)), 0};
      const int count =
          ::poll(&ready, 1, static_cast<int>(std::min<int64_t>(left.count(), INT_MAX)));
      if (count < 0 && errno != EINTR) return fail(std::strerror(errno), false);
      if (count <= 0) continue;  // the top of the loop decides whether time is up
      if (ready.revents & POLLOUT) {
        const ssize_t sent =
            ::send(fd, request.data() + written, request.size() - written, MSG_NOSIGNAL);
        if (sent > 0) {
          written += static_cast<size_t>(sent);
        } else if (sent < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
          return fail(std::strerror(errno), false);
        }
      }
      if (!(ready.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const size_t kept = input.size();
      input.resize(kept + kReadBytes);
      const ssize_t got = ::recv(fd, input.data() + kept, kReadBytes, 0);
      input.resize(kept + static_cast<size_t>(std::max<ssize_t>(got, 0)));
      if (got == 0) return fail("the server closed the connection", false);
      if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
        return fail(std::strerror(errno), false);
      }
      size_t parsed_bytes = 0;
      while (next < replies) {
        Reply reply;
        const redis::ParseResult parsed = redis::parse_reply(
            std::string_view(input).substr(parsed_bytes), limits_for(next), reply);
        if (parsed.state == redis::ParseState::kIncomplete) break;
        // Cut off here: what follows a reply that breaks its limit is not read, so memory
        // stays bounded by what was asked, not by what the server sends.
        if (parsed.state == redis::ParseState::kInvalid)
          return fail("bad reply: " + parsed.error, false);
        parsed_bytes += parsed.consumed;
        on_reply(next++, std::move(reply));  // error replies too: see exchange
      }
      input.erase(0, parsed_bytes);
    }
    // Replies to commands not yet sent, or bytes no command asked for: the server is out of
    // step with us, and the next request would read them as its replies.
    if (written < request.size() || !input.empty()) {
      return fail("the server sent more than was asked", false);
    }
    return true;
  }

  // Always false, for `return fail(...)`.
  bool fail(const std::string& what, bool timeout) {
    ++(timeout ? counters_.timeouts : counters_.errors);
    ++failures_;
    log(std::string(timeout ? "timeout: " : "") + what,
        disabled() ? "treating it as a miss and turning this store off for the process"
                   : "treating it as a miss");
    drop();  // a broken connection is not reused
    return false;
  }

  void drop() {
    if (context_) {
      redisFree(context_);
      context_ = nullptr;
    }
  }

  std::string url_;
  std::string host_;
  int port_;
  int db_;
  std::chrono::milliseconds connect_timeout_;
  redisContext* context_ = nullptr;
  int failures_ = 0;
  Stats counters_;
};

// Owns a share of the connection (and with it the counters), never a pointer into the store.
class RedisLock final : public Lock {
 public:
  RedisLock(std::shared_ptr<Connection> connection, std::string key, std::string token,
            std::chrono::milliseconds timeout)
      : connection_(std::move(connection)),
        key_(std::move(key)),
        token_(std::move(token)),
        timeout_(timeout) {}
  ~RedisLock() override {
    std::string request;
    redis::append_command(request, {"EVAL", kReleaseScript, "1", key_, token_});
    std::optional<std::vector<Reply>> reply =
        connection_->exchange_all(Clock::now() + timeout_, request, 1);
    // 1: released; 0: it had expired, and may be another holder's now.
    if (reply && reply->front().type != Reply::Type::kInteger) {
      connection_->report_bad_data(
          "releasing " + key_ + ": EVAL answered " + describe(reply->front()),
          "the lock ends when its ttl does");
    }
  }

 private:
  std::shared_ptr<Connection> connection_;
  std::string key_;
  std::string token_;
  std::chrono::milliseconds timeout_;
};

struct RedisOptions {
  uint64_t ttl_seconds = 0;
  uint64_t chunk_size = 0;
  uint64_t max_value_bytes = 0;
  std::chrono::milliseconds timeout{0};  // the deadline of each public operation
};

class RedisStore final : public Store {
 public:
  RedisStore(std::string url, std::shared_ptr<Connection> connection, RedisOptions options)
      : url_(std::move(url)), connection_(std::move(connection)), options_(options) {}

  const std::string& url() const override { return url_; }

  std::optional<std::string> get(const std::string& name) override {
    const Deadline deadline = Clock::now() + options_.timeout;
    std::optional<redis::Ref> ref = read_ref(name, deadline).ref;
    std::optional<std::string> value = ref ? read_value(name, *ref, deadline) : std::nullopt;
    if (!value) {
      ++counters().misses;
      return std::nullopt;
    }
    ++counters().hits;
    counters().bytes_in += value->size();
    return value;
  }

  Status put(const std::string& name, std::string_view value) override {
    const Deadline deadline = Clock::now() + options_.timeout;
    if (Status valid = check_name(name); !valid.ok()) return valid;
    // Readers refuse what is over their max_value_bytes, so it is not written either.
    if (value.size() > options_.max_value_bytes) {
      return Status::InvalidArgument(url_ + ": '" + name + "' is " + std::to_string(value.size()) +
                                     " bytes, over max_value_bytes (" +
                                     std::to_string(options_.max_value_bytes) + ")");
    }
    const uint64_t chunks = redis::chunk_count(value.size(), options_.chunk_size);
    if (chunks > redis::kMaxChunks) {
      return Status::InvalidArgument(url_ + ": '" + name + "' would take " +
                                     std::to_string(chunks) + " chunks, over " +
                                     std::to_string(redis::kMaxChunks) + "; raise chunk_size");
    }
    const RefLookup previous = read_ref(name, deadline);
    if (!previous.answered)
      return Status::IOError(url_ + ": could not store '" + name + "' (see the log above)");
    const redis::Ref ref{random_token(), chunks, value.size(), redis::value_checksum(value)};
    std::string request;
    request.reserve(value.size() +
                    (chunks + 1) * 160);  // the value and each SET's keys and headers
    for (uint64_t i = 0; i < chunks; ++i) {
      append_with_ttl(request, {"SET", chunk_key(ref.id, i),
                                value.substr(i * options_.chunk_size, options_.chunk_size)});
    }
    append_with_ttl(request, {"SET", ref_key(name), redis::format_ref(ref)});
    std::optional<Reply>
        first_refusal;  // the first reply that is not OK (OOM from a full server...)
    const bool sent = connection_->exchange(
        deadline, request, chunks + 1, [](size_t) { return kSmallReply; },
        [&](size_t i, Reply&& reply) {
          if (reply.type != Reply::Type::kStatus && !first_refusal)
            first_refusal = std::move(reply);
          report_progress(std::min<uint64_t>(value.size(), (i + 1) * options_.chunk_size),
                          value.size());
        });
    if (sent && first_refusal) {
      connection_->report_bad_data(
          "storing '" + name + "': SET answered " + describe(*first_refusal), "not stored");
    }
    if (!sent || first_refusal)
      return Status::IOError(url_ + ": could not store '" + name + "' (see the log above)");
    if (previous.ref) delete_chunks(*previous.ref, deadline);
    ++counters().puts;
    counters().bytes_out += value.size();
    return Status::OK();
  }

  bool contains(const std::string& name) override {
    return read_ref(name, Clock::now() + options_.timeout).ref.has_value();
  }

  Status remove(const std::string& name) override {
    if (Status valid = check_name(name); !valid.ok()) return valid;
    const Deadline deadline = Clock::now() + options_.timeout;
    const RefLookup lookup = read_ref(name, deadline);
    std::string request;
    redis::append_command(request, {"DEL", ref_key(name)});
    // A malformed ref is deleted too: removing is how a poisoned entry gets repaired.
    std::optional<std::vector<Reply>> deleted;
    if (lookup.answered) deleted = connection_->exchange_all(deadline, request, 1);
    if (deleted && deleted->front().type == Reply::Type::kError) {
      connection_->report_bad_data(
          "removing '" + name + "': DEL answered " + describe(deleted->front()), "not removed");
    }
    if (!deleted || deleted->front().type == Reply::Type::kError) {
      return Status::IOError(url_ + ": could not remove '" + name + "' (see the log above)");
    }
    if (lookup.ref) delete_chunks(*lookup.ref, deadline);
    return Status::OK();
  }

  // Stops early, with what it has found, when the server fails, when the listing runs past
  // its bounds (kListTimeoutFactor, kMaxListedEntries), or when a SCAN page is malformed;
  // each is logged and counted. A partial answer rather than none: `megacache ls` then shows
  // what could be found and the log says that there is more, where an empty list would look
  // like an empty store. Nothing deletes by this list (Redis evicts by itself; gc is refused).
  std::vector<EntryInfo> list() override {
    std::vector<EntryInfo> out;
    // SCAN may name a key on more than one page (while Redis resizes its table).
    std::unordered_set<std::string> seen;
    std::string cursor = "0";
    const std::string ref_prefix = std::string(kPrefix) + "ref:";
    const std::string pattern = ref_prefix + "*";
    const Deadline stop_paging_at = Clock::now() + kListTimeoutFactor * options_.timeout;
    uint64_t pages = 0;
    do {
      // Checked between pages, never inside one: a page cut short by our own bound would
      // count as a failure of the server's.
      if (Clock::now() >= stop_paging_at) {
        connection_->report_own_bound(
            "the listing is still not done after " + std::to_string(pages) + " SCAN pages and " +
                std::to_string(kListTimeoutFactor) + " x timeout_ms; the server may never end it",
            "listing only the entries found so far");
        break;
      }
      // One deadline per page: listing a large store takes many, each bounded.
      const Deadline deadline = Clock::now() + options_.timeout;
      std::string scan;
      redis::append_command(scan, {"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"});
      std::optional<std::vector<Reply>> page =
          connection_->exchange_all(deadline, scan, 1, kScanReply);
      if (!page) break;
      ++pages;
      const Reply& reply = page->front();
      if (reply.type != Reply::Type::kArray || reply.elements.size() != 2 ||
          reply.elements[0].type != Reply::Type::kString || reply.elements[0].text.empty() ||
          reply.elements[0].text.size() > 20 ||
          reply.elements[0].text.find_first_not_of("0123456789") != std::string::npos ||
          reply.elements[1].type != Reply::Type::kArray) {
        connection_->report_bad_data("SCAN answered " + describe(reply) + ", not a cursor and keys",
                                     "the listing stops here");
        break;
      }
      cursor = reply.elements[0].text;
      std::vector<std::string> names;
      bool full = false;
      for (const Reply& key : reply.elements[1].elements) {
        if (key.type != Reply::Type::kString || key.text.rfind(ref_prefix, 0) != 0) continue;
        std::string name = key.text.substr(ref_prefix.size());
        if (!check_name(name).ok()) continue;
        if (seen.size() == kMaxListedEntries && !seen.contains(name)) {
          full = true;
          break;
        }
        if (seen.insert(name).second) names.push_back(std::move(name));
      }
      std::string gets;
      for (const std::string& name : names) redis::append_command(gets, {"GET", ref_key(name)});
      std::optional<std::vector<Reply>> refs =
          connection_->exchange_all(deadline, gets, names.size());
      if (!refs) break;
      for (size_t i = 0; i < names.size(); ++i) {
        if (std::optional<redis::Ref> ref = interpret_ref(names[i], std::move((*refs)[i]))) {
          out.push_back({names[i], ref->size, 0});
        }
      }
      if (full) {
        connection_->report_bad_data(
            "SCAN named more than " + std::to_string(kMaxListedEntries) + " entries",
            "listing only the first of them");
        break;
      }
    } while (cursor != "0");
    return out;
  }

  // Each attempt is one SET NX under its own timeout_ms, and a failed one ends the wait, so
  // the call lasts at most `wait` plus timeout_ms.
  std::unique_ptr<Lock> lock(const std::string& name, std::chrono::milliseconds wait,
                             std::chrono::milliseconds ttl) override {
    if (!check_name(name).ok()) return nullptr;
    const std::string key = std::string(kPrefix) + "lock:" + name;
    const std::string token = random_token();
    const Deadline wait_until = Clock::now() + wait;
    std::string request;
    redis::append_command(request, {"SET", key, token, "NX", "PX",
                                    std::to_string(std::max<int64_t>(1, ttl.count()))});
    while (!connection_->disabled()) {
      std::optional<std::vector<Reply>> reply =
          connection_->exchange_all(Clock::now() + options_.timeout, request, 1);
      if (!reply) return nullptr;
      const Reply& answer = reply->front();
      if (answer.type == Reply::Type::kStatus) {
        return std::make_unique<RedisLock>(connection_, key, token, options_.timeout);
      }
      // nil: another holder has it, so wait. Anything else (OOM from a full server) would
      // answer the same to every attempt: no lock, rather than a wait for nothing.
      if (answer.type != Reply::Type::kNil) {
        connection_->report_bad_data("locking " + key + ": SET NX answered " + describe(answer),
                                     "going on without the lock");
        return nullptr;
      }
      const auto now = Clock::now();
      if (now >= wait_until) return nullptr;
      std::this_thread::sleep_for(
          std::min<Clock::duration>(std::chrono::milliseconds(10), wait_until - now));
    }
    return nullptr;
  }

  Result<uint64_t> gc(uint64_t) override {
    return Status::InvalidArgument(url_ +
                                   ": Redis evicts by itself; configure maxmemory and "
                                   "maxmemory-policy allkeys-lru on the server");
  }

  Stats stats() override { return counters(); }
  void zero_stats() override { counters() = Stats{}; }

 private:
  struct RefLookup {
    bool answered = false;          // false: the exchange failed (logged and counted)
    std::optional<redis::Ref> ref;  // a valid ref, when the name has one
  };

  Stats& counters() { return connection_->counters(); }

  static std::string ref_key(const std::string& name) {
    return std::string(kPrefix) + "ref:" + name;
  }
  static std::string chunk_key(const std::string& id, uint64_t i) {
    return std::string(kPrefix) + "chunk:" + id + ":" + std::to_string(i);
  }

  void append_with_ttl(std::string& request, std::initializer_list<std::string_view> args) const {
    if (options_.ttl_seconds == 0) {
      redis::append_command(request, args);
      return;
    }
    const std::string ttl = std::to_string(options_.ttl_seconds);
    std::vector<std::string_view> with_ttl(args);
    with_ttl.push_back("EX");
    with_ttl.push_back(ttl);
    redis::append_command(request, with_ttl);
  }

  RefLookup read_ref(const std::string& name, Deadline deadline) {
    RefLookup lookup;
    if (!check_name(name).ok()) return lookup;
    std::string request;
    redis::append_command(request, {"GET", ref_key(name)});
    std::optional<std::vector<Reply>> reply = connection_->exchange_all(deadline, request, 1);
    if (!reply) return lookup;
    lookup.answered = true;
    lookup.ref = interpret_ref(name, std::move(reply->front()));
    return lookup;
  }

  // A ref that is not what a writer writes is bad data, refused before anything is
  // allocated for the value it claims.
  std::optional<redis::Ref> interpret_ref(const std::string& name, Reply&& reply) {
    if (reply.type == Reply::Type::kNil) return std::nullopt;
    if (reply.type != Reply::Type::kString) {
      connection_->report_bad_data("GET " + ref_key(name) + " answered " + describe(reply) +
                                   ", not a ref");
      return std::nullopt;
    }
    Result<redis::Ref> ref = redis::parse_ref(reply.text, options_.max_value_bytes);
    if (!ref.ok()) {
      connection_->report_bad_data(ref_key(name) + ": " + ref.status().message());
      return std::nullopt;
    }
    return std::move(ref).value();
  }

  std::optional<std::string> read_value(const std::string& name, const redis::Ref& ref,
                                        Deadline deadline) {
    redis::ChunkAssembler assembler(ref);
    if (ref.chunks > 0) {
      std::string request;
      for (uint64_t i = 0; i < ref.chunks; ++i)
        redis::append_command(request, {"GET", chunk_key(ref.id, i)});
      const bool ok = connection_->exchange(
          deadline, request, ref.chunks, [&](size_t) { return assembler.next_limits(); },
          [&](size_t, Reply&& reply) {
            (void)assembler.add(std::move(reply));  // finish() reports the first loss
            report_progress(std::min(ref.size, assembler.bytes_received()), ref.size);
          });
      if (!ok) return std::nullopt;
    }
    Result<std::string> value = assembler.finish();
    if (!value.ok()) {
      // Chunks gone (expired or replaced underneath) are an ordinary miss; chunks that cannot
      // be this value are bad data.
      if (value.status().code() != Status::Code::kNotFound) {
        connection_->report_bad_data("'" + name + "': " + value.status().message());
      }
      return std::nullopt;
    }
    return std::move(value).value();
  }

  void delete_chunks(const redis::Ref& ref, Deadline deadline) {
    if (ref.chunks == 0) return;
    std::string request;
    size_t commands = 0;
    std::vector<std::string> keys;
    for (uint64_t first = 0; first < ref.chunks; first += kKeysPerDelete) {
      keys.clear();
      for (uint64_t i = first; i < std::min<uint64_t>(ref.chunks, first + kKeysPerDelete); ++i) {
        keys.push_back(chunk_key(ref.id, i));
      }
      std::vector<std::string_view> command{"DEL"};
      command.insert(command.end(), keys.begin(), keys.end());
      redis::append_command(request, command);
      ++commands;
    }
    // An old value's chunks left behind cost memory until their ttl or eviction, nothing
    // more: a refused DEL is logged, and the put or remove stands.
    std::optional<std::vector<Reply>> replies =
        connection_->exchange_all(deadline, request, commands);
    if (!replies) return;
    for (const Reply& reply : *replies) {
      if (reply.type == Reply::Type::kError) {
        connection_->report_bad_data(
            "deleting the old chunks of " + ref.id + ": DEL answered " + describe(reply),
            "leaving them to expire or be evicted");
        return;
      }
    }
  }

  std::string url_;
  std::shared_ptr<Connection> connection_;
  RedisOptions options_;
};

Result<uint64_t> option_number(const std::string& url, const UrlOptions& options, const char* name,
                               uint64_t fallback) {
  const std::optional<std::string> text = options.get(name);
  if (!text) return fallback;
  Result<uint64_t> value = parse_size(*text);
  if (!value.ok())
    return Status::InvalidArgument(url + ": " + name + ": " + value.status().message());
  return *value;
}

}  // namespace

Result<std::unique_ptr<Store>> open_redis_store(const std::string& url, const std::string& host,
                                                int port, int db, const UrlOptions& options) {
  Result<uint64_t> connect_ms = option_number(url, options, "connect_timeout_ms", 200);
  Result<uint64_t> timeout_ms = option_number(url, options, "timeout_ms", 2000);
  Result<uint64_t> ttl = option_number(url, options, "ttl", 0);
  Result<uint64_t> chunk = option_number(url, options, "chunk_size", uint64_t{4} << 20);
  Result<uint64_t> max_value = option_number(url, options, "max_value_bytes", uint64_t{4} << 30);
  for (const Result<uint64_t>* value : {&connect_ms, &timeout_ms, &ttl, &chunk, &max_value}) {
    if (!value->ok()) return value->status();
  }
  if (*chunk == 0) return Status::InvalidArgument(url + ": chunk_size must be positive");
  // Past a terabyte the setting is a mistake, and a value of it could not be held anyway.
  if (*max_value == 0 || *max_value > (uint64_t{1} << 40)) {
    return Status::InvalidArgument(url + ": max_value_bytes must be 1 to 1T");
  }
  // A zero deadline would turn every request into a timeout; a day is past any sane one and
  // keeps deadline arithmetic far from overflow.
  constexpr uint64_t kMaxTimeoutMs = 24 * 3600 * 1000;
  if (*timeout_ms == 0 || *connect_ms == 0 || *timeout_ms > kMaxTimeoutMs ||
      *connect_ms > kMaxTimeoutMs) {
    return Status::InvalidArgument(url + ": timeout_ms and connect_timeout_ms must be 1 to " +
                                   std::to_string(kMaxTimeoutMs));
  }
  auto connection =
      std::make_shared<Connection>(url, host, port, db, std::chrono::milliseconds(*connect_ms));
  RedisOptions redis_options{*ttl, *chunk, *max_value, std::chrono::milliseconds(*timeout_ms)};
  return std::unique_ptr<Store>(new RedisStore(url, std::move(connection), redis_options));
}

}  // namespace megacache::store
