#include <iostream>

#include "cli/commands.h"

int main(int argc, char** argv) {
  return megacache::cli::run_cli(std::vector<std::string>(argv + 1, argv + argc), std::cout,
                                 std::cerr);
}
