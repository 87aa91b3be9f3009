// A manual router (no threads, ManualClock) with one nested domain whose chain is a TestHandler,
// and a QemuSocketBackend whose devices are attached to that domain as they appear.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "iopf/clock.h"
#include "iopf/handler.h"
#include "iopf/router.h"
#include "qemu_socket_backend.h"
#include "raw_peer.h"

namespace iopf::qemu_socket::testing {

// Addresses with this bit are answered INVALID, others SUCCESS; in defer mode every group is
// deferred and its handle kept.
inline constexpr uint64_t kInvalidBit = uint64_t{1} << 40;

class TestHandler final : public Handler {
 public:
  std::string_view name() const override { return "test"; }
  Verdict handle(const GroupView& g, const CompletionHandle& h) override {
    std::lock_guard lk(mu_);
    ++groups_;
    if (defer_) {
      deferred_.push_back(h);
      return Verdict::defer();
    }
    return Verdict::respond((g.requests.back().addr & kInvalidBit) != 0 ? ResponseCode::kInvalid : ResponseCode::kSuccess);
  }
  void setDefer(bool d) {
    std::lock_guard lk(mu_);
    defer_ = d;
  }
  std::vector<CompletionHandle> deferred() {
    std::lock_guard lk(mu_);
    return deferred_;
  }
  uint64_t groups() {
    std::lock_guard lk(mu_);
    return groups_;
  }

 private:
  std::mutex mu_;
  bool defer_ = false;
  std::vector<CompletionHandle> deferred_;
  uint64_t groups_ = 0;
};

struct RouterHarness {
  explicit RouterHarness(const std::string& tag, bool threaded = false, unsigned shards = 1) {
    RouterOptions o;
    o.threaded = threaded;
    o.shards = shards;
    if (!threaded) o.clock = &clock;
    router = std::make_unique<Router>(o);
    DomainSpec d;
    d.name = "vm";
    d.kind = DomainKind::kNested;  // PASID faults route through the RID attachment (R6)
    domain = *router->addDomain(d);
    handler = std::make_shared<TestHandler>();
    EXPECT_TRUE(router->setChain(domain, {handler}).ok());
    QemuSocketBackend::Options bo;
    bo.socket_path = tempSocketPath(tag);
    bo.on_device = [this](const VmmDeviceEvent& e) {
      std::lock_guard lk(events_mu);
      events.push_back(e);
      if (e.added) {
        EXPECT_TRUE(router->attach(e.device, std::nullopt, domain).ok());
      }
    };
    backend = std::make_unique<QemuSocketBackend>(bo);
    auto id = router->addBackend(*backend);
    EXPECT_TRUE(id.ok()) << id.status();
  }
  ~RouterHarness() { router->shutdown(); }

  // Waits until the backend has handed `records` records to the router, then runs it dry.
  void pump(uint64_t records) {
    EXPECT_TRUE(waitUntil([&] { return backend->stats().records_in >= records; }))
        << "records_in " << backend->stats().records_in << " < " << records;
    router->runUntilIdle();
  }
  std::vector<VmmDeviceEvent> deviceEvents() {
    std::lock_guard lk(events_mu);
    return events;
  }

  ManualClock clock;
  // Declared before the router: the backend outlives it.
  std::unique_ptr<QemuSocketBackend> backend;
  std::unique_ptr<Router> router;
  DomainId domain = 0;
  std::shared_ptr<TestHandler> handler;
  std::mutex events_mu;
  std::vector<VmmDeviceEvent> events;
};

inline PgfaultRecord record(uint32_t dev_id, uint32_t grpid, uint32_t cookie, bool last, uint64_t addr = 0x1000,
                            std::optional<uint32_t> pasid = std::nullopt) {
  PgfaultRecord r;
  r.flags = (last ? kPgfaultLastPage : 0) | (pasid ? kPgfaultPasidValid : 0);
  r.dev_id = dev_id;
  r.pasid = pasid.value_or(0);
  r.grpid = grpid;
  r.perm = perm::kRead;
  r.addr = addr;
  r.cookie = cookie;
  return r;
}

inline p2::DeviceAdd device(uint32_t dev_id, uint8_t pasid_bits = 20, uint8_t flags = 0) {
  p2::DeviceAdd a;
  a.dev_id = dev_id;
  a.rid = static_cast<uint16_t>(0x100 + dev_id);
  a.pasid_bits = pasid_bits;
  a.flags = flags;
  a.virt_id = 0x1000 + dev_id;
  return a;
}

}  // namespace iopf::qemu_socket::testing
