// iopf-bench grpc: events/s delivered through the gRPC API (iopf.v1.Router/Watch) to 1 and 4
// watchers while the router runs the core load, and the routing throughput with and without them,
// measured in one run. Watchers run in-process over a Unix socket (real gRPC, real HTTP/2).
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>

#include "bench_common.h"
#include "bench_modes.h"
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

WatchResult runWithWatchers(LoadOptions o, unsigned watchers, uint32_t max_batch, double cpu_cores) {
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
        auto reader = stub->Watch(contexts[w].get(), req);
        v1::WatchBatch batch;
        bool first = true;
        while (reader->Read(&batch)) {
          if (first) {
            connected.fetch_add(1);
            first = false;
          }
          events.fetch_add(static_cast<uint64_t>(batch.events_size()), std::memory_order_relaxed);
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

}  // namespace

int runGrpc(const Args& args) {
  LoadOptions o;
  o.seconds = args.number("seconds", 2.0);
  o.warmup = args.number("warmup", 0.5);
  o.devices = static_cast<uint32_t>(args.number("devices", 8));
  o.window_per_device = static_cast<uint32_t>(args.number("window", 256));
  o.shards = static_cast<unsigned>(args.number("shards", 1));
  const auto max_batch = static_cast<uint32_t>(args.number("max-batch", 1024));
  const bool json = args.flag("json");

  // The daemon's default CPU budget of all watchers together (api::ServiceOptions::watch_cpu_cores).
  const double cores = args.number("watch-cpu-cores", api::ServiceOptions{}.watch_cpu_cores);
  const WatchResult none = runWithWatchers(o, 0, max_batch, cores);
  const WatchResult one = runWithWatchers(o, 1, max_batch, cores);
  const WatchResult four = runWithWatchers(o, 4, max_batch, cores);
  // Capacity: one watcher without pacing (what a watcher can take when CPU is no object).
  const WatchResult unpaced = runWithWatchers(o, 1, max_batch, 0);
  Json j;
  j.begin();
  j.field("mode", "grpc");
  j.field("seconds", o.seconds);
  j.field("max_batch", static_cast<uint64_t>(max_batch));
  j.field("watch_cpu_cores", cores);
  j.key("routing_groups_per_s").begin();
  j.field("watchers_0", none.routing_groups_per_s);
  j.field("watchers_1", one.routing_groups_per_s);
  j.field("watchers_4", four.routing_groups_per_s);
  j.field("slowdown_1", 1.0 - one.routing_groups_per_s / none.routing_groups_per_s);
  j.field("slowdown_4", 1.0 - four.routing_groups_per_s / none.routing_groups_per_s);
  j.field("watchers_1_unpaced", unpaced.routing_groups_per_s);
  j.field("slowdown_1_unpaced", 1.0 - unpaced.routing_groups_per_s / none.routing_groups_per_s);
  j.end();
  for (const auto& [name, w, n] : {std::tuple{"watchers_1", one, 1u}, std::tuple{"watchers_4", four, 4u},
                                   std::tuple{"watchers_1_unpaced", unpaced, 1u}}) {
    j.key(name).begin();
    j.field("events_per_s", w.events_per_s);
    j.field("events_per_s_per_watcher", w.events_per_s / n);
    j.field("events", w.events);
    j.field("lost_in_gaps", w.lost);
    j.field("messages", w.messages);
    j.end();
  }
  j.end();
  std::cout << j.str() << std::endl;
  (void)json;
  return 0;
}

}  // namespace iopf::bench
