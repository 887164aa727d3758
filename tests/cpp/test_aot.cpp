// torch.compiler.precompile pairs as bundles (docs/aot-format.md).
#include <gtest/gtest.h>

#include <cstdlib>

#include "megacache/aot.h"
#include "megacache/open.h"
#include "test_util.h"
#include "util/hash.h"

namespace megacache::aot {
namespace {

const char kCode[] =
    "BACKEND = 'inductor'\n"
    "def forward(model, x):\n"
    "    return model(x) * 2\n";

Pair sample_pair() {
  Pair pair;
  pair.api = "torch.compiler.precompile.capture";
  pair.python_code = kCode;
  pair.cache = std::string("PK\x03\x04 torch.save envelope\0bytes", 31);
  pair.cache_fields = {{"format", "torch.compiler.precompile"},
                       {"version", "1"},
                       {"backend", "inductor"},
                       {"tracer", "make_fx"},
                       {"code_hash", util::sha256_hex(kCode)}};
  return pair;
}

const bundle::Fingerprint kFingerprint = {{"python", "3.11.7"}, {"torch", "2.15.0+cu132"}};

Result<Pair> reread(const std::string& file) {
  Result<bundle::Bundle> parsed = bundle::parse(file);
  if (!parsed.ok()) return parsed.status();
  return read_pair(*parsed);
}

TEST(AotPair, RoundTripsBothHalvesByteForByte) {
  Result<std::string> file = write_pair(sample_pair(), kFingerprint);
  ASSERT_TRUE(file.ok()) << file.status().to_string();
  Result<Pair> read = reread(*file);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(read->api, "torch.compiler.precompile.capture");
  EXPECT_EQ(read->python_code, kCode);
  EXPECT_EQ(read->cache, sample_pair().cache);
  EXPECT_EQ(read->cache_fields, sample_pair().cache_fields);
  EXPECT_EQ(read->fingerprint, kFingerprint);

  Result<OpenedFile> opened = open_file(*file, {});
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  EXPECT_EQ(opened->kind, FileKind::kAotPair);
  EXPECT_EQ(opened->artifacts(), nullptr);
  Result<size_t> verified = verify_file(*file, {});
  ASSERT_TRUE(verified.ok()) << verified.status().to_string();
  EXPECT_EQ(*verified, 0u);
  EXPECT_TRUE(open_loadable(*file, {}).ok());
  Result<OpenedFile> as_artifacts = open_artifacts(*file, {});
  ASSERT_FALSE(as_artifacts.ok());
  EXPECT_NE(as_artifacts.status().message().find("megacache.load_precompiled"), std::string::npos);
}

TEST(AotPair, RefusesHalvesFromDifferentCalls) {
  Pair mismatched = sample_pair();
  mismatched.python_code += "import os; os.system('id')\n";
  Result<std::string> file = write_pair(mismatched, kFingerprint);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(file.status().message().find("different precompile calls"), std::string::npos)
      << file.status().message();
}

TEST(AotPair, RefusesWhatIsNotAPairOfTorchs) {
  Pair no_api = sample_pair();
  no_api.api = "torch.export";
  EXPECT_FALSE(write_pair(no_api, kFingerprint).ok());
  Pair not_utf8 = sample_pair();
  not_utf8.python_code = "\xff\xfe";
  not_utf8.cache_fields.back().second = util::sha256_hex(not_utf8.python_code);
  EXPECT_FALSE(write_pair(not_utf8, kFingerprint).ok());
  Pair no_hash = sample_pair();
  no_hash.cache_fields.pop_back();
  Result<std::string> refused = write_pair(no_hash, kFingerprint);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("'code_hash'"), std::string::npos);
  Pair empty_cache = sample_pair();
  empty_cache.cache.clear();
  EXPECT_FALSE(write_pair(empty_cache, kFingerprint).ok());
}

TEST(AotPair, AnEditedHalfNeverReadsBack) {
  // Every byte of the payloads flipped in turn: the pair is refused, or (a zstd frame-header
  // bit that does not change what the frame decodes to) reads back exactly as written.
  Result<std::string> file = write_pair(sample_pair(), kFingerprint);
  ASSERT_TRUE(file.ok());
  Result<bundle::Bundle> parsed = bundle::parse(*file);
  ASSERT_TRUE(parsed.ok());
  const size_t payloads = static_cast<size_t>(parsed->payloads.data() - file->data());
  size_t refused = 0;
  for (size_t i = payloads; i < file->size(); ++i) {
    std::string edited = *file;
    edited[i] = static_cast<char>(edited[i] ^ 0x20);
    Result<Pair> read = reread(edited);
    if (!read.ok()) {
      ++refused;
      continue;
    }
    EXPECT_EQ(read->python_code, kCode) << "a flipped byte at " << i << " changed the code";
    EXPECT_EQ(read->cache, sample_pair().cache)
        << "a flipped byte at " << i << " changed the cache";
  }
  EXPECT_GT(refused, (file->size() - payloads) * 9 / 10);
}

TEST(AotPair, EveryTruncationFails) {
  Result<std::string> file = write_pair(sample_pair(), kFingerprint);
  ASSERT_TRUE(file.ok());
  for (size_t n = 0; n < file->size(); ++n) {
    EXPECT_FALSE(reread(file->substr(0, n)).ok()) << "truncated to " << n << " bytes";
  }
}

TEST(AotPair, TrustPolicyAppliesAsToEveryBundle) {
  const bundle::SigningKey key = bundle::SigningKey::generate();
  const bundle::SigningKey other = bundle::SigningKey::generate();
  Result<std::string> unsigned_file = write_pair(sample_pair(), kFingerprint);
  Result<std::string> signed_file = write_pair(sample_pair(), kFingerprint, {3, &key});
  ASSERT_TRUE(unsigned_file.ok() && signed_file.ok());
  EXPECT_TRUE(open_file(*signed_file, {key.public_key}).ok());
  EXPECT_EQ(open_file(*unsigned_file, {key.public_key}).status().code(),
            Status::Code::kInvalidArgument);
  EXPECT_EQ(open_file(*signed_file, {other.public_key}).status().code(),
            Status::Code::kInvalidArgument);
}

TEST(AotPairGolden, ReadsAndReproducesTheGoldenFile) {
  const std::string path = std::string(MEGACACHE_TEST_DATA) + "/aot_pair_v1.mcb";
  Result<std::string> written = write_pair(sample_pair(), kFingerprint);
  ASSERT_TRUE(written.ok());
  if (const char* regenerate = std::getenv("MEGACACHE_REGENERATE_GOLDEN");
      regenerate != nullptr && std::string(regenerate) == "1") {
    ASSERT_TRUE(test::write_file(path, *written).ok());
  }
  const std::string file = test::read_test_file("aot_pair_v1.mcb");
  ASSERT_FALSE(file.empty()) << path << " is missing";
  Result<Pair> read = reread(file);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(read->python_code, kCode);
  EXPECT_EQ(read->cache_fields, sample_pair().cache_fields);
  EXPECT_TRUE(*written == file)
      << "write_pair no longer reproduces " << path
      << "; if the change is deliberate, run with MEGACACHE_REGENERATE_GOLDEN=1";
}

}  // namespace
}  // namespace megacache::aot
