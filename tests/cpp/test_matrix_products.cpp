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

TEST(MatrixProducts, ADynamicSizeIsReadAtTheGraphsExampleValue) {
  // extern_kernels.mm(arg3_1, ...) where arg3_1 is (s77, 256) and `s77 = arg2_1`: get_args,
  // Inductor's benchmark harness, binds arg2_1 to 16, the size the graph was compiled for.
  const std::vector<std::string> sources =
      test::generated_sources(test::read_test_file("mega_dynamic.bin"));
  ASSERT_EQ(sources.size(), 1u);
  ASSERT_NE(sources[0].find("extern_kernels.mm(arg3_1"), std::string::npos);
  ASSERT_NE(sources[0].find("    arg2_1 = 16\n"), std::string::npos);
  const std::vector<MatrixProduct> expected = {
      {"mm", "float32", {{{16, 256}, {256, 1}}, {{256, 512}, {1, 256}}}, {{16, 512}, {512, 1}}}};
  EXPECT_EQ(matrix_products(sources[0]), expected);
  EXPECT_TRUE(calls_cublas(sources[0]));
  // Without its example values the size has none, and the product is left out.
  const std::string without_harness = sources[0].substr(0, sources[0].find("def get_args():"));
  EXPECT_TRUE(matrix_products(without_harness).empty());
  EXPECT_TRUE(calls_cublas(without_harness));
}

TEST(MatrixProducts, SizesAreIntegerArithmeticOverTheExampleValues) {
  // torch 2.13's CPU wrapper of a linear layer on (2, s27, 256) with s27 marked dynamic, as
  // it wrote it (2.15 writes the same but for its grouped assert, below).
  const std::string wrapper = R"(
    def call(self, args):
        arg0_1, arg1_1, arg2_1, arg3_1 = args
        args.clear()
        s27 = arg1_1
        assert_size_stride(arg2_1, (2, s27, 256), (256*s27, 256, 1), 'input')
        assert_size_stride(arg0_1, (512, 256), (256, 1), 'input')
        buf0 = empty_strided_cpu((2*s27, 512), (512, 1), torch.float32)
        extern_kernels.mm(reinterpret_tensor(arg2_1, (2*s27, 256), (256, 1), 0), reinterpret_tensor(arg0_1, (256, 512), (1, 256), 0), out=buf0)

def get_args():
    from torch._dynamo.testing import rand_strided
    arg0_1 = rand_strided((512, 256), (256, 1), device='cpu', dtype=torch.float32)
    arg1_1 = 16
    arg2_1 = rand_strided((2, 16, 256), (4096, 256, 1), device='cpu', dtype=torch.float32)
    arg3_1 = rand_strided((512, ), (1, ), device='cpu', dtype=torch.float32)
    return [arg0_1, arg1_1, arg2_1, arg3_1]
)";
  const std::vector<MatrixProduct> expected = {
      {"mm", "float32", {{{32, 256}, {256, 1}}, {{256, 512}, {1, 256}}}, {{32, 512}, {512, 1}}}};
  EXPECT_EQ(matrix_products(wrapper), expected);
  // torch 2.15 asserts both inputs in one grouped call, symbols and all.
  const std::string grouped_asserts =
      "        assert_size_stride_grouped((arg2_1, arg0_1), ((2, s27, 256), (512, 256)), "
      "((256*s27, 256, 1), (256, 1)), 'input')\n";
  std::string wrapper_2_15 = wrapper;
  const size_t asserts = wrapper_2_15.find("        assert_size_stride(arg2_1");
  const size_t after = wrapper_2_15.find("        buf0 =");
  wrapper_2_15.replace(asserts, after - asserts, grouped_asserts);
  EXPECT_EQ(matrix_products(wrapper_2_15), expected);

  // Each form of a size, with s0 = 6 and s1 = 4 (arg0_1's example sizes, read by .size()).
  const std::string harness =
      "def get_args():\n"
      "    arg0_1 = rand_strided((6, 4), (4, 1), device='cuda:0', dtype=torch.float32)\n"
      "    arg1_1 = 6\n";
  const std::string bindings =
      "s0 = arg1_1\n"
      "s1 = arg0_1.size(1)\n"
      "buf0 = empty_strided_cuda((8, 8), (8, 1), torch.float32)\n";
  auto rows_of = [&](const std::string& size) -> std::optional<int64_t> {
    const std::vector<MatrixProduct> read =
        matrix_products(bindings + "extern_kernels.mm(reinterpret_tensor(buf0, (" + size +
                        ", 8), (8, 1), 0), buf0, out=reinterpret_tensor(buf0, (" + size +
                        ", 8), (8, 1), 0))\n" + harness);
    if (read.empty()) return std::nullopt;
    return read[0].operands[0].sizes[0];
  };
  EXPECT_EQ(rows_of("s0"), 6);
  EXPECT_EQ(rows_of("2*s0"), 12);
  EXPECT_EQ(rows_of("s0*s1"), 24);
  EXPECT_EQ(rows_of("((-1) + s0)"), 5);
  EXPECT_EQ(rows_of("(s0 // 4)"), 1);
  EXPECT_EQ(rows_of("((-7) // 2) + s0"), 2);  // Python's floor division: -7 // 2 is -4
  EXPECT_EQ(rows_of("s1 - s0 + 3"), 1);
  EXPECT_EQ(rows_of("arg0_1.size(0)"), 6);
  for (const char* unknown :
       {"s2", "s0 // 0", "s0 - 7", "max(s0, 2)", "s0 ** 2", "s0 / 2", "arg0_1.size(2)",
        "arg1_1.size(0)", "s0 *", "(s0", "281474976710656 * 2", "s0 * 99999999999999999999",
        "((((((((((((((((((s0))))))))))))))))))"}) {
    EXPECT_EQ(rows_of(unknown), std::nullopt) << unknown;
  }
  // A symbol bound again to what is not an integer has no value any more.
  EXPECT_TRUE(matrix_products("s0 = 6\ns0 = buf0\n" + bindings.substr(bindings.find("buf0 =")) +
                              "extern_kernels.mm(reinterpret_tensor(buf0, (s0, 8), (8, 1), 0), "
                              "buf0, out=reinterpret_tensor(buf0, (s0, 8), (8, 1), 0))\n")
                  .empty());
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
      // 8x8 by 4x8
      "extern_kernels.mm(arg0_1, reinterpret_tensor(arg0_1, (4, 8), (8, 1), 0), out=buf0)",
      "extern_kernels.bmm(arg0_1, arg0_1, out=buf0)",   // 2-D operands
      "extern_kernels.mm(arg0_1, arg0_1, out=arg0_1)",  // no dtype declared
      // two dtypes
      "extern_kernels.mm(arg0_1, reinterpret_tensor(buf1, (8, 8), (8, 1), 0), out=buf0)",
      // no offset
      "extern_kernels.mm(reinterpret_tensor(arg0_1, (8, 8), (8, 1)), arg0_1, out=buf0)",
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
