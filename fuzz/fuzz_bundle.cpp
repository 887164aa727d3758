// Fuzz target: bundle parsing, trust checks and decoding on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "megacache/open.h"
#include "megacache/populate.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  megacache::Result<megacache::OpenedFile> opened = megacache::open_file(bytes, {});
  if (opened.ok() && opened->artifacts() != nullptr) {
    (void)megacache::plan_populate(*opened->artifacts());
  }
  return 0;
}
