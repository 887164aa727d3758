// The matrix products a graph hands to cuBLAS, read from the wrappers Inductor generated on an
// H200 (tests/data's torch 2.11 Mega-Cache blobs, and the transformer of ../shared/fixtures)
// and from hand-written forms (docs/matrix-products.md).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <ostream>
#include <set>
#include <tuple>

#include "megacache/precompile.h"
#include "test_util.h"

namespace megacache::precompile {
namespace {

void PrintTo(const TensorLayout& layout, std::ostream* out) {
  *out << "(";
  for (int64_t size : layout.sizes) *out << size << ",";
  *out << ")/(";
  for (int64_t stride : layout.strides) *out << stride << ",";
  *out << ")";
}

}  // namespace

void PrintTo(const MatrixProduct& product, std::ostream* out) {
  *out << product.op << "[" << product.dtype << "](";
  for (const TensorLayout& operand : product.operands) PrintTo(operand, out), *out << " ";
  *out << "out=";
  PrintTo(product.out, out);
  *out << ")";
}

namespace {

std::vector<MatrixProduct> products_in(const std::string& fixture) {
  std::vector<MatrixProduct> all;
  for (const std::string& source : test::generated_sources(test::read_test_file(fixture))) {
    for (MatrixProduct& product : matrix_products(source)) all.push_back(std::move(product));
  }
  return all;
}

TEST(MatrixProducts, ReadsTheProductsOfAGraphTorchGenerated) {
  // mm(arg2_1, reinterpret_tensor(arg0_1, ...), out=buf0); buf1 = buf0; addmm(arg4_1, buf1, ...)
  const std::vector<MatrixProduct> expected = {
      {"mm", "float32", {{{8, 64}, {64, 1}}, {{64, 128}, {1, 64}}}, {{8, 128}, {128, 1}}},
      {"addmm",
       "float32",
       {{{64}, {1}}, {{8, 128}, {128, 1}}, {{128, 64}, {1, 128}}},
       {{8, 64}, {64, 1}}},
  };
  EXPECT_EQ(products_in("mega_mlp_infer.bin"), expected);
  // Two graphs around a break: an mm in the first, an addmm in the second.
  const std::vector<MatrixProduct> graph_break = products_in("mega_graphbreak.bin");
  ASSERT_EQ(graph_break.size(), 2u);
  EXPECT_EQ(graph_break[0].op, "mm");
  EXPECT_EQ(graph_break[0].operands[0], (TensorLayout{{32, 256}, {256, 1}}));
  EXPECT_EQ(graph_break[1].op, "addmm");
  EXPECT_EQ(graph_break[1].operands[0], (TensorLayout{{256}, {1}}));
}

TEST(MatrixProducts, AProductWithADynamicSizeIsLeftOut) {
  // extern_kernels.mm(arg3_1, ...) where arg3_1 is (s77, 256): no layout to run ahead, but a
  // call of cuBLAS all the same.
  const std::vector<std::string> sources =
      test::generated_sources(test::read_test_file("mega_dynamic.bin"));
  ASSERT_EQ(sources.size(), 1u);
  ASSERT_NE(sources[0].find("extern_kernels.mm(arg3_1"), std::string::npos);
  EXPECT_TRUE(matrix_products(sources[0]).empty());
  EXPECT_TRUE(calls_cublas(sources[0]));
}

TEST(MatrixProducts, CallsOfCublasAreTheExternProductsOnly) {
  for (const char* text :
       {"extern_kernels.mm(a, b, out=c)", "  extern_kernels.addmm(", "x = extern_kernels.bmm(",
        "extern_kernels.baddbmm(", "extern_kernels._int_mm(a, b)"}) {
    EXPECT_TRUE(calls_cublas(text)) << text;
  }
  for (const char* text : {"", "extern_kernels.convolution(x, w)", "my_extern_kernels.mm(a, b)",
                           "extern_kernels.mmx(a, b)", "extern_kernels.mm",
                           "from torch._inductor.select_algorithm import extern_kernels"}) {
    EXPECT_FALSE(calls_cublas(text)) << text;
  }
  // The MLP graph torch generated on the H200.
  EXPECT_TRUE(calls_cublas(test::generated_sources(test::read_test_file("mega_mlp_infer.bin"))[0]));
}

TEST(MatrixProducts, TheTransformersFourShapesOnce) {
  const std::filesystem::path path =
      std::filesystem::path(MEGACACHE_SHARED_FIXTURES) / "mega_xfmr_infer.bin";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << path << " is not here";
  std::ifstream in(path, std::ios::binary);
  const std::string blob((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::set<std::tuple<int64_t, int64_t, int64_t>> shapes;  // m, k, n
  size_t products = 0;
  for (const std::string& source : test::generated_sources(blob)) {
    for (const MatrixProduct& product : matrix_products(source)) {
      ASSERT_EQ(product.op, "mm");
      EXPECT_EQ(product.dtype, "float32");
      shapes.insert({product.operands[0].sizes[0], product.operands[0].sizes[1],
                     product.operands[1].sizes[1]});
      ++products;
    }
  }
  // Six layers of the same four linear layers: 24 calls of 4 distinct products.
  EXPECT_EQ(products, 4u);
  const std::set<std::tuple<int64_t, int64_t, int64_t>> expected = {
      {512, 512, 1536}, {512, 512, 512}, {512, 512, 2048}, {512, 2048, 512}};
  EXPECT_EQ(shapes, expected);
}

TEST(MatrixProducts, FollowsViewsAliasesAndRebindings) {
  const std::string wrapper = R"(
    assert_size_stride(arg0_1, (4, 16, 32), (512, 32, 1))
    assert_size_stride(arg1_1, (4, 32, 8), (256, 8, 1))
    buf0 = empty_strided_cuda((4, 16, 8), (128, 8, 1), torch.bfloat16)
    extern_kernels.bmm(arg0_1, arg1_1, out=buf0)
    buf1 = reinterpret_tensor(buf0, (64, 8), (8, 1), 0); del buf0  # reuse
    buf2 = buf1; del buf1  # reuse
    extern_kernels.mm(reinterpret_tensor(arg0_1, (64, 32), (32, 1), 0), reinterpret_tensor(arg1_1, (32, 8), (8, 1), 0), out=buf2)
    buf9 = empty_strided_cuda((4, 16, 8), (128, 8, 1), torch.bfloat16)
    extern_kernels.baddbmm(buf9, arg0_1, arg1_1, beta=0, out=reinterpret_tensor(buf2, (4, 16, 8), (128, 8, 1), 0))
    buf2 = torch.ops.aten.something(arg0_1)
    extern_kernels.mm(reinterpret_tensor(arg0_1, (16, 32), (32, 1), 0), reinterpret_tensor(arg1_1, (32, 8), (8, 1), 0), out=buf2)
  )";
  const std::vector<MatrixProduct> expected = {
      {"bmm",
       "bfloat16",
       {{{4, 16, 32}, {512, 32, 1}}, {{4, 32, 8}, {256, 8, 1}}},
       {{4, 16, 8}, {128, 8, 1}}},
      // out=buf2: a view of an alias of buf0, so bfloat16
      {"mm", "bfloat16", {{{64, 32}, {32, 1}}, {{32, 8}, {8, 1}}}, {{64, 8}, {8, 1}}},
      // out= a view of buf2
      {"baddbmm",
       "bfloat16",
       {{{4, 16, 8}, {128, 8, 1}}, {{4, 16, 32}, {512, 32, 1}}, {{4, 32, 8}, {256, 8, 1}}},
       {{4, 16, 8}, {128, 8, 1}}},
  };
  // Not the last mm: buf2 was rebound to what is not known, so its old layout must not serve.
  EXPECT_EQ(matrix_products(wrapper), expected);
}

TEST(MatrixProducts, ReadsTheGroupedAssertOfTorch2_15) {
  // torch 2.15's CPU wrapper of the MLP of tests/python/precompile/cases.py, as it wrote it.
  const std::string wrapper = R"(
        arg0_1, arg1_1, arg2_1, arg3_1, arg4_1 = args
        args.clear()
        assert_size_stride_grouped((arg1_1, arg2_1, arg0_1), ((32, ), (4, 16), (32, 16)), ((1, ), (16, 1), (16, 1)), 'input')
        buf0 = empty_strided_cpu((4, 32), (32, 1), torch.float32)
        extern_kernels.addmm(arg1_1, arg2_1, reinterpret_tensor(arg0_1, (16, 32), (1, 16), 0), alpha=1, beta=1, out=buf0)
        del arg0_1
        buf1 = buf0; del buf0  # reuse
        assert_size_stride_grouped((arg4_1, arg3_1), ((8, ), (8, 32)), ((1, ), (32, 1)), 'input')
        cpp_fused_gelu_0(buf1)
        buf2 = empty_strided_cpu((4, 8), (8, 1), torch.float32)
        extern_kernels.addmm(arg4_1, buf1, reinterpret_tensor(arg3_1, (32, 8), (1, 32), 0), alpha=1, beta=1, out=buf2)
  )";
  const std::vector<MatrixProduct> expected = {
      {"addmm",
       "float32",
       {{{32}, {1}}, {{4, 16}, {16, 1}}, {{16, 32}, {1, 16}}},
       {{4, 32}, {32, 1}}},
      {"addmm", "float32", {{{8}, {1}}, {{4, 32}, {32, 1}}, {{32, 8}, {1, 32}}}, {{4, 8}, {8, 1}}},
  };
  EXPECT_EQ(matrix_products(wrapper), expected);
  // A group whose tuples do not line up declares nothing.
  EXPECT_TRUE(matrix_products("assert_size_stride_grouped((a, b), ((8, 8), ), ((8, 1), ))\n"
                              "buf0 = empty_strided_cuda((8, 8), (8, 1), torch.float32)\n"
                              "extern_kernels.mm(a, a, out=buf0)\n")
                  .empty());
}

TEST(MatrixProducts, OnlyWhatIsSpelledOutAndMultipliesCounts) {
  const std::string declarations =
      "buf0 = empty_strided_cuda((8, 8), (8, 1), torch.float16)\n"
      "buf1 = empty_strided_cuda((8, 8), (8, 1), torch.float32)\n"
      "assert_size_stride(arg0_1, (8, 8), (8, 1))\n";
  const char* left_out[] = {
      "extern_kernels._int_mm(arg0_1, arg0_1, out=buf0)",     // not a product we know
      "extern_kernels.mm(arg0_1, arg0_1)",                    // no out=, so no dtype
      "extern_kernels.mm(buf7, arg0_1, out=buf0)",            // buf7 is not declared
      "extern_kernels.mm(arg0_1, out=buf0)",                  // one operand
      "extern_kernels.mm(arg0_1, arg0_1, arg0_1, out=buf0)",  // three
      "extern_kernels.mm(arg0_1, reinterpret_tensor(arg0_1, (4, 8), (8, 1), 0), out=buf0)",  // 8x8
                                                                                             // by
                                                                                             // 4x8
      "extern_kernels.bmm(arg0_1, arg0_1, out=buf0)",   // 2-D operands
      "extern_kernels.mm(arg0_1, arg0_1, out=arg0_1)",  // no dtype declared
      "extern_kernels.mm(arg0_1, reinterpret_tensor(buf1, (8, 8), (8, 1), 0), out=buf0)",  // two
                                                                                           // dtypes
      "extern_kernels.mm(reinterpret_tensor(arg0_1, (8, 8), (8, 1)), arg0_1, out=buf0)",   // no
                                                                                           // offset
      "extern_kernels.mm(reinterpret_tensor(arg0_1, (8, 99999999999999999999), (8, 1), 0), arg0_1, "
      "out=buf0)",
      "extern_kernels.mm(reinterpret_tensor(arg0_1, (8, -8), (8, 1), 0), arg0_1, out=buf0)",
      "extern_kernels.mm(reinterpret_tensor(arg0_1, (1, 1, 1, 1, 1, 1, 1, 1, 8), (1, 1, 1, 1, 1, "
      "1, 1, 8, 1), 0), arg0_1, out=buf0)",
      "extern_kernels.mm(reinterpret_tensor(arg0_1, (8, 8), (8, 1, 2), 0), arg0_1, out=buf0)",
      "extern_kernels.mm(arg0_1, (arg0_1, out=buf0)",
      "extern_kernels.mm(arg0_1, , arg0_1, out=buf0)",
      "extern_kernels.mm)arg0_1, arg0_1(",
      "extern_kernels.mm",
  };
  for (const char* call : left_out) {
    EXPECT_TRUE(matrix_products(declarations + call + "\n").empty()) << call;
  }
  // A view's base is followed 4 views deep, no deeper: the dtype of a base below is not read.
  std::string nested = "buf1";
  for (int i = 0; i < 5; ++i) nested = "reinterpret_tensor(" + nested + ", (8, 8), (8, 1), 0)";
  const std::string four_deep = nested.substr(19, nested.size() - 19 - 20);
  EXPECT_TRUE(
      matrix_products(declarations + "extern_kernels.mm(" + four_deep + ", arg0_1, out=buf0)\n")
          .empty())
      << "buf1 is float32, buf0 float16";
  const std::vector<MatrixProduct> five_deep =
      matrix_products(declarations + "extern_kernels.mm(" + nested + ", arg0_1, out=buf0)\n");
  ASSERT_EQ(five_deep.size(), 1u);
  EXPECT_EQ(five_deep[0].dtype, "float16");
  // At most the first 256 distinct products.
  std::string many = declarations;
  for (int n = 1; n <= 300; ++n) {
    many += "extern_kernels.mm(reinterpret_tensor(arg0_1, (" + std::to_string(n) +
            ", 8), (8, 1), 0), arg0_1, "
            "out=reinterpret_tensor(buf0, (" +
            std::to_string(n) + ", 8), (8, 1), 0))\n";
  }
  EXPECT_EQ(matrix_products(many).size(), 256u);
  // The same product twice, and once more with alpha and beta, is one product.
  const std::vector<MatrixProduct> once =
      matrix_products(declarations + "extern_kernels.mm(arg0_1, arg0_1, out=buf0)\n" +
                      "extern_kernels.mm(arg0_1, arg0_1, out=buf0)  # again\n" +
                      "extern_kernels.mm(arg0_1, arg0_1, alpha=1, beta=1, out=buf0); del arg0_1\n");
  ASSERT_EQ(once.size(), 1u);
  EXPECT_EQ(once[0].dtype, "float16");
}

}  // namespace
}  // namespace megacache::precompile
