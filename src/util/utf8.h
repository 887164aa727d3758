#pragma once

#include <string_view>

namespace megacache::util {

// Strict UTF-8 as Python's bytes.decode("utf-8") accepts it: no overlong forms, no
// surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view text);

}  // namespace megacache::util
