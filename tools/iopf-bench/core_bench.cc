// iopf-bench core: the router in-process with the in-memory backend and a trivial handler, compared
// in the same run with what it must beat.
//
// - raw_echo: the backend answers each request itself, inline, with no router and no thread
//   hand-off: the limit of the backend side alone.
// - raw_echo_threaded: the backend hands requests to one worker thread through a lock-free SPSC
//   ring and the worker echoes them: the limit of any design that moves groups to a worker thread.
// - naive: what a VMM writes by hand: one mutex, a std::map of open groups, a condition variable
//   signalled per group, a worker that takes one group at a time.
// `ratio` is always the router's groups/s divided by the comparison's.
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iostream>
#include <map>
#include <mutex>
#include <span>
#include <thread>

#include "bench_common.h"
#include "bench_modes.h"
#include "iopf/clock.h"

namespace iopf::bench {
namespace {

struct alignas(64) Credit {
  std::atomic<uint64_t> done{0};
};

void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

Response echo(const PageRequest& r) {
  Response out;
  out.device = r.device;
  out.backend_handle = r.device;
  out.grpid = r.grpid;
  out.pasid = r.pasid;
  out.cookie = r.cookie;
  out.code = ResponseCode::kSuccess;
  out.origin = Origin::kHandler;
  out.request_count = 1;
  return out;
}

// The same closed loop as runRouterLoad's producer (window per device, batches), driving any
// `submit(span<const PageRequest>)` whose responses bump credits[device].done. Returns groups/s.
template <typename Submit>
double closedLoop(const LoadOptions& o, Credit* credits, Submit&& submit) {
  std::vector<uint64_t> issued(o.devices + 1, 0);
  const uint32_t groups_per_batch = o.batch / o.group_size;
  std::vector<PageRequest> batch(static_cast<size_t>(groups_per_batch) * o.group_size);
  const int64_t start = SteadyClock::read();
  const int64_t measure_from = start + static_cast<int64_t>(o.warmup * 1e9);
  const int64_t stop_at = measure_from + static_cast<int64_t>(o.seconds * 1e9);
  auto totalDone = [&] {
    uint64_t n = 0;
    for (uint32_t d = 1; d <= o.devices; ++d) n += credits[d].done.load(std::memory_order_acquire);
    return n;
  };
  bool measuring = false;
  uint64_t done0 = 0;
  int64_t t0 = 0;
  int64_t now = start;
  for (uint64_t iteration = 0;; ++iteration) {
    // The clock is read every 16 passes: it would otherwise cost the producer more than routing.
    if ((iteration & 15) == 0) now = SteadyClock::read();
    if (!measuring && now >= measure_from) {
      measuring = true;
      t0 = now;
      done0 = totalDone();
    }
    if (now >= stop_at) break;
    bool progressed = false;
    for (uint32_t d = 1; d <= o.devices; ++d) {
      const uint64_t inflight = issued[d] - credits[d].done.load(std::memory_order_acquire);
      const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(o.window_per_device - inflight, groups_per_batch));
      if (n == 0) continue;
      size_t k = 0;
      for (uint32_t g = 0; g < n; ++g) {
        for (uint32_t r = 0; r < o.group_size; ++r) {
          PageRequest& req = batch[k++];
          req.device = d;
          req.grpid = static_cast<uint32_t>((issued[d] + g) % 512);
          req.addr = (issued[d] + g) << 12 | r;
          req.perm = perm::kRead;
          req.last = r + 1 == o.group_size;
        }
      }
      submit(std::span<const PageRequest>(batch.data(), k));
      issued[d] += n;
      progressed = true;
    }
    if (!progressed) cpuRelax();
  }
  const int64_t t1 = SteadyClock::read();
  return static_cast<double>(totalDone() - done0) / (static_cast<double>(t1 - t0) / 1e9);
}

double runRawEcho(const LoadOptions& o) {
  auto credits = std::make_unique<Credit[]>(o.devices + 1);
  std::vector<Response> out(o.batch);
  return closedLoop(o, credits.get(), [&](std::span<const PageRequest> reqs) {
    size_t n = 0;
    for (const PageRequest& r : reqs) {
      if (r.last) out[n++] = echo(r);
    }
    for (size_t i = 0; i < n; ++i) credits[out[i].device].done.fetch_add(1, std::memory_order_release);
  });
}

// Single-producer single-consumer ring of requests.
class SpscRing {
 public:
  explicit SpscRing(size_t capacity) : slots_(capacity), mask_(capacity - 1) {}
  // Pushes all of `reqs`, spinning while full.
  void push(std::span<const PageRequest> reqs) {
    size_t i = 0;
    while (i < reqs.size()) {
      const uint64_t head = head_.load(std::memory_order_relaxed);
      const uint64_t tail = tail_.load(std::memory_order_acquire);
      const size_t room = slots_.size() - static_cast<size_t>(head - tail);
      const size_t n = std::min(room, reqs.size() - i);
      for (size_t k = 0; k < n; ++k) slots_[(head + k) & mask_] = reqs[i + k];
      head_.store(head + n, std::memory_order_release);
      i += n;
      if (n == 0) cpuRelax();
    }
  }
  size_t pop(std::span<PageRequest> out) {
    const uint64_t tail = tail_.load(std::memory_order_relaxed);
    const uint64_t head = head_.load(std::memory_order_acquire);
    const size_t n = std::min(out.size(), static_cast<size_t>(head - tail));
    for (size_t k = 0; k < n; ++k) out[k] = slots_[(tail + k) & mask_];
    tail_.store(tail + n, std::memory_order_release);
    return n;
  }

 private:
  std::vector<PageRequest> slots_;
  size_t mask_;
  alignas(64) std::atomic<uint64_t> head_{0};
  alignas(64) std::atomic<uint64_t> tail_{0};
};

double runRawEchoThreaded(const LoadOptions& o) {
  auto credits = std::make_unique<Credit[]>(o.devices + 1);
  SpscRing ring(8192);
  std::atomic<bool> stop{false};
  std::thread worker([&] {
    std::vector<PageRequest> in(256);
    std::vector<Response> out(256);
    while (!stop.load(std::memory_order_relaxed)) {
      const size_t n = ring.pop(in);
      if (n == 0) {
        cpuRelax();
        continue;
      }
      size_t m = 0;
      for (size_t i = 0; i < n; ++i) {
        if (in[i].last) out[m++] = echo(in[i]);
      }
      for (size_t i = 0; i < m; ++i) credits[out[i].device].done.fetch_add(1, std::memory_order_release);
    }
  });
  const double rate = closedLoop(o, credits.get(), [&](std::span<const PageRequest> reqs) { ring.push(reqs); });
  stop = true;
  worker.join();
  return rate;
}

double runNaive(const LoadOptions& o) {
  auto credits = std::make_unique<Credit[]>(o.devices + 1);
  struct NaiveGroup {
    std::vector<PageRequest> requests;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::map<uint64_t, NaiveGroup> open;
  std::deque<uint64_t> queue;
  std::map<std::pair<DeviceId, uint32_t>, std::vector<PageRequest>> partial;
  uint64_t next_id = 1;
  bool stop = false;
  auto handler = trivialHandler();
  std::thread worker([&] {
    for (;;) {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return stop || !queue.empty(); });
      if (stop) return;
      const uint64_t id = queue.front();
      queue.pop_front();
      NaiveGroup& g = open.at(id);
      GroupView view;
      view.id = id;
      view.device = g.requests.back().device;
      view.grpid = g.requests.back().grpid;
      view.requests = g.requests;
      lk.unlock();
      const Verdict v = handler->handle(view, CompletionHandle());
      lk.lock();
      Response r = echo(open.at(id).requests.back());
      r.code = v.code;
      open.erase(id);
      lk.unlock();
      credits[r.device].done.fetch_add(1, std::memory_order_release);
    }
  });
  const double rate = closedLoop(o, credits.get(), [&](std::span<const PageRequest> reqs) {
    for (const PageRequest& r : reqs) {
      std::unique_lock lk(mu);
      auto& buf = partial[{r.device, r.grpid}];
      buf.push_back(r);
      if (!r.last) continue;
      const uint64_t id = next_id++;
      open.emplace(id, NaiveGroup{std::move(buf)});
      partial.erase({r.device, r.grpid});
      queue.push_back(id);
      lk.unlock();
      cv.notify_one();
    }
  });
  {
    std::lock_guard lk(mu);
    stop = true;
  }
  cv.notify_one();
  worker.join();
  return rate;
}

void compareEntry(Json& j, const std::string& name, double router_rate, double other_rate) {
  j.key(name).begin();
  j.field("groups_per_s", other_rate);
  j.field("ratio", other_rate > 0 ? router_rate / other_rate : 0.0);
  j.end();
}

}  // namespace

int runCore(const Args& args) {
  LoadOptions o;
  o.seconds = args.number("seconds", 2.0);
  o.warmup = args.number("warmup", 0.5);
  o.devices = static_cast<uint32_t>(args.number("devices", 8));
  o.window_per_device = static_cast<uint32_t>(args.number("window", 256));
  o.batch = static_cast<uint32_t>(args.number("batch", 64));
  o.group_size = static_cast<uint32_t>(args.number("group-size", 1));
  o.shards = static_cast<unsigned>(args.number("shards", 1));
  const bool json = args.flag("json");
  const std::string only = args.text("only", "");  // run just the router (for profiling)

  const LoadResult router = runRouterLoad(o, [] { return std::vector<std::shared_ptr<Handler>>{trivialHandler()}; });
  const uint64_t rss = rssBytes();
  Json j;
  j.begin();
  j.field("mode", "core");
  j.field("shards", static_cast<uint64_t>(o.shards));
  j.field("devices", static_cast<uint64_t>(o.devices));
  j.field("window_per_device", static_cast<uint64_t>(o.window_per_device));
  j.field("batch", static_cast<uint64_t>(o.batch));
  j.field("group_size", static_cast<uint64_t>(o.group_size));
  j.field("groups", router.groups);
  j.field("seconds", router.seconds);
  j.field("groups_per_s", router.groups_per_s);
  j.field("requests_per_s", router.requests_per_s);
  latencyJson(j, "latency_ns", router.latency);
  j.field("allocs_per_group", router.allocs_per_group);
  j.field("rss_bytes", rss);
  j.key("compare").begin();
  if (only.empty()) {
    compareEntry(j, "raw_echo", router.groups_per_s, runRawEcho(o));
    compareEntry(j, "raw_echo_threaded", router.groups_per_s, runRawEchoThreaded(o));
    compareEntry(j, "naive", router.groups_per_s, runNaive(o));
    for (const auto& [name, fn] : coreComparisons()) {
      j.key(name);
      fn(o, router, j);
    }
  }
  j.end();
  j.end();
  if (json) {
    std::cout << j.str() << std::endl;
  } else {
    std::printf("router: %.0f groups/s (%.0f requests/s), p50 %" PRIu64 " ns, p99 %" PRIu64
                " ns, allocs/group %.4f, rss %.1f MiB\n%s\n",
                router.groups_per_s, router.requests_per_s, router.latency.percentile(0.5),
                router.latency.percentile(0.99), router.allocs_per_group,
                static_cast<double>(rss) / (1 << 20), j.str().c_str());
  }
  return 0;
}

}  // namespace iopf::bench
