#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <thread>

#include "megacache/store.h"
#include "store/backends.h"
#include "test_util.h"
#include "util/file_system.h"

namespace megacache::store {
namespace {

std::unique_ptr<Store> open_or_die(const std::string& url) {
  Result<std::unique_ptr<Store>> store = open(url);
  EXPECT_TRUE(store.ok()) << store.status().to_string();
  return std::move(store).value();
}

// Runs `body` in `n` forked processes; returns how many exited 0.
int run_processes(int n, const std::function<bool(int)>& body) {
  std::vector<pid_t> children;
  for (int i = 0; i < n; ++i) {
    const pid_t pid = ::fork();
    if (pid == 0) ::_exit(body(i) ? 0 : 1);
    children.push_back(pid);
  }
  int ok = 0;
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  return ok;
}

TEST(FileStore, RoundTripListRemoveAndStats) {
  test::TempDir dir;
  auto store = open_or_die("file://" + dir.path());
  EXPECT_FALSE(store->get("model-a"));
  ASSERT_TRUE(store->put("model-a", "bundle bytes").ok());
  ASSERT_TRUE(store->put("model-b", std::string(1000, 'b')).ok());
  EXPECT_EQ(store->get("model-a"), "bundle bytes");
  EXPECT_TRUE(store->contains("model-b"));
  const std::vector<EntryInfo> entries = store->list();
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[1].name, "model-b");
  EXPECT_EQ(entries[1].size, 1000u);
  ASSERT_TRUE(store->remove("model-a").ok());
  EXPECT_FALSE(store->get("model-a"));

  const Stats stats = open_or_die("file://" + dir.path())->stats();  // persistent
  EXPECT_EQ(stats.hits, 1u);
  EXPECT_EQ(stats.misses, 2u);
  EXPECT_EQ(stats.puts, 2u);
  EXPECT_EQ(stats.bytes_out, 1012u);
  store->zero_stats();
  EXPECT_EQ(store->stats().hits, 0u);
}

TEST(FileStore, SameContentIsStoredOnceAndOverwriteIsAtomic) {
  test::TempDir dir;
  auto store = open_or_die("file://" + dir.path());
  ASSERT_TRUE(store->put("a", "same").ok());
  ASSERT_TRUE(store->put("b", "same").ok());
  EXPECT_EQ(test::read_tree(dir.path() + "/v1/objects").size(), 1u);
  ASSERT_TRUE(store->put("a", "new").ok());
  EXPECT_EQ(store->get("a"), "new");
  EXPECT_EQ(store->get("b"), "same");
}

// A put that fails at any of its writes (the object, then the ref) leaves the name with its
// old value, or missing if it had none: never a ref to an object that is not there.
TEST(FileStore, APutThatFailsAtAnyWriteLeavesTheOldValue) {
  for (int allowed = 0;; ++allowed) {
    test::TempDir dir;
    const std::string url = "file://" + dir.path();
    auto store = open_or_die(url);
    ASSERT_TRUE(store->put("kept", "old value").ok());
    test::FailingFileSystem failing(allowed);
    Result<std::unique_ptr<Store>> faulty = open_file_store(url, dir.path(), {}, failing);
    ASSERT_TRUE(faulty.ok()) << faulty.status().to_string();
    const Status kept = (*faulty)->put("kept", "new value");
    const Status fresh = (*faulty)->put("fresh", "fresh value");
    EXPECT_EQ(store->get("kept"), kept.ok() ? "new value" : "old value") << "allowed " << allowed;
    EXPECT_EQ(store->get("fresh"),
              fresh.ok() ? std::optional<std::string>("fresh value") : std::nullopt)
        << "allowed " << allowed;
    for (const Status& s : {kept, fresh}) {
      if (!s.ok()) {
        EXPECT_EQ(s.code(), Status::Code::kIOError) << s.to_string();
      }
    }
    if (kept.ok() && fresh.ok()) {
      EXPECT_EQ(failing.writes(), 4) << "each put writes its object and its ref";
      break;
    }
  }
}

TEST(FileStore, DamagedObjectIsAMissNotACorruptHit) {
  test::TempDir dir;
  auto store = open_or_die("file://" + dir.path());
  ASSERT_TRUE(store->put("a", "original bytes").ok());
  for (const auto& [path, content] : test::read_tree(dir.path() + "/v1/objects")) {
    std::string damaged = content;
    damaged[0] ^= 1;
    ASSERT_TRUE(test::write_file(dir.path() + "/v1/objects/" + path, damaged).ok());
  }
  EXPECT_FALSE(store->get("a"));
  EXPECT_EQ(store->stats().errors, 1u);
}

TEST(FileStore, RefusesUnsafeNames) {
  test::TempDir dir;
  auto store = open_or_die("file://" + dir.path());
  for (const std::string& name : std::vector<std::string>{
           "../x", "a/b", "", ".hidden", std::string(201, 'a'), std::string("a\0b", 3)}) {
    EXPECT_EQ(store->put(name, "v").code(), Status::Code::kInvalidArgument) << name;
  }
  EXPECT_TRUE(test::read_tree(dir.path()).size() <= 1u);  // at most the stats file
}

TEST(FileStore, SizeLimitEvictsLeastRecentlyUsed) {
  test::TempDir dir;
  auto store = open_or_die("file://" + dir.path());
  ASSERT_TRUE(store->put("old", std::string(4000, 'o')).ok());
  ASSERT_TRUE(store->put("mid", std::string(4000, 'm')).ok());
  ASSERT_TRUE(store->put("new", std::string(4000, 'n')).ok());
  // Age the refs: "mid" was used last, "old" longest ago.
  const std::string refs = dir.path() + "/v1/refs/";
  const auto age = [&](const std::string& name, int seconds) {
    const timespec times[2] = {{::time(nullptr) - seconds, 0}, {::time(nullptr) - seconds, 0}};
    ::utimensat(AT_FDCWD, (refs + name).c_str(), times, 0);
  };
  age("old", 300);
  age("new", 200);
  age("mid", 100);
  Result<uint64_t> freed = store->gc(8500);
  ASSERT_TRUE(freed.ok());
  EXPECT_FALSE(store->contains("old"));
  EXPECT_TRUE(store->contains("mid"));
  EXPECT_TRUE(store->contains("new"));

  auto bounded = open_or_die("file://" + dir.path() + "?max_size=5K");
  ASSERT_TRUE(bounded->put("newest", std::string(4000, 'x')).ok());
  EXPECT_EQ(bounded->list().size(), 1u);
  EXPECT_EQ(bounded->get("newest"), std::string(4000, 'x'));
}

TEST(FileStore, SixteenProcessesReadAndWriteTheSameNames) {
  test::TempDir dir;
  const std::string url = "file://" + dir.path();
  const int ok = run_processes(16, [&](int process) {
    auto store = open(url);
    if (!store.ok()) return false;
    std::mt19937 rng(process);
    for (int round = 0; round < 40; ++round) {
      const std::string name = "shared-" + std::to_string(rng() % 3);
      // Every value names itself, so a torn read would show as a mismatch.
      const std::string tag = std::to_string(process) + ":" + std::to_string(round) + ":";
      const std::string value =
          tag + std::string(2000 + rng() % 5000, static_cast<char>('a' + process));
      if (!(*store)->put(name, value).ok()) return false;
      if (std::optional<std::string> read = (*store)->get(name)) {
        const size_t colon = read->find(':', read->find(':') + 1);
        const char fill = (*read)[read->size() - 1];
        if (colon == std::string::npos ||
            read->find_first_not_of(fill, colon + 1) != std::string::npos) {
          return false;
        }
      }
    }
    return true;
  });
  EXPECT_EQ(ok, 16);
}

TEST(FileStore, WriterKilledMidCommitLeavesNoVisiblePartialEntry) {
  test::TempDir dir;
  const std::string url = "file://" + dir.path();
  for (int attempt = 0; attempt < 5; ++attempt) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      auto store = open(url);
      for (int i = 0;; ++i) {
        (void)(*store)->put("big-" + std::to_string(i % 4),
                            std::string(8 << 20, static_cast<char>('a' + i % 26)));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(30 + 37 * attempt));
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
  auto store = open_or_die(url);
  for (const EntryInfo& entry : store->list()) {
    std::optional<std::string> value = store->get(entry.name);
    ASSERT_TRUE(value) << entry.name << " is listed but does not read back whole";
    EXPECT_EQ(value->size(), size_t{8} << 20);
    EXPECT_EQ(value->find_first_not_of((*value)[0]), std::string::npos);
  }
  EXPECT_EQ(store->stats().errors, 0u);
}

TEST(FileStore, SingleFlightAcrossEightProcessesProducesOnce) {
  test::TempDir dir;
  const std::string url = "file://" + dir.path();
  const std::string producers = dir.path() + "/producers";
  const int ok = run_processes(8, [&](int) {
    auto store = open(url);
    bool produced = false;
    Result<std::string> value = get_or_produce(
        **store, "compiled-model",
        [&]() -> Result<std::string> {
          std::this_thread::sleep_for(std::chrono::milliseconds(300));  // a compile
          FILE* f = std::fopen(producers.c_str(), "a");
          std::fputs("x", f);
          std::fclose(f);
          return std::string("artifacts");
        },
        std::chrono::seconds(20), &produced);
    return value.ok() && *value == "artifacts";
  });
  EXPECT_EQ(ok, 8);
  EXPECT_EQ(test::read_tree(dir.path()).at("producers"), "x");
}

TEST(TieredStore, BackfillsTheLocalStoreFromTheRemote) {
  test::TempDir local;
  test::TempDir remote;
  ASSERT_TRUE(open_or_die("file://" + remote.path())->put("m", "from remote").ok());
  auto tiered = open_or_die("file://" + local.path() + ",file://" + remote.path());
  EXPECT_EQ(tiered->get("m"), "from remote");
  EXPECT_EQ(open_or_die("file://" + local.path())->get("m"), "from remote");
  const auto stats = tiered->backend_stats();
  ASSERT_EQ(stats.size(), 2u);
  EXPECT_EQ(stats[0].second.misses, 1u);  // local missed, then was backfilled
  EXPECT_EQ(stats[1].second.hits, 1u);
}

TEST(StoreUrl, ParsesAndRefuses) {
  EXPECT_EQ(open("ftp://x").status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(open("file://relative/path").status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(open("file:///tmp/x?max_size=lots").status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(open("redis://:1/0").status().code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(*parse_size("10G"), uint64_t{10} << 30);
  EXPECT_EQ(*parse_size("512"), 512u);
  EXPECT_FALSE(parse_size("1.5G").ok());
}

// A size past 2^64 - 1 bytes is refused, not wrapped around into some smaller size that
// would then pass every later check.
TEST(StoreUrl, ParseSizeRefusesSizesThatOverflow) {
  for (const std::string text : {"99999999999T", "16777216T", "17179869184G",
                                 "18446744073709551616", "99999999999999999999999"}) {
    SCOPED_TRACE(text);
    Result<uint64_t> size = parse_size(text);
    ASSERT_FALSE(size.ok()) << "parsed as " << *size;
    EXPECT_EQ(size.status().code(), Status::Code::kInvalidArgument);
    EXPECT_NE(size.status().message().find(text), std::string::npos) << size.status().message();
  }
  // Up to the largest size there is, every size parses.
  const Result<uint64_t> largest_in_t = parse_size("16777215T");
  ASSERT_TRUE(largest_in_t.ok()) << largest_in_t.status().to_string();
  EXPECT_EQ(*largest_in_t, ((uint64_t{1} << 24) - 1) << 40);
  const Result<uint64_t> largest = parse_size("18446744073709551615");
  ASSERT_TRUE(largest.ok()) << largest.status().to_string();
  EXPECT_EQ(*largest, UINT64_MAX);
}

}  // namespace
}  // namespace megacache::store
