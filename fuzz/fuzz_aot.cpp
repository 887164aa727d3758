// Fuzz target: torch.compiler.precompile pairs (bundle container, manifest, both halves) on
// arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "megacache/aot.h"
#include "megacache/bundle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  megacache::Result<megacache::bundle::Bundle> bundle = megacache::bundle::parse(bytes);
  if (!bundle.ok() || !megacache::aot::is_pair(*bundle)) return 0;
  megacache::Result<megacache::aot::Pair> pair = megacache::aot::read_pair(*bundle);
  if (pair.ok()) (void)megacache::aot::describe(*pair);
  return 0;
}
