// megacache._core, the Python binding: the module, its errors and what the parts share
// (binding.h). Each part of the core is bound in its own file.
#include "python/binding.h"

#include <stdexcept>

#include <nanobind/stl/function.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

namespace megacache::python {
namespace {

// Thrown only by raise(), at the edge, and translated by nanobind into the Python types
// registered in NB_MODULE below. MegacacheError is only their common base.
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

}  // namespace

[[noreturn]] void raise(const Status& status) {
  const std::string message = status.to_string();
  switch (status.code()) {
    case Status::Code::kCorruption:
      throw CorruptionError(message);
    case Status::Code::kInvalidArgument:
      throw InvalidInputError(message);
    case Status::Code::kMismatch:
      throw PackageMismatchError(status.message());
    case Status::Code::kNotFound:
      PyErr_SetString(PyExc_FileNotFoundError, message.c_str());
      throw nb::python_error();
    default:
      PyErr_SetString(PyExc_OSError, message.c_str());
      throw nb::python_error();
  }
}

// A signing key from its hex text; none for "".
Result<std::optional<bundle::SigningKey>> signing_key_of(const std::string& hex) {
  if (hex.empty()) return std::optional<bundle::SigningKey>();
  Result<bundle::SigningKey> key = bundle::parse_signing_key(hex);
  if (!key.ok()) return key.status();
  return std::optional<bundle::SigningKey>(*key);
}

}  // namespace megacache::python

using namespace megacache::python;
using namespace nb::literals;

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
  nb::exception<CorruptionError>(m, "CorruptionError",
                                 nb::make_tuple(base, nb::handle(PyExc_ValueError)));
  nb::exception<InvalidInputError>(m, "InvalidInputError",
                                   nb::make_tuple(base, nb::handle(PyExc_ValueError)));
  nb::exception<PackageMismatchError>(m, "PackageMismatchError",
                                      nb::make_tuple(base, nb::handle(PyExc_RuntimeError)));

  m.def("host_fingerprint", &megacache::bundle::host_fingerprint,
        "cpu_arch, os and the megacache version, as bundles record them.");
  init_files(m);
  init_stores(m);
  init_packages(m);
}
