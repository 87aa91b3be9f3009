// iopf-bench forwarder: round trips of one page request group at a time through the guest
// forwarder plugin, per transport, measured in one run (docs/plugins/guest_forwarder.md §7):
//   in_process   the same router and device with an in-process resolver (SUCCESS in the shard):
//                the comparison
//   socket_peer  plugin -> iopf socket (feature FORWARD) -> scripted guest (libiopf_vmm guest_peer:
//                VT-d page request descriptors into a PRQ ring, page group response back) -> host
//   qemu_stopped plugin -> vhost-user BACKEND_IOTLB_MSG MISS -> real QEMU without a guest (-S): QEMU
//                refuses (device stopped), INVALID
//   qemu_guest   with --guest-dir DIR (vmlinuz + initrd.cpio.gz of make_guest_initramfs.sh): MISS for
//                the guest's ring IOVAs, resolved by QEMU walking the guest's IOMMU page tables
//                (UPDATE + ack), SUCCESS
// Latency is deliver() -> the host backend's response, per group, after a warm-up.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <iostream>
#include <memory>
#include <thread>

#include "absl/strings/str_format.h"
#include "bench_common.h"
#include "bench_modes.h"
#include "guest_peer.h"
#include "iopf/in_memory_backend.h"
#include "iopf/plugin_abi.h"
#include "iopf/plugin_host.h"
#include "qemu_launcher.h"

namespace iopf::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Trips {
  std::string name;
  bool ok = true;
  bool skipped = false;
  std::string note;
  uint64_t groups = 0, success = 0, invalid = 0;
  double seconds = 0;
  double per_s = 0;
  LatencyHistogram::Snapshot latency;
};

// A threaded router with one device (backend handle 42, RID 03:00.0) attached to one nested domain.
struct Rig {
  Rig() {
    RouterOptions ro;
    ro.shards = 1;
    router = std::make_unique<Router>(ro);
    backend.setResponseCallback([this](std::span<const Response> rs) {
      for (const Response& r : rs) (r.code == ResponseCode::kSuccess ? success : invalid).fetch_add(1);
      answered.fetch_add(rs.size(), std::memory_order_release);
    });
    (void)router->addBackend(backend);
    DeviceSpec spec;
    spec.name = "vf0";
    spec.backend_handle = 42;
    spec.rid = 0x0300;
    spec.pri_allocation = 512;
    device = *backend.sink().addDevice(spec);
    DomainSpec d;
    d.name = "guest";
    d.kind = DomainKind::kNested;
    d.deadline_ns = 10'000'000'000;
    domain = *router->addDomain(d);
    (void)router->attach(device, std::nullopt, domain);
  }
  ~Rig() {
    router->shutdown();
    if (host) host->shutdown();
  }
  absl::Status loadForwarder(const std::string& config) {
    PluginHostOptions o;
    o.call_budget_ns = 10'000'000'000;
    o.report = [](const PluginReport& r) {
      if (r.level >= IOPF_LOG_WARNING) std::fprintf(stderr, "[%s] %s\n", r.plugin.c_str(), r.message.c_str());
    };
    host = std::make_unique<PluginHost>(router.get(), o);
    if (absl::Status st = host->loadFile(IOPF_BENCH_GUEST_FORWARDER_PLUGIN, config); !st.ok()) return st;
    auto h = host->createHandler("guest_forwarder", domain, {});
    if (!h.ok()) return h.status();
    if (absl::Status st = host->start(); !st.ok()) return st;
    return router->setChain(domain, {*h});
  }
  uint64_t counter(const std::string& name) const {
    return host ? host->counter("guest_forwarder", name).value_or(0) : 0;
  }

  // One group in flight at a time, pages cycled; measures after `warmup` for `seconds`.
  Trips roundTrips(const std::string& name, const std::vector<uint64_t>& pages, double seconds,
                   double warmup) {
    Trips t;
    t.name = name;
    LatencyHistogram h;
    const auto start = Clock::now();
    Clock::time_point measured_from{};
    bool measuring = false;
    uint64_t success0 = 0, invalid0 = 0;
    uint32_t grpid = 0;
    for (uint64_t i = 0;; ++i) {
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      if (!measuring && elapsed >= warmup) {
        measuring = true;
        measured_from = Clock::now();
        success0 = success.load();
        invalid0 = invalid.load();
      }
      if (elapsed >= warmup + seconds) break;
      PageRequest r;
      r.device = device;
      r.grpid = grpid;
      grpid = (grpid + 1) & 0x1ff;
      r.addr = pages[i % pages.size()];
      r.perm = perm::kRead;
      r.last = true;
      const uint64_t before = answered.load(std::memory_order_acquire);
      const auto sent = Clock::now();
      backend.sink().deliver(std::span<const PageRequest>(&r, 1));
      // Spin briefly, then yield: the answer comes from another thread (or process).
      while (answered.load(std::memory_order_acquire) == before) {
        if (Clock::now() - sent > std::chrono::seconds(15)) {
          t.ok = false;
          t.note = "no answer within 15 s";
          return t;
        }
        std::this_thread::yield();
      }
      if (measuring) {
        h.record(static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - sent).count()));
        ++t.groups;
      }
    }
    t.seconds = std::chrono::duration<double>(Clock::now() - measured_from).count();
    t.per_s = t.seconds > 0 ? static_cast<double>(t.groups) / t.seconds : 0;
    t.success = success.load() - success0;
    t.invalid = invalid.load() - invalid0;
    t.latency = h.snapshot();
    return t;
  }

  std::unique_ptr<Router> router;
  InMemoryBackend backend;
  std::unique_ptr<PluginHost> host;
  DeviceId device = 0;
  DomainId domain = 0;
  std::atomic<uint64_t> answered{0}, success{0}, invalid{0};
};

Trips failed(const std::string& name, const std::string& why, bool skipped = false) {
  Trips t;
  t.name = name;
  t.ok = skipped;
  t.skipped = skipped;
  t.note = why;
  return t;
}

std::string tempPath(const std::string& what) {
  return absl::StrFormat("/tmp/iopf_bench_fwd_%d_%s.sock", ::getpid(), what);
}

Trips inProcess(double seconds, double warmup) {
  Rig rig;
  (void)rig.router->setChain(rig.domain, {trivialHandler()});
  return rig.roundTrips("in_process", {0x100000}, seconds, warmup);
}

Trips socketPeer(double seconds, double warmup) {
  Rig rig;
  const std::string sock = tempPath("iopf");
  const absl::Status st = rig.loadForwarder(absl::StrFormat(
      R"({"iopf_socket": "%s", "vms": [{"name": "bench", "transport": "iopf"}],
          "devices": [{"backend_handle": 42, "vm": "bench", "viommu_id": 1, "virt_id": 16, "guest_rid": 16}]})",
      sock));
  if (!st.ok()) return failed("socket_peer", std::string(st.message()));
  std::atomic<bool> stop{false}, ready{false};
  qemu_socket::GuestPeerResult peer;
  std::thread guest([&] {
    qemu_socket::GuestPeerOptions o;
    o.socket_path = sock;
    o.vm_name = "bench";
    o.stop = &stop;
    o.ready = &ready;
    peer = qemu_socket::runGuestPeer(o);
  });
  const auto until = Clock::now() + std::chrono::seconds(10);
  while (!ready.load() && Clock::now() < until && peer.error.empty())
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  Trips t = ready.load() ? rig.roundTrips("socket_peer", {0x100000, 0x101000}, seconds, warmup)
                         : failed("socket_peer", "the scripted guest did not connect");
  stop = true;
  guest.join();
  if (!peer.ok) {
    t.ok = false;
    t.note = peer.error;
  }
  ::unlink(sock.c_str());
  return t;
}

Trips qemuRun(bool with_guest, const std::string& guest_dir, double seconds, double warmup) {
  const std::string name = with_guest ? "qemu_guest" : "qemu_stopped";
  const std::string qemu = guest_forwarder::findQemu();
  if (qemu.empty())
    return failed(name, "qemu-system-x86_64 not found (apt-get install qemu-system-x86)", true);
  Rig rig;
  const std::string sock = tempPath(name);
  const absl::Status st = rig.loadForwarder(absl::StrFormat(
      R"({"vms": [{"name": "qemu0", "transport": "vhost-iotlb", "vhost_socket": "%s"}],
          "devices": [{"backend_handle": 42, "vm": "qemu0", "virt_id": 24, "guest_rid": 24}]})",
      sock));
  if (!st.ok()) return failed(name, std::string(st.message()));
  guest_forwarder::QemuProcess q;
  std::vector<std::string> args =
      guest_forwarder::vhostIommuQemuArgs(qemu, sock, with_guest ? "512M" : "256M");
  if (with_guest) {
    args.insert(args.end(),
                {"-kernel", guest_dir + "/vmlinuz", "-initrd", guest_dir + "/initrd.cpio.gz", "-append",
                 "console=ttyS0 intel_iommu=on iommu.strict=1 panic=-1 quiet", "-serial", "stdio"});
  } else {
    args.insert(args.end(), {"-S", "-serial", "none"});
  }
  if (!q.start(args, "")) return failed(name, "cannot start " + qemu);
  const auto waitFor = [](const std::function<bool()>& f, int seconds_limit) {
    const auto until = Clock::now() + std::chrono::seconds(seconds_limit);
    while (!f()) {
      if (Clock::now() >= until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  };
  if (!waitFor([&] { return rig.counter("vhost.qemu0.channel_ready") == 1; }, 60)) {
    return failed(name, "QEMU did not set up the vhost-user back-end channel: " + q.console());
  }
  std::vector<uint64_t> pages{0x100000};
  if (with_guest) {
    if (!waitFor([&] { return q.consoleHas("IOPF-GUEST-READY"); }, 240) ||
        !waitFor([&] { return rig.counter("vhost.qemu0.ring1_desc") != 0; }, 30)) {
      return failed(name, "the guest did not start the device; console:\n" + q.console());
    }
    pages = {rig.counter("vhost.qemu0.ring0_desc"), rig.counter("vhost.qemu0.ring1_desc")};
  }
  Trips t = rig.roundTrips(name, pages, seconds, warmup);
  t.note = absl::StrFormat("misses %u, updates %u, invalidations %u", rig.counter("vhost.qemu0.misses"),
                           rig.counter("vhost.qemu0.updates"), rig.counter("vhost.qemu0.invalidations"));
  if (with_guest && t.invalid > 0) {
    t.ok = false;
    t.note += ": mapped pages answered INVALID";
  }
  q.stop();
  ::unlink(sock.c_str());
  return t;
}

}  // namespace

int runForwarder(const Args& args) {
  const bool json = args.flag("json");
  const double seconds = args.number("seconds", 2.0);
  const double warmup = args.number("warmup", 0.3);
  const std::string guest_dir = args.text("guest-dir", "");
  const bool no_qemu = args.flag("no-qemu");
  std::vector<Trips> runs;
  runs.push_back(inProcess(seconds, warmup));
  runs.push_back(socketPeer(seconds, warmup));
  if (no_qemu) {
    runs.push_back(failed("qemu_stopped", "--no-qemu", true));
  } else {
    runs.push_back(qemuRun(false, "", seconds, warmup));
  }
  if (no_qemu || guest_dir.empty()) {
    runs.push_back(failed("qemu_guest",
                          no_qemu ? "--no-qemu" : "needs --guest-dir DIR (make_guest_initramfs.sh)", true));
  } else {
    runs.push_back(qemuRun(true, guest_dir, seconds, warmup));
  }
  Json j;
  j.begin();
  j.field("mode", "forwarder");
  j.field("in_flight", static_cast<uint64_t>(1));
  j.field("seconds", seconds);
  j.key("transports").begin();
  bool ok = true;
  for (const Trips& t : runs) {
    ok = ok && t.ok;
    j.key(t.name).begin();
    j.field("ok", t.ok);
    if (t.skipped) j.field("skipped", true);
    if (!t.note.empty()) j.field("note", t.note);
    j.field("round_trips", t.groups);
    j.field("round_trips_per_s", t.per_s);
    j.field("success", t.success);
    j.field("invalid", t.invalid);
    latencyJson(j, "latency_ns", t.latency);
    j.end();
  }
  j.end();
  j.end();
  if (json) {
    std::cout << j.str() << std::endl;
  } else {
    for (const Trips& t : runs) {
      if (t.skipped) {
        std::printf("%-13s skipped: %s\n", t.name.c_str(), t.note.c_str());
        continue;
      }
      std::printf("%-13s %s %9.0f round trips/s  p50 %7" PRIu64 " ns  p99 %8" PRIu64 " ns  (%" PRIu64
                  " success, %" PRIu64 " invalid)%s%s\n",
                  t.name.c_str(), t.ok ? "ok    " : "FAILED", t.per_s, t.latency.percentile(0.5),
                  t.latency.percentile(0.99), t.success, t.invalid, t.note.empty() ? "" : "  ",
                  t.note.c_str());
    }
  }
  return ok ? 0 : 1;
}

}  // namespace iopf::bench
