// The precompile package's codec (src/format/package.cpp, docs/package-format.md): the
// binary and unpacked forms, their refusals, corruption and the golden files.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "megacache/open.h"
#include "megacache/package.h"
#include "megacache/precompile.h"
#include "package_samples.h"
#include "test_util.h"

namespace megacache::precompile {
namespace {

using mega_cache::MegaCache;

TEST(Package, BinaryRoundTrip) {
  const Package package = sample_package();
  const std::string file = write_package(package);
  Result<bundle::Bundle> parsed = bundle::parse(file);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_TRUE(is_package(*parsed));
  EXPECT_EQ(parsed->fingerprint, kFingerprint);
  EXPECT_EQ(bundle::check_signature(*parsed), bundle::SignatureCheck::kUnsigned);
  Result<Package> read = read_package(*parsed);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(difference(*read, package), "");
  // The fields one by one, so that a shared mistake in `difference` cannot hide a loss.
  ASSERT_EQ(read->functions.size(), 2u);
  const FunctionPackage& forward = read->functions[0];
  EXPECT_EQ(forward.entry.function.qualname, "Model.forward");
  EXPECT_EQ(forward.entry.function.module, "app.model");
  EXPECT_EQ(forward.entry.function.first_line, 12u);
  EXPECT_EQ(forward.entry.function.signature, "(self, x)");
  EXPECT_EQ(forward.entry.function.source_sha256, std::string(64, 'a'));
  EXPECT_EQ(forward.entry.device_type, "cuda");
  EXPECT_EQ(forward.entry.pickle, std::string("\x80\x05dynamo\0forward\xff", 16));
  ASSERT_EQ(forward.entry.codes.size(), 2u);
  EXPECT_EQ(forward.entry.codes[1].function_names,
            (std::vector<std::string>{"forward", "torch_dynamo_resume_in_forward_at_15"}));
  EXPECT_EQ(forward.entry.codes[1].backend_ids, std::vector<std::string>{"__compiled_fn_3_ccc"});
  ASSERT_EQ(forward.entry.inlined_sources.size(), 1u);
  EXPECT_EQ(forward.entry.inlined_sources[0].module, "app.layers");
  EXPECT_EQ(forward.entry.inlined_sources[0].last_line, 5u);
  EXPECT_EQ(forward.entry.inlined_sources[0].sha256, kLayersLines3To5);
  ASSERT_EQ(forward.bypassed.size(), 1u);
  EXPECT_EQ(forward.bypassed[0].code, 1u);
  EXPECT_EQ(forward.bypassed[0].backend_id, "__compiled_fn_3_ccc");
  EXPECT_EQ(forward.backends.at("__compiled_fn_1_aaa"), std::string("\x80\x05"
                                                                    "backend one\0",
                                                                    14));
  EXPECT_EQ(read->functions[1].backends.at("__compiled_fn_2_bbb"),
            "\x80\x05"
            "backend two");
  ASSERT_EQ(read->kernels.size(), 2u);
  EXPECT_EQ(read->kernels[0].path, "ab/cabcdefghij.so");
  EXPECT_EQ(read->kernels[0].bytes, std::string("\x7f"
                                                "ELF\0\1\2kernel one",
                                                17));
  EXPECT_EQ(read->mega_cache, test::small_blob());
  EXPECT_NE(read->find(source_key("helper", 4)), nullptr);
  EXPECT_EQ(read->find(source_key("helper", 5)), nullptr);

  // Without kernels or Mega-Cache blob, and with no function at all.
  Package bare = package;
  bare.kernels.clear();
  bare.mega_cache.clear();
  Result<Package> bare_read = read_binary(write_package(bare));
  ASSERT_TRUE(bare_read.ok()) << bare_read.status().to_string();
  EXPECT_EQ(difference(*bare_read, bare), "");
  Package nothing;
  nothing.fingerprint = kFingerprint;
  Result<Package> nothing_read = read_binary(write_package(nothing));
  ASSERT_TRUE(nothing_read.ok()) << nothing_read.status().to_string();
  EXPECT_EQ(difference(*nothing_read, nothing), "");
}

TEST(Package, PlainBundleIsNotAPackage) {
  const std::string blob = test::small_blob();
  Result<MegaCache> cache = mega_cache::parse(blob);
  ASSERT_TRUE(cache.ok());
  const std::string file = bundle::write(*cache, kFingerprint);
  Result<bundle::Bundle> parsed = bundle::parse(file);
  ASSERT_TRUE(parsed.ok());
  EXPECT_FALSE(is_package(*parsed));
  Result<Package> read = read_package(*parsed);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(contains(read.status().message(), "not a precompile package"))
      << read.status().message();
}

TEST(Package, SignedPackageVerifies) {
  const bundle::SigningKey key = bundle::SigningKey::generate();
  const Package package = sample_package();
  const std::string file = write_package(package, {.signing_key = &key});
  Result<bundle::Bundle> parsed = bundle::parse(file);
  ASSERT_TRUE(parsed.ok()) << parsed.status().to_string();
  EXPECT_EQ(bundle::check_signature(*parsed), bundle::SignatureCheck::kValid);
  EXPECT_TRUE(bundle::is_trusted(*parsed, {key.public_key}));
  EXPECT_FALSE(bundle::is_trusted(*parsed, {bundle::SigningKey::generate().public_key}));
  Result<Package> read = read_package(*parsed);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(difference(*read, package), "");
}

TEST(Package, ReadRefusesUnsafeKernelPathsAndUnknownArtifacts) {
  // A kernel path the writer does not check becomes a refusal at read time.
  Package package = sample_package();
  package.kernels[0].path = "../x.so";
  Result<Package> read = read_binary(write_package(package));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(contains(read.status().message(), "../x.so")) << read.status().message();

  // A non-bypassed code whose backend is absent.
  package = sample_package();
  package.functions[1].backends.clear();
  read = read_binary(write_package(package));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(contains(read.status().message(), "__compiled_fn_2_bbb")) << read.status().message();

  // A backend artifact that no function names.
  package = sample_package();
  package.functions[1].backends["__compiled_fn_9_zzz"] = "stray";
  read = read_binary(write_package(package));
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument);
}

// manifest.json as write_unpacked writes it for `package`.
std::string manifest_of(const Package& package) {
  test::TempDir tmp;
  EXPECT_TRUE(write_unpacked(package, tmp.path() + "/pkg").ok());
  return *test::read_file(tmp.path() + "/pkg/manifest.json");
}

TEST(Package, UnpackedRoundTripReplacesTheWholeDir) {
  test::TempDir tmp;
  const std::string dir = tmp.path() + "/pkg";
  const Package package = sample_package();
  ASSERT_TRUE(write_unpacked(package, dir).ok());
  EXPECT_TRUE(std::filesystem::is_regular_file(dir + "/manifest.json"));
  EXPECT_TRUE(std::filesystem::is_regular_file(dir + "/kernels/ab/cabcdefghij.so"));
  Result<Package> read = read_unpacked(dir, {});
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(difference(*read, package), "");

  // A stray file, and a second write of another package: the dir is the new package only.
  ASSERT_TRUE(test::write_file(dir + "/stray.txt", "left over").ok());
  Package second = sample_package();
  second.kernels.pop_back();
  second.mega_cache.clear();
  second.functions.pop_back();
  ASSERT_TRUE(write_unpacked(second, dir).ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/stray.txt"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/mega_cache.bin"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/kernels/x_"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/functions/" + source_key("helper", 4)));
  read = read_unpacked(dir, {});
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(difference(*read, second), "");
  // Nothing is left beside it (the build and the moved-aside old copy are gone).
  std::vector<std::string> beside;
  for (const auto& entry : std::filesystem::directory_iterator(tmp.path())) {
    beside.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(beside, std::vector<std::string>{"pkg"});
}

// write_unpacked replaces a directory as a whole: failing at any of its writes leaves the
// old package readable and unchanged, and nothing of the new one beside it.
TEST(Package, UnpackedWriteThatFailsAtAnyWriteLeavesTheOldDirectory) {
  const Package old_package = sample_package();
  const Package new_package = with_cuda_jit(with_triton_modules(sample_package()));
  for (int allowed = 0;; ++allowed) {
    test::TempDir tmp;
    const std::string dir = tmp.path() + "/pkg";
    ASSERT_TRUE(write_unpacked(old_package, dir).ok());
    test::FailingFileSystem failing(allowed);
    const Status written = write_unpacked(new_package, dir, nullptr, failing);
    Result<Package> read = read_unpacked(dir, {});
    ASSERT_TRUE(read.ok()) << "allowed " << allowed << ": " << read.status().to_string();
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(tmp.path()), {}), 1)
        << "allowed " << allowed << ": a temporary directory was left beside the package";
    if (written.ok()) {
      EXPECT_EQ(difference(*read, new_package), "");
      EXPECT_GT(allowed, 10);  // the manifest, fingerprint, pickles, kernels, modules, entries
      break;
    }
    EXPECT_EQ(written.code(), Status::Code::kIOError) << written.to_string();
    EXPECT_EQ(difference(*read, old_package), "") << "allowed " << allowed;
  }
}

TEST(Package, UnpackedMissingBackendIsAnError) {
  test::TempDir tmp;
  const std::string dir = tmp.path() + "/pkg";
  ASSERT_TRUE(write_unpacked(sample_package(), dir).ok());
  // The bypassed code's backend was never written, and its absence is fine.
  const std::string forward_backends =
      dir + "/functions/" + source_key("Model.forward", 12) + "/backends";
  EXPECT_TRUE(std::filesystem::exists(forward_backends + "/__compiled_fn_1_aaa.pkl"));
  EXPECT_FALSE(std::filesystem::exists(forward_backends + "/__compiled_fn_3_ccc.pkl"));
  ASSERT_TRUE(read_unpacked(dir, {}).ok());

  ASSERT_TRUE(std::filesystem::remove(dir + "/functions/" + source_key("helper", 4) +
                                      "/backends/__compiled_fn_2_bbb.pkl"));
  Result<Package> read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_TRUE(contains(read.status().message(), "__compiled_fn_2_bbb")) << read.status().message();

  ASSERT_TRUE(
      std::filesystem::remove(dir + "/functions/" + source_key("helper", 4) + "/dynamo.pkl"));
  EXPECT_FALSE(read_unpacked(dir, {}).ok());
  EXPECT_FALSE(read_unpacked(tmp.path() + "/absent", {}).ok());
}

TEST(Package, UnpackedBadManifestIsCorruptionNamingTheFile) {
  test::TempDir tmp;
  const std::string dir = tmp.path() + "/pkg";
  ASSERT_TRUE(write_unpacked(sample_package(), dir).ok());
  ASSERT_TRUE(
      test::write_file(dir + "/manifest.json", "{\"format\": \"megacache-package\", ").ok());
  Result<Package> read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kCorruption);
  EXPECT_TRUE(contains(read.status().message(), "manifest.json")) << read.status().message();

  // Valid JSON with a field of the wrong type names the field.
  ASSERT_TRUE(
      test::write_file(
          dir + "/manifest.json",
          R"({"format": "megacache-package", "version": "1", "functions": [], "kernels": []})")
          .ok());
  read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kCorruption);
  EXPECT_TRUE(contains(read.status().message(), "manifest.json")) << read.status().message();
  EXPECT_TRUE(contains(read.status().message(), "version")) << read.status().message();

  ASSERT_TRUE(
      test::write_file(
          dir + "/manifest.json",
          R"({"format": "megacache-package", "version": 2, "functions": [], "kernels": []})")
          .ok());
  read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kCorruption);
  EXPECT_TRUE(contains(read.status().message(), "version 2")) << read.status().message();

  // Well-typed but inconsistent: a bypass of a code that does not exist, a wrong source key.
  const std::string pristine = manifest_of(sample_package());
  nlohmann::ordered_json manifest = nlohmann::ordered_json::parse(pristine);
  manifest["functions"][0]["bypassed"][0]["code"] = 2;
  ASSERT_TRUE(test::write_file(dir + "/manifest.json", manifest.dump(2)).ok());
  read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kCorruption);
  EXPECT_TRUE(contains(read.status().message(), "bypass of code 2")) << read.status().message();

  manifest = nlohmann::ordered_json::parse(pristine);
  manifest["functions"][1]["function"]["first_line"] = 5;
  ASSERT_TRUE(test::write_file(dir + "/manifest.json", manifest.dump(2)).ok());
  read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kCorruption);
  EXPECT_TRUE(contains(read.status().message(), "source_key")) << read.status().message();

  ASSERT_TRUE(test::write_file(dir + "/manifest.json", pristine).ok());
  EXPECT_TRUE(read_unpacked(dir, {}).ok());
}

TEST(Package, UnpackedRefusesPathsThatEscape) {
  test::TempDir tmp;
  const std::string dir = tmp.path() + "/pkg";
  Package package = sample_package();
  ASSERT_TRUE(write_unpacked(package, dir).ok());
  const std::string pristine = *test::read_file(dir + "/manifest.json");
  // Files a traversal would reach: <dir>/x.so via kernels/../x.so and kernels/ab/../../x.so,
  // and <tmp>/x.so via kernels/../../x.so.
  ASSERT_TRUE(test::write_file(dir + "/x.so", "outside the kernels dir").ok());
  ASSERT_TRUE(test::write_file(tmp.path() + "/x.so", "outside the package").ok());
  for (const std::string bad :
       {"../x.so", "ab/../../x.so", "../../x.so", "/etc/x.so", "ab/../x.so"}) {
    nlohmann::ordered_json manifest = nlohmann::ordered_json::parse(pristine);
    manifest["kernels"][0] = bad;
    ASSERT_TRUE(test::write_file(dir + "/manifest.json", manifest.dump(2)).ok());
    Result<Package> read = read_unpacked(dir, {});
    ASSERT_FALSE(read.ok()) << bad;
    EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument)
        << bad << ": " << read.status().to_string();
  }
  // A backend id is a file name too.
  nlohmann::ordered_json manifest = nlohmann::ordered_json::parse(pristine);
  manifest["functions"][1]["codes"][0]["backend_ids"][0] = "../../../x";
  ASSERT_TRUE(test::write_file(dir + "/manifest.json", manifest.dump(2)).ok());
  Result<Package> read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument) << read.status().to_string();

  // And the writer refuses both before anything appears.
  package.kernels[0].path = "ab/../../x.so";
  EXPECT_EQ(write_unpacked(package, tmp.path() + "/other").code(), Status::Code::kInvalidArgument);
  package = sample_package();
  package.functions[1].backends = {{"../evil", "x"}};
  package.functions[1].entry.codes[0].backend_ids = {"../evil"};
  EXPECT_EQ(write_unpacked(package, tmp.path() + "/other").code(), Status::Code::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(tmp.path() + "/other"));
  EXPECT_FALSE(std::filesystem::exists(tmp.path() + "/evil.pkl"));
}

TEST(Package, UnpackedDirNamedWithATrailingSlash) {
  test::TempDir tmp;
  const Package package = sample_package();
  ASSERT_TRUE(write_unpacked(package, tmp.path() + "/pkg/").ok());
  ASSERT_TRUE(write_unpacked(package, tmp.path() + "/pkg/").ok());  // over an existing one
  Result<Package> read = read_unpacked(tmp.path() + "/pkg", {});
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(difference(*read, package), "");
}

TEST(Package, SharedBackendsAndRepeatedKernelsRoundTrip) {
  Package package = sample_package();
  // A second function whose code uses the helper's backend; the kernel list repeats a path.
  FunctionPackage twin = package.functions[1];
  twin.entry.function.qualname = "twin";
  package.functions.push_back(twin);
  package.kernels.push_back(package.kernels.front());
  const std::string file = write_package(package);
  Result<bundle::Bundle> bundle = bundle::parse(file);
  ASSERT_TRUE(bundle.ok());
  Result<Package> read = read_package(*bundle);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  ASSERT_EQ(read->functions.size(), 3u);
  EXPECT_EQ(read->functions[2].backends, package.functions[1].backends);
  EXPECT_EQ(read->kernels.size(), 2u);  // a kernel is one file, however often it is listed
}

TEST(Package, EmptyDynamoPickleRoundTrips) {
  Package package = sample_package();
  package.functions[1].entry.pickle.clear();
  const std::string file = write_package(package);  // the bundle's views point into it
  Result<bundle::Bundle> bundle = bundle::parse(file);
  ASSERT_TRUE(bundle.ok());
  Result<Package> read = read_package(*bundle);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(read->functions[1].entry.pickle, "");
}

TEST(Package, OpenFileRecognisesAPackage) {
  const Package package = sample_package();
  const std::string file = write_package(package);
  Result<OpenedFile> opened = open_file(file, {});
  ASSERT_TRUE(opened.ok()) << opened.status().to_string();
  EXPECT_EQ(opened->kind, FileKind::kPackage);
  ASSERT_NE(opened->artifacts(), nullptr);
  Result<std::vector<PlannedFile>> fallback = plan_populate(*opened->artifacts());
  ASSERT_TRUE(fallback.ok());
  Result<size_t> planned = verify_file(file, {});
  ASSERT_TRUE(planned.ok()) << planned.status().to_string();
  EXPECT_EQ(*planned, fallback->size() + package.kernels.size());

  test::TempDir dir;
  Result<PopulateReport> report = populate_file(*opened, dir.path());
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ(report->files_written, fallback->size() + package.kernels.size());
  Result<std::string> kernel = test::read_file(dir.path() + "/ab/cabcdefghij.so");
  ASSERT_TRUE(kernel.ok());
  EXPECT_EQ(*kernel, package.kernels[0].bytes);
}

TEST(PackageCorruption, EveryTruncationFails) {
  Package package = sample_package();
  package.mega_cache = test::make_blob({{"inductor", {{"fsmall", "graph"}}}});
  const std::string file = write_package(package);
  for (size_t length = 0; length < file.size(); ++length) {
    const std::string cut = file.substr(0, length);
    Result<bundle::Bundle> parsed = bundle::parse(cut);
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), Status::Code::kCorruption) << "length " << length;
      continue;
    }
    ADD_FAILURE() << "length " << length << " of " << file.size() << " parsed";
    Result<Package> read = read_package(*parsed);
    if (read.ok()) {
      EXPECT_EQ(difference(*read, package), "") << "length " << length;
    }
  }
}

TEST(PackageCorruption, RandomFlipsNeverYieldADifferentPackage) {
  const Package package = sample_package();
  const std::string file = write_package(package);
  Result<bundle::Bundle> original = bundle::parse(file);
  ASSERT_TRUE(original.ok());
  const size_t index_end = original->header_and_index.size();
  std::mt19937_64 rng(20260301);
  int caught = 0;
  for (int round = 0; round < 300; ++round) {
    std::string damaged = file;
    // Half the rounds hit the header and index, where the structure is.
    const size_t limit = round % 2 == 0 ? index_end : damaged.size();
    for (int flips = 1 + round % 3; flips > 0; --flips) {
      damaged[rng() % limit] ^= static_cast<char>(1 + rng() % 255);
    }
    Result<bundle::Bundle> parsed = bundle::parse(damaged);
    if (!parsed.ok()) {
      EXPECT_EQ(parsed.status().code(), Status::Code::kCorruption) << "round " << round;
      ++caught;
      continue;
    }
    Result<Package> read = read_package(*parsed);
    if (!read.ok()) {
      ++caught;
      continue;
    }
    EXPECT_EQ(difference(*read, package), "")
        << "round " << round << ": a damaged package was read";
  }
  EXPECT_EQ(caught, 300);  // every flip changes a covered byte

  // With the trailing checksum repaired, damage to the header and index reaches the package
  // reader, which may accept it (only a signature protects the content) but must not crash.
  for (int round = 0; round < 300; ++round) {
    std::string damaged = file;
    damaged[rng() % index_end] ^= static_cast<char>(1 + rng() % 255);
    const uint64_t fixed = util::xxh3_64(std::string_view(damaged).substr(0, index_end));
    for (int i = 0; i < 8; ++i)
      damaged[damaged.size() - 1 - i] = static_cast<char>(fixed >> (8 * i));
    Result<bundle::Bundle> parsed = bundle::parse(damaged);
    if (!parsed.ok()) continue;
    Result<Package> read = read_package(*parsed);
    if (read.ok()) (void)check_package(*read, LoadCheck{});
  }
}

TEST(TritonModules, PathContract) {
  const std::string key(64, 'c');
  const std::string base32_key = std::string(50, 'A') + "27";
  for (const std::string& good :
       std::vector<std::string>{kCudaUtils, kLauncher, key + "/x.so", key + "/A-b_c.d.so",
                                base32_key + "/x.so", key + "/" + std::string(197, 'n') + ".so"}) {
    EXPECT_TRUE(is_triton_module_path(good)) << good;
  }
  for (const std::string& bad : std::vector<std::string>{"",
                                                         "x.so",
                                                         "/x.so",
                                                         "ab/cabc.so",
                                                         std::string(63, 'c') + "/x.so",
                                                         std::string(65, 'c') + "/x.so",
                                                         std::string(64, 'C') + "/x.so",
                                                         std::string(63, 'c') + "g/x.so",
                                                         std::string(51, 'A') + "/x.so",
                                                         std::string(53, 'A') + "/x.so",
                                                         std::string(51, 'A') + "8/x.so",
                                                         std::string(52, 'a') + "/x.so",
                                                         key + "/.so",
                                                         key + "/.hidden.so",
                                                         key + "/x.txt",
                                                         key + "/sub/x.so",
                                                         key + "/../x.so",
                                                         "/" + key + "/x.so",
                                                         key + "/x y.so",
                                                         key + "/x.so\n",
                                                         key + "\\x.so",
                                                         key + "/" + std::string(198, 'n') + ".so",
                                                         key + std::string("/x\0.so", 6),
                                                         key + "/",
                                                         base32_key + "/"}) {
    EXPECT_FALSE(is_triton_module_path(bad)) << bad;
  }
}

TEST(TritonModules, TravelInBothFormsAndOnlyWhenPresent) {
  const Package package = with_triton_modules(sample_package());
  Result<Package> binary = read_binary(write_package(package));
  ASSERT_TRUE(binary.ok()) << binary.status().to_string();
  EXPECT_EQ(difference(*binary, package), "");
  ASSERT_EQ(binary->triton_modules.size(), 2u);
  EXPECT_EQ(binary->triton_modules[0].path, kCudaUtils);
  EXPECT_EQ(binary->triton_modules[0].bytes, std::string("\x7f"
                                                         "ELF\0cuda utils",
                                                         15));

  test::TempDir tmp;
  ASSERT_TRUE(write_unpacked(package, tmp.path() + "/pkg").ok());
  EXPECT_EQ(*test::read_file(tmp.path() + "/pkg/triton_modules/" + kLauncher),
            "\x7f"
            "ELF launcher");
  Result<Package> unpacked = read_unpacked(tmp.path() + "/pkg", {});
  ASSERT_TRUE(unpacked.ok()) << unpacked.status().to_string();
  EXPECT_EQ(difference(*unpacked, package), "");

  // The manifest names them; one without any reads as every earlier version wrote it.
  EXPECT_TRUE(contains(describe(package), kCudaUtils));
  EXPECT_FALSE(contains(describe(sample_package()), "triton_modules"));
}

TEST(TritonModules, ReadRefusesPathsOutsideTheGrammar) {
  for (const std::string& bad :
       std::vector<std::string>{"../x.so", std::string(64, 'c') + "/../../x.so", "ab/cabc.so"}) {
    Package package = with_triton_modules(sample_package());
    package.triton_modules[0].path = bad;  // write_package does not check; the reader must
    Result<Package> read = read_binary(write_package(package));
    ASSERT_FALSE(read.ok()) << bad;
    EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument) << read.status().to_string();
    EXPECT_TRUE(contains(read.status().message(), bad)) << read.status().message();
  }
  test::TempDir tmp;
  const std::string dir = tmp.path() + "/pkg";
  ASSERT_TRUE(write_unpacked(with_triton_modules(sample_package()), dir).ok());
  ASSERT_TRUE(test::write_file(tmp.path() + "/x.so", "outside the package").ok());
  nlohmann::ordered_json manifest =
      nlohmann::ordered_json::parse(*test::read_file(dir + "/manifest.json"));
  manifest["triton_modules"][0] = "../../x.so";
  ASSERT_TRUE(test::write_file(dir + "/manifest.json", manifest.dump(2)).ok());
  Result<Package> read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument) << read.status().to_string();
  manifest["triton_modules"] = "not a list";
  ASSERT_TRUE(test::write_file(dir + "/manifest.json", manifest.dump(2)).ok());
  read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kCorruption) << read.status().to_string();
  EXPECT_TRUE(contains(read.status().message(), "triton_modules")) << read.status().message();
}

TEST(CudaJit, PathContract) {
  for (const std::string& good :
       std::vector<std::string>{"1/a/c877fdb2075fc7", "0/f/0", "9/9/" + std::string(64, 'f')}) {
    EXPECT_TRUE(is_cuda_jit_path(good)) << good;
  }
  for (const std::string& bad :
       std::vector<std::string>{"", "index", "1/a", "1/a/", "1/a/G", "1/a/C877", "1a/b/c", "1/ab/c",
                                "/1/a/c", "1/a/c/d", "1/a/..", "../a/c", "1/a/c ", "1\\a\\c",
                                "9/9/" + std::string(65, 'f'), std::string("1/a/c\0", 6)}) {
    EXPECT_FALSE(is_cuda_jit_path(bad)) << bad;
  }
}

TEST(CudaJit, TravelInBothFormsAndOnlyWhenPresent) {
  const Package package = with_cuda_jit(sample_package());
  Result<Package> binary = read_binary(write_package(package));
  ASSERT_TRUE(binary.ok()) << binary.status().to_string();
  EXPECT_EQ(difference(*binary, package), "");
  ASSERT_EQ(binary->cuda_jit.size(), 2u);
  EXPECT_EQ(binary->cuda_jit[0].bytes, std::string("jit\0one", 7));

  test::TempDir tmp;
  ASSERT_TRUE(write_unpacked(package, tmp.path() + "/pkg").ok());
  EXPECT_EQ(*test::read_file(tmp.path() + "/pkg/cuda_jit/b/e/b3e48a12e5899a"), "jit two");
  Result<Package> unpacked = read_unpacked(tmp.path() + "/pkg", {});
  ASSERT_TRUE(unpacked.ok()) << unpacked.status().to_string();
  EXPECT_EQ(difference(*unpacked, package), "");

  EXPECT_TRUE(contains(describe(package), "c877fdb2075fc7"));
  EXPECT_FALSE(contains(describe(sample_package()), "cuda_jit"));
}

TEST(CudaJit, ReadRefusesPathsOutsideTheGrammar) {
  for (const std::string bad : {"../x", "1/a/../../x", "index", "1/a/c/d"}) {
    Package package = with_cuda_jit(sample_package());
    package.cuda_jit[0].path = bad;  // write_package does not check; the reader must
    Result<Package> read = read_binary(write_package(package));
    ASSERT_FALSE(read.ok()) << bad;
    EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument) << read.status().to_string();
    EXPECT_TRUE(contains(read.status().message(), bad)) << read.status().message();
  }
  test::TempDir tmp;
  const std::string dir = tmp.path() + "/pkg";
  ASSERT_TRUE(write_unpacked(with_cuda_jit(sample_package()), dir).ok());
  nlohmann::ordered_json manifest =
      nlohmann::ordered_json::parse(*test::read_file(dir + "/manifest.json"));
  manifest["cuda_jit"][0] = "../../../x";
  ASSERT_TRUE(test::write_file(dir + "/manifest.json", manifest.dump(2)).ok());
  Result<Package> read = read_unpacked(dir, {});
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument) << read.status().to_string();
}

// The package in tests/data/package_v1.mcpkg. Written by megacache 0.1.0 (manifest version 1,
// zstd level 3); set MEGACACHE_REGENERATE_GOLDEN=1 to rewrite it after a deliberate format
// change. The Mega-Cache blob is a tiny literal one: the torch fixtures are 250 KB and up.
Package golden_package() {
  Package package;
  package.fingerprint = {{"cpu_arch", "x86_64"},  {"cpu_flags", "avx2 fma"},
                         {"cxx", "g++ 12.2.0"},   {"megacache", "0.1.0"},
                         {"os", "Linux"},         {"python", "3.11.7"},
                         {"torch", "2.13.0+cpu"}, {"torch_git", "0123456789abcdef"}};
  FunctionPackage f;
  f.entry = make_entry("forward", "golden", 10, "cpu",
                       {{{"forward"}, {"__compiled_fn_1_golden"}},
                        {{"torch_dynamo_resume_in_forward_at_12"}, {"__compiled_fn_2_golden"}}},
                       std::string("\x80\x05golden dynamo entry\0", 21));
  f.entry.function.signature = "(x)";
  f.entry.function.source_sha256 = util::sha256_hex("def forward(x):\n    return x.sin()\n");
  f.entry.inlined_sources = {{"golden.layers", 3, 5, kLayersLines3To5}};
  f.backends = {{"__compiled_fn_1_golden", std::string("\x80\x05"
                                                       "backend one\0",
                                                       14)},
                {"__compiled_fn_2_golden",
                 "\x80\x05"
                 "backend two"}};
  package.functions = {std::move(f)};
  package.kernels = {{"ab/cabc.so", "ELF-test"}};
  package.mega_cache =
      test::make_blob({{"inductor", {{"fgolden", "golden graph"}}},
                       {"autotune", {{"ab/cabc.best_config", R"({"XBLOCK": 64})"}}}});
  return package;
}

// Reads tests/data/<name>, checks that it holds `golden` and that write_package still writes it
// byte for byte, and returns what it read for the caller's own checks. With
// MEGACACHE_REGENERATE_GOLDEN=1 the file is rewritten first, after a deliberate format change.
std::optional<Package> read_golden_file(const std::string& name, const Package& golden) {
  const std::string path = std::string(MEGACACHE_TEST_DATA) + "/" + name;
  if (const char* regenerate = std::getenv("MEGACACHE_REGENERATE_GOLDEN");
      regenerate != nullptr && std::string(regenerate) == "1") {
    EXPECT_TRUE(test::write_file(path, write_package(golden)).ok());
  }
  const std::string file = test::read_test_file(name);
  if (file.empty()) {
    ADD_FAILURE() << path << " is missing";
    return std::nullopt;
  }
  Result<Package> read = read_binary(file);
  if (!read.ok()) {
    ADD_FAILURE() << path << ": " << read.status().to_string();
    return std::nullopt;
  }
  EXPECT_EQ(difference(*read, golden), "");
  EXPECT_TRUE(write_package(golden) == file)
      << "write_package no longer reproduces " << path
      << "; if the change is deliberate, run with MEGACACHE_REGENERATE_GOLDEN=1";
  return std::move(read).value();
}

TEST(PackageGolden, ReadsAndReproducesTheGoldenFile) {
  const std::optional<Package> read = read_golden_file("package_v1.mcpkg", golden_package());
  ASSERT_TRUE(read);
  ASSERT_EQ(read->functions.size(), 1u);
  const FunctionPackage& f = read->functions[0];
  EXPECT_EQ(f.entry.key(), source_key("forward", 10));
  EXPECT_EQ(f.entry.function.module, "golden");
  EXPECT_EQ(f.entry.function.signature, "(x)");
  EXPECT_EQ(f.entry.device_type, "cpu");
  EXPECT_EQ(f.entry.pickle, std::string("\x80\x05golden dynamo entry\0", 21));
  EXPECT_EQ(f.backends.size(), 2u);
  EXPECT_EQ(f.backends.at("__compiled_fn_2_golden"),
            "\x80\x05"
            "backend two");
  ASSERT_EQ(read->kernels.size(), 1u);
  EXPECT_EQ(read->kernels[0].path, "ab/cabc.so");
  EXPECT_EQ(read->kernels[0].bytes, "ELF-test");
  EXPECT_EQ(read->fingerprint.size(), 8u);
  Result<MegaCache> cache = mega_cache::parse(read->mega_cache);
  ASSERT_TRUE(cache.ok()) << cache.status().to_string();
  EXPECT_EQ(cache->groups.size(), 2u);
}

// tests/data/package_v1_triton_modules.mcpkg: the golden package as a CUDA process makes it,
// with Triton's driver helper and a kernel launcher (the optional "triton_modules").
TEST(PackageGolden, ReadsAndReproducesTheGoldenFileWithTritonModules) {
  const std::optional<Package> read =
      read_golden_file("package_v1_triton_modules.mcpkg", with_triton_modules(golden_package()));
  ASSERT_TRUE(read);
  ASSERT_EQ(read->triton_modules.size(), 2u);
  EXPECT_EQ(read->triton_modules[1].path, kLauncher);
  EXPECT_EQ(read->triton_modules[1].bytes,
            "\x7f"
            "ELF launcher");
}

// tests/data/package_v1_cuda_jit.mcpkg: the golden package as a process on a GPU makes it
// after cuDNN's attention ran, with two CUDA JIT cache entries (the optional "cuda_jit").
TEST(PackageGolden, ReadsAndReproducesTheGoldenFileWithCudaJitEntries) {
  const std::optional<Package> read =
      read_golden_file("package_v1_cuda_jit.mcpkg", with_cuda_jit(golden_package()));
  ASSERT_TRUE(read);
  ASSERT_EQ(read->cuda_jit.size(), 2u);
  EXPECT_EQ(read->cuda_jit[1].path, "b/e/b3e48a12e5899a");
  EXPECT_EQ(read->cuda_jit[1].bytes, "jit two");
}

}  // namespace
}  // namespace megacache::precompile
