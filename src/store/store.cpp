// Store URLs, names, sizes and single flight; the backends live one per file beside this.
#include "megacache/store.h"

#include <cstdlib>

#include "store/backends.h"
#include "util/utf8.h"

namespace megacache::store {
namespace {

UrlOptions parse_query(std::string_view query) {
  UrlOptions options;
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    const size_t eq = pair.find('=');
    options.values.emplace_back(
        std::string(pair.substr(0, eq)),
        eq == std::string_view::npos ? "" : std::string(pair.substr(eq + 1)));
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
  }
  return options;
}

Result<std::unique_ptr<Store>> open_one(const std::string& url) {
  const size_t question = url.find('?');
  const std::string base = url.substr(0, question);
  const UrlOptions options =
      parse_query(question == std::string::npos ? std::string_view()
                                                : std::string_view(url).substr(question + 1));
  if (base.rfind("file://", 0) == 0) {
    return open_file_store(url, base.substr(7), options);
  }
  if (base.rfind("redis://", 0) == 0) {
    // redis://host[:port][/db]
    std::string rest = base.substr(8);
    int db = 0;
    if (const size_t slash = rest.find('/'); slash != std::string::npos) {
      const std::string text = rest.substr(slash + 1);
      if (!text.empty()) {
        if (text.find_first_not_of("0123456789") != std::string::npos || text.size() > 4) {
          return Status::InvalidArgument("redis URL '" + url + "': the database must be a number");
        }
        db = std::stoi(text);
      }
      rest = rest.substr(0, slash);
    }
    int port = 6379;
    if (const size_t colon = rest.rfind(':'); colon != std::string::npos) {
      const std::string text = rest.substr(colon + 1);
      if (text.empty() || text.size() > 5 ||
          text.find_first_not_of("0123456789") != std::string::npos) {
        return Status::InvalidArgument("redis URL '" + url + "': the port must be a number");
      }
      port = std::stoi(text);
      rest = rest.substr(0, colon);
    }
    if (rest.empty()) return Status::InvalidArgument("redis URL '" + url + "' has no host");
    return open_redis_store(url, rest, port, db, options);
  }
  return Status::InvalidArgument("unsupported store URL '" + url +
                                 "': use file:///path, redis://host:port/db, or a comma-separated "
                                 "list of them (local first)");
}

}  // namespace

Result<std::unique_ptr<Store>> open(const std::string& url) {
  // A NUL would cut the path short at the system call; a newline would forge a log line.
  for (size_t i = 0; i < url.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(url[i]);
    if (c < 0x20 || c == 0x7f) {
      return Status::InvalidArgument(
          "store URL '" + util::printable(url) + "' holds control character " + std::to_string(c) +
          " at offset " + std::to_string(i) +
          "; URLs and paths may not hold NUL or other control characters");
    }
  }
  std::vector<std::unique_ptr<Store>> stores;
  size_t start = 0;
  while (start <= url.size()) {
    const size_t comma = url.find(',', start);
    const std::string one =
        url.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    if (!one.empty()) {
      Result<std::unique_ptr<Store>> store = open_one(one);
      if (!store.ok()) return store.status();
      stores.push_back(std::move(store).value());
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (stores.empty()) return Status::InvalidArgument("empty store URL");
  if (stores.size() == 1) return std::move(stores.front());
  std::unique_ptr<Store> local = std::move(stores.front());
  stores.erase(stores.begin());
  return make_tiered(url, std::move(local), std::move(stores));
}

std::string default_url() {
  if (const char* url = std::getenv("MEGACACHE_STORE"); url && *url) return url;
  if (const char* dir = std::getenv("MEGACACHE_DIR"); dir && *dir)
    return std::string("file://") + dir;
  const char* home = std::getenv("HOME");
  return std::string("file://") + (home && *home ? home : "/tmp") + "/.cache/megacache";
}

Status check_name(std::string_view name) {
  if (name.empty() || name.size() > 200) {
    return Status::InvalidArgument("store name '" + std::string(name) +
                                   "' must be 1 to 200 characters");
  }
  if (name.front() == '.') {
    return Status::InvalidArgument("store name '" + std::string(name) + "' may not start with '.'");
  }
  for (char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) {
      return Status::InvalidArgument("store name '" + std::string(name) +
                                     "' may only use letters, digits, '.', '_' and '-'");
    }
  }
  return Status::OK();
}

Claimed get_or_claim(Store& store, const std::string& name, std::chrono::milliseconds wait) {
  Claimed result;
  result.value = store.get(name);
  if (result.value) return result;
  // Waiters give up after `wait` and produce themselves, so the lock need not outlive twice
  // that; a holder that dies releases it by then (file locks: at once).
  result.claim = store.lock(name, wait, wait * 2);
  if (result.claim) {
    result.value = store.get(name);
    if (result.value) result.claim.reset();
  }
  return result;
}

Result<std::string> get_or_produce(Store& store, const std::string& name,
                                   const std::function<Result<std::string>()>& produce,
                                   std::chrono::milliseconds wait, bool* produced) {
  if (produced) *produced = false;
  Claimed claimed = get_or_claim(store, name, wait);
  if (claimed.value) return std::move(*claimed.value);
  Result<std::string> value = produce();
  if (!value.ok()) return value;
  if (produced) *produced = true;
  (void)store.put(name, *value);  // a failed publish costs the others a compile, nothing more
  return value;
}

Result<uint64_t> parse_size(std::string_view text) {
  if (text.empty()) return Status::InvalidArgument("empty size");
  uint64_t multiplier = 1;
  switch (text.back()) {
    case 'k':
    case 'K':
      multiplier = uint64_t{1} << 10;
      break;
    case 'm':
    case 'M':
      multiplier = uint64_t{1} << 20;
      break;
    case 'g':
    case 'G':
      multiplier = uint64_t{1} << 30;
      break;
    case 't':
    case 'T':
      multiplier = uint64_t{1} << 40;
      break;
    default:
      break;
  }
  const std::string_view digits = multiplier == 1 ? text : text.substr(0, text.size() - 1);
  if (digits.empty() || digits.find_first_not_of("0123456789") != std::string_view::npos) {
    return Status::InvalidArgument("size '" + std::string(text) +
                                   "' is not a number with an optional K, M, G or T");
  }
  // Checked at every step: a size that wrapped around would pass every later bound as some
  // smaller size nobody asked for.
  const auto too_large = [&] {
    return Status::InvalidArgument("size '" + std::string(text) + "' is over " +
                                   std::to_string(UINT64_MAX) + " bytes");
  };
  uint64_t number = 0;
  for (char c : digits) {
    const uint64_t digit = static_cast<uint64_t>(c - '0');
    if (number > (UINT64_MAX - digit) / 10) return too_large();
    number = number * 10 + digit;
  }
  if (number > UINT64_MAX / multiplier) return too_large();
  return number * multiplier;
}

}  // namespace megacache::store
