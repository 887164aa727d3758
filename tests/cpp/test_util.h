// Helpers shared by the C++ tests.
#pragma once

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "megacache/mega_cache.h"
#include "util/byte_reader.h"
#include "util/file_system.h"
#include "util/hash.h"

namespace megacache::test {

inline std::string read_test_file(const std::string& name) {
  std::ifstream in(std::string(MEGACACHE_TEST_DATA) + "/" + name, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

inline const std::vector<std::string>& fixture_names() {
  static const std::vector<std::string> names = {"mega_mlp_infer.bin", "mega_graphbreak.bin",
                                                 "mega_dynamic.bin"};
  return names;
}

// Each CompiledFxGraph.source_code (Inductor's generated code) pickled in a Mega-Cache blob:
// the pickle stores it as `source_code` MEMOIZE BINUNICODE(<u32 little-endian length>, text).
inline std::vector<std::string> generated_sources(const std::string& blob) {
  static const std::string kMarker = std::string("source_code\x94X", 13);
  std::vector<std::string> sources;
  for (size_t at = blob.find(kMarker); at != std::string::npos; at = blob.find(kMarker, at + 1)) {
    uint32_t length = 0;
    std::memcpy(&length, blob.data() + at + kMarker.size(), 4);  // the test host is little-endian
    sources.push_back(blob.substr(at + kMarker.size() + 4, length));
  }
  return sources;
}

// Test set-up writes and reads by absolute path, links followed (the code under test goes
// through util::FileSystem beneath its roots instead).
inline Status write_file(const std::string& path, std::string_view bytes) {
  return util::write_named_file(path, bytes);
}
inline Result<std::string> read_file(const std::string& path) {
  return util::read_named_file(path);
}
inline Status make_dirs(const std::string& path) {
  std::error_code error;
  std::filesystem::create_directories(path, error);
  return error ? Status::IOError(path + ": " + error.message()) : Status::OK();
}

// The real file system, except that every write_atomic after the first `allowed` ones fails
// as a full disk would, before writing anything. A test runs a writer with each `allowed` in
// turn to fault it at every write it makes; `writes()` counts the writes it attempted.
class FailingFileSystem final : public util::FileSystem {
 public:
  explicit FailingFileSystem(int allowed) : allowed_(allowed) {}
  Status create_directories(const std::string& root, std::string_view dir) override {
    return real().create_directories(root, dir);
  }
  std::vector<std::string> list_directory(const std::string& root, std::string_view dir) override {
    return real().list_directory(root, dir);
  }
  bool file_equals(const std::string& root, std::string_view path,
                   std::string_view content) override {
    return real().file_equals(root, path, content);
  }
  Result<std::string> read_file(const std::string& root, std::string_view path,
                                uint64_t max_bytes) override {
    return real().read_file(root, path, max_bytes);
  }
  std::optional<FileInfo> file_info(const std::string& root, std::string_view path) override {
    return real().file_info(root, path);
  }
  void touch(const std::string& root, std::string_view path) override { real().touch(root, path); }
  Status remove_file(const std::string& root, std::string_view path) override {
    return real().remove_file(root, path);
  }
  Result<int> open_for_update(const std::string& root, std::string_view path) override {
    return real().open_for_update(root, path);
  }
  Status write_atomic(const std::string& root, std::string_view path,
                      std::string_view content) override {
    ++writes_;
    if (allowed_-- <= 0) return Status::IOError("injected: no space left on device");
    return real().write_atomic(root, path, content);
  }

  int writes() const { return writes_; }

 private:
  int allowed_;
  int writes_ = 0;
};

// A fresh directory, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string pattern =
        (std::filesystem::temp_directory_path() / "megacache-test-XXXXXX").string();
    path_ = ::mkdtemp(pattern.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Every regular file under `root`, relative path -> contents.
inline std::map<std::string, std::string> read_tree(const std::string& root) {
  std::map<std::string, std::string> out;
  if (!std::filesystem::exists(root)) return out;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    out[std::filesystem::relative(entry.path(), root).string()] = buffer.str();
  }
  return out;
}

struct RawArtifact {
  std::string key;
  std::string content;
};

// A 2.8+ blob with the groups given, in order, repeats allowed.
inline std::string make_blob(
    const std::vector<std::pair<std::string, std::vector<RawArtifact>>>& groups) {
  mega_cache::Writer writer;
  for (const auto& [type, raws] : groups) {
    std::vector<mega_cache::Artifact> artifacts;
    for (const RawArtifact& raw : raws) artifacts.push_back({type, raw.key, raw.content});
    writer.append_group(type, artifacts);
  }
  return std::string(writer.bytes());
}

// Recomputes the crc of a 2.8+ blob so that a damaged blob reaches the structure parser.
inline std::string with_fixed_crc(std::string blob) {
  if (blob.size() >= 4) {
    util::store_u32_be(blob.data(), util::crc32(std::string_view(blob).substr(4)));
  }
  return blob;
}

// A small blob with every type, a repeated group and binary content.
inline std::string small_blob() {
  return make_blob({
      {"inductor", {{"fabcdefghijklmnop", std::string("\x80\x04\x95pickle\0bytes", 15)}}},
      {"autotune", {{"ab/0123456789abcdef.best_config", R"({"XBLOCK": 64, "num_warps": 4})"}}},
      {"aot_autograd", {{"aqrstuvwxyz", "aot pickle"}}},
      {"inductor", {{"fabcdefghijklmnop", "graph v2"}, {"fzyxwvu", "second graph"}}},
      {"pgo", {{"job:0:", "pgo pickle"}}},
      {"precompile", {{std::string(64, 'e'), "precompile entry"}}},
  });
}

}  // namespace megacache::test
