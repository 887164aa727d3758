// Precompile packages: everything a fresh process needs to run torch.compile'd functions
// without tracing or compiling. PrecompileContext mirrors torch's
// torch._dynamo.precompile_context.PrecompileContext: it holds backend artifacts by backend
// id and Dynamo cache entries by source key, and stitches them into per-function packages.
// A Package adds the environment fingerprint, the compiled C++ kernel libraries and torch's
// Mega-Cache artifacts (the fallback for frames torch could not precompile).
//
// Pickles stay opaque here: every fact that validation needs (function identity, source
// hashes, device type, backend ids) is recorded beside the pickle when the package is made,
// so a package is checked before anything in it is unpickled. Formats: docs/package-format.md.
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
#include "megacache/populate.h"
#include "megacache/status.h"

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

struct KernelFile {
  std::string path;  // relative to the cache dir: <2 chars>/<name>.so
  std::string bytes;
};

// Every compiled library in a torch cache dir (<cache_dir>/<2 chars>/<name>.so, kernel paths
// only), sorted by path: the CPU kernels and the vector-ISA probe libraries that a fresh dir
// would build again with the compiler. Errors: IOError.
Result<std::vector<KernelFile>> read_kernels(const std::string& cache_dir);

// A module Triton compiled with gcc into its cache dir (its CUDA driver helper, a kernel
// launcher), e.g. "<key>/cuda_utils.cpython-312-x86_64-linux-gnu.so". Triton looks for it under
// the hash of its source, platform and build options, and loads it instead of running gcc.
// True for "<key>/<name of [A-Za-z0-9_.-]>.so", the name not starting with "." and at most 200
// long, the key a sha256 as Triton names its dirs: 52 of [A-Z2-7] (base32), or 64 of [0-9a-f].
bool is_triton_module_path(std::string_view path);

// Every shared library this process has loaded from beneath one of `triton_cache_dirs` whose
// path there is a Triton module path (a module Triton built or found is loaded, so this is
// what the process used), sorted by path, each once. Errors: IOError. Thread-safe.
Result<std::vector<KernelFile>> read_loaded_triton_modules(const std::vector<std::string>& triton_cache_dirs);

// An entry of the CUDA driver's JIT cache (CUDA_CACHE_PATH, by default ~/.nv/ComputeCache):
// the driver's build of some PTX for this GPU, e.g. "1/a/c877fdb2075fc7". cuDNN's
// runtime-compiled kernels (its fused attention) pass through it. True for
// "<hex digit>/<hex digit>/<1 to 64 hex digits>"; the cache's own index is not an entry.
bool is_cuda_jit_path(std::string_view path);

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

struct Package {
  bundle::Fingerprint fingerprint;
  std::vector<FunctionPackage> functions;
  std::vector<KernelFile> kernels;
  std::vector<KernelFile> triton_modules;  // paths relative to a Triton cache dir
  std::vector<KernelFile> cuda_jit;        // paths relative to CUDA's JIT cache dir
  std::string mega_cache;  // torch's Mega-Cache blob (2.8+ layout); may be empty

  const FunctionPackage* find(std::string_view source_key) const;
};

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
                  std::vector<KernelFile> triton_modules = {}, std::vector<KernelFile> cuda_jit = {}) const;
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
Result<Package> read_unpacked(const std::string& dir, const std::vector<bundle::PublicKey>& trusted_keys);

// The one door to a package from outside, in either form, with one trust policy: `file` holds
// the binary form (a bundle, bundle::check_trust); `path` is a directory in the unpacked form or
// a file in the binary one. Thread-safe. Errors: those of bundle::parse, check_trust,
// read_package and read_unpacked; NotFound and IOError for the path.
Result<Package> read_package(std::string_view file, const std::vector<bundle::PublicKey>& trusted_keys);
Result<Package> read_package_at(const std::string& path, const std::vector<bundle::PublicKey>& trusted_keys);

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
