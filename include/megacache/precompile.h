// Precompile packages: everything a fresh process needs to run torch.compile'd functions
// without tracing or compiling. PrecompileContext mirrors torch's
// torch._dynamo.precompile_context.PrecompileContext: it holds backend artifacts by backend
// id and Dynamo cache entries by source key, and stitches them into per-function packages.
// The package itself and its codecs are in package.h; this header reads what a process built,
// checks a package against the loading process and installs it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/bundle.h"
#include "megacache/package.h"
#include "megacache/populate.h"
#include "megacache/status.h"

namespace megacache::precompile {

// Every compiled library in a torch cache dir (<cache_dir>/<2 chars>/<name>.so, kernel paths
// only), sorted by path: the CPU kernels and the vector-ISA probe libraries that a fresh dir
// would build again with the compiler. Errors: IOError.
Result<std::vector<KernelFile>> read_kernels(const std::string& cache_dir);

// Every shared library this process has loaded from beneath one of `triton_cache_dirs` whose
// path there is a Triton module path (a module Triton built or found is loaded, so this is
// what the process used), sorted by path, each once. Errors: IOError. Thread-safe.
Result<std::vector<KernelFile>> read_loaded_triton_modules(
    const std::vector<std::string>& triton_cache_dirs);

// The paths of the entries of the CUDA JIT cache `dir` written at or after `since_unix`
// (seconds): what the driver compiled for this process, sorted. An absent dir holds none.
// Never fails: the entries only spare the loading side's driver a compile. Thread-safe.
std::vector<std::string> list_cuda_jit_entries(const std::string& dir, int64_t since_unix);

// Those entries with their bytes. Entries past kMaxCudaJitBytes in all, and entries that cannot
// be read, are left out. Never fails. Thread-safe.
inline constexpr uint64_t kMaxCudaJitBytes = uint64_t{256} << 20;
std::vector<KernelFile> read_cuda_jit_entries(const std::string& dir, int64_t since_unix);

// The NVIDIA kernel driver's version, e.g. "580.159.04", from /proc/driver/nvidia/version; ""
// where it cannot be read. A JIT cache entry is valid for the driver that made it. Thread-safe.
std::string cuda_driver_version();

// Mirrors torch's PrecompileContext. Thread-safe: every method takes an internal lock.
class PrecompileContext {
 public:
  // Replaces any artifact recorded under the same id.
  void record_backend(std::string backend_id, std::string pickle);
  // Replaces any entry recorded under the same source key.
  void record_dynamo_entry(DynamoEntry entry);

  // Every entry with the backends it references. A backend that is missing does not drop the
  // entry: the code is listed in FunctionPackage::bypassed with the reason.
  // `only` limits the result to these source keys (empty: every entry).
  std::vector<FunctionPackage> stitch(const std::vector<std::string>& only = {}) const;

  // A copy of the recorded backend pickle, or nullopt.
  std::optional<std::string> serialize_artifact_by_key(std::string_view backend_id) const;
  // Replaces a backend's pickle by edit(old). Errors: NotFound naming the id; the edit's own
  // error, leaving the artifact unchanged.
  Status edit_artifact(std::string_view backend_id,
                       const std::function<Result<std::string>(std::string_view)>& edit);

  // stitch() with the environment, the kernels and the Mega-Cache blob, which come from the
  // caller who knows the torch cache dir. The blob's "precompile" artifacts (torch's own
  // DynamoCache entries) are left out: the package carries its Dynamo entries itself.
  Package package(bundle::Fingerprint fingerprint, std::vector<KernelFile> kernels,
                  std::string mega_cache, const std::vector<std::string>& only = {},
                  std::vector<KernelFile> triton_modules = {},
                  std::vector<KernelFile> cuda_jit = {}) const;
  // package() in the binary format (write_package).
  std::string serialize(bundle::Fingerprint fingerprint, std::vector<KernelFile> kernels,
                        std::string mega_cache, const bundle::WriteOptions& options = {}) const;

  // {"dynamo": [{key, fn_name, fn_first_lineno, module, device_type, num_codes, backend_ids,
  //   bypassed}], "backends": [ids]}, like torch's dump_debug_info.
  std::string debug_info_json() const;

  void clear();
  bool empty() const;

 private:
  // The codes of `entry` whose backends are missing; the caller holds mutex_.
  std::vector<Bypass> bypasses_locked(const DynamoEntry& entry) const;

  mutable std::mutex mutex_;
  std::map<std::string, std::string> backends_;
  std::map<std::string, DynamoEntry> entries_;
};

// The one door to a package from outside, in either form, with one trust policy: `file` holds
// the binary form (a bundle, bundle::check_trust); `path` is a directory in the unpacked form or
// a file in the binary one. Thread-safe. Errors: those of bundle::parse, check_trust,
// read_package and read_unpacked; NotFound and IOError for the path.
Result<Package> read_package(std::string_view file,
                             const std::vector<bundle::PublicKey>& trusted_keys);
Result<Package> read_package_at(const std::string& path,
                                const std::vector<bundle::PublicKey>& trusted_keys);

// What the loading process is, and what it asks for.
struct LoadCheck {
  bundle::Fingerprint current;  // this process's environment, same field names
  // The function being loaded; nullopt accepts every function in the package.
  std::optional<FunctionIdentity> function;
  bool ignore_source_changes = false;
  // The live text of a module, for re-hashing inlined sources; nullopt when it has none.
  std::function<std::optional<std::string>(const std::string& module)> module_source;
};

// Refuses a package that would be unsound here: Python or torch differ; for CUDA entries the
// toolkit, Triton, GPU model or its capability differ (not the device index); with kernels the
// CPU, its flags or the compiler differ; the function or its signature differ; its source or
// an inlined source changed (unless ignore_source_changes); with Triton modules, Triton, CUDA,
// the OS or the CPU architecture differ; with CUDA JIT cache entries, the GPU model or its
// capability differ. Errors: Mismatch naming the field and both values, e.g. "package built
// with torch 2.11.0+cu130, this is 2.13.0+cpu".
// Thread-safe.
Status check_package(const Package& package, const LoadCheck& check);

// Writes the Mega-Cache artifacts (as populate) and the kernels into `cache_dir`, and the Triton
// modules into each of `triton_cache_dirs` (where Triton may look, depending on when torch set
// TRITON_CACHE_DIR), each file atomically; a Triton module already there is left alone, and a
// Triton dir that cannot be written is passed over (Triton builds its own modules there). Paths
// are validated before anything is written. Pickles are not written: the caller hands them to
// torch. The CUDA JIT entries go into `cuda_jit.dir` only when the package's "cuda_driver" field
// is `cuda_jit.driver`, the driver running here; an entry already there is left alone and a dir
// that cannot be written is passed over (the driver compiles its own). Errors: InvalidArgument,
// IOError.
struct CudaJitTarget {
  std::string dir;     // CUDA's JIT cache dir; empty: install no entries
  std::string driver;  // cuda_driver_version() here
};
Result<PopulateReport> populate_package(const Package& package, const std::string& cache_dir,
                                        const std::vector<std::string>& triton_cache_dirs = {},
                                        const CudaJitTarget& cuda_jit = {});
// The same, with every file written through `files` (tests pass one that faults).
Result<PopulateReport> populate_package(const Package& package, const std::string& cache_dir,
                                        const std::vector<std::string>& triton_cache_dirs,
                                        const CudaJitTarget& cuda_jit, util::FileSystem& files);

// The store name of one function's package: "precompile-<qualname>-<32 hex>", the hex over the
// source key, the function's source hash and every fingerprint field, so a store only ever
// hands a process packages built for an environment like its own (docs/store-format.md).
std::string store_name(const FunctionIdentity& function, const bundle::Fingerprint& fingerprint);

// The store name of the one Mega-Cache bundle automatic mode keeps per environment where torch
// lacks what packages need (python/megacache/torch/surfaces.py): "mega-cache-<32 hex>", the hex
// a sha256 over every fingerprint field (docs/store-format.md). Pure; thread-safe.
std::string mega_cache_store_name(const bundle::Fingerprint& fingerprint);

// --- one package for every device index (docs/device-index.md) ---

// The CUDA device indices that Inductor's generated code in `text` names, sorted and unique:
// the wrapper's device guard, set_device and get_raw_stream, DeviceProperties and device(...)
// literals, and "cuda:N" (comments and strings). Pure; thread-safe.
std::vector<int> cuda_device_indices(std::string_view text);

// `text` with each of those mentions of cuda:`from` rewritten to cuda:`to`. Errors:
// InvalidArgument when `text` also names another device (code for several GPUs is not moved)
// or an index is out of range. Pure; thread-safe.
Result<std::string> remap_cuda_device(std::string_view text, int from, int to);

// The text of each Triton kernel that Inductor's generated `source` compiles
// (`async_compile.triton('name', '''<text>''', ...)`), in order: the strings torch keys its
// compiled kernels by. Errors: Corruption for an unterminated literal, InvalidArgument for one
// with a backslash escape (its value would differ from its text). Pure; thread-safe.
Result<std::vector<std::string>> triton_kernel_sources(std::string_view source);

// --- the matrix products a graph hands to cuBLAS (docs/matrix-products.md) ---

// The sizes and strides of a tensor, as Inductor's wrapper writes them.
struct TensorLayout {
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  bool operator==(const TensorLayout&) const = default;
};

// One call of `extern_kernels.mm`, `addmm`, `bmm` or `baddbmm` (torch.mm and so on) in
// Inductor's Python wrapper, with the layout of each positional operand and of `out=`, and
// torch's name of the result's dtype ("float32"). cuBLAS loads a kernel for each distinct one
// at its first call; running one ahead loads the same kernel.
struct MatrixProduct {
  std::string op;
  std::string dtype;
  std::vector<TensorLayout> operands;
  TensorLayout out;
  bool operator==(const MatrixProduct&) const = default;
};

// Whether `wrapper` calls cuBLAS: `extern_kernels.` mm, addmm, bmm, baddbmm or _int_mm, read
// or not. Pure; thread-safe.
bool calls_cublas(std::string_view wrapper);

// The distinct products of `wrapper` whose every layout and dtype the wrapper spells out,
// in order of first appearance, at most the first 256. A dynamic dim's size is read at the
// graph's example value (the wrapper's get_args: the size it was compiled for); a size without
// a value or an operand the wrapper does not declare leaves the product out: this is a hint,
// never a failure (docs/matrix-products.md). Pure; thread-safe.
std::vector<MatrixProduct> matrix_products(std::string_view wrapper);

// The identity of an installed software package: hex sha256 over each file beneath `root`
// (its path, mode, size and mtime in nanoseconds; `__pycache__` left out), sorted. A value
// derived from the files' contents (Triton's triton_key) is reused only under the same
// identity (docs/installed-keys.md). Errors: NotFound, IOError. Thread-safe.
Result<std::string> installed_identity(const std::string& root);

// Torch's line slicing of a module's source (inspect.getsourcelines(m)[0][first-1:last-1]),
// hashed as torch does: hex sha256 of the joined lines.
std::string hash_source_lines(std::string_view module_source, uint32_t first_line,
                              uint32_t last_line);

}  // namespace megacache::precompile
