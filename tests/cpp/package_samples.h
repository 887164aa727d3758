// Sample packages and their comparison, shared by the package codec's tests
// (test_package.cpp) and the precompile tests that check and install packages
// (test_precompile.cpp).
#pragma once

#include <algorithm>
#include <string>
#include <tuple>
#include <vector>

#include "megacache/bundle.h"
#include "megacache/package.h"
#include "test_util.h"

namespace megacache::precompile {

// Sorted by name, as bundle::Fingerprint is and as read_unpacked returns it.
inline const bundle::Fingerprint kFingerprint = {
    {"cpu_arch", "x86_64"}, {"cpu_flags", "avx2 avx512f"}, {"cuda", "13.0"},
    {"cxx", "g++ 13.3.0"},  {"gpu", "NVIDIA H200"},        {"gpu_capability", "9.0"},
    {"python", "3.11.7"},   {"torch", "2.11.0+cu130"},     {"torch_git", "0123abcd"},
    {"triton", "3.5.0"}};

// The fingerprint with one field set to `value`.
inline bundle::Fingerprint with(bundle::Fingerprint fingerprint, const std::string& name,
                                const std::string& value) {
  for (auto& [n, v] : fingerprint) {
    if (n == name) v = value;
  }
  return fingerprint;
}

// A module's text, and the torch checksum of its lines [3, 5) (test_precompile.cpp,
// HashSourceLinesMirrorsTorch).
inline const std::string kLayersSource =
    "import torch\n\ndef helper(x):\n    return x * 2\n\nlast = 1\n";
inline const std::string kLayersLines3To5 =
    "dc91b93f5c9c051ce2e9eb8aff84f4ca629baca14b76c86b51fad3bb572693f3";

inline DynamoEntry make_entry(std::string qualname, std::string module, uint32_t line,
                              std::string device, std::vector<Code> codes, std::string pickle) {
  DynamoEntry entry;
  entry.function = {std::move(qualname), std::move(module), line, "", ""};
  entry.device_type = std::move(device);
  entry.codes = std::move(codes);
  entry.pickle = std::move(pickle);
  return entry;
}

// Two functions (one on CUDA with a bypassed code and an inlined source, one on CPU), two
// kernels and a Mega-Cache blob; pickles and kernels hold NUL and high bytes.
inline Package sample_package() {
  Package package;
  package.fingerprint = kFingerprint;

  FunctionPackage forward;
  forward.entry =
      make_entry("Model.forward", "app.model", 12, "cuda",
                 {{{"forward"}, {"__compiled_fn_1_aaa"}},
                  {{"forward", "torch_dynamo_resume_in_forward_at_15"}, {"__compiled_fn_3_ccc"}}},
                 std::string("\x80\x05dynamo\0forward\xff", 16));
  forward.entry.function.signature = "(self, x)";
  forward.entry.function.source_sha256 = std::string(64, 'a');
  forward.entry.inlined_sources = {{"app.layers", 3, 5, kLayersLines3To5}};
  forward.backends = {{"__compiled_fn_1_aaa", std::string("\x80\x05"
                                                          "backend one\0",
                                                          14)}};
  forward.bypassed = {{1, "__compiled_fn_3_ccc", "backend __compiled_fn_3_ccc was not recorded"}};

  FunctionPackage helper;
  helper.entry =
      make_entry("helper", "app.util", 4, "cpu", {{{"helper", "inner"}, {"__compiled_fn_2_bbb"}}},
                 "\x80\x05helper entry");
  helper.entry.function.signature = "(x, y=1)";
  helper.backends = {{"__compiled_fn_2_bbb",
                      "\x80\x05"
                      "backend two"}};

  package.functions = {std::move(forward), std::move(helper)};
  package.kernels = {{"ab/cabcdefghij.so", std::string("\x7f"
                                                       "ELF\0\1\2kernel one",
                                                       17)},
                     {"x_/cx_9.kernel.so",
                      "\x7f"
                      "ELF kernel two"}};
  package.mega_cache = test::small_blob();
  return package;
}

// Triton names a module's dir by a sha256: in base32 (Triton 3.2 and later), in hex before.
inline const std::string kCudaUtils =
    "XU5DT2AO5BD5AEHEYGLPP5LRDFHHCUEJT4LGDVLB4STXUGVGHFPA/"
    "cuda_utils.cpython-312-x86_64-linux-gnu.so";

inline const std::string kLauncher =
    "3f2a" + std::string(60, '0') + "/__triton_launcher.cpython-312-x86_64-linux-gnu.so";

// sample_package as a CUDA process makes it: with Triton's driver helper and a kernel launcher.
inline Package with_triton_modules(Package package) {
  package.triton_modules = {{kCudaUtils, std::string("\x7f"
                                                     "ELF\0cuda utils",
                                                     15)},
                            {kLauncher,
                             "\x7f"
                             "ELF launcher"}};
  return package;
}

// The first field in which two packages differ, or "" when they are equal. Written field by
// field so that a field the codecs forget is caught here rather than compared away.
inline std::string difference(const Package& a, const Package& b) {
  if (a.fingerprint != b.fingerprint) return "fingerprint";
  if (a.mega_cache != b.mega_cache) return "mega_cache";
  if (a.kernels.size() != b.kernels.size()) return "kernel count";
  for (size_t i = 0; i < a.kernels.size(); ++i) {
    if (a.kernels[i].path != b.kernels[i].path) return "kernel path " + a.kernels[i].path;
    if (a.kernels[i].bytes != b.kernels[i].bytes) return "kernel bytes " + a.kernels[i].path;
  }
  if (a.triton_modules.size() != b.triton_modules.size()) return "Triton module count";
  for (size_t i = 0; i < a.triton_modules.size(); ++i) {
    if (a.triton_modules[i].path != b.triton_modules[i].path)
      return "Triton module path " + a.triton_modules[i].path;
    if (a.triton_modules[i].bytes != b.triton_modules[i].bytes)
      return "Triton module bytes " + a.triton_modules[i].path;
  }
  if (a.cuda_jit.size() != b.cuda_jit.size()) return "CUDA JIT entry count";
  for (size_t i = 0; i < a.cuda_jit.size(); ++i) {
    if (a.cuda_jit[i].path != b.cuda_jit[i].path)
      return "CUDA JIT entry path " + a.cuda_jit[i].path;
    if (a.cuda_jit[i].bytes != b.cuda_jit[i].bytes)
      return "CUDA JIT entry bytes " + a.cuda_jit[i].path;
  }
  if (a.functions.size() != b.functions.size()) return "function count";
  for (size_t i = 0; i < a.functions.size(); ++i) {
    const FunctionPackage& x = a.functions[i];
    const FunctionPackage& y = b.functions[i];
    const std::string name = "function " + x.entry.function.qualname + ": ";
    const FunctionIdentity& f = x.entry.function;
    const FunctionIdentity& g = y.entry.function;
    if (std::tie(f.qualname, f.module, f.first_line, f.signature, f.source_sha256) !=
        std::tie(g.qualname, g.module, g.first_line, g.signature, g.source_sha256)) {
      return name + "identity";
    }
    if (x.entry.device_type != y.entry.device_type) return name + "device_type";
    if (x.entry.pickle != y.entry.pickle) return name + "pickle";
    if (x.entry.codes.size() != y.entry.codes.size()) return name + "code count";
    for (size_t c = 0; c < x.entry.codes.size(); ++c) {
      if (x.entry.codes[c].function_names != y.entry.codes[c].function_names)
        return name + "function_names";
      if (x.entry.codes[c].backend_ids != y.entry.codes[c].backend_ids) return name + "backend_ids";
    }
    if (x.entry.inlined_sources.size() != y.entry.inlined_sources.size())
      return name + "inlined count";
    for (size_t s = 0; s < x.entry.inlined_sources.size(); ++s) {
      const InlinedSource& p = x.entry.inlined_sources[s];
      const InlinedSource& q = y.entry.inlined_sources[s];
      if (std::tie(p.module, p.first_line, p.last_line, p.sha256) !=
          std::tie(q.module, q.first_line, q.last_line, q.sha256)) {
        return name + "inlined source";
      }
    }
    if (x.bypassed.size() != y.bypassed.size()) return name + "bypass count";
    for (size_t k = 0; k < x.bypassed.size(); ++k) {
      const Bypass& p = x.bypassed[k];
      const Bypass& q = y.bypassed[k];
      if (std::tie(p.code, p.backend_id, p.reason) != std::tie(q.code, q.backend_id, q.reason)) {
        return name + "bypass";
      }
    }
    if (x.backends != y.backends) return name + "backends";
  }
  return "";
}

inline Result<Package> read_binary(const std::string& file) {
  Result<bundle::Bundle> parsed = bundle::parse(file);
  if (!parsed.ok()) return parsed.status();
  return read_package(*parsed);
}

inline bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

inline const std::string kDriver = "580.159.04";

// sample_package as a process on a GPU makes it after cuDNN's attention ran: with two of the
// driver's JIT cache entries, recorded under its driver.
inline Package with_cuda_jit(Package package) {
  package.cuda_jit = {{"1/a/c877fdb2075fc7", std::string("jit\0one", 7)},
                      {"b/e/b3e48a12e5899a", "jit two"}};
  package.fingerprint.emplace_back("cuda_driver", kDriver);
  std::sort(package.fingerprint.begin(),
            package.fingerprint.end());  // as fingerprint.json reads back
  return package;
}

}  // namespace megacache::precompile
