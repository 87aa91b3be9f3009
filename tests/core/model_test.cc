// Seeded, randomized model-based test of the router against a simple reference model.
//
// Exact: the router runs in manual mode with a manual clock; after every operation the shards are
// run to idle, so the model can predict the one response of every group (code, origin, delivery,
// size) and every counter. At the end (after shutdown) it checks: every group that completed
// assembly got exactly one response, none for non-last, stop-marker or discarded requests, nothing is
// left open, and the router's stats equal what the model observed.
//
// Threaded: the same kind of traffic against threaded shards with deferred answers, detaches and
// operator verdicts racing from other threads; checks the invariants that do not depend on timing.
//
// IOPF_MODEL_OPS and IOPF_MODEL_SEED override the operation count and seed.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "iopf/in_memory_backend.h"
#include "iopf/router.h"

namespace iopf {
namespace {

constexpr int64_t kMs = 1'000'000;

uint64_t envOr(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::strtoull(v, nullptr, 10) : fallback;
}

// Handler behaviours, chosen per group by the LAST request's address (addr & 0xf).
enum Behaviour : uint32_t {
  kSuccess0 = 0, kSuccess3 = 3,
  kInvalid0 = 4, kInvalid1 = 5,
  kContinue0 = 6, kContinue1 = 7,
  kDefer0 = 8, kDefer3 = 11,
  kThrow = 12,
  kCompleteThenRespond = 13,
  kBadCode = 14,
  kCompleteFailureThenDefer = 15,
};

// Shared by the actor handler and the test: handles of deferred groups, by cookie.
struct HandleBook {
  std::mutex mu;
  std::map<uint32_t, CompletionHandle> handles;
  std::map<uint32_t, GroupId> ids;
};

class Observer final : public Handler {
 public:
  std::string_view name() const override { return "observer"; }
  Verdict handle(const GroupView&, const CompletionHandle&) override { return Verdict::proceed(); }
};

class Actor final : public Handler {
 public:
  explicit Actor(HandleBook& book) : book_(book) {}
  std::string_view name() const override { return "actor"; }
  Verdict handle(const GroupView& g, const CompletionHandle& c) override {
    const uint32_t b = static_cast<uint32_t>(g.requests.back().addr & 0xf);
    {
      std::lock_guard lk(book_.mu);
      book_.ids[*g.cookie] = g.id;
      if (b >= kDefer0 && b <= kDefer3) book_.handles[*g.cookie] = c;
    }
    if (b <= kSuccess3) return Verdict::respond(ResponseCode::kSuccess);
    if (b <= kInvalid1) return Verdict::respond(ResponseCode::kInvalid);
    if (b <= kContinue1) return Verdict::proceed();
    if (b <= kDefer3) return Verdict::defer();
    if (b == kThrow) throw std::runtime_error("actor throws");
    if (b == kCompleteThenRespond) {
      c.complete(ResponseCode::kSuccess);
      return Verdict::respond(ResponseCode::kInvalid);
    }
    if (b == kBadCode) return Verdict{Verdict::Kind::kRespond, static_cast<ResponseCode>(9)};
    c.complete(ResponseCode::kFailure);
    return Verdict::defer();
  }

 private:
  HandleBook& book_;
};

struct MAttach {
  DomainId domain = kNoDomain;
  uint64_t serial = 0;
};

struct MDevice {
  DeviceId id = 0;
  int backend = 0;  // 0: wire (assembles, drops stop markers); 1: whole groups, kernel auto-responds
  bool live = true;
  uint32_t pri_allocation = 0;
  std::map<uint32_t, std::vector<uint64_t>> partials;  // grpid → buffered addrs
  size_t buffered = 0;
  uint64_t outstanding = 0;
  std::map<uint32_t, int> open_per_grpid;
  std::optional<MAttach> rid;
  std::map<uint32_t, MAttach> pasids;
};

struct MDomain {
  DomainId id = 0;
  DomainSpec spec;
  uint64_t open = 0;
};

struct MGroup {
  DeviceId device = 0;
  int backend = 0;
  uint32_t grpid = 0;
  size_t size = 0;
  bool open = false;
  bool counted = false;
  bool dispatched = false;
  uint32_t behaviour = 0;
  DomainId domain = kNoDomain;
  uint64_t serial = 0;
  int64_t deadline = 0;
  ResponseCode code = ResponseCode::kInvalid;
  Origin origin = Origin::kDefault;
  Delivery delivery = Delivery::kSend;
};

class Model {
 public:
  explicit Model(uint64_t seed) : rng_(seed) {
    RouterOptions o;
    o.shards = 2;
    o.threaded = false;
    o.clock = &clock_;
    o.event_capacity = 1 << 12;
    router_ = std::make_unique<Router>(o);
    backends_[0] = std::make_unique<InMemoryBackend>();
    backends_[1] = std::make_unique<InMemoryBackend>(
        Backend::Capabilities{.whole_groups = true, .kernel_auto_responds_on_detach = true});
    for (auto& b : backends_) EXPECT_TRUE(router_->addBackend(*b).ok());
    for (int i = 0; i < 6; ++i) addDevice(i % 3 == 2 ? 1 : 0);
    const std::vector<std::tuple<DomainKind, int64_t, ResponseCode, ResponseCode, uint32_t>> specs = {
        {DomainKind::kPaging, 3 * kMs, ResponseCode::kInvalid, ResponseCode::kInvalid, 0},
        {DomainKind::kSva, 7 * kMs, ResponseCode::kInvalid, ResponseCode::kSuccess, 6},
        {DomainKind::kNested, 2 * kMs, ResponseCode::kSuccess, ResponseCode::kInvalid, 0},
        {DomainKind::kPaging, 20 * kMs, ResponseCode::kInvalid, ResponseCode::kFailure, 3},
    };
    for (const auto& [kind, deadline, timeout_code, default_code, max_open] : specs) {
      MDomain d;
      d.spec.name = "d" + std::to_string(domains_.size());
      d.spec.kind = kind;
      d.spec.deadline_ns = deadline;
      d.spec.timeout_code = timeout_code;
      d.spec.default_code = default_code;
      d.spec.max_open_groups = max_open;
      d.id = *router_->addDomain(d.spec);
      EXPECT_TRUE(router_->setChain(d.id, {std::make_shared<Observer>(), std::make_shared<Actor>(book_)}).ok());
      domains_.push_back(d);
    }
  }

  void run(uint64_t ops) {
    for (uint64_t i = 0; i < ops && !::testing::Test::HasFatalFailure(); ++i) {
      const int op = pick(0, 999);
      if (op < 450) {
        deliverOp();
      } else if (op < 650) {
        completeOp();
      } else if (op < 780) {
        advanceOp();
      } else if (op < 900) {
        attachOp();
      } else if (op < 930) {
        detachOp();
      } else if (op < 960) {
        operatorOp();
      } else if (op < 985) {
        discardOp();
      } else if (op < 987) {
        removeOp();
      } else {
        deliverUnknownOp();
      }
      compact();
    }
    router_->shutdown();
    for (auto& [cookie, g] : groups_) {
      if (g.open) finish(g, ResponseCode::kInvalid, Origin::kShutdown, Delivery::kSend);
    }
  }

  void verify() {
    std::map<uint32_t, Response> seen;
    for (int b = 0; b < 2; ++b) {
      for (const Response& r : backends_[b]->responses()) {
        ASSERT_TRUE(r.cookie.has_value()) << "response without cookie: group " << r.group;
        auto [it, fresh] = seen.emplace(*r.cookie, r);
        ASSERT_TRUE(fresh) << "second response for cookie " << *r.cookie;
      }
    }
    ASSERT_EQ(seen.size(), groups_.size());
    std::array<uint64_t, kOriginCount> by_origin{};
    for (const auto& [cookie, g] : groups_) {
      auto it = seen.find(cookie);
      ASSERT_NE(it, seen.end()) << "no response for cookie " << cookie;
      const Response& r = it->second;
      ASSERT_EQ(r.origin, g.origin) << "cookie " << cookie << " behaviour " << g.behaviour;
      ASSERT_EQ(r.code, g.code) << "cookie " << cookie << " origin " << toString(g.origin);
      ASSERT_EQ(r.delivery, g.delivery) << "cookie " << cookie;
      ASSERT_EQ(r.request_count, g.size) << "cookie " << cookie;
      ASSERT_EQ(r.device, g.device);
      ASSERT_EQ(r.grpid, g.grpid);
      ++by_origin[static_cast<int>(g.origin)];
    }
    const StatsSnapshot s = router_->stats();
    EXPECT_EQ(s.open_groups, 0u);
    EXPECT_EQ(s.groups, groups_.size());
    EXPECT_EQ(s.responses, groups_.size());
    EXPECT_EQ(s.responses_by_origin, by_origin);
    EXPECT_EQ(s.refused_completions, refused_);
    EXPECT_EQ(s.protocol_errors, protocol_errors_);
    EXPECT_EQ(s.stop_markers, stop_markers_);
    EXPECT_EQ(s.partial_discarded, partial_discarded_);
    EXPECT_EQ(s.dropped_requests, dropped_);
    uint64_t handler_refused = 0;
    for (const auto& h : s.handlers) handler_refused += h.refused;
    EXPECT_EQ(handler_refused, refused_ - operator_refused_);
    std::cout << "model: " << groups_.size() << " groups, origins:";
    for (int o = 0; o < kOriginCount; ++o) std::cout << ' ' << toString(static_cast<Origin>(o)) << '=' << by_origin[o];
    std::cout << ", refused=" << refused_ << ", protocol_errors=" << protocol_errors_
              << ", stop_markers=" << stop_markers_ << ", discarded=" << partial_discarded_ << '\n';
  }

 private:
  int pick(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }
  template <typename T>
  T& pickFrom(std::vector<T>& v) { return v[static_cast<size_t>(pick(0, static_cast<int>(v.size()) - 1))]; }

  void addDevice(int backend) {
    MDevice d;
    d.backend = backend;
    d.pri_allocation = static_cast<uint32_t>(std::vector<int>{0, 8, 24}[devices_.size() % 3]);
    DeviceSpec spec;
    spec.name = "dev" + std::to_string(devices_.size());
    spec.backend_handle = devices_.size();
    spec.pri_allocation = d.pri_allocation;
    spec.pasid_bits = 4;
    d.id = *backends_[backend]->sink().addDevice(spec);
    devices_.push_back(d);
  }

  MDevice& liveDevice() {
    for (;;) {
      MDevice& d = pickFrom(devices_);
      if (d.live) return d;
    }
  }

  void finish(MGroup& g, ResponseCode code, Origin origin, Delivery delivery) {
    g.open = false;
    g.code = code;
    g.origin = origin;
    g.delivery = delivery;
    if (g.counted) {
      MDevice& d = deviceById(g.device);
      d.outstanding -= g.size;
      --d.open_per_grpid[g.grpid];
      --domainById(g.domain).open;
    }
  }
  MDevice& deviceById(DeviceId id) {
    for (auto& d : devices_) {
      if (d.id == id) return d;
    }
    std::abort();
  }
  MDomain& domainById(DomainId id) { return domains_[id - domains_.front().id]; }

  std::optional<MAttach> route(const MDevice& d, std::optional<uint32_t> pasid) {
    if (pasid) {
      if (auto it = d.pasids.find(*pasid); it != d.pasids.end()) return it->second;
      if (d.rid && domainById(d.rid->domain).spec.kind == DomainKind::kNested) return d.rid;
      return std::nullopt;
    }
    return d.rid;
  }

  void deliverOp() {
    MDevice& d = liveDevice();
    std::vector<PageRequest> batch;
    std::vector<uint32_t> new_groups;
    const int n = pick(1, 8);
    for (int i = 0; i < n; ++i) {
      PageRequest r;
      r.device = d.id;
      r.grpid = static_cast<uint32_t>(pick(0, 11));
      if (pick(0, 1) == 1) r.pasid = static_cast<uint32_t>(pick(0, 3));
      r.perm = perm::kRead | (pick(0, 1) ? perm::kWrite : 0);
      const int kind = pick(0, 9);
      r.last = kind >= 3;
      if (kind == 9) r.perm = 0;  // stop marker on the wire backend
      r.addr = (static_cast<uint64_t>(pick(0, 1 << 20)) << 12) | static_cast<uint64_t>(pick(0, 15));
      if (r.last) r.cookie = ++cookie_serial_;
      batch.push_back(r);
      // The model's view of the same request.
      if (d.backend == 0 && isStopMarker(r)) {
        ++stop_markers_;
        continue;
      }
      if (!r.last) {
        const uint32_t limit = d.pri_allocation != 0 ? d.pri_allocation : 4096;
        if (d.buffered >= limit) {
          ++protocol_errors_;
        } else {
          d.partials[r.grpid].push_back(r.addr);
          ++d.buffered;
        }
        continue;
      }
      MGroup g;
      g.device = d.id;
      g.backend = d.backend;
      g.grpid = r.grpid;
      g.behaviour = static_cast<uint32_t>(r.addr & 0xf);
      g.size = 1;
      if (auto it = d.partials.find(r.grpid); it != d.partials.end()) {
        g.size += it->second.size();
        d.buffered -= it->second.size();
        d.partials.erase(it);
      }
      if (d.open_per_grpid[r.grpid] > 0) ++protocol_errors_;
      const std::optional<MAttach> rt = route(d, r.pasid);
      if (!rt) {
        g.code = ResponseCode::kInvalid;
        g.origin = Origin::kNoDomain;
      } else {
        MDomain& dom = domainById(rt->domain);
        g.domain = dom.id;
        g.serial = rt->serial;
        if ((d.pri_allocation != 0 && d.outstanding + g.size > d.pri_allocation) ||
            (dom.spec.max_open_groups != 0 && dom.open >= dom.spec.max_open_groups)) {
          g.code = ResponseCode::kInvalid;
          g.origin = Origin::kOverload;
        } else {
          g.open = true;
          g.counted = true;
          g.deadline = clock_.now() + dom.spec.deadline_ns;
          d.outstanding += g.size;
          ++d.open_per_grpid[r.grpid];
          ++dom.open;
          new_groups.push_back(*r.cookie);
        }
      }
      groups_.emplace(*r.cookie, g);
    }
    backends_[d.backend]->sink().deliver(batch);
    router_->runUntilIdle();
    // The chain ran for every routed group.
    for (uint32_t cookie : new_groups) {
      MGroup& g = groups_.at(cookie);
      g.dispatched = true;
      const uint32_t b = g.behaviour;
      const MDomain& dom = domainById(g.domain);
      if (b <= kSuccess3) {
        finish(g, ResponseCode::kSuccess, Origin::kHandler, Delivery::kSend);
      } else if (b <= kInvalid1) {
        finish(g, ResponseCode::kInvalid, Origin::kHandler, Delivery::kSend);
      } else if (b <= kContinue1) {
        finish(g, dom.spec.default_code, Origin::kDefault, Delivery::kSend);
      } else if (b <= kDefer3) {
        deferred_.push_back(cookie);
      } else if (b == kThrow || b == kBadCode) {
        finish(g, ResponseCode::kInvalid, Origin::kHandlerError, Delivery::kSend);
      } else if (b == kCompleteThenRespond) {
        finish(g, ResponseCode::kSuccess, Origin::kHandler, Delivery::kSend);
        ++refused_;
      } else {
        finish(g, ResponseCode::kFailure, Origin::kHandler, Delivery::kSend);
      }
    }
  }

  void deliverUnknownOp() {
    PageRequest r;
    r.device = 60000;
    r.last = true;
    r.perm = perm::kRead;
    backends_[0]->sink().deliver(std::span<const PageRequest>(&r, 1));
    ++dropped_;
  }

  // Open deferred groups stay in deferred_; answered ones move to a bounded list of recent ones,
  // whose handles are used again for late and duplicate answers.
  void compact() {
    size_t keep = 0;
    for (uint32_t cookie : deferred_) {
      if (groups_.at(cookie).open) {
        deferred_[keep++] = cookie;
      } else {
        closed_.push_back(cookie);
        if (closed_.size() > 256) closed_.pop_front();
      }
    }
    deferred_.resize(keep);
  }

  uint32_t pickHandleCookie() {
    if (!closed_.empty() && (deferred_.empty() || pick(0, 4) == 0)) {
      return closed_[static_cast<size_t>(pick(0, static_cast<int>(closed_.size()) - 1))];
    }
    return pickFrom(deferred_);
  }

  void completeOp() {
    if (deferred_.empty() && closed_.empty()) return;
    const uint32_t cookie = pickHandleCookie();
    MGroup& g = groups_.at(cookie);
    CompletionHandle h;
    {
      std::lock_guard lk(book_.mu);
      h = book_.handles.at(cookie);
    }
    const int c = pick(0, 9);
    const auto code = c < 5 ? ResponseCode::kSuccess : c < 8 ? ResponseCode::kInvalid
                      : c < 9 ? ResponseCode::kFailure : static_cast<ResponseCode>(7);
    const bool expect = g.open;
    ASSERT_EQ(h.complete(code), expect) << "cookie " << cookie;
    if (expect) {
      if (static_cast<int>(code) == 7) {
        finish(g, ResponseCode::kInvalid, Origin::kHandlerError, Delivery::kSend);
      } else {
        finish(g, code, Origin::kHandler, Delivery::kSend);
      }
    } else {
      ++refused_;
    }
    router_->runUntilIdle();
  }

  void advanceOp() {
    clock_.advance(pick(0, 4) * kMs);
    const int64_t now = clock_.now();
    router_->runUntilIdle();
    for (uint32_t cookie : deferred_) {
      MGroup& g = groups_.at(cookie);
      if (g.open && g.deadline <= now) {
        finish(g, domainById(g.domain).spec.timeout_code, Origin::kTimeout, Delivery::kSend);
      }
    }
  }

  void drainSerial(MDevice& d, uint64_t serial) {
    for (uint32_t cookie : deferred_) {
      MGroup& g = groups_.at(cookie);
      if (g.open && g.device == d.id && g.serial == serial) {
        finish(g, ResponseCode::kInvalid, Origin::kDetach,
               d.backend == 1 ? Delivery::kKernelAnswered : Delivery::kSend);
      }
    }
  }

  void attachOp() {
    MDevice& d = liveDevice();
    MDomain& dom = pickFrom(domains_);
    std::optional<uint32_t> pasid;
    if (pick(0, 2) > 0) pasid = static_cast<uint32_t>(pick(0, 3));
    std::optional<MAttach>* rid = pasid ? nullptr : &d.rid;
    MAttach* cur = nullptr;
    if (rid != nullptr) {
      if (*rid) cur = &**rid;
    } else if (auto it = d.pasids.find(*pasid); it != d.pasids.end()) {
      cur = &it->second;
    }
    auto epoch = router_->attach(d.id, pasid, dom.id);
    ASSERT_TRUE(epoch.ok()) << epoch.status();
    if (cur != nullptr && cur->domain == dom.id) {
      ASSERT_EQ(*epoch, cur->serial);
      return;
    }
    if (cur != nullptr) drainSerial(d, cur->serial);
    const MAttach fresh{dom.id, *epoch};
    if (rid != nullptr) {
      *rid = fresh;
    } else {
      d.pasids[*pasid] = fresh;
    }
    router_->runUntilIdle();
  }

  void detachOp() {
    MDevice& d = liveDevice();
    std::optional<uint32_t> pasid;
    if (pick(0, 1) == 1) pasid = static_cast<uint32_t>(pick(0, 3));
    const absl::Status st = router_->detach(d.id, pasid);
    std::optional<MAttach> old;
    if (pasid) {
      if (auto it = d.pasids.find(*pasid); it != d.pasids.end()) {
        old = it->second;
        d.pasids.erase(it);
      }
    } else {
      old = d.rid;
      d.rid.reset();
    }
    ASSERT_EQ(st.ok(), old.has_value()) << st;
    if (old) drainSerial(d, old->serial);
    router_->runUntilIdle();
  }

  void operatorOp() {
    if (deferred_.empty() && closed_.empty()) return;
    const uint32_t cookie = pickHandleCookie();
    MGroup& g = groups_.at(cookie);
    GroupId id;
    {
      std::lock_guard lk(book_.mu);
      id = book_.ids.at(cookie);
    }
    const absl::Status st = router_->respond(id, ResponseCode::kInvalid, "model");
    if (g.open) {
      ASSERT_TRUE(st.ok()) << st;
      finish(g, ResponseCode::kInvalid, Origin::kOperator, Delivery::kSend);
    } else {
      ASSERT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
      ++refused_;
      ++operator_refused_;
    }
    router_->runUntilIdle();
  }

  void discardOp() {
    const int b = pick(0, 1);
    backends_[b]->sink().discardPartial();
    for (auto& d : devices_) {
      if (d.backend != b || !d.live) continue;
      partial_discarded_ += d.buffered;
      d.buffered = 0;
      d.partials.clear();
    }
  }

  void removeOp() {
    MDevice& d = liveDevice();
    ASSERT_TRUE(backends_[d.backend]->sink().removeDevice(d.id).ok());
    d.live = false;
    partial_discarded_ += d.buffered;
    d.buffered = 0;
    d.partials.clear();
    d.rid.reset();
    d.pasids.clear();
    for (uint32_t cookie : deferred_) {
      MGroup& g = groups_.at(cookie);
      if (g.open && g.device == d.id) {
        finish(g, ResponseCode::kInvalid, Origin::kDetach,
               d.backend == 1 ? Delivery::kKernelAnswered : Delivery::kSend);
      }
    }
    router_->runUntilIdle();
    addDevice(d.backend);
  }

  std::mt19937_64 rng_;
  ManualClock clock_{1'000'000'000};
  std::unique_ptr<Router> router_;
  std::array<std::unique_ptr<InMemoryBackend>, 2> backends_;
  HandleBook book_;
  std::vector<MDevice> devices_;
  std::vector<MDomain> domains_;
  std::map<uint32_t, MGroup> groups_;
  std::vector<uint32_t> deferred_;
  std::deque<uint32_t> closed_;
  uint32_t cookie_serial_ = 0;
  uint64_t refused_ = 0, operator_refused_ = 0, protocol_errors_ = 0, stop_markers_ = 0,
           partial_discarded_ = 0, dropped_ = 0;
};

TEST(RouterModel, ExactAgainstTheReferenceModel) {
  const uint64_t ops = envOr("IOPF_MODEL_OPS", 1'000'000);
  const uint64_t seed = envOr("IOPF_MODEL_SEED", 20261123);
  std::cout << "model: " << ops << " operations, seed " << seed << '\n';
  Model model(seed);
  model.run(ops);
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  model.verify();
}

// Threaded shards; deferred answers, operator verdicts and detaches race from other threads.
TEST(RouterModel, ThreadedInvariantsUnderRaces) {
  const uint64_t groups_target = envOr("IOPF_MODEL_THREADED_GROUPS", 200'000);
  InMemoryBackend backend;
  RouterOptions o;
  o.shards = 2;
  o.idle_spin_ns = 0;
  Router router(o);
  ASSERT_TRUE(router.addBackend(backend).ok());
  HandleBook book;
  std::vector<DeviceId> devs;
  for (int i = 0; i < 4; ++i) {
    DeviceSpec s;
    s.name = "t" + std::to_string(i);
    s.backend_handle = static_cast<uint64_t>(i);
    s.pasid_bits = 4;
    devs.push_back(*backend.sink().addDevice(s));
  }
  std::vector<DomainId> doms;
  for (int i = 0; i < 3; ++i) {
    DomainSpec s;
    s.name = "t" + std::to_string(i);
    s.deadline_ns = (i + 1) * 2 * kMs;
    doms.push_back(*router.addDomain(s));
    ASSERT_TRUE(router.setChain(doms.back(), {std::make_shared<Observer>(), std::make_shared<Actor>(book)}).ok());
  }
  for (DeviceId d : devs) ASSERT_TRUE(router.attach(d, std::nullopt, doms[d % 3]).ok());

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> completer_wins{0};
  std::thread completer([&] {
    std::mt19937 rng(7);
    while (!stop.load()) {
      std::vector<std::pair<uint32_t, CompletionHandle>> hs;
      {
        std::lock_guard lk(book.mu);
        hs.assign(book.handles.begin(), book.handles.end());
        book.handles.clear();
      }
      for (auto& [cookie, h] : hs) {
        if (h.complete(rng() % 2 ? ResponseCode::kSuccess : ResponseCode::kInvalid)) ++completer_wins;
        h.complete(ResponseCode::kSuccess);  // duplicate: must be refused
      }
      std::this_thread::yield();
    }
  });
  std::thread admin([&] {
    std::mt19937 rng(11);
    while (!stop.load()) {
      const DeviceId d = devs[rng() % devs.size()];
      const DomainId dom = doms[rng() % doms.size()];
      if (rng() % 3 == 0) {
        (void)router.detach(d, std::nullopt);
      } else {
        (void)router.attach(d, std::nullopt, dom);
      }
      std::vector<GroupInfo> open = router.outstanding({.limit = 4});
      for (const auto& g : open) (void)router.respond(g.id, ResponseCode::kInvalid, "race");
      std::this_thread::yield();
    }
  });
  std::mt19937 rng(3);
  uint32_t cookie = 0;
  uint64_t last_requests = 0, partials = 0;
  std::vector<PageRequest> batch;
  while (cookie < groups_target) {
    batch.clear();
    const DeviceId d = devs[rng() % devs.size()];
    for (int i = 0; i < 16; ++i) {
      PageRequest r;
      r.device = d;
      r.grpid = rng() % 32;
      r.perm = perm::kRead;
      r.last = rng() % 4 != 0;
      r.addr = rng() & 0xfff;
      if (r.last) {
        r.cookie = ++cookie;
        ++last_requests;
      } else {
        ++partials;
      }
      batch.push_back(r);
    }
    backend.sink().deliver(batch);
  }
  stop = true;
  completer.join();
  admin.join();
  router.shutdown();
  const auto rs = backend.responses();
  std::set<uint32_t> cookies;
  for (const Response& r : rs) {
    ASSERT_TRUE(r.cookie.has_value());
    ASSERT_TRUE(cookies.insert(*r.cookie).second) << "second response for cookie " << *r.cookie;
  }
  EXPECT_EQ(cookies.size(), last_requests);  // one per group, none for the partials
  const StatsSnapshot s = router.stats();
  EXPECT_EQ(s.open_groups, 0u);
  EXPECT_EQ(s.responses, last_requests);
  EXPECT_EQ(s.groups, last_requests);
  uint64_t by_origin = 0;
  for (uint64_t n : s.responses_by_origin) by_origin += n;
  EXPECT_EQ(by_origin, last_requests);
  std::cout << "threaded: " << last_requests << " groups, " << partials << " partial requests, "
            << completer_wins.load() << " deferred wins, " << s.refused_completions << " refused\n";
}

}  // namespace
}  // namespace iopf
