// Built instead of redis_store.cpp when hiredis is not found at build time.
#include "store/backends.h"

namespace megacache::store {

Result<std::unique_ptr<Store>> open_redis_store(const std::string& url, const std::string&, int,
                                                int, const UrlOptions&) {
  return Status::InvalidArgument("'" + url +
                                 "': this megacache was built without hiredis; "
                                 "install libhiredis-dev and rebuild to use Redis stores");
}

}  // namespace megacache::store
