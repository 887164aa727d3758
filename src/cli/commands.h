// The megacache command line. main() only calls run_cli(); tests call it too.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace megacache::cli {

// Exit codes: 0 success, 1 invalid input (corrupt, hostile or unreadable), 2 usage error.
int run_cli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err);

}  // namespace megacache::cli
