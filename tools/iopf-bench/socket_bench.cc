// iopf-bench socket: page requests over the QEMU socket backend's "iopf" profile (libiopf-vmm
// peers → Unix socket → event loop → router → PAGE_RESP), with 1 and 16 connected peers, compared
// in the same run with the router fed in-process by the in-memory backend (runRouterLoad).
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <memory>
#include <thread>
#include <unistd.h>

#include "bench_common.h"
#include "bench_modes.h"
#include "qemu_socket_backend.h"
#include "vmm_load.h"

namespace iopf::bench {
namespace {

struct SocketRun {
  uint32_t peers = 1;
  uint64_t groups = 0;
  double seconds = 0;
  double groups_per_s = 0;
  double requests_per_s = 0;
  LatencyHistogram::Snapshot latency;  // peer-observed send → PAGE_RESP
  bool ok = true;
  std::string error;
};

SocketRun runSocketLoad(uint32_t peers, const Args& args) {
  SocketRun out;
  out.peers = peers;
  RouterOptions ro;
  ro.shards = static_cast<unsigned>(args.number("shards", 1));
  Router router(ro);
  DomainSpec d;
  d.name = "bench";
  d.kind = DomainKind::kNested;
  const DomainId domain = *router.addDomain(d);
  (void)router.setChain(domain, {trivialHandler()});
  qemu_socket::QemuSocketBackend::Options bo;
  bo.socket_path = "/tmp/iopf_bench_socket_" + std::to_string(::getpid()) + ".sock";
  bo.on_device = [&](const qemu_socket::VmmDeviceEvent& e) {
    if (e.added) (void)router.attach(e.device, std::nullopt, domain);
  };
  qemu_socket::QemuSocketBackend backend(bo);
  if (auto id = router.addBackend(backend); !id.ok()) {
    out.ok = false;
    out.error = std::string(id.status().message());
    return out;
  }
  std::vector<qemu_socket::VmmLoadResult> results(peers);
  std::vector<std::thread> threads;
  for (uint32_t p = 0; p < peers; ++p) {
    threads.emplace_back([&, p] {
      qemu_socket::VmmLoadOptions o;
      o.socket_path = bo.socket_path;
      o.devices = static_cast<uint32_t>(args.number("devices", 1));
      o.seconds = args.number("seconds", 2.0);
      o.warmup = args.number("warmup", 0.5);
      o.group_size = static_cast<uint32_t>(args.number("group-size", 1));
      o.window = static_cast<uint32_t>(args.number("window", 256));
      o.batch = !args.flag("no-batch");
      results[p] = qemu_socket::runVmmLoad(o);
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    if (!r.ok) {
      out.ok = false;
      out.error = r.error;
    }
    out.groups += r.responses;
    out.seconds = std::max(out.seconds, r.seconds);
    out.groups_per_s += r.groups_per_s;
    out.requests_per_s += r.requests_per_s;
    out.latency.merge(r.latency);
  }
  router.shutdown();
  return out;
}

}  // namespace

int runSocket(const Args& args) {
  const bool json = args.flag("json");
  const uint32_t group_size = static_cast<uint32_t>(args.number("group-size", 1));
  const uint32_t window = static_cast<uint32_t>(args.number("window", 256));
  const uint64_t allocs0 = allocationCount();
  const SocketRun one = runSocketLoad(1, args);
  const uint64_t allocs1 = allocationCount();
  const SocketRun many = runSocketLoad(static_cast<uint32_t>(args.number("peers", 16)), args);
  LoadOptions lo;
  lo.seconds = args.number("seconds", 2.0);
  lo.warmup = args.number("warmup", 0.5);
  lo.devices = 1;
  lo.window_per_device = std::min<uint32_t>(window, 512);
  lo.group_size = group_size;
  lo.batch = std::max<uint32_t>(64, group_size);
  lo.shards = static_cast<unsigned>(args.number("shards", 1));
  const LoadResult mem = runRouterLoad(lo, [] { return std::vector<std::shared_ptr<Handler>>{trivialHandler()}; });

  Json j;
  j.begin();
  j.field("mode", "socket");
  j.field("profile", "iopf");
  j.field("batch", !args.flag("no-batch"));
  j.field("group_size", static_cast<uint64_t>(group_size));
  j.field("window_per_peer", static_cast<uint64_t>(window));
  // Headline = one peer over one socket (the fields of `iopf-bench core`).
  j.field("groups", one.groups);
  j.field("seconds", one.seconds);
  j.field("groups_per_s", one.groups_per_s);
  j.field("requests_per_s", one.requests_per_s);
  latencyJson(j, "latency_ns", one.latency);
  j.field("allocs_per_group", one.groups > 0 ? static_cast<double>(allocs1 - allocs0) / static_cast<double>(one.groups) : 0.0);
  j.field("rss_bytes", rssBytes());
  for (const SocketRun* r : {&one, &many}) {
    j.key("peers_" + std::to_string(r->peers)).begin();
    j.field("peers", static_cast<uint64_t>(r->peers));
    j.field("ok", r->ok);
    if (!r->ok) j.field("error", r->error);
    j.field("groups", r->groups);
    j.field("groups_per_s", r->groups_per_s);
    j.field("requests_per_s", r->requests_per_s);
    latencyJson(j, "latency_ns", r->latency);
    j.end();
  }
  j.key("compare").begin();
  j.key("in_memory").begin();
  j.field("groups_per_s", mem.groups_per_s);
  j.field("requests_per_s", mem.requests_per_s);
  j.field("p99_ns", mem.latency.percentile(0.99));
  j.field("ratio", mem.requests_per_s > 0 ? one.requests_per_s / mem.requests_per_s : 0.0);
  j.end();
  j.end();
  j.end();
  if (json) {
    std::cout << j.str() << std::endl;
  } else {
    std::printf("socket, 1 peer: %.0f requests/s (p99 %" PRIu64 " ns); %u peers: %.0f requests/s (p99 %" PRIu64
                " ns); in-memory: %.0f requests/s\n%s\n",
                one.requests_per_s, one.latency.percentile(0.99), many.peers, many.requests_per_s,
                many.latency.percentile(0.99), mem.requests_per_s, j.str().c_str());
  }
  return one.ok && many.ok ? 0 : 1;
}

}  // namespace iopf::bench
