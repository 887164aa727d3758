// Redis store tests against a real redis-server that each test starts on 127.0.0.1 with a
// free port (the test command installs redis-server).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "megacache/store.h"
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
  ASSERT_TRUE(store->put("big", std::string(64 << 20, 'z')).ok());
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

}  // namespace
}  // namespace megacache::store
