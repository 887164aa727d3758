#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/commands.h"
#include "test_util.h"
#include "util/file_system.h"

namespace megacache::cli {
namespace {

struct CliResult {
  int code;
  std::string out;
  std::string err;
};

CliResult run(const std::vector<std::string>& args) {
  std::ostringstream out;
  std::ostringstream err;
  const int code = run_cli(args, out, err);
  return {code, out.str(), err.str()};
}

std::string fixture(const std::string& name) {
  return std::string(MEGACACHE_TEST_DATA) + "/" + name;
}

TEST(Cli, InspectJsonListsWhatTorchLoads) {
  const CliResult r = run({"inspect", fixture("mega_graphbreak.bin"), "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto report = nlohmann::json::parse(r.out);
  EXPECT_EQ(report["counts"]["inductor"], 2);
  EXPECT_EQ(report["counts"]["aot_autograd"], 2);
  EXPECT_EQ(report["counts"]["autotune"], 1);
  ASSERT_EQ(report["artifacts"].size(), 5u);
  EXPECT_EQ(report["artifacts"][0]["type"], "inductor");
  EXPECT_EQ(report["artifacts"][0]["sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(report["crc_ok"], true);
  EXPECT_EQ(report["groups"].size(), 3u);
}

TEST(Cli, InspectHumanShowsGroupsAndArtifacts) {
  const CliResult r = run({"inspect", fixture("mega_mlp_infer.bin")});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("torch 2.8+ layout"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("torch loads: inductor=1 aot_autograd=1 autotune=1"), std::string::npos)
      << r.out;
}

// A package says what it carries besides its functions: kernels, and Triton's modules and
// the CUDA driver's JIT builds where it has them.
TEST(Cli, InspectHumanCountsWhatAPackageCarries) {
  const CliResult plain = run({"inspect", fixture("package_v1.mcpkg")});
  ASSERT_EQ(plain.code, 0) << plain.err;
  EXPECT_NE(plain.out.find("precompile package: 1 function(s), 1 kernel(s)\n"), std::string::npos)
      << plain.out;
  const CliResult triton = run({"inspect", fixture("package_v1_triton_modules.mcpkg")});
  ASSERT_EQ(triton.code, 0) << triton.err;
  EXPECT_NE(triton.out.find("1 kernel(s), 2 Triton module(s)\n"), std::string::npos) << triton.out;
  const CliResult jit = run({"inspect", fixture("package_v1_cuda_jit.mcpkg")});
  ASSERT_EQ(jit.code, 0) << jit.err;
  EXPECT_NE(jit.out.find("1 kernel(s), 2 CUDA JIT build(s)\n"), std::string::npos) << jit.out;
  EXPECT_NE(jit.out.find("cuda_driver: 580.159.04"), std::string::npos) << jit.out;
}

TEST(Cli, VerifyAndPopulate) {
  test::TempDir dir;
  EXPECT_EQ(run({"verify", fixture("mega_dynamic.bin")}).code, 0);
  const CliResult populated =
      run({"populate", fixture("mega_dynamic.bin"), "--cache-dir", dir.path(), "--json"});
  ASSERT_EQ(populated.code, 0) << populated.err;
  EXPECT_EQ(nlohmann::json::parse(populated.out)["files_written"], 2);
  EXPECT_EQ(test::read_tree(dir.path()).size(), 2u);
}

TEST(Cli, InvalidInputExitsOneWithTheReason) {
  test::TempDir dir;
  const std::string hostile = dir.path() + "/hostile.bin";
  ASSERT_TRUE(
      test::write_file(hostile, test::make_blob({{"autotune", {{"../../evil", "{}"}}}})).ok());
  const CliResult r = run({"verify", hostile});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.err.find("'..' segment"), std::string::npos) << r.err;
  const CliResult json = run({"verify", hostile, "--json"});
  EXPECT_EQ(json.code, 1);
  EXPECT_EQ(nlohmann::json::parse(json.out)["ok"], false);
  EXPECT_EQ(run({"inspect", dir.path() + "/missing.bin"}).code, 1);
}

TEST(Cli, ConvertsToABundleAndBackLosslessly) {
  test::TempDir dir;
  const std::string bundle = dir.path() + "/g.mcb";
  const std::string back = dir.path() + "/g.bin";
  ASSERT_EQ(run({"convert", fixture("mega_graphbreak.bin"), bundle}).code, 0);
  ASSERT_EQ(run({"convert", bundle, back}).code, 0);
  EXPECT_EQ(test::read_tree(dir.path()).at("g.bin"), test::read_test_file("mega_graphbreak.bin"));

  const CliResult inspected = run({"inspect", bundle, "--json"});
  ASSERT_EQ(inspected.code, 0) << inspected.err;
  const auto report = nlohmann::json::parse(inspected.out);
  EXPECT_EQ(report["format"], "megacache-bundle");
  EXPECT_EQ(report["bundle"]["signature"]["status"], "unsigned");
  EXPECT_EQ(report["bundle"]["fingerprint"]["megacache"], "0.1.0");
  EXPECT_EQ(report["counts"]["inductor"], 2);
  EXPECT_LT(test::read_tree(dir.path()).at("g.mcb").size() * 4,
            test::read_test_file("mega_graphbreak.bin").size());

  test::TempDir cache;
  const CliResult populated = run({"populate", bundle, "--cache-dir", cache.path()});
  ASSERT_EQ(populated.code, 0) << populated.err;
  EXPECT_EQ(test::read_tree(cache.path()).size(), 5u);
}

TEST(Cli, SignedBundlesAndTrustedKeys) {
  test::TempDir dir;
  const std::string key = dir.path() + "/signer";
  const std::string other = dir.path() + "/other";
  const std::string bundle = dir.path() + "/signed.mcb";
  ASSERT_EQ(run({"keygen", key}).code, 0);
  ASSERT_EQ(run({"keygen", other}).code, 0);
  ASSERT_EQ(run({"convert", fixture("mega_dynamic.bin"), bundle, "--sign", key}).code, 0);

  EXPECT_EQ(run({"verify", bundle}).code, 0);
  EXPECT_EQ(run({"verify", bundle, "--trusted-key", key + ".pub"}).code, 0);
  const CliResult untrusted = run({"verify", bundle, "--trusted-key", other + ".pub"});
  EXPECT_EQ(untrusted.code, 1);
  EXPECT_NE(untrusted.err.find("not among the trusted keys"), std::string::npos) << untrusted.err;

  const std::string plain = dir.path() + "/plain.mcb";
  ASSERT_EQ(run({"convert", fixture("mega_dynamic.bin"), plain}).code, 0);
  const CliResult unsigned_run =
      run({"populate", plain, "--cache-dir", dir.path() + "/c", "--trusted-key", key + ".pub"});
  EXPECT_EQ(unsigned_run.code, 1);
  EXPECT_NE(unsigned_run.err.find("unsigned"), std::string::npos) << unsigned_run.err;
  EXPECT_FALSE(std::filesystem::exists(dir.path() + "/c"));

  const auto report =
      nlohmann::json::parse(run({"inspect", bundle, "--json", "--trusted-key", key + ".pub"}).out);
  EXPECT_EQ(report["bundle"]["signature"]["status"], "valid");
  EXPECT_EQ(report["bundle"]["signature"]["trusted"], true);
}

TEST(Cli, PushPullListGcAndStats) {
  test::TempDir dir;
  const std::string store = "file://" + dir.path() + "/store";
  ASSERT_EQ(run({"push", fixture("mega_mlp_infer.bin"), "--store", store}).code, 0);
  ASSERT_EQ(run({"push", fixture("mega_dynamic.bin"), "--store", store, "--name", "dyn"}).code, 0);
  const CliResult listed = run({"ls", "--store", store, "--json"});
  ASSERT_EQ(listed.code, 0) << listed.err;
  const auto entries = nlohmann::json::parse(listed.out)["entries"];
  ASSERT_EQ(entries.size(), 2u);
  EXPECT_EQ(entries[0]["name"], "dyn");
  EXPECT_EQ(entries[1]["name"], "mega_mlp_infer.bin");

  const std::string pulled = dir.path() + "/pulled.bin";
  ASSERT_EQ(run({"pull", "dyn", "--store", store, "-o", pulled}).code, 0);
  EXPECT_EQ(test::read_tree(dir.path()).at("pulled.bin"), test::read_test_file("mega_dynamic.bin"));
  EXPECT_EQ(run({"pull", "nothing", "--store", store, "-o", pulled}).code, 1);

  const auto stats = nlohmann::json::parse(run({"stats", "--store", store, "--json"}).out);
  EXPECT_EQ(stats["hits"], 1);
  EXPECT_EQ(stats["misses"], 1);
  EXPECT_EQ(stats["puts"], 2);
  EXPECT_EQ(nlohmann::json::parse(run({"stats", "--store", store, "--zero", "--json"}).out)["hits"],
            0);

  ASSERT_EQ(run({"gc", "--store", store, "--max-size", "300K"}).code, 0);
  EXPECT_EQ(nlohmann::json::parse(run({"ls", "--store", store, "--json"}).out)["entries"].size(),
            1u);

  // Garbage never enters a store.
  const std::string junk = dir.path() + "/junk.bin";
  ASSERT_TRUE(test::write_file(junk, std::string(100, 'j')).ok());
  EXPECT_EQ(run({"push", junk, "--store", store}).code, 1);
}

TEST(Cli, UsageErrorsExitTwo) {
  EXPECT_EQ(run({}).code, 2);
  EXPECT_EQ(run({"frobnicate"}).code, 2);
  EXPECT_EQ(run({"populate", fixture("mega_dynamic.bin")}).code, 2);  // no --cache-dir
  const CliResult version = run({"--version"});
  EXPECT_EQ(version.code, 0);
  EXPECT_NE(version.out.find("megacache 0.1.0"), std::string::npos) << version.out;
}

}  // namespace
}  // namespace megacache::cli
