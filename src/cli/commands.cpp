#include "cli/commands.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <ostream>

#include "megacache/mega_cache.h"
#include "megacache/populate.h"
#include "util/file_system.h"
#include "util/hash.h"

namespace megacache::cli {
namespace {

using nlohmann::ordered_json;
namespace mc = mega_cache;

constexpr int kExitOk = 0;
constexpr int kExitInvalid = 1;
constexpr int kExitUsage = 2;

// A file read and parsed: the Mega-Cache inside it, and the standalone wrapper if any.
struct LoadedFile {
  std::string bytes;
  std::optional<mc::StandaloneArtifact> standalone;
  std::optional<mc::MegaCache> cache;  // absent for an AOTCompiledArtifact
};

Result<LoadedFile> load_file(const std::string& path) {
  Result<std::string> bytes = util::FileSystem::real().read_file(path);
  if (!bytes.ok()) return bytes.status();
  // The views inside point into `file.bytes`, so parse only after it has its final home.
  Result<LoadedFile> result(LoadedFile{std::move(bytes).value(), std::nullopt, std::nullopt});
  LoadedFile& file = result.value();
  Result<mc::FileContents> contents = mc::locate_mega_cache(file.bytes);
  if (!contents.ok()) return contents.status();
  file.standalone = contents->standalone;
  if (contents->blob.empty()) return result;  // an AOTCompiledArtifact
  Result<mc::MegaCache> cache = mc::parse(contents->blob);
  if (!cache.ok()) {
    if (!file.standalone) return cache.status();
    const uint64_t base = static_cast<uint64_t>(contents->blob.data() - file.bytes.data());
    return Status::Corruption(base + cache.status().offset().value_or(0),
                              "in the embedded Mega-Cache: " + cache.status().message());
  }
  file.cache = std::move(cache).value();
  return result;
}

std::string layout_name(mc::Layout layout) {
  return layout == mc::Layout::kV2_7 ? "torch 2.7" : "torch 2.8+";
}

std::string kind_name(mc::StandaloneKind kind) {
  switch (kind) {
    case mc::StandaloneKind::kCacheCompiledArtifact: return "CacheCompiledArtifact";
    case mc::StandaloneKind::kAOTCompiledArtifact: return "AOTCompiledArtifact";
    case mc::StandaloneKind::kHeaderless2_8: return "CacheCompiledArtifact (torch 2.8/2.9, no header)";
  }
  return "unknown";
}

std::string hex32(uint32_t value) {
  char text[11];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

ordered_json describe(const std::string& path, const LoadedFile& file) {
  ordered_json report;
  report["file"] = path;
  report["bytes"] = file.bytes.size();
  if (file.standalone) {
    const mc::StandaloneArtifact& s = *file.standalone;
    report["format"] = "standalone_compile";
    report["standalone"] = {{"kind", kind_name(s.kind)},
                            {"torch_key", util::hex(s.torch_key)},
                            {"aot_autograd_key", s.aot_autograd_key},
                            {"payload_bytes", s.payload.size()},
                            {"payload_sha256", util::sha256_hex(s.payload)}};
  } else {
    report["format"] = "mega-cache";
  }
  if (!file.cache) return report;
  const mc::MegaCache& cache = *file.cache;
  report["layout"] = layout_name(cache.layout);
  report["version"] = 1;
  report["crc32"] = cache.layout == mc::Layout::kV2_7 ? ordered_json(nullptr)
                                                       : ordered_json(hex32(cache.crc32));
  report["crc_ok"] = cache.layout == mc::Layout::kV2_7 ? ordered_json(nullptr) : ordered_json(true);
  ordered_json groups = ordered_json::array();
  for (const mc::TypeGroup& group : cache.groups) {
    groups.push_back({{"type", group.type},
                      {"offset", group.offset},
                      {"artifacts", group.artifacts.size()},
                      {"dropped_by_torch", group.dropped_by_torch}});
  }
  report["groups"] = groups;
  ordered_json counts = ordered_json::object();
  ordered_json artifacts = ordered_json::array();
  for (const mc::Artifact* artifact : cache.loaded_artifacts()) {
    counts[artifact->type] = counts.value(artifact->type, 0) + 1;
    artifacts.push_back({{"type", artifact->type},
                         {"key", artifact->key},
                         {"bytes", artifact->content.size()},
                         {"sha256", util::sha256_hex(artifact->content)}});
  }
  report["counts"] = counts;
  report["artifacts"] = artifacts;
  return report;
}

void print_human(std::ostream& out, const ordered_json& report) {
  out << report["file"].get<std::string>() << ": " << report["bytes"] << " bytes\n";
  if (report.contains("standalone")) {
    const ordered_json& s = report["standalone"];
    out << "format:   standalone_compile binary, " << s["kind"].get<std::string>() << "\n"
        << "torch_key: " << s["torch_key"].get<std::string>() << "\n";
    if (!s["aot_autograd_key"].get<std::string>().empty()) {
      out << "aot_autograd key: " << s["aot_autograd_key"].get<std::string>() << "\n";
    }
    out << "payload:  " << s["payload_bytes"] << " bytes, sha256 "
        << s["payload_sha256"].get<std::string>() << "\n";
  }
  if (!report.contains("groups")) return;
  out << "Mega-Cache: " << report["layout"].get<std::string>() << " layout, encoding version 1";
  if (!report["crc32"].is_null()) out << ", crc32 " << report["crc32"].get<std::string>() << " ok";
  out << "\ntype groups in file order:\n";
  for (const auto& group : report["groups"]) {
    out << "  @" << group["offset"] << " " << group["type"].get<std::string>() << " x"
        << group["artifacts"];
    if (group["dropped_by_torch"].get<bool>()) out << "  (dropped: a later group of this type wins)";
    out << "\n";
  }
  out << "torch loads:";
  for (const auto& [type, count] : report["counts"].items()) out << " " << type << "=" << count;
  out << "\nartifacts:\n";
  for (const auto& artifact : report["artifacts"]) {
    out << "  " << artifact["type"].get<std::string>() << "  " << artifact["key"].get<std::string>()
        << "  " << artifact["bytes"] << " bytes  sha256 " << artifact["sha256"].get<std::string>()
        << "\n";
  }
}

struct Reporter {
  bool json = false;
  std::ostream& out;
  std::ostream& err;

  int fail(const std::string& path, const Status& status) const {
    if (json) {
      out << ordered_json{{"ok", false}, {"file", path}, {"error", status.to_string()}}.dump(2)
          << "\n";
    } else {
      err << "megacache: " << path << ": " << status.to_string() << "\n";
    }
    return kExitInvalid;
  }
};

int cmd_inspect(const Reporter& r, const std::string& path) {
  Result<LoadedFile> file = load_file(path);
  if (!file.ok()) return r.fail(path, file.status());
  const ordered_json report = describe(path, *file);
  if (r.json) {
    r.out << report.dump(2) << "\n";
  } else {
    print_human(r.out, report);
  }
  return kExitOk;
}

int cmd_verify(const Reporter& r, const std::string& path) {
  Result<LoadedFile> file = load_file(path);
  if (!file.ok()) return r.fail(path, file.status());
  size_t planned = 0;
  if (file->cache) {
    Result<std::vector<PlannedFile>> plan = plan_populate(*file->cache);
    if (!plan.ok()) return r.fail(path, plan.status());
    planned = plan->size();
  }
  if (r.json) {
    r.out << ordered_json{{"ok", true}, {"file", path}, {"files_to_populate", planned}}.dump(2)
          << "\n";
  } else {
    r.out << path << ": OK, " << planned << " artifacts would be populated\n";
  }
  return kExitOk;
}

int cmd_populate(const Reporter& r, const std::string& path, const std::string& cache_dir) {
  Result<LoadedFile> file = load_file(path);
  if (!file.ok()) return r.fail(path, file.status());
  if (!file->cache) {
    return r.fail(path, Status::InvalidArgument("an AOTCompiledArtifact holds no Mega-Cache "
                                                "artifacts to populate; load it with torch"));
  }
  Result<PopulateReport> report = populate(*file->cache, cache_dir);
  if (!report.ok()) return r.fail(path, report.status());
  if (r.json) {
    ordered_json counts = ordered_json::object();
    for (const auto& [type, keys] : report->info.entries()) counts[type] = keys.size();
    r.out << ordered_json{{"ok", true},
                          {"file", path},
                          {"cache_dir", cache_dir},
                          {"counts", counts},
                          {"files_written", report->files_written},
                          {"files_unchanged", report->files_unchanged}}
                 .dump(2)
          << "\n";
  } else {
    r.out << "populated " << cache_dir << " from " << path << ": " << report->files_written
          << " files written, " << report->files_unchanged << " already present\n";
  }
  return kExitOk;
}

}  // namespace

int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"megacache: inspect, verify and populate torch.compile cache artifacts"};
  app.set_version_flag("--version", std::string("megacache ") + MEGACACHE_VERSION);
  app.require_subcommand(1);
  bool json = false;
  std::string file;
  std::string cache_dir;

  CLI::App* inspect = app.add_subcommand("inspect", "Show what a Mega-Cache or standalone file holds");
  CLI::App* verify = app.add_subcommand("verify", "Check everything populate would check, write nothing");
  CLI::App* populate_cmd = app.add_subcommand("populate", "Write the artifacts into a torch cache dir");
  for (CLI::App* sub : {inspect, verify, populate_cmd}) {
    sub->add_option("FILE", file, "Mega-Cache blob or standalone_compile binary file")->required();
    sub->add_flag("--json", json, "Machine-readable output");
  }
  populate_cmd->add_option("--cache-dir", cache_dir, "torch cache dir (TORCHINDUCTOR_CACHE_DIR)")
      ->required();

  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) {  // --help or --version
      return app.exit(e, out, err);
    }
    err << "megacache: " << e.what() << "\n" << "Run 'megacache --help' for usage.\n";
    return kExitUsage;
  }
  const Reporter reporter{json, out, err};
  if (*inspect) return cmd_inspect(reporter, file);
  if (*verify) return cmd_verify(reporter, file);
  return cmd_populate(reporter, file, cache_dir);
}

}  // namespace megacache::cli
