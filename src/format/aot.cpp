// The precompile-pair codec. Grammar: docs/aot-format.md.
#include "megacache/aot.h"

#include <nlohmann/json.hpp>
#include <set>

#include "megacache/mega_cache.h"
#include "util/hash.h"
#include "util/utf8.h"

namespace megacache::aot {
namespace {

using nlohmann::ordered_json;

// Artifact types and keys inside the bundle; on-disk names, never change them.
constexpr std::string_view kManifestType = "aot_pair";
constexpr std::string_view kManifestKey = "manifest";
constexpr std::string_view kCodeType = "python_code";
constexpr std::string_view kCodeKey = "python_code";
constexpr std::string_view kCacheType = "torch_cache";
constexpr std::string_view kCacheKey = "cache";

constexpr std::string_view kFormatName = "megacache-aot-pair";
constexpr int kManifestVersion = 1;
constexpr uint64_t kMaxManifestBytes = 64 * 1024;

const std::set<std::string, std::less<>>& known_apis() {
  static const std::set<std::string, std::less<>> apis = {"torch.compiler.precompile",
                                                          "torch.compiler.precompile.capture"};
  return apis;
}

std::string_view field_value(const Pair& pair, std::string_view name) {
  for (const auto& [n, value] : pair.cache_fields) {
    if (n == name) return value;
  }
  return {};
}

// The rules a pair keeps, whether it is about to be written or was just read.
Status check(const Pair& pair) {
  if (!known_apis().count(pair.api)) {
    return Status::InvalidArgument(
        "api '" + util::printable(pair.api) +
        "' is not torch.compiler.precompile or torch.compiler.precompile.capture");
  }
  if (pair.python_code.empty() || !util::is_valid_utf8(pair.python_code)) {
    return Status::InvalidArgument("the python_code half is empty or not UTF-8");
  }
  if (pair.cache.empty()) return Status::InvalidArgument("the cache half is empty");
  std::set<std::string_view> names;
  for (const auto& [name, value] : pair.cache_fields) {
    if (name.empty() || !util::is_valid_utf8(name) || !util::is_valid_utf8(value)) {
      return Status::InvalidArgument(
          "a cache field name is empty, or a name or value is not UTF-8");
    }
    if (!names.insert(name).second) {
      return Status::InvalidArgument("cache field '" + util::printable(name) + "' is given twice");
    }
  }
  for (std::string_view required : {"format", "version", "backend", "code_hash"}) {
    if (!names.count(required)) {
      return Status::InvalidArgument("the cache's envelope has no '" + std::string(required) +
                                     "' field; it is not a torch.compiler.precompile cache");
    }
  }
  const std::string code_sha256 = util::sha256_hex(pair.python_code);
  if (field_value(pair, "code_hash") != code_sha256) {
    return Status::InvalidArgument("the cache's code_hash " +
                                   util::printable(std::string(field_value(pair, "code_hash"))) +
                                   " is not the sha256 of the python_code (" + code_sha256 +
                                   "): the two halves come from different precompile calls");
  }
  return Status::OK();
}

ordered_json manifest_json(const Pair& pair) {
  ordered_json fields = ordered_json::object();
  for (const auto& [name, value] : pair.cache_fields) fields[name] = value;
  return {{"format", kFormatName},
          {"version", kManifestVersion},
          {"api", pair.api},
          {"python_code_sha256", util::sha256_hex(pair.python_code)},
          {"cache_sha256", util::sha256_hex(pair.cache)},
          {"cache_fields", fields}};
}

Status manifest_error(const std::string& reason) {
  return Status::Corruption(0, "aot pair manifest: " + reason);
}

std::string text_field(const ordered_json& manifest, const char* name, Status& error) {
  if (!error.ok()) return {};
  if (!manifest.contains(name) || !manifest.at(name).is_string()) {
    error = manifest_error("field '" + std::string(name) + "' is missing or not a string");
    return {};
  }
  return manifest.at(name).get<std::string>();
}

}  // namespace

bool is_pair(const bundle::Bundle& bundle) {
  return !bundle.entries.empty() && bundle.entries.front().type == kManifestType &&
         bundle.entries.front().key == kManifestKey;
}

Result<Pair> read_pair(const bundle::Bundle& bundle) {
  if (!is_pair(bundle)) {
    return Status::InvalidArgument("this bundle is not a torch.compiler.precompile pair");
  }
  if (bundle.entries.size() != 3 || bundle.entries[1].type != kCodeType ||
      bundle.entries[1].key != kCodeKey || bundle.entries[2].type != kCacheType ||
      bundle.entries[2].key != kCacheKey) {
    return Status::Corruption(
        0, "an aot pair holds exactly its manifest, python_code and cache, in that order");
  }
  if (bundle.entries[0].raw_size > kMaxManifestBytes) {
    return Status::Corruption(0, "aot pair manifest claims " +
                                     std::to_string(bundle.entries[0].raw_size) +
                                     " bytes, more than " + std::to_string(kMaxManifestBytes));
  }
  Result<std::string> manifest_text = bundle.read(0);
  if (!manifest_text.ok()) return manifest_text.status();
  const ordered_json manifest =
      ordered_json::parse(*manifest_text, nullptr, /*allow_exceptions=*/false);
  if (manifest.is_discarded() || !manifest.is_object()) return manifest_error("not a JSON object");
  Status error = Status::OK();
  Pair pair;
  const std::string format = text_field(manifest, "format", error);
  pair.api = text_field(manifest, "api", error);
  const std::string code_sha256 = text_field(manifest, "python_code_sha256", error);
  const std::string cache_sha256 = text_field(manifest, "cache_sha256", error);
  if (!error.ok()) return error;
  if (format != kFormatName)
    return manifest_error("format is '" + util::printable(format) + "', not " +
                          std::string(kFormatName));
  if (!manifest.contains("version") || !manifest.at("version").is_number_unsigned() ||
      manifest.at("version").get<uint64_t>() != kManifestVersion) {
    return manifest_error("version is not 1; a newer megacache wrote it");
  }
  if (!manifest.contains("cache_fields") || !manifest.at("cache_fields").is_object()) {
    return manifest_error("field 'cache_fields' is missing or not an object");
  }
  for (const auto& [name, value] : manifest.at("cache_fields").items()) {
    if (!value.is_string())
      return manifest_error("cache field '" + util::printable(name) + "' is not a string");
    pair.cache_fields.emplace_back(name, value.get<std::string>());
  }
  Result<std::string> code = bundle.read(1);
  if (!code.ok()) return code.status();
  Result<std::string> cache = bundle.read(2);
  if (!cache.ok()) return cache.status();
  pair.python_code = std::move(code).value();
  pair.cache = std::move(cache).value();
  if (util::sha256_hex(pair.python_code) != code_sha256) {
    return Status::InvalidArgument(
        "the python_code is not the one the manifest names (sha256 differs)");
  }
  if (util::sha256_hex(pair.cache) != cache_sha256) {
    return Status::InvalidArgument("the cache is not the one the manifest names (sha256 differs)");
  }
  if (Status ok = check(pair); !ok.ok()) return ok;
  pair.fingerprint = bundle.fingerprint;
  return pair;
}

Result<std::string> write_pair(const Pair& pair, const bundle::Fingerprint& fingerprint,
                               const bundle::WriteOptions& options) {
  if (Status ok = check(pair); !ok.ok()) return ok;
  const std::string manifest = manifest_json(pair).dump(2);
  mega_cache::MegaCache cache;
  auto add = [&cache](std::string_view type, std::string_view key, std::string_view content) {
    cache.groups.push_back(mega_cache::TypeGroup{std::string(type), 0, {}, false});
    cache.groups.back().artifacts.push_back({std::string(type), std::string(key), content});
  };
  add(kManifestType, kManifestKey, manifest);
  add(kCodeType, kCodeKey, pair.python_code);
  add(kCacheType, kCacheKey, pair.cache);
  return bundle::write(cache, fingerprint, options);
}

std::string describe(const Pair& pair) {
  ordered_json facts = manifest_json(pair);
  facts.erase("format");
  facts.erase("version");
  facts["python_code_bytes"] = pair.python_code.size();
  facts["cache_bytes"] = pair.cache.size();
  return facts.dump();
}

}  // namespace megacache::aot
