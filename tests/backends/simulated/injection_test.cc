// Each fault injection of the simulated backend and the router's reaction to it.
#include <gtest/gtest.h>

#include <set>

#include "manual_simulation.h"

namespace iopf::sim {
namespace {

using testing::kMs;
using testing::ManualSimulation;
using testing::oneDeviceScenario;

size_t countOrigin(ManualSimulation& s, Origin origin) {
  return s.router().stats().responses_by_origin[static_cast<int>(origin)];
}

TEST(Injection, LostLastLeavesAPartialThatOverflowDiscardsWithoutResponse) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 16, "workload": {"base": "0x100000", "size": "1MiB",
         "group_size": {"min": 3, "max": 3}, "max_groups": 2})",
      R"([{"name": "sim_resolver"}])"));
  ASSERT_TRUE(s.ok());
  s.inject("dev", {InjectionKind::kLostLast});
  s.runUntilIdle();
  // Group 1 lost its LAST: 2 requests buffered by the router, no group, no response; group 2 fine.
  StatsSnapshot rs = s.router().stats();
  EXPECT_EQ(rs.requests, 5u);
  EXPECT_EQ(rs.groups, 1u);
  EXPECT_EQ(rs.responses, 1u);
  SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kLostLast], 1u);
  EXPECT_EQ(st.lost_groups, 1u);
  EXPECT_EQ(st.open_groups, 1u);
  EXPECT_EQ(st.credits_in_use, 3u);  // the device still waits: its credits stay consumed

  s.inject("dev", {InjectionKind::kOverflow});
  s.runUntilIdle();
  rs = s.router().stats();
  EXPECT_EQ(rs.partial_discarded, 2u);
  EXPECT_EQ(s.events(EventType::kPartialDiscarded).size(), 1u);
  st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kOverflows], 1u);
  // The simulated IOMMU auto-answered the lost group; the device faulted again on its 3 pages and
  // that retry group went through the router normally.
  EXPECT_EQ(st.counters[Counter::kIommuAutoResponses], 1u);
  EXPECT_EQ(st.counters[Counter::kRetriedRequests], 3u);
  EXPECT_EQ(st.lost_groups, 0u);
  EXPECT_EQ(st.open_groups, 0u);
  EXPECT_EQ(st.credits_in_use, 0u);
  EXPECT_EQ(rs.groups, 2u);
  EXPECT_EQ(rs.responses, 2u);  // the discarded partial never got a response
  EXPECT_EQ(rs.protocol_errors, 0u);
  EXPECT_EQ(st.counters[Counter::kCountMismatches], 0u);
  EXPECT_EQ(s.backend().bogusReportCount(), 0u);
}

TEST(Injection, OverflowWithoutPartialsDiscardsNothing) {
  ManualSimulation s(oneDeviceScenario(R"("workload": {"base": "0x100000", "size": "1MiB", "max_groups": 3})",
                                       R"([{"name": "sim_resolver"}])"));
  ASSERT_TRUE(s.ok());
  s.inject("dev", {InjectionKind::kOverflow});
  s.runUntilIdle();
  EXPECT_EQ(s.router().stats().partial_discarded, 0u);
  EXPECT_EQ(s.counter("dev", Counter::kOverflows), 1u);
  EXPECT_EQ(s.counter("dev", Counter::kIommuAutoResponses), 0u);
  EXPECT_EQ(s.router().stats().responses, 3u);
}

TEST(Injection, DuplicatePrgiWhileOpenIsAProtocolErrorAndBothGroupsAreAnswered) {
  ManualSimulation s(oneDeviceScenario(
      R"("max_retries": 0, "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 1})",
      R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.steps(2);
  s.inject("dev", {InjectionKind::kDuplicatePrgi});
  s.steps(2);
  StatsSnapshot rs = s.router().stats();
  EXPECT_EQ(rs.protocol_errors, 1u);
  ASSERT_EQ(s.events(EventType::kProtocolError).size(), 1u);
  EXPECT_EQ(s.events(EventType::kProtocolError)[0].value, 2);  // PRGI reused while open
  auto open = s.router().outstanding();
  ASSERT_EQ(open.size(), 2u);
  EXPECT_EQ(open[0].grpid, open[1].grpid);
  EXPECT_NE(open[0].cookie, open[1].cookie);
  EXPECT_EQ(s.counter("dev", Counter::kDuplicatePrgi), 1u);
  EXPECT_EQ(s.status("dev").credits_in_use, 2u);

  for (const GroupInfo& g : open) ASSERT_TRUE(s.router().respond(g.id, ResponseCode::kInvalid).ok());
  s.steps(2);
  const SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kResponses], 2u);
  EXPECT_EQ(st.counters[Counter::kDuplicateResponses], 1u);
  EXPECT_EQ(st.counters[Counter::kBogusResponses], 0u);
  EXPECT_EQ(st.credits_in_use, 0u);
  EXPECT_EQ(st.open_groups, 0u);
}

TEST(Injection, DuplicateWaitsForAnOpenGroup) {
  ManualSimulation s(oneDeviceScenario(R"("workload": {"base": "0x100000", "size": "1MiB", "max_groups": 1})",
                                       R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.inject("dev", {InjectionKind::kDuplicatePrgi});  // runs before the first group exists
  s.steps(3);
  EXPECT_EQ(s.counter("dev", Counter::kDuplicatePrgi), 1u);
  EXPECT_EQ(s.router().stats().protocol_errors, 1u);
}

TEST(Injection, HotUnplugDrainsOpenGroupsWithInvalidAndDiscardsPartials) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 64, "workload": {"base": "0x100000", "size": "1MiB",
         "group_size": {"min": 2, "max": 2}, "max_groups": 5})",
      R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.inject("dev", {InjectionKind::kLostLast});
  s.steps(3);
  EXPECT_EQ(s.router().outstanding().size(), 4u);  // 4 complete groups; the 5th lost its LAST
  EXPECT_EQ(s.status("dev").open_groups, 5u);

  s.inject("dev", {InjectionKind::kUnplug});
  s.steps(3);
  const StatsSnapshot rs = s.router().stats();
  EXPECT_EQ(rs.responses_by_origin[static_cast<int>(Origin::kDetach)], 4u);
  EXPECT_EQ(rs.responses_by_code[static_cast<int>(ResponseCode::kInvalid)], 4u);
  EXPECT_EQ(rs.partial_discarded, 1u);
  EXPECT_TRUE(s.router().devices()[0].removed);
  EXPECT_TRUE(s.router().attachments().empty());
  const SimDeviceStatus st = s.status("dev");
  EXPECT_TRUE(st.unplugged);
  EXPECT_EQ(st.counters[Counter::kUnplugs], 1u);
  EXPECT_EQ(st.counters[Counter::kResponsesAfterUnplug], 4u);
  EXPECT_EQ(st.counters[Counter::kAbortedRequests], 8u);
  EXPECT_EQ(st.open_groups, 1u);  // the lost group: nobody will ever answer it
  EXPECT_EQ(st.counters[Counter::kBogusResponses], 0u);
  // The device sends nothing more.
  const uint64_t issued = st.counters[Counter::kRequestsIssued];
  s.steps(3);
  EXPECT_EQ(s.counter("dev", Counter::kRequestsIssued), issued);
  EXPECT_EQ(s.router().stats().dropped_requests, 0u);
}

TEST(Injection, StopMarkerIsDroppedByTheRouterAndThePasidFallsSilent) {
  ManualSimulation s(oneDeviceScenario(
      R"("pasid_bits": 8, "pasids": [1, 2], "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 10})",
      R"([{"name": "sim_resolver"}])",
      R"({"device": "dev", "pasid": 1, "domain": "d"}, {"device": "dev", "pasid": 2, "domain": "d"})"));
  ASSERT_TRUE(s.ok());
  s.step();  // 10 groups, PASIDs alternating
  Injection stop{InjectionKind::kStopMarker};
  stop.pasid = 1;
  s.inject("dev", stop);
  s.runUntilIdle();
  const StatsSnapshot rs = s.router().stats();
  EXPECT_EQ(rs.stop_markers, 1u);
  EXPECT_EQ(s.events(EventType::kStopMarkerDropped).size(), 1u);
  EXPECT_EQ(rs.responses, rs.groups);  // no response for the marker
  EXPECT_EQ(rs.groups, 10u);
  EXPECT_EQ(s.counter("dev", Counter::kStopMarkers), 1u);

  // More work for the device: only PASID 2 is used now; resume_pasid brings PASID 1 back.
  auto more = [&](uint32_t groups) {
    (void)groups;
    Injection burst{InjectionKind::kBurst};
    burst.count = groups;
    s.inject("dev", burst);
    s.runUntilIdle();
  };
  const size_t before = s.events(EventType::kRequest).size();
  more(4);
  auto reqs = s.events(EventType::kRequest);
  ASSERT_EQ(reqs.size(), before + 4);
  for (size_t i = before; i < reqs.size(); ++i) EXPECT_EQ(reqs[i].pasid, 2u);
  Injection resume{InjectionKind::kResumePasid};
  resume.pasid = 1;
  s.inject("dev", resume);
  more(4);
  reqs = s.events(EventType::kRequest);
  std::set<uint32_t> pasids;
  for (size_t i = before + 4; i < reqs.size(); ++i) pasids.insert(reqs[i].pasid);
  EXPECT_EQ(pasids, (std::set<uint32_t>{1, 2}));
}

TEST(Injection, BurstBeyondTheAllocationIsAnsweredOverload) {
  ManualSimulation s(oneDeviceScenario(
      R"("pri_allocation": 4, "max_retries": 0, "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 4})",
      R"([{"name": "sim_hold"}])"));
  ASSERT_TRUE(s.ok());
  s.steps(2);
  EXPECT_EQ(s.status("dev").credits_in_use, 4u);
  Injection burst{InjectionKind::kBurst};
  burst.count = 10;
  s.inject("dev", burst);
  s.steps(3);
  EXPECT_EQ(countOrigin(s, Origin::kOverload), 10u);
  EXPECT_EQ(s.router().stats().devices[0].overload, 10u);
  const SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kBurstGroups], 10u);
  EXPECT_EQ(st.counters[Counter::kResponsesInvalid], 10u);
  EXPECT_EQ(st.credits_in_use, 4u);  // the 4 held groups are still open
  EXPECT_EQ(s.router().outstanding().size(), 4u);
}

TEST(Injection, ScheduledInjectionsFireAtTheirTimeAndRepeat) {
  ManualSimulation s(R"({
    "domains": [{"name": "d", "address_space": [{"base": "0x100000", "size": "1MiB"}],
                 "chain": [{"name": "sim_resolver"}]}],
    "devices": [{"name": "dev", "pri_allocation": 64,
                 "workload": {"base": "0x100000", "size": "1MiB", "rate_groups_per_s": 1000, "arrivals": "fixed",
                              "group_size": {"min": 2, "max": 2}}}],
    "attachments": [{"device": "dev", "domain": "d"}],
    "injections": [{"device": "dev", "kind": "lost_last", "at_ms": 2.5},
                   {"device": "dev", "kind": "overflow", "at_ms": 5, "every_ms": 2, "repeat": 3}]
  })");
  ASSERT_TRUE(s.ok());
  for (int i = 0; i < 12; ++i) {
    s.advance(kMs);
    s.steps(2);
  }
  const SimDeviceStatus st = s.status("dev");
  EXPECT_EQ(st.counters[Counter::kLostLast], 1u);
  EXPECT_EQ(st.counters[Counter::kOverflows], 3u);
  EXPECT_EQ(st.counters[Counter::kIommuAutoResponses], 1u);
  EXPECT_EQ(s.router().stats().partial_discarded, 1u);
  EXPECT_EQ(st.lost_groups, 0u);
}

}  // namespace
}  // namespace iopf::sim
