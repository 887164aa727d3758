#include <gtest/gtest.h>

#include "megacache/manager.h"
#include "test_util.h"

namespace megacache {
namespace {

TEST(ArtifactManager, EmptyManagerSerializesToNothing) {
  ArtifactManager manager;
  EXPECT_FALSE(manager.need_serialize());
  EXPECT_TRUE(manager.serialize().empty());
}

TEST(ArtifactManager, IgnoresExactRepeatsButNotNewContent) {
  ArtifactManager manager;
  EXPECT_TRUE(manager.record("inductor", "fa", "one"));
  EXPECT_FALSE(manager.record("inductor", "fa", "one"));
  EXPECT_TRUE(manager.record("inductor", "fa", "two"));      // same key, other content
  EXPECT_TRUE(manager.record("aot_autograd", "fa", "one"));  // same key, other type
  manager.serialize();
  EXPECT_FALSE(manager.record("inductor", "fa", "one"));  // still seen after serialize
  EXPECT_FALSE(manager.need_serialize());
  EXPECT_EQ(manager.cache_info().count("inductor"), 2u);
  EXPECT_EQ(manager.cache_info().count("aot_autograd"), 1u);
}

TEST(ArtifactManager, SerializeGroupsByTypeInFirstRecordOrder) {
  ArtifactManager manager;
  manager.record("inductor", "f1", "a");
  manager.record("autotune", "ab/c.best_config", "{}");
  manager.record("inductor", "f2", "b");
  const std::string blob(manager.serialize());
  EXPECT_EQ(blob, test::make_blob({{"inductor", {{"f1", "a"}, {"f2", "b"}}},
                                   {"autotune", {{"ab/c.best_config", "{}"}}}}));
  ASSERT_EQ(manager.cache_info().entries().size(), 2u);
  EXPECT_EQ(manager.cache_info().entries()[0].first, "inductor");
  EXPECT_EQ(manager.cache_info().entries()[0].second, (std::vector<std::string>{"f1", "f2"}));
}

// Types new to the blob are appended: the cost of a later save is what is new.
TEST(ArtifactManager, IncrementalSerializeAppendsNewTypes) {
  ArtifactManager manager;
  manager.record("inductor", "f1", "a");
  manager.record("autotune", "ab/c.best_config", "{}");
  const std::string first(manager.serialize());
  EXPECT_FALSE(manager.need_serialize());
  EXPECT_EQ(std::string(manager.serialize()), first);  // nothing new, same bytes

  manager.record("precompile", "p", "entry");
  EXPECT_TRUE(manager.need_serialize());
  const std::string second(manager.serialize());
  EXPECT_EQ(second.substr(4, first.size() - 4), first.substr(4));  // after the crc: appended
  EXPECT_EQ(second, test::make_blob({{"inductor", {{"f1", "a"}}},
                                     {"autotune", {{"ab/c.best_config", "{}"}}},
                                     {"precompile", {{"p", "entry"}}}}));
}

// A function that compiles again after a save (a second sequence length) records more
// artifacts of the same types. torch's loader keeps only the last group of each type, so a
// second group would drop every graph saved before it: the blob keeps one group per type.
TEST(ArtifactManager, ATypeRecordedAgainAfterASaveStaysOneGroup) {
  ArtifactManager manager;
  manager.record("inductor", "f1", "a");
  manager.record("autotune", "ab/c.best_config", "{}");
  manager.serialize();
  manager.record("inductor", "f2", "b");
  manager.record("precompile", "p", "entry");
  manager.record("inductor", "f1", "a2");  // the same key again, with other content: last
  const std::string blob(manager.serialize());
  EXPECT_EQ(blob, test::make_blob({{"inductor", {{"f1", "a"}, {"f2", "b"}, {"f1", "a2"}}},
                                   {"autotune", {{"ab/c.best_config", "{}"}}},
                                   {"precompile", {{"p", "entry"}}}}));
  Result<mega_cache::MegaCache> cache = mega_cache::parse(blob);
  ASSERT_TRUE(cache.ok());
  EXPECT_EQ(cache->loaded_artifacts().size(), 5u);  // torch's rule drops nothing
  EXPECT_EQ(manager.cache_info().count("inductor"), 3u);

  manager.record("autotune", "de/f.best_config", "{}");  // rewritten blobs keep growing
  EXPECT_EQ(std::string(manager.serialize()),
            test::make_blob({{"inductor", {{"f1", "a"}, {"f2", "b"}, {"f1", "a2"}}},
                             {"autotune", {{"ab/c.best_config", "{}"}, {"de/f.best_config", "{}"}}},
                             {"precompile", {{"p", "entry"}}}}));
  EXPECT_FALSE(manager.record("inductor", "f2", "b"));  // still a repeat after the rewrite
}

TEST(ArtifactManager, RecordBlobKeepsWhatTorchWouldLoad) {
  // Two inductor groups: torch's loader keeps only the last one, and so does record_blob.
  const std::string loaded = test::make_blob({{"inductor", {{"old", "x"}}},
                                              {"autotune", {{"ab/c.best_config", "{}"}}},
                                              {"inductor", {{"f1", "a"}}}});
  ArtifactManager manager;
  ASSERT_TRUE(manager.record_blob(loaded).ok());
  EXPECT_FALSE(manager.record("inductor", "f1", "a"));  // torch records it again on a hit
  manager.record("inductor", "f2", "b");
  EXPECT_EQ(std::string(manager.serialize()),
            test::make_blob({{"inductor", {{"f1", "a"}, {"f2", "b"}}},
                             {"autotune", {{"ab/c.best_config", "{}"}}}}));

  ArtifactManager untouched;
  const Status corrupt = untouched.record_blob(loaded.substr(0, loaded.size() - 3));
  EXPECT_EQ(corrupt.code(), Status::Code::kCorruption) << corrupt.to_string();
  EXPECT_FALSE(untouched.need_serialize());
}

TEST(ArtifactManager, ClearForgetsEverything) {
  ArtifactManager manager;
  manager.record("inductor", "f1", "a");
  manager.serialize();
  manager.clear();
  EXPECT_TRUE(manager.cache_info().empty());
  EXPECT_TRUE(manager.serialize().empty());
  EXPECT_TRUE(manager.record("inductor", "f1", "a"));  // no longer a repeat
  EXPECT_EQ(std::string(manager.serialize()), test::make_blob({{"inductor", {{"f1", "a"}}}}));
}

TEST(ArtifactManager, ReproducesATorchFixture) {
  const std::string blob = test::read_test_file("mega_mlp_infer.bin");
  Result<mega_cache::MegaCache> cache = mega_cache::parse(blob);
  ASSERT_TRUE(cache.ok());
  ArtifactManager manager;
  for (const mega_cache::Artifact* artifact : cache->loaded_artifacts()) {
    manager.record(artifact->type, artifact->key, artifact->content);
  }
  EXPECT_EQ(std::string(manager.serialize()), blob);
}

}  // namespace
}  // namespace megacache
