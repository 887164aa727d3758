// Package codecs: binary (inside a bundle container) and unpacked (a directory).
// Grammar and layout: docs/package-format.md.
#include <sodium.h>
#include <unistd.h>
#include <algorithm>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>

#include "megacache/mega_cache.h"
#include "megacache/package.h"
#include "util/file_system.h"
#include "util/hash.h"
#include "util/utf8.h"

namespace megacache::precompile {
namespace {

using nlohmann::ordered_json;

// Artifact types inside a package's bundle container; on-disk names, never change them.
constexpr std::string_view kManifestType = "package";
constexpr std::string_view kManifestKey = "manifest";
constexpr std::string_view kDynamoType = "dynamo";
constexpr std::string_view kBackendType = "backend";
constexpr std::string_view kKernelType = "kernel";
constexpr std::string_view kTritonModuleType = "triton_module";
constexpr std::string_view kCudaJitType = "cuda_jit";
constexpr std::string_view kMegaCacheType = "mega_cache";
constexpr std::string_view kMegaCacheKey = "fallback";

constexpr std::string_view kFormatName = "megacache-package";
constexpr int kManifestVersion = 1;

ordered_json identity_json(const FunctionIdentity& f) {
  return {{"qualname", f.qualname},
          {"module", f.module},
          {"first_line", f.first_line},
          {"signature", f.signature},
          {"source_sha256", f.source_sha256}};
}

ordered_json function_json(const FunctionPackage& function) {
  const DynamoEntry& entry = function.entry;
  ordered_json codes = ordered_json::array();
  for (const Code& code : entry.codes) {
    codes.push_back({{"function_names", code.function_names}, {"backend_ids", code.backend_ids}});
  }
  ordered_json sources = ordered_json::array();
  for (const InlinedSource& s : entry.inlined_sources) {
    sources.push_back({{"module", s.module},
                       {"first_line", s.first_line},
                       {"last_line", s.last_line},
                       {"sha256", s.sha256}});
  }
  ordered_json bypassed = ordered_json::array();
  for (const Bypass& b : function.bypassed) {
    bypassed.push_back({{"code", b.code}, {"backend_id", b.backend_id}, {"reason", b.reason}});
  }
  return {{"source_key", entry.key()},        {"function", identity_json(entry.function)},
          {"device_type", entry.device_type}, {"codes", codes},
          {"inlined_sources", sources},       {"bypassed", bypassed}};
}

ordered_json manifest_json(const Package& package) {
  ordered_json functions = ordered_json::array();
  for (const FunctionPackage& f : package.functions) functions.push_back(function_json(f));
  auto paths = [](const std::vector<KernelFile>& files) {
    ordered_json listed_paths = ordered_json::array();
    std::set<std::string_view> listed;
    for (const KernelFile& k : files) {
      if (listed.insert(k.path).second) listed_paths.push_back(k.path);
    }
    return listed_paths;
  };
  ordered_json manifest = {{"format", kFormatName},
                           {"version", kManifestVersion},
                           {"functions", functions},
                           {"kernels", paths(package.kernels)}};
  // Optional, so that a package without Triton modules reads the same in every version.
  if (!package.triton_modules.empty()) manifest["triton_modules"] = paths(package.triton_modules);
  if (!package.cuda_jit.empty()) manifest["cuda_jit"] = paths(package.cuda_jit);
  return manifest;
}

// Reading JSON written by someone else: every field is checked for presence and type, and a
// failure names the field.
class ManifestReader {
 public:
  explicit ManifestReader(std::string where) : where_(std::move(where)) {}

  const ordered_json* field(const ordered_json& object, const char* name,
                            ordered_json::value_t type) {
    if (!error_.empty()) return nullptr;
    if (!object.is_object() || !object.contains(name)) {
      error_ = "missing field '" + std::string(name) + "'";
      return nullptr;
    }
    const ordered_json& value = object.at(name);
    const bool number = type == ordered_json::value_t::number_unsigned;
    if (number ? !value.is_number_unsigned() : value.type() != type) {
      error_ = "field '" + std::string(name) + "' has the wrong type";
      return nullptr;
    }
    return &value;
  }
  std::string text(const ordered_json& object, const char* name) {
    const ordered_json* v = field(object, name, ordered_json::value_t::string);
    return v ? v->get<std::string>() : std::string();
  }
  uint32_t number(const ordered_json& object, const char* name) {
    const ordered_json* v = field(object, name, ordered_json::value_t::number_unsigned);
    if (!v) return 0;
    if (v->get<uint64_t>() > UINT32_MAX) {
      error_ = "field '" + std::string(name) + "' is out of range";
      return 0;
    }
    return static_cast<uint32_t>(v->get<uint64_t>());
  }
  std::vector<std::string> texts(const ordered_json& object, const char* name) {
    std::vector<std::string> out;
    const ordered_json* v = field(object, name, ordered_json::value_t::array);
    if (!v) return out;
    for (const ordered_json& item : *v) {
      if (!item.is_string()) {
        error_ = "field '" + std::string(name) + "' holds a non-string";
        return out;
      }
      out.push_back(item.get<std::string>());
    }
    return out;
  }
  const ordered_json& array(const ordered_json& object, const char* name) {
    static const ordered_json kEmpty = ordered_json::array();
    const ordered_json* v = field(object, name, ordered_json::value_t::array);
    return v ? *v : kEmpty;
  }
  bool ok() const { return error_.empty(); }
  Status status(const std::string& context) const {
    return Status::Corruption(0, where_ + ": " + context + ": " + error_);
  }

 private:
  std::string where_;
  std::string error_;
};

// The manifest's view of a package: functions without pickles, kernel paths without bytes.
Result<Package> parse_manifest(std::string_view text, const std::string& where) {
  ordered_json json = ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Status::Corruption(0, where + ": not valid JSON");
  ManifestReader r(where);
  if (r.text(json, "format") != kFormatName && r.ok()) {
    return Status::Corruption(0, where + ": 'format' is not " + std::string(kFormatName));
  }
  const uint32_t version = r.number(json, "version");
  if (!r.ok()) return r.status("manifest");
  if (version != kManifestVersion) {
    return Status::Corruption(0, where + ": manifest version " + std::to_string(version) +
                                     " is not supported (this megacache reads version " +
                                     std::to_string(kManifestVersion) + ")");
  }
  Package package;
  for (const ordered_json& f : r.array(json, "functions")) {
    FunctionPackage function;
    DynamoEntry& entry = function.entry;
    const std::string key = r.text(f, "source_key");
    const ordered_json* id = r.field(f, "function", ordered_json::value_t::object);
    if (id) {
      entry.function = {r.text(*id, "qualname"), r.text(*id, "module"), r.number(*id, "first_line"),
                        r.text(*id, "signature"), r.text(*id, "source_sha256")};
    }
    entry.device_type = r.text(f, "device_type");
    for (const ordered_json& c : r.array(f, "codes")) {
      entry.codes.push_back({r.texts(c, "function_names"), r.texts(c, "backend_ids")});
    }
    for (const ordered_json& s : r.array(f, "inlined_sources")) {
      entry.inlined_sources.push_back({r.text(s, "module"), r.number(s, "first_line"),
                                       r.number(s, "last_line"), r.text(s, "sha256")});
    }
    for (const ordered_json& b : r.array(f, "bypassed")) {
      function.bypassed.push_back(
          {r.number(b, "code"), r.text(b, "backend_id"), r.text(b, "reason")});
    }
    if (!r.ok()) return r.status("function '" + key + "'");
    if (key != entry.key()) {
      return Status::Corruption(0, where + ": function " + entry.function.qualname +
                                       " has source_key " + key + ", expected " + entry.key());
    }
    for (const Bypass& b : function.bypassed) {
      if (b.code >= entry.codes.size()) {
        return Status::Corruption(0, where + ": bypass of code " + std::to_string(b.code) + " in " +
                                         entry.function.qualname + ", which has " +
                                         std::to_string(entry.codes.size()) + " codes");
      }
    }
    package.functions.push_back(std::move(function));
  }
  for (std::string& path : r.texts(json, "kernels"))
    package.kernels.push_back({std::move(path), {}});
  if (json.contains("triton_modules")) {
    for (std::string& path : r.texts(json, "triton_modules")) {
      package.triton_modules.push_back({std::move(path), {}});
    }
  }
  if (json.contains("cuda_jit")) {
    for (std::string& path : r.texts(json, "cuda_jit"))
      package.cuda_jit.push_back({std::move(path), {}});
  }
  if (!r.ok()) return r.status("manifest");
  for (const KernelFile& m : package.triton_modules) {
    if (!is_triton_module_path(m.path)) {
      return Status::InvalidArgument(where + ": Triton module path '" + util::printable(m.path) +
                                     "' is not <Triton key>/<name>.so");
    }
  }
  for (const KernelFile& e : package.cuda_jit) {
    if (!is_cuda_jit_path(e.path)) {
      return Status::InvalidArgument(where + ": CUDA JIT cache path '" + util::printable(e.path) +
                                     "' is not <hex>/<hex>/<hex name>");
    }
  }
  return package;
}

// Every backend a non-bypassed code names must be present; nothing may be left unnamed.
Status check_complete(const Package& package, const std::string& where) {
  std::set<std::string> keys;
  for (const FunctionPackage& f : package.functions) {
    if (!keys.insert(f.entry.key()).second) {
      return Status::Corruption(
          0, where + ": function " + f.entry.function.qualname + " appears twice");
    }
    std::set<uint32_t> bypassed;
    for (const Bypass& b : f.bypassed) bypassed.insert(b.code);
    for (uint32_t i = 0; i < f.entry.codes.size(); ++i) {
      if (bypassed.count(i)) continue;
      for (const std::string& id : f.entry.codes[i].backend_ids) {
        if (!f.backends.count(id)) {
          return Status::InvalidArgument(where + ": backend " + id + " of " +
                                         f.entry.function.qualname + " is missing");
        }
      }
    }
  }
  return Status::OK();
}

// Gives each listed file its bytes from `found` (artifact key -> bytes in the decoded bundle).
// Every listed file must be there once, and nothing may be there that is not listed.
Status attach_files(std::vector<KernelFile>& listed_files,
                    const std::map<std::string, std::string_view>& found, std::string_view what) {
  std::set<std::string> listed;
  for (KernelFile& k : listed_files) {
    auto it = found.find(k.path);
    if (it == found.end())
      return Status::InvalidArgument(std::string(what) + " " + k.path + " is missing");
    if (!listed.insert(k.path).second) {
      return Status::Corruption(0, std::string(what) + " " + k.path + " is listed twice");
    }
    k.bytes.assign(it->second);
  }
  for (const auto& [path, bytes] : found) {
    if (!listed.count(path)) {
      return Status::InvalidArgument(std::string(what) + " " + path + " is not in the manifest");
    }
  }
  return Status::OK();
}

FunctionPackage* find_mutable(Package& package, std::string_view key) {
  for (FunctionPackage& f : package.functions) {
    if (f.entry.key() == key) return &f;
  }
  return nullptr;
}

// The functions whose codes name a backend id.
std::vector<FunctionPackage*> users_of_backend(Package& package, std::string_view id) {
  std::vector<FunctionPackage*> users;
  for (FunctionPackage& f : package.functions) {
    for (const Code& code : f.entry.codes) {
      if (std::find(code.backend_ids.begin(), code.backend_ids.end(), id) !=
          code.backend_ids.end()) {
        users.push_back(&f);
        break;
      }
    }
  }
  return users;
}

// A backend id becomes a file name in the unpacked form; torch's ids are
// "__compiled_fn_<n>_<uuid>", so anything else is refused rather than escaped.
bool is_safe_name(std::string_view name) {
  if (name.empty() || name.size() > 200 || name.front() == '.') return false;
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '_' || c == '-' || c == '.';
    if (!ok) return false;
  }
  return true;
}

}  // namespace

bool is_kernel_path(std::string_view path) {
  // torch writes compiled libraries to <cache_dir>/<key[1:3]>/<key>[.<part>].so.
  const size_t slash = path.find('/');
  if (slash != 2 || path.size() <= 3 + 3 || path.size() > 3 + 200) return false;
  const std::string_view name = path.substr(3);
  if (name.front() == '.' || !name.ends_with(".so")) return false;
  auto safe = [](char c, bool dot_ok) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || (dot_ok && c == '.');
  };
  return safe(path[0], false) && safe(path[1], false) &&
         std::all_of(name.begin(), name.end(), [&](char c) { return safe(c, true); });
}

bool is_triton_module_path(std::string_view path) {
  // Triton's FileCacheManager keeps each compiled module in <cache dir>/<key>/<name><EXT_SUFFIX>,
  // the key a sha256: in base32 without padding since Triton 3.2, in hex before.
  const size_t slash = path.find('/');
  if (slash == std::string_view::npos) return false;
  const std::string_view key = path.substr(0, slash);
  const std::string_view name = path.substr(slash + 1);
  auto base32 = [](char c) { return (c >= 'A' && c <= 'Z') || (c >= '2' && c <= '7'); };
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
  const bool key_ok = (key.size() == 52 && std::all_of(key.begin(), key.end(), base32)) ||
                      (key.size() == 64 && std::all_of(key.begin(), key.end(), hex));
  return key_ok && name.size() > 3 && name.front() != '.' && name.ends_with(".so") &&
         is_safe_name(name);
}

bool is_cuda_jit_path(std::string_view path) {
  auto hex = [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); };
  if (path.size() < 5 || path.size() > 4 + 64 || path[1] != '/' || path[3] != '/') return false;
  const std::string_view name = path.substr(4);
  return hex(path[0]) && hex(path[2]) && std::all_of(name.begin(), name.end(), hex);
}

std::string source_key(std::string_view qualname, uint32_t first_line) {
  return util::sha256_hex(std::string(qualname) + std::to_string(first_line));
}

const FunctionPackage* Package::find(std::string_view key) const {
  for (const FunctionPackage& f : functions) {
    if (f.entry.key() == key) return &f;
  }
  return nullptr;
}

std::string describe(const Package& package) {
  ordered_json json = manifest_json(package);
  ordered_json fingerprint = ordered_json::object();
  for (const auto& [name, value] : package.fingerprint) fingerprint[name] = value;
  json["fingerprint"] = fingerprint;
  return json.dump(2);
}

std::string write_package(const Package& package, const bundle::WriteOptions& options) {
  const std::string manifest = manifest_json(package).dump(2);
  mega_cache::MegaCache cache;
  auto add = [&cache](std::string_view type, std::string key, std::string_view content) {
    if (cache.groups.empty() || cache.groups.back().type != type) {
      cache.groups.push_back(mega_cache::TypeGroup{std::string(type), 0, {}, false});
    }
    cache.groups.back().artifacts.push_back({std::string(type), std::move(key), content});
  };
  add(kManifestType, std::string(kManifestKey), manifest);
  for (const FunctionPackage& f : package.functions)
    add(kDynamoType, f.entry.key(), f.entry.pickle);
  std::set<std::string_view> written;  // a backend two functions share, a kernel listed twice
  for (const FunctionPackage& f : package.functions) {
    for (const auto& [id, pickle] : f.backends) {
      if (written.insert(id).second) add(kBackendType, id, pickle);
    }
  }
  for (const KernelFile& k : package.kernels) {
    if (written.insert(k.path).second) add(kKernelType, k.path, k.bytes);
  }
  for (const KernelFile& m : package.triton_modules) {
    if (written.insert(m.path).second) add(kTritonModuleType, m.path, m.bytes);
  }
  for (const KernelFile& e : package.cuda_jit) {
    if (written.insert(e.path).second) add(kCudaJitType, e.path, e.bytes);
  }
  if (!package.mega_cache.empty())
    add(kMegaCacheType, std::string(kMegaCacheKey), package.mega_cache);
  return bundle::write(cache, package.fingerprint, options);
}

bool is_package(const bundle::Bundle& bundle) {
  return !bundle.entries.empty() && bundle.entries.front().type == kManifestType &&
         bundle.entries.front().key == kManifestKey;
}

Result<Package> read_package(const bundle::Bundle& bundle) {
  if (!is_package(bundle)) {
    return Status::InvalidArgument(
        "this bundle holds Mega-Cache artifacts, not a precompile package; load it with "
        "megacache.load");
  }
  Result<bundle::Decoded> decoded = bundle::decode(bundle);
  if (!decoded.ok()) return decoded.status();
  const mega_cache::MegaCache& cache = decoded->cache;
  Result<Package> parsed =
      parse_manifest(cache.groups.front().artifacts.front().content, "package manifest");
  if (!parsed.ok()) return parsed.status();
  Package package = std::move(parsed).value();
  package.fingerprint = bundle.fingerprint;
  // Views into the decoded bundle: each file's bytes are copied once, into the package.
  std::map<std::string, std::string_view> kernels;
  std::map<std::string, std::string_view> triton_modules;
  std::map<std::string, std::string_view> cuda_jit;
  std::set<std::string> with_entry;
  for (const mega_cache::TypeGroup& group : cache.groups) {
    for (const mega_cache::Artifact& a : group.artifacts) {
      const std::string what = a.type + " artifact '" + a.key + "'";
      if (a.type == kManifestType) {
        if (&group != &cache.groups.front())
          return Status::Corruption(0, "a second package manifest");
      } else if (a.type == kDynamoType) {
        FunctionPackage* f = find_mutable(package, a.key);
        if (!f) return Status::InvalidArgument(what + " is not in the manifest");
        f->entry.pickle.assign(a.content);
        with_entry.insert(a.key);
      } else if (a.type == kBackendType) {
        const std::vector<FunctionPackage*> users = users_of_backend(package, a.key);
        if (users.empty())
          return Status::InvalidArgument(what + " is named by no function in the manifest");
        for (FunctionPackage* f : users) f->backends[a.key].assign(a.content);
      } else if (a.type == kKernelType) {
        if (!is_kernel_path(a.key)) {
          return Status::InvalidArgument(what + " is not a kernel path <2 chars>/<name>.so");
        }
        kernels[a.key] = a.content;
      } else if (a.type == kTritonModuleType) {
        if (!is_triton_module_path(a.key)) {
          return Status::InvalidArgument(what +
                                         " is not a Triton module path <Triton key>/<name>.so");
        }
        triton_modules[a.key] = a.content;
      } else if (a.type == kCudaJitType) {
        if (!is_cuda_jit_path(a.key)) {
          return Status::InvalidArgument(what +
                                         " is not a CUDA JIT cache path <hex>/<hex>/<hex name>");
        }
        cuda_jit[a.key] = a.content;
      } else if (a.type == kMegaCacheType && a.key == kMegaCacheKey) {
        package.mega_cache.assign(a.content);
      } else {
        return Status::InvalidArgument(what + " is not part of the package format");
      }
    }
  }
  for (const FunctionPackage& f : package.functions) {
    if (!with_entry.count(f.entry.key())) {
      return Status::InvalidArgument("the Dynamo entry of " + f.entry.function.qualname +
                                     " is missing");
    }
  }
  if (Status s = attach_files(package.kernels, kernels, "kernel"); !s.ok()) return s;
  if (Status s = attach_files(package.triton_modules, triton_modules, "Triton module"); !s.ok())
    return s;
  if (Status s = attach_files(package.cuda_jit, cuda_jit, "CUDA JIT cache entry"); !s.ok())
    return s;
  if (Status complete = check_complete(package, "package"); !complete.ok()) return complete;
  return package;
}

// --- unpacked ---

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kManifestFile = "manifest.json";
constexpr std::string_view kFingerprintFile = "fingerprint.json";
constexpr std::string_view kMegaCacheFile = "mega_cache.bin";
constexpr std::string_view kSignatureFile = "signature.json";
constexpr std::string_view kSignatureFormat = "megacache-unpacked-signature";
// A file list of ~100 bytes per file: room for far more files than any package holds.
constexpr uint64_t kMaxSignatureFileBytes = uint64_t{64} << 20;
// Prefixes the signed text, so a signature over a file list can never pass for one over
// something else this key signs.
constexpr std::string_view kSignedTextHeader = "megacache-unpacked-v1\n";

// The text a signature covers: one "<sha256 hex> <path>\n" line per file, sorted by path.
std::string signed_text(const std::map<std::string, std::string>& sha256_of) {
  std::string text(kSignedTextHeader);
  for (const auto& [path, sha256] : sha256_of) text += sha256 + " " + path + "\n";
  return text;
}

template <size_t N>
std::string hex_of(const std::array<uint8_t, N>& bytes) {
  return util::hex(std::string_view(reinterpret_cast<const char*>(bytes.data()), N));
}

// Writes the files of one package beneath `root`, recording each file's sha256.
class UnpackedWriter {
 public:
  UnpackedWriter(std::string root, util::FileSystem& files)
      : files_(files), root_(std::move(root)) {}

  Status write(const std::string& path, std::string_view bytes) {
    const size_t slash = path.find_last_of('/');
    if (slash != std::string::npos) {
      if (Status s = files_.create_directories(root_, path.substr(0, slash)); !s.ok()) return s;
    }
    if (Status s = files_.write_atomic(root_, path, bytes); !s.ok()) return s;
    sha256_of_[path] = util::sha256_hex(bytes);
    return Status::OK();
  }

  // signature.json: the files written so far, and an Ed25519 signature over their list.
  Status sign(const bundle::SigningKey& key) {
    if (sodium_init() < 0) return Status::IOError("libsodium failed to initialise");
    const std::string text = signed_text(sha256_of_);
    std::array<uint8_t, crypto_sign_BYTES> signature{};
    crypto_sign_detached(signature.data(), nullptr,
                         reinterpret_cast<const unsigned char*>(text.data()), text.size(),
                         key.secret.data());
    ordered_json listed = ordered_json::object();
    for (const auto& [path, sha256] : sha256_of_) listed[path] = sha256;
    const ordered_json document = {{"format", kSignatureFormat},
                                   {"version", 1},
                                   {"public_key", hex_of(key.public_key)},
                                   {"signature", hex_of(signature)},
                                   {"files", listed}};
    return files_.write_atomic(root_, std::string(kSignatureFile), document.dump(2) + "\n");
  }

 private:
  util::FileSystem& files_;
  std::string root_;
  std::map<std::string, std::string> sha256_of_;
};

// Reads the files of one package beneath `root`, never through a link. When the directory
// is signed, only listed files are read, each checked against its signed sha256.
class UnpackedReader {
 public:
  explicit UnpackedReader(std::string root) : root_(std::move(root)) {}

  // Reads signature.json and applies the trust policy of bundle::check_trust: a signature
  // that does not verify is always refused; with trusted keys, only a trusted signer passes.
  Status check_trust(const std::vector<bundle::PublicKey>& trusted_keys) {
    Result<std::string> text =
        files_.read_file(root_, std::string(kSignatureFile), kMaxSignatureFileBytes);
    if (!text.ok() && text.status().code() != Status::Code::kNotFound) return text.status();
    if (!text.ok()) {
      if (trusted_keys.empty()) return Status::OK();
      return Status::InvalidArgument(
          root_ +
          " is an unsigned package directory, and trusted keys are configured "
          "(MEGACACHE_TRUSTED_KEYS); save it signed (sign_with=) or use the binary format");
    }
    const std::string where = root_ + "/" + std::string(kSignatureFile);
    const ordered_json document = ordered_json::parse(*text, nullptr, false);
    if (!document.is_object() || document.value("format", "") != kSignatureFormat ||
        document.value("version", 0) != 1 || !document.contains("files") ||
        !document["files"].is_object() || !document["public_key"].is_string() ||
        !document["signature"].is_string()) {
      return Status::Corruption(0, where + ": not a version 1 " + std::string(kSignatureFormat) +
                                       " with format, version, public_key, signature and files");
    }
    std::map<std::string, std::string> sha256_of;
    for (const auto& [path, sha256] : document["files"].items()) {
      if (!sha256.is_string() || sha256.get<std::string>().size() != 64) {
        return Status::Corruption(0, where + ": the sha256 of '" + path + "' is not 64 hex digits");
      }
      sha256_of[path] = sha256.get<std::string>();
    }
    Result<bundle::PublicKey> key =
        bundle::parse_public_key(document["public_key"].get<std::string>());
    const std::string signature_hex = document["signature"].get<std::string>();
    std::array<uint8_t, crypto_sign_BYTES> signature{};
    if (!key.ok() || signature_hex.size() != 2 * signature.size() ||
        sodium_hex2bin(signature.data(), signature.size(), signature_hex.data(),
                       signature_hex.size(), nullptr, nullptr, nullptr) != 0) {
      return Status::Corruption(0,
                                where + ": public_key or signature is not hex of the right length");
    }
    const std::string text_signed = signed_text(sha256_of);
    if (sodium_init() < 0 ||
        crypto_sign_verify_detached(signature.data(),
                                    reinterpret_cast<const unsigned char*>(text_signed.data()),
                                    text_signed.size(), key->data()) != 0) {
      return Status::InvalidArgument(where +
                                     ": the signature does not verify: the file list was changed "
                                     "after signing, or signed by someone else than key " +
                                     hex_of(*key));
    }
    if (!trusted_keys.empty() &&
        std::find(trusted_keys.begin(), trusted_keys.end(), *key) == trusted_keys.end()) {
      return Status::InvalidArgument(root_ + " is signed by key " + hex_of(*key) +
                                     ", which is not among the trusted keys");
    }
    signed_ = std::move(sha256_of);
    return Status::OK();
  }

  Result<std::string> read(const std::string& path) {
    if (signed_ && !signed_->count(path)) {
      return Status::InvalidArgument(root_ + "/" + path +
                                     " is not among the files its signature covers");
    }
    Result<std::string> bytes = files_.read_file(root_, path, bundle::kMaxArtifactBytes);
    if (!bytes.ok()) return bytes.status();
    if (signed_ && util::sha256_hex(*bytes) != signed_->at(path)) {
      return Status::InvalidArgument(root_ + "/" + path +
                                     " was changed after the package was signed");
    }
    return bytes;
  }

  bool exists(const std::string& path) {
    return signed_ ? signed_->count(path) > 0 : files_.file_info(root_, path).has_value();
  }

  const std::string& root() const { return root_; }

 private:
  util::FileSystem& files_ = util::FileSystem::real();
  std::string root_;
  std::optional<std::map<std::string, std::string>> signed_;
};

std::string unique_suffix() {
  std::random_device random;
  return std::to_string(::getpid()) + "-" + std::to_string(random());
}

}  // namespace

Status write_unpacked(const Package& package, const std::string& dir,
                      const bundle::SigningKey* signing_key) {
  return write_unpacked(package, dir, signing_key, util::FileSystem::real());
}

Status write_unpacked(const Package& package, const std::string& dir,
                      const bundle::SigningKey* signing_key, util::FileSystem& files) {
  if (dir.find('\0') != std::string::npos) {
    return Status::InvalidArgument("the path '" + util::printable(dir) + "' holds a NUL character");
  }
  fs::path target = fs::path(dir).lexically_normal();
  if (!target.has_filename()) target = target.parent_path();  // "pkg/" names "pkg"
  const fs::path building = target.string() + ".tmp-" + unique_suffix();
  auto fail = [&](Status status) {
    std::error_code ignored;
    fs::remove_all(building, ignored);
    return status;
  };
  std::error_code error;
  if (!fs::create_directory(building, error) || error) {
    return Status::IOError("cannot create " + building.string() + ": " + error.message());
  }
  UnpackedWriter writer(building.string(), files);
  if (Status s = writer.write(std::string(kManifestFile), manifest_json(package).dump(2) + "\n");
      !s.ok()) {
    return fail(s);
  }
  ordered_json fingerprint = ordered_json::object();
  for (const auto& [name, value] : package.fingerprint) fingerprint[name] = value;
  if (Status s = writer.write(std::string(kFingerprintFile), fingerprint.dump(2) + "\n"); !s.ok()) {
    return fail(s);
  }
  for (const FunctionPackage& f : package.functions) {
    const std::string function_dir = "functions/" + f.entry.key();
    if (Status s = writer.write(function_dir + "/dynamo.pkl", f.entry.pickle); !s.ok())
      return fail(s);
    for (const auto& [id, pickle] : f.backends) {
      if (!is_safe_name(id))
        return fail(Status::InvalidArgument("backend id '" + id + "' is not a safe file name"));
      if (Status s = writer.write(function_dir + "/backends/" + id + ".pkl", pickle); !s.ok())
        return fail(s);
    }
  }
  for (const KernelFile& k : package.kernels) {
    if (!is_kernel_path(k.path))
      return fail(Status::InvalidArgument("kernel path '" + k.path + "' is unsafe"));
    if (Status s = writer.write("kernels/" + k.path, k.bytes); !s.ok()) return fail(s);
  }
  for (const KernelFile& m : package.triton_modules) {
    if (!is_triton_module_path(m.path)) {
      return fail(Status::InvalidArgument("Triton module path '" + m.path + "' is unsafe"));
    }
    if (Status s = writer.write("triton_modules/" + m.path, m.bytes); !s.ok()) return fail(s);
  }
  for (const KernelFile& e : package.cuda_jit) {
    if (!is_cuda_jit_path(e.path)) {
      return fail(Status::InvalidArgument("CUDA JIT cache path '" + e.path + "' is unsafe"));
    }
    if (Status s = writer.write("cuda_jit/" + e.path, e.bytes); !s.ok()) return fail(s);
  }
  if (!package.mega_cache.empty()) {
    if (Status s = writer.write(std::string(kMegaCacheFile), package.mega_cache); !s.ok())
      return fail(s);
  }
  if (signing_key != nullptr) {
    if (Status s = writer.sign(*signing_key); !s.ok()) return fail(s);
  }
  // Swap the whole directory in: readers see the old package or the new one.
  const fs::path old = target.string() + ".old-" + unique_suffix();
  const bool had_old = fs::exists(fs::symlink_status(target, error));
  if (had_old) {
    fs::rename(target, old, error);
    if (error)
      return fail(Status::IOError("cannot move aside " + target.string() + ": " + error.message()));
  }
  fs::rename(building, target, error);
  if (error) {
    if (had_old) fs::rename(old, target, error);
    return fail(Status::IOError("cannot rename into " + target.string() + ": " + error.message()));
  }
  if (had_old) fs::remove_all(old, error);
  return Status::OK();
}

Result<Package> read_unpacked(const std::string& dir,
                              const std::vector<bundle::PublicKey>& trusted_keys) {
  UnpackedReader files(dir);
  if (Status trust = files.check_trust(trusted_keys); !trust.ok()) return trust;
  const std::string where = dir + "/";
  Result<std::string> manifest = files.read(std::string(kManifestFile));
  if (!manifest.ok()) return manifest.status();
  Result<Package> parsed = parse_manifest(*manifest, where + std::string(kManifestFile));
  if (!parsed.ok()) return parsed.status();
  Package package = std::move(parsed).value();

  Result<std::string> fingerprint_text = files.read(std::string(kFingerprintFile));
  if (!fingerprint_text.ok()) return fingerprint_text.status();
  ordered_json fingerprint = ordered_json::parse(*fingerprint_text, nullptr, false);
  if (!fingerprint.is_object()) {
    return Status::Corruption(0, where + std::string(kFingerprintFile) + ": not a JSON object");
  }
  for (const auto& [name, value] : fingerprint.items()) {
    if (!value.is_string()) {
      return Status::Corruption(
          0, where + std::string(kFingerprintFile) + ": field '" + name + "' is not a string");
    }
    package.fingerprint.emplace_back(name, value.get<std::string>());
  }
  std::sort(package.fingerprint.begin(), package.fingerprint.end());

  for (FunctionPackage& f : package.functions) {
    const std::string function_dir = "functions/" + f.entry.key();
    Result<std::string> dynamo = files.read(function_dir + "/dynamo.pkl");
    if (!dynamo.ok()) return dynamo.status();
    f.entry.pickle = std::move(dynamo).value();
    for (const Code& code : f.entry.codes) {
      for (const std::string& id : code.backend_ids) {
        if (f.backends.count(id)) continue;
        if (!is_safe_name(id))
          return Status::InvalidArgument("backend id '" + id + "' is not a safe file name");
        const std::string path = function_dir + "/backends/" + id + ".pkl";
        if (!files.exists(path)) continue;  // a bypassed code's backend
        Result<std::string> backend = files.read(path);
        if (!backend.ok()) return backend.status();
        f.backends[id] = std::move(backend).value();
      }
    }
  }
  for (KernelFile& k : package.kernels) {
    if (!is_kernel_path(k.path))
      return Status::InvalidArgument("kernel path '" + k.path + "' is unsafe");
    Result<std::string> bytes = files.read("kernels/" + k.path);
    if (!bytes.ok()) return bytes.status();
    k.bytes = std::move(bytes).value();
  }
  for (KernelFile& m : package.triton_modules) {  // parse_manifest checked each path
    Result<std::string> bytes = files.read("triton_modules/" + m.path);
    if (!bytes.ok()) return bytes.status();
    m.bytes = std::move(bytes).value();
  }
  for (KernelFile& e : package.cuda_jit) {  // parse_manifest checked each path
    Result<std::string> bytes = files.read("cuda_jit/" + e.path);
    if (!bytes.ok()) return bytes.status();
    e.bytes = std::move(bytes).value();
  }
  if (files.exists(std::string(kMegaCacheFile))) {
    Result<std::string> blob = files.read(std::string(kMegaCacheFile));
    if (!blob.ok()) return blob.status();
    package.mega_cache = std::move(blob).value();
  }
  if (Status complete = check_complete(package, dir); !complete.ok()) return complete;
  return package;
}

}  // namespace megacache::precompile
