#include "cli/commands.h"

#include <sys/stat.h>
#include <unistd.h>

#include <ctime>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <ostream>

#include "megacache/bundle.h"
#include "megacache/mega_cache.h"
#include "megacache/open.h"
#include "megacache/populate.h"
#include "megacache/store.h"
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

struct Options {
  bool json = false;
  bool zero = false;
  std::string store_url;
  std::string name;
  std::string max_size;
  std::string file;
  std::string output;
  std::string cache_dir;
  std::string sign_key_file;
  int level = 3;
  std::vector<std::string> trusted;
};

// What a command needs of a file: anything megacache opens, what it loads or stores (not an
// AOTCompiledArtifact), or Mega-Cache artifacts (not a precompile pair either).
enum class Need : uint8_t { kAnyFile, kLoadable, kArtifacts };

// Reads and opens `path`, holding bundles to the trusted keys of --trusted-key and
// MEGACACHE_TRUSTED_KEYS (all of them, or none when `check_trust` is off).
Result<LoadedFile> load_file(const std::string& path, const Options& o, Need need,
                             bool check_trust = true) {
  Result<std::vector<bundle::PublicKey>> keys = trusted_keys(o.trusted);
  if (!keys.ok()) return keys.status();
  const std::vector<bundle::PublicKey> trusted =
      check_trust ? *keys : std::vector<bundle::PublicKey>{};
  Result<std::string> bytes = util::read_named_file(path);
  if (!bytes.ok()) return bytes.status();
  // The views inside point into `file.bytes`, so open only after it has its final home.
  Result<LoadedFile> result(LoadedFile{std::move(bytes).value(), {}});
  Result<OpenedFile> opened = need == Need::kArtifacts  ? open_artifacts(result->bytes, trusted)
                              : need == Need::kLoadable ? open_loadable(result->bytes, trusted)
                                                        : open_file(result->bytes, trusted);
  if (!opened.ok()) return opened.status();
  result->opened = std::move(opened).value();
  return result;
}

std::string kind_name(mc::StandaloneKind kind) {
  switch (kind) {
    case mc::StandaloneKind::kCacheCompiledArtifact:
      return "CacheCompiledArtifact";
    case mc::StandaloneKind::kAOTCompiledArtifact:
      return "AOTCompiledArtifact";
    case mc::StandaloneKind::kHeaderless2_8:
      return "CacheCompiledArtifact (torch 2.8/2.9, no header)";
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
                     : opened.kind == FileKind::kPackage    ? "megacache-package"
                     : opened.kind == FileKind::kAotPair    ? "megacache-aot-pair"
                     : opened.kind == FileKind::kStandalone ? "standalone_compile"
                                                            : "mega-cache";
  if (opened.package)
    report["package"] = ordered_json::parse(precompile::describe(*opened.package));
  if (opened.pair) report["aot_pair"] = ordered_json::parse(aot::describe(*opened.pair));
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
  if (opened.kind != FileKind::kBundle && opened.kind != FileKind::kPackage) {
    report["layout"] = cache->layout == mc::Layout::kV2_7 ? "torch 2.7" : "torch 2.8+";
    report["crc32"] = cache->layout == mc::Layout::kV2_7 ? ordered_json(nullptr)
                                                         : ordered_json(hex32(cache->crc32));
    report["crc_ok"] =
        cache->layout == mc::Layout::kV2_7 ? ordered_json(nullptr) : ordered_json(true);
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
  if (report.contains("aot_pair")) {
    const ordered_json& p = report["aot_pair"];
    out << "torch.compiler.precompile pair, from " << p["api"].get<std::string>() << ":\n"
        << "  python_code: " << p["python_code_bytes"] << " bytes, sha256 "
        << p["python_code_sha256"].get<std::string>() << "\n"
        << "  cache:       " << p["cache_bytes"] << " bytes, sha256 "
        << p["cache_sha256"].get<std::string>() << "\n  cache envelope:";
    for (const auto& [name, value] : p["cache_fields"].items())
      out << " " << name << "=" << value.get<std::string>();
    out << "\n";
  }
  if (report.contains("package")) {
    const ordered_json& p = report["package"];
    out << "precompile package: " << p["functions"].size() << " function(s), "
        << p["kernels"].size() << " kernel(s)";
    if (p.contains("triton_modules"))
      out << ", " << p["triton_modules"].size() << " Triton module(s)";
    if (p.contains("cuda_jit")) out << ", " << p["cuda_jit"].size() << " CUDA JIT build(s)";
    out << "\n";
    for (const auto& f : p["functions"]) {
      const ordered_json& id = f["function"];
      out << "  " << id["module"].get<std::string>() << "." << id["qualname"].get<std::string>()
          << id["signature"].get<std::string>() << " (line " << id["first_line"] << ", "
          << f["device_type"].get<std::string>() << "): " << f["codes"].size()
          << " guarded code(s), " << f["bypassed"].size() << " bypassed\n";
    }
    out << "fallback Mega-Cache artifacts:\n";
  }
  if (!report.contains("groups")) return;
  if (report.contains("layout")) {
    out << "Mega-Cache: " << report["layout"].get<std::string>() << " layout, encoding version 1";
    if (!report["crc32"].is_null())
      out << ", crc32 " << report["crc32"].get<std::string>() << " ok";
    out << "\n";
  }
  out << "type groups in file order:\n";
  for (const auto& group : report["groups"]) {
    out << "  @" << group["offset"] << " " << group["type"].get<std::string>() << " x"
        << group["artifacts"];
    if (group["dropped_by_torch"].get<bool>())
      out << "  (dropped: a later group of this type wins)";
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

int cmd_inspect(const Reporter& r, const Options& o) {
  Result<std::vector<bundle::PublicKey>> trusted = trusted_keys(o.trusted);
  if (!trusted.ok()) return r.fail(o.file, trusted.status());
  // inspect shows a bundle whatever its signature says; verify and populate enforce trust.
  Result<LoadedFile> file = load_file(o.file, o, Need::kAnyFile, /*check_trust=*/false);
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
  Result<std::string> bytes = util::read_named_file(o.file);
  if (!bytes.ok()) return r.fail(o.file, bytes.status());
  Result<std::vector<bundle::PublicKey>> trusted = trusted_keys(o.trusted);
  if (!trusted.ok()) return r.fail(o.file, trusted.status());
  Result<size_t> planned = verify_file(*bytes, *trusted);
  if (!planned.ok()) return r.fail(o.file, planned.status());
  r.done({{"ok", true}, {"file", o.file}, {"files_to_populate", *planned}},
         o.file + ": OK, " + std::to_string(*planned) + " artifacts would be populated");
  return kExitOk;
}

int cmd_populate(const Reporter& r, const Options& o) {
  Result<LoadedFile> file = load_file(o.file, o, Need::kArtifacts);
  if (!file.ok()) return r.fail(o.file, file.status());
  Result<PopulateReport> report = populate_file(file->opened, o.cache_dir);
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
  Result<LoadedFile> file = load_file(o.file, o, Need::kLoadable);
  if (!file.ok()) return r.fail(o.file, file.status());
  const OpenedFile& opened = file->opened;
  std::string output;
  std::string direction;
  if (opened.kind == FileKind::kAotPair) {
    // torch's own two files, as capture() wrote them: the code, then the cache beside it.
    const std::string cache_path = o.output + ".cache";
    if (Status written = util::write_named_file(cache_path, opened.pair->cache); !written.ok()) {
      return r.fail(cache_path, written);
    }
    if (Status written = util::write_named_file(o.output, opened.pair->python_code);
        !written.ok()) {
      return r.fail(o.output, written);
    }
    r.done({{"ok", true}, {"file", o.file}, {"python_code", o.output}, {"cache", cache_path}},
           "wrote torch's pair: " + o.output + " and " + cache_path +
               " (torch.compiler.precompile.load(\"" + o.output + "\", \"" + cache_path + "\"))");
    return kExitOk;
  }
  if (opened.kind == FileKind::kPackage) {
    return r.fail(o.file,
                  Status::InvalidArgument(
                      "a precompile package holds pickled Dynamo entries that only torch can "
                      "rewrite; use megacache.load_package, or `megacache inspect` to read it"));
  }
  if (opened.kind == FileKind::kBundle) {
    output = mc::write_groups(*opened.artifacts());  // already decoded and checked
    direction = "torch Mega-Cache";
  } else {
    std::optional<bundle::SigningKey> key;
    if (!o.sign_key_file.empty()) {
      Result<std::string> text = util::read_named_file(o.sign_key_file);
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
  if (Status written = util::write_named_file(o.output, output); !written.ok()) {
    return r.fail(o.output, written);
  }
  r.done({{"ok", true},
          {"input", o.file},
          {"output", o.output},
          {"format", direction},
          {"input_bytes", file->bytes.size()},
          {"output_bytes", output.size()}},
         "wrote " + o.output + " (" + direction + ", " + std::to_string(output.size()) +
             " bytes from " + std::to_string(file->bytes.size()) + ")");
  return kExitOk;
}

int cmd_keygen(const Reporter& r, const Options& o) {
  const bundle::SigningKey key = bundle::SigningKey::generate();
  const std::string secret = util::hex(
      std::string_view(reinterpret_cast<const char*>(key.secret.data()), key.secret.size()));
  // The secret is never readable by others, not even between its creation and a chmod.
  if (Status s = util::write_named_file(o.output, secret + "\n", 0600); !s.ok())
    return r.fail(o.output, s);
  if (Status s = util::write_named_file(o.output + ".pub", hex_of(key.public_key) + "\n");
      !s.ok()) {
    return r.fail(o.output + ".pub", s);
  }
  r.done({{"ok", true}, {"signing_key", o.output}, {"public_key", hex_of(key.public_key)}},
         "wrote signing key " + o.output + " and public key " + o.output + ".pub (" +
             hex_of(key.public_key) + ")");
  return kExitOk;
}

// A progress bar on stderr for transfers over 1 MiB, when stderr is a terminal.
void show_progress(store::Store& s, bool json) {
  if (json || !::isatty(STDERR_FILENO)) return;
  s.set_progress([](uint64_t done, uint64_t total) {
    if (total < (1u << 20)) return;
    const int width = 40;
    const int filled = static_cast<int>(width * done / total);
    std::fprintf(stderr, "\r[%s%s] %3d%% of %.1f MiB", std::string(filled, '#').c_str(),
                 std::string(width - filled, ' ').c_str(), static_cast<int>(100 * done / total),
                 total / 1048576.0);
    if (done == total) std::fprintf(stderr, "\n");
  });
}

Result<std::unique_ptr<store::Store>> open_store(const Options& o) {
  return store::open(o.store_url.empty() ? store::default_url() : o.store_url);
}

int cmd_push(const Reporter& r, const Options& o) {
  // Only what megacache itself would load goes into a store.
  Result<LoadedFile> file = load_file(o.file, o, Need::kLoadable);
  if (!file.ok()) return r.fail(o.file, file.status());
  std::string name = o.name;
  if (name.empty()) name = o.file.substr(o.file.find_last_of('/') + 1);
  if (Status valid = store::check_name(name); !valid.ok()) {
    return r.fail(o.file, Status::InvalidArgument(valid.message() + "; pass --name"));
  }
  Result<std::unique_ptr<store::Store>> s = open_store(o);
  if (!s.ok()) return r.fail(o.store_url, s.status());
  show_progress(**s, o.json);
  if (Status put = (*s)->put(name, file->bytes); !put.ok()) return r.fail((*s)->url(), put);
  r.done({{"ok", true}, {"name", name}, {"store", (*s)->url()}, {"bytes", file->bytes.size()}},
         "pushed " + o.file + " to " + (*s)->url() + " as " + name + " (" +
             std::to_string(file->bytes.size()) + " bytes)");
  return kExitOk;
}

int cmd_pull(const Reporter& r, const Options& o) {
  Result<std::vector<bundle::PublicKey>> trusted = trusted_keys(o.trusted);
  if (!trusted.ok()) return r.fail(o.name, trusted.status());  // before any transfer
  Result<std::unique_ptr<store::Store>> s = open_store(o);
  if (!s.ok()) return r.fail(o.store_url, s.status());
  show_progress(**s, o.json);
  std::optional<std::string> value = (*s)->get(o.name);
  if (!value)
    return r.fail(o.name, Status::NotFound("no entry '" + o.name + "' in " + (*s)->url()));
  if (Result<OpenedFile> opened = open_loadable(*value, *trusted); !opened.ok()) {
    return r.fail(o.name, opened.status());
  }
  if (Status written = util::write_named_file(o.output, *value); !written.ok()) {
    return r.fail(o.output, written);
  }
  r.done({{"ok", true},
          {"name", o.name},
          {"store", (*s)->url()},
          {"output", o.output},
          {"bytes", value->size()}},
         "pulled " + o.name + " from " + (*s)->url() + " into " + o.output + " (" +
             std::to_string(value->size()) + " bytes)");
  return kExitOk;
}

int cmd_ls(const Reporter& r, const Options& o) {
  Result<std::unique_ptr<store::Store>> s = open_store(o);
  if (!s.ok()) return r.fail(o.store_url, s.status());
  ordered_json entries = ordered_json::array();
  std::string text;
  for (const store::EntryInfo& entry : (*s)->list()) {
    entries.push_back(
        {{"name", entry.name}, {"bytes", entry.size}, {"last_used_unix", entry.last_used_unix}});
    char when[32] = "-";
    if (entry.last_used_unix > 0) {
      const std::time_t t = entry.last_used_unix;
      std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::gmtime(&t));
    }
    text += std::string(when) + "  " + std::to_string(entry.size) + "  " + entry.name + "\n";
  }
  r.done({{"store", (*s)->url()}, {"entries", entries}},
         text + std::to_string(entries.size()) + " entries in " + (*s)->url());
  return kExitOk;
}

int cmd_gc(const Reporter& r, const Options& o) {
  Result<uint64_t> max_size = store::parse_size(o.max_size);
  if (!max_size.ok()) return r.fail("--max-size", max_size.status());
  Result<std::unique_ptr<store::Store>> s = open_store(o);
  if (!s.ok()) return r.fail(o.store_url, s.status());
  const size_t before = (*s)->list().size();
  Result<uint64_t> freed = (*s)->gc(*max_size);
  if (!freed.ok()) return r.fail((*s)->url(), freed.status());
  const size_t after = (*s)->list().size();
  r.done({{"ok", true},
          {"store", (*s)->url()},
          {"entries_evicted", before - after},
          {"orphan_bytes_freed", *freed}},
         "evicted " + std::to_string(before - after) + " entries and freed " +
             std::to_string(*freed) + " bytes of unreferenced objects in " + (*s)->url());
  return kExitOk;
}

int cmd_stats(const Reporter& r, const Options& o) {
  Result<std::unique_ptr<store::Store>> s = open_store(o);
  if (!s.ok()) return r.fail(o.store_url, s.status());
  if (o.zero) (*s)->zero_stats();
  ordered_json backends = ordered_json::array();
  std::string text;
  for (const auto& [url, st] : (*s)->backend_stats()) {
    const ordered_json counters = {{"hits", st.hits},           {"misses", st.misses},
                                   {"puts", st.puts},           {"bytes_in", st.bytes_in},
                                   {"bytes_out", st.bytes_out}, {"errors", st.errors},
                                   {"timeouts", st.timeouts}};
    backends.push_back({{"store", url}, {"counters", counters}});
    text += url + "\n";
    for (const auto& [key, value] : counters.items())
      text += "  " + key + ": " + value.dump() + "\n";
  }
  ordered_json report = backends.front()["counters"];
  report["store"] = (*s)->url();
  report["backends"] = backends;
  r.done(report, text.substr(0, text.size() - 1));
  return kExitOk;
}

}  // namespace

int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  CLI::App app{"megacache: inspect, verify, convert and populate torch.compile cache artifacts"};
  app.set_version_flag("--version", std::string("megacache ") + MEGACACHE_VERSION);
  app.require_subcommand(1);
  Options o;

  CLI::App* inspect = app.add_subcommand("inspect", "Show what a file holds");
  CLI::App* verify =
      app.add_subcommand("verify", "Check everything populate would check, write nothing");
  CLI::App* populate_cmd =
      app.add_subcommand("populate", "Write the artifacts into a torch cache dir");
  CLI::App* convert = app.add_subcommand(
      "convert",
      "Torch Mega-Cache or standalone file to a bundle, a bundle back to Mega-Cache, or a "
      "torch.compiler.precompile pair to torch's two files (OUT and OUT.cache)");
  CLI::App* keygen = app.add_subcommand("keygen", "Make an Ed25519 signing key and its .pub");
  for (CLI::App* sub : {inspect, verify, populate_cmd, convert}) {
    sub->add_option(
           "FILE", o.file,
           "Mega-Cache blob, standalone_compile file, megacache bundle, package or precompile pair")
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
  convert->add_option("--sign", o.sign_key_file,
                      "Sign the bundle with this key (megacache keygen)");
  convert->add_option("--level", o.level, "zstd level for bundles")->check(CLI::Range(1, 19));
  keygen->add_option("OUT", o.output, "Signing key file; the public key goes to OUT.pub")
      ->required();

  CLI::App* push = app.add_subcommand("push", "Put a checked file into a store");
  CLI::App* pull = app.add_subcommand("pull", "Get an entry from a store into a file, checked");
  CLI::App* ls = app.add_subcommand("ls", "List a store's entries");
  CLI::App* gc = app.add_subcommand("gc", "Evict least recently used entries down to a size");
  CLI::App* stats = app.add_subcommand("stats", "Show (or --zero) a store's counters");
  push->add_option("FILE", o.file,
                   "Bundle, package, precompile pair, Mega-Cache blob or standalone file")
      ->required();
  push->add_option("--name", o.name, "Entry name (default: the file's name)");
  pull->add_option("NAME", o.name, "Entry name")->required();
  pull->add_option("-o,--output", o.output, "Where to write it")->required();
  for (CLI::App* sub : {push, pull}) {
    sub->add_option("--trusted-key", o.trusted, "Public key whose signatures to accept");
  }
  gc->add_option("--max-size", o.max_size, "Keep at most this much, e.g. 10G")->required();
  stats->add_flag("--zero", o.zero, "Reset the counters");
  for (CLI::App* sub : {push, pull, ls, gc, stats}) {
    sub->add_option("--store", o.store_url,
                    "Store URL (default: MEGACACHE_STORE, else the local store)");
    sub->add_flag("--json", o.json, "Machine-readable output");
  }

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
  if (*push) return cmd_push(reporter, o);
  if (*pull) return cmd_pull(reporter, o);
  if (*ls) return cmd_ls(reporter, o);
  if (*gc) return cmd_gc(reporter, o);
  if (*stats) return cmd_stats(reporter, o);
  return cmd_populate(reporter, o);
}

}  // namespace megacache::cli
