// Mega-Cache codec. The grammar is in docs/torch-format.md.
#include "megacache/mega_cache.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <map>

#include "util/byte_reader.h"
#include "util/hash.h"
#include "util/utf8.h"

namespace megacache::mega_cache {
namespace {

constexpr uint64_t kEncodingVersion = 1;
constexpr size_t kCrcBytes = 4;
constexpr size_t kMinArtifactBytes = 16;  // two u64 lengths

// 2.7 wire enum; index = on-disk value.
constexpr std::array<std::string_view, 4> kV27Types = {kInductor, kAutotune, kAotAutograd, kPgo};

constexpr std::string_view kCacheHeader = "CacheCompiledArtifact";
constexpr std::string_view kAotHeader = "AOTCompiledArtifact";
constexpr size_t kTorchKeyBytes = 32;

uint64_t peek_u64(std::string_view bytes, size_t at) {
  uint64_t value = 0;
  for (size_t i = 0; i < 8; ++i) {
    value = (value << 8) | static_cast<uint8_t>(bytes[at + i]);
  }
  return value;
}

Status verify_crc(std::string_view blob, uint32_t& stored) {
  stored = util::load_u32_be(blob);
  const uint32_t computed = util::crc32(blob.substr(kCrcBytes));
  if (stored != computed) {
    char message[96];
    std::snprintf(message, sizeof message, "crc32 mismatch: stored 0x%08x, computed 0x%08x", stored,
                  computed);
    return Status::Corruption(0, message);
  }
  return Status::OK();
}

// A 2.8+ string: u64 length, base64 of UTF-8 text.
bool read_b64_string(util::ByteReader& reader, std::string& out, std::string_view what,
                     Status& error) {
  const size_t at = reader.position();
  std::string_view encoded;
  if (!reader.read_bytes(encoded, kMaxStringBytes, what, error)) {
    return false;
  }
  std::optional<std::string> decoded = util::base64_decode(encoded);
  if (!decoded) {
    error = Status::Corruption(at, std::string(what) + " is not canonical base64");
    return false;
  }
  if (!util::is_valid_utf8(*decoded)) {
    error = Status::Corruption(at, std::string(what) + " is not valid UTF-8");
    return false;
  }
  out = std::move(*decoded);
  return true;
}

bool read_plain_string(util::ByteReader& reader, std::string& out, std::string_view what,
                       Status& error) {
  const size_t at = reader.position();
  std::string_view raw;
  if (!reader.read_bytes(raw, kMaxStringBytes, what, error)) {
    return false;
  }
  if (!util::is_valid_utf8(raw)) {
    error = Status::Corruption(at, std::string(what) + " is not valid UTF-8");
    return false;
  }
  out = raw;
  return true;
}

Result<MegaCache> parse_v2_8(std::string_view blob) {
  MegaCache cache;
  cache.layout = Layout::kV2_8;
  if (Status crc = verify_crc(blob, cache.crc32); !crc.ok()) {
    return crc;
  }
  util::ByteReader reader(blob, kCrcBytes);
  Status error;
  uint64_t version = 0;
  reader.read_u64(version, "encoding version", error);  // length checked by the caller
  if (version != kEncodingVersion) {
    return Status::Corruption(
        kCrcBytes, "unsupported encoding version " + std::to_string(version) + " (expected 1)");
  }
  while (!reader.finished()) {
    TypeGroup group;
    group.offset = reader.position();
    uint64_t count = 0;
    if (!read_b64_string(reader, group.type, "artifact type", error) ||
        !reader.read_u64(count, "artifact count", error)) {
      return error;
    }
    if (count > reader.remaining() / kMinArtifactBytes) {
      return Status::Corruption(reader.position() - 8,
                                "artifact count " + std::to_string(count) + " cannot fit in the " +
                                    std::to_string(reader.remaining()) + " bytes left");
    }
    group.artifacts.reserve(count);
    for (uint64_t i = 0; i < count; ++i) {
      Artifact artifact;
      artifact.type = group.type;
      if (!read_b64_string(reader, artifact.key, "artifact key", error) ||
          !reader.read_bytes(artifact.content, kMaxBlobBytes, "artifact content", error)) {
        return error;
      }
      group.artifacts.push_back(std::move(artifact));
    }
    cache.groups.push_back(std::move(group));
  }
  mark_dropped_groups(cache);
  return cache;
}

Result<MegaCache> parse_v2_7(std::string_view blob) {
  MegaCache cache;
  cache.layout = Layout::kV2_7;
  util::ByteReader reader(blob, 8);
  Status error;
  while (!reader.finished()) {
    const size_t at = reader.position();
    uint64_t type_value = 0;
    Artifact artifact;
    if (!reader.read_u64(type_value, "artifact type", error)) {
      return error;
    }
    if (type_value >= kV27Types.size()) {
      return Status::Corruption(
          at, "unknown torch 2.7 artifact type " + std::to_string(type_value) + " (known: 0-3)");
    }
    artifact.type = kV27Types[type_value];
    if (!read_plain_string(reader, artifact.key, "artifact key", error) ||
        !reader.read_bytes(artifact.content, kMaxBlobBytes, "artifact content", error)) {
      return error;
    }
    if (cache.groups.empty() || cache.groups.back().type != artifact.type) {
      cache.groups.push_back(TypeGroup{artifact.type, at, {}, false});
    }
    cache.groups.back().artifacts.push_back(std::move(artifact));
  }
  return cache;
}

}  // namespace

void mark_dropped_groups(MegaCache& cache) {
  if (cache.layout == Layout::kV2_7) return;
  std::map<std::string_view, size_t> last_group_of_type;
  for (size_t i = 0; i < cache.groups.size(); ++i) {
    last_group_of_type[cache.groups[i].type] = i;
  }
  for (size_t i = 0; i < cache.groups.size(); ++i) {
    cache.groups[i].dropped_by_torch = last_group_of_type[cache.groups[i].type] != i;
  }
}

bool is_known_type(std::string_view type) {
  return type == kInductor || type == kAutotune || type == kAotAutograd || type == kPgo ||
         type == kPrecompile;
}

std::vector<const Artifact*> MegaCache::loaded_artifacts() const {
  std::vector<const Artifact*> out;
  if (layout == Layout::kV2_7) {
    for (const TypeGroup& group : groups) {
      for (const Artifact& artifact : group.artifacts) out.push_back(&artifact);
    }
    return out;
  }
  // dict() keeps a key where it was first inserted but takes the last value.
  std::vector<std::string_view> type_order;
  std::map<std::string_view, const TypeGroup*> last;
  for (const TypeGroup& group : groups) {
    if (!last.count(group.type)) type_order.push_back(group.type);
    last[group.type] = &group;
  }
  for (std::string_view type : type_order) {
    for (const Artifact& artifact : last[type]->artifacts) out.push_back(&artifact);
  }
  return out;
}

FileFormat sniff(std::string_view bytes) {
  if (bytes.size() < 12) {
    return FileFormat::kUnknown;
  }
  const uint64_t at4 = peek_u64(bytes, 4);
  if (at4 == kEncodingVersion) return FileFormat::kMegaCache2_8;
  if (peek_u64(bytes, 0) == kEncodingVersion) return FileFormat::kMegaCache2_7;
  if (at4 == kCacheHeader.size() || at4 == kAotHeader.size() || at4 == kTorchKeyBytes) {
    return FileFormat::kStandalone;
  }
  return FileFormat::kUnknown;
}

Result<MegaCache> parse(std::string_view blob) {
  if (blob.size() > kMaxBlobBytes) {
    return Status::Corruption(0, "blob of " + std::to_string(blob.size()) +
                                     " bytes exceeds the limit of " +
                                     std::to_string(kMaxBlobBytes));
  }
  if (blob.size() < 12) {
    return Status::Corruption(0, "only " + std::to_string(blob.size()) +
                                     " bytes; a Mega-Cache blob starts with a 4-byte crc32 and an "
                                     "8-byte version");
  }
  switch (sniff(blob)) {
    case FileFormat::kMegaCache2_8:
      return parse_v2_8(blob);
    case FileFormat::kMegaCache2_7:
      return parse_v2_7(blob);
    case FileFormat::kStandalone:
      return Status::Corruption(0, "this is a standalone_compile file, not a Mega-Cache blob");
    case FileFormat::kUnknown:
      break;
  }
  // Most likely a 2.8+ blob whose version field was damaged: report what the crc says.
  uint32_t stored = 0;
  if (Status crc = verify_crc(blob, stored); !crc.ok()) {
    return crc;
  }
  return Status::Corruption(kCrcBytes, "unsupported encoding version " +
                                           std::to_string(peek_u64(blob, kCrcBytes)) +
                                           " (expected 1)");
}

Writer::Writer() { clear(); }

void Writer::clear() {
  buffer_.assign(kCrcBytes, '\0');
  crc_ = 0;
  crc_covered_ = kCrcBytes;
  put_u64(kEncodingVersion);
}

void Writer::put_u64(uint64_t value) { util::append_u64_be(buffer_, value); }

void Writer::put_bytes(std::string_view bytes) {
  put_u64(bytes.size());
  buffer_.append(bytes);
}

void Writer::put_str(std::string_view text) { put_bytes(util::base64_encode(text)); }

void Writer::append_group(std::string_view type, const std::vector<Artifact>& artifacts,
                          std::vector<uint64_t>* content_offsets) {
  size_t needed = buffer_.size() + 64 + type.size() * 2;
  for (const Artifact& artifact : artifacts) {
    needed += 16 + artifact.key.size() * 2 + artifact.content.size();
  }
  if (needed > buffer_.capacity()) buffer_.reserve(std::max(needed, buffer_.capacity() * 2));
  put_str(type);
  put_u64(artifacts.size());
  for (const Artifact& artifact : artifacts) {
    put_str(artifact.key);
    put_u64(artifact.content.size());
    if (content_offsets) content_offsets->push_back(buffer_.size());
    buffer_.append(artifact.content);
  }
}

std::string_view Writer::bytes() {
  crc_ = util::crc32(std::string_view(buffer_).substr(crc_covered_), crc_);
  crc_covered_ = buffer_.size();
  util::store_u32_be(buffer_.data(), crc_);
  return buffer_;
}

std::string write(const std::vector<const Artifact*>& artifacts) {
  std::vector<std::string_view> type_order;
  std::map<std::string_view, std::vector<Artifact>> by_type;
  for (const Artifact* artifact : artifacts) {
    auto [it, inserted] = by_type.try_emplace(artifact->type);
    if (inserted) type_order.push_back(artifact->type);
    it->second.push_back(*artifact);
  }
  Writer writer;
  for (std::string_view type : type_order) {
    writer.append_group(type, by_type[type]);
  }
  return std::string(writer.bytes());
}

std::string write_groups(const MegaCache& cache) {
  Writer writer;
  for (const TypeGroup& group : cache.groups) writer.append_group(group.type, group.artifacts);
  return std::string(writer.bytes());
}

std::string write_standalone(const StandaloneArtifact& artifact) {
  // torch's BytesWriter: crc32 placeholder, then u64-length-prefixed fields; strings are
  // base64 text, as in the Mega-Cache blob.
  std::string out(kCrcBytes, '\0');
  auto put_bytes = [&out](std::string_view bytes) {
    util::append_u64_be(out, bytes.size());
    out.append(bytes);
  };
  switch (artifact.kind) {
    case StandaloneKind::kCacheCompiledArtifact:
      put_bytes(kCacheHeader);
      break;
    case StandaloneKind::kAOTCompiledArtifact:
      put_bytes(kAotHeader);
      break;
    case StandaloneKind::kHeaderless2_8:
      break;
  }
  put_bytes(artifact.torch_key);
  if (artifact.kind != StandaloneKind::kAOTCompiledArtifact) {
    put_bytes(util::base64_encode(artifact.aot_autograd_key));
  }
  put_bytes(artifact.payload);
  util::store_u32_be(out.data(), util::crc32(std::string_view(out).substr(kCrcBytes)));
  return out;
}

Result<StandaloneArtifact> parse_standalone(std::string_view file) {
  if (file.size() < 12) {
    return Status::Corruption(0, "only " + std::to_string(file.size()) +
                                     " bytes; a standalone_compile file starts with a 4-byte crc32 "
                                     "and a header");
  }
  uint32_t stored = 0;
  if (Status crc = verify_crc(file, stored); !crc.ok()) {
    return crc;
  }
  util::ByteReader reader(file, kCrcBytes);
  Status error;
  StandaloneArtifact artifact;
  std::string_view first;
  if (!reader.read_bytes(first, 64, "header", error)) {
    return error;
  }
  if (first == kCacheHeader || first == kAotHeader) {
    artifact.kind = first == kCacheHeader ? StandaloneKind::kCacheCompiledArtifact
                                          : StandaloneKind::kAOTCompiledArtifact;
    if (!reader.read_bytes(artifact.torch_key, 64, "torch_key", error)) {
      return error;
    }
  } else if (first.size() == kTorchKeyBytes) {
    artifact.kind = StandaloneKind::kHeaderless2_8;
    artifact.torch_key = first;
  } else {
    return Status::Corruption(kCrcBytes,
                              "unknown header: expected CacheCompiledArtifact, "
                              "AOTCompiledArtifact or a 32-byte torch_key");
  }
  if (artifact.torch_key.size() != kTorchKeyBytes) {
    return Status::Corruption(
        kCrcBytes,
        "torch_key has " + std::to_string(artifact.torch_key.size()) + " bytes (expected 32)");
  }
  if (artifact.kind != StandaloneKind::kAOTCompiledArtifact &&
      !read_b64_string(reader, artifact.aot_autograd_key, "aot_autograd key", error)) {
    return error;
  }
  if (!reader.read_bytes(artifact.payload, kMaxBlobBytes, "payload", error)) {
    return error;
  }
  if (!reader.finished()) {
    return Status::Corruption(reader.position(), std::to_string(reader.remaining()) +
                                                     " unexpected bytes after the payload");
  }
  return artifact;
}

Result<FileContents> locate_mega_cache(std::string_view file) {
  FileContents contents;
  if (sniff(file) != FileFormat::kStandalone) {
    contents.blob = file;
    return contents;
  }
  Result<StandaloneArtifact> standalone = parse_standalone(file);
  if (!standalone.ok()) return standalone.status();
  contents.standalone = *standalone;
  if (standalone->kind != StandaloneKind::kAOTCompiledArtifact) contents.blob = standalone->payload;
  return contents;
}

}  // namespace megacache::mega_cache
