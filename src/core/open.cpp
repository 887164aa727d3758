#include "megacache/open.h"

#include "megacache/populate.h"
#include "util/file_system.h"

namespace megacache {
namespace {

constexpr const char* kPairNeedsTorch =
    "this is a torch.compiler.precompile pair, whose cache only torch can open; load it with "
    "megacache.load_precompiled, or write torch's two files with `megacache convert PAIR "
    "ARTIFACT.py` (the cache goes to ARTIFACT.py.cache)";

}  // namespace

Result<std::vector<bundle::PublicKey>> parse_trusted_keys(std::string_view spec) {
  std::vector<bundle::PublicKey> keys;
  while (!spec.empty()) {
    const size_t comma = spec.find(',');
    const std::string item(spec.substr(0, comma));
    spec = comma == std::string_view::npos ? std::string_view() : spec.substr(comma + 1);
    if (item.find_first_not_of(" \t") == std::string::npos) continue;
    Result<bundle::PublicKey> key = bundle::parse_public_key(item);
    if (!key.ok()) {
      Result<std::string> text = util::read_named_file(item);
      if (!text.ok()) {
        return Status::InvalidArgument("trusted key '" + item +
                                       "' is neither 64 hex digits nor a readable .pub file (" +
                                       text.status().message() + ")");
      }
      key = bundle::parse_public_key(*text);
      if (!key.ok()) return Status::InvalidArgument(item + ": " + key.status().message());
    }
    keys.push_back(*key);
  }
  return keys;
}

Result<OpenedFile> open_file(std::string_view file,
                             const std::vector<bundle::PublicKey>& trusted_keys) {
  OpenedFile opened;
  if (file.substr(0, bundle::kMagic.size()) == bundle::kMagic) {
    opened.kind = FileKind::kBundle;
    Result<bundle::Bundle> parsed = bundle::parse(file);
    if (!parsed.ok()) return parsed.status();
    if (Status trust = bundle::check_trust(*parsed, trusted_keys); !trust.ok()) return trust;
    if (aot::is_pair(*parsed)) {
      Result<aot::Pair> pair = aot::read_pair(*parsed);
      if (!pair.ok()) return pair.status();
      opened.kind = FileKind::kAotPair;
      opened.pair = std::make_shared<const aot::Pair>(std::move(pair).value());
      opened.bundle = std::move(parsed).value();
      return opened;
    }
    if (precompile::is_package(*parsed)) {
      Result<precompile::Package> package = precompile::read_package(*parsed);
      if (!package.ok()) return package.status();
      opened.kind = FileKind::kPackage;
      opened.package = std::make_shared<const precompile::Package>(std::move(package).value());
      opened.bundle = std::move(parsed).value();
      if (opened.package->mega_cache.empty()) {
        opened.direct.emplace();
        return opened;
      }
      Result<mega_cache::MegaCache> fallback = mega_cache::parse(opened.package->mega_cache);
      if (!fallback.ok()) {
        return Status::Corruption(
            0, "in the package's Mega-Cache artifacts: " + fallback.status().to_string());
      }
      opened.direct = std::move(fallback).value();
      return opened;
    }
    Result<bundle::Decoded> decoded = bundle::decode(*parsed);
    if (!decoded.ok()) return decoded.status();
    opened.bundle = std::move(parsed).value();
    opened.decoded = std::move(decoded).value();
    return opened;
  }
  Result<mega_cache::FileContents> contents = mega_cache::locate_mega_cache(file);
  if (!contents.ok()) return contents.status();
  opened.standalone = contents->standalone;
  opened.kind = contents->standalone ? FileKind::kStandalone : FileKind::kMegaCache;
  if (contents->blob.empty()) return opened;  // an AOTCompiledArtifact
  Result<mega_cache::MegaCache> cache = mega_cache::parse(contents->blob);
  if (!cache.ok()) {
    if (!contents->standalone) return cache.status();
    const uint64_t base = static_cast<uint64_t>(contents->blob.data() - file.data());
    return Status::Corruption(base + cache.status().offset().value_or(0),
                              "in the embedded Mega-Cache: " + cache.status().message());
  }
  opened.direct = std::move(cache).value();
  return opened;
}

Result<size_t> verify_file(std::string_view file,
                           const std::vector<bundle::PublicKey>& trusted_keys) {
  Result<OpenedFile> opened = open_file(file, trusted_keys);
  if (!opened.ok()) return opened.status();
  if (opened->artifacts() == nullptr) return size_t{0};
  Result<std::vector<PlannedFile>> plan = plan_populate(*opened->artifacts());
  if (!plan.ok()) return plan.status();
  const precompile::Package* package = opened->package ? &*opened->package : nullptr;
  return plan->size() + (package ? package->kernels.size() + package->triton_modules.size() +
                                       package->cuda_jit.size()
                                 : 0);
}

Result<PopulateReport> populate_file(const OpenedFile& opened, const std::string& cache_dir,
                                     const PopulateOptions& options) {
  if (opened.package) return precompile::populate_package(*opened.package, cache_dir);
  if (opened.pair) return Status::InvalidArgument(kPairNeedsTorch);
  if (opened.artifacts() == nullptr) {
    return Status::InvalidArgument("an AOTCompiledArtifact holds no cache artifacts to populate");
  }
  return populate(*opened.artifacts(), cache_dir, options);
}

Result<OpenedFile> open_loadable(std::string_view file,
                                 const std::vector<bundle::PublicKey>& trusted_keys) {
  Result<OpenedFile> opened = open_file(file, trusted_keys);
  if (opened.ok() && !opened->pair && opened->artifacts() == nullptr) {
    return Status::InvalidArgument(
        "this is a standalone_compile AOTCompiledArtifact, which holds a pickle and no Mega-Cache "
        "artifacts; load it with torch._inductor.CompiledArtifact.load");
  }
  return opened;
}

Result<OpenedFile> open_artifacts(std::string_view file,
                                  const std::vector<bundle::PublicKey>& trusted_keys) {
  Result<OpenedFile> opened = open_loadable(file, trusted_keys);
  if (opened.ok() && opened->pair) return Status::InvalidArgument(kPairNeedsTorch);
  return opened;
}

}  // namespace megacache
