#pragma once

#include <string>
#include <string_view>

namespace megacache::util {

// Strict UTF-8 as Python's bytes.decode("utf-8") accepts it: no overlong forms, no
// surrogates, nothing above U+10FFFF.
bool is_valid_utf8(std::string_view text);

// `text` for a message: control characters (NUL, newline, escape...) as \xNN, so that a hostile
// name can neither cut the message short nor forge a log line.
std::string printable(std::string_view text);

}  // namespace megacache::util
