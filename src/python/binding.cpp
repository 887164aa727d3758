// megacache._core: the Python binding. No logic lives here: it converts arguments, releases
// the GIL around C++ work and maps a non-OK Status to a Python exception type.
#include <nanobind/nanobind.h>

#include <stdexcept>

#include <nanobind/stl/function.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "megacache/aot.h"
#include "megacache/manager.h"
#include "megacache/mega_cache.h"
#include "megacache/open.h"
#include "megacache/populate.h"
#include "megacache/precompile.h"
#include "megacache/store.h"
#include "util/file_system.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Thrown only here, at the edge, and translated by nanobind into the Python types registered
// in NB_MODULE below. MegacacheError is only their common base.
struct MegacacheError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct CorruptionError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct InvalidInputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct PackageMismatchError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void raise(const megacache::Status& status) {
  const std::string message = status.to_string();
  switch (status.code()) {
    case megacache::Status::Code::kCorruption:
      throw CorruptionError(message);
    case megacache::Status::Code::kInvalidArgument:
      throw InvalidInputError(message);
    case megacache::Status::Code::kMismatch:
      throw PackageMismatchError(status.message());
    case megacache::Status::Code::kNotFound:
      PyErr_SetString(PyExc_FileNotFoundError, message.c_str());
      throw nb::python_error();
    default:
      PyErr_SetString(PyExc_OSError, message.c_str());
      throw nb::python_error();
  }
}

std::string_view view(const nb::bytes& data) { return {data.c_str(), data.size()}; }

using TypeKeys = std::vector<std::pair<std::string, std::vector<std::string>>>;
using Fields = std::vector<std::pair<std::string, std::string>>;

// `open(file, keys)` (open_file, open_artifacts) with the trusted keys given as
// MEGACACHE_TRUSTED_KEYS text.
template <typename Open>
megacache::Result<megacache::OpenedFile> open_with_keys(std::string_view file, const std::string& trusted_keys,
                                                        Open open) {
  megacache::Result<std::vector<megacache::bundle::PublicKey>> keys =
      megacache::parse_trusted_keys(trusted_keys);
  if (!keys.ok()) return keys.status();
  return open(file, *keys);
}

// A signing key from its hex text; none for "".
megacache::Result<std::optional<megacache::bundle::SigningKey>> signing_key_of(const std::string& hex) {
  if (hex.empty()) return std::optional<megacache::bundle::SigningKey>();
  megacache::Result<megacache::bundle::SigningKey> key = megacache::bundle::parse_signing_key(hex);
  if (!key.ok()) return key.status();
  return std::optional<megacache::bundle::SigningKey>(*key);
}

// Opens any supported file (Mega-Cache, standalone_compile, bundle) and populates
// `cache_dir`. Returns what was loaded per type, the bundle's fingerprint (empty for torch's
// formats) and the artifacts of `caller_populated_types` as (type, key, content), which the
// caller hands to torch. `pgo_cache_key` is called (with the GIL) only if a PGO key needs
// torch's rewrite.
std::tuple<TypeKeys, Fields, std::vector<std::tuple<std::string, std::string, nb::bytes>>> load_into(
    const nb::bytes& data, const std::string& cache_dir, std::optional<nb::callable> pgo_cache_key,
    const std::string& trusted_keys, std::vector<std::string> caller_populated_types) {
  megacache::PopulateOptions options;
  options.caller_populated_types = std::move(caller_populated_types);
  if (pgo_cache_key) {
    options.pgo_cache_key = [&]() {
      nb::gil_scoped_acquire acquire;
      return nb::cast<std::string>((*pgo_cache_key)());
    };
  }
  megacache::Result<megacache::PopulateReport> report = megacache::Status::OK();
  Fields fingerprint;
  {
    nb::gil_scoped_release release;
    report = [&]() -> megacache::Result<megacache::PopulateReport> {
      megacache::Result<megacache::OpenedFile> opened = open_with_keys(view(data), trusted_keys, megacache::open_artifacts);
      if (!opened.ok()) return opened.status();
      if (opened->bundle) fingerprint = opened->bundle->fingerprint;
      return megacache::populate_file(*opened, cache_dir, options);
    }();
  }
  if (!report.ok()) raise(report.status());
  std::vector<std::tuple<std::string, std::string, nb::bytes>> caller_populated;
  for (const megacache::mega_cache::OwnedArtifact& artifact : report->caller_populated) {
    caller_populated.emplace_back(artifact.type, artifact.key,
                                  nb::bytes(artifact.content.data(), artifact.content.size()));
  }
  return {report->info.entries(), fingerprint, std::move(caller_populated)};
}

// A bundle of a Mega-Cache blob (or standalone file), optionally signed.
nb::bytes bundle_of(const nb::bytes& data, const Fields& fingerprint, int zstd_level,
                    const std::string& signing_key) {
  std::string out;
  megacache::Status status;
  {
    nb::gil_scoped_release release;
    status = [&]() -> megacache::Status {
      megacache::Result<std::optional<megacache::bundle::SigningKey>> key = signing_key_of(signing_key);
      if (!key.ok()) return key.status();
      megacache::Result<megacache::OpenedFile> opened = megacache::open_artifacts(view(data), {});
      if (!opened.ok()) return opened.status();
      if (opened->bundle) return megacache::Status::InvalidArgument("this is a bundle already");
      out = megacache::bundle::write(*opened->artifacts(), fingerprint,
                                     {zstd_level, *key ? &**key : nullptr});
      return megacache::Status::OK();
    }();
  }
  if (!status.ok()) raise(status);
  return nb::bytes(out.data(), out.size());
}

// The bundle of a torch.compiler.precompile pair (aot::write_pair), optionally signed.
nb::bytes aot_pair_bytes(const std::string& api, const nb::bytes& python_code, const nb::bytes& cache,
                         const Fields& cache_fields, const Fields& fingerprint, int zstd_level,
                         const std::string& signing_key) {
  megacache::aot::Pair pair{api, std::string(view(python_code)), std::string(view(cache)), cache_fields, {}};
  megacache::Result<std::string> out = megacache::Status::OK();
  {
    nb::gil_scoped_release release;
    out = [&]() -> megacache::Result<std::string> {
      megacache::Result<std::optional<megacache::bundle::SigningKey>> key = signing_key_of(signing_key);
      if (!key.ok()) return key.status();
      return megacache::aot::write_pair(pair, fingerprint, {zstd_level, *key ? &**key : nullptr});
    }();
  }
  if (!out.ok()) raise(out.status());
  return nb::bytes(out->data(), out->size());
}

// The checked pair in a file's bytes: (api, python_code, cache, cache_fields, fingerprint).
std::tuple<std::string, nb::bytes, nb::bytes, Fields, Fields> read_aot_pair(const nb::bytes& data,
                                                                             const std::string& trusted_keys) {
  megacache::Result<megacache::OpenedFile> opened = megacache::Status::OK();
  {
    nb::gil_scoped_release release;
    opened = open_with_keys(view(data), trusted_keys, megacache::open_file);
  }
  if (!opened.ok()) raise(opened.status());
  if (!opened->pair) {
    raise(megacache::Status::InvalidArgument(
        "this file is not a torch.compiler.precompile pair; save one with megacache.save_precompiled"));
  }
  const megacache::aot::Pair& pair = *opened->pair;
  return {pair.api, nb::bytes(pair.python_code.data(), pair.python_code.size()),
          nb::bytes(pair.cache.data(), pair.cache.size()), pair.cache_fields, pair.fingerprint};
}

void verify(const nb::bytes& data, const std::string& trusted_keys) {
  megacache::Status status;
  {
    nb::gil_scoped_release release;
    status = [&]() -> megacache::Status {
      megacache::Result<std::vector<megacache::bundle::PublicKey>> keys =
          megacache::parse_trusted_keys(trusted_keys);
      if (!keys.ok()) return keys.status();
      return megacache::verify_file(view(data), *keys).status();
    }();
  }
  if (!status.ok()) raise(status);
}

// The Mega-Cache blob a file carries: itself, a standalone_compile payload, or a bundle's
// artifacts converted back (byte for byte what the bundle was made from).
nb::bytes mega_cache_of(const nb::bytes& file, const std::string& trusted_keys) {
  std::string converted;
  megacache::Status status;
  bool same = false;
  std::string_view blob;
  {
    nb::gil_scoped_release release;
    status = [&]() -> megacache::Status {
      megacache::Result<megacache::OpenedFile> opened = open_with_keys(view(file), trusted_keys, megacache::open_artifacts);
      if (!opened.ok()) return opened.status();
      if (opened->bundle) {
        converted = megacache::mega_cache::write_groups(*opened->artifacts());
        blob = converted;
      } else if (opened->standalone) {
        blob = opened->standalone->payload;
      } else {
        same = true;
      }
      return megacache::Status::OK();
    }();
  }
  if (!status.ok()) raise(status);
  if (same) return file;
  return nb::bytes(blob.data(), blob.size());
}

void write_file_atomic(const std::string& path, const nb::bytes& data) {
  megacache::Status status;
  {
    nb::gil_scoped_release release;
    status = megacache::util::write_named_file(path, view(data));
  }
  if (!status.ok()) raise(status);
}

// A single-flight claim; release() (or garbage collection) drops the lock.
struct PyClaim {
  std::shared_ptr<megacache::store::Lock> lock;
  void release() { lock.reset(); }
  bool held() const { return lock != nullptr; }
};

// A store handle for Python; the work is in megacache::store.
class PyStore {
 public:
  explicit PyStore(const std::string& url) {
    megacache::Result<std::unique_ptr<megacache::store::Store>> opened =
        megacache::store::open(url.empty() ? megacache::store::default_url() : url);
    if (!opened.ok()) raise(opened.status());
    store_ = std::move(opened).value();
  }
  std::string url() const { return store_->url(); }
  std::optional<nb::bytes> get(const std::string& name) {
    std::optional<std::string> value;
    {
      nb::gil_scoped_release release;
      value = store_->get(name);
    }
    if (!value) return std::nullopt;
    return nb::bytes(value->data(), value->size());
  }
  void put(const std::string& name, const nb::bytes& value) {
    megacache::Status status;
    {
      nb::gil_scoped_release release;
      status = store_->put(name, view(value));
    }
    if (!status.ok()) raise(status);
  }
  bool contains(const std::string& name) {
    nb::gil_scoped_release release;
    return store_->contains(name);
  }
  void remove(const std::string& name) {
    megacache::Status status = store_->remove(name);
    if (!status.ok()) raise(status);
  }
  std::vector<std::tuple<std::string, uint64_t, int64_t>> list() {
    std::vector<std::tuple<std::string, uint64_t, int64_t>> out;
    for (const auto& entry : store_->list()) out.emplace_back(entry.name, entry.size, entry.last_used_unix);
    return out;
  }
  uint64_t gc(uint64_t max_bytes) {
    megacache::Result<uint64_t> freed = store_->gc(max_bytes);
    if (!freed.ok()) raise(freed.status());
    return *freed;
  }
  std::vector<std::pair<std::string, uint64_t>> stats() {
    const megacache::store::Stats s = store_->stats();
    return {{"hits", s.hits},         {"misses", s.misses}, {"puts", s.puts},
            {"bytes_in", s.bytes_in}, {"bytes_out", s.bytes_out}, {"errors", s.errors},
            {"timeouts", s.timeouts}};
  }
  void zero_stats() { store_->zero_stats(); }
  // (value, None) on a hit; (None, claim) when this caller should produce and publish;
  // (None, None) when waiting for another producer ran out.
  std::pair<std::optional<nb::bytes>, std::optional<PyClaim>> get_or_claim(const std::string& name,
                                                                           double wait_seconds) {
    megacache::store::Claimed claimed;
    {
      nb::gil_scoped_release release;
      claimed = megacache::store::get_or_claim(
          *store_, name, std::chrono::milliseconds(static_cast<int64_t>(wait_seconds * 1000)));
    }
    std::pair<std::optional<nb::bytes>, std::optional<PyClaim>> out;
    if (claimed.value) out.first = nb::bytes(claimed.value->data(), claimed.value->size());
    if (claimed.claim) out.second = PyClaim{std::shared_ptr<megacache::store::Lock>(std::move(claimed.claim))};
    return out;
  }

 private:
  std::unique_ptr<megacache::store::Store> store_;
};

namespace pc = megacache::precompile;

// A function's identity as the torch adapter passes it: a dict with FunctionIdentity's fields.
pc::FunctionIdentity identity_of(const nb::dict& f) {
  return {nb::cast<std::string>(f["qualname"]), nb::cast<std::string>(f["module"]),
          nb::cast<uint32_t>(f["first_line"]), nb::cast<std::string>(f["signature"]),
          nb::cast<std::string>(f["source_sha256"])};
}

// A package held by Python: read from a file, a directory or bytes, or made by a
// PrecompileContext; checked, populated and written by the core.
struct PyPackage {
  pc::Package package;

  static PyPackage from_bytes(const nb::bytes& data, const std::string& trusted_keys) {
    megacache::Result<pc::Package> read = megacache::Status::OK();
    {
      nb::gil_scoped_release release;
      read = with_trusted_keys(trusted_keys, [&](const auto& keys) { return pc::read_package(view(data), keys); });
    }
    if (!read.ok()) raise(read.status());
    return PyPackage{std::move(read).value()};
  }

  // A directory is the unpacked format; a file the binary one.
  static PyPackage read(const std::string& path, const std::string& trusted_keys) {
    megacache::Result<pc::Package> read = megacache::Status::OK();
    {
      nb::gil_scoped_release release;
      read = with_trusted_keys(trusted_keys, [&](const auto& keys) { return pc::read_package_at(path, keys); });
    }
    if (!read.ok()) raise(read.status());
    return PyPackage{std::move(read).value()};
  }

  // `read(keys)` with the keys of MEGACACHE_TRUSTED_KEYS text.
  template <typename Read>
  static megacache::Result<pc::Package> with_trusted_keys(const std::string& trusted_keys, Read read) {
    megacache::Result<std::vector<megacache::bundle::PublicKey>> keys = megacache::parse_trusted_keys(trusted_keys);
    if (!keys.ok()) return keys.status();
    return read(*keys);
  }

  nb::bytes to_bytes(const std::string& signing_key, int zstd_level) const {
    megacache::Result<std::optional<megacache::bundle::SigningKey>> key = signing_key_of(signing_key);
    if (!key.ok()) raise(key.status());
    std::string out;
    {
      nb::gil_scoped_release release;
      out = pc::write_package(package, {zstd_level, *key ? &**key : nullptr});
    }
    return nb::bytes(out.data(), out.size());
  }

  void write_unpacked(const std::string& dir, const std::string& signing_key) const {
    megacache::Result<std::optional<megacache::bundle::SigningKey>> key = signing_key_of(signing_key);
    if (!key.ok()) raise(key.status());
    megacache::Status status;
    {
      nb::gil_scoped_release release;
      status = pc::write_unpacked(package, dir, *key ? &**key : nullptr);
    }
    if (!status.ok()) raise(status);
  }

  void check(const Fields& current, std::optional<nb::dict> function, bool ignore_source_changes,
             std::optional<nb::callable> module_source) const {
    pc::LoadCheck check;
    check.current = current;
    check.ignore_source_changes = ignore_source_changes;
    if (function) check.function = identity_of(*function);
    if (module_source) {
      check.module_source = [&](const std::string& module) -> std::optional<std::string> {
        nb::object text = (*module_source)(module);
        if (text.is_none()) return std::nullopt;
        return nb::cast<std::string>(text);
      };
    }
    megacache::Status status = pc::check_package(package, check);
    if (!status.ok()) raise(status);
  }

  std::pair<size_t, size_t> populate(const std::string& cache_dir, const std::vector<std::string>& triton_cache_dirs,
                                     const std::string& cuda_jit_dir, const std::string& cuda_driver) const {
    megacache::Result<megacache::PopulateReport> report = megacache::Status::OK();
    {
      nb::gil_scoped_release release;
      report = pc::populate_package(package, cache_dir, triton_cache_dirs, {cuda_jit_dir, cuda_driver});
    }
    if (!report.ok()) raise(report.status());
    return {report->files_written, report->files_unchanged};
  }

  std::vector<std::string> keys() const {
    std::vector<std::string> out;
    for (const pc::FunctionPackage& f : package.functions) out.push_back(f.entry.key());
    return out;
  }

  // What the torch adapter needs to rebuild torch's PrecompileCacheEntry.
  nb::dict function(const std::string& key) const {
    const pc::FunctionPackage* f = package.find(key);
    if (!f) raise(megacache::Status::NotFound("the package has no function with source key " + key));
    nb::dict out;
    out["qualname"] = f->entry.function.qualname;
    out["module"] = f->entry.function.module;
    out["first_line"] = f->entry.function.first_line;
    out["device_type"] = f->entry.device_type;
    out["dynamo"] = nb::bytes(f->entry.pickle.data(), f->entry.pickle.size());
    nb::dict backends;
    for (const auto& [id, pickle] : f->backends) backends[id.c_str()] = nb::bytes(pickle.data(), pickle.size());
    out["backends"] = backends;
    nb::list bypassed;
    for (const pc::Bypass& b : f->bypassed) bypassed.append(nb::make_tuple(b.code, b.backend_id, b.reason));
    out["bypassed"] = bypassed;
    out["codes"] = f->entry.codes.size();
    return out;
  }

  nb::bytes mega_cache() const { return nb::bytes(package.mega_cache.data(), package.mega_cache.size()); }
};

void record_dynamo_entry(pc::PrecompileContext& self, const nb::dict& function,
                         const std::string& device_type,
                         const std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>& codes,
                         const std::vector<std::tuple<std::string, uint32_t, uint32_t, std::string>>& sources,
                         const nb::bytes& pickle) {
  pc::DynamoEntry entry;
  entry.function = identity_of(function);
  entry.device_type = device_type;
  for (const auto& [names, ids] : codes) entry.codes.push_back({names, ids});
  for (const auto& [module, first, last, sha] : sources) entry.inlined_sources.push_back({module, first, last, sha});
  entry.pickle.assign(view(pickle));
  self.record_dynamo_entry(std::move(entry));
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "megacache C++ core (see the megacache package for the Python API)";
  m.attr("__version__") = MEGACACHE_VERSION;
  // The torch adapter keeps a PrecompileContext and hooks installed into torch for the life of
  // the process; torch's modules still reference them when the interpreter tears down, which
  // nanobind would report as leaks at every exit.
  nb::set_leak_warnings(false);

  // One base for every error megacache raises of its own; each keeps the built-in base it
  // had (a damaged input is a ValueError) so existing handlers still catch it.
  nb::handle base = nb::exception<MegacacheError>(m, "MegacacheError", PyExc_Exception);
  nb::exception<CorruptionError>(m, "CorruptionError", nb::make_tuple(base, nb::handle(PyExc_ValueError)));
  nb::exception<InvalidInputError>(m, "InvalidInputError", nb::make_tuple(base, nb::handle(PyExc_ValueError)));
  nb::exception<PackageMismatchError>(m, "PackageMismatchError", nb::make_tuple(base, nb::handle(PyExc_RuntimeError)));

  m.def("load_into", &load_into, "data"_a, "cache_dir"_a, "pgo_cache_key"_a = nb::none(),
        "trusted_keys"_a = "", "caller_populated_types"_a = std::vector<std::string>(),
        "Open a Mega-Cache blob, standalone file or bundle and write its artifacts into "
        "cache_dir as torch would; returns (loaded keys per type, bundle fingerprint, "
        "[(type, key, content)] of caller_populated_types for torch to populate).");
  m.def("bundle_of", &bundle_of, "data"_a, "fingerprint"_a, "zstd_level"_a = 3,
        "signing_key"_a = "", "Convert a Mega-Cache blob into a megacache bundle.");
  m.def("host_fingerprint", &megacache::bundle::host_fingerprint,
        "cpu_arch, os and the megacache version, as bundles record them.");
  m.def("cuda_driver_version", &pc::cuda_driver_version,
        "The NVIDIA driver's version from /proc/driver/nvidia/version, or '' where there is none.");
  m.def("list_cuda_jit_entries", &pc::list_cuda_jit_entries, "dir"_a, "since_unix"_a,
        "The paths of the CUDA JIT cache entries in dir written since since_unix (seconds), "
        "sorted: what a package built now would carry, before the size cap.");
  m.def(
      "compare_fingerprints",
      [](const Fields& built, const Fields& current) {
        std::vector<std::tuple<std::string, std::string, std::string>> out;
        for (const auto& m : megacache::bundle::compare_fingerprints(built, current)) {
          out.emplace_back(m.name, m.built, m.current);
        }
        return out;
      },
      "built"_a, "current"_a, "Fields whose values differ: (name, built, current).");
  m.def("aot_pair_bytes", &aot_pair_bytes, "api"_a, "python_code"_a, "cache"_a, "cache_fields"_a,
        "fingerprint"_a, "zstd_level"_a = 3, "signing_key"_a = "",
        "A torch.compiler.precompile pair as one megacache bundle (docs/aot-format.md).");
  m.def("read_aot_pair", &read_aot_pair, "data"_a, "trusted_keys"_a = "",
        "(api, python_code, cache, cache_fields, fingerprint) of a pair's bundle, checked whole.");
  m.def("verify", &verify, "data"_a, "trusted_keys"_a = "",
        "Check any supported file as populate would; write nothing.");
  m.def("mega_cache_of", &mega_cache_of, "file"_a, "trusted_keys"_a = "",
        "The Mega-Cache blob a file carries: itself, a standalone_compile payload, or what a "
        "bundle was made from.");
  m.def(
      "standalone_file",
      [](const nb::bytes& torch_key, const std::string& aot_autograd_key, const nb::bytes& blob) {
        megacache::mega_cache::StandaloneArtifact artifact;
        artifact.torch_key = view(torch_key);
        artifact.aot_autograd_key = aot_autograd_key;
        artifact.payload = view(blob);
        const std::string file = megacache::mega_cache::write_standalone(artifact);
        return nb::bytes(file.data(), file.size());
      },
      "torch_key"_a, "aot_autograd_key"_a, "blob"_a,
      "The bytes of torch's CacheCompiledArtifact binary file for a Mega-Cache blob.");
  m.def(
      "standalone_parts",
      [](const nb::bytes& file) {
        megacache::Result<megacache::mega_cache::StandaloneArtifact> parsed =
            megacache::mega_cache::parse_standalone(view(file));
        if (!parsed.ok()) raise(parsed.status());
        return nb::make_tuple(static_cast<int>(parsed->kind),
                              nb::bytes(parsed->torch_key.data(), parsed->torch_key.size()),
                              parsed->aot_autograd_key,
                              nb::bytes(parsed->payload.data(), parsed->payload.size()));
      },
      "file"_a, "(kind, torch_key, aot_autograd_key, payload) of a standalone_compile binary file; "
      "kind 0 CacheCompiledArtifact, 1 AOTCompiledArtifact, 2 headerless 2.8.");
  m.def(
      "store_name",
      [](const nb::dict& function, const Fields& fingerprint) {
        return pc::store_name(identity_of(function), fingerprint);
      },
      "function"_a, "fingerprint"_a, "The store name of one function's package in this environment.");
  m.def("cuda_device_indices", [](const std::string& text) { return pc::cuda_device_indices(text); },
        "text"_a, "The CUDA device indices Inductor's generated code in text names.");
  m.def(
      "remap_cuda_device",
      [](const std::string& text, int from, int to) {
        megacache::Result<std::string> remapped = pc::remap_cuda_device(text, from, to);
        if (!remapped.ok()) raise(remapped.status());
        return std::move(remapped).value();
      },
      "text"_a, "from_index"_a, "to_index"_a,
      "Generated code with its mentions of cuda:from rewritten to cuda:to.");
  m.def(
      "triton_kernel_sources",
      [](const std::string& source) {
        megacache::Result<std::vector<std::string>> kernels = pc::triton_kernel_sources(source);
        if (!kernels.ok()) raise(kernels.status());
        return std::move(kernels).value();
      },
      "source"_a, "The text of each Triton kernel the generated code compiles, in order.");
  m.def(
      "installed_identity",
      [](const std::string& root) {
        megacache::Result<std::string> identity = [&] {
          nb::gil_scoped_release release;  // installed_keys takes it on a thread of its own
          return pc::installed_identity(root);
        }();
        if (!identity.ok()) raise(identity.status());
        return std::move(identity).value();
      },
      "root"_a, "The identity (hex sha256 of paths, modes, sizes and mtimes) of the files beneath root.");
  m.def("mega_cache_store_name", &pc::mega_cache_store_name, "fingerprint"_a,
        "The store name of the Mega-Cache bundle automatic mode keeps for this environment.");
  m.def("write_file_atomic", &write_file_atomic, "path"_a, "data"_a,
        "Write a file through a temp file and rename; readers never see a part.");

  m.def("default_store_url", &megacache::store::default_url,
        "MEGACACHE_STORE, else file://$MEGACACHE_DIR, else file://~/.cache/megacache.");
  nb::class_<PyStore>(m, "Store")
      .def(nb::init<const std::string&>(), "url"_a = "")
      .def_prop_ro("url", &PyStore::url)
      .def("get", &PyStore::get, "name"_a, "The value, or None on a miss (remote errors are misses).")
      .def("put", &PyStore::put, "name"_a, "value"_a)
      .def("contains", &PyStore::contains, "name"_a)
      .def("remove", &PyStore::remove, "name"_a)
      .def("list", &PyStore::list, "[(name, bytes, last_used_unix)]")
      .def("gc", &PyStore::gc, "max_bytes"_a)
      .def("stats", &PyStore::stats)
      .def("zero_stats", &PyStore::zero_stats)
      .def("get_or_claim", &PyStore::get_or_claim, "name"_a, "wait_seconds"_a,
           "Single flight: (value, None) on a hit, (None, claim) when this caller must produce "
           "and put, (None, None) when waiting for another producer ran out.");
  nb::class_<PyClaim>(m, "Claim")
      .def("release", &PyClaim::release)
      .def_prop_ro("held", &PyClaim::held);

  nb::class_<PyPackage>(m, "Package")
      .def_static("read", &PyPackage::read, "path"_a, "trusted_keys"_a = "",
                  "A package file (binary) or directory (unpacked).")
      .def_static("from_bytes", &PyPackage::from_bytes, "data"_a, "trusted_keys"_a = "")
      .def("to_bytes", &PyPackage::to_bytes, "signing_key"_a = "", "zstd_level"_a = 3)
      .def("write_unpacked", &PyPackage::write_unpacked, "dir"_a, "signing_key"_a = "")
      .def("check", &PyPackage::check, "current"_a, "function"_a = nb::none(),
           "ignore_source_changes"_a = false, "module_source"_a = nb::none(),
           "Raise PackageMismatchError if the package does not fit here (see check_package).")
      .def("populate", &PyPackage::populate, "cache_dir"_a,
           "triton_cache_dirs"_a = std::vector<std::string>(), "cuda_jit_dir"_a = "", "cuda_driver"_a = "",
           "Write the kernels and Mega-Cache artifacts into cache_dir, the Triton modules into "
           "each Triton cache dir, and the CUDA JIT cache entries into cuda_jit_dir where the "
           "package was made with cuda_driver; returns (files written, files already there).")
      .def("keys", &PyPackage::keys)
      .def("function", &PyPackage::function, "key"_a)
      .def("mega_cache", &PyPackage::mega_cache)
      .def("describe", [](const PyPackage& self) { return pc::describe(self.package); })
      .def_prop_ro("fingerprint", [](const PyPackage& self) { return self.package.fingerprint; })
      .def_prop_ro("kernel_paths",
                   [](const PyPackage& self) {
                     std::vector<std::string> paths;
                     for (const pc::KernelFile& k : self.package.kernels) paths.push_back(k.path);
                     return paths;
                   })
      .def_prop_ro("triton_module_paths",
                   [](const PyPackage& self) {
                     std::vector<std::string> paths;
                     for (const pc::KernelFile& m : self.package.triton_modules) paths.push_back(m.path);
                     return paths;
                   })
      .def_prop_ro("cuda_jit_paths",
                   [](const PyPackage& self) {
                     std::vector<std::string> paths;
                     for (const pc::KernelFile& e : self.package.cuda_jit) paths.push_back(e.path);
                     return paths;
                   })
      .def("bypassed", [](const PyPackage& self) {
        std::vector<std::tuple<std::string, uint32_t, std::string>> out;
        for (const pc::FunctionPackage& f : self.package.functions) {
          for (const pc::Bypass& b : f.bypassed) out.emplace_back(f.entry.function.qualname, b.code, b.reason);
        }
        return out;
      }, "(qualname, code index, reason) of every code that will compile again on load.");

  nb::class_<pc::PrecompileContext>(m, "PrecompileContext")
      .def(nb::init<>())
      .def(
          "record_backend",
          [](pc::PrecompileContext& self, const std::string& id, const nb::bytes& pickle) {
            self.record_backend(id, std::string(view(pickle)));
          },
          "backend_id"_a, "pickle"_a)
      .def("record_dynamo_entry", &record_dynamo_entry, "function"_a, "device_type"_a, "codes"_a,
           "inlined_sources"_a, "pickle"_a)
      .def(
          "serialize_artifact_by_key",
          [](const pc::PrecompileContext& self, const std::string& id) -> std::optional<nb::bytes> {
            std::optional<std::string> pickle = self.serialize_artifact_by_key(id);
            if (!pickle) return std::nullopt;
            return nb::bytes(pickle->data(), pickle->size());
          },
          "backend_id"_a)
      .def(
          "edit_artifact",
          [](pc::PrecompileContext& self, const std::string& id, nb::callable edit) {
            megacache::Status status = self.edit_artifact(id, [&](std::string_view old) -> megacache::Result<std::string> {
              nb::bytes edited = nb::cast<nb::bytes>(edit(nb::bytes(old.data(), old.size())));
              return std::string(view(edited));
            });
            if (!status.ok()) raise(status);
          },
          "backend_id"_a, "edit"_a, "Replace a backend's pickle with edit(old_bytes).")
      .def(
          "package",
          [](const pc::PrecompileContext& self, const Fields& fingerprint, const std::string& cache_dir,
             const nb::bytes& mega_cache, const std::vector<std::string>& only,
             const std::vector<std::string>& triton_cache_dirs, const std::string& cuda_jit_dir,
             int64_t cuda_jit_since) {
            std::string blob(view(mega_cache));
            megacache::Result<std::vector<pc::KernelFile>> kernels = megacache::Status::OK();
            megacache::Result<std::vector<pc::KernelFile>> modules = std::vector<pc::KernelFile>();
            std::optional<PyPackage> out;
            {
              nb::gil_scoped_release release;
              kernels = pc::read_kernels(cache_dir);
              if (kernels.ok()) modules = pc::read_loaded_triton_modules(triton_cache_dirs);
              if (kernels.ok() && modules.ok()) {
                std::vector<pc::KernelFile> jit;
                if (!cuda_jit_dir.empty()) jit = pc::read_cuda_jit_entries(cuda_jit_dir, cuda_jit_since);
                out = PyPackage{self.package(fingerprint, std::move(kernels).value(), std::move(blob), only,
                                             std::move(modules).value(), std::move(jit))};
              }
            }
            if (!kernels.ok()) raise(kernels.status());
            if (!modules.ok()) raise(modules.status());
            return std::move(*out);
          },
          "fingerprint"_a, "cache_dir"_a, "mega_cache"_a, "only"_a = std::vector<std::string>(),
          "triton_cache_dirs"_a = std::vector<std::string>(), "cuda_jit_dir"_a = "", "cuda_jit_since"_a = 0,
          "Stitch the entries (only these source keys, if given) with their backends, the compiled "
          "kernels of the torch cache dir, the Triton modules this process loaded from the Triton "
          "cache dirs, the CUDA JIT cache entries written since cuda_jit_since (seconds) and a "
          "Mega-Cache blob into a Package.")
      .def("debug_info", &pc::PrecompileContext::debug_info_json)
      .def("clear", &pc::PrecompileContext::clear)
      .def("empty", &pc::PrecompileContext::empty);

  nb::class_<megacache::ArtifactManager>(m, "ArtifactManager")
      .def(nb::init<>())
      .def(
          "record",
          [](megacache::ArtifactManager& self, const std::string& type, const std::string& key,
             const nb::bytes& content) { return self.record(type, key, view(content)); },
          "type"_a, "key"_a, "content"_a)
      .def(
          "record_blob",
          [](megacache::ArtifactManager& self, const nb::bytes& blob) {
            const megacache::Status status = self.record_blob(view(blob));
            if (!status.ok()) raise(status);
          },
          "blob"_a, "Record what torch would load from a Mega-Cache blob; CorruptionError if it does not parse.")
      .def("need_serialize", &megacache::ArtifactManager::need_serialize)
      .def("serialize",
           [](megacache::ArtifactManager& self) -> std::optional<nb::bytes> {
             const std::string_view blob = self.serialize();
             if (blob.empty()) return std::nullopt;
             return nb::bytes(blob.data(), blob.size());
           })
      .def("cache_info",
           [](const megacache::ArtifactManager& self) { return self.cache_info().entries(); })
      .def("clear", &megacache::ArtifactManager::clear);
}
