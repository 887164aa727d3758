#include <gtest/gtest.h>

#include "megacache/mega_cache.h"
#include "test_util.h"

namespace megacache::mega_cache {
namespace {

using test::make_blob;
using test::read_test_file;

std::vector<std::string> loaded_keys(const MegaCache& cache) {
  std::vector<std::string> out;
  for (const Artifact* a : cache.loaded_artifacts()) out.push_back(a->type + ":" + a->key);
  return out;
}

TEST(MegaCache, ParsesTorchFixturesAndWritesThemBackByteForByte) {
  for (const std::string& name : test::fixture_names()) {
    const std::string blob = read_test_file(name);
    ASSERT_GT(blob.size(), 1000u) << name;
    Result<MegaCache> cache = parse(blob);
    ASSERT_TRUE(cache.ok()) << name << ": " << cache.status().to_string();
    EXPECT_EQ(cache->layout, Layout::kV2_8);
    EXPECT_EQ(write(cache->loaded_artifacts()), blob) << name;
  }
}

TEST(MegaCache, RoundTripsEverySharedFixture) {
  const std::filesystem::path folder = MEGACACHE_SHARED_FIXTURES;
  if (!std::filesystem::is_directory(folder)) GTEST_SKIP() << folder << " is not here";
  size_t checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    if (entry.path().extension() != ".bin") continue;
    std::ifstream in(entry.path(), std::ios::binary);
    const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    Result<MegaCache> cache = parse(blob);
    ASSERT_TRUE(cache.ok()) << entry.path() << ": " << cache.status().to_string();
    EXPECT_EQ(write(cache->loaded_artifacts()), blob) << entry.path();
    ++checked;
  }
  EXPECT_GE(checked, 4u);
}

TEST(MegaCache, FixtureGroupsMatchTheirReadme) {
  Result<MegaCache> cache = parse(read_test_file("mega_graphbreak.bin"));
  ASSERT_TRUE(cache.ok());
  ASSERT_EQ(cache->groups.size(), 3u);
  EXPECT_EQ(cache->groups[0].type, "inductor");
  EXPECT_EQ(cache->groups[0].artifacts.size(), 2u);
  EXPECT_EQ(cache->groups[0].offset, 12u);
  EXPECT_EQ(cache->groups[1].type, "aot_autograd");
  EXPECT_EQ(cache->groups[1].artifacts.size(), 2u);
  EXPECT_EQ(cache->groups[2].type, "autotune");
  EXPECT_EQ(cache->groups[2].artifacts.size(), 1u);
}

TEST(MegaCache, LastGroupPerTypeWinsInFirstAppearanceOrder) {
  const std::string blob = make_blob({{"inductor", {{"fa", "1"}, {"fb", "2"}}},
                                      {"autotune", {{"x/y", "{}"}}},
                                      {"inductor", {{"fc", "3"}}},
                                      {"aot_autograd", {{"aa", "4"}}}});
  Result<MegaCache> cache = parse(blob);
  ASSERT_TRUE(cache.ok()) << cache.status().to_string();
  ASSERT_EQ(cache->groups.size(), 4u);
  EXPECT_TRUE(cache->groups[0].dropped_by_torch);
  EXPECT_FALSE(cache->groups[2].dropped_by_torch);
  EXPECT_EQ(loaded_keys(*cache),
            (std::vector<std::string>{"inductor:fc", "autotune:x/y", "aot_autograd:aa"}));

  // Written back, each type appears once and the blob parses to the same loaded set.
  const std::string rewritten = write(cache->loaded_artifacts());
  Result<MegaCache> again = parse(rewritten);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->groups.size(), 3u);
  EXPECT_EQ(loaded_keys(*again), loaded_keys(*cache));
}

TEST(MegaCache, WriterMatchesTorchLayoutBytes) {
  const std::string blob = make_blob({{"inductor", {{"k", "v"}}}});
  const std::string body =
      std::string("\0\0\0\0\0\0\0\1", 8) + std::string("\0\0\0\0\0\0\0\x0c", 8) +
      "aW5kdWN0b3I=" + std::string("\0\0\0\0\0\0\0\1", 8) + std::string("\0\0\0\0\0\0\0\x04", 8) +
      "aw==" + std::string("\0\0\0\0\0\0\0\1", 8) + "v";
  EXPECT_EQ(blob.substr(4), body);
  EXPECT_EQ(util::load_u32_be(blob), util::crc32(body));
}

TEST(MegaCache, WriterCrcStaysValidAcrossAppends) {
  Writer writer;
  writer.append_group("inductor", {{"inductor", "a", "1"}});
  const std::string first(writer.bytes());
  writer.append_group("autotune", {{"autotune", "b/c", "2"}});
  const std::string second(writer.bytes());
  EXPECT_EQ(second.substr(4, first.size() - 4), first.substr(4));
  EXPECT_TRUE(parse(first).ok());
  EXPECT_TRUE(parse(second).ok());
  EXPECT_EQ(second, make_blob({{"inductor", {{"a", "1"}}}, {"autotune", {{"b/c", "2"}}}}));
}

TEST(MegaCache, EmptyBodyIsAValidEmptyCache) {
  const std::string blob = make_blob({});
  Result<MegaCache> cache = parse(blob);
  ASSERT_TRUE(cache.ok());
  EXPECT_TRUE(cache->groups.empty());
}

std::string v27_record(uint64_t type, const std::string& key, const std::string& content) {
  std::string out;
  util::append_u64_be(out, type);
  util::append_u64_be(out, key.size());
  out += key;
  util::append_u64_be(out, content.size());
  out += content;
  return out;
}

TEST(MegaCache, ParsesTorch27Layout) {
  std::string blob;
  util::append_u64_be(blob, 1);
  blob += v27_record(0, "fgraph", "pickle-a") + v27_record(0, "fother", "pickle-b") +
          v27_record(2, "aentry", "pickle-c") + v27_record(1, "ab/cd.best_config", "{}");
  EXPECT_EQ(sniff(blob), FileFormat::kMegaCache2_7);
  Result<MegaCache> cache = parse(blob);
  ASSERT_TRUE(cache.ok()) << cache.status().to_string();
  EXPECT_EQ(cache->layout, Layout::kV2_7);
  ASSERT_EQ(cache->groups.size(), 3u);
  EXPECT_EQ(loaded_keys(*cache),
            (std::vector<std::string>{"inductor:fgraph", "inductor:fother", "aot_autograd:aentry",
                                      "autotune:ab/cd.best_config"}));
  EXPECT_EQ(cache->groups[1].artifacts[0].content, "pickle-c");
}

TEST(MegaCache, Rejects27UnknownEnum) {
  std::string blob;
  util::append_u64_be(blob, 1);
  blob += v27_record(7, "k", "v");
  Result<MegaCache> cache = parse(blob);
  ASSERT_FALSE(cache.ok());
  EXPECT_EQ(cache.status().offset(), 8u);
  EXPECT_NE(cache.status().message().find("unknown torch 2.7 artifact type 7"), std::string::npos);
}

std::string standalone_file(const std::vector<std::string>& fields_after_crc) {
  std::string body;
  for (const std::string& field : fields_after_crc) {
    util::append_u64_be(body, field.size());
    body += field;
  }
  std::string file(4, '\0');
  util::store_u32_be(file.data(), util::crc32(body));
  return file + body;
}

TEST(Standalone, ParsesCacheCompiledArtifact) {
  const std::string blob = make_blob({{"aot_autograd", {{"akey", "x"}}}});
  const std::string torch_key(32, '\x11');
  const std::string file =
      standalone_file({"CacheCompiledArtifact", torch_key, util::base64_encode("akey"), blob});
  EXPECT_EQ(sniff(file), FileFormat::kStandalone);
  Result<StandaloneArtifact> artifact = parse_standalone(file);
  ASSERT_TRUE(artifact.ok()) << artifact.status().to_string();
  EXPECT_EQ(artifact->kind, StandaloneKind::kCacheCompiledArtifact);
  EXPECT_EQ(artifact->torch_key, torch_key);
  EXPECT_EQ(artifact->aot_autograd_key, "akey");
  EXPECT_EQ(artifact->payload, blob);
}

// A real file from torch 2.13's standalone_compile(...).save(format="binary") on the CPU.
TEST(Standalone, ReadsAFileTorchWrote) {
  const std::string file = read_test_file("standalone_cpu_torch2.13.bin");
  Result<FileContents> contents = locate_mega_cache(file);
  ASSERT_TRUE(contents.ok()) << contents.status().to_string();
  ASSERT_TRUE(contents->standalone);
  EXPECT_EQ(contents->standalone->kind, StandaloneKind::kCacheCompiledArtifact);
  Result<MegaCache> cache = parse(contents->blob);
  ASSERT_TRUE(cache.ok()) << cache.status().to_string();
  std::vector<std::string> aot_keys;
  for (const Artifact* a : cache->loaded_artifacts()) {
    if (a->type == kAotAutograd) aot_keys.push_back(a->key);
  }
  EXPECT_EQ(aot_keys, std::vector<std::string>{contents->standalone->aot_autograd_key});
  EXPECT_EQ(write(cache->loaded_artifacts()), contents->blob);
}

TEST(Standalone, ParsesAotAndHeaderlessLayouts) {
  const std::string torch_key(32, '\x22');
  const std::string aot_file = standalone_file({"AOTCompiledArtifact", torch_key, "pickle"});
  Result<StandaloneArtifact> aot = parse_standalone(aot_file);  // views into aot_file
  ASSERT_TRUE(aot.ok()) << aot.status().to_string();
  EXPECT_EQ(aot->kind, StandaloneKind::kAOTCompiledArtifact);
  EXPECT_EQ(aot->payload, "pickle");

  const std::string blob = make_blob({{"aot_autograd", {{"k", "v"}}}});
  const std::string old_file = standalone_file({torch_key, util::base64_encode("k"), blob});
  Result<StandaloneArtifact> old = parse_standalone(old_file);
  ASSERT_TRUE(old.ok()) << old.status().to_string();
  EXPECT_EQ(old->kind, StandaloneKind::kHeaderless2_8);
  EXPECT_EQ(old->payload, blob);
}

TEST(Standalone, RejectsUnknownHeaderAndTrailingBytes) {
  EXPECT_FALSE(
      parse_standalone(standalone_file({"SomethingElse", std::string(32, 'k'), "x"})).ok());
  const std::string torch_key(32, '\x22');
  Result<StandaloneArtifact> trailing =
      parse_standalone(standalone_file({"AOTCompiledArtifact", torch_key, "pickle", "extra"}));
  ASSERT_FALSE(trailing.ok());
  EXPECT_NE(trailing.status().message().find("unexpected bytes"), std::string::npos);
}

}  // namespace
}  // namespace megacache::mega_cache
