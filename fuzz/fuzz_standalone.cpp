// Fuzz target: standalone_compile binary headers on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "megacache/mega_cache.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  (void)megacache::mega_cache::sniff(bytes);
  megacache::Result<megacache::mega_cache::StandaloneArtifact> artifact =
      megacache::mega_cache::parse_standalone(bytes);
  if (artifact.ok()) (void)megacache::mega_cache::parse(artifact->payload);
  return 0;
}
