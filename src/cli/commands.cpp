#include "cli/commands.h"

#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <ostream>

#include "megacache/bundle.h"
#include "megacache/mega_cache.h"
#include "megacache/open.h"
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

// A file read and opened; `opened` views into `bytes`.
struct LoadedFile {
  std::string bytes;
  OpenedFile opened;
};

Result<std::vector<bundle::PublicKey>> trusted_keys(const std::vector<std::string>& flags) {
  std::string spec;
  if (const char* env = std::getenv("MEGACACHE_TRUSTED_KEYS")) spec = env;
  for (const std::string& flag : flags) spec += "," + flag;
  return parse_trusted_keys(spec);
}

Result<LoadedFile> load_file(const std::string& path, const std::vector<bundle::PublicKey>& trusted) {
  Result<std::string> bytes = util::FileSystem::real().read_file(path);
  if (!bytes.ok()) return bytes.status();
  // The views inside point into `file.bytes`, so open only after it has its final home.
  Result<LoadedFile> result(LoadedFile{std::move(bytes).value(), {}});
  Result<OpenedFile> opened = open_file(result->bytes, trusted);
  if (!opened.ok()) return opened.status();
  result->opened = std::move(opened).value();
  return result;
}

std::string kind_name(mc::StandaloneKind kind) {
  switch (kind) {
    case mc::StandaloneKind::kCacheCompiledArtifact: return "CacheCompiledArtifact";
    case mc::StandaloneKind::kAOTCompiledArtifact: return "AOTCompiledArtifact";
    case mc::StandaloneKind::kHeaderless2_8: return "CacheCompiledArtifact (torch 2.8/2.9, no header)";
  }
  return "unknown";
}

std::string hex_of(const std::array<uint8_t, 32>& key) {
  return util::hex(std::string_view(reinterpret_cast<const char*>(key.data()), key.size()));
}

std::string hex32(uint32_t value) {
  char text[11];
  std::snprintf(text, sizeof text, "0x%08x", value);
  return text;
}

ordered_json describe(const std::string& path, const LoadedFile& file,
                      const std::vector<bundle::PublicKey>& trusted) {
  const OpenedFile& opened = file.opened;
  ordered_json report;
  report["file"] = path;
  report["bytes"] = file.bytes.size();
  report["format"] = opened.kind == FileKind::kBundle       ? "megacache-bundle"
                     : opened.kind == FileKind::kStandalone ? "standalone_compile"
                                                            : "mega-cache";
  if (opened.standalone) {
    const mc::StandaloneArtifact& s = *opened.standalone;
    report["standalone"] = {{"kind", kind_name(s.kind)},
                            {"torch_key", util::hex(s.torch_key)},
                            {"aot_autograd_key", s.aot_autograd_key},
                            {"payload_bytes", s.payload.size()},
                            {"payload_sha256", util::sha256_hex(s.payload)}};
  }
  if (opened.bundle) {
    const bundle::Bundle& b = *opened.bundle;
    ordered_json fingerprint = ordered_json::object();
    for (const auto& [name, value] : b.fingerprint) fingerprint[name] = value;
    const bundle::SignatureCheck check = bundle::check_signature(b);
    ordered_json signature = {{"status", check == bundle::SignatureCheck::kUnsigned ? "unsigned"
                                         : check == bundle::SignatureCheck::kValid  ? "valid"
                                                                                     : "invalid"}};
    if (b.signature) {
      signature["key"] = hex_of(b.signature->public_key);
      signature["trusted"] = bundle::is_trusted(b, trusted);
    }
    uint64_t raw_total = 0;
    for (const bundle::Entry& entry : b.entries) raw_total += entry.raw_size;
    report["bundle"] = {{"version", b.version},
                        {"fingerprint", fingerprint},
                        {"signature", signature},
                        {"payload_bytes", b.payloads.size()},
                        {"raw_bytes", raw_total}};
  }
  const mc::MegaCache* cache = opened.artifacts();
  if (cache == nullptr) return report;
  if (opened.kind != FileKind::kBundle) {
    report["layout"] = cache->layout == mc::Layout::kV2_7 ? "torch 2.7" : "torch 2.8+";
    report["crc32"] = cache->layout == mc::Layout::kV2_7 ? ordered_json(nullptr)
                                                          : ordered_json(hex32(cache->crc32));
    report["crc_ok"] = cache->layout == mc::Layout::kV2_7 ? ordered_json(nullptr) : ordered_json(true);
  }
  ordered_json groups = ordered_json::array();
  for (const mc::TypeGroup& group : cache->groups) {
    groups.push_back({{"type", group.type},
                      {"offset", group.offset},
                      {"artifacts", group.artifacts.size()},
                      {"dropped_by_torch", group.dropped_by_torch}});
  }
  report["groups"] = groups;
  ordered_json counts = ordered_json::object();
  ordered_json artifacts = ordered_json::array();
  for (const mc::Artifact* artifact : cache->loaded_artifacts()) {
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
  if (report.contains("bundle")) {
    const ordered_json& b = report["bundle"];
    out << "format:   megacache bundle v" << b["version"] << ", " << b["payload_bytes"]
        << " bytes of payloads for " << b["raw_bytes"] << " bytes of artifacts\n";
    out << "signature: " << b["signature"]["status"].get<std::string>();
    if (b["signature"].contains("key")) {
      out << " (key " << b["signature"]["key"].get<std::string>()
          << (b["signature"]["trusted"].get<bool>() ? ", trusted" : ", not a trusted key") << ")";
    }
    out << "\nfingerprint:\n";
    for (const auto& [name, value] : b["fingerprint"].items()) {
      out << "  " << name << ": " << value.get<std::string>() << "\n";
    }
  }
  if (!report.contains("groups")) return;
  if (report.contains("layout")) {
    out << "Mega-Cache: " << report["layout"].get<std::string>() << " layout, encoding version 1";
    if (!report["crc32"].is_null()) out << ", crc32 " << report["crc32"].get<std::string>() << " ok";
    out << "\n";
  }
  out << "type groups in file order:\n";
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

  void done(const ordered_json& report, const std::string& text) const {
    if (json) {
      out << report.dump(2) << "\n";
    } else {
      out << text << "\n";
    }
  }
};

struct Options {
  bool json = false;
  std::string file;
  std::string output;
  std::string cache_dir;
  std::string sign_key_file;
  int level = 3;
  std::vector<std::string> trusted;
};

int cmd_inspect(const Reporter& r, const Options& o) {
  Result<std::vector<bundle::PublicKey>> trusted = trusted_keys(o.trusted);
  if (!trusted.ok()) return r.fail(o.file, trusted.status());
  // inspect shows a bundle whatever its signature says; verify and populate enforce trust.
  Result<LoadedFile> file = load_file(o.file, {});
  if (!file.ok()) return r.fail(o.file, file.status());
  const ordered_json report = describe(o.file, *file, *trusted);
  if (r.json) {
    r.out << report.dump(2) << "\n";
  } else {
    print_human(r.out, report);
  }
  return kExitOk;
}

int cmd_verify(const Reporter& r, const Options& o) {
  Result<std::vector<bundle::PublicKey>> trusted = trusted_keys(o.trusted);
  if (!trusted.ok()) return r.fail(o.file, trusted.status());
  Result<LoadedFile> file = load_file(o.file, *trusted);
  if (!file.ok()) return r.fail(o.file, file.status());
  size_t planned = 0;
  if (const mc::MegaCache* cache = file->opened.artifacts()) {
    Result<std::vector<PlannedFile>> plan = plan_populate(*cache);
    if (!plan.ok()) return r.fail(o.file, plan.status());
    planned = plan->size();
  }
  r.done({{"ok", true}, {"file", o.file}, {"files_to_populate", planned}},
         o.file + ": OK, " + std::to_string(planned) + " artifacts would be populated");
  return kExitOk;
}

int cmd_populate(const Reporter& r, const Options& o) {
  Result<std::vector<bundle::PublicKey>> trusted = trusted_keys(o.trusted);
  if (!trusted.ok()) return r.fail(o.file, trusted.status());
  Result<LoadedFile> file = load_file(o.file, *trusted);
  if (!file.ok()) return r.fail(o.file, file.status());
  const mc::MegaCache* cache = file->opened.artifacts();
  if (cache == nullptr) {
    return r.fail(o.file, Status::InvalidArgument("an AOTCompiledArtifact holds no Mega-Cache "
                                                  "artifacts to populate; load it with torch"));
  }
  Result<PopulateReport> report = populate(*cache, o.cache_dir);
  if (!report.ok()) return r.fail(o.file, report.status());
  ordered_json counts = ordered_json::object();
  for (const auto& [type, keys] : report->info.entries()) counts[type] = keys.size();
  r.done({{"ok", true},
          {"file", o.file},
          {"cache_dir", o.cache_dir},
          {"counts", counts},
          {"files_written", report->files_written},
          {"files_unchanged", report->files_unchanged}},
         "populated " + o.cache_dir + " from " + o.file + ": " +
             std::to_string(report->files_written) + " files written, " +
             std::to_string(report->files_unchanged) + " already present");
  return kExitOk;
}

int cmd_convert(const Reporter& r, const Options& o) {
  Result<std::vector<bundle::PublicKey>> trusted = trusted_keys(o.trusted);
  if (!trusted.ok()) return r.fail(o.file, trusted.status());
  Result<LoadedFile> file = load_file(o.file, *trusted);
  if (!file.ok()) return r.fail(o.file, file.status());
  const OpenedFile& opened = file->opened;
  if (opened.artifacts() == nullptr) {
    return r.fail(o.file, Status::InvalidArgument("an AOTCompiledArtifact holds no Mega-Cache "
                                                  "artifacts to convert"));
  }
  std::string output;
  std::string direction;
  if (opened.kind == FileKind::kBundle) {
    Result<std::string> blob = bundle::to_mega_cache(*opened.bundle);
    if (!blob.ok()) return r.fail(o.file, blob.status());
    output = std::move(blob).value();
    direction = "torch Mega-Cache";
  } else {
    std::optional<bundle::SigningKey> key;
    if (!o.sign_key_file.empty()) {
      Result<std::string> text = util::FileSystem::real().read_file(o.sign_key_file);
      if (!text.ok()) return r.fail(o.sign_key_file, text.status());
      Result<bundle::SigningKey> parsed = bundle::parse_signing_key(*text);
      if (!parsed.ok()) return r.fail(o.sign_key_file, parsed.status());
      key = *parsed;
    }
    // Without Python the CLI knows only the host; torch's fields stay absent.
    output = bundle::write(*opened.artifacts(), bundle::host_fingerprint(),
                           {o.level, key ? &*key : nullptr});
    direction = key ? "signed megacache bundle" : "megacache bundle";
  }
  if (Status written = util::FileSystem::real().write_atomic(o.output, output); !written.ok()) {
    return r.fail(o.output, written);
  }
  r.done({{"ok", true}, {"input", o.file}, {"output", o.output}, {"format", direction},
          {"input_bytes", file->bytes.size()}, {"output_bytes", output.size()}},
         "wrote " + o.output + " (" + direction + ", " + std::to_string(output.size()) +
             " bytes from " + std::to_string(file->bytes.size()) + ")");
  return kExitOk;
}

int cmd_keygen(const Reporter& r, const Options& o) {
  const bundle::SigningKey key = bundle::SigningKey::generate();
  const std::string secret =
      util::hex(std::string_view(reinterpret_cast<const char*>(key.secret.data()), key.secret.size()));
  util::FileSystem& fs = util::FileSystem::real();
  if (Status s = fs.write_atomic(o.output, secret + "\n"); !s.ok()) return r.fail(o.output, s);
  ::chmod(o.output.c_str(), 0600);
  if (Status s = fs.write_atomic(o.output + ".pub", hex_of(key.public_key) + "\n"); !s.ok()) {
    return r.fail(o.output + ".pub", s);
  }
  r.done({{"ok", true}, {"signing_key", o.output}, {"public_key", hex_of(key.public_key)}},
         "wrote signing key " + o.output + " and public key " + o.output + ".pub (" +
             hex_of(key.public_key) + ")");
  return kExitOk;
}

}  // namespace

int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"megacache: inspect, verify, convert and populate torch.compile cache artifacts"};
  app.set_version_flag("--version", std::string("megacache ") + MEGACACHE_VERSION);
  app.require_subcommand(1);
  Options o;

  CLI::App* inspect = app.add_subcommand("inspect", "Show what a file holds");
  CLI::App* verify = app.add_subcommand("verify", "Check everything populate would check, write nothing");
  CLI::App* populate_cmd = app.add_subcommand("populate", "Write the artifacts into a torch cache dir");
  CLI::App* convert = app.add_subcommand(
      "convert", "Torch Mega-Cache or standalone file to a bundle, or a bundle back to Mega-Cache");
  CLI::App* keygen = app.add_subcommand("keygen", "Make an Ed25519 signing key and its .pub");
  for (CLI::App* sub : {inspect, verify, populate_cmd, convert}) {
    sub->add_option("FILE", o.file, "Mega-Cache blob, standalone_compile file or megacache bundle")
        ->required();
    sub->add_option("--trusted-key", o.trusted,
                    "Public key (hex or .pub file) whose signatures to accept; also "
                    "MEGACACHE_TRUSTED_KEYS");
  }
  for (CLI::App* sub : {inspect, verify, populate_cmd, convert, keygen}) {
    sub->add_flag("--json", o.json, "Machine-readable output");
  }
  populate_cmd->add_option("--cache-dir", o.cache_dir, "torch cache dir (TORCHINDUCTOR_CACHE_DIR)")
      ->required();
  convert->add_option("OUT", o.output, "Where to write the result")->required();
  convert->add_option("--sign", o.sign_key_file, "Sign the bundle with this key (megacache keygen)");
  convert->add_option("--level", o.level, "zstd level for bundles")->check(CLI::Range(1, 19));
  keygen->add_option("OUT", o.output, "Signing key file; the public key goes to OUT.pub")->required();

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
  const Reporter reporter{o.json, out, err};
  if (*inspect) return cmd_inspect(reporter, o);
  if (*verify) return cmd_verify(reporter, o);
  if (*convert) return cmd_convert(reporter, o);
  if (*keygen) return cmd_keygen(reporter, o);
  return cmd_populate(reporter, o);
}

}  // namespace megacache::cli
