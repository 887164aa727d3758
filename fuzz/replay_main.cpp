// Without libFuzzer: feed every file in the given directories to the target, then a fixed
// stream of mutations of them (truncations, byte flips, crc repaired so the structure
// parser is reached). Exits non-zero only by crashing, as a fuzzer would report.
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "util/byte_reader.h"
#include "util/hash.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

void run(const std::string& bytes) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

std::string fix_crc(std::string bytes) {
  if (bytes.size() >= 4) {
    megacache::util::store_u32_be(bytes.data(),
                                  megacache::util::crc32(std::string_view(bytes).substr(4)));
  }
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> corpus;
  for (int i = 1; i < argc; ++i) {
    for (const auto& entry : std::filesystem::recursive_directory_iterator(argv[i])) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      std::stringstream buffer;
      buffer << in.rdbuf();
      corpus.push_back(buffer.str());
    }
  }
  std::mt19937_64 rng(42);
  size_t runs = 0;
  for (const std::string& input : corpus) {
    run(input);
    for (int round = 0; round < 300; ++round, runs += 2) {
      std::string mutated =
          input.substr(0, round % 3 == 0 ? rng() % (input.size() + 1) : input.size());
      if (!mutated.empty()) {
        const size_t window = std::min<size_t>(mutated.size(), 512);
        for (int flips = 1 + round % 4; flips > 0; --flips) {
          mutated[rng() % window] ^= static_cast<char>(1 + rng() % 255);
        }
      }
      run(mutated);
      run(fix_crc(mutated));
    }
  }
  std::cout << "replayed " << corpus.size() << " inputs and " << runs << " mutations\n";
  return 0;
}
