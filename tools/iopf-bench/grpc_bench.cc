// iopf-bench grpc: events/s delivered through the gRPC API (iopf.v1.Router/Watch) to 1 and 4
// watchers while the router runs the core load, and the routing throughput with and without them,
// measured in one run. Watchers run in-process over a Unix socket (real gRPC, real HTTP/2).
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "bench_common.h"
#include "bench_modes.h"
#include "iopf/api/packed_events.h"
#include "iopf/api/router_service.h"
#include "iopf/api/server.h"
#include "iopf/clock.h"

namespace iopf::bench {
namespace {

class NullControl final : public api::DaemonControl {
 public:
  void fillInfo(v1::Info& info) const override { info.add_backends("memory"); }
  absl::StatusOr<std::vector<std::shared_ptr<Handler>>> resolveChain(DomainId,
                                                                     const std::vector<std::string>&) override {
    return absl::UnimplementedError("bench");
  }
};

struct WatchResult {
  double routing_groups_per_s = 0;
  double events_per_s = 0;       // all watchers together
  uint64_t events = 0;
  uint64_t lost = 0;             // reported by gap markers
  uint64_t messages = 0;
};

WatchResult runWithWatchers(LoadOptions o, unsigned watchers, uint32_t max_batch, double cpu_cores,
                            v1::EventEncoding encoding = v1::EVENT_ENCODING_MESSAGES) {
  NullControl control;
  std::unique_ptr<api::RouterService> service;
  std::unique_ptr<api::ApiServer> server;
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts(watchers);
  std::atomic<uint64_t> events{0}, lost{0}, messages{0};
  std::atomic<unsigned> connected{0};
  uint64_t e0 = 0, l0 = 0, m0 = 0;
  int64_t t0 = 0;
  WatchResult result;
  const std::string dir = "/tmp/iopf-bench-grpc-" + std::to_string(::getpid());
  const std::string addr = "unix:" + dir + "/iopfd.sock";

  o.on_ready = [&](Router& router) {
    if (watchers == 0) return;
    api::ServiceOptions so;
    so.recent_groups = 0;  // no history reader: measure the watchers alone
    so.watch_cpu_cores = cpu_cores;
    service = std::make_unique<api::RouterService>(router, control, so);
    api::ServerOptions sv;
    sv.listen = {addr};
    auto started = api::ApiServer::start(*service, sv);
    if (!started.ok()) throw std::runtime_error(std::string(started.status().message()));
    server = std::move(*started);
    for (unsigned w = 0; w < watchers; ++w) {
      contexts[w] = std::make_unique<grpc::ClientContext>();
      threads.emplace_back([&, w] {
        auto channel = grpc::CreateChannel(addr, grpc::experimental::LocalCredentials(UDS));
        auto stub = v1::Router::NewStub(channel);
        v1::WatchRequest req;
        req.set_max_batch(max_batch);
        req.set_allow_gap(true);
        req.set_encoding(encoding);
        auto reader = stub->Watch(contexts[w].get(), req);
        v1::WatchBatch batch;
        bool first = true;
        while (reader->Read(&batch)) {
          if (first) {
            connected.fetch_add(1);
            first = false;
          }
          // A packed client reads its events in place (packed::EventView); counting them is the cost.
          const uint64_t n = encoding == v1::EVENT_ENCODING_PACKED
                                 ? batch.packed_events().size() / api::packed::kRecordSize
                                 : static_cast<uint64_t>(batch.events_size());
          events.fetch_add(n, std::memory_order_relaxed);
          lost.fetch_add(batch.lost(), std::memory_order_relaxed);
          messages.fetch_add(1, std::memory_order_relaxed);
        }
        (void)reader->Finish();
      });
    }
    while (connected.load() < watchers) std::this_thread::yield();
  };
  o.on_window = [&](bool start) {
    const int64_t now = SteadyClock::read();
    if (start) {
      e0 = events.load();
      l0 = lost.load();
      m0 = messages.load();
      t0 = now;
      return;
    }
    const double secs = static_cast<double>(now - t0) / 1e9;
    result.events = events.load() - e0;
    result.lost = lost.load() - l0;
    result.messages = messages.load() - m0;
    result.events_per_s = static_cast<double>(result.events) / secs;
    // Stop the watchers and the server before the router goes away.
    for (auto& c : contexts) {
      if (c) c->TryCancel();
    }
    for (auto& t : threads) t.join();
    if (server) server->shutdown(std::chrono::milliseconds(500));
    server.reset();
    service.reset();
  };
  const LoadResult r = runRouterLoad(o, [] { return std::vector<std::shared_ptr<Handler>>{trivialHandler()}; });
  result.routing_groups_per_s = r.groups_per_s;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return result;
}

// The configurations one run measures, in the order of each round.
struct Config {
  const char* name;
  unsigned watchers;
  double cores;  // < 0: the daemon's budget (--watch-cpu-cores); 0: unpaced
  v1::EventEncoding encoding;
};
constexpr Config kConfigs[] = {
    {"watchers_0", 0, -1, v1::EVENT_ENCODING_MESSAGES},
    {"watchers_1", 1, -1, v1::EVENT_ENCODING_MESSAGES},
    {"watchers_4", 4, -1, v1::EVENT_ENCODING_MESSAGES},
    // Capacity: one watcher without pacing (what a watcher can take when CPU is no object).
    {"watchers_1_unpaced", 1, 0, v1::EVENT_ENCODING_MESSAGES},
    // EVENT_ENCODING_PACKED: 72-byte records instead of one message per event.
    {"watchers_1_packed", 1, -1, v1::EVENT_ENCODING_PACKED},
    {"watchers_4_packed", 4, -1, v1::EVENT_ENCODING_PACKED},
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

}  // namespace

int runGrpc(const Args& args) {
  LoadOptions o;
  o.seconds = args.number("seconds", 2.0);
  o.warmup = args.number("warmup", 0.5);
  o.devices = static_cast<uint32_t>(args.number("devices", 8));
  o.window_per_device = static_cast<uint32_t>(args.number("window", 256));
  o.shards = static_cast<unsigned>(args.number("shards", 1));
  const auto max_batch = static_cast<uint32_t>(args.number("max-batch", 1024));
  // The packed configurations read like the inspector's reader: packed records, 4,096 per message.
  const auto packed_max_batch = static_cast<uint32_t>(args.number("packed-max-batch", 4096));
  // Rounds: every configuration once per round, medians over the rounds. On a small shared machine
  // the routing rate drifts by tens of percent between seconds; interleaving keeps each
  // configuration next to its baseline and the median drops the odd disturbed window.
  const auto rounds = static_cast<unsigned>(std::max(1.0, args.number("rounds", 3)));

  // The daemon's default CPU budget of all watchers together (api::ServiceOptions::watch_cpu_cores).
  const double cores = args.number("watch-cpu-cores", api::ServiceOptions{}.watch_cpu_cores);
  constexpr size_t kN = std::size(kConfigs);
  std::vector<std::vector<WatchResult>> runs(kN);
  (void)args.flag("json");  // the output is JSON either way
  // --only NAME: that configuration alone (and the baseline), e.g. under a profiler.
  const std::string only = args.text("only", "");
  if (!only.empty() && std::none_of(std::begin(kConfigs), std::end(kConfigs),
                                    [&](const Config& c) { return only == c.name; })) {
    throw std::invalid_argument("--only " + only + ": not a configuration of this benchmark");
  }
  for (unsigned r = 0; r < rounds; ++r) {
    // Each round starts one configuration later: none is always the one after a teardown.
    for (size_t k = 0; k < kN; ++k) {
      const size_t c = (r + k) % kN;
      const Config& cfg = kConfigs[c];
      if (!only.empty() && c != 0 && only != cfg.name) {
        runs[c].push_back(WatchResult{});
        continue;
      }
      const uint32_t batch = cfg.encoding == v1::EVENT_ENCODING_PACKED ? packed_max_batch : max_batch;
      runs[c].push_back(runWithWatchers(o, cfg.watchers, batch, cfg.cores < 0 ? cores : cfg.cores, cfg.encoding));
    }
  }
  auto med = [&](size_t c, auto field) {
    std::vector<double> v;
    for (const WatchResult& w : runs[c]) v.push_back(static_cast<double>(field(w)));
    return median(v);
  };
  auto routing = [](const WatchResult& w) { return w.routing_groups_per_s; };
  // Slowdown per round against that round's baseline, then the median.
  auto slowdown = [&](size_t c) {
    std::vector<double> v;
    for (unsigned r = 0; r < rounds; ++r) v.push_back(1.0 - runs[c][r].routing_groups_per_s / runs[0][r].routing_groups_per_s);
    return median(v);
  };
  Json j;
  j.begin();
  j.field("mode", "grpc");
  j.field("seconds", o.seconds);
  j.field("rounds", static_cast<uint64_t>(rounds));
  j.field("max_batch", static_cast<uint64_t>(max_batch));
  j.field("packed_max_batch", static_cast<uint64_t>(packed_max_batch));
  j.field("watch_cpu_cores", cores);
  auto shown = [&](size_t c) { return only.empty() || c == 0 || only == kConfigs[c].name; };
  j.key("routing_groups_per_s").begin();
  for (size_t c = 0; c < kN; ++c) {
    if (shown(c)) j.field(kConfigs[c].name, med(c, routing));
  }
  j.end();
  j.key("slowdown").begin();  // median over rounds of 1 - routing(config) / routing(no watcher)
  for (size_t c = 1; c < kN; ++c) {
    if (shown(c)) j.field(kConfigs[c].name, slowdown(c));
  }
  j.end();
  for (size_t c = 1; c < kN; ++c) {
    if (!shown(c)) continue;
    const double events = med(c, [](const WatchResult& w) { return w.events_per_s; });
    j.key(kConfigs[c].name).begin();
    j.field("events_per_s", events);
    j.field("events_per_s_per_watcher", events / kConfigs[c].watchers);
    j.field("lost_in_gaps", med(c, [](const WatchResult& w) { return w.lost; }));
    j.field("messages", med(c, [](const WatchResult& w) { return w.messages; }));
    j.end();
  }
  j.end();
  std::cout << j.str() << std::endl;
  return 0;
}

}  // namespace iopf::bench
