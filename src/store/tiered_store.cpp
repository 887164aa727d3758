// Tiered store: a local store in front of remotes. Reads try local first and copy a remote
// hit into the local store (backfill); writes go everywhere; the lock is the last remote's,
// so single flight spans the fleet.
#include "store/backends.h"

namespace megacache::store {
namespace {

class TieredStore final : public Store {
 public:
  TieredStore(std::string url, std::unique_ptr<Store> local,
              std::vector<std::unique_ptr<Store>> remotes)
      : url_(std::move(url)), local_(std::move(local)), remotes_(std::move(remotes)) {}

  const std::string& url() const override { return url_; }

  std::optional<std::string> get(const std::string& name) override {
    if (std::optional<std::string> value = local_->get(name)) return value;
    for (const std::unique_ptr<Store>& remote : remotes_) {
      if (std::optional<std::string> value = remote->get(name)) {
        (void)local_->put(name, *value);
        return value;
      }
    }
    return std::nullopt;
  }

  Status put(const std::string& name, std::string_view value) override {
    Status status = local_->put(name, value);
    for (const std::unique_ptr<Store>& remote : remotes_) (void)remote->put(name, value);
    return status;
  }

  bool contains(const std::string& name) override {
    if (local_->contains(name)) return true;
    for (const std::unique_ptr<Store>& remote : remotes_) {
      if (remote->contains(name)) return true;
    }
    return false;
  }

  Status remove(const std::string& name) override {
    Status status = local_->remove(name);
    for (const std::unique_ptr<Store>& remote : remotes_) (void)remote->remove(name);
    return status;
  }

  std::vector<EntryInfo> list() override { return local_->list(); }

  std::unique_ptr<Lock> lock(const std::string& name, std::chrono::milliseconds wait,
                             std::chrono::milliseconds ttl) override {
    return remotes_.back()->lock(name, wait, ttl);
  }

  Result<uint64_t> gc(uint64_t max_bytes) override { return local_->gc(max_bytes); }
  Stats stats() override { return local_->stats(); }
  void zero_stats() override {
    local_->zero_stats();
    for (const std::unique_ptr<Store>& remote : remotes_) remote->zero_stats();
  }
  std::vector<std::pair<std::string, Stats>> backend_stats() override {
    std::vector<std::pair<std::string, Stats>> out = local_->backend_stats();
    for (const std::unique_ptr<Store>& remote : remotes_) {
      for (auto& entry : remote->backend_stats()) out.push_back(std::move(entry));
    }
    return out;
  }

 private:
  std::string url_;
  std::unique_ptr<Store> local_;
  std::vector<std::unique_ptr<Store>> remotes_;
};

}  // namespace

std::unique_ptr<Store> make_tiered(const std::string& url, std::unique_ptr<Store> local,
                                   std::vector<std::unique_ptr<Store>> remotes) {
  return std::make_unique<TieredStore>(url, std::move(local), std::move(remotes));
}

}  // namespace megacache::store
