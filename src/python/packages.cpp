// megacache._core: precompile packages (read, checked, populated and written by the core) and
// the PrecompileContext that records and stitches them.
#include "python/binding.h"

#include <nanobind/stl/function.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "megacache/package.h"
#include "megacache/precompile.h"

namespace megacache::python {
namespace {

using namespace nb::literals;
namespace pc = megacache::precompile;

// `==` against any object, as Python's data model has it: another type is never equal.
template <typename Value>
void def_equality(nb::class_<Value>& type) {
  type.def(
      "__eq__",
      [](const Value& self, nb::handle other) {
        return nb::isinstance<Value>(other) && self == nb::cast<const Value&>(other);
      },
      nb::sig("def __eq__(self, other: object, /) -> bool"));
}

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
      read = with_trusted_keys(
          trusted_keys, [&](const auto& keys) { return pc::read_package(view(data), keys); });
    }
    if (!read.ok()) raise(read.status());
    return PyPackage{std::move(read).value()};
  }

  // A directory is the unpacked format; a file the binary one.
  static PyPackage read(const std::string& path, const std::string& trusted_keys) {
    megacache::Result<pc::Package> read = megacache::Status::OK();
    {
      nb::gil_scoped_release release;
      read = with_trusted_keys(trusted_keys,
                               [&](const auto& keys) { return pc::read_package_at(path, keys); });
    }
    if (!read.ok()) raise(read.status());
    return PyPackage{std::move(read).value()};
  }

  // `read(keys)` with the keys of MEGACACHE_TRUSTED_KEYS text.
  template <typename Read>
  static megacache::Result<pc::Package> with_trusted_keys(const std::string& trusted_keys,
                                                          Read read) {
    megacache::Result<std::vector<megacache::bundle::PublicKey>> keys =
        megacache::parse_trusted_keys(trusted_keys);
    if (!keys.ok()) return keys.status();
    return read(*keys);
  }

  nb::bytes to_bytes(const std::string& signing_key, int zstd_level) const {
    megacache::Result<std::optional<megacache::bundle::SigningKey>> key =
        signing_key_of(signing_key);
    if (!key.ok()) raise(key.status());
    std::string out;
    {
      nb::gil_scoped_release release;
      out = pc::write_package(package, {zstd_level, *key ? &**key : nullptr});
    }
    return nb::bytes(out.data(), out.size());
  }

  void write_unpacked(const std::string& dir, const std::string& signing_key) const {
    megacache::Result<std::optional<megacache::bundle::SigningKey>> key =
        signing_key_of(signing_key);
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

  std::pair<size_t, size_t> populate(const std::string& cache_dir,
                                     const std::vector<std::string>& triton_cache_dirs,
                                     const std::string& cuda_jit_dir,
                                     const std::string& cuda_driver) const {
    megacache::Result<megacache::PopulateReport> report = megacache::Status::OK();
    {
      nb::gil_scoped_release release;
      report =
          pc::populate_package(package, cache_dir, triton_cache_dirs, {cuda_jit_dir, cuda_driver});
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
    if (!f)
      raise(megacache::Status::NotFound("the package has no function with source key " + key));
    nb::dict out;
    out["qualname"] = f->entry.function.qualname;
    out["module"] = f->entry.function.module;
    out["first_line"] = f->entry.function.first_line;
    out["device_type"] = f->entry.device_type;
    out["dynamo"] = nb::bytes(f->entry.pickle.data(), f->entry.pickle.size());
    nb::dict backends;
    for (const auto& [id, pickle] : f->backends)
      backends[id.c_str()] = nb::bytes(pickle.data(), pickle.size());
    out["backends"] = backends;
    nb::list bypassed;
    for (const pc::Bypass& b : f->bypassed)
      bypassed.append(nb::make_tuple(b.code, b.backend_id, b.reason));
    out["bypassed"] = bypassed;
    out["codes"] = f->entry.codes.size();
    return out;
  }

  nb::bytes mega_cache() const {
    return nb::bytes(package.mega_cache.data(), package.mega_cache.size());
  }
};

void record_dynamo_entry(
    pc::PrecompileContext& self, const nb::dict& function, const std::string& device_type,
    const std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>& codes,
    const std::vector<std::tuple<std::string, uint32_t, uint32_t, std::string>>& sources,
    const nb::bytes& pickle) {
  pc::DynamoEntry entry;
  entry.function = identity_of(function);
  entry.device_type = device_type;
  for (const auto& [names, ids] : codes) entry.codes.push_back({names, ids});
  for (const auto& [module, first, last, sha] : sources)
    entry.inlined_sources.push_back({module, first, last, sha});
  entry.pickle.assign(view(pickle));
  self.record_dynamo_entry(std::move(entry));
}

}  // namespace

void init_packages(nb::module_& m) {
  m.def("cuda_driver_version", &pc::cuda_driver_version,
        "The NVIDIA driver's version from /proc/driver/nvidia/version, or '' where there is none.");
  m.def("list_cuda_jit_entries", &pc::list_cuda_jit_entries, "dir"_a, "since_unix"_a,
        "The paths of the CUDA JIT cache entries in dir written since since_unix (seconds), "
        "sorted: what a package built now would carry, before the size cap.");
  m.def(
      "store_name",
      [](const nb::dict& function, const Fields& fingerprint) {
        return pc::store_name(identity_of(function), fingerprint);
      },
      "function"_a, "fingerprint"_a,
      "The store name of one function's package in this environment.");
  m.def(
      "cuda_device_indices", [](const std::string& text) { return pc::cuda_device_indices(text); },
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
  auto layout = nb::class_<pc::TensorLayout>(m, "TensorLayout")
                    .def_ro("sizes", &pc::TensorLayout::sizes)
                    .def_ro("strides", &pc::TensorLayout::strides);
  def_equality(layout);
  auto product =
      nb::class_<pc::MatrixProduct>(m, "MatrixProduct")
          .def_ro("op", &pc::MatrixProduct::op, "torch's name: mm, addmm, bmm or baddbmm")
          .def_ro("dtype", &pc::MatrixProduct::dtype, "torch's name of the dtype: float32")
          .def_ro("operands", &pc::MatrixProduct::operands)
          .def_ro("out", &pc::MatrixProduct::out);
  def_equality(product);
  m.def(
      "calls_cublas", [](const std::string& source) { return pc::calls_cublas(source); },
      "source"_a,
      "Whether Inductor's wrapper calls cuBLAS (extern_kernels.mm, addmm, bmm, baddbmm, _int_mm).");
  m.def(
      "matrix_products",
      [](const std::string& source) {
        nb::gil_scoped_release release;  // read on the warm-up's thread while torch installs
        return pc::matrix_products(source);
      },
      "source"_a,
      "The distinct matrix products Inductor's wrapper hands to cuBLAS with every layout spelled "
      "out.");
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
      "root"_a,
      "The identity (hex sha256 of paths, modes, sizes and mtimes) of the files beneath root.");
  m.def("mega_cache_store_name", &pc::mega_cache_store_name, "fingerprint"_a,
        "The store name of the Mega-Cache bundle automatic mode keeps for this environment.");

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
           "triton_cache_dirs"_a = std::vector<std::string>(), "cuda_jit_dir"_a = "",
           "cuda_driver"_a = "",
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
                     for (const pc::KernelFile& module : self.package.triton_modules)
                       paths.push_back(module.path);
                     return paths;
                   })
      .def_prop_ro("cuda_jit_paths",
                   [](const PyPackage& self) {
                     std::vector<std::string> paths;
                     for (const pc::KernelFile& e : self.package.cuda_jit) paths.push_back(e.path);
                     return paths;
                   })
      .def(
          "bypassed",
          [](const PyPackage& self) {
            std::vector<std::tuple<std::string, uint32_t, std::string>> out;
            for (const pc::FunctionPackage& f : self.package.functions) {
              for (const pc::Bypass& b : f.bypassed)
                out.emplace_back(f.entry.function.qualname, b.code, b.reason);
            }
            return out;
          },
          "(qualname, code index, reason) of every code that will compile again on load.");

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
            megacache::Status status =
                self.edit_artifact(id, [&](std::string_view old) -> megacache::Result<std::string> {
                  nb::bytes edited = nb::cast<nb::bytes>(edit(nb::bytes(old.data(), old.size())));
                  return std::string(view(edited));
                });
            if (!status.ok()) raise(status);
          },
          "backend_id"_a, "edit"_a, "Replace a backend's pickle with edit(old_bytes).")
      .def(
          "package",
          [](const pc::PrecompileContext& self, const Fields& fingerprint,
             const std::string& cache_dir, const nb::bytes& mega_cache,
             const std::vector<std::string>& only,
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
                if (!cuda_jit_dir.empty())
                  jit = pc::read_cuda_jit_entries(cuda_jit_dir, cuda_jit_since);
                out =
                    PyPackage{self.package(fingerprint, std::move(kernels).value(), std::move(blob),
                                           only, std::move(modules).value(), std::move(jit))};
              }
            }
            if (!kernels.ok()) raise(kernels.status());
            if (!modules.ok()) raise(modules.status());
            return std::move(*out);
          },
          "fingerprint"_a, "cache_dir"_a, "mega_cache"_a, "only"_a = std::vector<std::string>(),
          "triton_cache_dirs"_a = std::vector<std::string>(), "cuda_jit_dir"_a = "",
          "cuda_jit_since"_a = 0,
          "Stitch the entries (only these source keys, if given) with their backends, the compiled "
          "kernels of the torch cache dir, the Triton modules this process loaded from the Triton "
          "cache dirs, the CUDA JIT cache entries written since cuda_jit_since (seconds) and a "
          "Mega-Cache blob into a Package.")
      .def("debug_info", &pc::PrecompileContext::debug_info_json)
      .def("clear", &pc::PrecompileContext::clear)
      .def("empty", &pc::PrecompileContext::empty);
}

}  // namespace megacache::python
