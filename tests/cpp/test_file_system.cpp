// The file layer beneath a root: links planted anywhere beneath it are refused, never followed,
// and nothing outside the root changes. Each case compares the outside directory before and
// after.
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>

#include "test_util.h"
#include "util/file_system.h"

namespace megacache {
namespace {

using util::FileSystem;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

struct Planted {
  test::TempDir root;
  test::TempDir outside;
  std::map<std::string, std::string> outside_before;

  Planted() {
    EXPECT_TRUE(test::write_file(outside.path() + "/victim", "outside bytes").ok());
    outside_before = test::read_tree(outside.path());
  }
  // A link at `path` beneath the root pointing to `target`.
  void link(const std::string& path, const std::string& target) {
    const std::filesystem::path at = root.path() + "/" + path;
    std::filesystem::create_directories(at.parent_path());
    std::filesystem::create_symlink(target, at);
  }
  bool outside_unchanged() const { return test::read_tree(outside.path()) == outside_before; }
};

TEST(FileSystem, RefusesALinkedDirectoryAtEveryDepth) {
  FileSystem& fs = FileSystem::real();
  for (const std::string linked : {"a", "a/b", "a/b/c"}) {
    Planted p;
    p.link(linked, p.outside.path());
    const Status made = fs.create_directories(p.root.path(), "a/b/c/d");
    EXPECT_EQ(made.code(), Status::Code::kInvalidArgument) << linked << ": " << made.to_string();
    EXPECT_TRUE(contains(made.message(), "symbolic link " + p.root.path() + "/" + linked))
        << made.message();
    EXPECT_FALSE(fs.write_atomic(p.root.path(), linked + "/new", "x").ok()) << linked;
    EXPECT_FALSE(fs.read_file(p.root.path(), linked + "/victim", 1 << 20).ok()) << linked;
    EXPECT_TRUE(fs.list_directory(p.root.path(), linked).empty()) << linked;
    EXPECT_FALSE(fs.file_info(p.root.path(), linked + "/victim")) << linked;
    EXPECT_TRUE(fs.remove_file(p.root.path(), linked + "/victim").code() ==
                Status::Code::kInvalidArgument);
    EXPECT_FALSE(fs.open_for_update(p.root.path(), linked + "/victim").ok()) << linked;
    EXPECT_TRUE(p.outside_unchanged()) << linked;
  }
}

TEST(FileSystem, RefusesALinkedFileButReplacesItAtomically) {
  FileSystem& fs = FileSystem::real();
  Planted p;
  const std::string victim = p.outside.path() + "/victim";
  p.link("file", victim);
  const Result<std::string> read = fs.read_file(p.root.path(), "file", 1 << 20);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument);
  EXPECT_FALSE(fs.file_equals(p.root.path(), "file", "outside bytes"));
  EXPECT_FALSE(fs.file_info(p.root.path(), "file"));
  EXPECT_FALSE(fs.open_for_update(p.root.path(), "file").ok());
  fs.touch(p.root.path(), "file");
  // A write replaces the link itself; a removal removes the link, never its target.
  ASSERT_TRUE(fs.write_atomic(p.root.path(), "file", "inside").ok());
  EXPECT_FALSE(std::filesystem::is_symlink(p.root.path() + "/file"));
  EXPECT_EQ(*fs.read_file(p.root.path(), "file", 1 << 20), "inside");
  p.link("other", victim);
  ASSERT_TRUE(fs.remove_file(p.root.path(), "other").ok());
  EXPECT_TRUE(p.outside_unchanged());
}

TEST(FileSystem, ADanglingLinkIsNotCreatedThrough) {
  FileSystem& fs = FileSystem::real();
  Planted p;
  p.link("lock", p.outside.path() + "/created");
  EXPECT_FALSE(fs.open_for_update(p.root.path(), "lock").ok());
  EXPECT_FALSE(std::filesystem::exists(p.outside.path() + "/created"));
}

TEST(FileSystem, OpenForUpdateRefusesAHardLinkedFile) {
  FileSystem& fs = FileSystem::real();
  Planted p;
  ASSERT_EQ(::link((p.outside.path() + "/victim").c_str(), (p.root.path() + "/stats").c_str()), 0);
  const Result<int> fd = fs.open_for_update(p.root.path(), "stats");
  ASSERT_FALSE(fd.ok());
  EXPECT_TRUE(contains(fd.status().message(), "hard link")) << fd.status().message();
  const Result<int> fresh = fs.open_for_update(p.root.path(), "fresh");
  ASSERT_TRUE(fresh.ok()) << fresh.status().to_string();
  ::close(*fresh);
}

TEST(FileSystem, RefusesPathsThatLeaveTheRootOrHoldNul) {
  FileSystem& fs = FileSystem::real();
  Planted p;
  for (const std::string& bad : std::vector<std::string>{
           "../victim", "a/../../victim", "./x", "a//b", "/etc/passwd", std::string("a\0b", 3)}) {
    EXPECT_EQ(fs.write_atomic(p.root.path(), bad, "x").code(), Status::Code::kInvalidArgument)
        << bad;
    EXPECT_EQ(fs.read_file(p.root.path(), bad, 1 << 20).status().code(),
              Status::Code::kInvalidArgument)
        << bad;
  }
  EXPECT_EQ(fs.create_directories(std::string("/tmp/x\0y", 8), "a").code(),
            Status::Code::kInvalidArgument);
  EXPECT_EQ(util::write_named_file(std::string("/tmp/o\0x", 8), "x").code(),
            Status::Code::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists("/tmp/o"));
  EXPECT_TRUE(p.outside_unchanged());
}

TEST(FileSystem, AFifoInPlaceOfAFileDoesNotBlock) {
  FileSystem& fs = FileSystem::real();
  test::TempDir root;
  ASSERT_EQ(::mkfifo((root.path() + "/ref").c_str(), 0600), 0);
  const Result<std::string> read = fs.read_file(root.path(), "ref", 1 << 20);
  ASSERT_FALSE(read.ok());
  EXPECT_TRUE(contains(read.status().message(), "not a regular file")) << read.status().message();
}

TEST(FileSystem, AFileLargerThanItsLimitIsRefusedUnread) {
  FileSystem& fs = FileSystem::real();
  test::TempDir root;
  // A sparse file claims 64 GiB and costs nothing on disk: reading it would cost 64 GiB.
  const std::string path = root.path() + "/object";
  ASSERT_TRUE(test::write_file(path, "x").ok());
  std::filesystem::resize_file(path, uint64_t{64} << 30);
  const Result<std::string> read = fs.read_file(root.path(), "object", 1 << 20);
  ASSERT_FALSE(read.ok());
  EXPECT_EQ(read.status().code(), Status::Code::kInvalidArgument);
  EXPECT_TRUE(contains(read.status().message(), "more than the 1048576"))
      << read.status().message();
  std::filesystem::resize_file(path, 1 << 20);
  EXPECT_EQ(fs.read_file(root.path(), "object", 1 << 20)->size(), size_t{1} << 20);
}

TEST(FileSystem, TheRootItselfIsFollowed) {
  // The root is configuration (a user's cache dir may well be a link); only what lies beneath
  // it is held to no links.
  FileSystem& fs = FileSystem::real();
  test::TempDir real_root;
  test::TempDir holder;
  const std::string root = holder.path() + "/cache";
  std::filesystem::create_symlink(real_root.path(), root);
  ASSERT_TRUE(fs.create_directories(root, "a/b").ok());
  ASSERT_TRUE(fs.write_atomic(root, "a/b/f", "bytes").ok());
  EXPECT_EQ(*test::read_file(real_root.path() + "/a/b/f"), "bytes");
}

}  // namespace
}  // namespace megacache
