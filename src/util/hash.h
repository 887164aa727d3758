// Checksums, digests and text encodings that torch's formats use. Wrappers over libdeflate
// (crc32) and OpenSSL (sha256, base64) so that the rest of the code names what it means.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace megacache::util {

// XXH3: the bundle format's checksums (64-bit over header and index, 128-bit per payload).
uint64_t xxh3_64(std::string_view bytes);
using Xxh3Digest = std::array<uint8_t, 16>;  // big-endian high64 || low64, as XXH128_canonical
Xxh3Digest xxh3_128(std::string_view bytes);

// zlib-compatible CRC-32; pass the previous value to continue over more bytes.
uint32_t crc32(std::string_view bytes, uint32_t previous = 0);

using Sha256Digest = std::array<uint8_t, 32>;
Sha256Digest sha256(std::string_view bytes);
std::string hex(std::string_view raw);
std::string sha256_hex(std::string_view bytes);

// torch._inductor.codecache.sha256_hash: base32 of the sha256 digest, lower case, first
// 51 characters. torch names FX graph and AOTAutograd cache files with it.
std::string torch_sha256_name(std::string_view bytes);

// Standard alphabet, '=' padded, as Python's base64.b64encode.
std::string base64_encode(std::string_view raw);
// Only canonical padded base64 decodes; anything else is nullopt.
std::optional<std::string> base64_decode(std::string_view text);

}  // namespace megacache::util
