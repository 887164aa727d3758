#include "util/hash.h"

#include <libdeflate.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <cstring>

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace megacache::util {

uint64_t xxh3_64(std::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

Xxh3Digest xxh3_128(std::string_view bytes) {
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits(bytes.data(), bytes.size()));
  Xxh3Digest digest;
  std::memcpy(digest.data(), canonical.digest, digest.size());
  return digest;
}

uint32_t crc32(std::string_view bytes, uint32_t previous) {
  return libdeflate_crc32(previous, bytes.data(), bytes.size());
}

Sha256Digest sha256(std::string_view bytes) {
  Sha256Digest digest;
  SHA256(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), digest.data());
  return digest;
}

std::string hex(std::string_view raw) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(raw.size() * 2);
  for (unsigned char c : raw) {
    out.push_back(kDigits[c >> 4]);
    out.push_back(kDigits[c & 0xf]);
  }
  return out;
}

std::string sha256_hex(std::string_view bytes) {
  const Sha256Digest digest = sha256(bytes);
  return hex(std::string_view(reinterpret_cast<const char*>(digest.data()), digest.size()));
}

std::string torch_sha256_name(std::string_view bytes) {
  // RFC 4648 base32 over the 32-byte digest gives 52 symbols (plus padding); torch keeps 51.
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
  constexpr size_t kNameLength = 51;
  const Sha256Digest digest = sha256(bytes);
  std::string out;
  out.reserve(kNameLength);
  uint32_t buffer = 0;
  int bits = 0;
  for (uint8_t byte : digest) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.size() < kNameLength) {
      out.push_back(kAlphabet[(buffer >> (bits - 5)) & 31]);
      bits -= 5;
    }
  }
  return out;
}

std::string base64_encode(std::string_view raw) {
  std::string out(4 * ((raw.size() + 2) / 3), '\0');
  const int written = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                      reinterpret_cast<const unsigned char*>(raw.data()),
                                      static_cast<int>(raw.size()));
  out.resize(static_cast<size_t>(written));
  return out;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0 || text.size() > (size_t{1} << 30)) {
    return std::nullopt;
  }
  std::string out(text.size() / 4 * 3, '\0');
  // EVP_DecodeBlock skips surrounding white space and keeps padding as zero bytes, so the
  // result is trimmed by the padding and then re-encoded to reject every non-canonical form.
  const int written = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                      reinterpret_cast<const unsigned char*>(text.data()),
                                      static_cast<int>(text.size()));
  if (written < 0) {
    return std::nullopt;
  }
  size_t padding = 0;
  if (!text.empty() && text.back() == '=') ++padding;
  if (text.size() > 1 && text[text.size() - 2] == '=') ++padding;
  out.resize(static_cast<size_t>(written) - padding);
  if (base64_encode(out) != text) {
    return std::nullopt;
  }
  return out;
}

}  // namespace megacache::util
