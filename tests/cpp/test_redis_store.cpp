// Redis store tests against a real redis-server that each test starts on 127.0.0.1 with a
// free port (the test command installs redis-server), and against FakeRedis, a small real
// TCP server in a thread that speaks RESP the way a broken or hostile server would.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "megacache/store.h"
#include "store/redis_protocol.h"
#include "test_util.h"

namespace megacache::store {
namespace {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

bool port_open(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0;
  ::close(fd);
  return ok;
}

using Clock = std::chrono::steady_clock;

int64_t milliseconds_since(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// Writes all of `bytes` to a non-blocking socket, giving up when the peer is gone or `stop`
// is set. Adds what was written to `sent`.
bool send_all(int fd, std::string_view bytes, const std::atomic<bool>& stop,
              std::atomic<uint64_t>* sent = nullptr) {
  while (!bytes.empty()) {
    if (stop) return false;
    pollfd ready{fd, POLLOUT, 0};
    if (::poll(&ready, 1, 50) <= 0) continue;
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return false;
    if (sent) *sent += static_cast<uint64_t>(n);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

// Sends one command to a server on 127.0.0.1 and returns its reply: how the tests plant data
// that no megacache writer would write.
redis::Reply raw_command(int port, std::initializer_list<std::string_view> args) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(static_cast<uint16_t>(port));
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  redis::Reply reply;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
    std::string request;
    redis::append_command(request, args);
    std::atomic<bool> never{false};
    send_all(fd, request, never);
    std::string input;
    char buffer[65536];
    for (ssize_t n; (n = ::recv(fd, buffer, sizeof buffer, 0)) > 0;) {
      input.append(buffer, static_cast<size_t>(n));
      if (redis::parse_reply(input, {uint64_t{1} << 30, 1000}, reply).state !=
          redis::ParseState::kIncomplete)
        break;
    }
  }
  ::close(fd);
  return reply;
}

// Peak resident memory: reset_peak_rss() starts a new peak (false where the kernel does not
// let a process do that), and status_kib("VmHWM:") reads it.
bool reset_peak_rss() {
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.flush();
  return clear.good();
}
uint64_t status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field, 0) == 0) return std::stoull(line.substr(std::string(field).size()));
  }
  return 0;
}

// A RESP server in a thread, on 127.0.0.1, one connection at a time, to play a broken or
// hostile Redis. `answer` gets each command and writes whatever reply it likes, as slowly as
// it likes; returning false closes the connection. A server made with `read_requests` false
// accepts and then reads nothing, like one that has hung.
class FakeRedis {
 public:
  using Answer =
      std::function<bool(FakeRedis& server, int fd, const std::vector<std::string>& command)>;

  explicit FakeRedis(Answer answer, bool read_requests = true)
      : answer_(std::move(answer)), read_requests_(read_requests) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::listen(listener_, 8);
    socklen_t length = sizeof address;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeRedis() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }

  std::string url(const std::string& options) const {
    return "redis://127.0.0.1:" + std::to_string(port_) + "/0" + options;
  }
  bool send(int fd, std::string_view bytes) { return send_all(fd, bytes, stop_, &bytes_sent_); }
  // One byte every `interval`: a server that is alive but never done.
  bool trickle(int fd, std::string_view bytes, std::chrono::milliseconds interval) {
    for (char c : bytes) {
      if (!send(fd, std::string_view(&c, 1))) return false;
      std::this_thread::sleep_for(interval);
    }
    return true;
  }
  // Bytes without end, as fast as the client takes them, until it hangs up.
  void stream_forever(int fd) {
    const std::string block(size_t{64} << 10, 'x');
    while (send(fd, block)) {}
  }
  uint64_t bytes_sent() const { return bytes_sent_; }
  bool answering() const { return answering_; }
  // The last command answered, as "NAME first-argument".
  std::string last_command() const {
    std::lock_guard<std::mutex> hold(mutex_);
    return last_command_;
  }
  void wait_until_idle() const {
    for (int i = 0; i < 300 && answering_; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }

 private:
  void serve() {
    while (!stop_) {
      pollfd ready{listener_, POLLIN, 0};
      if (::poll(&ready, 1, 50) <= 0) continue;
      const int fd = ::accept(listener_, nullptr, nullptr);
      if (fd < 0) continue;
      ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK);
      if (read_requests_) {
        serve_connection(fd);
      } else {
        while (!stop_) std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      ::close(fd);
    }
  }

  void serve_connection(int fd) {
    std::string input;
    while (!stop_) {
      pollfd ready{fd, POLLIN, 0};
      if (::poll(&ready, 1, 50) <= 0) continue;
      char buffer[65536];
      const ssize_t n = ::recv(fd, buffer, sizeof buffer, 0);
      if (n < 0 && errno == EAGAIN) continue;
      if (n <= 0) return;
      input.append(buffer, static_cast<size_t>(n));
      // Requests parse as replies do: an array of bulk strings. Consumed bytes are erased
      // once per read, not once per command, so long pipelines are served quickly.
      redis::Reply request;
      redis::ParseResult parsed;
      size_t consumed = 0;
      while ((parsed = redis::parse_reply(std::string_view(input).substr(consumed),
                                          {uint64_t{1} << 30, 1u << 20}, request))
                 .state == redis::ParseState::kComplete) {
        consumed += parsed.consumed;
        std::vector<std::string> command;
        for (redis::Reply& arg : request.elements) command.push_back(std::move(arg.text));
        {
          std::lock_guard<std::mutex> hold(mutex_);
          last_command_ =
              command.empty() ? "" : command[0] + (command.size() > 1 ? " " + command[1] : "");
        }
        answering_ = true;
        const bool keep = answer_(*this, fd, command);
        answering_ = false;
        if (!keep) return;
      }
      input.erase(0, consumed);
      if (parsed.state == redis::ParseState::kInvalid) return;
    }
  }

  Answer answer_;
  bool read_requests_;
  int listener_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> answering_{false};
  std::atomic<uint64_t> bytes_sent_{0};
  mutable std::mutex mutex_;
  std::string last_command_;
};

std::string bulk(std::string_view text) {
  return "$" + std::to_string(text.size()) + "\r\n" + std::string(text) + "\r\n";
}

const std::string kId(32, 'a');
const std::string kSum(32, 'b');

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifndef MEGACACHE_HAVE_REDIS
    GTEST_SKIP() << "built without hiredis";
#endif
    port_ = free_port();
    server_ = ::fork();
    if (server_ == 0) {
      const std::string port = std::to_string(port_);
      ::execlp("redis-server", "redis-server", "--port", port.c_str(), "--bind", "127.0.0.1",
               "--save", "", "--appendonly", "no", "--loglevel", "warning", nullptr);
      ::_exit(127);
    }
    for (int i = 0; i < 200 && !port_open(port_); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_TRUE(port_open(port_)) << "redis-server did not start (is it installed?)";
    url_ = "redis://127.0.0.1:" + std::to_string(port_) + "/0";
  }

  void TearDown() override { stop_server(); }

  void stop_server() {
    if (server_ > 0) {
      ::kill(server_, SIGKILL);
      ::waitpid(server_, nullptr, 0);
      server_ = -1;
    }
  }

  std::unique_ptr<Store> open_store(const std::string& options = "") {
    Result<std::unique_ptr<Store>> store = open(url_ + options);
    EXPECT_TRUE(store.ok()) << store.status().to_string();
    return std::move(store).value();
  }

  redis::Reply raw(std::initializer_list<std::string_view> args) const {
    return raw_command(port_, args);
  }

  // Connections the server has accepted since it started, this query's own included: how a
  // test tells whether a store kept its connection or opened new ones.
  int64_t connections_received() const {
    const std::string info = raw({"INFO", "stats"}).text;
    const std::string field = "total_connections_received:";
    const size_t at = info.find(field);
    EXPECT_NE(at, std::string::npos) << info;
    return at == std::string::npos ? -1 : std::stoll(info.substr(at + field.size()));
  }

  // The ref a megacache writer left under `name`.
  redis::Ref ref_of(const std::string& name) const {
    Result<redis::Ref> ref =
        redis::parse_ref(raw({"GET", "megacache:v1:ref:" + name}).text, UINT64_MAX);
    EXPECT_TRUE(ref.ok()) << ref.status().to_string();
    return ref.ok() ? *ref : redis::Ref{};
  }

  int port_ = 0;
  pid_t server_ = -1;
  std::string url_;
};

TEST_F(RedisStoreTest, RoundTripAndList) {
  auto store = open_store();
  EXPECT_FALSE(store->get("m"));
  ASSERT_TRUE(store->put("m", "bundle").ok());
  EXPECT_EQ(store->get("m"), "bundle");
  ASSERT_TRUE(store->put("m", "replaced").ok());
  EXPECT_EQ(store->get("m"), "replaced");
  ASSERT_EQ(store->list().size(), 1u);
  EXPECT_EQ(store->list()[0].size, 8u);
  ASSERT_TRUE(store->remove("m").ok());
  EXPECT_FALSE(store->contains("m"));
  EXPECT_EQ(store->stats().hits, 2u);
}

TEST_F(RedisStoreTest, ChunksLargeValues) {
  auto store = open_store("?chunk_size=1000");
  std::string value(10500, 'x');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 31);
  ASSERT_TRUE(store->put("big", value).ok());
  EXPECT_EQ(store->get("big"), value);
}

TEST_F(RedisStoreTest, TtlExpiresEntries) {
  auto store = open_store("?ttl=1");
  ASSERT_TRUE(store->put("short-lived", "v").ok());
  EXPECT_TRUE(store->get("short-lived"));
  std::this_thread::sleep_for(std::chrono::milliseconds(2200));
  EXPECT_FALSE(store->get("short-lived"));
}

TEST_F(RedisStoreTest, ServerKilledMidTransferIsAMissWithinTheTimeout) {
  auto store = open_store("?chunk_size=65536&timeout_ms=500");
  // Written with more time: 500 ms bounds each whole operation, too little for 64 MiB on a
  // busy machine, and the write is not what this test is about.
  ASSERT_TRUE(open_store("?chunk_size=65536&timeout_ms=20000")
                  ->put("big", std::string(64 << 20, 'z'))
                  .ok());
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    stop_server();
  });
  const auto start = std::chrono::steady_clock::now();
  std::optional<std::string> value = store->get("big");
  killer.join();
  // Either the read finished before the kill, or it is a miss; never a partial value.
  if (value) {
    EXPECT_EQ(value->size(), size_t{64} << 20);
  }
  EXPECT_FALSE(store->get("big"));  // the server is gone now: a miss
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  const Stats stats = store->stats();
  EXPECT_GE(stats.errors + stats.timeouts, 1u);
  // After repeated failures the store is off: no more waiting on a dead server.
  for (int i = 0; i < 3; ++i) store->get("big");
  const auto off = std::chrono::steady_clock::now();
  EXPECT_FALSE(store->get("big"));
  EXPECT_LT(std::chrono::steady_clock::now() - off, std::chrono::milliseconds(50));
}

TEST_F(RedisStoreTest, UnreachableServerIsAFastMiss) {
  stop_server();
  auto store = open_store("?connect_timeout_ms=100");
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(store->get("m"));
  EXPECT_FALSE(store->put("m", "v").ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(1));
}

TEST_F(RedisStoreTest, SingleFlightAcrossEightProcessesProducesOnce) {
  test::TempDir dir;
  const std::string producers = dir.path() + "/producers";
  std::vector<pid_t> children;
  for (int i = 0; i < 8; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      auto store = open(url_);
      Result<std::string> value = get_or_produce(
          **store, "compiled",
          [&]() -> Result<std::string> {
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            FILE* f = std::fopen(producers.c_str(), "a");
            std::fputs("x", f);
            std::fclose(f);
            return std::string("artifacts");
          },
          std::chrono::seconds(20));
      ::_exit(value.ok() && *value == "artifacts" ? 0 : 1);
    }
    children.push_back(pid);
  }
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  EXPECT_EQ(test::read_tree(dir.path()).at("producers"), "x");
}

TEST_F(RedisStoreTest, ADeadHoldersLockExpires) {
  auto store = open_store();
  const pid_t pid = ::fork();
  if (pid == 0) {
    auto holder = open(url_);
    auto lock = (*holder)->lock("m", std::chrono::seconds(1), std::chrono::milliseconds(300));
    ::_exit(lock ? 0 : 1);  // dies holding it: no release runs
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  EXPECT_FALSE(store->lock("m", std::chrono::milliseconds(50), std::chrono::seconds(1)));
  EXPECT_TRUE(store->lock("m", std::chrono::seconds(2), std::chrono::seconds(1)));
}

TEST_F(RedisStoreTest, PoisonedRefsAreCountedMissesNotCrashes) {
  auto store = open_store();
  const std::vector<std::string> poisoned = {
      kId + " 0 4611686018427387904 " + kSum,  // 2^62 bytes in no chunks: once a bad_alloc
      kId + " 1024 4294967297 " + kSum,        // consistent, but over the 4 GiB default cap
      kId + " 6 10 " + kSum,                   // no chunk size cuts 10 bytes into 6
      kId + " 2 1 " + kSum,                    // more chunks than bytes
      kId + " 0 5 " + kSum,
      kId + " 1 5 " + kSum + " extra",
      kId + " -1 5 " + kSum,
      kId + " 01 5 " + kSum,
      "ABC 1 5 " + kSum,
      kId + " 1 18446744073709551616 " + kSum,  // 2^64
      "",
      "garbage",
  };
  for (size_t i = 0; i < poisoned.size(); ++i) {
    SCOPED_TRACE(poisoned[i]);
    const std::string name = "poisoned-" + std::to_string(i);
    ASSERT_EQ(raw({"SET", "megacache:v1:ref:" + name, poisoned[i]}).text, "OK");
    const Stats before = store->stats();
    std::optional<std::string> value;
    EXPECT_NO_THROW(value = store->get(name));
    EXPECT_FALSE(value);
    EXPECT_FALSE(store->contains(name));
    const Stats after = store->stats();
    EXPECT_EQ(after.misses, before.misses + 1);
    EXPECT_EQ(after.errors, before.errors + 2);  // the get and the contains
    EXPECT_EQ(after.timeouts, 0u);
  }
  // Single flight and a tiered store on top see a miss too, and can produce.
  Claimed claimed;
  EXPECT_NO_THROW(claimed = get_or_claim(*store, "poisoned-0", std::chrono::milliseconds(100)));
  EXPECT_FALSE(claimed.value);
  EXPECT_TRUE(claimed.claim);
  claimed.claim.reset();
  test::TempDir dir;
  Result<std::unique_ptr<Store>> tiered = open("file://" + dir.path() + "," + url_);
  ASSERT_TRUE(tiered.ok());
  EXPECT_FALSE((*tiered)->get("poisoned-0"));
  // Bad data is no outage: the store stays on, and a put over a poisoned ref repairs it.
  ASSERT_TRUE(store->put("poisoned-0", "repaired").ok());
  EXPECT_EQ(store->get("poisoned-0"), "repaired");
  EXPECT_EQ((*tiered)->get("poisoned-0"), "repaired");
  ASSERT_TRUE(store->remove("poisoned-1").ok());
  EXPECT_EQ(raw({"EXISTS", "megacache:v1:ref:poisoned-1"}).integer, 0);
}

TEST_F(RedisStoreTest, MaxValueBytesBoundsWhatIsWrittenAndRead) {
  auto small = open_store("?max_value_bytes=1000");
  EXPECT_TRUE(small->put("fits", std::string(1000, 'f')).ok());
  EXPECT_EQ(small->get("fits"), std::string(1000, 'f'));
  EXPECT_EQ(small->put("too-big", std::string(1001, 'b')).code(), Status::Code::kInvalidArgument);
  EXPECT_FALSE(small->contains("too-big"));
  auto large = open_store("?max_value_bytes=1M");
  ASSERT_TRUE(large->put("big", std::string(5000, 'b')).ok());
  EXPECT_FALSE(small->get("big"));
  EXPECT_EQ(small->stats().errors, 1u);
  EXPECT_EQ(large->get("big"), std::string(5000, 'b'));
  EXPECT_EQ(open(url_ + "?max_value_bytes=lots").status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(open(url_ + "?max_value_bytes=2T").status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(open(url_ + "?timeout_ms=0").status().code(), Status::Code::kInvalidArgument);
}

TEST_F(RedisStoreTest, ReadersWithAnotherChunkSizeReadTheValue) {
  std::string value(10500, '\0');
  for (size_t i = 0; i < value.size(); ++i) value[i] = static_cast<char>(i * 7);
  ASSERT_TRUE(open_store("?chunk_size=1000")->put("v", value).ok());
  EXPECT_EQ(open_store()->get("v"), value);
  EXPECT_EQ(open_store("?chunk_size=333")->get("v"), value);
  ASSERT_TRUE(open_store()->put("empty", "").ok());  // no chunks at all
  EXPECT_EQ(open_store("?chunk_size=333")->get("empty"), "");
}

TEST_F(RedisStoreTest, ChunksThatCannotBelongToTheirRefAreMisses) {
  auto store = open_store("?chunk_size=1000");
  const std::string value(2500, 'v');
  const auto chunk = [&](const redis::Ref& ref, int i) {
    return "megacache:v1:chunk:" + ref.id + ":" + std::to_string(i);
  };
  // Expired underneath: a plain miss, no error.
  ASSERT_TRUE(store->put("expired", value).ok());
  raw({"DEL", chunk(ref_of("expired"), 0)});
  EXPECT_FALSE(store->get("expired"));
  EXPECT_EQ(store->stats().errors, 0u);
  // A middle chunk of another length than the first: bad data.
  ASSERT_TRUE(store->put("short", value).ok());
  raw({"SET", chunk(ref_of("short"), 1), std::string(900, 'v')});
  EXPECT_FALSE(store->get("short"));
  EXPECT_EQ(store->stats().errors, 1u);
  // A chunk longer than the ref leaves for it: cut off at its header, 10 MB never read.
  ASSERT_TRUE(store->put("long", value).ok());
  raw({"SET", chunk(ref_of("long"), 1), std::string(10 << 20, 'v')});
  const auto start = Clock::now();
  EXPECT_FALSE(store->get("long"));
  EXPECT_LT(milliseconds_since(start), 500);
  EXPECT_EQ(store->stats().errors, 2u);
  // Same lengths, other bytes: the checksum refuses it.
  ASSERT_TRUE(store->put("changed", value).ok());
  raw({"SET", chunk(ref_of("changed"), 2), std::string(500, 'w')});
  EXPECT_FALSE(store->get("changed"));
  EXPECT_EQ(store->stats().errors, 3u);
  // None of it turned the store off.
  ASSERT_TRUE(store->put("fine", value).ok());
  EXPECT_EQ(store->get("fine"), value);
}

// Someone sharing the Redis stores a hash at a ref key, or a list at a chunk key: reading it
// gets a WRONGTYPE error reply. That is bad data, like a poisoned ref: a counted miss over a
// connection that stays, never a step toward turning the store off for the process, or
// anyone who can write one key could turn caching off for everyone sharing the server.
TEST_F(RedisStoreTest, ErrorRepliesAreMissesThatKeepTheConnectionAndTheStoreOn) {
  auto store = open_store("?chunk_size=1000");
  ASSERT_TRUE(store->put("good", "value").ok());
  ASSERT_TRUE(store->put("chunked", std::string(2500, 'c')).ok());
  ASSERT_EQ(raw({"HSET", "megacache:v1:ref:hash", "field", "value"}).integer, 1);
  const std::string middle_chunk = "megacache:v1:chunk:" + ref_of("chunked").id + ":1";
  ASSERT_EQ(raw({"DEL", middle_chunk}).integer, 1);
  ASSERT_EQ(raw({"RPUSH", middle_chunk, "not a chunk"}).integer, 1);
  const int64_t connections_before = connections_received();
  const Stats before = store->stats();
  constexpr int kRounds = 6;  // each round has three error replies: the old code was off after one
  for (int i = 0; i < kRounds; ++i) {
    EXPECT_FALSE(store->get("hash"));
    EXPECT_FALSE(store->contains("hash"));
    EXPECT_FALSE(store->get("chunked"));  // the error reply is the middle one of a pipeline
  }
  EXPECT_EQ(store->get("good"), "value");
  const Stats after = store->stats();
  EXPECT_EQ(after.errors - before.errors, 3u * kRounds);
  EXPECT_EQ(after.misses - before.misses, 2u * kRounds);
  EXPECT_EQ(after.hits - before.hits, 1u);
  EXPECT_EQ(after.timeouts, 0u);
  // The store kept its one connection: the only one accepted since is this query's own.
  EXPECT_EQ(connections_received(), connections_before + 1);
  // A put replaces whatever was at the ref key, and a remove deletes it.
  ASSERT_TRUE(store->put("hash", "repaired").ok());
  EXPECT_EQ(store->get("hash"), "repaired");
  ASSERT_EQ(raw({"HSET", "megacache:v1:ref:hash", "field", "value"}).integer, 0);  // 0: not a hash
  ASSERT_EQ(raw({"DEL", "megacache:v1:ref:hash"}).integer, 1);
  ASSERT_EQ(raw({"HSET", "megacache:v1:ref:hash", "field", "value"}).integer, 1);
  EXPECT_TRUE(store->remove("hash").ok());
  EXPECT_EQ(raw({"EXISTS", "megacache:v1:ref:hash"}).integer, 0);
}

// A full server (maxmemory reached under noeviction) answers writes with an OOM error reply:
// each put and lock fails at once and is counted, and once the server has room again the
// same store writes, over the same connection.
TEST_F(RedisStoreTest, ErrorRepliesToWritesFailThemWithoutTurningTheStoreOff) {
  auto store = open_store();
  ASSERT_EQ(raw({"CONFIG", "SET", "maxmemory-policy", "noeviction"}).text, "OK");
  ASSERT_EQ(raw({"CONFIG", "SET", "maxmemory", "1"}).text, "OK");
  constexpr int kRounds = 4;  // in a row, with no successful request between them
  for (int i = 0; i < kRounds; ++i)
    EXPECT_EQ(store->put("m", "value").code(), Status::Code::kIOError);
  for (int i = 0; i < kRounds; ++i) {
    const auto start = Clock::now();
    EXPECT_FALSE(store->lock("m", std::chrono::seconds(2), std::chrono::seconds(1)));
    EXPECT_LT(milliseconds_since(start),
              500);  // an error reply is an answer: no waiting out `wait`
  }
  EXPECT_EQ(store->stats().errors, 2u * kRounds);
  EXPECT_EQ(store->stats().timeouts, 0u);
  const int64_t connections_before = connections_received();
  ASSERT_EQ(raw({"CONFIG", "SET", "maxmemory", "0"}).text, "OK");
  EXPECT_TRUE(store->put("m", "value").ok());
  EXPECT_EQ(store->get("m"), "value");
  EXPECT_TRUE(store->lock("m", std::chrono::seconds(2), std::chrono::seconds(1)));
  EXPECT_EQ(connections_received(), connections_before + 2);  // the two CONFIG queries' own
}

// Python may hold a claim after the Store that handed it out is collected: the lock keeps
// what it needs, and releasing it still deletes the key. Releasing against a server that is
// gone counts the failure in the counters the lock shares with the dead store (a
// use-after-free under AddressSanitizer when the lock pointed into the store).
TEST_F(RedisStoreTest, ALockOutlivesItsStore) {
  const std::string key = "megacache:v1:lock:claimed";
  auto store = open_store();
  std::unique_ptr<Lock> lock =
      store->lock("claimed", std::chrono::seconds(1), std::chrono::seconds(30));
  ASSERT_TRUE(lock);
  std::unique_ptr<Lock> orphan =
      store->lock("orphan", std::chrono::seconds(1), std::chrono::seconds(30));
  ASSERT_TRUE(orphan);
  store.reset();
  EXPECT_EQ(raw({"EXISTS", key}).integer, 1);
  lock.reset();
  EXPECT_EQ(raw({"EXISTS", key}).integer, 0);
  stop_server();
  const auto start = Clock::now();
  orphan.reset();  // fails: no server; bounded by timeout_ms, and counted
  EXPECT_LT(milliseconds_since(start), 2500);
}

// A server that answers a GET by announcing 8 GiB and streaming them: cut off at the header,
// for a ref (tiny) and for a chunk (no longer than its ref's size), with memory untouched.
TEST(RedisHostileServer, HugeBulkRepliesAreCutOffAtTheirHeader) {
#ifndef MEGACACHE_HAVE_REDIS
  GTEST_SKIP() << "built without hiredis";
#endif
  const std::string ref = kId + " 1 1000 " + kSum;
  FakeRedis server([&](FakeRedis& self, int fd, const std::vector<std::string>& command) {
    if (command.size() != 2 || command[0] != "GET") return self.send(fd, "-ERR unexpected\r\n");
    if (command[1] == "megacache:v1:ref:ok-ref") return self.send(fd, bulk(ref));
    self.send(fd, "$8589934592\r\n");
    self.stream_forever(fd);
    return false;
  });
  const bool measure_rss = reset_peak_rss();
  const uint64_t rss_before_kib = status_kib("VmRSS:");
  for (const std::string name : {"huge-ref", "ok-ref"}) {
    SCOPED_TRACE(name);
    auto store = open(server.url("?timeout_ms=5000"));
    ASSERT_TRUE(store.ok());
    const auto start = Clock::now();
    EXPECT_FALSE((*store)->get(name));
    const int64_t elapsed_ms = milliseconds_since(start);
    EXPECT_LT(elapsed_ms, 1000);  // refused at once, not after a timeout
    EXPECT_EQ((*store)->stats().errors, 1u);
    EXPECT_EQ((*store)->stats().timeouts, 0u);
    // The client hung up: the server's stream ends after what the socket buffers hold.
    server.wait_until_idle();
    EXPECT_FALSE(server.answering());
    std::printf(
        "[ measured ] %s: cut off after %lld ms; the server got %llu bytes out before the "
        "hang-up\n",
        name.c_str(), static_cast<long long>(elapsed_ms),
        static_cast<unsigned long long>(server.bytes_sent()));
  }
  EXPECT_LT(server.bytes_sent(), uint64_t{64} << 20);
  if (measure_rss) {
    const uint64_t peak_growth_kib =
        status_kib("VmHWM:") - std::min(rss_before_kib, status_kib("VmHWM:"));
    std::printf("[ measured ] peak RSS grew by %llu KiB\n",
                static_cast<unsigned long long>(peak_growth_kib));
    EXPECT_LT(peak_growth_kib, 16u << 10);
  }
}

// The answer to every command trickles in a byte at a time: each public operation ends by
// its timeout_ms, not by the server.
TEST(RedisHostileServer, TricklingRepliesEndAtTheDeadline) {
#ifndef MEGACACHE_HAVE_REDIS
  GTEST_SKIP() << "built without hiredis";
#endif
  constexpr int64_t kTimeoutMs = 500;
  constexpr auto kInterval = std::chrono::milliseconds(300);  // as the hostile server in the report
  const std::string ref = kId + " 1 1000 " + kSum;
  // Quick answers where a test needs to get past one step to reach the slow one.
  FakeRedis server([&](FakeRedis& self, int fd, const std::vector<std::string>& command) {
    const std::string key = command.size() >= 2 ? command[1] : "";
    if (command[0] == "GET" && key == "megacache:v1:ref:slow-chunk")
      return self.send(fd, bulk(ref));
    if (command[0] == "GET" && key == "megacache:v1:ref:slow-put") return self.send(fd, "$-1\r\n");
    if (command[0] == "GET") {
      return self.trickle(
          fd, key.find(":ref:") != std::string::npos ? bulk(ref) : bulk(std::string(1000, 'c')),
          kInterval);
    }
    return self.trickle(fd, "+OK\r\n", kInterval);
  });
  const std::string url = server.url("?timeout_ms=" + std::to_string(kTimeoutMs));
  // `slow` is the command that must have been the one to run out the clock.
  const auto check = [&](const char* what, const std::string& slow,
                         const std::function<void(Store&)>& operation) {
    SCOPED_TRACE(what);
    server.wait_until_idle();  // the previous check's answer has noticed the hang-up
    auto store = open(url);    // a fresh one each time: three timeouts in a row turn a store off
    ASSERT_TRUE(store.ok());
    const auto start = Clock::now();
    operation(**store);
    const int64_t elapsed_ms = milliseconds_since(start);
    std::printf(
        "[ measured ] %s against a server trickling a byte every 300 ms, timeout_ms=%lld: %lld "
        "ms\n",
        what, static_cast<long long>(kTimeoutMs), static_cast<long long>(elapsed_ms));
    EXPECT_GE(elapsed_ms, kTimeoutMs - 10);
    EXPECT_LE(elapsed_ms, kTimeoutMs + 100);
    EXPECT_EQ((*store)->stats().timeouts, 1u);
    EXPECT_EQ(server.last_command().rfind(slow, 0), 0u) << server.last_command();
  };
  check("get (slow ref)",
        "GET megacache:v1:ref:", [](Store& store) { EXPECT_FALSE(store.get("slow-ref")); });
  check("get (slow chunk)",
        "GET megacache:v1:chunk:", [](Store& store) { EXPECT_FALSE(store.get("slow-chunk")); });
  check("put (slow ref)", "GET megacache:v1:ref:", [](Store& store) {
    EXPECT_FALSE(store.put("slow-ref", "value").ok());
  });
  check("put (slow SET)", "SET megacache:v1:chunk:", [](Store& store) {
    EXPECT_FALSE(store.put("slow-put", "value").ok());
  });
  check("contains",
        "GET megacache:v1:ref:", [](Store& store) { EXPECT_FALSE(store.contains("slow-ref")); });
  check("remove",
        "GET megacache:v1:ref:", [](Store& store) { EXPECT_FALSE(store.remove("slow-ref").ok()); });
  check("list", "SCAN", [](Store& store) { EXPECT_TRUE(store.list().empty()); });
  check("lock", "SET megacache:v1:lock:", [](Store& store) {
    EXPECT_FALSE(store.lock("slow", std::chrono::milliseconds(0), std::chrono::seconds(1)));
  });
}

// A server that accepts and then reads nothing: a large put fills the socket and waits for
// room that never comes, until the deadline.
TEST(RedisHostileServer, AServerThatStopsReadingCannotStallAPut) {
#ifndef MEGACACHE_HAVE_REDIS
  GTEST_SKIP() << "built without hiredis";
#endif
  FakeRedis server([](FakeRedis&, int, const std::vector<std::string>&) { return false; },
                   /*read_requests=*/false);
  auto store = open(server.url("?timeout_ms=300"));
  ASSERT_TRUE(store.ok());
  const std::string value(64 << 20, 'p');
  const auto start = Clock::now();
  EXPECT_FALSE((*store)->put("big", value).ok());
  const int64_t elapsed_ms = milliseconds_since(start);
  std::printf("[ measured ] a 64 MiB put to a server that reads nothing, timeout_ms=300: %lld ms\n",
              static_cast<long long>(elapsed_ms));
  EXPECT_GE(elapsed_ms, 290);
  EXPECT_LE(elapsed_ms, 400);
  EXPECT_EQ((*store)->stats().timeouts, 1u);
}

// Runs store.list() in a thread and waits for it at most `patience`; then `stop_server` ends
// the server, which ends any listing still running (its next request finds no server). It is
// told whether the listing ended: only then may it use the store, which is not shared
// between threads.
struct ListOutcome {
  bool ended = false;
  int64_t elapsed_ms = -1;
  std::vector<EntryInfo> entries;
};
ListOutcome list_with_patience(Store& store, std::chrono::milliseconds patience,
                               const std::function<void(bool listing_ended)>& stop_server) {
  ListOutcome outcome;
  std::atomic<bool> done{false};
  const auto start = Clock::now();
  std::thread lister([&] {
    outcome.entries = store.list();
    outcome.elapsed_ms = milliseconds_since(start);
    done = true;
  });
  while (!done && Clock::now() - start < patience)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  outcome.ended = done;
  stop_server(outcome.ended);
  lister.join();
  return outcome;
}

// A SCAN that never returns cursor 0, each page naming one new entry: every page is quick,
// and the listing as a whole ends by its own bound, (30 + 1) x timeout_ms, with what it
// found. The bound is counted as a timeout, and is no connection failure: the store stays on.
TEST(RedisHostileServer, AScanThatNeverEndsStopsAtTheListingsDeadline) {
#ifndef MEGACACHE_HAVE_REDIS
  GTEST_SKIP() << "built without hiredis";
#endif
  constexpr int64_t kTimeoutMs = 50;  // ample for one quick page, even on a loaded machine
  const std::string ref = kId + " 1 1000 " + kSum;
  std::atomic<uint64_t> pages{0};
  auto server = std::make_unique<FakeRedis>(
      [&](FakeRedis& self, int fd, const std::vector<std::string>& command) {
        if (command[0] == "SCAN") {
          const uint64_t page = pages++;
          return self.send(fd, "*2\r\n" + bulk(std::to_string(page + 1)) + "*1\r\n" +
                                   bulk("megacache:v1:ref:entry-" + std::to_string(page)));
        }
        if (command[0] == "GET") return self.send(fd, bulk(ref));
        return self.send(fd, "-ERR unexpected\r\n");
      });
  auto store = open(server->url("?timeout_ms=" + std::to_string(kTimeoutMs)));
  ASSERT_TRUE(store.ok());
  bool still_on = false;
  const ListOutcome listed =
      list_with_patience(**store, std::chrono::seconds(10), [&](bool listing_ended) {
        if (listing_ended)
          still_on = (*store)->contains("entry-0");  // while the server is still there
        server.reset();
      });
  ASSERT_TRUE(listed.ended) << "list() was still running after 10 s, " << pages << " pages in";
  std::printf(
      "[ measured ] a SCAN without end, timeout_ms=%lld: the listing stopped after %lld ms and "
      "%llu pages\n",
      static_cast<long long>(kTimeoutMs), static_cast<long long>(listed.elapsed_ms),
      static_cast<unsigned long long>(pages.load()));
  EXPECT_GE(listed.elapsed_ms, 30 * kTimeoutMs);
  EXPECT_LE(listed.elapsed_ms, 31 * kTimeoutMs + 500);
  // What was found is returned: one entry a page, each once.
  EXPECT_GT(listed.entries.size(), 1u);
  EXPECT_LE(listed.entries.size(), pages.load());
  for (size_t i = 0; i < listed.entries.size(); ++i) {
    EXPECT_EQ(listed.entries[i].name, "entry-" + std::to_string(i));
    EXPECT_EQ(listed.entries[i].size, 1000u);
  }
  EXPECT_EQ((*store)->stats().timeouts, 1u);
  EXPECT_EQ((*store)->stats().errors, 0u);
  EXPECT_TRUE(still_on);
}

// A SCAN that keeps naming new entries as fast as it can: the listing stops at 2^18 names,
// whatever time is left, so that memory stays bounded too.
TEST(RedisHostileServer, AScanThatNamesTooManyEntriesStopsAtItsCap) {
#ifndef MEGACACHE_HAVE_REDIS
  GTEST_SKIP() << "built without hiredis";
#endif
  constexpr uint64_t kMaxListed = uint64_t{1} << 18;
  constexpr uint64_t kKeysPerPage = uint64_t{1} << 16;  // within what one SCAN reply may hold
  // GETs are answered in batches, one send for many replies; every pipeline the store sends
  // is a page's keys or what is left below the cap, both multiples of the batch.
  constexpr uint64_t kRepliesPerSend = 1024;
  const std::string ref = bulk(kId + " 1 1000 " + kSum);
  std::atomic<uint64_t> pages{0};
  std::string batch;
  uint64_t batched = 0;
  auto server = std::make_unique<FakeRedis>(
      [&](FakeRedis& self, int fd, const std::vector<std::string>& command) {
        if (command[0] == "GET") {
          batch += ref;
          if (++batched % kRepliesPerSend != 0) return true;
          const bool sent = self.send(fd, batch);
          batch.clear();
          return sent;
        }
        if (command[0] != "SCAN") return self.send(fd, "-ERR unexpected\r\n");
        const uint64_t page = pages++;
        std::string reply =
            "*2\r\n" + bulk(std::to_string(page + 1)) + "*" + std::to_string(kKeysPerPage) + "\r\n";
        for (uint64_t i = 0; i < kKeysPerPage; ++i)
          reply += bulk("megacache:v1:ref:e" + std::to_string(page * kKeysPerPage + i));
        return self.send(fd, reply);
      });
  auto store = open(server->url("?timeout_ms=60000"));  // the deadline is not what stops it
  ASSERT_TRUE(store.ok());
  const ListOutcome listed =
      list_with_patience(**store, std::chrono::seconds(60), [&](bool) { server.reset(); });
  ASSERT_TRUE(listed.ended) << "list() was still running after 60 s, " << pages << " pages in";
  std::printf(
      "[ measured ] a SCAN naming %llu new entries a page: the listing stopped after %lld ms and "
      "%llu pages\n",
      static_cast<unsigned long long>(kKeysPerPage), static_cast<long long>(listed.elapsed_ms),
      static_cast<unsigned long long>(pages.load()));
  EXPECT_EQ(pages.load(),
            kMaxListed / kKeysPerPage + 1);  // the one that finds the cap full ends it
  ASSERT_EQ(listed.entries.size(), kMaxListed);
  EXPECT_EQ(listed.entries.back().name, "e" + std::to_string(kMaxListed - 1));
  EXPECT_EQ((*store)->stats().errors, 1u);
  EXPECT_EQ((*store)->stats().timeouts, 0u);
}

// SCAN may name a key on more than one page (Redis does while it resizes its table): the
// entry is listed once.
TEST(RedisHostileServer, AnEntryScanNamesTwiceIsListedOnce) {
#ifndef MEGACACHE_HAVE_REDIS
  GTEST_SKIP() << "built without hiredis";
#endif
  const std::string ref = kId + " 1 1000 " + kSum;
  FakeRedis server([&](FakeRedis& self, int fd, const std::vector<std::string>& command) {
    if (command[0] == "GET") return self.send(fd, bulk(ref));
    if (command[0] != "SCAN") return self.send(fd, "-ERR unexpected\r\n");
    const bool first_page = command.at(1) == "0";
    return self.send(fd, "*2\r\n" + bulk(first_page ? "7" : "0") + "*2\r\n" +
                             bulk(first_page ? "megacache:v1:ref:a" : "megacache:v1:ref:c") +
                             bulk("megacache:v1:ref:b"));
  });
  auto store = open(server.url(""));
  ASSERT_TRUE(store.ok());
  std::vector<std::string> names;
  for (const EntryInfo& entry : (*store)->list()) names.push_back(entry.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(RedisProtocol, RepliesAreRefusedBeyondTheirLimits) {
  redis::Reply reply;
  const redis::ReplyLimits small{64, 0};
  EXPECT_EQ(redis::parse_reply("$5\r\nhello\r\n", small, reply).state,
            redis::ParseState::kComplete);
  EXPECT_EQ(reply.text, "hello");
  EXPECT_EQ(redis::parse_reply("$5\r\nhel", small, reply).state, redis::ParseState::kIncomplete);
  EXPECT_EQ(redis::parse_reply("$8589934592\r\n", small, reply).state, redis::ParseState::kInvalid);
  EXPECT_EQ(redis::parse_reply("*2147483647\r\n", small, reply).state, redis::ParseState::kInvalid);
  EXPECT_EQ(redis::parse_reply(std::string(64, '+'), small, reply).state,
            redis::ParseState::kInvalid);
  EXPECT_EQ(redis::parse_reply(std::string(63, '+'), small, reply).state,
            redis::ParseState::kIncomplete);
  EXPECT_EQ(redis::parse_reply("$5\r\nhelloXY", small, reply).state, redis::ParseState::kInvalid);
  EXPECT_EQ(redis::parse_reply("%1\r\n", small, reply).state, redis::ParseState::kInvalid);
  EXPECT_EQ(redis::parse_reply(":-42\r\n", small, reply).state, redis::ParseState::kComplete);
  EXPECT_EQ(reply.integer, -42);
  const redis::ReplyLimits scan{1024, 3};
  ASSERT_EQ(redis::parse_reply("*2\r\n$1\r\n0\r\n*1\r\n$1\r\nk\r\n", scan, reply).state,
            redis::ParseState::kComplete);
  EXPECT_EQ(reply.elements.at(1).elements.at(0).text, "k");
  EXPECT_EQ(redis::parse_reply("*2\r\n$1\r\n0\r\n*2\r\n", scan, reply).state,
            redis::ParseState::kInvalid);
}

TEST(RedisProtocol, ChunksMustFitTheirRef) {
  const std::string value = "0123456789";
  const redis::Ref ref{kId, 4, 10, redis::value_checksum(value)};  // written with chunk_size 3
  const auto string_reply = [](std::string text) {
    redis::Reply reply;
    reply.type = redis::Reply::Type::kString;
    reply.text = std::move(text);
    return reply;
  };
  redis::ChunkAssembler whole(ref);
  EXPECT_EQ(whole.next_limits().max_bytes,
            7 + redis::kBulkOverheadBytes);  // a byte left for each later chunk
  for (const char* chunk : {"012", "345", "678", "9"}) {
    EXPECT_EQ(whole.add(string_reply(chunk)), redis::ChunkAssembler::Verdict::kAccepted);
  }
  EXPECT_EQ(*whole.finish(), value);
  redis::ChunkAssembler uneven(ref);
  uneven.add(string_reply("012"));
  EXPECT_EQ(uneven.add(string_reply("34")), redis::ChunkAssembler::Verdict::kInvalid);
  EXPECT_EQ(uneven.finish().status().code(), Status::Code::kCorruption);
  redis::ChunkAssembler gone(ref);
  EXPECT_EQ(gone.add(redis::Reply{}), redis::ChunkAssembler::Verdict::kMissing);
  EXPECT_EQ(gone.finish().status().code(), Status::Code::kNotFound);
}

}  // namespace
}  // namespace megacache::store
