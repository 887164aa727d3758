// One package for every device index: finding and rewriting the CUDA device index in the code
// Inductor generated on an H200 (the sources inside tests/data's torch 2.11 Mega-Cache blobs).
#include <gtest/gtest.h>

#include "megacache/precompile.h"
#include "test_util.h"

namespace megacache::precompile {
namespace {

std::vector<std::string> fixture_sources() {
  std::vector<std::string> all;
  for (const char* name : {"mega_mlp_infer.bin", "mega_graphbreak.bin", "mega_dynamic.bin"}) {
    for (std::string& source : test::generated_sources(test::read_test_file(name)))
      all.push_back(std::move(source));
  }
  return all;
}

size_t count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}

TEST(DeviceIndex, FindsTheOneDeviceInEveryGraphTorchGenerated) {
  const std::vector<std::string> sources = fixture_sources();
  ASSERT_EQ(sources.size(), 4u);  // mlp 1, graph break 2, dynamic 1
  for (const std::string& source : sources) {
    ASSERT_NE(source.find("_DeviceGuard(0)"), std::string::npos);
    EXPECT_EQ(cuda_device_indices(source), std::vector<int>{0});
  }
}

TEST(DeviceIndex, RewritesEveryMentionAndNothingElse) {
  for (const std::string& source : fixture_sources()) {
    for (int to : {1, 7, 12, 1023}) {
      Result<std::string> moved = remap_cuda_device(source, 0, to);
      ASSERT_TRUE(moved.ok()) << moved.status().to_string();
      EXPECT_EQ(cuda_device_indices(*moved), std::vector<int>{to});
      const std::string t = std::to_string(to);
      EXPECT_EQ(count(*moved, "_DeviceGuard(" + t + ")"), count(source, "_DeviceGuard(0)"));
      EXPECT_EQ(count(*moved, "get_raw_stream(" + t + ")"), count(source, "get_raw_stream(0)"));
      EXPECT_EQ(count(*moved, "type='cuda', index=" + t), count(source, "type='cuda', index=0"));
      EXPECT_EQ(count(*moved, "cuda:" + t), count(source, "cuda:0"));
      Result<std::string> back = remap_cuda_device(*moved, to, 0);
      ASSERT_TRUE(back.ok());
      EXPECT_EQ(*back, source);  // only the indices changed
    }
  }
}

TEST(DeviceIndex, CodeForSeveralDevicesIsNotMoved) {
  const std::string source =
      fixture_sources().front() + "\nwith torch.cuda._DeviceGuard(1):\n    pass\n";
  EXPECT_EQ(cuda_device_indices(source), (std::vector<int>{0, 1}));
  Result<std::string> moved = remap_cuda_device(source, 0, 2);
  ASSERT_FALSE(moved.ok());
  EXPECT_EQ(moved.status().code(), Status::Code::kInvalidArgument);
  EXPECT_NE(moved.status().message().find("cuda:1"), std::string::npos) << moved.status().message();
  EXPECT_FALSE(remap_cuda_device("set_device(0)", 0, -1).ok());
}

TEST(DeviceIndex, OnlyDeviceFormsCount) {
  const std::string text =
      "xcuda:1 cuda:12345 set_device(device) get_raw_stream(idx) _DeviceGuard(3 ) "
      "type='cpu', index=4 fused_cuda:5 offset_device(2) set_device(2x) cuda:00 set_device(01)";
  EXPECT_TRUE(cuda_device_indices(text).empty());
  Result<std::string> moved = remap_cuda_device(text, 0, 1);
  ASSERT_TRUE(moved.ok());
  EXPECT_EQ(*moved, text);
  EXPECT_EQ(cuda_device_indices("device='cuda:3', x = torch.cuda.set_device(3)\n"),
            std::vector<int>{3});
  // Found by fuzz_generated_code: a leading zero beside a real mention; moving there and back
  // must give the text back.
  const std::string padded = "device='cuda:0' and 'cuda:00'";
  Result<std::string> there = remap_cuda_device(padded, 0, 7);
  ASSERT_TRUE(there.ok());
  EXPECT_EQ(*there, "device='cuda:7' and 'cuda:00'");
  EXPECT_EQ(*remap_cuda_device(*there, 7, 0), padded);
}

TEST(DeviceIndex, KernelSourcesAreTheLiteralsTorchKeysItsKernelsBy) {
  for (const std::string& source : fixture_sources()) {
    Result<std::vector<std::string>> kernels = triton_kernel_sources(source);
    ASSERT_TRUE(kernels.ok()) << kernels.status().to_string();
    ASSERT_EQ(kernels->size(), count(source, "= async_compile.triton('"));
    ASSERT_FALSE(kernels->empty());
    Result<std::string> moved = remap_cuda_device(source, 0, 5);
    ASSERT_TRUE(moved.ok());
    for (const std::string& kernel : *kernels) {
      EXPECT_EQ(kernel.rfind("\nimport triton\n", 0), 0u);
      EXPECT_NE(kernel.find("@triton.jit"), std::string::npos);
      EXPECT_EQ(cuda_device_indices(kernel), std::vector<int>{0});  // its DeviceProperties
      // Rewriting the whole source rewrites each literal as rewriting the literal alone would.
      Result<std::string> kernel_moved = remap_cuda_device(kernel, 0, 5);
      ASSERT_TRUE(kernel_moved.ok());
      EXPECT_NE(moved->find("'''" + *kernel_moved + "'''"), std::string::npos);
    }
  }
}

TEST(DeviceIndex, KernelLiteralsTorchCouldNotHaveWrittenAreRefused) {
  Result<std::vector<std::string>> open =
      triton_kernel_sources("k = async_compile.triton('k', '''\nimport triton\n");
  ASSERT_FALSE(open.ok());
  EXPECT_EQ(open.status().code(), Status::Code::kCorruption);
  EXPECT_EQ(open.status().offset(), std::optional<uint64_t>(33));
  Result<std::vector<std::string>> escaped =
      triton_kernel_sources("k = async_compile.triton('k', '''\\n''', device_str='cuda')\n");
  ASSERT_FALSE(escaped.ok());
  EXPECT_EQ(escaped.status().code(), Status::Code::kInvalidArgument);
  Result<std::vector<std::string>> none =
      triton_kernel_sources("x = async_compile.triton(name, source)\n");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
}

}  // namespace
}  // namespace megacache::precompile
