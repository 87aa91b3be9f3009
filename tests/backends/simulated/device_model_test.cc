// PCIe behaviour of the simulated device model, driven through the real router in manual mode:
// credits, the 512-entry PRGI space, reactions to SUCCESS / INVALID / FAILURE, retries against the
// software I/O page table, needs-PASID, router-bug detection, determinism.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>
#include <tuple>

#include "manual_simulation.h"

namespace iopf::sim {
namespace {

using testing::kMs;
using testing::ManualSimulation;
using testing::oneDeviceScenario;

Response responseFor(const GroupInfo& g, ResponseCode code) {
  Response r;
  r.group = g.id;
  r.device = g.device;
  r.backend_handle = g.backend_handle;
  r.grpid = g.grpid;
  r.pasid = g.pasid;
  r.cookie = g.cookie;
  r.code = code;
  r.origin = Origin::kOperator;
  r.request_count = static_cast<uint32_t>(g.requests.size());
  return r;
}

bool anyReportContains(SimulatedBackend& b, const std::string& text) {
  for (const std::string& r : b.bogusReports()) {
    if (r.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(DeviceModel, CreditsBoundOutstandingRequestsAndReturnOnResponse) {
  ManualSimulation s(
      oneDeviceScenario(R"("pri_allocation": 8, "workload": {"base": "0x100000", "size": "1MiB"})",
                        R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.steps(4);
  SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kGroupsIssued], 8u);
  EXPECT_EQ(st.credits_in_use, 8u);
  EXPECT_EQ(st.open_groups, 8u);
  EXPECT_GE(st.counters[Counter::kCreditStalls], 1u);
  StatsSnapshot rs = s.router().stats();
  EXPECT_EQ(rs.devices[0].outstanding_requests, 8u);
  EXPECT_EQ(rs.devices[0].overload, 0u);  // the device never exceeds its allocation

  // The deadline answers INVALID; the device aborts the accesses and spends the credits again.
  s.advance(1001 * kMs);
  s.steps(2);
  st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kResponsesInvalid], 8u);
  EXPECT_EQ(st.counters[Counter::kAbortedRequests], 8u);
  EXPECT_EQ(st.counters[Counter::kGroupsIssued], 16u);
  EXPECT_EQ(st.credits_in_use, 8u);
  EXPECT_EQ(s.router().stats().responses_by_origin[static_cast<int>(Origin::kTimeout)], 8u);
}

TEST(DeviceModel, AGroupHoldsTheCreditsOfAllItsRequests) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 8, "max_retries": 3,
         "workload": {"base": "0x100000", "size": "1MiB", "group_size": {"min": 4, "max": 4}})",
      R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.steps(3);
  EXPECT_EQ(s.status("dev").counters[Counter::kGroupsIssued], 2u);
  EXPECT_EQ(s.status("dev").credits_in_use, 8u);
  auto open = s.router().outstanding();
  ASSERT_EQ(open.size(), 2u);
  EXPECT_EQ(open[0].requests.size(), 4u);
  // SUCCESS without a mapping: the 4 accesses fault again, as one retry group on the freed credits.
  ASSERT_TRUE(s.router().respond(open[0].id, ResponseCode::kSuccess).ok());
  s.steps(2);
  const SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kResponses], 1u);
  EXPECT_EQ(st.counters[Counter::kRetriedRequests], 4u);
  EXPECT_EQ(st.counters[Counter::kRetryGroups], 1u);
  EXPECT_EQ(st.counters[Counter::kCountMismatches], 0u);
  EXPECT_EQ(st.credits_in_use, 8u);
  EXPECT_EQ(s.router().outstanding().size(), 2u);
}

TEST(DeviceModel, PrgiSpaceHas512EntriesReusedOnlyAfterTheAnswer) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 1024, "max_retries": 1, "workload": {"base": "0x100000", "size": "1MiB"})",
      R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.runUntilIdle();
  SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.open_groups, 512u);
  EXPECT_EQ(st.credits_in_use, 512u);
  EXPECT_GE(st.counters[Counter::kPrgiStalls], 1u);
  auto open = s.router().outstanding();
  ASSERT_EQ(open.size(), 512u);
  std::set<uint32_t> grpids;
  for (const GroupInfo& g : open) grpids.insert(g.grpid);
  EXPECT_EQ(grpids.size(), 512u);
  EXPECT_EQ(*grpids.rbegin(), 511u);
  EXPECT_EQ(s.router().stats().protocol_errors, 0u);

  // Answer the group on PRGI 100: that index, and only it, is free again; the retry takes it.
  const GroupInfo* g100 = nullptr;
  for (const GroupInfo& g : open) {
    if (g.grpid == 100) g100 = &g;
  }
  ASSERT_NE(g100, nullptr);
  const size_t before = s.events(EventType::kRequest).size();
  ASSERT_TRUE(s.router().respond(g100->id, ResponseCode::kSuccess).ok());
  s.runUntilIdle();
  const auto requests = s.events(EventType::kRequest);
  ASSERT_EQ(requests.size(), before + 1);
  EXPECT_EQ(requests.back().grpid, 100u);
  EXPECT_EQ(s.status("dev").open_groups, 512u);
  EXPECT_EQ(s.router().stats().protocol_errors, 0u);
}

TEST(DeviceModel, FailureDisablesPriUntilReenabled) {
  ManualSimulation s(
      oneDeviceScenario(R"("pri_allocation": 4, "workload": {"base": "0x100000", "size": "1MiB"})",
                        R"([{"name": "fixed:FAILURE"}])"));
  ASSERT_TRUE(s.ok());
  s.steps(6);
  SimDeviceStatus st = s.status("dev");
  EXPECT_FALSE(st.pri_enabled);
  EXPECT_EQ(st.counters[Counter::kPriDisabled], 1u);
  EXPECT_EQ(st.counters[Counter::kResponsesFailure], 4u);
  EXPECT_EQ(st.counters[Counter::kAbortedRequests], 4u);
  EXPECT_EQ(st.counters[Counter::kRequestsIssued], 4u);  // nothing after the FAILURE
  EXPECT_EQ(st.credits_in_use, 0u);

  s.inject("dev", {InjectionKind::kReenablePri});
  s.steps(3);
  st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kPriReenabled], 1u);
  EXPECT_EQ(st.counters[Counter::kRequestsIssued], 8u);
  EXPECT_EQ(st.counters[Counter::kPriDisabled], 2u);
  EXPECT_FALSE(st.pri_enabled);
}

TEST(DeviceModel, PriReenablesAfterTheConfiguredDelay) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 1, "pri_reenable_after_ms": 5, "workload": {"base": "0x100000", "size": "1MiB"})",
      R"([{"name": "fixed:FAILURE"}])"));
  ASSERT_TRUE(s.ok());
  s.steps(4);
  EXPECT_EQ(s.counter("dev", Counter::kRequestsIssued), 1u);
  s.advance(4 * kMs);
  s.steps(2);
  EXPECT_EQ(s.counter("dev", Counter::kRequestsIssued), 1u);
  s.advance(1 * kMs);
  s.steps(1);
  EXPECT_EQ(s.counter("dev", Counter::kPriReenabled), 1u);
  EXPECT_EQ(s.counter("dev", Counter::kRequestsIssued), 2u);
}

TEST(DeviceModel, SuccessWithoutAMappingRetriesAtMostMaxRetriesTimes) {
  ManualSimulation s(oneDeviceScenario(
      R"("max_retries": 2, "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 1})",
      R"([{"name": "fixed:SUCCESS"}])"));
  ASSERT_TRUE(s.ok());
  s.runUntilIdle();
  const SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kRequestsIssued], 3u);
  EXPECT_EQ(st.counters[Counter::kRetriedRequests], 2u);
  EXPECT_EQ(st.counters[Counter::kRetryGroups], 2u);
  EXPECT_EQ(st.counters[Counter::kRetryExhausted], 1u);
  EXPECT_EQ(st.counters[Counter::kCompletedAccesses], 0u);
  EXPECT_TRUE(st.workload_done);
  // The same address faulted three times.
  const auto reqs = s.events(EventType::kRequest);
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].addr, reqs[1].addr);
  EXPECT_EQ(reqs[1].addr, reqs[2].addr);
}

TEST(DeviceModel, ResolverMapsThroughTheBackendAndTheRetrySucceeds) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 16, "workload": {"base": "0x100000", "size": "1MiB", "write_ratio": 0.5,
         "group_size": {"min": 1, "max": 3}, "max_groups": 20})",
      R"([{"name": "sim_resolver"}])"));
  ASSERT_TRUE(s.ok());
  s.runUntilIdle();
  const SimDeviceStatus st = s.status("dev");
  EXPECT_GT(st.counters[Counter::kRequestsIssued], 20u);
  EXPECT_EQ(st.counters[Counter::kCompletedAccesses], st.counters[Counter::kRequestsIssued]);
  EXPECT_EQ(st.counters[Counter::kRetriedRequests], 0u);
  EXPECT_EQ(st.counters[Counter::kAbortedRequests], 0u);
  const SoftIoPageTable* table = s.backend().pageTable(*s.sim().domainId("d"));
  ASSERT_NE(table, nullptr);
  for (const Event& e : s.events(EventType::kRequest)) {
    EXPECT_TRUE(table->allows(e.addr, e.perm)) << std::hex << e.addr;
  }
}

TEST(DeviceModel, RetryFindsAMappingMadeAfterTheFirstFault) {
  ManualSimulation s(oneDeviceScenario(
      R"("max_retries": 3, "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 1})",
      R"([{"name": "fixed:SUCCESS"}])"));
  ASSERT_TRUE(s.ok());
  s.step();  // issue; the router answers SUCCESS
  s.step();  // not mapped: the access faults again
  EXPECT_EQ(s.counter("dev", Counter::kRetriedRequests), 1u);
  const auto reqs = s.events(EventType::kRequest);
  ASSERT_EQ(reqs.size(), 2u);
  MapRequest m;
  m.domain = *s.sim().domainId("d");
  m.iova = reqs[0].addr & ~uint64_t{4095};
  m.length = 4096;
  m.perm = perm::kRead | perm::kWrite;
  ASSERT_TRUE(s.backend().map(m).ok());
  s.runUntilIdle();
  EXPECT_EQ(s.counter("dev", Counter::kCompletedAccesses), 1u);
  EXPECT_EQ(s.counter("dev", Counter::kRetriedRequests), 1u);
}

TEST(DeviceModel, RetryChecksPermissionsNotJustPresence) {
  ManualSimulation s(oneDeviceScenario(
      R"("max_retries": 1, "workload": {"base": "0x200000", "size": "64KiB", "write_ratio": 1, "max_groups": 1})",
      R"([{"name": "fixed:SUCCESS"}])"));
  ASSERT_TRUE(s.ok());
  MapRequest m;
  m.domain = *s.sim().domainId("d");
  m.iova = 0x200000;
  m.length = 64 << 10;
  m.perm = perm::kRead;
  ASSERT_TRUE(s.backend().map(m).ok());
  s.runUntilIdle();
  EXPECT_EQ(s.counter("dev", Counter::kCompletedAccesses), 0u);
  EXPECT_EQ(s.counter("dev", Counter::kRetriedRequests), 1u);
  EXPECT_EQ(s.counter("dev", Counter::kRetryExhausted), 1u);
}

TEST(DeviceModel, InvalidAbortsTheAccess) {
  // Writes into the read-only region: the resolver answers INVALID, the device aborts.
  ManualSimulation s(oneDeviceScenario(
      R"("workload": {"base": "0x200000", "size": "64KiB", "write_ratio": 1, "max_groups": 5})",
      R"([{"name": "sim_resolver"}])"));
  ASSERT_TRUE(s.ok());
  s.runUntilIdle();
  EXPECT_EQ(s.counter("dev", Counter::kResponsesInvalid), 5u);
  EXPECT_EQ(s.counter("dev", Counter::kAbortedRequests), 5u);
  EXPECT_EQ(s.counter("dev", Counter::kRetriedRequests), 0u);
}

TEST(DeviceModel, NeedsPasidResponseWithAnotherPasidIsReported) {
  ManualSimulation s(oneDeviceScenario(
      R"("pasid_bits": 8, "needs_pasid": true, "pasids": [5],
         "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 1})",
      R"([{"name": "sim_hold"}])", R"({"device": "dev", "pasid": 5, "domain": "d"})"));
  ASSERT_TRUE(s.ok());
  s.steps(2);
  auto open = s.router().outstanding();
  ASSERT_EQ(open.size(), 1u);
  ASSERT_EQ(open[0].pasid, std::optional<uint32_t>(5));
  Response r = responseFor(open[0], ResponseCode::kInvalid);
  r.pasid = 6;
  s.backend().respond({&r, 1});
  s.step();
  EXPECT_EQ(s.counter("dev", Counter::kPasidMismatches), 1u);
  EXPECT_EQ(s.counter("dev", Counter::kResponses), 1u);
  EXPECT_TRUE(anyReportContains(s.backend(), "PRG response needs the request's PASID"));
}

TEST(DeviceModel, ResponsesForUnknownOrAnsweredGroupsAreReportedAndIgnored) {
  ManualSimulation s(oneDeviceScenario(
      R"("max_retries": 0, "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 1})",
      R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.steps(2);
  auto open = s.router().outstanding();
  ASSERT_EQ(open.size(), 1u);
  const GroupInfo g = open[0];

  Response unknown = responseFor(g, ResponseCode::kSuccess);
  unknown.grpid = 300;
  Response stale = responseFor(g, ResponseCode::kSuccess);
  stale.cookie = *g.cookie + 1;
  s.backend().respond({&unknown, 1});
  s.backend().respond({&stale, 1});
  s.step();
  EXPECT_EQ(s.counter("dev", Counter::kBogusResponses), 2u);
  EXPECT_EQ(s.status("dev").open_groups, 1u);  // neither was applied
  EXPECT_EQ(s.status("dev").credits_in_use, 1u);
  EXPECT_TRUE(anyReportContains(s.backend(), "grpid=300"));
  EXPECT_TRUE(anyReportContains(s.backend(), "no open group has this PRG index"));
  EXPECT_TRUE(anyReportContains(s.backend(), "stale or duplicate"));

  // The real answer, then the same answer again: the second one is a router bug.
  ASSERT_TRUE(s.router().respond(g.id, ResponseCode::kSuccess).ok());
  s.steps(2);
  EXPECT_EQ(s.counter("dev", Counter::kResponses), 1u);
  EXPECT_EQ(s.status("dev").open_groups, 0u);
  Response again = responseFor(g, ResponseCode::kSuccess);
  s.backend().respond({&again, 1});
  s.step();
  EXPECT_EQ(s.counter("dev", Counter::kBogusResponses), 3u);
  EXPECT_EQ(s.counter("dev", Counter::kResponses), 1u);
  EXPECT_EQ(s.backend().bogusReportCount(), 3u);
}

TEST(DeviceModel, StallModelIssuesSingleRequestGroups) {
  ManualSimulation s(oneDeviceScenario(
      R"("stall_model": true, "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 30})",
      R"([{"name": "sim_resolver"}])"));
  ASSERT_TRUE(s.ok());
  s.runUntilIdle();
  const auto reqs = s.events(EventType::kRequest);
  ASSERT_EQ(reqs.size(), 30u);
  for (const Event& e : reqs) EXPECT_TRUE(e.flags & event_flag::kLast);
  EXPECT_TRUE(s.router().devices()[0].spec.stall_model);
}

TEST(DeviceModel, OpenLoopIssuesAtTheConfiguredRate) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 64, "workload": {"base": "0x100000", "size": "1MiB", "rate_groups_per_s": 1000,
         "arrivals": "fixed"})",
      R"([{"name": "sim_resolver"}])"));
  ASSERT_TRUE(s.ok());
  for (int ms = 0; ms < 10; ++ms) {
    s.advance(kMs);
    s.steps(2);
  }
  EXPECT_EQ(s.counter("dev", Counter::kGroupsIssued), 10u);
}

using RequestKey = std::tuple<uint32_t, uint32_t, uint32_t, uint64_t, uint8_t, uint8_t>;

std::vector<RequestKey> requestStream(uint64_t seed) {
  const std::string json = R"({
    "seed": )" + std::to_string(seed) +
                           R"(,
    "domains": [{"name": "d", "kind": "sva", "address_space": [{"base": "0x1000000", "size": "16MiB"}],
                 "chain": [{"name": "sim_resolver"}]}],
    "devices": [
      {"name": "seq", "pasid_bits": 4, "pasids": [1, 2],
       "workload": {"kind": "sequential", "base": "0x1000000", "size": "1MiB", "group_size": {"min": 1, "max": 4},
                    "max_groups": 40}},
      {"name": "uni", "pasid_bits": 4, "pasids": [3],
       "workload": {"kind": "uniform", "base": "0x1000000", "size": "16MiB", "write_ratio": 0.3,
                    "group_size": {"min": 1, "max": 4}, "max_groups": 40}},
      {"name": "hot", "pasid_bits": 4, "pasids": [4], "stall_model": true,
       "workload": {"kind": "zipf", "base": "0x1000000", "size": "16MiB", "zipf_s": 1.1, "hot_pages": 256,
                    "max_groups": 40}}],
    "attachments": [{"device": "seq", "pasid": 1, "domain": "d"}, {"device": "seq", "pasid": 2, "domain": "d"},
                    {"device": "uni", "pasid": 3, "domain": "d"}, {"device": "hot", "pasid": 4, "domain": "d"}]
  })";
  ManualSimulation s(json);
  EXPECT_TRUE(s.ok());
  if (!s.ok()) return {};
  s.runUntilIdle();
  std::vector<RequestKey> out;
  for (const Event& e : s.events(EventType::kRequest)) {
    out.emplace_back(e.device, e.grpid, e.pasid, e.addr, e.perm, e.flags);
  }
  return out;
}

TEST(DeviceModel, SameSeedSameRequestsOtherSeedOtherRequests) {
  const auto a = requestStream(42);
  const auto b = requestStream(42);
  const auto c = requestStream(43);
  // 120 groups (every page is in the address space: no retries), 1..4 requests each.
  ASSERT_EQ(std::count_if(a.begin(), a.end(),
                          [](const RequestKey& k) { return (std::get<5>(k) & event_flag::kLast) != 0; }),
            120);
  ASSERT_GT(a.size(), 120u);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  // The hot set is hot: the Zipf device touches far fewer distinct pages than it issues.
  std::set<uint64_t> hot_pages;
  for (const auto& k : a) {
    if (std::get<0>(k) == 3) hot_pages.insert(std::get<3>(k) >> 12);
  }
  EXPECT_LT(hot_pages.size(), 40u);
}

}  // namespace
}  // namespace iopf::sim
