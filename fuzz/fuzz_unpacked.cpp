// Fuzz target: the unpacked package reader on a directory built from the fuzz bytes, with
// links planted where the bytes say. A golden package (a bundle) is unpacked as it is, so the
// corpus starts from real directories; any other input is a list of records:
//   record := u8:op u8:path_length path u16:content_length content
//   op % 3 == 0: a file holding content; 1: a link to a directory outside; 2: a link to a file
//   outside. Paths keep to [A-Za-z0-9._/-] with no "." or ".." names, so every record stays
//   inside the fuzz directory.
// Reading must never crash, never follow a planted link and never read the outside files.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "megacache/bundle.h"
#include "megacache/precompile.h"

namespace {

namespace fs = std::filesystem;

bool is_safe_relative(std::string_view path) {
  if (path.empty() || path.front() == '/' || path.back() == '/') return false;
  for (const char c : path) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-' || c == '/';
    if (!ok) return false;
  }
  size_t start = 0;
  while (start <= path.size()) {
    const size_t slash = path.find('/', start);
    const std::string_view name =
        path.substr(start, slash == std::string_view::npos ? slash : slash - start);
    if (name.empty() || name == "." || name == "..") return false;
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
  return true;
}

void build_from_records(std::string_view bytes, const fs::path& dir, const fs::path& outside) {
  std::error_code ignored;
  while (bytes.size() >= 2) {
    const uint8_t op = static_cast<uint8_t>(bytes[0]) % 3;
    const size_t path_length = static_cast<uint8_t>(bytes[1]);
    bytes.remove_prefix(2);
    if (bytes.size() < path_length + 2) return;
    const std::string_view path = bytes.substr(0, path_length);
    bytes.remove_prefix(path_length);
    const size_t content_length = std::min<size_t>(
        (static_cast<uint8_t>(bytes[0]) << 8) | static_cast<uint8_t>(bytes[1]), bytes.size() - 2);
    const std::string_view content = bytes.substr(2, content_length);
    bytes.remove_prefix(2 + content_length);
    if (!is_safe_relative(path)) continue;
    const fs::path target = dir / path;
    fs::create_directories(target.parent_path(), ignored);
    if (op == 0) {
      std::ofstream(target, std::ios::binary)
          .write(content.data(), static_cast<std::streamsize>(content.size()));
    } else {
      fs::create_symlink(op == 1 ? outside : outside / "secret", target, ignored);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  static const fs::path base = [] {
    std::string pattern = (fs::temp_directory_path() / "megacache-fuzz-unpacked-XXXXXX").string();
    const fs::path made = ::mkdtemp(pattern.data());
    fs::create_directories(made / "outside");
    std::ofstream(made / "outside" / "secret") << "outside the package";
    return made;
  }();
  const fs::path dir = base / "pkg";
  std::error_code ignored;
  fs::remove_all(dir, ignored);
  fs::create_directories(dir);

  megacache::Result<megacache::bundle::Bundle> bundle = megacache::bundle::parse(bytes);
  megacache::Result<megacache::precompile::Package> golden =
      bundle.ok() && megacache::precompile::is_package(*bundle)
          ? megacache::precompile::read_package(*bundle)
          : megacache::Status::NotFound("not a package");
  if (golden.ok()) {
    fs::remove_all(dir, ignored);
    if (!megacache::precompile::write_unpacked(*golden, dir.string()).ok()) std::abort();
  } else {
    build_from_records(bytes, dir, base / "outside");
  }
  megacache::Result<megacache::precompile::Package> read =
      megacache::precompile::read_unpacked(dir.string(), {});
  if (golden.ok() && !read.ok()) std::abort();  // what write_unpacked wrote reads back
  if (read.ok()) {
    for (const megacache::precompile::KernelFile& kernel : read->kernels) {
      if (kernel.bytes == "outside the package") std::abort();  // read through a link
    }
  }
  const megacache::bundle::PublicKey some_key{};
  (void)megacache::precompile::read_unpacked(dir.string(), {some_key});
  return 0;
}
