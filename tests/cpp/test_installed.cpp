// The identity of installed software: what a value derived from its files is keyed by.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>

#include "megacache/precompile.h"
#include "test_util.h"

namespace megacache::precompile {
namespace {

namespace fs = std::filesystem;

void write(const fs::path& path, const std::string& text, fs::file_time_type when) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary) << text;
  fs::last_write_time(path, when);
}

// A small installed package: the same files, sizes and mtimes wherever it is installed.
void install(const fs::path& root, fs::file_time_type when) {
  write(root / "__init__.py", "__version__ = '3.6.0'\n", when);
  write(root / "compiler" / "compiler.py", "def compile(): pass\n", when);
  write(root / "_C" / "libtriton.so", std::string(4096, 'x'), when);
}

TEST(InstalledIdentity, TheSameInstallationAnywhereHasTheSameIdentity) {
  test::TempDir a, b;
  const auto when = fs::file_time_type::clock::now() - std::chrono::hours(24);
  install(fs::path(a.path()) / "triton", when);
  install(fs::path(b.path()) / "triton", when);
  Result<std::string> first = installed_identity(a.path() + "/triton");
  ASSERT_TRUE(first.ok()) << first.status().to_string();
  EXPECT_EQ(first->size(), 64u);
  EXPECT_EQ(*installed_identity(b.path() + "/triton"), *first);

  // Bytecode written on import does not change it.
  write(fs::path(a.path()) / "triton" / "compiler" / "__pycache__" / "compiler.cpython-312.pyc",
        "bytecode", fs::file_time_type::clock::now());
  EXPECT_EQ(*installed_identity(a.path() + "/triton"), *first);
}

TEST(InstalledIdentity, AnyFileChangedAddedOrTouchedChangesIt) {
  test::TempDir dir;
  const fs::path root = fs::path(dir.path()) / "triton";
  const auto when = fs::file_time_type::clock::now() - std::chrono::hours(24);
  install(root, when);
  const std::string before = *installed_identity(root.string());

  write(root / "_C" / "libtriton.so", std::string(4096, 'y'), when + std::chrono::nanoseconds(1));
  const std::string touched = *installed_identity(root.string());
  EXPECT_NE(touched, before);  // same size, an mtime one nanosecond later

  write(root / "_C" / "libtriton.so", std::string(4097, 'x'), when);
  EXPECT_NE(*installed_identity(root.string()), before);  // same mtime, another size

  install(root, when);
  EXPECT_EQ(*installed_identity(root.string()), before);
  write(root / "language" / "core.py", "", when);
  EXPECT_NE(*installed_identity(root.string()), before);
}

TEST(InstalledIdentity, AMissingDirectoryIsNotFound) {
  test::TempDir dir;
  Result<std::string> missing = installed_identity(dir.path() + "/absent");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), Status::Code::kNotFound);
}

}  // namespace
}  // namespace megacache::precompile
