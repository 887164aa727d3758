// Fuzz target: finding and rewriting CUDA device indices in generated code (arbitrary text).
// Besides not crashing, a rewrite must be exact: cuda:i -> cuda:7 -> cuda:i gives the input back.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "megacache/precompile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace pc = megacache::precompile;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)pc::triton_kernel_sources(text);
  const std::vector<int> indices = pc::cuda_device_indices(text);
  if (indices.size() != 1 || indices[0] == 7) return 0;
  megacache::Result<std::string> moved = pc::remap_cuda_device(text, indices[0], 7);
  if (!moved.ok() || pc::cuda_device_indices(*moved) != std::vector<int>{7}) std::abort();
  megacache::Result<std::string> back = pc::remap_cuda_device(*moved, 7, indices[0]);
  if (!back.ok() || *back != text) std::abort();
  return 0;
}
