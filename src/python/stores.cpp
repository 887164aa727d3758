// megacache._core: stores (chosen by URL) and single-flight claims.
#include "python/binding.h"

#include <chrono>
#include <memory>

#include <nanobind/stl/function.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "megacache/store.h"

namespace megacache::python {
namespace {

using namespace nb::literals;

// A single-flight claim; release() (or garbage collection) drops the lock.
struct PyClaim {
  std::shared_ptr<megacache::store::Lock> lock;
  void release() { lock.reset(); }
  bool held() const { return lock != nullptr; }
};

// A store handle for Python; the work is in megacache::store.
class PyStore {
 public:
  explicit PyStore(const std::string& url) {
    megacache::Result<std::unique_ptr<megacache::store::Store>> opened =
        megacache::store::open(url.empty() ? megacache::store::default_url() : url);
    if (!opened.ok()) raise(opened.status());
    store_ = std::move(opened).value();
  }
  std::string url() const { return store_->url(); }
  std::optional<nb::bytes> get(const std::string& name) {
    std::optional<std::string> value;
    {
      nb::gil_scoped_release release;
      value = store_->get(name);
    }
    if (!value) return std::nullopt;
    return nb::bytes(value->data(), value->size());
  }
  void put(const std::string& name, const nb::bytes& value) {
    megacache::Status status;
    {
      nb::gil_scoped_release release;
      status = store_->put(name, view(value));
    }
    if (!status.ok()) raise(status);
  }
  bool contains(const std::string& name) {
    nb::gil_scoped_release release;
    return store_->contains(name);
  }
  void remove(const std::string& name) {
    megacache::Status status = store_->remove(name);
    if (!status.ok()) raise(status);
  }
  std::vector<std::tuple<std::string, uint64_t, int64_t>> list() {
    std::vector<std::tuple<std::string, uint64_t, int64_t>> out;
    for (const auto& entry : store_->list())
      out.emplace_back(entry.name, entry.size, entry.last_used_unix);
    return out;
  }
  uint64_t gc(uint64_t max_bytes) {
    megacache::Result<uint64_t> freed = store_->gc(max_bytes);
    if (!freed.ok()) raise(freed.status());
    return *freed;
  }
  std::vector<std::pair<std::string, uint64_t>> stats() {
    const megacache::store::Stats s = store_->stats();
    return {{"hits", s.hits},         {"misses", s.misses},       {"puts", s.puts},
            {"bytes_in", s.bytes_in}, {"bytes_out", s.bytes_out}, {"errors", s.errors},
            {"timeouts", s.timeouts}};
  }
  void zero_stats() { store_->zero_stats(); }
  // (value, None) on a hit; (None, claim) when this caller should produce and publish;
  // (None, None) when waiting for another producer ran out.
  std::pair<std::optional<nb::bytes>, std::optional<PyClaim>> get_or_claim(const std::string& name,
                                                                           double wait_seconds) {
    megacache::store::Claimed claimed;
    {
      nb::gil_scoped_release release;
      claimed = megacache::store::get_or_claim(
          *store_, name, std::chrono::milliseconds(static_cast<int64_t>(wait_seconds * 1000)));
    }
    std::pair<std::optional<nb::bytes>, std::optional<PyClaim>> out;
    if (claimed.value) out.first = nb::bytes(claimed.value->data(), claimed.value->size());
    if (claimed.claim)
      out.second = PyClaim{std::shared_ptr<megacache::store::Lock>(std::move(claimed.claim))};
    return out;
  }

 private:
  std::unique_ptr<megacache::store::Store> store_;
};

}  // namespace

void init_stores(nb::module_& m) {
  m.def("default_store_url", &megacache::store::default_url,
        "MEGACACHE_STORE, else file://$MEGACACHE_DIR, else file://~/.cache/megacache.");
  nb::class_<PyStore>(m, "Store")
      .def(nb::init<const std::string&>(), "url"_a = "")
      .def_prop_ro("url", &PyStore::url)
      .def("get", &PyStore::get, "name"_a,
           "The value, or None on a miss (remote errors are misses).")
      .def("put", &PyStore::put, "name"_a, "value"_a)
      .def("contains", &PyStore::contains, "name"_a)
      .def("remove", &PyStore::remove, "name"_a)
      .def("gc", &PyStore::gc, "max_bytes"_a)
      .def("stats", &PyStore::stats)
      .def("zero_stats", &PyStore::zero_stats)
      .def("get_or_claim", &PyStore::get_or_claim, "name"_a, "wait_seconds"_a,
           "Single flight: (value, None) on a hit, (None, claim) when this caller must produce "
           "and put, (None, None) when waiting for another producer ran out.")
      // Last: in the generated stub, a `list[...]` annotation after this method would name the
      // method instead of the builtin.
      .def("list", &PyStore::list, "[(name, bytes, last_used_unix)]");
  nb::class_<PyClaim>(m, "Claim")
      .def("release", &PyClaim::release)
      .def_prop_ro("held", &PyClaim::held);
}

}  // namespace megacache::python
