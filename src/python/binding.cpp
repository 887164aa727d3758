// megacache._core: the Python binding. No logic lives here: it converts arguments, releases
// the GIL around C++ work and maps a non-OK Status to a Python exception type.
#include <nanobind/nanobind.h>

#include <stdexcept>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "megacache/manager.h"
#include "megacache/mega_cache.h"
#include "megacache/open.h"
#include "megacache/populate.h"
#include "megacache/store.h"
#include "util/file_system.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

// Thrown only here, at the edge, and translated by nanobind into the Python types registered
// in NB_MODULE below.
struct CorruptionError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct InvalidInputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void raise(const megacache::Status& status) {
  const std::string message = status.to_string();
  switch (status.code()) {
    case megacache::Status::Code::kCorruption:
      throw CorruptionError(message);
    case megacache::Status::Code::kInvalidArgument:
      throw InvalidInputError(message);
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

// open_artifacts with the trusted keys given as MEGACACHE_TRUSTED_KEYS text.
megacache::Result<megacache::OpenedFile> open_artifacts(std::string_view file, const std::string& trusted_keys) {
  megacache::Result<std::vector<megacache::bundle::PublicKey>> keys =
      megacache::parse_trusted_keys(trusted_keys);
  if (!keys.ok()) return keys.status();
  return megacache::open_artifacts(file, *keys);
}

// Opens any supported file (Mega-Cache, standalone_compile, bundle) and populates
// `cache_dir`. Returns what was loaded per type and the bundle's fingerprint (empty for
// torch's formats). `pgo_cache_key` is called (with the GIL) only if a PGO key needs torch's
// rewrite.
std::pair<TypeKeys, Fields> load_into(const nb::bytes& data, const std::string& cache_dir,
                                      std::optional<nb::callable> pgo_cache_key,
                                      const std::string& trusted_keys) {
  megacache::PopulateOptions options;
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
      megacache::Result<megacache::OpenedFile> opened = open_artifacts(view(data), trusted_keys);
      if (!opened.ok()) return opened.status();
      if (opened->bundle) fingerprint = opened->bundle->fingerprint;
      return megacache::populate(*opened->artifacts(), cache_dir, options);
    }();
  }
  if (!report.ok()) raise(report.status());
  return {report->info.entries(), fingerprint};
}

// A bundle of a Mega-Cache blob (or standalone file), optionally signed.
nb::bytes bundle_of(const nb::bytes& data, const Fields& fingerprint, int zstd_level,
                    const std::string& signing_key) {
  std::string out;
  megacache::Status status;
  {
    nb::gil_scoped_release release;
    status = [&]() -> megacache::Status {
      std::optional<megacache::bundle::SigningKey> key;
      if (!signing_key.empty()) {
        megacache::Result<megacache::bundle::SigningKey> parsed =
            megacache::bundle::parse_signing_key(signing_key);
        if (!parsed.ok()) return parsed.status();
        key = *parsed;
      }
      megacache::Result<megacache::OpenedFile> opened = megacache::open_artifacts(view(data), {});
      if (!opened.ok()) return opened.status();
      if (opened->bundle) return megacache::Status::InvalidArgument("this is a bundle already");
      out = megacache::bundle::write(*opened->artifacts(), fingerprint,
                                     {zstd_level, key ? &*key : nullptr});
      return megacache::Status::OK();
    }();
  }
  if (!status.ok()) raise(status);
  return nb::bytes(out.data(), out.size());
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
      megacache::Result<megacache::OpenedFile> opened = open_artifacts(view(file), trusted_keys);
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
    status = megacache::util::FileSystem::real().write_atomic(path, view(data));
  }
  if (!status.ok()) raise(status);
}

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

 private:
  std::unique_ptr<megacache::store::Store> store_;
};

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "megacache C++ core (see the megacache package for the Python API)";
  m.attr("__version__") = MEGACACHE_VERSION;

  nb::exception<CorruptionError>(m, "CorruptionError", PyExc_ValueError);
  nb::exception<InvalidInputError>(m, "InvalidInputError", PyExc_ValueError);

  m.def("load_into", &load_into, "data"_a, "cache_dir"_a, "pgo_cache_key"_a = nb::none(),
        "trusted_keys"_a = "",
        "Open a Mega-Cache blob, standalone file or bundle and write its artifacts into "
        "cache_dir as torch would; returns (loaded keys per type, bundle fingerprint).");
  m.def("bundle_of", &bundle_of, "data"_a, "fingerprint"_a, "zstd_level"_a = 3,
        "signing_key"_a = "", "Convert a Mega-Cache blob into a megacache bundle.");
  m.def("host_fingerprint", &megacache::bundle::host_fingerprint,
        "cpu_arch, os and the megacache version, as bundles record them.");
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
  m.def("verify", &verify, "data"_a, "trusted_keys"_a = "",
        "Check any supported file as populate would; write nothing.");
  m.def("mega_cache_of", &mega_cache_of, "file"_a, "trusted_keys"_a = "",
        "The Mega-Cache blob a file carries: itself, a standalone_compile payload, or what a "
        "bundle was made from.");
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
      .def("zero_stats", &PyStore::zero_stats);

  nb::class_<megacache::ArtifactManager>(m, "ArtifactManager")
      .def(nb::init<>())
      .def(
          "record",
          [](megacache::ArtifactManager& self, const std::string& type, const std::string& key,
             const nb::bytes& content) { return self.record(type, key, view(content)); },
          "type"_a, "key"_a, "content"_a)
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
