// The guest side of the real-kernel test: /init of the initramfs booted by run_kernel_test.sh.
// Drives the iommufd selftest mock device of Linux 6.12 (CONFIG_IOMMUFD_TEST) through the project's
// router + iommufd backend and checks, against the real kernel, what issue 7 lists. Every check
// prints "IOPF-KERNEL-TEST: CHECK <name>: ok|FAIL <detail>"; the last line is
// "IOPF-KERNEL-TEST: VERDICT PASS|FAIL ...". Then the benchmark runs (router vs a hand-written
// poll/read/write loop on the same fault fd) and prints its JSON between IOPF-BENCH-JSON markers.
#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "handover.h"
#include "iommufd_abi.h"
#include "iommufd_backend.h"
#include "iopf/router.h"

namespace {

using namespace iopf;
using namespace iopf::iommufd;
namespace kabi = iopf::iommufd::abi;

std::atomic<int> g_checks{0};
std::atomic<int> g_failed{0};
std::mutex g_print_mu;

void check(bool ok, const std::string& name, const std::string& detail = "") {
  std::lock_guard lock(g_print_mu);
  ++g_checks;
  if (!ok) ++g_failed;
  std::printf("IOPF-KERNEL-TEST: CHECK %s: %s%s%s\n", name.c_str(), ok ? "ok" : "FAIL",
              detail.empty() ? "" : " ", detail.c_str());
  std::fflush(stdout);
}

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// --- raw selftest ioctls ---------------------------------------------------------------------------
int testCmd(int iommufd, kabi::IommuTestCmd& cmd) {
  return ::ioctl(iommufd, kabi::kIommuTestCmd, &cmd) == 0 ? 0 : -errno;
}

struct MockDevice {
  uint32_t stdev = 0, hwpt = 0, dev_id = 0;
};

MockDevice mockDomain(int iommufd, uint32_t pt) {
  kabi::IommuTestCmd cmd;
  cmd.op = kabi::kTestOpMockDomain;
  cmd.id = pt;
  MockDevice d;
  if (testCmd(iommufd, cmd) == 0) {
    kabi::TestMockDomainOut out;
    std::memcpy(&out, cmd.payload, sizeof out);
    d = {out.out_stdev_id, out.out_hwpt_id, out.out_idev_id};
  }
  return d;
}

int mockReplace(int iommufd, uint32_t stdev, uint32_t pt) {
  kabi::IommuTestCmd cmd;
  cmd.op = kabi::kTestOpMockDomainReplace;
  cmd.id = stdev;
  kabi::TestMockDomainReplace r{pt};
  std::memcpy(cmd.payload, &r, sizeof r);
  return testCmd(iommufd, cmd);
}

int trigger(int iommufd, uint32_t dev_id, uint32_t pasid, uint32_t grpid, uint32_t perm,
            uint64_t addr) {
  kabi::IommuTestCmd cmd;
  cmd.op = kabi::kTestOpTriggerIopf;
  kabi::TestTriggerIopf t{dev_id, pasid, grpid, perm, addr};
  std::memcpy(cmd.payload, &t, sizeof t);
  return testCmd(iommufd, cmd);
}

int destroyRaw(int iommufd, uint32_t id) {
  kabi::IommuDestroy d;
  d.id = id;
  return ::ioctl(iommufd, kabi::kIommuDestroy, &d) == 0 ? 0 : -errno;
}

short pollEvents(int fd) {
  pollfd p{fd, POLLIN | POLLOUT, 0};
  return ::poll(&p, 1, 0) == 1 ? p.revents : 0;
}

ssize_t writeRaw(int fd, std::vector<kabi::IommuHwptPageResponse> v) {
  const ssize_t n = ::write(fd, v.data(), v.size() * sizeof(v[0]));
  return n < 0 ? -errno : n;
}

// --- handlers ---------------------------------------------------------------------------------------
struct Seen {
  DomainId domain;
  DeviceId device;
  std::optional<uint32_t> pasid;
  uint32_t grpid;
  uint8_t perm;
  uint64_t addr;
  uint32_t token;
};

class RecordingHandler final : public Handler {
 public:
  explicit RecordingHandler(std::string name) : name_(std::move(name)) {}
  std::string_view name() const override { return name_; }
  Verdict handle(const GroupView& g, const CompletionHandle& completion) override {
    std::lock_guard lock(mu);
    const PageRequest& last = g.requests.back();
    seen.push_back({g.domain, g.device, g.pasid, g.grpid, last.perm, last.addr, *g.cookie});
    if (defer) {
      deferred.push_back(completion);
      return Verdict::defer();
    }
    return Verdict::respond((g.grpid % 7 == 3) ? ResponseCode::kInvalid : ResponseCode::kSuccess);
  }
  std::mutex mu;
  std::vector<Seen> seen;
  std::vector<CompletionHandle> deferred;
  bool defer = false;

 private:
  std::string name_;
};

struct Observed {
  std::mutex mu;
  std::vector<WriteRecord> writes;
  size_t accepted(uint32_t fault) {
    std::lock_guard lock(mu);
    return std::count_if(writes.begin(), writes.end(),
                         [&](const WriteRecord& w) { return w.accepted && w.fault_id == fault; });
  }
  size_t total() {
    std::lock_guard lock(mu);
    return writes.size();
  }
};

void pump(IommufdBackend& backend, Router& router) {
  for (int i = 0; i < 64; ++i) {
    const size_t got = backend.pollOnce(0);
    router.runUntilIdle();
    if (got == 0) break;
  }
}

// --- the functional checks ---------------------------------------------------------------------------
void runChecks() {
  IommufdBackendOptions opts;
  opts.reader_thread = false;  // deterministic: pollOnce + Router::runUntilIdle
  auto created = IommufdBackend::create(opts);
  check(created.ok(), "backend.create", created.ok() ? "" : std::string(created.status().message()));
  if (!created.ok()) return;
  IommufdBackend& backend = **created;
  std::printf("%s", backend.features().toString().c_str());
  check(backend.features().usable() && backend.features().test_cmd, "probe.fault_queue_and_mock");
  const int ifd = backend.iommufd();

  Observed observed;
  backend.setWriteObserver([&](const WriteRecord& w) {
    std::lock_guard lock(observed.mu);
    observed.writes.push_back(w);
  });

  RouterOptions ro;
  ro.threaded = false;
  ro.shards = 2;
  Router router(ro);
  check(router.addBackend(backend).ok(), "router.addBackend");

  auto ioas = backend.allocIoas();
  check(ioas.ok(), "ioas.alloc");
  MockDevice a = mockDomain(ifd, *ioas), b = mockDomain(ifd, *ioas);
  check(a.dev_id != 0 && b.dev_id != 0 && a.dev_id != b.dev_id, "mock.devices",
        "dev_ids " + std::to_string(a.dev_id) + "," + std::to_string(b.dev_id));
  backend.noteAttached(a.dev_id, a.hwpt);
  backend.noteAttached(b.dev_id, b.hwpt);

  auto parent = backend.allocHwpt({.dev_id = a.dev_id, .pt_id = *ioas, .flags = kabi::kHwptAllocNestParent});
  check(parent.ok(), "hwpt.nest_parent");
  auto fault_a = backend.allocFaultQueue();
  auto fault_b = backend.allocFaultQueue();
  check(fault_a.ok() && fault_b.ok(), "fault.alloc_two");
  kabi::IommuHwptSelftest data;
  const auto bytes = std::span(reinterpret_cast<const uint8_t*>(&data), sizeof data);
  // Negative: unknown fault id → ENOENT; fault on a paging HWPT → EOPNOTSUPP on 6.12.
  auto bad = backend.allocHwpt({.dev_id = a.dev_id, .pt_id = *parent, .fault_id = UINT32_MAX,
                                .data_type = kabi::kHwptDataSelftest, .data = bytes});
  check(absl::IsNotFound(bad.status()), "hwpt.unknown_fault_id_enoent", std::string(bad.status().message()));
  auto paging = backend.allocHwpt({.dev_id = a.dev_id, .pt_id = *ioas, .fault_id = *fault_a});
  check(!paging.ok(), "hwpt.paging_with_fault_rejected_6_12", std::string(paging.status().message()));
  auto hwpt_a = backend.allocHwpt({.dev_id = a.dev_id, .pt_id = *parent, .fault_id = *fault_a,
                                   .data_type = kabi::kHwptDataSelftest, .data = bytes});
  auto hwpt_b = backend.allocHwpt({.dev_id = b.dev_id, .pt_id = *parent, .fault_id = *fault_b,
                                   .data_type = kabi::kHwptDataSelftest, .data = bytes});
  check(hwpt_a.ok() && hwpt_b.ok(), "hwpt.nested_with_fault");

  auto dev_a = backend.addDevice(a.dev_id, {.name = "mock-a"});
  auto dev_b = backend.addDevice(b.dev_id, {.name = "mock-b"});
  auto dom_a = router.addDomain({.name = "domain-a", .kind = DomainKind::kNested});
  auto dom_b = router.addDomain({.name = "domain-b", .kind = DomainKind::kNested});
  auto h_a = std::make_shared<RecordingHandler>("rec-a");
  auto h_b = std::make_shared<RecordingHandler>("rec-b");
  check(dev_a.ok() && dev_b.ok() && dom_a.ok() && dom_b.ok() && router.setChain(*dom_a, {h_a}).ok() &&
            router.setChain(*dom_b, {h_b}).ok(),
        "router.setup");

  // Attach (initial attach: the old HWPT has no FAULT, nothing to quiesce).
  auto attach = [&](const MockDevice& d, uint32_t pt, DeviceId dev, std::optional<DomainId> dom) {
    return backend.changeAttachment(
        d.dev_id, pt,
        [&, pt] {
          const int rc = mockReplace(ifd, d.stdev, pt);
          return rc == 0 ? absl::OkStatus()
                         : absl::InternalError("MOCK_DOMAIN_REPLACE: " + std::string(std::strerror(-rc)));
        },
        {.router = &router, .device = dev, .new_domain = dom});
  };
  check(attach(a, *hwpt_a, *dev_a, *dom_a).ok() && attach(b, *hwpt_b, *dev_b, *dom_b).ok(),
        "attach.fault_hwpts");
  check(destroyRaw(ifd, *hwpt_a) == -EBUSY, "ebusy.destroy_attached_hwpt");
  check(destroyRaw(ifd, *fault_a) == -EBUSY, "ebusy.destroy_referenced_fault");

  const int fd_a = backend.faultFd(*fault_a);
  const int fd_b = backend.faultFd(*fault_b);
  check(pollEvents(fd_a) == POLLOUT, "poll.empty_is_pollout_only",
        "revents=" + std::to_string(pollEvents(fd_a)));
  {
    kabi::IommuHwptPgfault r;
    check(::read(fd_a, &r, 40) == 0, "read.empty_returns_0");
    check(::read(fd_a, &r, 30) < 0 && errno == ESPIPE, "read.size_not_multiple_espipe");
  }

  // --- routing: many PASIDs, PRGIs, perms, addresses over two devices/domains/FAULT objects ------
  struct Fired {
    uint32_t dev_id, pasid, grpid, perm;
    uint64_t addr;
  };
  std::vector<Fired> fired;
  const uint32_t perms[] = {1, 2, 3, 1 | 4, 3 | 8, 2 | 8};
  int trig_fail = 0;
  for (uint32_t i = 0; i < 1200; ++i) {
    const MockDevice& d = (i % 3 == 0) ? b : a;
    Fired f{d.dev_id, (i * 7) % 5 == 0 ? 0 : 1 + (i * 13) % 1000, i % 512, perms[i % 6],
            0xdead0000ull + i * 0x1001ull + (i % 3)};  // unaligned addresses
    if (trigger(ifd, f.dev_id, f.pasid, f.grpid, f.perm, f.addr) != 0) ++trig_fail;
    fired.push_back(f);
    if (i == 0) {
      check(pollEvents(fd_b) == (POLLIN | POLLOUT) && pollEvents(fd_a) == POLLOUT,
            "poll.queued_sets_pollin_on_its_fault_fd_only");
    }
    if (i % 100 == 99) pump(backend, router);
  }
  pump(backend, router);
  check(trig_fail == 0, "trigger.all_accepted");
  // Every group routed to its domain with its device identity, answered exactly once.
  std::map<std::pair<uint32_t, uint64_t>, Seen> seen;  // (dev_id, addr) → seen
  size_t wrong_domain = 0;
  for (auto* h : {h_a.get(), h_b.get()}) {
    for (const Seen& s : h->seen) {
      const uint32_t dev_id = s.device == *dev_a ? a.dev_id : b.dev_id;
      const DomainId expect = dev_id == a.dev_id ? *dom_a : *dom_b;
      if (s.domain != expect) ++wrong_domain;
      seen[{dev_id, s.addr}] = s;
    }
  }
  size_t mismatches = 0;
  for (const Fired& f : fired) {
    auto it = seen.find({f.dev_id, f.addr});
    if (it == seen.end() || it->second.grpid != f.grpid || it->second.perm != f.perm ||
        it->second.pasid != (f.pasid ? std::optional<uint32_t>(f.pasid) : std::nullopt)) {
      ++mismatches;
    }
  }
  check(seen.size() == fired.size() && mismatches == 0 && wrong_domain == 0, "route.identity_and_domain",
        std::to_string(seen.size()) + " groups seen of " + std::to_string(fired.size()) +
            ", mismatches " + std::to_string(mismatches) + ", wrong domain " + std::to_string(wrong_domain));
  const size_t acc_a = observed.accepted(*fault_a), acc_b = observed.accepted(*fault_b);
  check(acc_a == 800 && acc_b == 400 && observed.total() == 1200, "respond.exactly_once_per_group",
        "accepted a=" + std::to_string(acc_a) + " b=" + std::to_string(acc_b) +
            " writes=" + std::to_string(observed.total()));
  check(pollEvents(fd_a) == POLLOUT && pollEvents(fd_b) == POLLOUT, "poll.drained");
  {
    // A second write of answered cookies fails with EINVAL.
    std::vector<uint32_t> cookies;
    {
      std::lock_guard lock(observed.mu);
      for (const auto& w : observed.writes) {
        if (w.fault_id == *fault_a && cookies.size() < 8) cookies.push_back(w.cookie);
      }
    }
    int einval = 0;
    for (uint32_t c : cookies) einval += writeRaw(fd_a, {{c, kabi::kPageRespSuccess}}) == -EINVAL;
    check(einval == static_cast<int>(cookies.size()) && !cookies.empty(), "respond.second_write_einval",
          std::to_string(einval) + "/" + std::to_string(cookies.size()));
    check(writeRaw(fd_a, {{1, 2}}) == -EINVAL, "respond.failure_code_rejected_by_kernel");
  }
  const IommufdStats s1 = backend.stats();
  check(s1.outstanding == 0 && s1.write_rejected == 0 && s1.groups == 1200, "stats.after_routing",
        "groups=" + std::to_string(s1.groups) + " writes=" + std::to_string(s1.write_calls));

  // --- cookie reuse: a reissued cookie never confuses two groups ---------------------------------
  h_a->defer = true;
  for (uint32_t g = 0; g < 3; ++g) trigger(ifd, a.dev_id, 0, 100 + g, 1, 0x5000 + g);
  pump(backend, router);
  check(pollEvents(fd_a) == POLLOUT, "poll.read_but_unanswered_not_pollin");
  std::vector<Seen> first3(h_a->seen.end() - 3, h_a->seen.end());
  std::vector<CompletionHandle> d3(h_a->deferred.end() - 3, h_a->deferred.end());
  const auto k_mid = backend.kernelCookie(first3[1].token);
  check(d3[1].complete(ResponseCode::kSuccess), "reuse.complete_middle");
  router.runUntilIdle();
  trigger(ifd, a.dev_id, 0, 200, 2, 0x6000);
  pump(backend, router);
  const Seen reissued = h_a->seen.back();
  const auto k_new = backend.kernelCookie(reissued.token);
  check(k_mid && k_new && *k_mid == *k_new && reissued.token != first3[1].token, "reuse.kernel_reissued_cookie",
        "kernel cookie " + std::to_string(k_new.value_or(0)));
  // A stale (duplicate) response of the old group straight to the backend: refused, nothing written.
  const size_t writes_before = observed.total();
  Response stale;
  stale.cookie = first3[1].token;
  stale.code = ResponseCode::kInvalid;
  backend.respond(std::span(&stale, 1));
  check(observed.total() == writes_before, "reuse.stale_response_not_written");
  check(h_a->deferred.back().complete(ResponseCode::kSuccess), "reuse.new_group_completes");
  router.runUntilIdle();
  {
    std::lock_guard lock(observed.mu);
    const WriteRecord& w = observed.writes.back();
    check(w.accepted && w.cookie == *k_new && w.grpid == 200, "reuse.new_group_answered_with_its_grpid");
  }

  // --- short write against the real kernel ------------------------------------------------------------
  // Groups 0 and 2 of first3 are still deferred. Answer group 0's cookie behind the backend's
  // back; then the router's batch [g0, g2] → write stops at g0 (EINVAL), g2 resubmitted.
  for (uint32_t g = 0; g < 2; ++g) trigger(ifd, a.dev_id, 0, 300 + g, 1, 0x7000 + g);
  pump(backend, router);
  const auto k0 = backend.kernelCookie(first3[0].token);
  check(k0 && writeRaw(fd_a, {{*k0, kabi::kPageRespSuccess}}) == 8, "short.raw_answer_behind_back");
  {
    // Raw §2.4: [valid, bogus, valid] → 8 and the third is not processed.
    trigger(ifd, b.dev_id, 0, 400, 1, 0x8000);
    trigger(ifd, b.dev_id, 0, 401, 1, 0x8001);
    std::vector<kabi::IommuHwptPgfault> recs(256);
    const ssize_t n = ::read(fd_b, recs.data(), recs.size() * 40);
    check(n == 80, "raw.read_two_groups", "n=" + std::to_string(n));
    if (n == 80) {
      check(recs[0].flags == kabi::kPgfaultLastPage && recs[0].length == 0 && recs[0].reserved == 0 &&
                recs[0].dev_id == b.dev_id,
            "raw.record_layout");
      check(writeRaw(fd_b, {{recs[0].cookie, 0}, {0xFFFF0, 0}, {recs[1].cookie, 0}}) == 8,
            "raw.short_write_returns_8");
      check(writeRaw(fd_b, {{recs[1].cookie, 0}}) == 8, "raw.tail_resubmitted");
    }
  }
  const IommufdStats before_short = backend.stats();
  for (size_t i = h_a->deferred.size() - 2; i < h_a->deferred.size(); ++i) h_a->deferred[i].complete(ResponseCode::kSuccess);
  d3[0].complete(ResponseCode::kSuccess);
  d3[2].complete(ResponseCode::kSuccess);
  router.runUntilIdle();
  const IommufdStats after_short = backend.stats();
  check(after_short.write_rejected - before_short.write_rejected == 1 &&
            after_short.responses_written - before_short.responses_written == 3 &&
            after_short.outstanding == 0,
        "short.backend_drops_refused_entry",
        "rejected+" + std::to_string(after_short.write_rejected - before_short.write_rejected) +
            " written+" + std::to_string(after_short.responses_written - before_short.responses_written) +
            " short_writes+" + std::to_string(after_short.short_writes - before_short.short_writes));

  // --- replace with groups outstanding: quiesced, nothing written afterwards ------------------------
  const size_t deferred_before = h_a->deferred.size();
  for (uint32_t g = 0; g < 5; ++g) trigger(ifd, a.dev_id, g, 500 + g, 1, 0x9000 + g);
  pump(backend, router);
  std::vector<uint32_t> replaced_cookies;
  for (size_t i = h_a->seen.size() - 5; i < h_a->seen.size(); ++i) {
    if (auto k = backend.kernelCookie(h_a->seen[i].token)) replaced_cookies.push_back(*k);
  }
  const size_t writes_pre_replace = observed.total();
  const IommufdStats pre_replace = backend.stats();
  check(attach(a, *parent, *dev_a, std::nullopt).ok(), "replace.to_non_fault_parent");
  router.runUntilIdle();
  int refused = 0;
  for (size_t i = deferred_before; i < h_a->deferred.size(); ++i) {
    refused += !h_a->deferred[i].complete(ResponseCode::kSuccess);
  }
  router.runUntilIdle();
  const IommufdStats post_replace = backend.stats();
  check(observed.total() == writes_pre_replace, "replace.nothing_written_for_quiesced",
        "router refused " + std::to_string(refused) + " late completions");
  check(post_replace.quiesced - pre_replace.quiesced == 5 && post_replace.outstanding == 0 &&
            post_replace.retiring == 0,
        "replace.cookies_kernel_auto_responded");
  int gone = 0;
  for (uint32_t c : replaced_cookies) gone += writeRaw(fd_a, {{c, 0}}) == -EINVAL;
  check(gone == 5, "replace.kernel_answered_them", std::to_string(gone) + "/5 EINVAL");

  // --- a fault while attached to a non-fault HWPT never reaches the router -----------------------------
  const size_t seen_before = h_a->seen.size() + h_b->seen.size();
  check(trigger(ifd, a.dev_id, 0, 600, 1, 0xa000) == 0, "nonfault.trigger_returns_0");
  const size_t got = backend.pollOnce(0);
  router.runUntilIdle();
  check(got == 0 && h_a->seen.size() + h_b->seen.size() == seen_before && pollEvents(fd_a) == POLLOUT,
        "nonfault.never_reaches_router");

  // --- replace back: delivery resumes ------------------------------------------------------------------
  h_a->defer = false;
  check(attach(a, *hwpt_a, *dev_a, *dom_a).ok(), "replace.back_to_fault_hwpt");
  trigger(ifd, a.dev_id, 3, 700, 1, 0xb000);
  pump(backend, router);
  check(h_a->seen.back().grpid == 700 && backend.stats().outstanding == 0, "replace.delivery_resumes");

  // --- hand-over: a VMM passes its own FAULT fd over SCM_RIGHTS -----------------------------------------
  {
    int sv[2];
    check(::socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0, "handover.socketpair");
    kabi::IommuFaultAlloc vmm_fault;
    check(::ioctl(ifd, kabi::kIommuFaultQueueAlloc, &vmm_fault) == 0, "handover.vmm_fault_alloc");
    MockDevice c = mockDomain(ifd, *ioas);
    kabi::IommuHwptAlloc h;
    h.flags = kabi::kHwptFaultIdValid;
    h.dev_id = c.dev_id;
    h.pt_id = *parent;
    h.data_type = kabi::kHwptDataSelftest;
    h.data_len = sizeof data;
    h.data_uptr = reinterpret_cast<uintptr_t>(&data);
    h.fault_id = vmm_fault.out_fault_id;
    check(::ioctl(ifd, kabi::kIommuHwptAlloc, &h) == 0 && mockReplace(ifd, c.stdev, h.out_hwpt_id) == 0,
          "handover.vmm_attach");
    auto dev_c = backend.addDevice(c.dev_id, {.name = "vmm-dev"});
    (void)router.attach(*dev_c, std::nullopt, *dom_b);
    std::thread vmm([&] {
      HandoverMessage m;
      m.type = static_cast<uint16_t>(HandoverType::kAdoptFault);
      m.fault_id = vmm_fault.out_fault_id;
      absl::Status s = requestHandover(sv[0], m, static_cast<int>(vmm_fault.out_fault_fd));
      ::close(static_cast<int>(vmm_fault.out_fault_fd));
      check(s.ok(), "handover.adopt_acked");
    });
    check(serveHandoverMessage(backend, sv[1]).ok(), "handover.served");
    vmm.join();
    const size_t acc = observed.accepted(vmm_fault.out_fault_id);
    trigger(ifd, c.dev_id, 0, 800, 1, 0xc000);
    pump(backend, router);
    check(observed.accepted(vmm_fault.out_fault_id) == acc + 1, "handover.fault_routed_and_answered");
    // The VMM detaches (back to the IOAS) fenced by QUIESCE_BEGIN/END.
    h_b->defer = true;
    trigger(ifd, c.dev_id, 0, 801, 1, 0xc001);
    pump(backend, router);
    std::thread vmm2([&] {
      HandoverMessage m;
      m.type = static_cast<uint16_t>(HandoverType::kQuiesceBegin);
      m.fault_id = vmm_fault.out_fault_id;
      m.dev_id = c.dev_id;
      bool ok = requestHandover(sv[0], m).ok();
      ok = ok && mockReplace(ifd, c.stdev, *ioas) == 0;
      m.type = static_cast<uint16_t>(HandoverType::kQuiesceEnd);
      ok = ok && requestHandover(sv[0], m).ok();
      check(ok, "handover.vmm_quiesced_detach");
    });
    check(serveHandoverMessage(backend, sv[1]).ok() && serveHandoverMessage(backend, sv[1]).ok(),
          "handover.quiesce_served");
    vmm2.join();
    const size_t total_before = observed.total();
    h_b->deferred.back().complete(ResponseCode::kSuccess);
    router.runUntilIdle();
    check(observed.total() == total_before, "handover.fenced_group_not_written");
    h_b->defer = false;
    destroyRaw(ifd, h.out_hwpt_id);
    destroyRaw(ifd, c.stdev);
    ::close(sv[0]);
    ::close(sv[1]);
  }

  // --- teardown: detach → destroy HWPTs → close fd → destroy FAULT, EBUSY-tolerant ----------------------
  check(attach(a, *ioas, *dev_a, std::nullopt).ok() && attach(b, *ioas, *dev_b, std::nullopt).ok(),
        "teardown.detach");
  check(backend.destroyObject(*hwpt_b).ok(), "teardown.destroy_hwpt");
  check(absl::IsFailedPrecondition(backend.destroyObject(*fault_b)), "ebusy.fault_with_open_fd");
  router.shutdown();
  // The mock devices hold the IOAS (through their auto domains): destroy them like a VFIO unbind.
  check(destroyRaw(ifd, a.stdev) == 0 && destroyRaw(ifd, b.stdev) == 0, "teardown.mock_devices");
  absl::Status td = backend.teardown();
  check(td.ok(), "teardown.order", std::string(td.message()));
  const IommufdStats fin = backend.stats();
  std::printf("IOPF-KERNEL-TEST: stats groups=%lu records=%lu written=%lu write_calls=%lu short=%lu "
              "rejected=%lu quiesced=%lu kernel_answered=%lu dropped=%lu stale=%lu read_calls=%lu\n",
              fin.groups, fin.records, fin.responses_written, fin.write_calls, fin.short_writes,
              fin.write_rejected, fin.quiesced, fin.kernel_answered, fin.dropped_auto_responded,
              fin.stale_tokens, fin.read_calls);
}

// --- daemon death (issue 11): what the 6.12 kernel does with groups whose reader was SIGKILLed -------
//
// The mock device's page_response op is a no-op in 6.12, so a response cannot be seen at the device.
// What can be seen is the group's state behind its cookie on the FAULT object: a write of the cookie
// is accepted (8 bytes) while the group is pending and refused (EINVAL) once anyone — the kernel
// included — has answered it.

// A FAULT object on a nested HWPT with a mock device attached, on `ifd`, built with raw ioctls.
struct FaultSetup {
  MockDevice dev;
  uint32_t ioas = 0, parent = 0, hwpt = 0, fault_id = 0;
  int fault_fd = -1;
  bool ok = false;
};

FaultSetup makeFaultSetup(int ifd) {
  FaultSetup f;
  kabi::IommuIoasAlloc ioas;
  if (::ioctl(ifd, kabi::kIommuIoasAlloc, &ioas) != 0) return f;
  f.ioas = ioas.out_ioas_id;
  f.dev = mockDomain(ifd, f.ioas);
  kabi::IommuHwptAlloc parent;
  parent.flags = kabi::kHwptAllocNestParent;
  parent.dev_id = f.dev.dev_id;
  parent.pt_id = f.ioas;
  if (f.dev.dev_id == 0 || ::ioctl(ifd, kabi::kIommuHwptAlloc, &parent) != 0) return f;
  f.parent = parent.out_hwpt_id;
  kabi::IommuFaultAlloc fa;
  if (::ioctl(ifd, kabi::kIommuFaultQueueAlloc, &fa) != 0) return f;
  f.fault_id = fa.out_fault_id;
  f.fault_fd = static_cast<int>(fa.out_fault_fd);
  kabi::IommuHwptSelftest data;
  kabi::IommuHwptAlloc h;
  h.flags = kabi::kHwptFaultIdValid;
  h.dev_id = f.dev.dev_id;
  h.pt_id = f.parent;
  h.data_type = kabi::kHwptDataSelftest;
  h.data_len = sizeof data;
  h.data_uptr = reinterpret_cast<uintptr_t>(&data);
  h.fault_id = f.fault_id;
  if (::ioctl(ifd, kabi::kIommuHwptAlloc, &h) != 0) return f;
  f.hwpt = h.out_hwpt_id;
  f.ok = mockReplace(ifd, f.dev.stdev, f.hwpt) == 0;
  return f;
}

// The reader: reads every queued record from `fault_fd`, reports the cookies on `report`, then
// waits to be killed (an iopfd holding open groups).
[[noreturn]] void readAndHold(int fault_fd, int report) {
  std::vector<kabi::IommuHwptPgfault> recs(64);
  const ssize_t n = ::read(fault_fd, recs.data(), recs.size() * sizeof(recs[0]));
  std::vector<uint32_t> cookies;
  for (ssize_t i = 0; n > 0 && i < n / static_cast<ssize_t>(sizeof(recs[0])); ++i) cookies.push_back(recs[i].cookie);
  const uint32_t count = static_cast<uint32_t>(cookies.size());
  (void)!::write(report, &count, sizeof count);
  if (count) (void)!::write(report, cookies.data(), count * sizeof(uint32_t));
  for (;;) ::pause();
}

// Forks a reader of `fault_fd`; returns its pid and the cookies it holds (read before it is killed).
pid_t spawnReader(int fault_fd, std::vector<uint32_t>& cookies) {
  int p[2];
  if (::pipe(p) != 0) return -1;
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::close(p[0]);
    readAndHold(fault_fd, p[1]);
  }
  ::close(p[1]);
  uint32_t count = 0;
  if (pid > 0 && ::read(p[0], &count, sizeof count) == sizeof count && count > 0) {
    cookies.resize(count);
    (void)!::read(p[0], cookies.data(), count * sizeof(uint32_t));
  }
  ::close(p[0]);
  return pid;
}

bool killAndReap(pid_t pid) {
  if (pid <= 0 || ::kill(pid, SIGKILL) != 0) return false;
  int status = 0;
  for (int i = 0; i < 1000; ++i) {  // up to 10 s: the exit teardown must not hang
    if (::waitpid(pid, &status, WNOHANG) == pid) return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    ::usleep(10000);
  }
  return false;
}

void runDeathChecks() {
  // 1. A VMM owns the iommufd and the FAULT object; the router process (a forked reader sharing the
  //    fault fd, as after an SCM_RIGHTS hand-over) reads two groups and is SIGKILLed.
  const int ifd = ::open("/dev/iommu", O_RDWR | O_CLOEXEC);
  check(ifd >= 0, "death.open_iommufd");
  if (ifd < 0) return;
  FaultSetup f = makeFaultSetup(ifd);
  check(f.ok, "death.setup_fault_hwpt");
  if (!f.ok) return;
  trigger(ifd, f.dev.dev_id, 0, 10, 1, 0x10000);
  trigger(ifd, f.dev.dev_id, 0, 11, 1, 0x11000);
  trigger(ifd, f.dev.dev_id, 0, 12, 1, 0x12000);
  std::vector<uint32_t> held;
  const pid_t reader = spawnReader(f.fault_fd, held);
  check(held.size() == 3, "death.reader_holds_groups", std::to_string(held.size()) + " cookies");
  check(killAndReap(reader), "death.reader_sigkilled");
  if (held.size() != 3) return;
  // The groups the dead reader held are still pending: closing (a copy of) a FAULT fd answers
  // nothing in 6.12 (iommufd_fault_fops_release only drops a reference).
  check(writeRaw(f.fault_fd, {{held[0], kabi::kPageRespInvalid}}) == 8, "death.fd_close_answers_nothing",
        "a cookie of the dead reader is still writable");
  // Whoever owns the iommufd answers the rest by detaching the device (replace → auto-response).
  check(mockReplace(ifd, f.dev.stdev, f.ioas) == 0, "death.owner_detaches");
  check(writeRaw(f.fault_fd, {{held[1], kabi::kPageRespInvalid}}) == -EINVAL &&
            writeRaw(f.fault_fd, {{held[2], kabi::kPageRespInvalid}}) == -EINVAL,
        "death.detach_answered_the_rest", "cookies now refused: the kernel answered them INVALID");
  ::close(f.fault_fd);
  destroyRaw(ifd, f.hwpt);
  destroyRaw(ifd, f.parent);
  destroyRaw(ifd, f.dev.stdev);
  check(destroyRaw(ifd, f.fault_id) == 0, "death.fault_destroyed_after_close");

  // 2. The router process owns everything (opened /dev/iommu itself, like iopfd with its own
  //    iommufd) and is SIGKILLed holding groups: exit closes the iommufd, which destroys the FAULT
  //    object (iommufd_fault_destroy answers every pending group INVALID) and the mock device. Nobody
  //    outside can see those groups; what can be checked is that the teardown completes and the
  //    kernel stays healthy.
  int p[2];
  check(::pipe(p) == 0, "death.pipe");
  const pid_t owner = ::fork();
  if (owner == 0) {
    ::close(p[0]);
    const int own = ::open("/dev/iommu", O_RDWR | O_CLOEXEC);
    FaultSetup g = own >= 0 ? makeFaultSetup(own) : FaultSetup{};
    if (g.ok) {
      for (uint32_t i = 0; i < 8; ++i) trigger(own, g.dev.dev_id, 0, 20 + i, 1, 0x20000 + i * 0x1000);
    }
    readAndHold(g.ok ? g.fault_fd : -1, p[1]);
  }
  ::close(p[1]);
  uint32_t count = 0;
  const bool got = ::read(p[0], &count, sizeof count) == sizeof count;
  std::vector<uint32_t> owned(count);
  if (count) (void)!::read(p[0], owned.data(), count * sizeof(uint32_t));
  ::close(p[0]);
  check(got && count == 8, "death.owner_holds_groups", std::to_string(count) + " cookies");
  check(killAndReap(owner), "death.owner_sigkilled_teardown_completes");
  // The iommufd still works for everyone else.
  FaultSetup h = makeFaultSetup(ifd);
  check(h.ok && trigger(ifd, h.dev.dev_id, 0, 30, 1, 0x30000) == 0, "death.kernel_healthy_after");
  ::close(ifd);  // destroys h's objects (and answers its group) the same way
}

// --- benchmark ----------------------------------------------------------------------------------------
struct BenchResult {
  uint64_t groups = 0;
  double seconds = 0;
  int64_t p50 = 0, p99 = 0;
};

struct LatencyBook {
  std::vector<int64_t> t0 = std::vector<int64_t>(512, 0);
  std::vector<int64_t> samples;
  std::atomic<uint64_t> answered{0};
  void done(uint32_t grpid) {
    samples.push_back(nowNs() - t0[grpid % 512]);
    answered.fetch_add(1, std::memory_order_release);
  }
};

// Closed loop: keeps `window` groups outstanding, for `seconds`.
BenchResult drive(int ifd, uint32_t dev_id, LatencyBook& book, double seconds, uint32_t window) {
  book.samples.clear();
  book.samples.reserve(1 << 21);
  book.answered.store(0);  // the previous run was fully drained
  uint64_t triggered = 0;
  const int64_t start = nowNs(), end = start + static_cast<int64_t>(seconds * 1e9);
  while (nowNs() < end) {
    if (triggered - book.answered.load(std::memory_order_acquire) < window) {
      const uint32_t grpid = static_cast<uint32_t>(triggered % 512);
      book.t0[grpid] = nowNs();
      trigger(ifd, dev_id, 0, grpid, 1, 0x100000 + triggered * 64);
      ++triggered;
    } else {
      std::this_thread::yield();
    }
  }
  while (book.answered.load(std::memory_order_acquire) < triggered) std::this_thread::yield();
  BenchResult r;
  r.seconds = (nowNs() - start) / 1e9;
  r.groups = triggered;
  std::vector<int64_t> s = book.samples;
  if (!s.empty()) {
    std::nth_element(s.begin(), s.begin() + s.size() / 2, s.end());
    r.p50 = s[s.size() / 2];
    std::nth_element(s.begin(), s.begin() + s.size() * 99 / 100, s.end());
    r.p99 = s[s.size() * 99 / 100];
  }
  return r;
}

class EchoHandler final : public Handler {
 public:
  std::string_view name() const override { return "echo"; }
  Verdict handle(const GroupView&, const CompletionHandle&) override {
    return Verdict::respond(ResponseCode::kSuccess);
  }
};

void runBench(double seconds, uint32_t window) {
  IommufdBackendOptions opts;
  opts.reader_thread = true;
  auto created = IommufdBackend::create(opts);
  if (!created.ok()) {
    std::printf("IOPF-BENCH: cannot create backend: %s\n", std::string(created.status().message()).c_str());
    return;
  }
  IommufdBackend& backend = **created;
  const int ifd = backend.iommufd();
  auto ioas = backend.allocIoas();
  MockDevice d = mockDomain(ifd, *ioas);
  auto parent = backend.allocHwpt({.dev_id = d.dev_id, .pt_id = *ioas, .flags = kabi::kHwptAllocNestParent});
  auto fault = backend.allocFaultQueue();
  kabi::IommuHwptSelftest data;
  auto hwpt = backend.allocHwpt({.dev_id = d.dev_id, .pt_id = *parent, .fault_id = *fault,
                                 .data_type = kabi::kHwptDataSelftest,
                                 .data = std::span(reinterpret_cast<const uint8_t*>(&data), sizeof data)});
  if (!hwpt.ok() || mockReplace(ifd, d.stdev, *hwpt) != 0) {
    std::printf("IOPF-BENCH: setup failed\n");
    return;
  }
  backend.noteAttached(d.dev_id, *hwpt);
  const int fd = backend.faultFd(*fault);

  // 1. The hand-written loop a VMM would write: poll → read → write SUCCESS per record.
  LatencyBook hand_book;
  std::atomic<bool> hand_stop{false};
  std::thread hand([&] {
    std::vector<kabi::IommuHwptPgfault> recs(256);
    std::vector<kabi::IommuHwptPageResponse> resp(256);
    while (!hand_stop.load(std::memory_order_relaxed)) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 1) <= 0) continue;
      const ssize_t n = ::read(fd, recs.data(), recs.size() * 40);
      if (n <= 0) continue;
      const size_t k = n / 40;
      for (size_t i = 0; i < k; ++i) resp[i] = {recs[i].cookie, kabi::kPageRespSuccess};
      (void)!::write(fd, resp.data(), k * 8);
      for (size_t i = 0; i < k; ++i) hand_book.done(recs[i].grpid);
    }
  });
  (void)drive(ifd, d.dev_id, hand_book, 0.3, window);  // warm-up
  BenchResult hand_r = drive(ifd, d.dev_id, hand_book, seconds, window);
  hand_stop = true;
  hand.join();

  // 2. The router on the same fault fd: threaded, deadlines, stats and events on.
  LatencyBook router_book;
  backend.setWriteObserver([&](const WriteRecord& w) {
    if (w.accepted) router_book.done(w.grpid);
  });
  RouterOptions ro;
  ro.shards = 1;
  ro.idle_spin_ns = 0;  // 2 vCPUs shared by driver, reader and shard: spinning steals the driver's
  Router router(ro);
  (void)router.addBackend(backend);
  auto dev = backend.addDevice(d.dev_id, {.name = "bench"});
  auto dom = router.addDomain({.name = "bench", .kind = DomainKind::kNested});
  (void)router.setChain(*dom, {std::make_shared<EchoHandler>()});
  (void)router.attach(*dev, std::nullopt, *dom);
  (void)drive(ifd, d.dev_id, router_book, 0.3, window);
  BenchResult router_r = drive(ifd, d.dev_id, router_book, seconds, window);
  const IommufdStats st = backend.stats();
  router.shutdown();

  // 3. The router run to completion on the I/O thread (RouterOptions::threaded = false): one loop
  //    polls the fault fd, routes and answers, like the hand-written loop, with the same routing,
  //    deadlines, stats and events. The deployment for one fault queue per core.
  BenchResult inline_r;
  {
    IommufdBackendOptions iopts;
    iopts.reader_thread = false;
    auto inline_created = IommufdBackend::create(iopts);
    if (!inline_created.ok()) {
      std::printf("IOPF-BENCH: cannot create the inline backend\n");
      return;
    }
    IommufdBackend& ib = **inline_created;
    // The same FAULT object, adopted by a second backend instance on a dup of its fd.
    if (!ib.adoptFaultQueue(*fault, ::dup(fd)).ok()) {
      std::printf("IOPF-BENCH: cannot adopt the fault queue\n");
      return;
    }
    LatencyBook inline_book;
    ib.setWriteObserver([&](const WriteRecord& w) {
      if (w.accepted) inline_book.done(w.grpid);
    });
    RouterOptions io;
    io.shards = 1;
    io.threaded = false;
    Router inline_router(io);
    (void)inline_router.addBackend(ib);
    auto idev = ib.addDevice(d.dev_id, {.name = "bench"});
    auto idom = inline_router.addDomain({.name = "bench", .kind = DomainKind::kNested});
    (void)inline_router.setChain(*idom, {std::make_shared<EchoHandler>()});
    (void)inline_router.attach(*idev, std::nullopt, *idom);
    std::atomic<bool> inline_stop{false};
    std::thread loop([&] {
      while (!inline_stop.load(std::memory_order_relaxed)) {
        ib.pollOnce(1);
        inline_router.runUntilIdle();
      }
    });
    (void)drive(ifd, d.dev_id, inline_book, 0.3, window);
    inline_r = drive(ifd, d.dev_id, inline_book, seconds, window);
    inline_stop = true;
    loop.join();
    inline_router.shutdown();
  }

  const double hand_rate = hand_r.groups / hand_r.seconds;
  const double router_rate = router_r.groups / router_r.seconds;
  const double inline_rate = inline_r.groups / inline_r.seconds;
  const double ratio = router_rate / hand_rate;
  const double inline_ratio = inline_rate / hand_rate;
  utsname uts{};
  ::uname(&uts);
  std::printf("IOPF-BENCH-JSON-BEGIN\n");
  std::printf(
      "{\"mode\":\"iommufd\",\"kernel\":\"%s\",\"accel\":\"tcg\",\"seconds\":%.2f,\"window\":%u,"
      "\"router\":{\"groups\":%lu,\"groups_per_s\":%.0f,\"p50_ns\":%ld,\"p99_ns\":%ld,"
      "\"write_calls\":%lu,\"responses_written\":%lu,\"read_calls\":%lu},"
      "\"router_inline\":{\"groups\":%lu,\"groups_per_s\":%.0f,\"p50_ns\":%ld,\"p99_ns\":%ld},"
      "\"hand_loop\":{\"groups\":%lu,\"groups_per_s\":%.0f,\"p50_ns\":%ld,\"p99_ns\":%ld},"
      "\"throughput_ratio\":%.3f,\"inline_throughput_ratio\":%.3f,\"target_ratio\":0.9,"
      "\"meets_target\":%s}\n",
      uts.release, seconds, window, router_r.groups, router_rate, router_r.p50, router_r.p99,
      st.write_calls, st.responses_written, st.read_calls, inline_r.groups, inline_rate, inline_r.p50,
      inline_r.p99, hand_r.groups, hand_rate, hand_r.p50, hand_r.p99, ratio, inline_ratio,
      std::max(ratio, inline_ratio) >= 0.9 ? "true" : "false");
  std::printf("IOPF-BENCH-JSON-END\n");
  std::fflush(stdout);
}

void setupInit() {
  ::mkdir("/dev", 0755);
  ::mkdir("/proc", 0755);
  ::mount("devtmpfs", "/dev", "devtmpfs", 0, nullptr);
  ::mount("proc", "/proc", "proc", 0, nullptr);
  const int console = ::open("/dev/console", O_RDWR);
  if (console >= 0) {
    ::dup2(console, 0);
    ::dup2(console, 1);
    ::dup2(console, 2);
    if (console > 2) ::close(console);
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
}

}  // namespace

int main(int argc, char** argv) {
  const bool as_init = ::getpid() == 1;
  if (as_init) setupInit();
  double seconds = 2.0;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--bench-seconds") == 0) seconds = std::atof(argv[i + 1]);
  }
  std::printf("IOPF-KERNEL-TEST: start\n");
  runChecks();
  runDeathChecks();
  if (g_failed == 0) {
    std::printf("IOPF-KERNEL-TEST: VERDICT PASS (%d checks)\n", g_checks.load());
  } else {
    std::printf("IOPF-KERNEL-TEST: VERDICT FAIL (%d of %d checks failed)\n", g_failed.load(),
                g_checks.load());
  }
  std::fflush(stdout);
  if (seconds > 0) runBench(seconds, 64);
  std::printf("IOPF-KERNEL-TEST: done\n");
  std::fflush(stdout);
  if (as_init) {
    ::sync();
    ::reboot(RB_POWER_OFF);
  }
  return g_failed == 0 ? 0 : 1;
}
