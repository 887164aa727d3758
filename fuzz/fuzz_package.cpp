// Fuzz target: precompile package reading (bundle container, manifest, artifacts) and the
// package checks on arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "megacache/bundle.h"
#include "megacache/precompile.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  megacache::Result<megacache::bundle::Bundle> bundle = megacache::bundle::parse(bytes);
  if (!bundle.ok() || !megacache::precompile::is_package(*bundle)) return 0;
  megacache::Result<megacache::precompile::Package> package =
      megacache::precompile::read_package(*bundle);
  if (package.ok()) {
    (void)megacache::precompile::check_package(*package, {});
    (void)megacache::precompile::describe(*package);
  }
  return 0;
}
