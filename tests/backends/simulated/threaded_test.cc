// The simulated backend with real threads: feeders, router shards and sim_guest completion threads
// run concurrently (run under TSan by scripts/test.sh through the "core" label). Runs are bounded by
// a target count of groups, not by sleeping and hoping.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "scenario.h"
#include "simulation.h"
#include "soft_page_table.h"

namespace iopf::sim {
namespace {

// Waits (bounded) until `done()` holds.
template <typename Fn>
bool waitFor(Fn&& done, std::chrono::seconds limit = std::chrono::seconds(60)) {
  const auto until = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

constexpr const char* kMixed = R"({
  "name": "threaded",
  "seed": 3,
  "router": {"shards": 2},
  "backend": {"feeders": 2, "idle_spin_us": 5},
  "domains": [
    {"name": "host", "kind": "paging", "address_space": [{"base": "0x100000", "size": "4MiB"}],
     "chain": [{"name": "sim_resolver"}]},
    {"name": "vm", "kind": "nested", "address_space": [{"base": "0x100000", "size": "4MiB"}],
     "chain": [{"name": "sim_guest", "delay_us": 20}]},
    {"name": "bad", "kind": "paging", "chain": [{"name": "fixed:FAILURE"}]}
  ],
  "devices": [
    {"name": "nic", "count": 4, "pri_allocation": 16,
     "workload": {"base": "0x100000", "size": "4MiB", "group_size": {"min": 1, "max": 4}}},
    {"name": "vf", "count": 3, "pri_allocation": 8, "pasid_bits": 8, "pasids": [1, 2],
     "workload": {"kind": "zipf", "base": "0x100000", "size": "4MiB", "hot_pages": 64}},
    {"name": "flaky", "pri_allocation": 4, "pri_reenable_after_ms": 1,
     "workload": {"base": "0x100000", "size": "4MiB"}}
  ],
  "attachments": [{"device": "nic*", "domain": "host"}, {"device": "vf*", "domain": "vm"},
                  {"device": "flaky", "domain": "bad"}],
  "injections": [
    {"device": "nic0", "kind": "lost_last", "at_ms": 1, "every_ms": 3},
    {"device": "nic1", "kind": "overflow", "at_ms": 2, "every_ms": 3},
    {"device": "nic2", "kind": "duplicate_prgi", "at_ms": 1, "every_ms": 2},
    {"device": "nic3", "kind": "burst", "at_ms": 1, "every_ms": 4, "count": 40},
    {"device": "vf0", "kind": "stop_marker", "pasid": 2, "at_ms": 2},
    {"device": "vf1", "kind": "unplug", "at_ms": 5}
  ]
})";

TEST(SimulatedThreaded, MixedTortureRunKeepsTheDeviceAndRouterViewsConsistent) {
  auto scenario = parseScenario(kMixed, "threaded.json");
  ASSERT_TRUE(scenario.ok()) << scenario.status();
  SimulationOptions o;
  o.report_to_stderr = true;
  auto sim = Simulation::create(*scenario, o);
  ASSERT_TRUE(sim.ok()) << sim.status();
  Router& router = (*sim)->router();
  SimulatedBackend& backend = (*sim)->backend();
  ASSERT_TRUE((*sim)->start().ok());
  ASSERT_TRUE(waitFor([&] {
    const SimTotals t = backend.totals();
    return router.stats().responses > 20'000 && t.unplugged_devices == 1 &&
           t.counters[Counter::kIommuAutoResponses] > 0 && t.counters[Counter::kDuplicateResponses] > 0 &&
           t.counters[Counter::kPriReenabled] > 0;
  }));
  (*sim)->stop();  // router shutdown: every open group answered, guests stopped

  const StatsSnapshot rs = router.stats();
  const SimTotals t = backend.totals();
  EXPECT_EQ(backend.bogusReportCount(), 0u);
  EXPECT_EQ(t.counters[Counter::kBogusResponses], 0u);
  EXPECT_EQ(t.counters[Counter::kPasidMismatches], 0u);
  EXPECT_EQ(t.counters[Counter::kCountMismatches], 0u);
  EXPECT_EQ(t.unknown_device_responses, 0u);
  // Every response the router handed out reached a device and was applied.
  EXPECT_EQ(t.counters[Counter::kResponses], rs.responses);
  // After the drain only groups whose LAST was lost are still waiting at the devices.
  EXPECT_EQ(t.open_groups, t.lost_groups);
  EXPECT_EQ(rs.open_groups, 0u);
  // The injections did what they say.
  EXPECT_GT(rs.partial_discarded, 0u);
  EXPECT_GT(rs.protocol_errors, 0u);
  EXPECT_GT(rs.responses_by_origin[static_cast<int>(Origin::kOverload)], 0u);
  EXPECT_GE(rs.stop_markers, 1u);
  EXPECT_GT(rs.responses_by_origin[static_cast<int>(Origin::kHandler)], 0u);
  EXPECT_GT(t.counters[Counter::kPriDisabled], 1u);
  EXPECT_GT(t.counters[Counter::kCompletedAccesses], 0u);
  EXPECT_GT(backend.latency().count, 0u);
}

TEST(SimulatedThreaded, RunToCompletionOnTheFeederThread) {
  auto scenario = parseScenario(kMixed, "threaded.json");
  ASSERT_TRUE(scenario.ok()) << scenario.status();
  SimulationOptions o;
  o.run_to_completion = true;  // no shard threads: the feeder runs the router after each pass
  auto sim = Simulation::create(*scenario, o);
  ASSERT_TRUE(sim.ok()) << sim.status();
  Router& router = (*sim)->router();
  SimulatedBackend& backend = (*sim)->backend();
  ASSERT_TRUE((*sim)->start().ok());
  ASSERT_TRUE(waitFor([&] {
    return backend.totals().counters[Counter::kResponses] > 20'000 &&
           backend.totals().counters[Counter::kIommuAutoResponses] > 0;
  }));
  (*sim)->stop();
  const SimTotals t = backend.totals();
  EXPECT_EQ(backend.bogusReportCount(), 0u);
  EXPECT_EQ(t.counters[Counter::kResponses], router.stats().responses);
  EXPECT_EQ(t.open_groups, t.lost_groups);
  EXPECT_GT(router.stats().responses_by_origin[static_cast<int>(Origin::kHandler)], 0u);
}

TEST(SimulatedThreaded, PageTableMapsAndLooksUpConcurrently) {
  SoftIoPageTable table(1, DomainKind::kSva);
  constexpr uint64_t kPages = 1 << 14;
  std::atomic<bool> go{false};
  std::vector<std::thread> writers;
  for (int w = 0; w < 2; ++w) {
    writers.emplace_back([&, w] {
      while (!go.load()) {
      }
      for (uint64_t p = static_cast<uint64_t>(w); p < kPages; p += 2) {
        ASSERT_TRUE(table.map(0x7f00'0000'0000 + p * 4096, 4096, perm::kRead | perm::kWrite).ok());
      }
    });
  }
  std::thread reader([&] {
    while (!go.load()) {
    }
    uint64_t seen = 0;
    while (seen < kPages) {
      seen = 0;
      for (uint64_t p = 0; p < kPages; ++p) seen += table.allows(0x7f00'0000'0000 + p * 4096, perm::kWrite);
    }
  });
  go = true;
  for (auto& w : writers) w.join();
  reader.join();
  EXPECT_EQ(table.mappedPages(), kPages);
}

TEST(SimulatedThreaded, ShippedTortureScenarioRunsClean) {
  auto scenario = loadScenario(std::string(IOPF_SOURCE_DIR) + "/scenarios/torture.json");
  ASSERT_TRUE(scenario.ok()) << scenario.status();
  auto sim = Simulation::create(*scenario);
  ASSERT_TRUE(sim.ok()) << sim.status();
  ASSERT_TRUE((*sim)->start().ok());
  Router& router = (*sim)->router();
  ASSERT_TRUE(
      waitFor([&] { return router.stats().responses > 20'000 && router.stats().partial_discarded > 0; }));
  (*sim)->stop();
  const SimTotals t = (*sim)->backend().totals();
  EXPECT_EQ((*sim)->backend().bogusReportCount(), 0u);
  EXPECT_EQ(t.counters[Counter::kResponses], router.stats().responses);
  EXPECT_EQ(t.open_groups, t.lost_groups);
}

// Hot-add under threads: while the feeders, shards and guests of kMixed run, two threads add
// scenarios (new devices on running and on new domains, a new guest domain each) and a third
// observes and injects into whatever exists. The added workloads finish, the running devices keep
// being answered, and the device and router views agree at the end.
std::string addedScenario(int thread, int round) {
  const std::string p = "t" + std::to_string(thread) + "r" + std::to_string(round);
  return R"({"name": ")" + p + R"(", "seed": )" + std::to_string(10 * thread + round) + R"(,
    "domains": [
      {"name": "host"},
      {"name": "guest_)" +
         p + R"(", "kind": "nested", "address_space": [{"base": "0x100000", "size": "4MiB"}],
       "chain": [{"name": "sim_guest", "delay_us": 10}]}
    ],
    "devices": [
      {"name": "nic_)" +
         p + R"(", "count": 2, "pri_allocation": 8,
       "workload": {"base": "0x100000", "size": "4MiB", "group_size": {"min": 1, "max": 3}, "max_groups": 300}},
      {"name": "vf_)" +
         p + R"(", "pri_allocation": 8, "pasid_bits": 4, "pasids": [1, 2],
       "workload": {"base": "0x100000", "size": "4MiB", "max_groups": 200}}
    ],
    "attachments": [{"device": "nic_)" +
         p + R"(*", "domain": "host"},
                    {"device": "vf_)" +
         p + R"(", "domain": "guest_)" + p + R"("}]
  })";
}

TEST(SimulatedThreaded, HotAddWhileTrafficRuns) {
  auto scenario = parseScenario(kMixed, "threaded.json");
  ASSERT_TRUE(scenario.ok()) << scenario.status();
  auto sim = Simulation::create(*scenario, {});
  ASSERT_TRUE(sim.ok()) << sim.status();
  Router& router = (*sim)->router();
  SimulatedBackend& backend = (*sim)->backend();
  ASSERT_TRUE((*sim)->start().ok());
  const uint32_t nic0 = *backend.deviceIndex("nic0");
  ASSERT_TRUE(waitFor([&] { return backend.deviceStatus(nic0).counters[Counter::kResponses] > 1000; }));
  const uint64_t nic0_before = backend.deviceStatus(nic0).counters[Counter::kResponses];

  constexpr int kThreads = 2, kRounds = 3;
  std::atomic<int> adders_done{0};
  std::vector<std::vector<ScenarioAddition>> additions(kThreads);
  std::vector<std::thread> adders;
  for (int t = 0; t < kThreads; ++t) {
    adders.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r) {
        auto more = parseScenario(addedScenario(t, r), "added.json");
        ASSERT_TRUE(more.ok()) << more.status();
        auto added = (*sim)->addScenario(*more);
        ASSERT_TRUE(added.ok()) << added.status();
        additions[t].push_back(std::move(*added));
      }
      adders_done.fetch_add(1);
    });
  }
  // Reads every device the backend has (hot-added ones included) and pokes them while adds go on.
  std::thread observer([&] {
    uint64_t i = 0;
    while (adders_done.load() < kThreads) {
      const size_t n = backend.deviceCount();
      const SimTotals totals = backend.totals();
      EXPECT_GE(totals.devices, n);
      const auto d = static_cast<uint32_t>(i++ % n);
      (void)backend.deviceStatus(d);
      (void)backend.deviceIndex(backend.deviceConfig(d).name);
      if (i % 64 == 0) {
        EXPECT_TRUE(backend.inject(d, Injection{InjectionKind::kBurst, 4, std::nullopt}).ok());
      }
      std::this_thread::yield();
    }
  });
  for (auto& t : adders) t.join();
  observer.join();

  std::vector<uint32_t> added;
  for (const auto& per_thread : additions) {
    ASSERT_EQ(per_thread.size(), static_cast<size_t>(kRounds));
    for (const ScenarioAddition& a : per_thread) {
      ASSERT_EQ(a.devices.size(), 3u);
      ASSERT_EQ(a.created_domains.size(), 1u);
      ASSERT_EQ(a.groups, std::optional<uint64_t>(300 + 300 + 200));
      for (const auto& d : a.devices) added.push_back(d.index);
    }
  }
  ASSERT_TRUE(waitFor([&] {
    for (uint32_t d : added) {
      if (!backend.deviceStatus(d).workload_done) return false;
    }
    return true;
  }));
  // The devices that ran before the adds kept being answered throughout.
  ASSERT_TRUE(
      waitFor([&] { return backend.deviceStatus(nic0).counters[Counter::kResponses] > nic0_before + 1000; }));
  (*sim)->stop();

  const StatsSnapshot rs = router.stats();
  const SimTotals t = backend.totals();
  EXPECT_EQ(t.devices, 8u + kThreads * kRounds * 3u);
  EXPECT_EQ(backend.bogusReportCount(), 0u);
  EXPECT_EQ(t.counters[Counter::kBogusResponses], 0u);
  EXPECT_EQ(t.unknown_device_responses, 0u);
  EXPECT_EQ(t.counters[Counter::kResponses], rs.responses);
  EXPECT_EQ(t.open_groups, t.lost_groups);
  for (uint32_t d : added) {
    const SimDeviceStatus s = backend.deviceStatus(d);
    EXPECT_GT(s.counters[Counter::kCompletedAccesses], 0u) << s.name;
    EXPECT_EQ(s.open_groups, 0u) << s.name;
  }
}

}  // namespace
}  // namespace iopf::sim
