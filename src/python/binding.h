// Shared by the files of megacache._core, the Python binding: binding.cpp defines the module
// and its errors, and each init_* function (one file each) adds the functions and classes of one
// part of the core. No logic lives in the binding: it converts arguments, releases the GIL
// around C++ work and maps a non-OK Status to a Python exception type.
#pragma once

#include <nanobind/nanobind.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "megacache/bundle.h"
#include "megacache/open.h"
#include "megacache/status.h"

namespace megacache::python {

namespace nb = nanobind;

using TypeKeys = std::vector<std::pair<std::string, std::vector<std::string>>>;
using Fields = std::vector<std::pair<std::string, std::string>>;

// Raises the Python exception of a non-OK status (CorruptionError, InvalidInputError,
// PackageMismatchError, FileNotFoundError, OSError). Call with the GIL held.
[[noreturn]] void raise(const Status& status);

// The bytes of a Python bytes object, valid while it lives.
inline std::string_view view(const nb::bytes& data) { return {data.c_str(), data.size()}; }

// `open(file, keys)` (open_file, open_artifacts) with the trusted keys given as
// MEGACACHE_TRUSTED_KEYS text.
template <typename Open>
Result<OpenedFile> open_with_keys(std::string_view file, const std::string& trusted_keys,
                                  Open open) {
  Result<std::vector<bundle::PublicKey>> keys = parse_trusted_keys(trusted_keys);
  if (!keys.ok()) return keys.status();
  return open(file, *keys);
}

// A signing key from its hex text; none for "".
Result<std::optional<bundle::SigningKey>> signing_key_of(const std::string& hex);

// Each adds one part of the core to the module (one file each, named after the part).
void init_files(nb::module_& m);  // Mega-Cache blobs, standalone files, bundles, AOT pairs, manager
void init_stores(nb::module_& m);    // stores and single-flight claims
void init_packages(nb::module_& m);  // precompile packages and their PrecompileContext

}  // namespace megacache::python
