#include <gtest/gtest.h>

#include <dlfcn.h>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "megacache/bundle.h"
#include "megacache/precompile.h"
#include "megacache/store.h"
#include "package_samples.h"
#include "test_util.h"
#include "util/file_system.h"

namespace megacache::precompile {
namespace {

using mega_cache::MegaCache;
using test::read_tree;

// --- keys and source hashes ---

TEST(Precompile, SourceKeyIsTorchsSourceId) {
  // torch._dynamo.package._hash_source... source_id for qualname "f" at line 7, from torch.
  EXPECT_EQ(source_key("f", 7), "9327ca99aaea2b8f025e61e53b64fcdd38d7e5c0ad893c4ed271d3622ac14548");
  EXPECT_EQ(source_key("f", 7), util::sha256_hex("f7"));
  // torch concatenates without a separator, so "f1" at line 7 and "f" at line 17 share a key.
  EXPECT_EQ(source_key("f", 17), source_key("f1", 7));
  EXPECT_NE(source_key("f", 17), source_key("f", 7));
  EXPECT_EQ(make_entry("Model.forward", "m", 12, "cpu", {}, "").key(),
            util::sha256_hex("Model.forward12"));
}

TEST(Precompile, HashSourceLinesMirrorsTorch) {
  // Expected values computed with python3 (hashlib only), slicing as inspect.getsourcelines
  // does (linecache reads the file with readlines(), which keeps each "\n"):
  //   lines = io.StringIO(text).readlines()
  //   hashlib.sha256("".join(lines[first - 1:last - 1]).encode()).hexdigest()
  const std::string& text = kLayersSource;  // 6 lines, final newline
  EXPECT_EQ(hash_source_lines(text, 1, 7),
            "bd649f04990089df7365f808adcc43eeefcb087eeea5f470145021913b33b956");
  EXPECT_EQ(hash_source_lines(text, 1, 7), util::sha256_hex(text));
  EXPECT_EQ(hash_source_lines(text, 3, 5), kLayersLines3To5);
  EXPECT_EQ(hash_source_lines(text, 3, 5), util::sha256_hex("def helper(x):\n    return x * 2\n"));
  EXPECT_EQ(hash_source_lines(text, 1, 2),
            "b91a3bc5e2064d025a8ae122555c96948ec5b4895d53d809c4b66b71a4915133");
  EXPECT_EQ(hash_source_lines(text, 6, 7),
            "027e5c8ff4801bb6510be3ca89f16b824cda0953eb2bb5ef4024cfc08f11f4a0");
  // last_line beyond the end: the slice stops at the end.
  EXPECT_EQ(hash_source_lines(text, 4, 100),
            "580f93d5e25b0e4d1e5e47415218b56d2a9eb2d532602823ae454a7e5a0d0728");
  // last_line is exclusive: [3, 3) is empty.
  EXPECT_EQ(hash_source_lines(text, 3, 3),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");

  const std::string no_newline = "a = 1\nb = 2\nc = 3";  // no final newline
  EXPECT_EQ(hash_source_lines(no_newline, 1, 4),
            "39a11e4e460e09b0692d3be509dfdefd4b38893fa09cad4a8dd4f376595e0c62");
  EXPECT_EQ(hash_source_lines(no_newline, 2, 4),
            "d224ff9ee9a2a0e9ba7849ea2a16fab0e2039684fea925b1f09586d3ea8501a6");
  EXPECT_EQ(hash_source_lines(no_newline, 3, 10),
            "46c7044c8b0a3ba6a3ac891861ab9c33aecfb2256765eda0474b7314ff49e2d2");
}

// --- PrecompileContext ---

// "fa" (line 1) has code 0 -> b1 and code 1 -> b3, b2; "gb" (line 2) has code 0 -> b4.
// b2 is never recorded.
void record_two(PrecompileContext& context) {
  context.record_dynamo_entry(make_entry(
      "fa", "mod", 1, "cuda", {{{"fa"}, {"b1"}}, {{"fa_resume"}, {"b3", "b2"}}}, "entry fa"));
  context.record_dynamo_entry(make_entry("gb", "mod", 2, "cpu", {{{"gb"}, {"b4"}}}, "entry gb"));
  context.record_backend("b1", "pickle b1");
  context.record_backend("b3", "pickle b3");
  context.record_backend("b4", "pickle b4");
}

const FunctionPackage* find_in(const std::vector<FunctionPackage>& packages,
                               const std::string& qualname) {
  for (const FunctionPackage& p : packages) {
    if (p.entry.function.qualname == qualname) return &p;
  }
  return nullptr;
}

TEST(PrecompileContext, StitchesBackendsPerFunctionAndBypassesMissingOnes) {
  PrecompileContext context;
  record_two(context);
  const std::vector<FunctionPackage> packages = context.stitch();
  ASSERT_EQ(packages.size(), 2u);

  const FunctionPackage* gb = find_in(packages, "gb");
  ASSERT_NE(gb, nullptr);
  EXPECT_EQ(gb->entry.pickle, "entry gb");
  EXPECT_EQ(gb->backends, (std::map<std::string, std::string>{{"b4", "pickle b4"}}));
  EXPECT_TRUE(gb->bypassed.empty());

  // fa keeps its entry; code 1 is bypassed for b2, and b3 (found, but of that code) is left out.
  const FunctionPackage* fa = find_in(packages, "fa");
  ASSERT_NE(fa, nullptr);
  EXPECT_EQ(fa->entry.pickle, "entry fa");
  EXPECT_EQ(fa->entry.codes.size(), 2u);
  EXPECT_EQ(fa->backends, (std::map<std::string, std::string>{{"b1", "pickle b1"}}));
  ASSERT_EQ(fa->bypassed.size(), 1u);
  EXPECT_EQ(fa->bypassed[0].code, 1u);
  EXPECT_EQ(fa->bypassed[0].backend_id, "b2");
  EXPECT_TRUE(contains(fa->bypassed[0].reason, "b2")) << fa->bypassed[0].reason;

  // `only` selects by source key.
  const std::vector<FunctionPackage> only = context.stitch({source_key("gb", 2)});
  ASSERT_EQ(only.size(), 1u);
  EXPECT_EQ(only[0].entry.function.qualname, "gb");
  EXPECT_TRUE(context.stitch({source_key("nothing", 9)}).empty());

  // Recording the missing backend later un-bypasses the code.
  context.record_backend("b2", "pickle b2");
  const std::vector<FunctionPackage> restitched = context.stitch();
  const FunctionPackage* again = find_in(restitched, "fa");
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->bypassed.empty());
  EXPECT_EQ(again->backends.size(), 3u);
}

TEST(PrecompileContext, RecordReplacesByKeyAndId) {
  PrecompileContext context;
  record_two(context);
  context.record_dynamo_entry(make_entry("fa", "mod", 1, "cpu", {{{"fa"}, {"b1"}}}, "entry fa v2"));
  context.record_backend("b1", "pickle b1 v2");
  const std::vector<FunctionPackage> packages = context.stitch();
  ASSERT_EQ(packages.size(), 2u);
  const FunctionPackage* fa = find_in(packages, "fa");
  ASSERT_NE(fa, nullptr);
  EXPECT_EQ(fa->entry.pickle, "entry fa v2");
  EXPECT_EQ(fa->entry.device_type, "cpu");
  EXPECT_TRUE(fa->bypassed.empty());
  EXPECT_EQ(fa->backends, (std::map<std::string, std::string>{{"b1", "pickle b1 v2"}}));
  // Same qualname at another line is another entry.
  context.record_dynamo_entry(make_entry("fa", "mod", 30, "cpu", {}, "entry fa at 30"));
  EXPECT_EQ(context.stitch().size(), 3u);
}

TEST(PrecompileContext, SerializeAndEditArtifactByKey) {
  PrecompileContext context;
  record_two(context);
  EXPECT_EQ(context.serialize_artifact_by_key("b3"), std::optional<std::string>("pickle b3"));
  EXPECT_EQ(context.serialize_artifact_by_key("b2"), std::nullopt);

  ASSERT_TRUE(context
                  .edit_artifact("b1",
                                 [](std::string_view old) -> Result<std::string> {
                                   return std::string(old) + " edited";
                                 })
                  .ok());
  EXPECT_EQ(context.serialize_artifact_by_key("b1"),
            std::optional<std::string>("pickle b1 edited"));
  EXPECT_EQ(find_in(context.stitch(), "fa")->backends.at("b1"), "pickle b1 edited");

  bool called = false;
  const Status missing = context.edit_artifact("b2", [&](std::string_view) -> Result<std::string> {
    called = true;
    return std::string("x");
  });
  EXPECT_EQ(missing.code(), Status::Code::kNotFound);
  EXPECT_TRUE(contains(missing.message(), "b2")) << missing.message();
  EXPECT_FALSE(called);
  EXPECT_EQ(context.serialize_artifact_by_key("b2"), std::nullopt);

  const Status refused = context.edit_artifact("b3", [](std::string_view) -> Result<std::string> {
    return Status::InvalidArgument("cannot rewrite this pickle");
  });
  EXPECT_EQ(refused.code(), Status::Code::kInvalidArgument);
  EXPECT_EQ(refused.message(), "cannot rewrite this pickle");
  EXPECT_EQ(context.serialize_artifact_by_key("b3"), std::optional<std::string>("pickle b3"));
}

TEST(PrecompileContext, ClearAndEmpty) {
  PrecompileContext context;
  EXPECT_TRUE(context.empty());
  context.record_backend("b1", "x");
  EXPECT_FALSE(context.empty());
  context.clear();
  EXPECT_TRUE(context.empty());
  context.record_dynamo_entry(make_entry("fa", "mod", 1, "cpu", {}, "e"));
  EXPECT_FALSE(context.empty());
  record_two(context);
  context.clear();
  EXPECT_TRUE(context.empty());
  EXPECT_TRUE(context.stitch().empty());
  EXPECT_EQ(context.serialize_artifact_by_key("b1"), std::nullopt);
}

TEST(PrecompileContext, DebugInfoJsonListsEntriesAndBackends) {
  PrecompileContext context;
  record_two(context);
  const nlohmann::json info = nlohmann::json::parse(context.debug_info_json());
  ASSERT_TRUE(info.at("dynamo").is_array());
  ASSERT_EQ(info.at("dynamo").size(), 2u);
  EXPECT_EQ(info.at("backends"), nlohmann::json({"b1", "b3", "b4"}));
  const nlohmann::json* fa = nullptr;
  const nlohmann::json* gb = nullptr;
  for (const nlohmann::json& entry : info.at("dynamo")) {
    if (entry.at("fn_name") == "fa") fa = &entry;
    if (entry.at("fn_name") == "gb") gb = &entry;
  }
  ASSERT_NE(fa, nullptr);
  ASSERT_NE(gb, nullptr);
  EXPECT_EQ(fa->at("key"), source_key("fa", 1));
  EXPECT_EQ(fa->at("fn_first_lineno"), 1);
  EXPECT_EQ(fa->at("module"), "mod");
  EXPECT_EQ(fa->at("device_type"), "cuda");
  EXPECT_EQ(fa->at("num_codes"), 2);
  EXPECT_EQ(fa->at("backend_ids"), nlohmann::json({"b1", "b2", "b3"}));
  ASSERT_EQ(fa->at("bypassed").size(), 1u);
  EXPECT_EQ(fa->at("bypassed")[0].at("backend_id"), "b2");
  EXPECT_TRUE(fa->at("bypassed")[0].at("reason").is_string());
  EXPECT_EQ(gb->at("key"), source_key("gb", 2));
  EXPECT_EQ(gb->at("fn_first_lineno"), 2);
  EXPECT_EQ(gb->at("device_type"), "cpu");
  EXPECT_EQ(gb->at("backend_ids"), nlohmann::json({"b4"}));
  EXPECT_TRUE(gb->at("bypassed").empty());

  PrecompileContext empty;
  EXPECT_EQ(nlohmann::json::parse(empty.debug_info_json()),
            nlohmann::json::parse(R"({"dynamo": [], "backends": []})"));
}

TEST(PrecompileContext, SerializeWritesTheStitchedPackage) {
  PrecompileContext context;
  record_two(context);
  const std::vector<KernelFile> kernels = {{"ab/cabc.so", "ELF-test"}};
  const std::string blob = test::small_blob();
  const Package package = context.package(kFingerprint, kernels, blob);
  EXPECT_EQ(package.functions.size(), 2u);
  EXPECT_EQ(package.fingerprint, kFingerprint);
  // torch's own DynamoCache entries are left out; every other group is kept as it was.
  Result<MegaCache> all = mega_cache::parse(blob);
  Result<MegaCache> kept = mega_cache::parse(package.mega_cache);
  ASSERT_TRUE(all.ok() && kept.ok());
  std::vector<std::string> expected_types, kept_types;
  for (const auto& group : all->groups) {
    if (group.type != mega_cache::kPrecompile) expected_types.push_back(group.type);
  }
  for (const auto& group : kept->groups) kept_types.push_back(group.type);
  EXPECT_EQ(kept_types, expected_types);
  EXPECT_LT(kept_types.size(), all->groups.size());
  EXPECT_EQ(context.package(kFingerprint, {}, package.mega_cache).mega_cache, package.mega_cache);
  const std::string file = context.serialize(kFingerprint, kernels, blob);
  EXPECT_EQ(file, write_package(package));
  Result<Package> read = read_binary(file);
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  EXPECT_EQ(difference(*read, package), "");
  EXPECT_EQ(context.package(kFingerprint, {}, "", {source_key("gb", 2)}).functions.size(), 1u);
}

// --- check_package ---

LoadCheck same_environment() {
  LoadCheck check;
  check.current = kFingerprint;
  return check;
}

Package cpu_only_package() {
  Package package = sample_package();
  package.functions.erase(package.functions.begin());  // drops the CUDA function
  package.kernels.clear();
  return package;
}

TEST(PackageCheck, IdenticalFingerprintsPass) {
  EXPECT_TRUE(check_package(sample_package(), same_environment()).ok());
  EXPECT_TRUE(check_package(cpu_only_package(), same_environment()).ok());
}

TEST(PackageCheck, PythonAndTorchMustMatch) {
  LoadCheck check = same_environment();
  check.current = with(kFingerprint, "torch", "2.13.0+cpu");
  Status status = check_package(cpu_only_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_EQ(status.message(), "package built with torch 2.11.0+cu130, this is 2.13.0+cpu");

  check.current = with(kFingerprint, "python", "3.12.1");
  status = check_package(cpu_only_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_EQ(status.message(), "package built with python 3.11.7, this is 3.12.1");

  // A field this process lacks is shown as "(none)".
  check.current = kFingerprint;
  check.current.erase(check.current.begin() + 8);  // torch_git
  status = check_package(cpu_only_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_EQ(status.message(), "package built with torch_git 0123abcd, this is (none)");
}

TEST(PackageCheck, CudaFieldsOnlyForCudaEntries) {
  for (const std::string name : {"cuda", "triton", "gpu", "gpu_capability"}) {
    LoadCheck check = same_environment();
    check.current = with(kFingerprint, name, "other");
    EXPECT_TRUE(check_package(cpu_only_package(), check).ok()) << name;
    const Status status = check_package(sample_package(), check);
    EXPECT_EQ(status.code(), Status::Code::kMismatch) << name;
    EXPECT_TRUE(contains(status.message(), "package built with " + name + " ")) << status.message();
    EXPECT_TRUE(contains(status.message(), ", this is other")) << status.message();
  }
}

TEST(PackageCheck, CpuAndCompilerFieldsOnlyWithKernels) {
  for (const std::string name : {"cpu_flags", "cxx", "cpu_arch"}) {
    LoadCheck check = same_environment();
    check.current = with(kFingerprint, name, "other");
    EXPECT_TRUE(check_package(cpu_only_package(), check).ok()) << name;
    Package with_kernels = cpu_only_package();
    with_kernels.kernels = {{"ab/cabc.so", "ELF-test"}};
    const Status status = check_package(with_kernels, check);
    EXPECT_EQ(status.code(), Status::Code::kMismatch) << name;
    EXPECT_TRUE(contains(status.message(), "package built with " + name + " ")) << status.message();
  }
  // Fields nobody checks may differ.
  LoadCheck check = same_environment();
  check.current.emplace_back("os", "Linux 6.1");
  EXPECT_TRUE(check_package(sample_package(), check).ok());
}

FunctionIdentity helper_identity() { return {"helper", "app.util", 4, "(x, y=1)", ""}; }

TEST(PackageCheck, FunctionMustBeInThePackage) {
  LoadCheck check = same_environment();
  check.function = helper_identity();
  EXPECT_TRUE(check_package(sample_package(), check).ok());

  check.function = FunctionIdentity{"other", "app.util", 9, "", ""};
  const Status status = check_package(sample_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_TRUE(contains(status.message(), "app.util.other (line 9)")) << status.message();
  EXPECT_TRUE(contains(status.message(), "app.model.Model.forward (line 12)")) << status.message();
  EXPECT_TRUE(contains(status.message(), "app.util.helper (line 4)")) << status.message();

  // Same name, other line: another function.
  check.function = FunctionIdentity{"helper", "app.util", 5, "", ""};
  EXPECT_EQ(check_package(sample_package(), check).code(), Status::Code::kMismatch);

  Package empty;
  empty.fingerprint = kFingerprint;
  const Status none = check_package(empty, check);
  EXPECT_EQ(none.code(), Status::Code::kMismatch);
  EXPECT_TRUE(contains(none.message(), "nothing")) << none.message();
}

TEST(PackageCheck, SignatureMustMatch) {
  LoadCheck check = same_environment();
  check.function = helper_identity();
  check.function->signature = "(x, y=2)";
  const Status status = check_package(sample_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_TRUE(contains(status.message(), "(x, y=1)")) << status.message();
  EXPECT_TRUE(contains(status.message(), "(x, y=2)")) << status.message();
  // An unknown signature on either side is not a mismatch.
  check.function->signature = "";
  EXPECT_TRUE(check_package(sample_package(), check).ok());
}

TEST(PackageCheck, SourceChangesUnlessIgnored) {
  LoadCheck check = same_environment();
  check.function =
      FunctionIdentity{"Model.forward", "app.model", 12, "(self, x)", std::string(64, 'a')};
  EXPECT_TRUE(check_package(sample_package(), check).ok());
  check.function->source_sha256 = std::string(64, 'b');
  const Status status = check_package(sample_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_TRUE(contains(status.message(), "changed")) << status.message();
  EXPECT_TRUE(contains(status.message(), "aaaaaaaaaaaa")) << status.message();
  EXPECT_TRUE(contains(status.message(), "bbbbbbbbbbbb")) << status.message();
  check.ignore_source_changes = true;
  EXPECT_TRUE(check_package(sample_package(), check).ok());
}

TEST(PackageCheck, InlinedSourcesAreRehashed) {
  LoadCheck check = same_environment();
  std::map<std::string, std::string> modules = {{"app.layers", kLayersSource}};
  std::vector<std::string> asked;
  check.module_source = [&](const std::string& module) -> std::optional<std::string> {
    asked.push_back(module);
    auto it = modules.find(module);
    if (it == modules.end()) return std::nullopt;
    return it->second;
  };
  EXPECT_TRUE(check_package(sample_package(), check).ok());
  EXPECT_EQ(asked, std::vector<std::string>{"app.layers"});

  // A change outside lines [3, 5) does not matter; one inside does.
  modules["app.layers"] =
      "import torch  # edited\n\ndef helper(x):\n    return x * 2\n\nlast = 2\n";
  EXPECT_TRUE(check_package(sample_package(), check).ok());
  modules["app.layers"] = "import torch\n\ndef helper(x):\n    return x * 3\n\nlast = 1\n";
  Status status = check_package(sample_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_TRUE(contains(status.message(), "app.layers lines 3-5")) << status.message();
  EXPECT_TRUE(contains(status.message(), "Model.forward")) << status.message();
  EXPECT_TRUE(contains(status.message(), "changed")) << status.message();

  // Loading only the function that inlined nothing does not look at the module.
  check.function = helper_identity();
  EXPECT_TRUE(check_package(sample_package(), check).ok());
  check.function.reset();

  check.ignore_source_changes = true;
  EXPECT_TRUE(check_package(sample_package(), check).ok());
  check.ignore_source_changes = false;

  modules.clear();
  status = check_package(sample_package(), check);
  EXPECT_EQ(status.code(), Status::Code::kMismatch);
  EXPECT_TRUE(contains(status.message(), "app.layers lines 3-5")) << status.message();
  EXPECT_TRUE(contains(status.message(), "cannot be read")) << status.message();
}

// --- populate_package ---

TEST(PackagePopulate, WritesKernelsAndMegaCacheArtifacts) {
  const std::string blob = test::read_test_file("mega_graphbreak.bin");
  Package package = sample_package();
  package.mega_cache = blob;
  test::TempDir expected_dir;
  Result<MegaCache> cache = mega_cache::parse(blob);
  ASSERT_TRUE(cache.ok());
  ASSERT_TRUE(populate(*cache, expected_dir.path()).ok());
  std::map<std::string, std::string> expected = read_tree(expected_dir.path());
  ASSERT_FALSE(expected.empty());
  expected["ab/cabcdefghij.so"] = std::string(
      "\x7f"
      "ELF\0\1\2kernel one",
      17);
  expected["x_/cx_9.kernel.so"] =
      "\x7f"
      "ELF kernel two";

  test::TempDir dir;
  Result<PopulateReport> report = populate_package(package, dir.path());
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ(read_tree(dir.path()), expected);
  EXPECT_EQ(report->files_written, expected.size());
  EXPECT_EQ(report->files_unchanged, 0u);
  EXPECT_GT(report->info.count("inductor"), 0u);

  Result<PopulateReport> again = populate_package(package, dir.path());
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again->files_written, 0u);
  EXPECT_EQ(again->files_unchanged, expected.size());
  EXPECT_EQ(read_tree(dir.path()), expected);

  // A kernel changed on disk is written again.
  ASSERT_TRUE(test::write_file(dir.path() + "/ab/cabcdefghij.so", "other").ok());
  Result<PopulateReport> repaired = populate_package(package, dir.path());
  ASSERT_TRUE(repaired.ok());
  EXPECT_EQ(repaired->files_written, 1u);
  EXPECT_EQ(read_tree(dir.path()), expected);

  // No Mega-Cache blob: only the kernels.
  package.mega_cache.clear();
  test::TempDir kernels_only;
  Result<PopulateReport> kernels = populate_package(package, kernels_only.path());
  ASSERT_TRUE(kernels.ok());
  EXPECT_EQ(kernels->files_written, 2u);
  EXPECT_EQ(read_tree(kernels_only.path()).size(), 2u);
}

// A populate that fails at any write stops with an IOError (or passes over a Triton dir it
// cannot write, as documented), leaves only whole files, and the next populate completes.
TEST(PackagePopulate, FailingAtAnyWriteLeavesWholeFilesAndTheNextRunCompletes) {
  Package package = with_triton_modules(sample_package());
  package.mega_cache = test::read_test_file("mega_graphbreak.bin");
  test::TempDir expected_dir;
  ASSERT_TRUE(
      populate_package(package, expected_dir.path() + "/torch", {expected_dir.path() + "/triton"})
          .ok());
  const std::map<std::string, std::string> expected = read_tree(expected_dir.path());
  for (int allowed = 0;; ++allowed) {
    test::TempDir dir;
    test::FailingFileSystem failing(allowed);
    Result<PopulateReport> report =
        populate_package(package, dir.path() + "/torch", {dir.path() + "/triton"}, {}, failing);
    if (!report.ok()) {
      EXPECT_EQ(report.status().code(), Status::Code::kIOError) << report.status().to_string();
    }
    for (const auto& [path, bytes] : read_tree(dir.path())) {
      ASSERT_TRUE(expected.count(path)) << "allowed " << allowed << ": unexpected file " << path;
      EXPECT_EQ(bytes, expected.at(path))
          << "allowed " << allowed << ": " << path << " is not whole";
    }
    ASSERT_TRUE(populate_package(package, dir.path() + "/torch", {dir.path() + "/triton"}).ok());
    EXPECT_EQ(read_tree(dir.path()), expected) << "allowed " << allowed;
    if (failing.writes() <= allowed) {
      ASSERT_TRUE(report.ok()) << report.status().to_string();
      EXPECT_EQ(static_cast<size_t>(allowed), expected.size());
      break;
    }
  }
}

TEST(PackagePopulate, KernelPathContract) {
  for (const std::string& good :
       std::vector<std::string>{"ab/cabc.so", "5u/c5ujs.yugwe.so", "a_/x.so", "09/_.so", "ab/x..so",
                                "ab/" + std::string(197, 'n') + ".so"}) {
    EXPECT_TRUE(is_kernel_path(good)) << good;
  }
  for (const std::string& bad : std::vector<std::string>{"",
                                                         "a/b.so",
                                                         "../ab/c.so",
                                                         "ab/.so",
                                                         "ab/x.txt",
                                                         "AB/c.so",
                                                         "ab/C.so",
                                                         "ab/c/d.so",
                                                         "abc/d.so",
                                                         "/ab/c.so",
                                                         "ab/.hidden.so",
                                                         "ab/c.so/",
                                                         "ab\\c.so",
                                                         "a./c.so",
                                                         "..//x.so",
                                                         "ab/../x.so",
                                                         "ab/c-d.so",
                                                         "ab/c d.so",
                                                         "ab/c.so\n",
                                                         std::string("ab/c\0.so", 8),
                                                         "ab/" + std::string(198, 'n') + ".so"}) {
    EXPECT_FALSE(is_kernel_path(bad)) << bad;
  }
}

TEST(PackagePopulate, UnsafeKernelPathWritesNothing) {
  for (const std::string bad :
       {"a/b.so", "../ab/c.so", "ab/.so", "ab/x.txt", "AB/c.so", "ab/../../x.so"}) {
    Package package = sample_package();
    package.mega_cache = test::read_test_file("mega_mlp_infer.bin");
    package.kernels.push_back({bad, "ELF-test"});  // after a good one
    test::TempDir dir;
    Result<PopulateReport> report = populate_package(package, dir.path() + "/cache");
    ASSERT_FALSE(report.ok()) << bad;
    EXPECT_EQ(report.status().code(), Status::Code::kInvalidArgument) << bad;
    EXPECT_TRUE(contains(report.status().message(), bad)) << report.status().message();
    EXPECT_TRUE(read_tree(dir.path()).empty()) << bad;
  }
  // An invalid Mega-Cache blob is refused before any kernel is written, too.
  Package package = sample_package();
  package.mega_cache = "not a mega cache";
  test::TempDir dir;
  EXPECT_FALSE(populate_package(package, dir.path()).ok());
  EXPECT_TRUE(read_tree(dir.path()).empty());
}

TEST(PackagePopulate, RefusesAnEmptyCacheDir) {
  Package package;
  package.kernels = {{"zq/cmegacachetest.so", "ELF"}};
  Result<PopulateReport> report = populate_package(package, "");
  ASSERT_FALSE(report.ok());
  EXPECT_EQ(report.status().code(), Status::Code::kInvalidArgument);
}

TEST(PackagePopulate, ReadKernelsTakesOnlyKernelPathsSorted) {
  test::TempDir dir;
  for (const char* sub : {"zz", "ab", "toolong", "lo"})
    ASSERT_TRUE(test::make_dirs(dir.path() + "/" + sub).ok());
  ASSERT_TRUE(test::write_file(dir.path() + "/zz/cz.so", "two").ok());
  ASSERT_TRUE(test::write_file(dir.path() + "/ab/ca.main.so", "one").ok());
  ASSERT_TRUE(test::write_file(dir.path() + "/ab/ca.cpp", "source, not a library").ok());
  ASSERT_TRUE(test::write_file(dir.path() + "/toolong/c.so", "not a kernel dir").ok());
  ASSERT_TRUE(test::make_dirs(dir.path() + "/lo/cdir.so").ok());  // a directory
  Result<std::vector<KernelFile>> kernels = read_kernels(dir.path());
  ASSERT_TRUE(kernels.ok()) << kernels.status().to_string();
  ASSERT_EQ(kernels->size(), 2u);
  EXPECT_EQ((*kernels)[0].path, "ab/ca.main.so");
  EXPECT_EQ((*kernels)[0].bytes, "one");
  EXPECT_EQ((*kernels)[1].path, "zz/cz.so");
  Result<std::vector<KernelFile>> none = read_kernels(dir.path() + "/missing");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

TEST(Precompile, StoreNameSeparatesFunctionsSourcesAndEnvironments) {
  const FunctionIdentity f{"Model.forward", "app", 12, "(x)", std::string(64, 'a')};
  const bundle::Fingerprint here = {{"python", "3.11.7"}, {"torch", "2.13.0+cpu"}};
  const std::string name = store_name(f, here);
  EXPECT_EQ(name.rfind("precompile-Model.forward-", 0), 0u) << name;
  EXPECT_EQ(name.size(), std::string("precompile-Model.forward-").size() + 32);
  EXPECT_TRUE(store::check_name(name).ok());
  FunctionIdentity edited = f;
  edited.source_sha256 = std::string(64, 'b');
  EXPECT_NE(store_name(edited, here), name);
  FunctionIdentity moved = f;
  moved.first_line = 13;
  EXPECT_NE(store_name(moved, here), name);
  EXPECT_NE(store_name(f, {{"python", "3.12.3"}, {"torch", "2.13.0+cpu"}}), name);
  EXPECT_EQ(store_name(f, here), name);
  const FunctionIdentity odd{"<lambda>/x y", "app", 1, "", ""};
  EXPECT_TRUE(store::check_name(store_name(odd, here)).ok());
}

TEST(Precompile, MegaCacheStoreNameSeparatesEnvironments) {
  const bundle::Fingerprint here = {{"python", "3.11.7"}, {"torch", "2.16.0.dev"}};
  const std::string name = mega_cache_store_name(here);
  EXPECT_EQ(name.rfind("mega-cache-", 0), 0u) << name;
  EXPECT_EQ(name.size(), std::string("mega-cache-").size() + 32);
  EXPECT_TRUE(store::check_name(name).ok());
  EXPECT_EQ(mega_cache_store_name(here), name);
  EXPECT_NE(mega_cache_store_name({{"python", "3.11.7"}, {"torch", "2.16.1"}}), name);
  EXPECT_NE(mega_cache_store_name({{"python", "3.11.7"}}), name);
}

// --- Triton modules ---

TEST(TritonModules, CheckedAgainstTritonCudaOsAndArchitecture) {
  for (const std::string name : {"triton", "cuda", "os", "cpu_arch"}) {
    LoadCheck check = same_environment();
    check.current = with(kFingerprint, name, "other");
    if (name == "os") check.current.emplace_back("os", "other");
    EXPECT_TRUE(check_package(cpu_only_package(), check).ok()) << name;
    Package with_modules = cpu_only_package();
    with_modules.triton_modules = {{kCudaUtils, "ELF"}};
    const Status status = check_package(with_modules, check);
    EXPECT_EQ(status.code(), Status::Code::kMismatch) << name;
    EXPECT_TRUE(contains(status.message(), "package built with " + name + " ")) << status.message();
  }
}

TEST(TritonModules, PopulateWritesEveryTritonDirAndKeepsWhatTritonBuilt) {
  Package package = with_triton_modules(sample_package());
  package.mega_cache.clear();
  test::TempDir torch_dir, home_triton, torch_triton;
  const std::map<std::string, std::string> modules = {{kCudaUtils, package.triton_modules[0].bytes},
                                                      {kLauncher, package.triton_modules[1].bytes}};
  Result<PopulateReport> report = populate_package(
      package, torch_dir.path(), {home_triton.path(), torch_triton.path(), home_triton.path(), ""});
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ(read_tree(home_triton.path()), modules);
  EXPECT_EQ(read_tree(torch_triton.path()), modules);
  EXPECT_EQ(read_tree(torch_dir.path()).size(), 2u);  // the kernels only
  EXPECT_EQ(report->files_written, 2u + 4u);

  // Triton's own build of a module is left as it is: it may be loaded in this process.
  ASSERT_TRUE(test::write_file(home_triton.path() + "/" + kCudaUtils, "built here").ok());
  Result<PopulateReport> again = populate_package(package, torch_dir.path(), {home_triton.path()});
  ASSERT_TRUE(again.ok()) << again.status().to_string();
  EXPECT_EQ(again->files_written, 0u);
  EXPECT_EQ(read_tree(home_triton.path()).at(kCudaUtils), "built here");

  // A Triton dir that cannot be written (here a file stands where it would be) is passed over.
  test::TempDir mixed;
  ASSERT_TRUE(test::write_file(mixed.path() + "/blocked", "a file, not a dir").ok());
  Result<PopulateReport> partial = populate_package(
      package, mixed.path() + "/torch", {mixed.path() + "/blocked", mixed.path() + "/triton"});
  ASSERT_TRUE(partial.ok()) << partial.status().to_string();
  EXPECT_EQ(read_tree(mixed.path() + "/triton"), modules);
  EXPECT_EQ(read_tree(mixed.path() + "/torch").size(), 2u);
  EXPECT_EQ(*test::read_file(mixed.path() + "/blocked"), "a file, not a dir");

  // A path outside the grammar is refused before anything is written anywhere.
  package.triton_modules.push_back({"../x.so", "ELF"});
  test::TempDir fresh;
  Result<PopulateReport> refused =
      populate_package(package, fresh.path() + "/cache", {fresh.path() + "/triton"});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(read_tree(fresh.path()).empty());
}

TEST(TritonModules, ReadsWhatThisProcessLoadedFromATritonCacheDir) {
  const Result<std::string> module = test::read_file(MEGACACHE_LOADABLE_MODULE);
  ASSERT_TRUE(module.ok()) << module.status().to_string();
  test::TempDir cache, elsewhere;
  const std::string loaded = cache.path() + "/" + kCudaUtils;
  const std::string not_a_key = cache.path() + "/not-a-key/cuda_utils.so";
  const std::string outside = elsewhere.path() + "/" + kLauncher;
  for (const std::string& path :
       std::vector<std::string>{loaded, not_a_key, outside, cache.path() + "/" + kLauncher}) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    ASSERT_TRUE(test::write_file(path, *module).ok());
  }
  std::vector<void*> handles;
  for (const std::string& path :
       std::vector<std::string>{loaded, not_a_key, outside}) {  // never kLauncher under cache
    handles.push_back(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL));
    ASSERT_NE(handles.back(), nullptr) << dlerror();
  }
  // The cache dir named through a link, beside an empty name and a dir that does not exist.
  const std::string link = elsewhere.path() + "/link";
  std::filesystem::create_directory_symlink(cache.path(), link);
  Result<std::vector<KernelFile>> read =
      read_loaded_triton_modules({link, "", cache.path() + "/missing"});
  ASSERT_TRUE(read.ok()) << read.status().to_string();
  ASSERT_EQ(read->size(), 1u);
  EXPECT_EQ((*read)[0].path, kCudaUtils);
  EXPECT_TRUE((*read)[0].bytes == *module);

  Result<std::vector<KernelFile>> none = read_loaded_triton_modules({});
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  for (void* handle : handles) dlclose(handle);
}

// --- CUDA JIT cache entries ---

TEST(CudaJit, CheckedAgainstTheGpu) {
  for (const std::string name : {"gpu", "gpu_capability"}) {
    LoadCheck check = same_environment();
    check.current = with(kFingerprint, name, "other");
    EXPECT_TRUE(check_package(cpu_only_package(), check).ok()) << name;
    Package with_entries = cpu_only_package();
    with_entries.cuda_jit = {{"1/a/c877fdb2075fc7", "jit"}};
    const Status status = check_package(with_entries, check);
    EXPECT_EQ(status.code(), Status::Code::kMismatch) << name;
    EXPECT_TRUE(contains(status.message(), "package built with " + name + " ")) << status.message();
  }
}

TEST(CudaJit, PopulateInstallsForTheSameDriverOnlyAndKeepsTheDriversOwn) {
  Package package = with_cuda_jit(sample_package());
  package.mega_cache.clear();
  const std::map<std::string, std::string> entries = {
      {package.cuda_jit[0].path, package.cuda_jit[0].bytes},
      {package.cuda_jit[1].path, package.cuda_jit[1].bytes}};
  test::TempDir torch_dir, jit;
  // Another driver, no driver known here, no dir: nothing is installed, the rest is.
  for (const CudaJitTarget& target : {CudaJitTarget{jit.path(), "570.86.15"},
                                      CudaJitTarget{jit.path(), ""}, CudaJitTarget{"", kDriver}}) {
    Result<PopulateReport> report = populate_package(package, torch_dir.path(), {}, target);
    ASSERT_TRUE(report.ok()) << report.status().to_string();
    EXPECT_TRUE(read_tree(jit.path()).empty()) << target.driver;
    EXPECT_EQ(read_tree(torch_dir.path()).size(), 2u);  // the kernels
  }
  // A package recorded without its driver installs none either.
  Package unknown_driver = package;
  unknown_driver.fingerprint = sample_package().fingerprint;
  ASSERT_TRUE(populate_package(unknown_driver, torch_dir.path(), {}, {jit.path(), kDriver}).ok());
  EXPECT_TRUE(read_tree(jit.path()).empty());

  Result<PopulateReport> report =
      populate_package(package, torch_dir.path(), {}, {jit.path() + "/made", kDriver});
  ASSERT_TRUE(report.ok()) << report.status().to_string();
  EXPECT_EQ(read_tree(jit.path() + "/made"), entries);
  EXPECT_EQ(report->files_written, 2u);

  // The driver's own entry is left as it is.
  ASSERT_TRUE(test::write_file(jit.path() + "/made/1/a/c877fdb2075fc7", "the driver's").ok());
  Result<PopulateReport> again =
      populate_package(package, torch_dir.path(), {}, {jit.path() + "/made", kDriver});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->files_written, 0u);
  EXPECT_EQ(read_tree(jit.path() + "/made").at("1/a/c877fdb2075fc7"), "the driver's");

  // A cache dir that cannot be written is passed over.
  ASSERT_TRUE(test::write_file(jit.path() + "/blocked", "a file, not a dir").ok());
  ASSERT_TRUE(
      populate_package(package, torch_dir.path(), {}, {jit.path() + "/blocked", kDriver}).ok());
  EXPECT_EQ(*test::read_file(jit.path() + "/blocked"), "a file, not a dir");

  // A path outside the grammar is refused before anything is written anywhere.
  package.cuda_jit.push_back({"../x", "jit"});
  test::TempDir fresh;
  Result<PopulateReport> refused =
      populate_package(package, fresh.path() + "/cache", {}, {fresh.path() + "/jit", kDriver});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(read_tree(fresh.path()).empty());
}

TEST(CudaJit, ReadsTheEntriesWrittenSinceAndNothingElse) {
  test::TempDir jit;
  const std::string dir = jit.path() + "/ComputeCache";
  for (const std::string path : {"1/a/c877fdb2075fc7", "b/e/b3e48a12e5899a", "4/1/e7acff1d70198c",
                                 "index", "1/a/not-an-entry", "1/xx/c877"}) {
    std::filesystem::create_directories(std::filesystem::path(dir + "/" + path).parent_path());
    ASSERT_TRUE(test::write_file(dir + "/" + path, "bytes of " + path).ok());
  }
  const auto now = std::filesystem::last_write_time(dir + "/index");
  std::filesystem::last_write_time(dir + "/4/1/e7acff1d70198c",
                                   now - std::chrono::hours(1));  // an earlier process's
  const int64_t since = std::chrono::duration_cast<std::chrono::seconds>(
                            std::chrono::file_clock::to_sys(now).time_since_epoch())
                            .count() -
                        60;
  const std::vector<KernelFile> read = read_cuda_jit_entries(dir, since);
  ASSERT_EQ(read.size(), 2u);
  EXPECT_EQ(read[0].path, "1/a/c877fdb2075fc7");
  EXPECT_EQ(read[0].bytes, "bytes of 1/a/c877fdb2075fc7");
  EXPECT_EQ(read[1].path, "b/e/b3e48a12e5899a");
  EXPECT_EQ(list_cuda_jit_entries(dir, since),
            (std::vector<std::string>{"1/a/c877fdb2075fc7", "b/e/b3e48a12e5899a"}));
  EXPECT_EQ(read_cuda_jit_entries(dir, 0).size(), 3u);
  EXPECT_TRUE(read_cuda_jit_entries(jit.path() + "/missing", 0).empty());
  EXPECT_TRUE(list_cuda_jit_entries(jit.path() + "/missing", 0).empty());

  // An entry that cannot be read (here a link, which is never followed) is left out.
  std::filesystem::create_directories(dir + "/c/c");
  std::filesystem::create_symlink(dir + "/index", dir + "/c/c/cc");
  EXPECT_EQ(read_cuda_jit_entries(dir, 0).size(), 3u);
}

}  // namespace
}  // namespace megacache::precompile
