// Plugin handlers inside a router's chain: per-call budgets, error counting, quarantine and
// re-enable, deferred answers from plugin threads (double answers refused by the core), stand-ins
// for plugins that failed, and concurrent domains on threaded shards.
#include <gtest/gtest.h>

#include <set>

#include "iopf/plugin_host.h"
#include "plugin_test_util.h"
#include "../core/test_handlers.h"

namespace iopf {
namespace {

using testing::Reports;
using testing::RouterRig;
using testing::respondWith;
using testing::waitFor;

const std::string kGood = IOPF_FIXTURE_GOOD;
const std::string kInitFails = IOPF_FIXTURE_INIT_FAILS;
const std::string kSlow = IOPF_FIXTURE_SLOW;
const std::string kThrows = IOPF_FIXTURE_THROWS;
const std::string kDefers = IOPF_FIXTURE_DEFERS;

// Budgets are far beyond any scheduling delay here: only the tests about budgets set small ones.
PluginHostOptions options(Reports& reports) {
  PluginHostOptions o;
  o.report = reports.sink();
  o.call_budget_ns = testing::kGenerousBudgetNs;
  return o;
}

const HandlerStats* handlerStats(const StatsSnapshot& s, const std::string& name) {
  for (const HandlerStats& h : s.handlers) {
    if (h.name == name) return &h;
  }
  return nullptr;
}

// Routes one group per call and returns its response.
Response routeOne(RouterRig& rig, uint32_t grpid) {
  const size_t before = rig.backend.responseCount();
  rig.group(grpid, 0x1000ull * (grpid + 1));
  EXPECT_EQ(rig.backend.responseCount(), before + 1);
  return rig.backend.responses().back();
}

TEST(PluginChain, ASlowPluginIsMeasuredAgainstItsBudgetQuarantinedAndReenabled) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kSlow).ok());
  ASSERT_TRUE(host.start().ok());
  PluginHandlerConfig config;
  config.json = R"({"sleep_ms": 20})";   // always far past the budget
  config.call_budget_ns = 2'000'000;     // 2 ms
  config.quarantine_after = 3;
  auto slow = host.createHandler("slow", rig.domain, config);
  ASSERT_TRUE(slow.ok()) << slow.status();
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*slow, respondWith("fallback", ResponseCode::kSuccess)}).ok());

  for (uint32_t i = 0; i < 3; ++i) {
    const Response r = routeOne(rig, i);
    EXPECT_EQ(r.code, ResponseCode::kInvalid) << i;       // overran: INVALID even though it said SUCCESS
    EXPECT_EQ(r.origin, Origin::kHandlerError) << i;
  }
  for (uint32_t i = 3; i < 5; ++i) {
    const Response r = routeOne(rig, i);
    EXPECT_EQ(r.code, ResponseCode::kSuccess) << i;       // quarantined: passed on to the fallback
    EXPECT_EQ(r.origin, Origin::kHandler) << i;
  }
  PluginHandlerStatus st = host.status("slow")->handlers.at(0);
  EXPECT_EQ(st.calls, 3u);
  EXPECT_EQ(st.overruns, 3u);
  EXPECT_EQ(st.errors, 0u);
  EXPECT_EQ(st.skipped, 2u);
  EXPECT_TRUE(st.quarantined);
  EXPECT_EQ(st.call_budget_ns, 2'000'000);
  EXPECT_EQ(host.counter("slow", "calls"), 3u);  // the plugin itself saw exactly three calls
  const auto quarantined = reports.messages(PluginReportKind::kQuarantined, "slow");
  ASSERT_EQ(quarantined.size(), 1u);
  const std::string head = "plugin 'slow' handler of domain 1 quarantined after 3 consecutive failures (last: call took ";
  const std::string tail = " ms, budget 2.000 ms); its groups pass on to the rest of the chain until re-enabled";
  EXPECT_EQ(quarantined[0].substr(0, head.size()), head) << quarantined[0];
  EXPECT_EQ(quarantined[0].substr(quarantined[0].size() - tail.size()), tail) << quarantined[0];
  EXPECT_EQ(st.last_failure.rfind("call took ", 0), 0u);

  ASSERT_TRUE(host.reenable("slow", rig.domain).ok());
  EXPECT_EQ(reports.messages(PluginReportKind::kReenabled, "slow"),
            std::vector<std::string>{"plugin 'slow' handler of domain 1 re-enabled"});
  EXPECT_EQ(host.reenable("slow", rig.domain).message(), "plugin 'slow' handler of domain 1 is not quarantined");
  EXPECT_EQ(host.reenable("slow", 99).code(), absl::StatusCode::kNotFound);
  const Response again = routeOne(rig, 5);
  EXPECT_EQ(again.origin, Origin::kHandlerError);
  st = host.status("slow")->handlers.at(0);
  EXPECT_EQ(st.calls, 4u);
  EXPECT_FALSE(st.quarantined);
  EXPECT_EQ(st.consecutive_failures, 1u);
  // The router counted each failed call as an error of the handler.
  const StatsSnapshot stats = rig.router->stats();
  const HandlerStats* hs = handlerStats(stats, "slow");
  ASSERT_NE(hs, nullptr);
  EXPECT_EQ(hs->calls, 6u);  // 4 into the plugin + 2 skipped while quarantined
  EXPECT_EQ(hs->errors, 4u);
  EXPECT_EQ(rig.backend.responseCount(), 6u);  // no group lost
  rig.router->shutdown();
}

TEST(PluginChain, ExceptionsStopAtTheBoundaryAndCountAsErrors) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kThrows).ok());
  ASSERT_TRUE(host.start().ok());
  PluginHandlerConfig config;
  config.quarantine_after = 2;
  auto h = host.createHandler("throws", rig.domain, config);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*h, respondWith("fallback", ResponseCode::kSuccess)}).ok());
  const Response r1 = routeOne(rig, 0);
  const Response r2 = routeOne(rig, 1);
  const Response r3 = routeOne(rig, 2);
  EXPECT_EQ(r1.code, ResponseCode::kInvalid);
  EXPECT_EQ(r1.origin, Origin::kHandlerError);
  EXPECT_EQ(r2.origin, Origin::kHandlerError);
  EXPECT_EQ(r3.code, ResponseCode::kSuccess);  // quarantined after two in a row
  EXPECT_EQ(r3.origin, Origin::kHandler);
  const PluginHandlerStatus st = host.status("throws")->handlers.at(0);
  EXPECT_EQ(st.errors, 2u);
  EXPECT_EQ(st.overruns, 0u);
  EXPECT_TRUE(st.quarantined);
  EXPECT_EQ(st.last_failure, "the plugin reported an error");
  EXPECT_EQ(host.counter("throws", "sdk_handler_exceptions"), 2u);
  EXPECT_EQ(reports.messages(PluginReportKind::kLog, "throws"),
            (std::vector<std::string>{"handle threw: throws: fixture failure on group " + std::to_string(r1.group),
                                      "handle threw: throws: fixture failure on group " + std::to_string(r2.group)}));
  EXPECT_EQ(reports.messages(PluginReportKind::kQuarantined, "throws"),
            std::vector<std::string>{"plugin 'throws' handler of domain 1 quarantined after 2 consecutive "
                                     "failures (last: the plugin reported an error); its groups pass on to "
                                     "the rest of the chain until re-enabled"});
  rig.router->shutdown();
}

TEST(PluginChain, OnlyConsecutiveFailuresQuarantine) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kThrows).ok());
  PluginHandlerConfig config;
  config.json = R"({"fail_every": 2})";
  config.quarantine_after = 2;
  auto h = host.createHandler("throws", rig.domain, config);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*h}).ok());
  std::vector<Origin> origins;
  for (uint32_t i = 0; i < 6; ++i) origins.push_back(routeOne(rig, i).origin);
  EXPECT_EQ(origins, (std::vector<Origin>{Origin::kHandler, Origin::kHandlerError, Origin::kHandler,
                                          Origin::kHandlerError, Origin::kHandler, Origin::kHandlerError}));
  const PluginHandlerStatus st = host.status("throws")->handlers.at(0);
  EXPECT_EQ(st.errors, 3u);
  EXPECT_FALSE(st.quarantined);
  EXPECT_TRUE(reports.messages(PluginReportKind::kQuarantined).empty());
  rig.router->shutdown();
}

TEST(PluginChain, AHandlerThePluginCannotProvideBecomesAStandInAndNoGroupIsLost) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kThrows).ok());
  EXPECT_FALSE(host.loadFile(kInitFails).ok());
  PluginHandlerConfig config;
  config.json = R"({"throw_in_create": true})";
  config.source = "domains/host.json";
  auto refused = host.createHandler("throws", rig.domain, config);
  EXPECT_EQ(refused.status().message(), "plugin 'throws', domain 1 'host': throws: createHandler refuses (fixture)");

  std::shared_ptr<Handler> a = host.createHandlerOrStandIn("throws", rig.domain, config);
  std::shared_ptr<Handler> b = host.createHandlerOrStandIn("init_fails", rig.domain);
  std::shared_ptr<Handler> c = host.createHandlerOrStandIn("never_loaded", rig.domain);
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->name(), "throws");
  ASSERT_TRUE(rig.router->setChain(rig.domain, {a, b, c}).ok());
  for (uint32_t i = 0; i < 4; ++i) {
    const Response r = routeOne(rig, i);
    EXPECT_EQ(r.code, ResponseCode::kInvalid);
    EXPECT_EQ(r.origin, Origin::kDefault);  // every stand-in passed on; the domain's default answered
  }
  const PluginHandlerStatus st = host.status("throws")->handlers.at(0);
  EXPECT_TRUE(st.stand_in);
  EXPECT_TRUE(st.quarantined);
  EXPECT_EQ(st.skipped, 4u);
  EXPECT_EQ(st.calls, 0u);
  EXPECT_EQ(host.status("never_loaded")->handlers.at(0).last_failure, "plugin 'never_loaded' is not loaded");
  EXPECT_EQ(host.reenable("init_fails", rig.domain).message(),
            "plugin 'init_fails' handler of domain 1 is a stand-in: plugin 'init_fails' is failed: plugin "
            "'init_fails' (" + kInitFails + "): init failed: cannot open /dev/fixture-device: no such device (fixture)");
  EXPECT_EQ(reports.messages(PluginReportKind::kQuarantined, "never_loaded"),
            std::vector<std::string>{"plugin 'never_loaded' handler of domain 1 replaced by a stand-in that "
                                     "passes groups on: plugin 'never_loaded' is not loaded"});
  rig.router->shutdown();
}

TEST(PluginChain, DeferredAnswersFromPluginThreadsAndDoubleAnswersRefused) {
  Reports reports;
  RouterRig rig(/*threaded=*/true);
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kDefers).ok());
  PluginHandlerConfig config;
  config.json = R"({"delay_ms": 1, "twice_every": 2})";
  auto h = host.createHandler("defers", rig.domain, config);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(host.start().ok());  // the plugin's worker starts in post_init
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*h}).ok());
  constexpr uint32_t kGroups = 60;
  for (uint32_t i = 0; i < kGroups; ++i) {
    std::vector<PageRequest> v{rig.request(i, 0x1000ull * i, true)};
    rig.backend.sink().deliver(v);
  }
  ASSERT_EQ(rig.backend.waitForResponses(kGroups, std::chrono::seconds(20)), kGroups);
  ASSERT_TRUE(waitFor([&] { return host.counter("defers", "answers") == kGroups + kGroups / 2; },
                      std::chrono::seconds(20)));
  EXPECT_EQ(host.counter("defers", "completed"), kGroups);
  EXPECT_EQ(host.counter("defers", "refused"), kGroups / 2);
  const std::vector<Response> responses = rig.backend.responses();
  ASSERT_EQ(responses.size(), kGroups);  // exactly one response per group
  std::set<GroupId> ids;
  for (const Response& r : responses) {
    ids.insert(r.group);
    EXPECT_EQ(r.code, ResponseCode::kSuccess);
    EXPECT_EQ(r.origin, Origin::kHandler);
  }
  EXPECT_EQ(ids.size(), kGroups);
  const StatsSnapshot stats = rig.router->stats();
  EXPECT_EQ(stats.refused_completions, kGroups / 2);
  const HandlerStats* hs = handlerStats(stats, "defers");
  ASSERT_NE(hs, nullptr);
  EXPECT_EQ(hs->defers, kGroups);
  EXPECT_EQ(hs->deferred_completed, kGroups);
  EXPECT_EQ(hs->refused, kGroups / 2);
  rig.router->shutdown();
  host.shutdown();
  EXPECT_EQ(host.status("defers")->state, PluginState::kShutDown);
}

TEST(PluginChain, DomainsOnThreadedShardsEachHaveTheirOwnInstance) {
  Reports reports;
  RouterRig rig(/*threaded=*/true, /*shards=*/2);
  DomainSpec d;
  d.name = "second";
  d.shard = 1;
  const DomainId second = *rig.router->addDomain(d);
  DeviceSpec spec;
  spec.name = "nic1";
  spec.backend_handle = 43;
  spec.rid = 0x0400;
  const DeviceId dev2 = *rig.backend.sink().addDevice(spec);
  ASSERT_TRUE(rig.router->attach(dev2, std::nullopt, second).ok());
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kGood).ok());
  ASSERT_TRUE(host.start().ok());
  PluginHandlerConfig invalid;
  invalid.json = R"({"answer": "invalid"})";
  auto a = host.createHandler("good", rig.domain);
  auto b = host.createHandler("good", second, invalid);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*a}).ok());
  ASSERT_TRUE(rig.router->setChain(second, {*b}).ok());
  constexpr uint32_t kPerDevice = 400;
  std::thread t2([&] {
    for (uint32_t i = 0; i < kPerDevice; ++i) {
      PageRequest r;
      r.device = dev2;
      r.grpid = i % 256;
      r.addr = i << 12;
      r.perm = perm::kRead;
      r.last = true;
      std::vector<PageRequest> v{r};
      rig.backend.sink().deliver(v);
      while (rig.router->openGroups() > 200) std::this_thread::yield();
    }
  });
  for (uint32_t i = 0; i < kPerDevice; ++i) {
    std::vector<PageRequest> v{rig.request(i % 256, i << 12, true)};
    rig.backend.sink().deliver(v);
    while (rig.router->openGroups() > 200) std::this_thread::yield();
  }
  t2.join();
  ASSERT_EQ(rig.backend.waitForResponses(2 * kPerDevice, std::chrono::seconds(20)), 2 * kPerDevice);
  size_t success = 0, invalid_count = 0;
  for (const Response& r : rig.backend.responses()) {
    if (r.device == rig.device && r.code == ResponseCode::kSuccess) ++success;
    if (r.device == dev2 && r.code == ResponseCode::kInvalid) ++invalid_count;
  }
  EXPECT_EQ(success, kPerDevice);
  EXPECT_EQ(invalid_count, kPerDevice);
  EXPECT_EQ(host.counter("good", "groups"), 2 * kPerDevice);
  rig.router->shutdown();
  host.shutdown();
}

}  // namespace
}  // namespace iopf
