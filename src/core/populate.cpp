#include "megacache/populate.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <vector>

#include "util/file_system.h"
#include "util/hash.h"

namespace megacache {
namespace {

// Room for the temp-file suffix within NAME_MAX (255).
constexpr size_t kMaxSegmentBytes = 200;

// Why `segment` may not be a single path component, or empty when it may.
std::string segment_problem(std::string_view segment) {
  if (segment.empty()) return "has an empty path segment";
  if (segment == "." || segment == "..") return "has a '" + std::string(segment) + "' segment";
  if (segment.size() > kMaxSegmentBytes) {
    return "has a segment of " + std::to_string(segment.size()) + " bytes (limit " +
           std::to_string(kMaxSegmentBytes) + ")";
  }
  for (unsigned char c : segment) {
    if (c == '\0') return "contains a NUL byte";
    if (c == '/') return "contains '/'";
    if (c == '\\') return "contains '\\'";
    if (c < 0x20 || c == 0x7f) return "contains a control character";
  }
  return {};
}

std::string relative_path_problem(std::string_view path) {
  if (path.empty()) return "is empty";
  if (path.front() == '/') return "is an absolute path";
  size_t start = 0;
  while (true) {
    const size_t slash = path.find('/', start);
    const std::string_view segment = path.substr(start, slash - start);
    if (std::string problem = segment_problem(segment); !problem.empty()) return problem;
    if (slash == std::string_view::npos) return {};
    start = slash + 1;
  }
}

// pgo.code_state_path: re.sub(r'[<>:"/\\|?*]', "_", f"code_state_{key}.pkl")
std::string pgo_file_name(std::string_view key) {
  std::string name = "code_state_" + std::string(key) + ".pkl";
  for (char& c : name) {
    if (std::string_view("<>:\"/\\|?*").find(c) != std::string_view::npos) c = '_';
  }
  return name;
}

// Python's key[1:3].
std::string_view python_slice_1_3(std::string_view key) {
  return key.size() <= 1 ? std::string_view() : key.substr(1, 2);
}

Status refuse(const mega_cache::Artifact& artifact, const std::string& problem) {
  return Status::InvalidArgument(artifact.type + " artifact key '" + artifact.key + "' " + problem +
                                 "; refusing the whole input so nothing outside the cache dir "
                                 "is written");
}

// Resolves PopulateOptions::pgo_cache_key on first use.
class PgoKey {
 public:
  explicit PgoKey(const PopulateOptions& options) : options_(options) {}
  const std::string& get() {
    if (!resolved_) {
      resolved_ = true;
      if (options_.pgo_cache_key) value_ = options_.pgo_cache_key();
    }
    return value_;
  }

 private:
  const PopulateOptions& options_;
  bool resolved_ = false;
  std::string value_;
};

Result<PlannedFile> plan_one(const mega_cache::Artifact& artifact, const PopulateOptions& options,
                             PgoKey& pgo_key) {
  using namespace mega_cache;
  PlannedFile file;
  file.artifact = &artifact;
  const std::string_view type = artifact.type;
  const std::string& key = artifact.key;
  if (type == kInductor || type == kAotAutograd || type == kPrecompile) {
    if (std::string problem = segment_problem(key); !problem.empty())
      return refuse(artifact, problem);
  }
  if (type == kInductor) {
    const std::string_view shard = python_slice_1_3(key);
    if (std::string problem = shard.empty() ? "" : segment_problem(shard); !problem.empty()) {
      return refuse(artifact, "gives a directory name that " + problem);
    }
    file.relative_dir = "fxgraph/" + (shard.empty() ? "" : std::string(shard) + "/") + key;
  } else if (type == kAotAutograd) {
    file.relative_dir = "aotautograd/" + key;
  } else if (type == kPrecompile) {
    file.relative_dir = "dynamo/" + key;
    file.file_name = "entry";
  } else if (type == kAutotune) {
    if (std::string problem = relative_path_problem(key); !problem.empty()) {
      return refuse(artifact, problem);
    }
    const size_t slash = key.find_last_of('/');
    file.relative_dir = slash == std::string::npos ? "" : key.substr(0, slash);
    file.file_name = slash == std::string::npos ? key : key.substr(slash + 1);
  } else if (type == kPgo) {
    const bool mast = key.rfind("mast:", 0) == 0;
    const std::string name = pgo_file_name(mast && !pgo_key.get().empty() ? pgo_key.get() : key);
    if (std::string problem = segment_problem(name); !problem.empty()) {
      return refuse(artifact, "gives a file name that " + problem);
    }
    file.relative_dir = "dynamo";
    file.file_name = name;
  } else if (std::find(options.caller_populated_types.begin(), options.caller_populated_types.end(),
                       artifact.type) != options.caller_populated_types.end()) {
    file.caller_populates = true;
  } else {
    const std::vector<std::string_view> built_in = {kInductor, kAutotune, kAotAutograd, kPgo,
                                                    kPrecompile};
    std::string known;
    for (std::string_view name : built_in) known += (known.empty() ? "" : ", ") + std::string(name);
    for (const std::string& extra : options.caller_populated_types) {
      if (std::find(built_in.begin(), built_in.end(), extra) == built_in.end())
        known += ", " + extra;
    }
    return Status::InvalidArgument(
        "unknown artifact type '" + artifact.type + "' (known here: " + known +
        "); torch refuses "
        "a blob with a type that no CacheArtifactFactory.register call in this process "
        "registered, and so does megacache: import the module that registers it before loading");
  }
  return file;
}

// Whether `dir` already holds a file with exactly `content`: for content-named entries the
// name is then the sha256 of these bytes, so comparing saves hashing them.
bool dir_holds_content(util::FileSystem& fs, const std::string& cache_dir, const std::string& dir,
                       std::string_view content) {
  for (const std::string& name : fs.list_directory(cache_dir, dir)) {
    const std::string path = dir.empty() ? name : dir + "/" + name;
    if (name.front() != '.' && fs.file_equals(cache_dir, path, content)) return true;
  }
  return false;
}

}  // namespace

Result<std::vector<PlannedFile>> plan_populate(const mega_cache::MegaCache& cache,
                                               const PopulateOptions& options) {
  PgoKey pgo_key(options);
  for (const mega_cache::TypeGroup& group : cache.groups) {
    if (!group.dropped_by_torch) continue;
    for (const mega_cache::Artifact& artifact : group.artifacts) {
      if (Result<PlannedFile> file = plan_one(artifact, options, pgo_key); !file.ok())
        return file.status();
    }
  }
  std::vector<PlannedFile> plan;
  for (const mega_cache::Artifact* artifact : cache.loaded_artifacts()) {
    Result<PlannedFile> file = plan_one(*artifact, options, pgo_key);
    if (!file.ok()) return file.status();
    plan.push_back(std::move(file).value());
  }
  return plan;
}

Result<PopulateReport> populate(const mega_cache::MegaCache& cache, const std::string& cache_dir,
                                const PopulateOptions& options) {
  return populate(cache, cache_dir, options, util::FileSystem::real());
}

Result<PopulateReport> populate(const mega_cache::MegaCache& cache, const std::string& cache_dir,
                                const PopulateOptions& options, util::FileSystem& fs) {
  if (cache_dir.empty()) {
    return Status::InvalidArgument(
        "the cache dir is empty; pass the torch cache dir "
        "(TORCHINDUCTOR_CACHE_DIR)");
  }
  Result<std::vector<PlannedFile>> plan = plan_populate(cache, options);
  if (!plan.ok()) {
    return plan.status();
  }
  PopulateReport report;
  std::optional<std::string> last_made_dir;
  for (const PlannedFile& file : *plan) {
    const mega_cache::Artifact& artifact = *file.artifact;
    report.info.add(artifact.type, artifact.key);
    if (file.caller_populates) {
      report.caller_populated.push_back(
          {artifact.type, artifact.key, std::string(artifact.content)});
      continue;
    }
    // Paths are relative to the cache dir, which the file layer never leaves (no links).
    const std::string& dir = file.relative_dir;
    const bool content_named = file.file_name.empty();
    auto in_dir = [&dir](const std::string& name) { return dir.empty() ? name : dir + "/" + name; };
    const std::string path = in_dir(file.file_name);
    if (content_named ? dir_holds_content(fs, cache_dir, dir, artifact.content)
                      : fs.file_equals(cache_dir, path, artifact.content)) {
      ++report.files_unchanged;
      continue;
    }
    if (dir != last_made_dir) {
      if (Status made = fs.create_directories(cache_dir, dir); !made.ok()) return made;
      last_made_dir = dir;
    }
    const std::string target =
        content_named ? in_dir(util::torch_sha256_name(artifact.content)) : path;
    if (Status written = fs.write_atomic(cache_dir, target, artifact.content); !written.ok()) {
      return written;
    }
    ++report.files_written;
  }
  return report;
}

}  // namespace megacache
