// One test per router rule (issue "Core fault router"), in manual mode with a manual clock so every
// outcome is deterministic; the last tests run the threaded shards.
#include "iopf/router.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "iopf/in_memory_backend.h"
#include "test_handlers.h"

namespace iopf {
namespace {

using testing::FnHandler;
using testing::respondWith;

constexpr int64_t kMs = 1'000'000;

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override { build({}); }

  void build(Backend::Capabilities caps, unsigned shards = 1) {
    router_.reset();
    backend_ = std::make_unique<InMemoryBackend>(caps);
    RouterOptions o;
    o.shards = shards;
    o.threaded = false;
    o.clock = &clock_;
    o.event_capacity = 1 << 12;
    router_ = std::make_unique<Router>(o);
    ASSERT_TRUE(router_->addBackend(*backend_).ok());
    DeviceSpec spec;
    spec.name = "nic0";
    spec.backend_handle = 42;
    spec.rid = 0x0300;
    spec.pri_allocation = 32;
    spec.pasid_bits = 8;
    spec.needs_pasid = true;
    dev_ = *backend_->sink().addDevice(spec);
    DomainSpec d;
    d.name = "host";
    d.deadline_ns = 10 * kMs;
    dom_ = *router_->addDomain(d);
  }

  PageRequest req(uint32_t grpid, uint64_t addr, bool last, std::optional<uint32_t> pasid = {},
                  std::optional<uint32_t> cookie = {}) {
    PageRequest r;
    r.device = dev_;
    r.grpid = grpid;
    r.addr = addr;
    r.perm = perm::kRead | perm::kWrite;
    r.last = last;
    r.pasid = pasid;
    r.cookie = cookie;
    return r;
  }
  void deliver(std::initializer_list<PageRequest> reqs) {
    std::vector<PageRequest> v(reqs);
    backend_->sink().deliver(v);
  }
  void setChain(std::vector<std::shared_ptr<Handler>> chain, DomainId dom = 0) {
    ASSERT_TRUE(router_->setChain(dom == 0 ? dom_ : dom, std::move(chain)).ok());
  }
  std::vector<Event> allEvents() {
    std::vector<Event> out(4096);
    uint64_t cursor = 1;
    out.resize(router_->events().read(cursor, out));
    return out;
  }

  ManualClock clock_;
  std::unique_ptr<InMemoryBackend> backend_;
  std::unique_ptr<Router> router_;
  DeviceId dev_ = 0;
  DomainId dom_ = 0;
};

TEST_F(RouterTest, SingleRequestGroupIsAnsweredOnceWithTheDeviceIdentity) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  GroupView seen;
  setChain({std::make_shared<FnHandler>("probe", [&](const GroupView& g, const CompletionHandle&) {
    seen = g;
    EXPECT_EQ(g.requests.size(), 1u);
    return Verdict::respond(ResponseCode::kSuccess);
  })});
  deliver({req(5, 0x1234, true, std::nullopt, 0u)});
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].code, ResponseCode::kSuccess);
  EXPECT_EQ(rs[0].origin, Origin::kHandler);
  EXPECT_EQ(rs[0].device, dev_);
  EXPECT_EQ(rs[0].backend_handle, 42u);
  EXPECT_EQ(rs[0].grpid, 5u);
  ASSERT_TRUE(rs[0].cookie.has_value());
  EXPECT_EQ(*rs[0].cookie, 0u);  // cookie 0 is legal (R4)
  EXPECT_FALSE(rs[0].pasid.has_value());
  EXPECT_TRUE(rs[0].needs_pasid);
  EXPECT_EQ(rs[0].request_count, 1u);
  EXPECT_EQ(seen.rid, 0x0300);
  EXPECT_EQ(seen.backend_handle, 42u);
  EXPECT_EQ(seen.domain, dom_);
  EXPECT_EQ(router_->openGroups(), 0u);
}

TEST_F(RouterTest, MultiRequestGroupKeepsArrivalOrderAndNonLastGetNoResponse) {
  ASSERT_TRUE(router_->attach(dev_, 3u, dom_).ok());
  std::vector<uint64_t> addrs;
  setChain({std::make_shared<FnHandler>("order", [&](const GroupView& g, const CompletionHandle&) {
    for (const auto& r : g.requests) addrs.push_back(r.addr);
    return Verdict::respond(ResponseCode::kSuccess);
  })});
  deliver({req(9, 0x1000, false, 3u), req(9, 0x2000, false, 3u)});
  router_->runUntilIdle();
  EXPECT_EQ(backend_->responseCount(), 0u);
  deliver({req(9, 0x3000, true, 3u)});
  router_->runUntilIdle();
  EXPECT_EQ(addrs, (std::vector<uint64_t>{0x1000, 0x2000, 0x3000}));
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].request_count, 3u);
  EXPECT_EQ(rs[0].pasid, std::optional<uint32_t>(3u));
}

TEST_F(RouterTest, StopMarkersAreDroppedWithoutResponse) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({respondWith("ok", ResponseCode::kSuccess)});
  PageRequest stop = req(1, 0, true);
  stop.perm = 0;
  deliver({stop});
  router_->runUntilIdle();
  EXPECT_EQ(backend_->responseCount(), 0u);
  EXPECT_EQ(router_->stats().stop_markers, 1u);
}

TEST_F(RouterTest, DiscardPartialDropsBufferedRequestsWithoutResponse) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  std::vector<size_t> sizes;
  setChain({std::make_shared<FnHandler>("size", [&](const GroupView& g, const CompletionHandle&) {
    sizes.push_back(g.requests.size());
    return Verdict::respond(ResponseCode::kSuccess);
  })});
  deliver({req(1, 0x1000, false), req(2, 0x2000, false)});
  backend_->sink().discardPartial();
  deliver({req(1, 0x3000, true)});
  router_->runUntilIdle();
  EXPECT_EQ(sizes, (std::vector<size_t>{1}));
  EXPECT_EQ(backend_->responseCount(), 1u);
  EXPECT_EQ(router_->stats().partial_discarded, 2u);
}

TEST_F(RouterTest, SecondOpenGroupWithSamePrgiIsAProtocolErrorButBothAreAnswered) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })});
  deliver({req(7, 0x1000, true), req(7, 0x2000, true)});
  router_->runUntilIdle();
  EXPECT_EQ(router_->stats().protocol_errors, 1u);
  EXPECT_EQ(router_->openGroups(), 2u);
  clock_.advance(11 * kMs);
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 2u);
  for (const auto& r : rs) EXPECT_EQ(r.origin, Origin::kTimeout);
}

TEST_F(RouterTest, NoAttachmentIsInvalidAtOnceWithOriginNoDomain) {
  deliver({req(1, 0x1000, true)});
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].code, ResponseCode::kInvalid);
  EXPECT_EQ(rs[0].origin, Origin::kNoDomain);
}

TEST_F(RouterTest, PasidRoutingAndNestedFallbackOnTheRid) {
  DomainSpec sva;
  sva.name = "sva";
  DomainId sva_dom = *router_->addDomain(sva);
  DomainSpec nested;
  nested.name = "guest";
  nested.kind = DomainKind::kNested;
  DomainId guest = *router_->addDomain(nested);
  setChain({respondWith("host", ResponseCode::kSuccess)}, dom_);
  setChain({respondWith("sva", ResponseCode::kSuccess)}, sva_dom);
  setChain({respondWith("guest", ResponseCode::kSuccess)}, guest);
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  ASSERT_TRUE(router_->attach(dev_, 5u, sva_dom).ok());
  // PASID 5 → sva; PASID 6 has no attachment and the RID's domain is not nested → no-domain.
  deliver({req(1, 0x1000, true, 5u), req(2, 0x1000, true, 6u), req(3, 0x1000, true)});
  router_->runUntilIdle();
  auto stats = router_->stats();
  EXPECT_EQ(stats.responses_by_origin[static_cast<int>(Origin::kNoDomain)], 1u);
  // Replace the RID attachment with the nested domain: PASID 6 now routes to it (R6).
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, guest).ok());
  deliver({req(4, 0x1000, true, 6u)});
  router_->runUntilIdle();
  stats = router_->stats();
  std::map<std::string, uint64_t> responds;
  for (const auto& h : stats.handlers) responds[h.name] = h.responds;
  EXPECT_EQ(responds["sva"], 1u);
  EXPECT_EQ(responds["host"], 1u);
  EXPECT_EQ(responds["guest"], 1u);
}

TEST_F(RouterTest, AttachValidatesPasidAgainstTheDevice) {
  auto st = router_->attach(dev_, 1u << 9, dom_);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.status().message().find("PASID bits"), std::string::npos);
  EXPECT_EQ(router_->attach(999, std::nullopt, dom_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(router_->attach(dev_, std::nullopt, 999).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RouterTest, ChainContinuesUntilARespondAndEndsWithTheDefaultCode) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  int second_calls = 0;
  auto observer = std::make_shared<FnHandler>("observer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::proceed();
  });
  auto second = std::make_shared<FnHandler>("second", [&](const GroupView& g, const CompletionHandle&) {
    ++second_calls;
    return g.grpid == 1 ? Verdict::respond(ResponseCode::kSuccess) : Verdict::proceed();
  });
  auto never = std::make_shared<FnHandler>("never", [](const GroupView& g, const CompletionHandle&) {
    EXPECT_NE(g.grpid, 1u);
    return Verdict::proceed();
  });
  setChain({observer, second, never});
  deliver({req(1, 0, true), req(2, 0, true)});
  router_->runUntilIdle();
  EXPECT_EQ(second_calls, 2);
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].origin, Origin::kHandler);
  EXPECT_EQ(rs[0].code, ResponseCode::kSuccess);
  EXPECT_EQ(rs[1].origin, Origin::kDefault);
  EXPECT_EQ(rs[1].code, ResponseCode::kInvalid);
}

TEST_F(RouterTest, ThrowingOrInvalidHandlersAnswerInvalidAndAreCounted) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  auto thrower = std::make_shared<FnHandler>("thrower", [](const GroupView& g, const CompletionHandle&) -> Verdict {
    if (g.grpid == 1) throw std::runtime_error("boom");
    if (g.grpid == 2) return Verdict{Verdict::Kind::kRespond, static_cast<ResponseCode>(9)};
    if (g.grpid == 3) return Verdict{static_cast<Verdict::Kind>(7), ResponseCode::kSuccess};
    return Verdict::respond(ResponseCode::kSuccess);
  });
  setChain({thrower});
  deliver({req(1, 0, true), req(2, 0, true), req(3, 0, true), req(4, 0, true)});
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 4u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(rs[i].code, ResponseCode::kInvalid);
    EXPECT_EQ(rs[i].origin, Origin::kHandlerError);
  }
  EXPECT_EQ(rs[3].code, ResponseCode::kSuccess);
  auto stats = router_->stats();
  ASSERT_EQ(stats.handlers.size(), 1u);
  EXPECT_EQ(stats.handlers[0].errors, 3u);
  EXPECT_EQ(stats.handlers[0].calls, 4u);
}

TEST_F(RouterTest, DeferredCompletionFromAnotherThreadIsExactlyOnce) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  CompletionHandle handle;
  setChain({std::make_shared<FnHandler>("guest", [&](const GroupView&, const CompletionHandle& c) {
    handle = c;
    return Verdict::defer();
  })});
  deliver({req(1, 0, true)});
  router_->runUntilIdle();
  ASSERT_TRUE(handle.valid());
  auto open = router_->outstanding();
  ASSERT_EQ(open.size(), 1u);
  EXPECT_EQ(open[0].state, GroupState::kDeferred);
  ASSERT_EQ(open[0].trace.size(), 1u);
  EXPECT_EQ(open[0].trace[0].handler_name, "guest");
  EXPECT_EQ(open[0].trace[0].verdict, Verdict::Kind::kDefer);

  std::atomic<int> wins{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] { wins += handle.complete(ResponseCode::kSuccess) ? 1 : 0; });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), 1);
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].code, ResponseCode::kSuccess);
  EXPECT_EQ(rs[0].origin, Origin::kHandler);
  EXPECT_FALSE(handle.complete(ResponseCode::kInvalid));
  auto stats = router_->stats();
  EXPECT_EQ(stats.refused_completions, 4u);
  EXPECT_EQ(stats.handlers[0].refused, 4u);
  EXPECT_EQ(stats.handlers[0].deferred_completed, 1u);
  // An operator after completion is refused too.
  EXPECT_EQ(router_->respond(rs[0].group, ResponseCode::kSuccess).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(router_->respond(12345, ResponseCode::kSuccess).code(), absl::StatusCode::kNotFound);
}

TEST_F(RouterTest, CompletionInsideHandleThenRespondIsRefusedNotDoubled) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("eager", [](const GroupView&, const CompletionHandle& c) {
    EXPECT_TRUE(c.complete(ResponseCode::kSuccess));
    return Verdict::respond(ResponseCode::kInvalid);
  })});
  deliver({req(1, 0, true)});
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].code, ResponseCode::kSuccess);
  EXPECT_EQ(router_->stats().refused_completions, 1u);
}

TEST_F(RouterTest, DeadlineAnswersTheTimeoutCodeAndRefusesTheLateAnswer) {
  DomainSpec d;
  d.name = "slow";
  d.deadline_ns = 5 * kMs;
  d.timeout_code = ResponseCode::kSuccess;  // a domain may choose "retry" on timeout
  DomainId slow = *router_->addDomain(d);
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, slow).ok());
  CompletionHandle handle;
  setChain({std::make_shared<FnHandler>("late", [&](const GroupView&, const CompletionHandle& c) {
    handle = c;
    return Verdict::defer();
  })}, slow);
  deliver({req(1, 0, true)});
  router_->runUntilIdle();
  clock_.advance(4 * kMs);
  router_->runUntilIdle();
  EXPECT_EQ(backend_->responseCount(), 0u);
  clock_.advance(2 * kMs);
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].origin, Origin::kTimeout);
  EXPECT_EQ(rs[0].code, ResponseCode::kSuccess);
  EXPECT_FALSE(handle.complete(ResponseCode::kInvalid));
  router_->runUntilIdle();
  EXPECT_EQ(backend_->responseCount(), 1u);
  auto events = allEvents();
  EXPECT_TRUE(std::any_of(events.begin(), events.end(),
                          [](const Event& e) { return e.type == EventType::kTimedOut; }));
  EXPECT_TRUE(std::any_of(events.begin(), events.end(),
                          [](const Event& e) { return e.type == EventType::kCompletionRefused; }));
}

TEST_F(RouterTest, DetachDrainsOpenGroupsAndTellsAutoRespondingBackends) {
  build({.whole_groups = true, .kernel_auto_responds_on_detach = true});
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })});
  deliver({req(1, 0x1000, false, std::nullopt, 7u), req(1, 0x2000, true, std::nullopt, 7u),
           req(2, 0x3000, true, std::nullopt, 8u)});
  router_->runUntilIdle();
  EXPECT_EQ(router_->openGroups(), 2u);
  ASSERT_TRUE(router_->detach(dev_, std::nullopt).ok());
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 2u);
  for (const auto& r : rs) {
    EXPECT_EQ(r.origin, Origin::kDetach);
    EXPECT_EQ(r.code, ResponseCode::kInvalid);
    EXPECT_EQ(r.delivery, Delivery::kKernelAnswered);
  }
  EXPECT_EQ(router_->openGroups(), 0u);
  EXPECT_EQ(router_->detach(dev_, std::nullopt).code(), absl::StatusCode::kNotFound);
}

TEST_F(RouterTest, ReplaceDrainsTheOldDomainAndRoutesNewGroupsToTheNewOne) {
  DomainSpec d;
  d.name = "other";
  DomainId other = *router_->addDomain(d);
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })});
  setChain({respondWith("other", ResponseCode::kSuccess)}, other);
  const uint64_t e1 = *router_->attach(dev_, std::nullopt, dom_);
  deliver({req(1, 0, true)});
  router_->runUntilIdle();
  const uint64_t e2 = *router_->attach(dev_, std::nullopt, other);
  EXPECT_GT(e2, e1);
  deliver({req(2, 0, true)});
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].origin, Origin::kDetach);
  EXPECT_EQ(rs[0].delivery, Delivery::kSend);
  EXPECT_EQ(rs[1].origin, Origin::kHandler);
  EXPECT_EQ(rs[1].code, ResponseCode::kSuccess);
  auto atts = router_->attachments();
  ASSERT_EQ(atts.size(), 1u);
  EXPECT_EQ(atts[0].domain, other);
  EXPECT_EQ(atts[0].epoch, e2);
}

TEST_F(RouterTest, DeviceRemovalDrainsDiscardsAndDropsLaterRequests) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })});
  deliver({req(1, 0, true), req(2, 0, false)});
  router_->runUntilIdle();
  ASSERT_TRUE(backend_->sink().removeDevice(dev_).ok());
  router_->runUntilIdle();
  deliver({req(2, 0, true)});
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].origin, Origin::kDetach);
  auto stats = router_->stats();
  EXPECT_EQ(stats.partial_discarded, 1u);
  EXPECT_EQ(stats.dropped_requests, 1u);
  EXPECT_TRUE(router_->attachments().empty());
  EXPECT_EQ(backend_->sink().removeDevice(dev_).code(), absl::StatusCode::kNotFound);
}

TEST_F(RouterTest, ShutdownAnswersEveryOpenGroupAndStopsBackends) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })});
  deliver({req(1, 0, true), req(2, 0, true), req(3, 0, false)});
  router_->runUntilIdle();
  router_->shutdown();
  EXPECT_TRUE(backend_->stopped());
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 2u);
  for (const auto& r : rs) EXPECT_EQ(r.origin, Origin::kShutdown);
  EXPECT_EQ(router_->openGroups(), 0u);
  router_->shutdown();  // idempotent
}

TEST_F(RouterTest, PriAllocationAndDomainBoundsAnswerOverload) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })});
  // pri_allocation = 32: 32 single-request groups fit, the 33rd is overload.
  std::vector<PageRequest> reqs;
  for (uint32_t i = 0; i < 33; ++i) reqs.push_back(req(i, 0, true));
  backend_->sink().deliver(reqs);
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].origin, Origin::kOverload);
  EXPECT_EQ(rs[0].grpid, 32u);

  DomainSpec d;
  d.name = "tiny";
  d.max_open_groups = 1;
  DomainId tiny = *router_->addDomain(d);
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })}, tiny);
  ASSERT_TRUE(router_->attach(dev_, 1u, tiny).ok());
  clock_.advance(20 * kMs);  // time out the first 32 to release the credits
  router_->runUntilIdle();
  deliver({req(100, 0, true, 1u), req(101, 0, true, 1u)});
  router_->runUntilIdle();
  rs = backend_->responses();
  ASSERT_EQ(rs.size(), 34u);
  EXPECT_EQ(rs.back().origin, Origin::kOverload);
  EXPECT_EQ(rs.back().grpid, 101u);
}

TEST_F(RouterTest, EveryTransitionIsAnEventInOrder) {
  ASSERT_TRUE(router_->attach(dev_, 2u, dom_).ok());
  setChain({respondWith("ok", ResponseCode::kSuccess)});
  deliver({req(4, 0xabc, true, 2u, 11u)});
  router_->runUntilIdle();
  std::vector<EventType> types;
  uint64_t prev = 0;
  for (const Event& e : allEvents()) {
    EXPECT_EQ(e.seq, prev + 1);
    prev = e.seq;
    types.push_back(e.type);
    if (e.type == EventType::kResponded) {
      EXPECT_EQ(e.device, dev_);
      EXPECT_EQ(e.domain, dom_);
      EXPECT_EQ(e.pasid, 2u);
      EXPECT_TRUE(e.flags & event_flag::kPasidValid);
      EXPECT_EQ(e.cookie, 11u);
      EXPECT_EQ(e.addr, 0xabcu);
    }
  }
  EXPECT_EQ(types, (std::vector<EventType>{EventType::kDeviceAdded, EventType::kDomainAdded,
                                           EventType::kAttach, EventType::kChainChanged,
                                           EventType::kRequest, EventType::kGroupQueued,
                                           EventType::kDispatched, EventType::kHandlerVerdict,
                                           EventType::kResponded}));
}

TEST_F(RouterTest, OperatorRespondCompletesAnOpenGroup) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("defer", [](const GroupView&, const CompletionHandle&) {
    return Verdict::defer();
  })});
  deliver({req(1, 0, true)});
  router_->runUntilIdle();
  auto open = router_->outstanding();
  ASSERT_EQ(open.size(), 1u);
  ASSERT_TRUE(router_->group(open[0].id).has_value());
  ASSERT_TRUE(router_->respond(open[0].id, ResponseCode::kSuccess, "manual").ok());
  EXPECT_EQ(router_->respond(open[0].id, ResponseCode::kSuccess).code(),
            absl::StatusCode::kFailedPrecondition);
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].origin, Origin::kOperator);
  EXPECT_FALSE(router_->group(open[0].id).has_value());
}

TEST_F(RouterTest, StatsMatchWhatWasObserved) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  setChain({std::make_shared<FnHandler>("mix", [](const GroupView& g, const CompletionHandle&) {
    return g.grpid % 2 == 0 ? Verdict::respond(ResponseCode::kSuccess) : Verdict::proceed();
  })});
  std::vector<PageRequest> reqs;
  for (uint32_t i = 0; i < 20; ++i) reqs.push_back(req(i, i, true));
  backend_->sink().deliver(reqs);
  clock_.advance(1000);
  router_->runUntilIdle();
  auto s = router_->stats();
  EXPECT_EQ(s.requests, 20u);
  EXPECT_EQ(s.groups, 20u);
  EXPECT_EQ(s.responses, 20u);
  EXPECT_EQ(s.responses_by_code[0], 10u);
  EXPECT_EQ(s.responses_by_code[1], 10u);
  EXPECT_EQ(s.responses_by_origin[static_cast<int>(Origin::kHandler)], 10u);
  EXPECT_EQ(s.responses_by_origin[static_cast<int>(Origin::kDefault)], 10u);
  EXPECT_EQ(s.latency.count, 20u);
  EXPECT_EQ(s.latency.percentile(0.5), 1000u);  // manual clock: every group waited exactly 1 µs
  ASSERT_EQ(s.devices.size(), 1u);
  EXPECT_EQ(s.devices[0].responses_by_code[0], 10u);
  ASSERT_EQ(s.domains.size(), 1u);
  EXPECT_EQ(s.domains[0].groups, 20u);
  EXPECT_EQ(s.domains[0].open_groups, 0u);
  ASSERT_EQ(s.handlers.size(), 1u);
  EXPECT_EQ(s.handlers[0].calls, 20u);
  EXPECT_EQ(s.handlers[0].continues, 10u);
  EXPECT_EQ(s.handlers[0].responds, 10u);
}

TEST_F(RouterTest, PausedDomainHoldsGroupsUntilResumeInArrivalOrder) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  std::vector<uint32_t> seen;
  setChain({std::make_shared<FnHandler>("probe", [&](const GroupView& g, const CompletionHandle&) {
    seen.push_back(g.grpid);
    return Verdict::respond(ResponseCode::kSuccess);
  })});
  auto paused = router_->setDomainPaused(dom_, true);
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_FALSE(paused->was_paused);
  deliver({req(1, 0x1000, true), req(2, 0x2000, true), req(3, 0x3000, true)});
  router_->runUntilIdle();
  EXPECT_TRUE(seen.empty());
  EXPECT_EQ(backend_->responseCount(), 0u);
  EXPECT_EQ(router_->openGroups(), 3u);
  for (const GroupInfo& g : router_->outstanding()) EXPECT_EQ(g.state, GroupState::kQueued);
  EXPECT_TRUE(router_->domains()[0].paused);

  auto resumed = router_->setDomainPaused(dom_, false);
  ASSERT_TRUE(resumed.ok());
  EXPECT_TRUE(resumed->was_paused);
  EXPECT_EQ(resumed->waiting_groups, 3u);
  router_->runUntilIdle();
  EXPECT_EQ(seen, (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(backend_->responseCount(), 3u);
  EXPECT_EQ(router_->openGroups(), 0u);

  std::vector<EventType> pause_events;
  for (const Event& e : allEvents()) {
    if (e.type == EventType::kDomainPaused || e.type == EventType::kDomainResumed) {
      pause_events.push_back(e.type);
      EXPECT_EQ(e.domain, dom_);
    }
  }
  EXPECT_EQ(pause_events, (std::vector<EventType>{EventType::kDomainPaused, EventType::kDomainResumed}));
  EXPECT_EQ(router_->setDomainPaused(999, true).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RouterTest, HeldGroupsStillTimeOutAndAreDrainedByDetachAndOperator) {
  ASSERT_TRUE(router_->attach(dev_, std::nullopt, dom_).ok());
  int calls = 0;
  setChain({std::make_shared<FnHandler>("probe", [&](const GroupView&, const CompletionHandle&) {
    ++calls;
    return Verdict::respond(ResponseCode::kSuccess);
  })});
  ASSERT_TRUE(router_->setDomainPaused(dom_, true).ok());
  deliver({req(1, 0x1000, true)});
  router_->runUntilIdle();
  clock_.advance(11 * kMs);  // past the 10 ms deadline: the pause does not stall the device
  deliver({req(2, 0x2000, true), req(3, 0x3000, true)});
  router_->runUntilIdle();
  auto rs = backend_->responses();
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].grpid, 1u);
  EXPECT_EQ(rs[0].origin, Origin::kTimeout);

  const auto open = router_->outstanding();
  ASSERT_EQ(open.size(), 2u);
  ASSERT_TRUE(router_->respond(open[0].id, ResponseCode::kSuccess).ok());
  router_->runUntilIdle();
  ASSERT_TRUE(router_->detach(dev_, std::nullopt).ok());
  router_->runUntilIdle();
  rs = backend_->responses();
  ASSERT_EQ(rs.size(), 3u);
  EXPECT_EQ(rs[1].origin, Origin::kOperator);
  EXPECT_EQ(rs[2].origin, Origin::kDetach);
  // Resuming releases nothing: every held group was answered exactly once already.
  ASSERT_TRUE(router_->setDomainPaused(dom_, false).ok());
  router_->runUntilIdle();
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(backend_->responseCount(), 3u);
  EXPECT_EQ(router_->openGroups(), 0u);
}

TEST_F(RouterTest, RequestsOfUnknownDevicesAreDroppedAndCounted) {
  PageRequest r = req(1, 0, true);
  r.device = 777;
  deliver({r});
  router_->runUntilIdle();
  EXPECT_EQ(backend_->responseCount(), 0u);
  EXPECT_EQ(router_->stats().dropped_requests, 1u);
}

// Threaded shards: domains on two shards, deferred answers from a foreign thread, quiescence by
// waiting for the exact response count (no sleeps).
TEST(RouterThreaded, TwoShardsAnswerEveryGroupOnce) {
  InMemoryBackend backend;
  RouterOptions o;
  o.shards = 2;
  o.idle_spin_ns = 0;
  Router router(o);
  ASSERT_TRUE(router.addBackend(backend).ok());
  DeviceSpec spec;
  spec.name = "d";
  spec.pasid_bits = 4;
  const DeviceId dev = *backend.sink().addDevice(spec);
  DomainSpec a, b;
  a.name = "a";
  b.name = "b";
  // Far deadlines: this test is about exactly-once under races, not timeouts (a loaded TSan run
  // can take longer than the default second to hand a deferred group to the completer).
  a.deadline_ns = b.deadline_ns = 60'000'000'000;
  const DomainId da = *router.addDomain(a), db = *router.addDomain(b);
  std::mutex mu;
  std::vector<CompletionHandle> deferred;
  ASSERT_TRUE(router.setChain(da, {respondWith("sync", ResponseCode::kSuccess)}).ok());
  ASSERT_TRUE(router.setChain(db, {std::make_shared<FnHandler>("async", [&](const GroupView&, const CompletionHandle& c) {
                                    std::lock_guard lk(mu);
                                    deferred.push_back(c);
                                    return Verdict::defer();
                                  })}).ok());
  ASSERT_TRUE(router.attach(dev, 1u, da).ok());
  ASSERT_TRUE(router.attach(dev, 2u, db).ok());
  constexpr uint32_t kGroups = 2000;
  std::thread completer([&] {
    size_t done = 0;
    while (done < kGroups / 2) {
      std::vector<CompletionHandle> batch;
      {
        std::lock_guard lk(mu);
        batch.swap(deferred);
      }
      for (auto& c : batch) {
        EXPECT_TRUE(c.complete(ResponseCode::kSuccess));
        EXPECT_FALSE(c.complete(ResponseCode::kInvalid));
        ++done;
      }
      std::this_thread::yield();
    }
  });
  for (uint32_t i = 0; i < kGroups; ++i) {
    PageRequest r;
    r.device = dev;
    r.grpid = i % 512;
    r.pasid = 1 + (i % 2);
    r.perm = perm::kRead;
    r.last = true;
    backend.sink().deliver(std::span<const PageRequest>(&r, 1));
  }
  completer.join();
  ASSERT_EQ(backend.waitForResponses(kGroups, std::chrono::seconds(30)), kGroups);
  router.shutdown();
  auto rs = backend.responses();
  EXPECT_EQ(rs.size(), kGroups);
  std::set<GroupId> ids;
  for (const auto& r : rs) {
    EXPECT_EQ(r.code, ResponseCode::kSuccess);
    ids.insert(r.group);
  }
  EXPECT_EQ(ids.size(), kGroups);
  EXPECT_EQ(router.stats().refused_completions, kGroups / 2);
}

}  // namespace
}  // namespace iopf
