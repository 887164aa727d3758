// megacache._core: Mega-Cache blobs, standalone_compile files, bundles, torch.compiler.precompile
// pairs, and the artifact manager behind the Mega-Cache drop-ins.
#include "python/binding.h"

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
#include "megacache/populate.h"
#include "util/file_system.h"

namespace megacache::python {
namespace {

using namespace nb::literals;

// Opens any supported file (Mega-Cache, standalone_compile, bundle) and populates
// `cache_dir`. Returns what was loaded per type, the bundle's fingerprint (empty for torch's
// formats) and the artifacts of `caller_populated_types` as (type, key, content), which the
// caller hands to torch. `pgo_cache_key` is called (with the GIL) only if a PGO key needs
// torch's rewrite.
std::tuple<TypeKeys, Fields, std::vector<std::tuple<std::string, std::string, nb::bytes>>>
load_into(const nb::bytes& data, const std::string& cache_dir,
          std::optional<nb::callable> pgo_cache_key, const std::string& trusted_keys,
          std::vector<std::string> caller_populated_types) {
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
      megacache::Result<megacache::OpenedFile> opened =
          open_with_keys(view(data), trusted_keys, megacache::open_artifacts);
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
      megacache::Result<std::optional<megacache::bundle::SigningKey>> key =
          signing_key_of(signing_key);
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
nb::bytes aot_pair_bytes(const std::string& api, const nb::bytes& python_code,
                         const nb::bytes& cache, const Fields& cache_fields,
                         const Fields& fingerprint, int zstd_level,
                         const std::string& signing_key) {
  megacache::aot::Pair pair{
      api, std::string(view(python_code)), std::string(view(cache)), cache_fields, {}};
  megacache::Result<std::string> out = megacache::Status::OK();
  {
    nb::gil_scoped_release release;
    out = [&]() -> megacache::Result<std::string> {
      megacache::Result<std::optional<megacache::bundle::SigningKey>> key =
          signing_key_of(signing_key);
      if (!key.ok()) return key.status();
      return megacache::aot::write_pair(pair, fingerprint, {zstd_level, *key ? &**key : nullptr});
    }();
  }
  if (!out.ok()) raise(out.status());
  return nb::bytes(out->data(), out->size());
}

// The checked pair in a file's bytes: (api, python_code, cache, cache_fields, fingerprint).
std::tuple<std::string, nb::bytes, nb::bytes, Fields, Fields> read_aot_pair(
    const nb::bytes& data, const std::string& trusted_keys) {
  megacache::Result<megacache::OpenedFile> opened = megacache::Status::OK();
  {
    nb::gil_scoped_release release;
    opened = open_with_keys(view(data), trusted_keys, megacache::open_file);
  }
  if (!opened.ok()) raise(opened.status());
  if (!opened->pair) {
    raise(
        megacache::Status::InvalidArgument("this file is not a torch.compiler.precompile pair; "
                                           "save one with megacache.save_precompiled"));
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
      megacache::Result<megacache::OpenedFile> opened =
          open_with_keys(view(file), trusted_keys, megacache::open_artifacts);
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

}  // namespace

void init_files(nb::module_& m) {
  m.def("load_into", &load_into, "data"_a, "cache_dir"_a, "pgo_cache_key"_a = nb::none(),
        "trusted_keys"_a = "", "caller_populated_types"_a = std::vector<std::string>(),
        "Open a Mega-Cache blob, standalone file or bundle and write its artifacts into "
        "cache_dir as torch would; returns (loaded keys per type, bundle fingerprint, "
        "[(type, key, content)] of caller_populated_types for torch to populate).");
  m.def("bundle_of", &bundle_of, "data"_a, "fingerprint"_a, "zstd_level"_a = 3,
        "signing_key"_a = "", "Convert a Mega-Cache blob into a megacache bundle.");
  m.def(
      "compare_fingerprints",
      [](const Fields& built, const Fields& current) {
        std::vector<std::tuple<std::string, std::string, std::string>> out;
        for (const auto& field : megacache::bundle::compare_fingerprints(built, current)) {
          out.emplace_back(field.name, field.built, field.current);
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
      "file"_a,
      "(kind, torch_key, aot_autograd_key, payload) of a standalone_compile binary file; "
      "kind 0 CacheCompiledArtifact, 1 AOTCompiledArtifact, 2 headerless 2.8.");
  m.def("write_file_atomic", &write_file_atomic, "path"_a, "data"_a,
        "Write a file through a temp file and rename; readers never see a part.");

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
          "blob"_a,
          "Record what torch would load from a Mega-Cache blob; CorruptionError if it does not "
          "parse.")
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

}  // namespace megacache::python
