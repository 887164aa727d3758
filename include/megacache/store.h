// Stores: where bundles live between processes and machines. One small interface; each
// backend is one file in src/store/, chosen by URL:
//   file:///path[?max_size=10G&max_value_bytes=4G]   the embedded default (MEGACACHE_DIR, else
//   ~/.cache/megacache)
//   redis://host:port/db[?ttl=s&connect_timeout_ms=&timeout_ms=&chunk_size=&max_value_bytes=]
//   URL,URL                       tiered: the first (local) in front of the rest, with backfill
// A remote that fails is a logged, counted miss: a store never fails or stalls a compile
// beyond its timeouts.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "megacache/status.h"

namespace megacache::store {

struct Stats {
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t puts = 0;
  uint64_t bytes_in = 0;   // read from the store
  uint64_t bytes_out = 0;  // written to the store
  uint64_t errors = 0;
  uint64_t timeouts = 0;
};

struct EntryInfo {
  std::string name;
  uint64_t size = 0;
  int64_t last_used_unix = 0;  // seconds; 0 where the backend does not know
};

// Held while alive; the destructor releases. A holder that dies releases by expiry (Redis)
// or by the kernel (file locks).
class Lock {
 public:
  virtual ~Lock() = default;
};

class Store {
 public:
  // Called during a get or put with bytes done and bytes in all, for progress bars.
  using Progress = std::function<void(uint64_t done, uint64_t total)>;

  virtual ~Store() = default;
  virtual const std::string& url() const = 0;
  void set_progress(Progress progress) { progress_ = std::move(progress); }

  // The value, or nullopt on a miss. For a remote, errors and timeouts are misses too.
  virtual std::optional<std::string> get(const std::string& name) = 0;
  // Atomic: readers see the old value or the whole new one. Errors: IOError (file), and for a
  // remote only when it is the sole backend.
  virtual Status put(const std::string& name, std::string_view value) = 0;
  virtual bool contains(const std::string& name) = 0;
  virtual Status remove(const std::string& name) = 0;
  virtual std::vector<EntryInfo> list() = 0;
  // Waits up to `wait` for the named lock; nullptr when the wait ran out. `ttl` bounds how
  // long a dead holder can keep it.
  virtual std::unique_ptr<Lock> lock(const std::string& name, std::chrono::milliseconds wait,
                                     std::chrono::milliseconds ttl) = 0;
  // Evicts least recently used entries until the store holds at most `max_bytes`.
  // Returns the bytes freed.
  virtual Result<uint64_t> gc(uint64_t max_bytes) = 0;

  // Counters of this store, persistent for file stores; `zero_stats` resets them.
  virtual Stats stats() = 0;
  virtual void zero_stats() = 0;
  // (url, counters) of every backend behind this store: one, or each tier.
  virtual std::vector<std::pair<std::string, Stats>> backend_stats() { return {{url(), stats()}}; }

 protected:
  void report_progress(uint64_t done, uint64_t total) const {
    if (progress_) progress_(done, total);
  }

 private:
  Progress progress_;
};

// Opens the store a URL names. Thread-safety: a Store may be used from one thread at a time.
// Errors: InvalidArgument for a malformed URL or an unsupported scheme (redis:// needs a
// build with hiredis).
Result<std::unique_ptr<Store>> open(const std::string& url);

// MEGACACHE_STORE, else file://$MEGACACHE_DIR, else file://~/.cache/megacache.
std::string default_url();

// Store names are 1-200 characters of [A-Za-z0-9._-] and never start with '.'.
Status check_name(std::string_view name);

// Single flight in two steps, for producers that cannot run inside a callback (a compile that
// happens on a function's first call). Either `value` is set, or this caller holds `claim`
// and is the one expected to produce: it publishes with put() and then drops the claim.
// Waiting for another holder is bounded by `wait`; when it runs out, `value` and `claim` are
// both empty and the caller produces without a claim rather than stall.
struct Claimed {
  std::optional<std::string> value;
  std::unique_ptr<Lock> claim;
};
Claimed get_or_claim(Store& store, const std::string& name, std::chrono::milliseconds wait);

// Single flight: the value under `name`, produced by exactly one caller among all processes
// sharing the store. A miss takes the lock, looks again, and only then calls `produce` and
// publishes its result. If the lock is not had within `wait`, produces anyway rather than
// stall, so `wait` should exceed a typical produce (compile) time. `produced` is set when this
// caller produced.
Result<std::string> get_or_produce(Store& store, const std::string& name,
                                   const std::function<Result<std::string>()>& produce,
                                   std::chrono::milliseconds wait, bool* produced = nullptr);

// "10G", "512M", "4096" -> bytes. Errors: InvalidArgument.
Result<uint64_t> parse_size(std::string_view text);

}  // namespace megacache::store
