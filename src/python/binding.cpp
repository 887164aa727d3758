// megacache._core: the Python binding. No logic lives here: it converts arguments, releases
// the GIL around C++ work and maps a non-OK Status to a Python exception type.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "megacache/manager.h"
#include "megacache/mega_cache.h"
#include "megacache/populate.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

nb::object g_corruption_error;
nb::object g_invalid_input_error;

[[noreturn]] void raise(const megacache::Status& status) {
  const std::string message = status.to_string();
  switch (status.code()) {
    case megacache::Status::Code::kCorruption:
      PyErr_SetString(g_corruption_error.ptr(), message.c_str());
      break;
    case megacache::Status::Code::kInvalidArgument:
      PyErr_SetString(g_invalid_input_error.ptr(), message.c_str());
      break;
    case megacache::Status::Code::kNotFound:
      PyErr_SetString(PyExc_FileNotFoundError, message.c_str());
      break;
    default:
      PyErr_SetString(PyExc_OSError, message.c_str());
      break;
  }
  throw nb::python_error();
}

std::string_view view(const nb::bytes& data) { return {data.c_str(), data.size()}; }

using TypeKeys = std::vector<std::pair<std::string, std::vector<std::string>>>;

// Parses a Mega-Cache blob and populates `cache_dir`; returns what was loaded per type.
TypeKeys load_into(const nb::bytes& data, const std::string& cache_dir,
                   const std::string& pgo_cache_key) {
  megacache::Result<megacache::PopulateReport> report = megacache::Status::OK();
  {
    nb::gil_scoped_release release;
    megacache::Result<megacache::mega_cache::MegaCache> cache =
        megacache::mega_cache::parse(view(data));
    report = cache.ok() ? megacache::populate(*cache, cache_dir, {pgo_cache_key}) : cache.status();
  }
  if (!report.ok()) raise(report.status());
  return report->info.entries();
}

void verify(const nb::bytes& data) {
  megacache::Status status;
  {
    nb::gil_scoped_release release;
    megacache::Result<megacache::mega_cache::MegaCache> cache =
        megacache::mega_cache::parse(view(data));
    status = cache.ok() ? megacache::plan_populate(*cache).status() : cache.status();
  }
  if (!status.ok()) raise(status);
}

// The Mega-Cache blob inside a standalone_compile binary file.
nb::bytes standalone_payload(const nb::bytes& data) {
  megacache::Result<megacache::mega_cache::StandaloneArtifact> artifact =
      megacache::mega_cache::parse_standalone(view(data));
  if (!artifact.ok()) raise(artifact.status());
  return nb::bytes(artifact->payload.data(), artifact->payload.size());
}

}  // namespace

NB_MODULE(_core, m) {
  m.doc() = "megacache C++ core (see the megacache package for the Python API)";
  m.attr("__version__") = MEGACACHE_VERSION;

  g_corruption_error = nb::steal(PyErr_NewExceptionWithDoc(
      "megacache._core.CorruptionError",
      "The bytes are malformed; the message names the offset and the reason.", PyExc_ValueError,
      nullptr));
  g_invalid_input_error = nb::steal(PyErr_NewExceptionWithDoc(
      "megacache._core.InvalidInputError",
      "Well-formed input that megacache refuses, such as a key that would escape the cache dir.",
      PyExc_ValueError, nullptr));
  m.attr("CorruptionError") = g_corruption_error;
  m.attr("InvalidInputError") = g_invalid_input_error;

  m.def("load_into", &load_into, "data"_a, "cache_dir"_a, "pgo_cache_key"_a = "",
        "Parse a Mega-Cache blob and write its artifacts into cache_dir as torch would.");
  m.def("verify", &verify, "data"_a, "Check a Mega-Cache blob as populate would; write nothing.");
  m.def("standalone_payload", &standalone_payload, "data"_a,
        "The Mega-Cache blob inside a standalone_compile binary file.");

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
