#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "megacache/populate.h"
#include "test_util.h"
#include "util/file_system.h"

namespace megacache {
namespace {

using mega_cache::MegaCache;
using test::make_blob;
using test::read_tree;

// The result views into `blob`, which must outlive it.
MegaCache parsed(const std::string& blob) {
  Result<MegaCache> cache = mega_cache::parse(blob);
  EXPECT_TRUE(cache.ok()) << cache.status().to_string();
  return std::move(cache).value();
}

TEST(Populate, WritesEachTypeWhereTorchDoes) {
  const std::string blob = test::small_blob();
  const MegaCache cache = parsed(blob);
  test::TempDir dir;
  Result<PopulateReport> report = populate(cache, dir.path());
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  const std::map<std::string, std::string> expected = {
      {"fxgraph/ab/fabcdefghijklmnop/" + util::torch_sha256_name("graph v2"), "graph v2"},
      {"fxgraph/zy/fzyxwvu/" + util::torch_sha256_name("second graph"), "second graph"},
      {"ab/0123456789abcdef.best_config", R"({"XBLOCK": 64, "num_warps": 4})"},
      {"aotautograd/aqrstuvwxyz/" + util::torch_sha256_name("aot pickle"), "aot pickle"},
      {"dynamo/code_state_job_0_.pkl", "pgo pickle"},
      {"dynamo/" + std::string(64, 'e') + "/entry", "precompile entry"},
  };
  EXPECT_EQ(read_tree(dir.path()), expected);
  EXPECT_EQ(report->files_written, expected.size());
  EXPECT_EQ(report->info.count("inductor"), 2u);  // the dropped first group is not counted
}

TEST(Populate, HandsRegisteredTypesToTheCallerAndWritesTheRest) {
  const std::string blob = make_blob({{"custom", {{"k1", "first"}}},
                                      {"inductor", {{"fgood", "x"}}},
                                      {"custom", {{"k2", "second"}}}});
  const MegaCache cache = parsed(blob);
  test::TempDir dir;
  PopulateOptions options;
  options.caller_populated_types = {"inductor", "custom"};  // torch's factory lists every type
  Result<PopulateReport> report = populate(cache, dir.path(), options);
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  // torch loads the last group of each type; the caller's come back in that order, copied.
  ASSERT_EQ(report->caller_populated.size(), 1u);
  EXPECT_EQ(report->caller_populated[0].type, "custom");
  EXPECT_EQ(report->caller_populated[0].key, "k2");
  EXPECT_EQ(report->caller_populated[0].content, "second");
  EXPECT_EQ(report->info.count("custom"), 1u);
  EXPECT_EQ(read_tree(dir.path()).size(), 1u);  // the inductor artifact, written natively

  options.caller_populated_types = {"other"};
  Result<PopulateReport> refused = populate(cache, dir.path(), options);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("unknown artifact type 'custom' (known here: inductor, "
                                            "autotune, aot_autograd, pgo, precompile, other)"),
            std::string::npos)
      << refused.status().to_string();
}

TEST(Populate, IsIdempotentAndRepairsChangedFiles) {
  const std::string blob = test::small_blob();
  const MegaCache cache = parsed(blob);
  test::TempDir dir;
  ASSERT_TRUE(populate(cache, dir.path()).ok());
  const auto first = read_tree(dir.path());

  Result<PopulateReport> again = populate(cache, dir.path());
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->files_written, 0u);
  EXPECT_EQ(again->files_unchanged, first.size());

  // Same size, other bytes: a non-content-addressed file is compared and rewritten.
  const std::string autotune = dir.path() + "/ab/0123456789abcdef.best_config";
  std::string damaged = first.at("ab/0123456789abcdef.best_config");
  damaged[2] = 'Y';
  ASSERT_TRUE(test::write_file(autotune, damaged).ok());
  Result<PopulateReport> repaired = populate(cache, dir.path());
  ASSERT_TRUE(repaired.ok());
  EXPECT_EQ(repaired->files_written, 1u);
  EXPECT_EQ(read_tree(dir.path()), first);
}

TEST(Populate, RewritesPgoMastKeysToTheLoadingJob) {
  const std::string blob = make_blob({{"pgo", {{"mast:oldjob:3:0:tag", "state"}}}});
  const MegaCache cache = parsed(blob);
  test::TempDir dir;
  int calls = 0;
  PopulateOptions options;
  options.pgo_cache_key = [&] {
    ++calls;
    return std::string("mast:newjob:7:0:tag");
  };
  ASSERT_TRUE(populate(cache, dir.path(), options).ok());
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(
      read_tree(dir.path()),
      (std::map<std::string, std::string>{{"dynamo/code_state_mast_newjob_7_0_tag.pkl", "state"}}));
}

TEST(Populate, AnIoErrorStopsWithWholeFilesAndNoTempFiles) {
  const std::string blob = test::small_blob();
  const MegaCache cache = parsed(blob);
  test::TempDir dir;
  test::FailingFileSystem fs(2);
  Result<PopulateReport> report = populate(cache, dir.path(), {}, fs);
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), Status::Code::kIOError);
  const auto tree = read_tree(dir.path());
  EXPECT_EQ(tree.size(), 2u);
  for (const auto& [path, content] : tree) {
    EXPECT_EQ(path.find("/."), std::string::npos) << "temp file left: " << path;
  }
  // A later populate completes the job.
  ASSERT_TRUE(populate(cache, dir.path()).ok());
  EXPECT_EQ(read_tree(dir.path()).size(), 6u);
}

TEST(Populate, ConcurrentThreadsAndProcessesOnOneDirAgree) {
  const std::string blob = test::read_test_file("mega_graphbreak.bin");
  const MegaCache cache = parsed(blob);
  test::TempDir reference;
  ASSERT_TRUE(populate(cache, reference.path()).ok());
  const auto expected = read_tree(reference.path());

  test::TempDir dir;
  std::vector<pid_t> children;
  for (int p = 0; p < 4; ++p) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      bool ok = true;
      for (int round = 0; round < 5; ++round) ok = ok && populate(cache, dir.path()).ok();
      ::_exit(ok ? 0 : 1);
    }
    children.push_back(pid);
  }
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int round = 0; round < 5; ++round) {
        if (!populate(cache, dir.path()).ok()) ++failures;
        // Readers in the middle never see a partial file.
        for (const auto& [path, content] : read_tree(dir.path())) {
          if (path.find("/.") == std::string::npos && expected.count(path) &&
              content != expected.at(path)) {
            ++failures;
          }
        }
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (pid_t pid : children) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(read_tree(dir.path()), expected);
}

TEST(Populate, PgoKeyIsOnlyAskedForWhenAMastKeyIsPresent) {
  const std::string blob = test::small_blob();  // pgo key "job:0:", not mast
  const MegaCache cache = parsed(blob);
  test::TempDir dir;
  PopulateOptions options;
  options.pgo_cache_key = []() -> std::string {
    ADD_FAILURE() << "asked for the PGO key without a mast: key";
    return "";
  };
  ASSERT_TRUE(populate(cache, dir.path(), options).ok());
}

TEST(Populate, EmptyCacheDirIsRefused) {
  const std::string blob = test::small_blob();
  const MegaCache cache = parsed(blob);
  EXPECT_EQ(populate(cache, "").status().code(), Status::Code::kInvalidArgument);
}

}  // namespace
}  // namespace megacache
