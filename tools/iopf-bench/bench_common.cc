#include "bench_common.h"

#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <span>
#include <stdexcept>

#include "iopf/clock.h"
#include "iopf/in_memory_backend.h"

namespace iopf::bench {

extern std::atomic<uint64_t> g_allocations;

// ---------------------------------------------------------------------------------------------
// Args

Args::Args(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
    a = a.substr(2);
    if (const auto eq = a.find('='); eq != std::string::npos) {
      values_[a.substr(0, eq)] = a.substr(eq + 1);
    } else if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
      values_[a] = argv[++i];
    } else {
      values_[a] = std::nullopt;
    }
  }
}

bool Args::flag(const std::string& name) const {
  used_[name] = true;
  return values_.count(name) != 0;
}

double Args::number(const std::string& name, double fallback) const {
  used_[name] = true;
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  if (!it->second) throw std::invalid_argument("--" + name + " needs a value");
  char* end = nullptr;
  const double v = std::strtod(it->second->c_str(), &end);
  if (end == it->second->c_str() || *end != '\0' || !std::isfinite(v)) {
    throw std::invalid_argument("--" + name + ": '" + *it->second + "' is not a number");
  }
  return v;
}

std::string Args::text(const std::string& name, const std::string& fallback) const {
  used_[name] = true;
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  if (!it->second) throw std::invalid_argument("--" + name + " needs a value");
  return *it->second;
}

std::vector<std::string> Args::unused() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : values_) {
    if (!used_.count(k)) out.push_back(k);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Json

void Json::comma() {
  if (!first_.back()) out_ += ',';
  first_.back() = false;
}
Json& Json::begin() {
  if (!out_.empty() && out_.back() != ':') comma();
  out_ += '{';
  first_.push_back(true);
  return *this;
}
Json& Json::end() {
  out_ += '}';
  first_.pop_back();
  return *this;
}
Json& Json::key(const std::string& k) {
  comma();
  out_ += '"' + k + "\":";
  return *this;
}
Json& Json::value(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  out_ += buf;
  return *this;
}
Json& Json::value(uint64_t v) {
  out_ += std::to_string(v);
  return *this;
}
Json& Json::value(int64_t v) {
  out_ += std::to_string(v);
  return *this;
}
Json& Json::value(bool v) {
  out_ += v ? "true" : "false";
  return *this;
}
Json& Json::value(const std::string& v) {
  out_ += '"';
  for (char c : v) {
    if (c == '"' || c == '\\') {
      out_ += '\\';
      out_ += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out_ += buf;
    } else {
      out_ += c;
    }
  }
  out_ += '"';
  return *this;
}

void latencyJson(Json& j, const std::string& key, const LatencyHistogram::Snapshot& s) {
  j.key(key).begin();
  j.field("p50", s.percentile(0.50));
  j.field("p90", s.percentile(0.90));
  j.field("p99", s.percentile(0.99));
  j.field("p999", s.percentile(0.999));
  j.field("max", s.max);
  j.end();
}

// ---------------------------------------------------------------------------------------------
// process figures

uint64_t allocationCount() { return g_allocations.load(std::memory_order_relaxed); }

uint64_t rssBytes() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
}

LatencyHistogram::Snapshot histogramDiff(const LatencyHistogram::Snapshot& later,
                                         const LatencyHistogram::Snapshot& earlier) {
  LatencyHistogram::Snapshot d;
  if (later.buckets.empty()) return d;
  d.buckets = later.buckets;
  if (!earlier.buckets.empty()) {
    for (size_t i = 0; i < d.buckets.size(); ++i) d.buckets[i] -= earlier.buckets[i];
  }
  d.count = later.count - earlier.count;
  d.sum = later.sum - earlier.sum;
  for (int i = LatencyHistogram::kBuckets - 1; i >= 0; --i) {
    if (d.buckets[i] != 0) {
      d.max = std::min(later.max, LatencyHistogram::bucketUpperBound(i));
      break;
    }
  }
  return d;
}

// ---------------------------------------------------------------------------------------------
// trivial handler

namespace {
class TrivialHandler final : public Handler {
 public:
  std::string_view name() const override { return "trivial"; }
  Verdict handle(const GroupView&, const CompletionHandle&) override {
    return Verdict::respond(ResponseCode::kSuccess);
  }
};
}  // namespace

std::shared_ptr<Handler> trivialHandler() { return std::make_shared<TrivialHandler>(); }

// ---------------------------------------------------------------------------------------------
// router load

LoadResult runRouterLoad(const LoadOptions& o, const ChainFactory& chain) {
  if (o.devices == 0 || o.devices > 1024) throw std::invalid_argument("devices must be 1..1024");
  if (o.window_per_device == 0 || o.window_per_device > 512) {
    throw std::invalid_argument("window per device must be 1..512 (the PRGI space)");
  }
  if (o.group_size == 0 || o.group_size > o.batch) throw std::invalid_argument("group size must be 1..batch");

  struct alignas(64) Credit {
    std::atomic<uint64_t> done{0};
  };
  auto credits = std::make_unique<Credit[]>(o.devices + 1);
  InMemoryBackend backend;
  backend.setResponseCallback([&](std::span<const Response> rs) {
    // One atomic add per device per batch, not per response.
    DeviceId dev = 0;
    uint64_t run = 0;
    for (const Response& r : rs) {
      if (r.device != dev) {
        if (run != 0) credits[dev].done.fetch_add(run, std::memory_order_release);
        dev = r.device;
        run = 0;
      }
      ++run;
    }
    if (run != 0) credits[dev].done.fetch_add(run, std::memory_order_release);
  });

  RouterOptions ro;
  ro.shards = o.shards;
  Router router(ro);
  if (!router.addBackend(backend).ok()) throw std::runtime_error("addBackend failed");
  std::vector<DomainId> domains;
  for (unsigned s = 0; s < o.shards; ++s) {
    DomainSpec d;
    d.name = "bench" + std::to_string(s);
    d.shard = static_cast<int32_t>(s);
    domains.push_back(*router.addDomain(d));
    if (!router.setChain(domains.back(), chain()).ok()) throw std::runtime_error("setChain failed");
  }
  std::vector<DeviceId> devs;
  for (uint32_t i = 0; i < o.devices; ++i) {
    DeviceSpec spec;
    spec.name = "bench" + std::to_string(i);
    spec.backend_handle = i;
    spec.rid = static_cast<uint16_t>(i);
    spec.pri_allocation = o.window_per_device * o.group_size;
    const DeviceId id = *backend.sink().addDevice(spec);
    if (id > o.devices) throw std::runtime_error("unexpected device id");
    devs.push_back(id);
    if (!router.attach(id, std::nullopt, domains[i % domains.size()]).ok()) {
      throw std::runtime_error("attach failed");
    }
  }

  if (o.on_ready) o.on_ready(router);
  std::vector<uint64_t> issued(o.devices + 1, 0);
  const uint32_t groups_per_batch = o.batch / o.group_size;
  std::vector<PageRequest> batch(static_cast<size_t>(groups_per_batch) * o.group_size);
  const int64_t start = SteadyClock::read();
  const int64_t measure_from = start + static_cast<int64_t>(o.warmup * 1e9);
  const int64_t stop_at = measure_from + static_cast<int64_t>(o.seconds * 1e9);
  bool measuring = false;
  uint64_t done_at_start = 0, allocs_at_start = 0;
  int64_t t0 = 0;
  LatencyHistogram::Snapshot lat0;
  auto totalDone = [&] {
    uint64_t n = 0;
    for (DeviceId d : devs) n += credits[d].done.load(std::memory_order_acquire);
    return n;
  };
  int64_t now = start;
  for (uint64_t iteration = 0;; ++iteration) {
    // The clock is read every 16 passes: it would otherwise cost the producer more than routing.
    if ((iteration & 15) == 0) now = SteadyClock::read();
    if (!measuring && now >= measure_from) {
      measuring = true;
      t0 = now;
      lat0 = router.stats().latency;
      done_at_start = totalDone();
      allocs_at_start = allocationCount();
      if (o.on_window) o.on_window(true);
    }
    if (now >= stop_at) break;
    bool progressed = false;
    for (DeviceId d : devs) {
      const uint64_t inflight = issued[d] - credits[d].done.load(std::memory_order_acquire);
      const uint64_t room = o.window_per_device - inflight;
      const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(room, groups_per_batch));
      if (n == 0) continue;
      size_t k = 0;
      for (uint32_t g = 0; g < n; ++g) {
        const uint32_t prgi = static_cast<uint32_t>((issued[d] + g) % 512);
        for (uint32_t r = 0; r < o.group_size; ++r) {
          PageRequest& req = batch[k++];
          req.device = d;
          req.grpid = prgi;
          req.addr = (issued[d] + g) << 12 | r;
          req.perm = perm::kRead;
          req.last = r + 1 == o.group_size;
        }
      }
      backend.sink().deliver(std::span<const PageRequest>(batch.data(), k));
      issued[d] += n;
      progressed = true;
    }
    if (!progressed) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
  }
  const int64_t t1 = SteadyClock::read();
  const uint64_t done = totalDone() - done_at_start;
  const uint64_t allocs = allocationCount() - allocs_at_start;
  if (o.on_window) o.on_window(false);
  LoadResult r;
  r.latency = histogramDiff(router.stats().latency, lat0);
  router.shutdown();
  r.groups = done;
  r.requests = done * o.group_size;
  r.seconds = static_cast<double>(t1 - t0) / 1e9;
  r.groups_per_s = static_cast<double>(done) / r.seconds;
  r.requests_per_s = static_cast<double>(r.requests) / r.seconds;
  r.allocs_per_group = done == 0 ? 0 : static_cast<double>(allocs) / static_cast<double>(done);
  return r;
}

// ---------------------------------------------------------------------------------------------
// comparison registry

namespace {
std::vector<std::pair<std::string, CoreComparison>>& registry() {
  static std::vector<std::pair<std::string, CoreComparison>> r;
  return r;
}
}  // namespace

CoreComparisonRegistrar::CoreComparisonRegistrar(const std::string& name, CoreComparison fn) {
  registry().emplace_back(name, std::move(fn));
}

const std::vector<std::pair<std::string, CoreComparison>>& coreComparisons() { return registry(); }

}  // namespace iopf::bench
