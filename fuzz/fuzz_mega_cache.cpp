// Fuzz target: Mega-Cache parsing and populate planning on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "megacache/mega_cache.h"
#include "megacache/populate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  megacache::Result<megacache::mega_cache::MegaCache> cache = megacache::mega_cache::parse(bytes);
  if (cache.ok()) {
    (void)megacache::plan_populate(*cache);
    (void)megacache::mega_cache::write(cache->loaded_artifacts());
  }
  return 0;
}
