// Simulation::addScenario and SimulatedBackend's hot-add, driven by hand (manual router, manual
// clock): a scenario's devices join a running simulation, are answered, and the devices that ran
// before go on; every refusal changes nothing.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "iopf/clock.h"
#include "scenario.h"
#include "simulation.h"

namespace iopf::sim {
namespace {

constexpr const char* kBase = R"({
  "name": "base",
  "seed": 1,
  "domains": [{"name": "host", "address_space": [{"base": "0x100000", "size": "1MiB"}],
               "chain": [{"name": "sim_resolver"}]}],
  "devices": [{"name": "nic", "pri_allocation": 8,
               "workload": {"base": "0x100000", "size": "1MiB", "group_size": {"min": 1, "max": 2}}}],
  "attachments": [{"device": "nic", "domain": "host"}]
})";

// Reuses "host" (its own chain says FAILURE: ignored, the running chain stays) and creates "extra".
constexpr const char* kMore = R"({
  "name": "more",
  "seed": 2,
  "domains": [
    {"name": "host", "chain": [{"name": "fixed:FAILURE"}]},
    {"name": "extra", "kind": "sva", "address_space": [{"base": "0x400000", "size": "64KiB"}],
     "chain": [{"name": "sim_resolver"}]}
  ],
  "devices": [
    {"name": "acc", "count": 2, "pasid_bits": 4, "pasids": [1],
     "workload": {"base": "0x400000", "size": "64KiB", "max_groups": 50}},
    {"name": "nic2", "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 30}}
  ],
  "attachments": [{"device": "acc*", "pasid": 1, "domain": "extra"}, {"device": "nic2", "domain": "host"}]
})";

class HotAdd : public ::testing::Test {
 protected:
  void create(std::optional<uint32_t> max_devices = std::nullopt, bool start = true) {
    auto scenario = parseScenario(kBase, "base.json");
    ASSERT_TRUE(scenario.ok()) << scenario.status();
    SimulationOptions o;
    o.threaded = false;
    o.clock = &clock_;
    o.shards = 1;
    o.report_to_stderr = false;
    o.max_devices = max_devices;
    auto sim = Simulation::create(*scenario, o);
    ASSERT_TRUE(sim.ok()) << sim.status();
    sim_ = std::move(*sim);
    if (start) {
      ASSERT_TRUE(sim_->start().ok());
    }
  }
  absl::StatusOr<ScenarioAddition> add(const std::string& json, const std::string& path = "more.json") {
    auto scenario = parseScenario(json, path);
    if (!scenario.ok()) return scenario.status();
    return sim_->addScenario(*scenario);
  }
  SimDeviceStatus status(const std::string& name) {
    auto i = sim_->deviceIndex(name);
    EXPECT_TRUE(i.has_value()) << name;
    return sim_->backend().deviceStatus(i.value_or(0));
  }
  size_t liveDomains() {
    size_t n = 0;
    for (const DomainInfo& d : sim_->router().domains()) n += d.removed ? 0 : 1;
    return n;
  }

  ManualClock clock_;
  std::unique_ptr<Simulation> sim_;
};

TEST_F(HotAdd, AddedDevicesAreAnsweredAndTheRunningOnesGoOn) {
  create();
  for (int i = 0; i < 20; ++i) sim_->step();
  const uint64_t nic_before = status("nic").counters[Counter::kResponses];
  ASSERT_GT(nic_before, 0u);

  auto added = add(kMore);
  ASSERT_TRUE(added.ok()) << added.status();
  ASSERT_EQ(added->devices.size(), 3u);
  EXPECT_EQ(added->devices[0].name, "acc0");
  EXPECT_EQ(added->devices[1].name, "acc1");
  EXPECT_EQ(added->devices[2].name, "nic2");
  ASSERT_EQ(added->created_domains.size(), 1u);
  EXPECT_EQ(added->created_domains[0].first, "extra");
  ASSERT_TRUE(added->groups.has_value());
  EXPECT_EQ(*added->groups, 50u + 50u + 30u);
  EXPECT_EQ(sim_->domainId("extra"), added->created_domains[0].second);
  // The router knows them by the ids reported, with the backend index as their handle.
  for (const auto& d : added->devices) {
    bool found = false;
    for (const DeviceInfo& info : sim_->router().devices()) {
      if (info.id == d.router_id) {
        found = true;
        EXPECT_EQ(info.spec.name, d.name);
        EXPECT_EQ(info.spec.backend_handle, d.index);
      }
    }
    EXPECT_TRUE(found) << d.name;
  }

  for (int round = 0; round < 100'000; ++round) {
    sim_->step();
    if (status("acc0").workload_done && status("acc1").workload_done && status("nic2").workload_done) break;
  }
  for (const char* name : {"acc0", "acc1", "nic2"}) {
    const SimDeviceStatus s = status(name);
    EXPECT_TRUE(s.workload_done) << name;
    EXPECT_GT(s.counters[Counter::kCompletedAccesses], 0u) << name;
    // The running "host" kept its resolver chain: nothing was answered FAILURE.
    EXPECT_EQ(s.counters[Counter::kResponsesFailure], 0u) << name;
    EXPECT_EQ(s.counters[Counter::kGroupsIssued] - s.counters[Counter::kRetryGroups],
              std::string(name) == "nic2" ? 30u : 50u)
        << name;
  }
  EXPECT_GT(status("nic").counters[Counter::kResponses], nic_before);
  sim_->stop();
  const SimTotals t = sim_->backend().totals();
  EXPECT_EQ(sim_->backend().bogusReportCount(), 0u);
  EXPECT_EQ(t.counters[Counter::kResponses], sim_->router().stats().responses);
  EXPECT_EQ(t.open_groups, 0u);
}

TEST_F(HotAdd, RefusalsChangeNothing) {
  create(/*max_devices=*/3);
  const size_t domains = liveDomains();
  // A device name in use.
  std::string dup = kMore;
  dup.replace(dup.find("\"nic2\""), 6, "\"nic\"");
  dup.replace(dup.find("{\"device\": \"nic2\""), 17, "{\"device\": \"nic\"");
  auto st = add(dup);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kAlreadyExists) << st.status();
  EXPECT_NE(st.status().message().find("'nic'"), std::string::npos) << st.status();
  // A running domain of another kind.
  std::string kind = kMore;
  kind.replace(kind.find("{\"name\": \"host\","), 16, "{\"name\": \"host\", \"kind\": \"sva\",");
  st = add(kind);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition) << st.status();
  EXPECT_NE(st.status().message().find("'host'"), std::string::npos) << st.status();
  // A new domain with a plugin handler, and no plugin host.
  std::string plugin = kMore;
  plugin.replace(plugin.find("[{\"name\": \"sim_resolver\"}]"), 26, "[{\"name\": \"plugin:x\"}]");
  st = add(plugin);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kFailedPrecondition) << st.status();
  // 1 running + 3 > 3.
  st = add(kMore);
  EXPECT_EQ(st.status().code(), absl::StatusCode::kResourceExhausted) << st.status();
  EXPECT_EQ(sim_->backend().deviceCount(), 1u);
  EXPECT_EQ(liveDomains(), domains);
  EXPECT_FALSE(sim_->domainId("extra").has_value());

  // Within the limit it works; the backend itself refuses a fourth device.
  std::string two = R"({"name": "two", "domains": [{"name": "host"}],
    "devices": [{"name": "x", "count": 2, "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 3}}],
    "attachments": [{"device": "x*", "domain": "host"}]})";
  auto ok = add(two);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(sim_->backend().deviceCount(), 3u);
  SimDeviceConfig extra;
  extra.name = "y";
  EXPECT_EQ(sim_->backend().addDevice(extra).status().code(), absl::StatusCode::kResourceExhausted);
  // startDevices: a running device, an unknown one.
  const uint32_t x0 = ok->devices[0].index;
  EXPECT_EQ(sim_->backend().startDevices(std::vector<uint32_t>{x0}).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(sim_->backend().startDevices(std::vector<uint32_t>{99}).code(), absl::StatusCode::kNotFound);

  sim_->stop();
  EXPECT_EQ(add(two).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(sim_->backend().addDevice(extra).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(HotAdd, NotBeforeTrafficStarts) {
  create(std::nullopt, /*start=*/false);
  EXPECT_EQ(add(kMore).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(sim_->backend().deviceCount(), 1u);
  EXPECT_EQ(sim_->backend().startDevices(std::vector<uint32_t>{0}).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(HotAdd, UnboundedWorkloadsReportNoGroupCount) {
  create();
  auto added = add(R"({"name": "open", "domains": [{"name": "host"}],
    "devices": [{"name": "z", "workload": {"base": "0x100000", "size": "1MiB", "rate_groups_per_s": 100}}],
    "attachments": [{"device": "z", "domain": "host"}]})");
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_FALSE(added->groups.has_value());
  EXPECT_TRUE(added->created_domains.empty());
}

}  // namespace
}  // namespace iopf::sim
