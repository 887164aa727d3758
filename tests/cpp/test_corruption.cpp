// Hostile and damaged input: parse never crashes, never returns a partial result, populate
// writes nothing unless the whole input is valid, and decoding a bundle never allocates for a
// claim its bytes cannot back.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <optional>
#include <random>

#include "megacache/bundle.h"
#include "megacache/mega_cache.h"
#include "megacache/open.h"
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
  for (size_t i = 0; i < whole->groups.size(); ++i)
    groups_before_boundary[whole->groups[i].offset] = i;
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

// Hostile bundles: an index may claim any raw size; nothing may be allocated for a claim
// before the stored bytes are shown able to back it (docs/bundle-format.md, Limits).

using bundle::Compression;

constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kMemoryBudgetKiB = 64 * 1024;  // the target: 64 MB for any 1 MB input

// One index entry as a hostile writer sets it, with the bytes stored for it.
struct ClaimedPayload {
  Compression compression = Compression::kZstd;
  std::string stored;
  uint64_t raw_size = 0;
  std::array<uint8_t, 16> checksum{};
  std::string type = "inductor";
  // (offset, stored size) into bytes that other entries store; then `stored` is not used.
  std::optional<std::pair<uint64_t, uint64_t>> points_at = std::nullopt;
};

struct AssembledBundle {
  std::string file;
  std::vector<uint64_t> payload_at;  // where each entry's payload starts in `file`
};

// A bundle in the version 1 grammar with a valid trailer, whatever its entries claim.
AssembledBundle assemble(const std::vector<ClaimedPayload>& payloads) {
  AssembledBundle out;
  std::string& file = out.file;
  file.assign(bundle::kMagic);
  util::append_uint_be(file, bundle::kVersion, 4);
  util::append_uint_be(file, 0, 4);  // flags: unsigned
  util::append_uint_be(file, 0, 4);  // no fingerprint fields
  util::append_uint_be(file, payloads.size(), 4);
  std::string area;
  std::vector<uint64_t> offsets;
  for (size_t i = 0; i < payloads.size(); ++i) {
    const ClaimedPayload& p = payloads[i];
    const std::string key = p.type == "package" ? "manifest" : "f" + std::to_string(i);
    util::append_uint_be(file, p.type.size(), 2);
    file += p.type;
    util::append_uint_be(file, key.size(), 4);
    file += key;
    util::append_uint_be(file, i, 4);  // one group each, so types may differ
    util::append_uint_be(file, static_cast<uint8_t>(p.compression), 1);
    const auto [offset, stored_size] =
        p.points_at.value_or(std::pair{area.size(), p.stored.size()});
    util::append_uint_be(file, offset, 8);
    util::append_uint_be(file, stored_size, 8);
    util::append_uint_be(file, p.raw_size, 8);
    file.append(reinterpret_cast<const char*>(p.checksum.data()), p.checksum.size());
    offsets.push_back(offset);
    if (!p.points_at) area += p.stored;
  }
  const uint64_t trailer = util::xxh3_64(file);
  util::append_uint_be(file, area.size(), 8);
  const uint64_t area_at = file.size();
  file += area;
  util::append_uint_be(file, trailer, 8);
  for (uint64_t offset : offsets) out.payload_at.push_back(area_at + offset);
  return out;
}

void append_le(std::string& out, uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}

// A zstd frame header (RFC 8878) declaring `content_size` in an 8-byte field, with a 128 KiB
// window and neither checksum nor dictionary: 14 bytes that can claim anything.
std::string zstd_frame_header(uint64_t content_size) {
  std::string out;
  append_le(out, 0xFD2FB528, 4);
  out.push_back(static_cast<char>(0xC0));  // 8-byte content size, windowed
  out.push_back(static_cast<char>(0x38));  // window log 17
  append_le(out, content_size, 8);
  return out;
}

enum class BlockType : uint32_t { kRaw = 0, kRle = 1, kCompressed = 2 };

std::string zstd_block(BlockType type, uint32_t size, bool last, std::string_view content) {
  std::string out;
  append_le(out, (size << 3) | (static_cast<uint32_t>(type) << 1) | (last ? 1 : 0), 3);
  out += content;
  return out;
}

// The index claims `claim` bytes and the frame header agrees, but its one RLE block can
// only decode to 100: what a 111-byte bundle needs to claim a gigabyte.
ClaimedPayload unbacked_claim(uint64_t claim, const std::string& type = "inductor") {
  return {Compression::kZstd,
          zstd_frame_header(claim) + zstd_block(BlockType::kRle, 100, true, "x"),
          claim,
          {},
          type};
}

// A claim that the blocks can back (8192 compressed blocks of at most 128 KiB each), whose
// first block is garbage: refused only once decompression starts.
ClaimedPayload backed_claim_failing_at_once(uint64_t claim) {
  std::string frame = zstd_frame_header(claim);
  const uint64_t blocks = (claim + (128 << 10) - 1) / (128 << 10);
  for (uint64_t i = 0; i < blocks; ++i)
    frame += zstd_block(BlockType::kCompressed, 1, i + 1 == blocks, "\xff");
  return {Compression::kZstd, frame, claim, {}, "inductor"};
}

// A real zstd frame, as megacache's writer makes it, and the raw bytes it holds.
struct RealFrame {
  std::string raw;
  std::string frame;
};

RealFrame real_frame() {
  RealFrame out;
  for (int i = 0; out.raw.size() < 5000; ++i)
    out.raw += "graph line " + std::to_string(i % 97) + "\n";
  out.raw.resize(5000);
  const std::string file =
      bundle::write(*mega_cache::parse(make_blob({{"inductor", {{"fkey", out.raw}}}})), {});
  Result<bundle::Bundle> parsed = bundle::parse(file);
  EXPECT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(parsed->entries[0].compression, Compression::kZstd);
  out.frame = std::string(
      parsed->payloads.substr(parsed->entries[0].offset, parsed->entries[0].stored_size));
  return out;
}

// `frame` as a frame header declaring `content_size`: the real frame's single-segment header
// (descriptor 0x60: a 2-byte content size less 256) is rewritten in place.
std::string with_declared_size(std::string frame, uint64_t content_size) {
  EXPECT_EQ(static_cast<uint8_t>(frame[4]), 0x60) << "zstd wrote another header layout";
  frame[5] = static_cast<char>((content_size - 256) & 0xff);
  frame[6] = static_cast<char>((content_size - 256) >> 8);
  return frame;
}

uint64_t status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field, 0) == 0)
      return std::strtoull(line.c_str() + std::strlen(field), nullptr, 10);
  }
  return 0;
}

// How much `run` raises peak resident memory, in KiB. It runs in a forked child, whose peak
// (VmHWM) starts at its resident size at the fork, so what this test process touched before
// does not count; a child that crashes (bad_alloc in a zero-filling resize) reports it.
uint64_t peak_rss_growth_kib(const std::function<void()>& run) {
  int pipe_ends[2];
  if (::pipe(pipe_ends) != 0) {
    ADD_FAILURE() << "pipe failed";
    return UINT64_MAX;
  }
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(pipe_ends[0]);
    const uint64_t before = status_kib("VmHWM:");
    run();
    const uint64_t growth = status_kib("VmHWM:") - before;
    const bool sent = ::write(pipe_ends[1], &growth, sizeof growth) == sizeof growth;
    ::_exit(sent ? 0 : 1);
  }
  ::close(pipe_ends[1]);
  uint64_t growth = UINT64_MAX;
  const bool received = ::read(pipe_ends[0], &growth, sizeof growth) == sizeof growth;
  ::close(pipe_ends[0]);
  int wait_status = 0;
  ::waitpid(child, &wait_status, 0);
  EXPECT_TRUE(received && WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0)
      << "the measured child died (status " << wait_status << ")";
  return growth;
}

// AddressSanitizer writes shadow memory for every large allocation (an eighth of its size),
// so its peak RSS measures the sanitizer, not the decoder; the plain build holds the budget.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPeakRssMeasuresTheSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kPeakRssMeasuresTheSanitizer = true;
#else
constexpr bool kPeakRssMeasuresTheSanitizer = false;
#endif
#else
constexpr bool kPeakRssMeasuresTheSanitizer = false;
#endif

// Prints the figure, as the other measured tests do, and holds it to the budget.
void expect_within_budget(const std::string& what, uint64_t growth_kib) {
  std::cout << "[ measured ] " << what << " raised peak RSS by " << growth_kib << " KiB\n";
  if (!kPeakRssMeasuresTheSanitizer) {
    EXPECT_LT(growth_kib, kMemoryBudgetKiB) << what;
  }
}

void expect_refused(const Result<bundle::Decoded>& decoded, uint64_t at, const std::string& says) {
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), Status::Code::kCorruption) << decoded.status().to_string();
  EXPECT_EQ(decoded.status().offset(), at) << decoded.status().to_string();
  EXPECT_NE(decoded.status().message().find(says), std::string::npos)
      << decoded.status().to_string();
}

// Decoding `file` is refused at `at` and raises peak memory by less than the budget.
void expect_refused_in_budget(const std::string& file, uint64_t at, const std::string& says) {
  Result<bundle::Bundle> parsed = bundle::parse(file);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  expect_refused(bundle::decode(*parsed), at, says);
  expect_within_budget("decoding a " + std::to_string(file.size()) + "-byte hostile bundle",
                       peak_rss_growth_kib([&] { (void)bundle::decode(*parsed); }));
}

TEST(HostileBundle, ClaimOf1GiBThatTheFrameCannotBackIsRefusedBeforeAllocating) {
  const AssembledBundle hostile = assemble({unbacked_claim(kGiB)});
  EXPECT_LT(hostile.file.size(), 200u);
  expect_refused_in_budget(hostile.file, hostile.payload_at[0], "can decode to at most 100");
}

TEST(HostileBundle, ThreeClaimsOf1GiBAreRefusedAtTheFirst) {
  const AssembledBundle hostile =
      assemble({unbacked_claim(kGiB), unbacked_claim(kGiB), unbacked_claim(kGiB)});
  expect_refused_in_budget(hostile.file, hostile.payload_at[0], "can decode to at most 100");
}

TEST(HostileBundle, HonestPayloadsBeforeAnUnbackedClaimDoNotHideIt) {
  const RealFrame real = real_frame();
  ClaimedPayload honest{Compression::kZstd, real.frame, real.raw.size(), util::xxh3_128(real.raw)};
  const AssembledBundle hostile = assemble({honest, unbacked_claim(kGiB)});
  expect_refused_in_budget(hostile.file, hostile.payload_at[1], "can decode to at most 100");
}

// 16 x 4 GiB is inside the format's limits (4 GiB each, 64 GiB in all), so parse accepts the
// index; before, `megacache verify` aborted on bad_alloc here.
TEST(HostileBundle, SixteenClaimsOf4GiBInsideTheFormatLimitsAreRefusedByDecodeAndVerify) {
  const std::vector<ClaimedPayload> claims(16, unbacked_claim(bundle::kMaxArtifactBytes));
  const AssembledBundle hostile = assemble(claims);
  EXPECT_LT(hostile.file.size(), 2048u);
  expect_refused_in_budget(hostile.file, hostile.payload_at[0], "can decode to at most 100");
  Result<size_t> verified = verify_file(hostile.file, {});
  ASSERT_FALSE(verified.ok());
  EXPECT_EQ(verified.status().offset(), hostile.payload_at[0]) << verified.status().to_string();
  expect_within_budget("verify_file on 16 x 4 GiB claims",
                       peak_rss_growth_kib([&] { (void)verify_file(hostile.file, {}); }));
}

TEST(HostileBundle, PackageClaimingSixteenTimes4GiBIsRefusedBeforeAllocating) {
  std::vector<ClaimedPayload> claims(16, unbacked_claim(bundle::kMaxArtifactBytes));
  claims[0].type = "package";  // the manifest entry makes it a precompile package
  const AssembledBundle hostile = assemble(claims);
  Result<OpenedFile> opened = open_file(hostile.file, {});
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), Status::Code::kCorruption) << opened.status().to_string();
  EXPECT_EQ(opened.status().offset(), hostile.payload_at[0]) << opened.status().to_string();
  expect_within_budget("open_file on a package of 16 x 4 GiB claims",
                       peak_rss_growth_kib([&] { (void)open_file(hostile.file, {}); }));
}

// The blocks can back the claim, so it passes every check made before allocating; it must
// still cost only what really decompresses (here nothing), not the claim.
TEST(HostileBundle, ClaimTheBlocksCanBackCostsOnlyWhatReallyDecompresses) {
  const AssembledBundle hostile = assemble({backed_claim_failing_at_once(kGiB)});
  EXPECT_LT(hostile.file.size(), 40u << 10);
  expect_refused_in_budget(hostile.file, hostile.payload_at[0], "does not decompress");
  Result<bundle::Bundle> parsed = bundle::parse(hostile.file);
  ASSERT_TRUE(parsed.ok());
  Result<std::string> one = parsed->read(0);
  ASSERT_FALSE(one.ok());
  EXPECT_EQ(one.status().offset(), hostile.payload_at[0]);
  expect_within_budget("Bundle::read of a 1 GiB claim its blocks can back",
                       peak_rss_growth_kib([&] { (void)parsed->read(0); }));
}

TEST(HostileBundle, FrameDeclaringAnotherSizeThanTheClaimIsRefused) {
  const RealFrame real = real_frame();
  for (uint64_t claim : {uint64_t{4999}, uint64_t{5001}, kGiB}) {
    const AssembledBundle hostile =
        assemble({{Compression::kZstd, real.frame, claim, util::xxh3_128(real.raw)}});
    Result<bundle::Bundle> parsed = bundle::parse(hostile.file);
    ASSERT_TRUE(parsed.ok());
    expect_refused(bundle::decode(*parsed), hostile.payload_at[0],
                   "zstd frame declares 5000 bytes, the index claims " + std::to_string(claim));
    EXPECT_EQ(parsed->read(0).status().offset(), hostile.payload_at[0]);
  }
  // A frame that declares no size at all backs no claim.
  std::string undeclared;
  append_le(undeclared, 0xFD2FB528, 4);
  undeclared += std::string("\x00\x38", 2) + zstd_block(BlockType::kRaw, 3, true, "abc");
  const AssembledBundle hostile =
      assemble({{Compression::kZstd, undeclared, 3, util::xxh3_128("abc")}});
  expect_refused(bundle::decode(*bundle::parse(hostile.file)), hostile.payload_at[0],
                 "declares no size");
}

TEST(HostileBundle, FrameDecodingPastItsClaimIsRefused) {
  // Header and index agree on 100 bytes; the blocks hold 150.
  const std::string frame = zstd_frame_header(100) +
                            zstd_block(BlockType::kRaw, 100, false, std::string(100, 'a')) +
                            zstd_block(BlockType::kRaw, 50, true, std::string(50, 'b'));
  const AssembledBundle hostile =
      assemble({{Compression::kZstd, frame, 100, util::xxh3_128(std::string(100, 'a'))}});
  expect_refused(bundle::decode(*bundle::parse(hostile.file)), hostile.payload_at[0],
                 "decodes to more than the 100 bytes");
  // The same with zstd's own compressed blocks, declaring less than they hold.
  const RealFrame real = real_frame();
  const AssembledBundle real_hostile = assemble(
      {{Compression::kZstd, with_declared_size(real.frame, 4000), 4000, util::xxh3_128(real.raw)}});
  Result<bundle::Decoded> decoded = bundle::decode(*bundle::parse(real_hostile.file));
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), Status::Code::kCorruption);
  EXPECT_EQ(decoded.status().offset(), real_hostile.payload_at[0]) << decoded.status().to_string();
}

TEST(HostileBundle, FrameEndingShortOfItsClaimIsRefused) {
  // Raw blocks regenerate exactly their size: the shortfall shows before allocating.
  const std::string frame =
      zstd_frame_header(150) + zstd_block(BlockType::kRaw, 100, true, std::string(100, 'a'));
  const AssembledBundle hostile = assemble({{Compression::kZstd, frame, 150, {}}});
  expect_refused(bundle::decode(*bundle::parse(hostile.file)), hostile.payload_at[0],
                 "can decode to at most 100");
  // Compressed blocks might hold more: the shortfall shows while decompressing.
  const RealFrame real = real_frame();
  const AssembledBundle real_hostile = assemble(
      {{Compression::kZstd, with_declared_size(real.frame, 6000), 6000, util::xxh3_128(real.raw)}});
  Result<bundle::Decoded> decoded = bundle::decode(*bundle::parse(real_hostile.file));
  ASSERT_FALSE(decoded.ok());
  EXPECT_EQ(decoded.status().code(), Status::Code::kCorruption);
  EXPECT_EQ(decoded.status().offset(), real_hostile.payload_at[0]) << decoded.status().to_string();
}

TEST(HostileBundle, FrameRunningPastItsStoredBytesIsRefusedAtTheBlock) {
  const std::string header = zstd_frame_header(100);
  const std::string frame = header + zstd_block(BlockType::kRaw, 100, true, std::string(60, 'a'));
  const AssembledBundle hostile = assemble({{Compression::kZstd, frame, 100, {}}});
  expect_refused(bundle::decode(*bundle::parse(hostile.file)),
                 hostile.payload_at[0] + header.size(), "zstd block runs past its");
  // And bytes after the frame's last block are not part of any frame.
  const std::string padded =
      header + zstd_block(BlockType::kRaw, 100, true, std::string(100, 'a')) + "pad";
  const AssembledBundle trailing = assemble({{Compression::kZstd, padded, 100, {}}});
  expect_refused(bundle::decode(*bundle::parse(trailing.file)),
                 trailing.payload_at[0] + padded.size() - 3, "zstd frame ends at byte");
}

TEST(HostileBundle, UncompressedPayloadMustBeExactlyItsClaim) {
  for (uint64_t claim : {uint64_t{9}, uint64_t{11}, kGiB, bundle::kMaxArtifactBytes}) {
    const AssembledBundle hostile = assemble({{Compression::kNone, "0123456789", claim, {}}});
    Result<bundle::Bundle> parsed = bundle::parse(hostile.file);
    ASSERT_FALSE(parsed.ok()) << claim;
    EXPECT_EQ(parsed.status().code(), Status::Code::kCorruption);
    EXPECT_EQ(parsed.status().offset(), hostile.payload_at[0]) << parsed.status().to_string();
    EXPECT_NE(
        parsed.status().message().find("stored uncompressed with 10 of " + std::to_string(claim)),
        std::string::npos)
        << parsed.status().to_string();
  }
}

// Each stored byte backs one payload: 4000 entries over the same 256 KiB, each a byte shorter,
// would decode to a gigabyte of real bytes from a 520 KB input.
TEST(HostileBundle, OverlappingPayloadsCannotMultiplyTheInput) {
  std::mt19937_64 rng(11);
  std::string bytes(256 << 10, '\0');
  for (char& c : bytes) c = static_cast<char>(rng());
  std::vector<ClaimedPayload> claims = {
      {Compression::kNone, bytes, bytes.size(), util::xxh3_128(bytes)}};
  for (uint64_t size = bytes.size() - 1; size >= bytes.size() - 4000; --size) {
    ClaimedPayload prefix{Compression::kNone, "", size,
                          util::xxh3_128(std::string_view(bytes).substr(0, size))};
    prefix.points_at = std::pair{uint64_t{0}, size};
    claims.push_back(prefix);
  }
  const AssembledBundle hostile = assemble(claims);
  EXPECT_LT(hostile.file.size(), 1u << 20);
  expect_refused_in_budget(hostile.file, hostile.payload_at[0],
                           "overlaps the payload of inductor artifact 'f4000'");

  // Sharing a payload means sharing all of it, as stored: here the zstd frame's first 5000
  // bytes, read as if uncompressed.
  const RealFrame real = real_frame();
  ClaimedPayload reinterpreted{Compression::kNone, "", 5000, util::xxh3_128(real.raw)};
  reinterpreted.points_at = std::pair{uint64_t{0}, uint64_t{5000}};
  const AssembledBundle partial =
      assemble({{Compression::kZstd, real.frame, 5000, util::xxh3_128(real.raw)},
                {Compression::kNone, std::string(5000, 'p'), 5000, {}},
                reinterpreted});
  expect_refused(bundle::decode(*bundle::parse(partial.file)), partial.payload_at[2],
                 "shares the payload of inductor artifact 'f0' but not its stored size");
}

TEST(HostileBundle, NotAZstdFrameIsRefused) {
  const AssembledBundle hostile = assemble({{Compression::kZstd, "definitely not zstd", 100, {}}});
  expect_refused(bundle::decode(*bundle::parse(hostile.file)), hostile.payload_at[0],
                 "not a zstd frame");
}

// The hostile files in tests/data seed the fuzzers and the Python security tests. They are
// this builder's output; MEGACACHE_WRITE_HOSTILE_FILES=1 writes them again.
TEST(HostileBundle, GoldenHostileFilesAreWhatTheBuilderMakes) {
  std::vector<ClaimedPayload> package(16, unbacked_claim(bundle::kMaxArtifactBytes));
  package[0].type = "package";
  const std::vector<std::pair<std::string, std::string>> files = {
      {"hostile_claim_1gib.mcb", assemble({unbacked_claim(kGiB)}).file},
      {"hostile_claims_3x1gib.mcb",
       assemble(std::vector<ClaimedPayload>(3, unbacked_claim(kGiB))).file},
      {"hostile_claims_16x4gib.mcb",
       assemble(std::vector<ClaimedPayload>(16, unbacked_claim(bundle::kMaxArtifactBytes))).file},
      {"hostile_backed_claim_1gib.mcb", assemble({backed_claim_failing_at_once(kGiB)}).file},
      {"hostile_package_16x4gib.mcpkg", assemble(package).file},
  };
  const char* rewrite = std::getenv("MEGACACHE_WRITE_HOSTILE_FILES");
  for (const auto& [name, bytes] : files) {
    const std::string path = std::string(MEGACACHE_TEST_DATA) + "/" + name;
    if (rewrite != nullptr && std::string(rewrite) == "1") {
      std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    }
    EXPECT_EQ(test::read_test_file(name), bytes) << name << " differs from what the builder makes";
    Result<size_t> verified = verify_file(bytes, {});
    ASSERT_FALSE(verified.ok()) << name;
    EXPECT_EQ(verified.status().code(), Status::Code::kCorruption) << name;
  }
}

}  // namespace
}  // namespace megacache
