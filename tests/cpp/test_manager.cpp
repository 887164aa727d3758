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
  EXPECT_TRUE(manager.record("inductor", "fa", "two"));  // same key, other content
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

// Like torch's appending serializer: later calls append groups for what is new.
TEST(ArtifactManager, IncrementalSerializeAppendsOnlyNewGroups) {
  ArtifactManager manager;
  manager.record("inductor", "f1", "a");
  manager.record("autotune", "ab/c.best_config", "{}");
  const std::string first(manager.serialize());
  EXPECT_FALSE(manager.need_serialize());
  EXPECT_EQ(std::string(manager.serialize()), first);  // nothing new, same bytes

  manager.record("inductor", "f2", "b");
  manager.record("precompile", "p", "entry");
  EXPECT_TRUE(manager.need_serialize());
  const std::string second(manager.serialize());
  EXPECT_EQ(second, test::make_blob({{"inductor", {{"f1", "a"}}},
                                     {"autotune", {{"ab/c.best_config", "{}"}}},
                                     {"inductor", {{"f2", "b"}}},
                                     {"precompile", {{"p", "entry"}}}}));
  EXPECT_EQ(manager.cache_info().count("inductor"), 2u);
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
