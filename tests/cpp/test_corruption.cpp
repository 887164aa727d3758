// Hostile and damaged input: parse never crashes, never returns a partial result, and
// populate writes nothing unless the whole input is valid.
#include <gtest/gtest.h>

#include <random>

#include "megacache/mega_cache.h"
#include "megacache/populate.h"
#include "test_util.h"

namespace megacache {
namespace {

using mega_cache::MegaCache;
using mega_cache::parse;
using test::make_blob;
using test::with_fixed_crc;

// Parses `blob` and, if that succeeds, populates an empty dir: either everything the blob
// loads is there or nothing is.
void expect_all_or_nothing(const std::string& blob, const std::string& what) {
  Result<MegaCache> cache = parse(blob);
  if (!cache.ok()) {
    ASSERT_EQ(cache.status().code(), Status::Code::kCorruption) << what;
    ASSERT_LE(cache.status().offset().value_or(0), blob.size()) << what;
    return;
  }
  test::TempDir dir;
  Result<PopulateReport> report = populate(*cache, dir.path());
  if (!report.ok()) {
    ASSERT_EQ(report.status().code(), Status::Code::kInvalidArgument) << what;
    EXPECT_TRUE(test::read_tree(dir.path()).empty()) << what << ": refused input left files";
    return;
  }
  EXPECT_EQ(report->files_written + report->files_unchanged, cache->loaded_artifacts().size());
}

TEST(Corruption, EveryTruncationOfTheSmallBlobFailsCleanly) {
  const std::string blob = test::small_blob();
  Result<MegaCache> whole = parse(blob);
  ASSERT_TRUE(whole.ok());
  // Cutting exactly between type groups leaves a shorter valid blob; anywhere else is damage.
  std::map<size_t, size_t> groups_before_boundary;
  for (size_t i = 0; i < whole->groups.size(); ++i) groups_before_boundary[whole->groups[i].offset] = i;
  for (size_t length = 0; length < blob.size(); ++length) {
    const std::string cut = blob.substr(0, length);
    EXPECT_FALSE(parse(cut).ok()) << "length " << length;
    // With a matching crc the structure parser must find the cut on its own.
    Result<MegaCache> fixed = parse(with_fixed_crc(cut));
    const auto boundary = groups_before_boundary.find(length);
    if (boundary != groups_before_boundary.end()) {
      ASSERT_TRUE(fixed.ok()) << "length " << length << ": " << fixed.status().to_string();
      EXPECT_EQ(fixed->groups.size(), boundary->second);
    } else {
      ASSERT_FALSE(fixed.ok()) << "length " << length;
      EXPECT_EQ(fixed.status().code(), Status::Code::kCorruption);
      EXPECT_LE(*fixed.status().offset(), length);
    }
  }
}

TEST(Corruption, EveryTruncationOfATorchFixtureFails) {
  const std::string blob = test::read_test_file("mega_mlp_infer.bin");
  for (size_t length = 0; length < blob.size(); length += 1 + length / 64) {
    Result<MegaCache> cache = parse(blob.substr(0, length));
    ASSERT_FALSE(cache.ok()) << "length " << length;
    EXPECT_EQ(cache.status().code(), Status::Code::kCorruption);
  }
}

TEST(Corruption, RandomByteFlipsNeverCrashOrPopulatePartially) {
  std::mt19937_64 rng(20261121);
  const std::vector<std::string> bases = {test::small_blob(),
                                          test::read_test_file("mega_graphbreak.bin")};
  for (const std::string& base : bases) {
    for (int round = 0; round < 200; ++round) {
      std::string damaged = base;
      // Damage the framing more often than payload: that is where parsers break.
      const size_t limit = round % 2 == 0 ? std::min<size_t>(damaged.size(), 400) : damaged.size();
      for (int flips = 1 + round % 3; flips > 0; --flips) {
        damaged[rng() % limit] ^= static_cast<char>(1 + rng() % 255);
      }
      EXPECT_FALSE(parse(damaged).ok()) << "round " << round << ": crc32 missed a flip";
      expect_all_or_nothing(with_fixed_crc(damaged), "round " + std::to_string(round));
    }
  }
}

TEST(Corruption, LengthPastTheEndReportsItsOffset) {
  std::string blob = make_blob({{"inductor", {{"fkey", "content"}}}});
  // Content length field sits right before the last 7 bytes ("content").
  const size_t length_at = blob.size() - 7 - 8;
  blob[length_at + 7] = 100;
  Result<MegaCache> cache = parse(with_fixed_crc(blob));
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().offset(), length_at);
  EXPECT_NE(cache.status().message().find("runs past the end"), std::string::npos)
      << cache.status().message();
}

TEST(Corruption, HugeCountIsRefusedBeforeAllocating) {
  std::string blob = make_blob({{"inductor", {{"fkey", "content"}}}});
  const size_t count_at = 12 + 8 + 12;  // crc+version, type length, "aW5kdWN0b3I="
  for (int i = 0; i < 8; ++i) blob[count_at + i] = '\x7f';
  Result<MegaCache> cache = parse(with_fixed_crc(blob));
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().offset(), count_at);
  EXPECT_NE(cache.status().message().find("cannot fit"), std::string::npos);
}

TEST(Corruption, CrcMismatchNamesBothValues) {
  std::string blob = test::read_test_file("mega_dynamic.bin");
  blob[blob.size() / 2] ^= 0x40;
  Result<MegaCache> cache = parse(blob);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().offset(), 0u);
  EXPECT_NE(cache.status().message().find("crc32 mismatch: stored 0x"), std::string::npos);
}

TEST(Corruption, WrongVersionIsReported) {
  std::string blob = make_blob({});
  blob[11] = 2;
  Result<MegaCache> cache = parse(with_fixed_crc(blob));
  ASSERT_FALSE(cache.ok());
  EXPECT_NE(cache.status().message().find("unsupported encoding version"), std::string::npos)
      << cache.status().to_string();
}

TEST(Corruption, UnknownTypeIsRefusedWhole) {
  const std::string blob = make_blob({{"inductor", {{"fgood", "x"}}}, {"mystery", {{"k", "v"}}}});
  Result<MegaCache> cache = parse(blob);
  ASSERT_TRUE(cache.ok());  // the framing is fine
  test::TempDir dir;
  Result<PopulateReport> report = populate(*cache, dir.path());
  ASSERT_FALSE(report.ok());
  EXPECT_NE(report.status().message().find("unknown artifact type 'mystery'"), std::string::npos);
  EXPECT_TRUE(test::read_tree(dir.path()).empty());
}

struct HostileCase {
  std::string type;
  std::string key;
  std::string expected;
};

TEST(Corruption, HostileKeysAreRefusedBeforeAnythingIsWritten) {
  const std::vector<HostileCase> cases = {
      {"autotune", "/etc/passwd", "absolute path"},
      {"autotune", "../../outside.best_config", "'..' segment"},
      {"autotune", "ab/../../x", "'..' segment"},
      {"autotune", "ab//x", "empty path segment"},
      {"autotune", "ab/x/", "empty path segment"},
      {"autotune", std::string("ab/x\0y", 6), "NUL"},
      {"autotune", "", "empty"},
      {"inductor", "../fx", "contains '/'"},
      {"inductor", "x..", "directory name that has a '..' segment"},
      {"inductor", "..", "'..' segment"},
      {"aot_autograd", "a/../../b", "contains '/'"},
      {"aot_autograd", "", "empty path segment"},
      {"precompile", "..", "'..' segment"},
      {"precompile", "a\nb", "control character"},
      {"inductor", std::string(300, 'f'), "limit"},
      {"pgo", std::string("job\0", 4), "NUL"},
  };
  for (const HostileCase& c : cases) {
    // A good artifact first: it must not be written either.
    const std::string blob =
        make_blob({{"inductor", {{"fgood", "fine"}}}, {c.type, {{c.key, "payload"}}}});
    Result<MegaCache> cache = parse(blob);
    ASSERT_TRUE(cache.ok()) << c.key;
    test::TempDir dir;
    Result<PopulateReport> report = populate(*cache, dir.path());
    ASSERT_FALSE(report.ok()) << c.type << " key " << c.key;
    EXPECT_EQ(report.status().code(), Status::Code::kInvalidArgument);
    EXPECT_NE(report.status().message().find(c.expected), std::string::npos)
        << report.status().message();
    EXPECT_TRUE(test::read_tree(dir.path()).empty()) << c.key;
  }
}

TEST(Corruption, HostileKeyInADroppedGroupIsStillRefused) {
  const std::string blob =
      make_blob({{"autotune", {{"../escape", "x"}}}, {"autotune", {{"ab/ok.best_config", "{}"}}}});
  Result<MegaCache> cache = parse(blob);
  ASSERT_TRUE(cache.ok());
  EXPECT_FALSE(plan_populate(*cache).ok());
}

TEST(Corruption, InvalidUtf8KeyIsCorruption) {
  std::string blob = make_blob({{"inductor", {{"fk", "v"}}}});
  // Replace the key's base64 "Zms=" ("fk") with "/w==" (0xff).
  const size_t at = blob.find("Zms=");
  ASSERT_NE(at, std::string::npos);
  blob.replace(at, 4, "/w==");
  Result<MegaCache> cache = parse(with_fixed_crc(blob));
  ASSERT_FALSE(cache.ok());
  EXPECT_NE(cache.status().message().find("UTF-8"), std::string::npos);
}

}  // namespace
}  // namespace megacache
