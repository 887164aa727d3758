// torch.compiler.precompile's ahead-of-time pair held as one bundle: torch 2.14's
// `precompile(fn, ...)` returns (python_code, cache); 2.15's `capture(fn, artifact_path=,
// cache_path=)` writes them as two files. The bundle keeps both verbatim, with a manifest that
// binds them, so they are checksummed, signed and fingerprinted as one file and checked before
// torch executes a byte of the code. Grammar: docs/aot-format.md; codec: src/format/aot.cpp.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "megacache/bundle.h"
#include "megacache/status.h"

namespace megacache::aot {

struct Pair {
  // Which torch API wrote it: "torch.compiler.precompile" (2.14, in memory) or
  // "torch.compiler.precompile.capture" (2.15, two files).
  std::string api;
  std::string python_code;  // torch's executable artifact, UTF-8, byte for byte
  std::string cache;        // torch's cache, byte for byte (a torch.save envelope)
  // What the adapter read of the cache's envelope when the pair was saved, as text: format,
  // version, backend, code_hash (and tracer in 2.15). code_hash must be the sha256 of
  // python_code: torch's own binding of the two halves.
  std::vector<std::pair<std::string, std::string>> cache_fields;
  bundle::Fingerprint fingerprint;  // filled by read_pair from the bundle
};

// Whether `bundle` holds a pair (its first artifact is the pair's manifest).
bool is_pair(const bundle::Bundle& bundle);

// Decodes and checks the pair: the manifest's fields, the sha256 of each half against it,
// the code as UTF-8, code_hash against the code, nothing else in the bundle. The caller has
// checked trust (open_file does). Errors: Corruption(offset, reason) for damaged bytes,
// InvalidArgument naming the rule a well-formed but inconsistent pair breaks. Thread-safe.
Result<Pair> read_pair(const bundle::Bundle& bundle);

// The bundle of `pair` (its fingerprint field is ignored; `fingerprint` is written).
// Errors: InvalidArgument when the pair breaks a rule read_pair checks, so nothing written
// can fail to read. Thread-safe.
Result<std::string> write_pair(const Pair& pair, const bundle::Fingerprint& fingerprint,
                               const bundle::WriteOptions& options = {});

// The manifest's facts as JSON text, for `megacache inspect`.
std::string describe(const Pair& pair);

}  // namespace megacache::aot
