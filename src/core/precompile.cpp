#include "megacache/precompile.h"

#include <link.h>
#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "util/file_system.h"
#include "util/hash.h"
#include "util/utf8.h"

namespace megacache::precompile {

std::string hash_source_lines(std::string_view source, uint32_t first_line, uint32_t last_line) {
  // inspect.getsourcelines keeps each line's "\n"; the slice [first-1 : last-1] excludes
  // last_line itself, exactly as torch's _hash_sourcelines does.
  std::string selected;
  uint32_t line = 1;
  size_t start = 0;
  while (start < source.size() && line < last_line) {
    size_t end = source.find('\n', start);
    end = end == std::string_view::npos ? source.size() : end + 1;
    if (line >= first_line) selected.append(source.substr(start, end - start));
    start = end;
    ++line;
  }
  return util::sha256_hex(selected);
}

// --- PrecompileContext ---

void PrecompileContext::record_backend(std::string backend_id, std::string pickle) {
  std::lock_guard lock(mutex_);
  backends_[std::move(backend_id)] = std::move(pickle);
}

void PrecompileContext::record_dynamo_entry(DynamoEntry entry) {
  std::lock_guard lock(mutex_);
  std::string key = entry.key();
  entries_[std::move(key)] = std::move(entry);
}

std::vector<Bypass> PrecompileContext::bypasses_locked(const DynamoEntry& entry) const {
  std::vector<Bypass> bypassed;
  for (uint32_t i = 0; i < entry.codes.size(); ++i) {
    for (const std::string& id : entry.codes[i].backend_ids) {
      if (!backends_.count(id)) {
        // torch stops at the first missing backend of a code, as do we.
        bypassed.push_back(
            {i, id,
             "backend " + id +
                 " was not recorded (its compile did not produce a "
                 "bundled AOTAutograd artifact), so this frame compiles again on load"});
        break;
      }
    }
  }
  return bypassed;
}

std::vector<FunctionPackage> PrecompileContext::stitch(const std::vector<std::string>& only) const {
  std::lock_guard lock(mutex_);
  std::vector<FunctionPackage> packages;
  for (const auto& [key, entry] : entries_) {
    if (!only.empty() && std::find(only.begin(), only.end(), key) == only.end()) continue;
    FunctionPackage package{entry, {}, bypasses_locked(entry)};
    for (uint32_t i = 0; i < entry.codes.size(); ++i) {
      const bool bypassed = std::any_of(package.bypassed.begin(), package.bypassed.end(),
                                        [i](const Bypass& b) { return b.code == i; });
      if (bypassed) continue;  // its found backends are not needed either
      for (const std::string& id : entry.codes[i].backend_ids)
        package.backends[id] = backends_.at(id);
    }
    packages.push_back(std::move(package));
  }
  return packages;
}

std::optional<std::string> PrecompileContext::serialize_artifact_by_key(std::string_view id) const {
  std::lock_guard lock(mutex_);
  auto it = backends_.find(std::string(id));
  if (it == backends_.end()) return std::nullopt;
  return it->second;
}

Status PrecompileContext::edit_artifact(
    std::string_view id, const std::function<Result<std::string>(std::string_view)>& edit) {
  std::lock_guard lock(mutex_);
  auto it = backends_.find(std::string(id));
  if (it == backends_.end())
    return Status::NotFound("no backend artifact '" + std::string(id) + "'");
  Result<std::string> edited = edit(it->second);
  if (!edited.ok()) return edited.status();
  it->second = std::move(edited).value();
  return Status::OK();
}

namespace {

// A package's Mega-Cache artifacts, less torch's own DynamoCache entries ("precompile"
// artifacts, which DynamoCache.write records): a package carries its functions' Dynamo entries
// itself, and torch keys those artifacts by a path its caller chose, absolute ones included,
// which populate refuses, so one would make the whole package unloadable. A blob that does
// not parse is kept as it is, for the package's own checks to report.
std::string without_dynamo_cache_entries(std::string blob) {
  Result<mega_cache::MegaCache> parsed = mega_cache::parse(blob);
  if (!parsed.ok()) return blob;
  mega_cache::MegaCache kept;
  for (mega_cache::TypeGroup& group : parsed->groups) {
    if (group.type != mega_cache::kPrecompile) kept.groups.push_back(std::move(group));
  }
  if (kept.groups.size() == parsed->groups.size()) return blob;
  return mega_cache::write_groups(kept);  // before `blob`, which the groups view, goes
}

}  // namespace

Package PrecompileContext::package(bundle::Fingerprint fingerprint, std::vector<KernelFile> kernels,
                                   std::string mega_cache, const std::vector<std::string>& only,
                                   std::vector<KernelFile> triton_modules,
                                   std::vector<KernelFile> cuda_jit) const {
  return Package{std::move(fingerprint), stitch(only),
                 std::move(kernels),     std::move(triton_modules),
                 std::move(cuda_jit),    without_dynamo_cache_entries(std::move(mega_cache))};
}

std::string PrecompileContext::serialize(bundle::Fingerprint fingerprint,
                                         std::vector<KernelFile> kernels, std::string mega_cache,
                                         const bundle::WriteOptions& options) const {
  return write_package(package(std::move(fingerprint), std::move(kernels), std::move(mega_cache)),
                       options);
}

std::string PrecompileContext::debug_info_json() const {
  std::lock_guard lock(mutex_);
  nlohmann::ordered_json dynamo = nlohmann::ordered_json::array();
  for (const auto& [key, entry] : entries_) {
    std::set<std::string> ids;
    for (const Code& code : entry.codes)
      ids.insert(code.backend_ids.begin(), code.backend_ids.end());
    nlohmann::ordered_json bypassed = nlohmann::ordered_json::array();
    for (const Bypass& b : bypasses_locked(entry)) {
      bypassed.push_back({{"backend_id", b.backend_id}, {"reason", b.reason}});
    }
    dynamo.push_back({{"key", key},
                      {"fn_name", entry.function.qualname},
                      {"fn_first_lineno", entry.function.first_line},
                      {"module", entry.function.module},
                      {"device_type", entry.device_type},
                      {"num_codes", entry.codes.size()},
                      {"backend_ids", ids},
                      {"bypassed", bypassed}});
  }
  nlohmann::ordered_json backends = nlohmann::ordered_json::array();
  for (const auto& [id, pickle] : backends_) backends.push_back(id);
  return nlohmann::ordered_json{{"dynamo", dynamo}, {"backends", backends}}.dump();
}

void PrecompileContext::clear() {
  std::lock_guard lock(mutex_);
  backends_.clear();
  entries_.clear();
}

bool PrecompileContext::empty() const {
  std::lock_guard lock(mutex_);
  return backends_.empty() && entries_.empty();
}

Result<std::vector<KernelFile>> read_kernels(const std::string& cache_dir) {
  util::FileSystem& files = util::FileSystem::real();
  std::vector<KernelFile> kernels;
  std::vector<std::string> subdirs = files.list_directory(cache_dir, "");
  std::sort(subdirs.begin(), subdirs.end());
  for (const std::string& subdir : subdirs) {
    if (subdir.size() != 2) continue;
    std::vector<std::string> names = files.list_directory(cache_dir, subdir);
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
      const std::string path = subdir + "/" + name;
      if (!is_kernel_path(path) || !files.file_info(cache_dir, path)) continue;
      Result<std::string> bytes = files.read_file(cache_dir, path, bundle::kMaxArtifactBytes);
      if (!bytes.ok()) return bytes.status();
      kernels.push_back({path, std::move(bytes).value()});
    }
  }
  return kernels;
}

namespace {

// The path of every shared object loaded in this process, as the dynamic loader holds it.
std::vector<std::string> loaded_libraries() {
  std::vector<std::string> paths;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* out) {
        if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') {
          static_cast<std::vector<std::string>*>(out)->emplace_back(info->dlpi_name);
        }
        return 0;
      },
      &paths);
  return paths;
}

}  // namespace

Result<std::vector<KernelFile>> read_loaded_triton_modules(
    const std::vector<std::string>& triton_cache_dirs) {
  namespace fs = std::filesystem;
  std::vector<fs::path> roots;
  for (const std::string& dir : triton_cache_dirs) {
    std::error_code error;
    fs::path root = fs::weakly_canonical(dir, error);
    if (!dir.empty() && !error) roots.push_back(std::move(root));
  }
  if (roots.empty()) return std::vector<KernelFile>{};  // no Triton here: nothing loaded from it
  std::map<std::string, std::string> root_of;  // module path -> the cache dir it was loaded from
  for (const std::string& library : loaded_libraries()) {
    std::error_code error;
    const fs::path loaded = fs::weakly_canonical(library, error);
    if (error) continue;
    for (const fs::path& root : roots) {
      const std::string relative = loaded.lexically_relative(root).generic_string();
      if (is_triton_module_path(relative)) root_of.emplace(relative, root.string());
    }
  }
  util::FileSystem& files = util::FileSystem::real();
  std::vector<KernelFile> modules;
  for (const auto& [path, root] : root_of) {
    Result<std::string> bytes = files.read_file(root, path, bundle::kMaxArtifactBytes);
    if (!bytes.ok()) return bytes.status();
    modules.push_back({path, std::move(bytes).value()});
  }
  return modules;
}

std::vector<std::string> list_cuda_jit_entries(const std::string& dir, int64_t since_unix) {
  // The driver keeps each entry at <hex>/<hex>/<hex name>, beside an index it does not need to
  // find them (docs/package-format.md, CUDA's JIT cache).
  util::FileSystem& files = util::FileSystem::real();
  std::vector<std::string> paths;
  for (const std::string& first : files.list_directory(dir, "")) {
    for (const std::string& second : files.list_directory(dir, first)) {
      const std::string parent = first + "/" + second;
      for (const std::string& name : files.list_directory(dir, parent)) {
        const std::string path = parent + "/" + name;
        if (!is_cuda_jit_path(path)) continue;
        const std::optional<util::FileSystem::FileInfo> info = files.file_info(dir, path);
        if (info && info->modified_unix >= since_unix) paths.push_back(path);
      }
    }
  }
  std::sort(paths.begin(), paths.end());
  return paths;
}

std::vector<KernelFile> read_cuda_jit_entries(const std::string& dir, int64_t since_unix) {
  util::FileSystem& files = util::FileSystem::real();
  std::vector<KernelFile> entries;
  uint64_t total = 0;
  for (const std::string& path : list_cuda_jit_entries(dir, since_unix)) {
    // The driver of another process may be replacing it: an entry that cannot be read whole,
    // or would pass the cap, is left out, and the loading side's driver compiles it.
    Result<std::string> bytes = files.read_file(dir, path, kMaxCudaJitBytes - total);
    if (!bytes.ok()) continue;
    total += bytes->size();
    entries.push_back({path, std::move(bytes).value()});
  }
  return entries;
}

std::string cuda_driver_version() {
  // "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build ..."
  std::ifstream in("/proc/driver/nvidia/version");
  std::string line;
  if (!std::getline(in, line) || !line.starts_with("NVRM version:")) return {};
  std::istringstream words(line);
  for (std::string word; words >> word;) {
    const bool version = !word.empty() && std::isdigit(static_cast<unsigned char>(word.front())) &&
                         word.find('.') != std::string::npos &&
                         std::all_of(word.begin(), word.end(), [](char c) {
                           return std::isdigit(static_cast<unsigned char>(c)) || c == '.';
                         });
    if (version) return word;
  }
  return {};
}

Result<Package> read_package(std::string_view file,
                             const std::vector<bundle::PublicKey>& trusted_keys) {
  Result<bundle::Bundle> bundle = bundle::parse(file);
  if (!bundle.ok()) return bundle.status();
  if (Status trust = bundle::check_trust(*bundle, trusted_keys); !trust.ok()) return trust;
  return read_package(*bundle);
}

Result<Package> read_package_at(const std::string& path,
                                const std::vector<bundle::PublicKey>& trusted_keys) {
  if (path.empty() || path.find('\0') != std::string::npos) {
    return Status::InvalidArgument("the package path '" + util::printable(path) +
                                   "' is empty or holds a NUL character");
  }
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) return read_unpacked(path, trusted_keys);
  Result<std::string> bytes = util::read_named_file(path);
  if (!bytes.ok()) return bytes.status();
  return read_package(*bytes, trusted_keys);
}

std::string store_name(const FunctionIdentity& function, const bundle::Fingerprint& fingerprint) {
  std::string hashed =
      source_key(function.qualname, function.first_line) + '\n' + function.source_sha256 + '\n';
  for (const auto& [name, value] : fingerprint) hashed += name + '=' + value + '\n';
  std::string readable;
  for (char c : function.qualname.substr(0, 60)) {
    const bool keep =
        std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    readable += keep ? c : '_';
  }
  return "precompile-" + (readable.empty() ? std::string("fn") : readable) + "-" +
         util::sha256_hex(hashed).substr(0, 32);
}

std::string mega_cache_store_name(const bundle::Fingerprint& fingerprint) {
  std::string hashed = "mega-cache\n";
  for (const auto& [name, value] : fingerprint) hashed += name + '=' + value + '\n';
  return "mega-cache-" + util::sha256_hex(hashed).substr(0, 32);
}

// --- check_package ---

namespace {

std::string field(const bundle::Fingerprint& fingerprint, std::string_view name) {
  for (const auto& [n, value] : fingerprint) {
    if (n == name) return value;
  }
  return {};
}

std::string describe_function(const FunctionIdentity& f) {
  return f.module + "." + f.qualname + " (line " + std::to_string(f.first_line) + ")";
}

}  // namespace

Status check_package(const Package& package, const LoadCheck& check) {
  // Which environment facts make a package unsound when they differ.
  std::vector<std::string_view> required = {"python", "torch", "torch_git"};
  bool accelerator = false;
  for (const FunctionPackage& f : package.functions) {
    accelerator = accelerator || (f.entry.device_type != "cpu" && !f.entry.device_type.empty());
  }
  // A package moves between devices of one model (docs/device-index.md), never between models.
  if (accelerator) required.insert(required.end(), {"cuda", "triton", "gpu", "gpu_capability"});
  if (!package.kernels.empty()) required.insert(required.end(), {"cpu_arch", "cpu_flags", "cxx"});
  // Triton's own key for a module covers its source, build options and platform, not the
  // Triton and CUDA it was built with or the OS it links against.
  if (!package.triton_modules.empty())
    required.insert(required.end(), {"triton", "cuda", "os", "cpu_arch"});
  // A JIT cache entry is the driver's build for one GPU; its driver is checked where it is
  // installed (populate_package), since the rest of the package does not depend on it.
  if (!package.cuda_jit.empty()) required.insert(required.end(), {"gpu", "gpu_capability"});
  for (std::string_view name : required) {
    const std::string built = field(package.fingerprint, name);
    const std::string current = field(check.current, name);
    if (built != current) {
      return Status::Mismatch("package built with " + std::string(name) + " " +
                              (built.empty() ? "(none)" : built) + ", this is " +
                              (current.empty() ? "(none)" : current));
    }
  }

  std::vector<const FunctionPackage*> selected;
  if (check.function) {
    const FunctionIdentity& want = *check.function;
    const FunctionPackage* found = package.find(source_key(want.qualname, want.first_line));
    if (!found) {
      std::string held;
      for (const FunctionPackage& f : package.functions) {
        held += (held.empty() ? "" : ", ") + describe_function(f.entry.function);
      }
      return Status::Mismatch("package holds no entry for " + describe_function(want) +
                              "; it holds " + (held.empty() ? "nothing" : held));
    }
    const FunctionIdentity& built = found->entry.function;
    if (!built.signature.empty() && !want.signature.empty() && built.signature != want.signature) {
      return Status::Mismatch("package built for " + built.qualname + built.signature +
                              ", this function is " + want.qualname + want.signature);
    }
    if (!check.ignore_source_changes && !built.source_sha256.empty() &&
        !want.source_sha256.empty() && built.source_sha256 != want.source_sha256) {
      return Status::Mismatch(
          "source of " + describe_function(want) + " changed since the package was built (sha256 " +
          built.source_sha256.substr(0, 12) + ", now " + want.source_sha256.substr(0, 12) +
          "); compile again, or pass ignore_source_changes=True");
    }
    selected.push_back(found);
  } else {
    for (const FunctionPackage& f : package.functions) selected.push_back(&f);
  }

  if (check.ignore_source_changes || !check.module_source) return Status::OK();
  for (const FunctionPackage* f : selected) {
    for (const InlinedSource& s : f->entry.inlined_sources) {
      const std::optional<std::string> text = check.module_source(s.module);
      const std::string now = text ? hash_source_lines(*text, s.first_line, s.last_line) : "";
      if (now != s.sha256) {
        return Status::Mismatch("source of " + s.module + " lines " + std::to_string(s.first_line) +
                                "-" + std::to_string(s.last_line) + ", which " +
                                f->entry.function.qualname + " inlined, " +
                                (text ? "changed" : "cannot be read") +
                                " since the package was built; compile again, or pass "
                                "ignore_source_changes=True");
      }
    }
  }
  return Status::OK();
}

// --- populate_package ---

namespace {

// Installs files that spare another program a build (Triton's modules, the CUDA driver's JIT
// entries) into that program's cache dir. A file already there is left alone: the owner may have
// built and loaded it in this process. A dir that cannot be written (a read-only HOME beside a
// writable TRITON_CACHE_DIR) is passed over: its owner builds what it needs itself.
void install_carried_files(util::FileSystem& files, const std::string& dir,
                           const std::vector<KernelFile>& carried, PopulateReport& report) {
  for (const KernelFile& f : carried) {
    if (files.file_info(dir, f.path)) {
      ++report.files_unchanged;
      continue;
    }
    if (!files.create_directories(dir, f.path.substr(0, f.path.rfind('/'))).ok() ||
        !files.write_atomic(dir, f.path, f.bytes).ok()) {
      return;
    }
    ++report.files_written;
  }
}

}  // namespace

Result<PopulateReport> populate_package(const Package& package, const std::string& cache_dir,
                                        const std::vector<std::string>& triton_cache_dirs,
                                        const CudaJitTarget& cuda_jit) {
  return populate_package(package, cache_dir, triton_cache_dirs, cuda_jit,
                          util::FileSystem::real());
}

Result<PopulateReport> populate_package(const Package& package, const std::string& cache_dir,
                                        const std::vector<std::string>& triton_cache_dirs,
                                        const CudaJitTarget& cuda_jit, util::FileSystem& files) {
  if (cache_dir.empty()) return Status::InvalidArgument("the torch cache dir is empty");
  for (const KernelFile& k : package.kernels) {
    if (!is_kernel_path(k.path)) {
      return Status::InvalidArgument("kernel path '" + k.path + "' is not <2 chars>/<name>.so");
    }
  }
  for (const KernelFile& m : package.triton_modules) {
    if (!is_triton_module_path(m.path)) {
      return Status::InvalidArgument("Triton module path '" + m.path +
                                     "' is not <Triton key>/<name>.so");
    }
  }
  for (const KernelFile& e : package.cuda_jit) {
    if (!is_cuda_jit_path(e.path)) {
      return Status::InvalidArgument("CUDA JIT cache path '" + e.path +
                                     "' is not <hex>/<hex>/<hex name>");
    }
  }
  PopulateReport report;
  if (!package.mega_cache.empty()) {
    Result<mega_cache::MegaCache> cache = mega_cache::parse(package.mega_cache);
    if (!cache.ok()) return cache.status();
    Result<PopulateReport> populated = populate(*cache, cache_dir, {}, files);
    if (!populated.ok()) return populated.status();
    report = std::move(populated).value();
  }
  for (const KernelFile& k : package.kernels) {
    if (files.file_equals(cache_dir, k.path, k.bytes)) {
      ++report.files_unchanged;
      continue;
    }
    if (Status s = files.create_directories(cache_dir, k.path.substr(0, 2)); !s.ok()) return s;
    if (Status s = files.write_atomic(cache_dir, k.path, k.bytes); !s.ok()) return s;
    ++report.files_written;
  }
  for (const std::string& triton_dir :
       std::set<std::string>(triton_cache_dirs.begin(), triton_cache_dirs.end())) {
    if (!triton_dir.empty())
      install_carried_files(files, triton_dir, package.triton_modules, report);
  }
  if (!cuda_jit.dir.empty() && !cuda_jit.driver.empty() &&
      field(package.fingerprint, "cuda_driver") == cuda_jit.driver) {
    install_carried_files(files, cuda_jit.dir, package.cuda_jit, report);
  }
  return report;
}

}  // namespace megacache::precompile
