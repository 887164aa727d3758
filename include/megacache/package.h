// The precompile package's data model and its two codecs: binary (a bundle container) and
// unpacked (a directory a person can read). A package holds per-function Dynamo entries with
// the backends they reference, the environment fingerprint, the compiled C++ kernel libraries,
// the Triton modules and CUDA JIT cache entries a process built, and torch's Mega-Cache
// artifacts. Grammar and layout: docs/package-format.md; on-disk type names never change.
//
// Pickles stay opaque here: every fact that validation needs (function identity, source
// hashes, device type, backend ids) is recorded beside the pickle when the package is made,
// so a package is checked before anything in it is unpickled.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/bundle.h"
#include "megacache/status.h"

namespace megacache::util {
class FileSystem;
}

namespace megacache::precompile {

// What identifies a compiled Python function.
struct FunctionIdentity {
  std::string qualname;       // innermost function's __qualname__
  std::string module;         // its __module__
  uint32_t first_line = 0;    // co_firstlineno
  std::string signature;      // str(inspect.signature(fn)), "" when unknown
  std::string source_sha256;  // hex sha256 of the function's own source, "" when unknown
};

// torch's source_id: hex sha256 of qualname then str(first_line), both UTF-8.
std::string source_key(std::string_view qualname, uint32_t first_line);

// A region of a module whose source a compiled function inlined (torch's InlinedSource):
// sha256 is torch's checksum of the lines [first_line, last_line).
struct InlinedSource {
  std::string module;
  uint32_t first_line = 0;
  uint32_t last_line = 0;
  std::string sha256;
};

// One guarded code object of an entry (torch's _DynamoCodeCacheEntry).
struct Code {
  std::vector<std::string> function_names;
  std::vector<std::string> backend_ids;
};

// One torch _DynamoCacheEntry: the pickle plus what is checked without unpickling it.
struct DynamoEntry {
  FunctionIdentity function;
  std::string device_type;  // "cpu", "cuda", ...
  std::vector<Code> codes;
  std::vector<InlinedSource> inlined_sources;
  std::string pickle;

  std::string key() const { return source_key(function.qualname, function.first_line); }
};

// A code whose backend was not recorded: torch cannot run it from the package, so the loader
// marks it bypassed (torch's _DynamoCodeCacheEntry.bypassed) and that frame compiles again.
struct Bypass {
  uint32_t code = 0;  // index into DynamoEntry::codes
  std::string backend_id;
  std::string reason;
};

// One function, stitched: its entry and the backends its codes reference.
struct FunctionPackage {
  DynamoEntry entry;
  std::map<std::string, std::string> backends;  // backend id -> pickled BackendCacheArtifact
  std::vector<Bypass> bypassed;
};

// A compiled library from torch's cache dir, e.g. "5u/c5ujs...yugwe.so".
// True for "<2 of [a-z0-9_]>/<name of [a-z0-9_.]>.so": the only paths a kernel may have.
bool is_kernel_path(std::string_view path);

// A file a package carries into another program's cache dir: a kernel (torch's cache dir), a
// Triton module (a Triton cache dir) or a CUDA JIT entry (CUDA's JIT cache dir).
struct KernelFile {
  std::string
      path;  // relative to that dir; is_kernel_path, is_triton_module_path or is_cuda_jit_path
  std::string bytes;
};

// A module Triton compiled with gcc into its cache dir (its CUDA driver helper, a kernel
// launcher), e.g. "<key>/cuda_utils.cpython-312-x86_64-linux-gnu.so". Triton looks for it under
// the hash of its source, platform and build options, and loads it instead of running gcc.
// True for "<key>/<name of [A-Za-z0-9_.-]>.so", the name not starting with "." and at most 200
// long, the key a sha256 as Triton names its dirs: 52 of [A-Z2-7] (base32), or 64 of [0-9a-f].
bool is_triton_module_path(std::string_view path);

// An entry of the CUDA driver's JIT cache (CUDA_CACHE_PATH, by default ~/.nv/ComputeCache):
// the driver's build of some PTX for this GPU, e.g. "1/a/c877fdb2075fc7". cuDNN's
// runtime-compiled kernels (its fused attention) pass through it. True for
// "<hex digit>/<hex digit>/<1 to 64 hex digits>"; the cache's own index is not an entry.
bool is_cuda_jit_path(std::string_view path);

struct Package {
  bundle::Fingerprint fingerprint;
  std::vector<FunctionPackage> functions;
  std::vector<KernelFile> kernels;
  std::vector<KernelFile> triton_modules;  // paths relative to a Triton cache dir
  std::vector<KernelFile> cuda_jit;        // paths relative to CUDA's JIT cache dir
  std::string mega_cache;                  // torch's Mega-Cache blob (2.8+ layout); may be empty

  const FunctionPackage* find(std::string_view source_key) const;
};

// The JSON text torch-independent tools show for a package (manifest plus fingerprint).
std::string describe(const Package& package);

// Binary format: a bundle container (docs/bundle-format.md) whose artifacts are the manifest,
// the pickles, the kernels and the Mega-Cache blob. Thread-safe.
std::string write_package(const Package& package, const bundle::WriteOptions& options = {});
// True when `bundle` is a package rather than a plain Mega-Cache bundle.
bool is_package(const bundle::Bundle& bundle);
// Errors: Corruption (container or manifest), InvalidArgument (a kernel path or key that
// could escape the cache dir, a manifest naming an artifact that is not there).
Result<Package> read_package(const bundle::Bundle& bundle);

// Unpacked format: a directory a person can read and edit (manifest.json, pickles, kernels,
// mega_cache.bin). write_unpacked replaces `dir` as a whole: it is built beside it and renamed;
// with `signing_key` it adds signature.json, an Ed25519 signature over every file's sha256.
// read_unpacked holds the directory to the trust policy of bundle::check_trust, reads only
// files its signature lists (each checked against its sha256) and never follows a link inside
// `dir`. Thread-safe. Errors: IOError; read_unpacked also InvalidArgument (trust, a link, a
// changed file) and Corruption, naming the file.
Status write_unpacked(const Package& package, const std::string& dir,
                      const bundle::SigningKey* signing_key = nullptr);
// The same, with every file written through `files` (tests pass one that faults).
Status write_unpacked(const Package& package, const std::string& dir,
                      const bundle::SigningKey* signing_key, util::FileSystem& files);
Result<Package> read_unpacked(const std::string& dir,
                              const std::vector<bundle::PublicKey>& trusted_keys);

}  // namespace megacache::precompile
