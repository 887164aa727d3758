// Fuzz target: reading Inductor's generated code (arbitrary text): its CUDA device indices, its
// Triton kernel literals and its matrix products. Besides not crashing, a device rewrite must
// be exact (cuda:i -> cuda:7 -> cuda:i gives the input back), and every product read must be
// one torch could run: a known op, its operands' count, a layout per dim.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "megacache/precompile.h"

namespace {

namespace pc = megacache::precompile;

bool well_formed(const pc::TensorLayout& layout) {
  return layout.sizes.size() == layout.strides.size() && layout.sizes.size() <= 8;
}

void check_products(std::string_view text) {
  const std::vector<pc::MatrixProduct> products = pc::matrix_products(text);
  for (size_t i = 0; i < products.size(); ++i) {
    const pc::MatrixProduct& product = products[i];
    const size_t operands = product.op == "mm" || product.op == "bmm" ? 2 : 3;
    if (product.op != "mm" && product.op != "bmm" && product.op != "addmm" &&
        product.op != "baddbmm")
      std::abort();
    if (product.operands.size() != operands || product.dtype.empty() || !well_formed(product.out))
      std::abort();
    for (const pc::TensorLayout& operand : product.operands) {
      if (!well_formed(operand)) std::abort();
    }
    for (size_t j = 0; j < i; ++j) {
      if (products[j] == product) std::abort();  // each distinct product once
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)pc::triton_kernel_sources(text);
  check_products(text);
  if (!pc::matrix_products(text).empty() && !pc::calls_cublas(text))
    std::abort();  // a product is a call
  const std::vector<int> indices = pc::cuda_device_indices(text);
  if (indices.size() != 1 || indices[0] == 7) return 0;
  megacache::Result<std::string> moved = pc::remap_cuda_device(text, indices[0], 7);
  if (!moved.ok() || pc::cuda_device_indices(*moved) != std::vector<int>{7}) std::abort();
  megacache::Result<std::string> back = pc::remap_cuda_device(*moved, 7, indices[0]);
  if (!back.ok() || *back != text) std::abort();
  return 0;
}
