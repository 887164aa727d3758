#include <gtest/gtest.h>
#include <sodium.h>

#include <cstring>
#include <random>

#include "megacache/bundle.h"
#include "megacache/populate.h"
#include "test_util.h"

namespace megacache::bundle {
namespace {

using mega_cache::MegaCache;

const Fingerprint kFingerprint = {{"python", "3.11.7"}, {"torch", "2.13.0+cpu"}};

MegaCache parsed(const std::string& blob) {
  Result<MegaCache> cache = mega_cache::parse(blob);
  EXPECT_TRUE(cache.ok()) << cache.status().to_string();
  return std::move(cache).value();
}

TEST(Bundle, ConvertsTorchFixturesLosslesslyAndSmaller) {
  for (const std::string& name : test::fixture_names()) {
    const std::string blob = test::read_test_file(name);
    const std::string file = write(parsed(blob), kFingerprint);
    EXPECT_LT(file.size() * 4, blob.size()) << name << ": " << file.size() << " of " << blob.size();
    Result<Bundle> bundle = parse(file);
    ASSERT_TRUE(bundle.ok()) << name << ": " << bundle.status().to_string();
    EXPECT_EQ(bundle->fingerprint, kFingerprint);
    Result<std::string> back = to_mega_cache(*bundle);
    ASSERT_TRUE(back.ok()) << back.status().to_string();
    EXPECT_EQ(*back, blob) << name;
  }
}

// A bundle written by megacache 0.1.0 from mega_mlp_infer.bin: later versions must read it.
TEST(Bundle, ReadsTheGoldenFile) {
  const std::string file = test::read_test_file("bundle_v1_mlp.mcb");
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok()) << bundle.status().to_string();
  EXPECT_EQ(bundle->entries.size(), 3u);
  EXPECT_EQ(*to_mega_cache(*bundle), test::read_test_file("mega_mlp_infer.bin"));
}

TEST(Bundle, KeepsRepeatedGroupsAndDeduplicatesPayloads) {
  const std::string payload(5000, 'p');
  const std::string blob = test::make_blob({{"inductor", {{"fa", payload}, {"fb", payload}}},
                                            {"autotune", {{"ab/c.best_config", "{}"}}},
                                            {"inductor", {{"fa", payload}}}});
  const std::string file = write(parsed(blob), kFingerprint, {.zstd_level = 1});
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  ASSERT_EQ(bundle->entries.size(), 4u);
  EXPECT_EQ(bundle->entries[0].offset, bundle->entries[1].offset);
  EXPECT_EQ(bundle->entries[0].offset, bundle->entries[3].offset);
  EXPECT_EQ(bundle->entries[3].group, 2u);
  EXPECT_EQ(*to_mega_cache(*bundle), blob);
  Result<Decoded> decoded = decode(*bundle);
  ASSERT_TRUE(decoded.ok());
  EXPECT_TRUE(decoded->cache.groups[0].dropped_by_torch);
  EXPECT_EQ(decoded->cache.loaded_artifacts().size(), 2u);
}

TEST(Bundle, ReadsOneArtifactAlone) {
  const std::string blob = test::small_blob();
  const std::string file = write(parsed(blob), kFingerprint);
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  EXPECT_EQ(bundle->entries[2].type, "aot_autograd");
  EXPECT_EQ(*bundle->read(2), "aot pickle");
}

TEST(Bundle, PopulatesTheSameTreeAsTheBlob) {
  const std::string blob = test::read_test_file("mega_graphbreak.bin");
  test::TempDir from_blob;
  test::TempDir from_bundle;
  ASSERT_TRUE(populate(parsed(blob), from_blob.path()).ok());
  const std::string file = write(parsed(blob), kFingerprint);  // parse() views into it
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  Result<Decoded> decoded = decode(*bundle);
  ASSERT_TRUE(decoded.ok()) << decoded.status().to_string();
  ASSERT_TRUE(populate(decoded->cache, from_bundle.path()).ok());
  EXPECT_EQ(test::read_tree(from_bundle.path()), test::read_tree(from_blob.path()));
}

TEST(Bundle, Torch27BlobConvertsToEquivalent28Groups) {
  std::string blob;
  util::append_u64_be(blob, 1);
  auto record = [&](uint64_t type, const std::string& key, const std::string& content) {
    util::append_u64_be(blob, type);
    util::append_u64_be(blob, key.size());
    blob += key;
    util::append_u64_be(blob, content.size());
    blob += content;
  };
  record(0, "fa", "1");
  record(1, "x/y", "{}");
  record(0, "fb", "2");
  const std::string file = write(parsed(blob), kFingerprint);
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  Result<Decoded> decoded = decode(*bundle);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(decoded->cache.loaded_artifacts().size(), 3u);  // 2.7 loads every record
}

TEST(Bundle, SignatureVerifiesAndDetectsTampering) {
  const SigningKey key = SigningKey::generate();
  const std::string file = write(parsed(test::small_blob()), kFingerprint, {.signing_key = &key});
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  EXPECT_EQ(check_signature(*bundle), SignatureCheck::kValid);
  EXPECT_TRUE(is_trusted(*bundle, {key.public_key}));
  EXPECT_FALSE(is_trusted(*bundle, {SigningKey::generate().public_key}));

  // Re-signing with another key, or editing the index and fixing the checksum, is caught.
  std::string tampered = file;
  const size_t at = tampered.find("aqrstuvwxyz");
  ASSERT_NE(at, std::string::npos);
  tampered[at] = 'b';
  Result<Bundle> edited = parse(tampered);
  ASSERT_FALSE(edited.ok());  // the trailing checksum first
  const size_t index_end = bundle->header_and_index.size();
  const uint64_t fixed = util::xxh3_64(std::string_view(tampered).substr(0, index_end));
  for (int i = 0; i < 8; ++i)
    tampered[tampered.size() - 1 - i] = static_cast<char>(fixed >> (8 * i));
  Result<Bundle> refixed = parse(tampered);
  ASSERT_TRUE(refixed.ok()) << refixed.status().to_string();
  EXPECT_EQ(check_signature(*refixed), SignatureCheck::kInvalid);
  EXPECT_FALSE(is_trusted(*refixed, {key.public_key}));

  const std::string unsigned_file = write(parsed(test::small_blob()), kFingerprint);
  EXPECT_EQ(check_signature(*parse(unsigned_file)), SignatureCheck::kUnsigned);
}

// The signature covers the payload bytes themselves: XXH3, which the index holds for each
// payload, is no cryptographic hash, so a signature over the index alone would let whoever
// finds a payload with the same XXH3-128 swap it in.
TEST(Bundle, TheSignatureCoversEveryPayloadByte) {
  const SigningKey key = SigningKey::generate();
  const std::string file = write(parsed(test::small_blob()), kFingerprint, {.signing_key = &key});
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  ASSERT_TRUE(bundle->signature->covers_payloads);
  // A payload byte changed, header, index and trailer untouched: the file still parses (the
  // trailer covers header and index), and the signature no longer verifies.
  std::string swapped = file;
  const size_t payload_at =
      static_cast<size_t>(bundle->payloads.data() - bundle->header_and_index.data());
  swapped[payload_at] = static_cast<char>(swapped[payload_at] ^ 1);
  Result<Bundle> reparsed = parse(swapped);
  ASSERT_TRUE(reparsed.ok()) << reparsed.status().to_string();
  EXPECT_EQ(check_signature(*reparsed), SignatureCheck::kInvalid);
  EXPECT_EQ(check_trust(*reparsed, {key.public_key}).code(), Status::Code::kInvalidArgument);
}

// A bundle signed the old way (flag bit 1 clear: the signature covers header and index only)
// still verifies, but a trust policy refuses it, since its key vouches for no payload byte.
TEST(Bundle, ASignatureThatDoesNotCoverThePayloadsIsNotTrusted) {
  const SigningKey key = SigningKey::generate();
  std::string file = write(parsed(test::small_blob()), kFingerprint, {.signing_key = &key});
  const size_t flags_at = kMagic.size() + 4;
  ASSERT_EQ(file[flags_at + 3], 3);
  file[flags_at + 3] = 1;
  const size_t index_end = [&] {
    std::string probe = file;
    probe[flags_at + 3] = 3;
    return parse(probe)->header_and_index.size();
  }();
  std::array<uint8_t, 64> old_style{};
  ASSERT_EQ(crypto_sign_detached(old_style.data(), nullptr,
                                 reinterpret_cast<const unsigned char*>(file.data()), index_end,
                                 key.secret.data()),
            0);
  const size_t signature_at = file.size() - 8 - 64;
  std::memcpy(file.data() + signature_at, old_style.data(), 64);
  const uint64_t trailer = util::xxh3_64(std::string_view(file).substr(0, index_end));
  for (int i = 0; i < 8; ++i) file[file.size() - 1 - i] = static_cast<char>(trailer >> (8 * i));
  Result<Bundle> old = parse(file);
  ASSERT_TRUE(old.ok()) << old.status().to_string();
  EXPECT_FALSE(old->signature->covers_payloads);
  EXPECT_EQ(check_signature(*old), SignatureCheck::kValid);
  EXPECT_TRUE(check_trust(*old, {}).ok());
  const Status trusted = check_trust(*old, {key.public_key});
  EXPECT_EQ(trusted.code(), Status::Code::kInvalidArgument);
  EXPECT_NE(trusted.message().find("not its payloads"), std::string::npos) << trusted.message();

  // Bit 1 on an unsigned bundle means nothing and is refused.
  std::string unsigned_file = write(parsed(test::small_blob()), kFingerprint);
  unsigned_file[flags_at + 3] = 2;
  Result<Bundle> odd = parse(unsigned_file);
  ASSERT_FALSE(odd.ok());
  EXPECT_EQ(odd.status().offset(), flags_at);
}

// Real zstd frames with raw, RLE and compressed blocks (several of each, past 128 KiB) pass
// the check of their blocks against the claim and decode whole.
TEST(Bundle, FramesOfEveryBlockKindDecodeWithinTheirClaims) {
  std::mt19937_64 rng(3);
  std::string mixed;
  for (int part = 0; part < 6; ++part) {
    for (int i = 0; i < 200000; ++i) mixed.push_back(static_cast<char>(rng()));  // raw blocks
    mixed.append(400000, static_cast<char>('a' + part));                         // RLE blocks
    std::string text;                                                            // compressed
    for (int i = 0; text.size() < 300000; ++i) text += std::to_string(i % 1000) + ",";
    mixed += text;
  }
  const std::string blob = test::make_blob({{"inductor", {{"fmixed", mixed}, {"fempty", ""}}}});
  const std::string file = write(parsed(blob), kFingerprint);
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  ASSERT_EQ(bundle->entries[0].compression, Compression::kZstd);
  EXPECT_EQ(*bundle->read(0), mixed);
  EXPECT_EQ(*bundle->read(1), "");
  EXPECT_EQ(*to_mega_cache(*bundle), blob);
}

// A bundle of a MiB or more decodes on several threads, the largest payloads first. What it
// decodes, and which damage it reports (the first damaged payload in file order), are what one
// thread would give.
TEST(Bundle, LargeBundlesDecodeOnSeveralThreadsAsOneThreadWould) {
  std::vector<test::RawArtifact> artifacts;
  for (int i = 0; i < 8; ++i) {
    std::string text;  // compressible, and different in each payload
    for (int n = 0; text.size() < 150000u * (1 + i % 3); ++n)
      text += std::to_string(n * (i + 7)) + ",";
    artifacts.push_back({"f" + std::to_string(i), text});
  }
  const std::string blob = test::make_blob({{"inductor", artifacts}});
  const std::string file = write(parsed(blob), kFingerprint);
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  ASSERT_GE(blob.size(), size_t{1} << 20);
  EXPECT_EQ(*to_mega_cache(*bundle), blob);

  const uint64_t payloads_at = static_cast<uint64_t>(bundle->payloads.data() - file.data());
  std::string damaged = file;
  for (size_t i : {5u, 2u, 7u}) {
    const Entry& entry = bundle->entries[i];
    ASSERT_EQ(entry.compression, Compression::kZstd);
    damaged[payloads_at + entry.offset + entry.stored_size / 2] ^= 0x55;
  }
  Result<Bundle> damaged_bundle = parse(damaged);
  ASSERT_TRUE(damaged_bundle.ok());
  for (int round = 0; round < 20; ++round) {  // whichever thread meets which damage first
    Result<Decoded> decoded = decode(*damaged_bundle);
    ASSERT_FALSE(decoded.ok());
    EXPECT_EQ(decoded.status().code(), Status::Code::kCorruption);
    EXPECT_EQ(decoded.status().offset(), payloads_at + bundle->entries[2].offset)
        << decoded.status().to_string();
  }
}

// The decode budget is the caller's: it counts each stored payload once, as the arena does,
// and a bundle over it is refused at the payload that crosses it, before allocating.
TEST(Bundle, DecodeBudgetIsTheCallersAndCountsSharedPayloadsOnce) {
  const std::string shared(5000, 's');
  const std::string blob = test::make_blob(
      {{"inductor", {{"fa", shared}, {"fb", shared}, {"fc", std::string(3000, 'c')}}}});
  const std::string file = write(parsed(blob), kFingerprint);
  Result<Bundle> bundle = parse(file);
  ASSERT_TRUE(bundle.ok());
  EXPECT_TRUE(decode(*bundle).ok());  // the default is the format's limit, 64 GiB
  EXPECT_TRUE(decode(*bundle, {.max_decoded_bytes = 8000}).ok());
  Result<Decoded> over = decode(*bundle, {.max_decoded_bytes = 7999});
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.status().code(), Status::Code::kCorruption);
  const uint64_t third_payload_at =
      static_cast<uint64_t>(bundle->payloads.data() - file.data()) + bundle->entries[2].offset;
  EXPECT_EQ(over.status().offset(), third_payload_at) << over.status().to_string();
  EXPECT_NE(over.status().message().find(
                "after 5000 claimed before it exceeds the decode budget of 7999"),
            std::string::npos)
      << over.status().to_string();

  EXPECT_EQ(*bundle->read(0, {.max_decoded_bytes = 5000}), shared);
  Result<std::string> one = bundle->read(0, {.max_decoded_bytes = 4999});
  ASSERT_FALSE(one.ok());
  EXPECT_EQ(one.status().code(), Status::Code::kCorruption);
}

TEST(BundleCorruption, EveryTruncationFails) {
  const std::string file = write(parsed(test::small_blob()), kFingerprint);
  for (size_t length = 0; length < file.size(); ++length) {
    Result<Bundle> bundle = parse(file.substr(0, length));
    ASSERT_FALSE(bundle.ok()) << "length " << length;
    EXPECT_EQ(bundle.status().code(), Status::Code::kCorruption);
  }
}

TEST(BundleCorruption, RandomFlipsAreCaughtBeforeAnyPayloadIsUsed) {
  const std::string file = write(parsed(test::read_test_file("mega_mlp_infer.bin")), kFingerprint);
  std::mt19937_64 rng(7);
  for (int round = 0; round < 300; ++round) {
    std::string damaged = file;
    damaged[rng() % damaged.size()] ^= static_cast<char>(1 + rng() % 255);
    Result<Bundle> bundle = parse(damaged);
    if (!bundle.ok()) continue;  // header, index or trailer damage
    // Payload damage: decoding must fail, so nothing can be populated from it.
    Result<Decoded> decoded = decode(*bundle);
    EXPECT_FALSE(decoded.ok()) << "round " << round << ": a flipped payload decoded";
  }
}

TEST(BundleCorruption, RejectsWrongMagicVersionAndTrailingBytes) {
  const std::string file = write(parsed(test::small_blob()), kFingerprint);
  EXPECT_NE(parse("not a bundle at all").status().message().find("magic"), std::string::npos);
  std::string version = file;
  version[11] = 9;
  EXPECT_NE(parse(version).status().message().find("version 9"), std::string::npos);
  EXPECT_NE(parse(file + "x").status().message().find("unexpected bytes"), std::string::npos);
}

}  // namespace
}  // namespace megacache::bundle
