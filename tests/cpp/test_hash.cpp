#include <gtest/gtest.h>

#include "util/hash.h"
#include "util/utf8.h"

namespace megacache::util {
namespace {

TEST(Hash, Crc32MatchesZlib) {
  EXPECT_EQ(crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(crc32("56789", crc32("1234")), 0xCBF43926u);
}

TEST(Hash, Sha256Hex) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

// Values from torch._inductor.codecache.sha256_hash.
TEST(Hash, TorchSha256NameMatchesTorch) {
  EXPECT_EQ(torch_sha256_name("hello megacache"),
            "tcqhuj7h6vedemz24y5taehwphdruqwua2y7zi2ebhnpzryavdx");
  EXPECT_EQ(torch_sha256_name(""), "4oymiquy7qobjgx36tejs35zeqt24qpemsnzgtfeswmrw6csxbk");
}

TEST(Hash, Base64RoundTrips) {
  for (std::string raw : {"", "f", "fo", "foo", "foob", "fooba", "foobar", "inductor"}) {
    const std::string encoded = base64_encode(raw);
    ASSERT_EQ(base64_decode(encoded), raw) << encoded;
  }
  EXPECT_EQ(base64_encode("inductor"), "aW5kdWN0b3I=");
}

TEST(Hash, Base64RejectsNonCanonical) {
  EXPECT_FALSE(base64_decode("aW5kdWN0b3I"));     // missing padding
  EXPECT_FALSE(base64_decode("aW5kdWN0b3J="));    // non-zero trailing bits
  EXPECT_FALSE(base64_decode("aW5k dWN0b3I="));   // white space
  EXPECT_FALSE(base64_decode("aW5kdWN0b3I=\n"));  // trailing newline
  EXPECT_FALSE(base64_decode("a$=="));
}

TEST(Utf8, AcceptsWhatPythonAccepts) {
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));          // truncated
}

}  // namespace
}  // namespace megacache::util
