// The guest forwarder's core without a router: exact forwarding with guest identifiers, exactly
// one completion per host group, every refusal case counted, drains and the per-VM bound.
#include "forwarder.h"

#include <gtest/gtest.h>

#include <atomic>
#include <memory>

#include "forwarder_test_util.h"

namespace iopf::guest_forwarder {
namespace {

using testing::Completions;
using testing::FakeTransport;
using testing::HostGroup;

constexpr int64_t kDeadline = 1'000'000'000;  // 1 s

struct Rig {
  Rig(uint32_t bound = 256) {
    GuestDevice d;
    d.backend_handle = 7;
    d.vm = "vm1";
    d.viommu_id = 1;
    d.virt_id = 0x10;
    d.guest_rid = 0x0010;
    d.pasids = {{100, 1}};
    ASSERT_OK(registry.add(d));
    GuestDevice e = d;
    e.backend_handle = 8;
    e.viommu_id = 2;
    e.virt_id = 0x20;
    e.guest_rid = 0x0020;
    e.pasids.clear();
    ASSERT_OK(registry.add(e));
    GuestDevice f = d;
    f.backend_handle = 9;
    f.vm = "vm2";
    f.pasids.clear();
    ASSERT_OK(registry.add(f));
    ForwarderOptions o;
    o.max_open_per_vm = bound;
    o.now = [this] { return now.load(); };
    forwarder = std::make_unique<Forwarder>(&registry, o);
    forwarder->attachVm("vm1", vm1);
    forwarder->attachVm("vm2", vm2);
  }
  static void ASSERT_OK(const absl::Status& s) { ASSERT_TRUE(s.ok()) << s; }

  // Hands one host group to the forwarder; returns the verdict kind.
  uint32_t submit(uint64_t id, uint64_t handle, std::optional<uint32_t> pasid, uint32_t prgi,
                  std::vector<std::pair<uint64_t, uint8_t>> pages = {{0x1000, IOPF_PERM_READ}}) {
    HostGroup g(id, handle, 0x0300, pasid, prgi, std::move(pages), now.load());
    return forwarder->handle(g.view(), completions.make(id), "", kDeadline).kind();
  }
  const Forwarder::Counters& c() const { return forwarder->counters(); }

  std::atomic<int64_t> now{1'000};
  DeviceRegistry registry;
  Completions completions;
  std::shared_ptr<FakeTransport> vm1 = std::make_shared<FakeTransport>();
  std::shared_ptr<FakeTransport> vm2 = std::make_shared<FakeTransport>();
  std::unique_ptr<Forwarder> forwarder;
};

GuestKey key(const std::string& vm, uint32_t viommu, uint64_t virt, uint32_t pasid, uint16_t prgi) {
  return GuestKey{vm, viommu, virt, pasid, prgi};
}

TEST(GuestForwarderCore, ForwardsWithGuestIdentifiersAndCompletesOnce) {
  Rig rig;
  ASSERT_EQ(
      rig.submit(1, 7, 100, 0x1a5, {{0x1000, IOPF_PERM_READ}, {0x2000, IOPF_PERM_READ | IOPF_PERM_WRITE}}),
      IOPF_VERDICT_DEFER);
  const auto sent = rig.vm1->take();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(sent[0].key, key("vm1", 1, 0x10, 1, 0x1a5));  // host PASID 100 -> guest PASID 1
  EXPECT_EQ(sent[0].guest_rid, 0x0010);
  EXPECT_EQ(sent[0].host_group, 1u);
  ASSERT_EQ(sent[0].requests.size(), 2u);
  EXPECT_EQ(sent[0].requests[1].addr, 0x2000u);
  EXPECT_EQ(sent[0].requests[1].perm, IOPF_PERM_READ | IOPF_PERM_WRITE);
  EXPECT_TRUE(sent[0].requests[1].last);
  EXPECT_FALSE(rig.completions.code(1).has_value());
  EXPECT_EQ(rig.forwarder->openGroups("vm1"), 1u);

  EXPECT_EQ(rig.forwarder->answer(key("vm1", 1, 0x10, 1, 0x1a5), 0), AnswerResult::kCompleted);
  EXPECT_EQ(rig.completions.code(1), IOPF_CODE_SUCCESS);
  // A second answer for the same key: refused, counted, nothing reaches the host.
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 1, 0x10, 1, 0x1a5), 1), AnswerResult::kDuplicate);
  EXPECT_EQ(rig.completions.code(1), IOPF_CODE_SUCCESS);
  EXPECT_EQ(rig.completions.refused(), 0u);
  EXPECT_EQ(rig.c().answers_duplicate.load(), 1u);
  EXPECT_EQ(rig.c().answers_success.load(), 1u);
  EXPECT_EQ(rig.forwarder->openGroups("vm1"), 0u);
}

TEST(GuestForwarderCore, GuestCodesMapToHostCodesFailureBecomesInvalid) {
  Rig rig;
  rig.submit(1, 8, std::nullopt, 1);
  rig.submit(2, 8, std::nullopt, 2);
  rig.submit(3, 8, std::nullopt, 3);
  rig.submit(4, 8, std::nullopt, 4);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 1), 0), AnswerResult::kCompleted);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 2), 1), AnswerResult::kCompleted);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 3), 2), AnswerResult::kCompleted);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 4), 9), AnswerResult::kCompleted);
  EXPECT_EQ(rig.completions.code(1), IOPF_CODE_SUCCESS);
  EXPECT_EQ(rig.completions.code(2), IOPF_CODE_INVALID);
  EXPECT_EQ(rig.completions.code(3), IOPF_CODE_INVALID);  // never FAILURE towards hardware
  EXPECT_EQ(rig.completions.code(4), IOPF_CODE_INVALID);
  EXPECT_EQ(rig.c().answers_failure_mapped.load(), 1u);
  EXPECT_EQ(rig.c().answers_bad_code.load(), 1u);
}

TEST(GuestForwarderCore, UnknownKeysAreRefusedAndCounted) {
  Rig rig;
  rig.submit(1, 7, 100, 5);
  // Wrong PRGI, wrong PASID, wrong device, wrong vIOMMU, wrong VM: none completes group 1.
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 1, 0x10, 1, 6), 0), AnswerResult::kUnknown);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 1, 0x10, 100, 5), 0), AnswerResult::kUnknown);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 1, 0x11, 1, 5), 0), AnswerResult::kUnknown);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x10, 1, 5), 0), AnswerResult::kUnknown);
  EXPECT_EQ(rig.forwarder->answer(key("vm2", 1, 0x10, 1, 5), 0), AnswerResult::kUnknown);
  EXPECT_EQ(rig.c().answers_unknown.load(), 5u);
  EXPECT_FALSE(rig.completions.code(1).has_value());
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 1, 0x10, 1, 5), 1), AnswerResult::kCompleted);
  EXPECT_EQ(rig.completions.code(1), IOPF_CODE_INVALID);
}

TEST(GuestForwarderCore, AnswersAfterTheDeadlineAreRefusedAndTheHostGetsInvalid) {
  Rig rig;
  rig.submit(1, 8, std::nullopt, 1);
  rig.submit(2, 8, std::nullopt, 2);
  rig.now += kDeadline + 1;
  // Answer past the deadline before any sweep: refused; the host group gets INVALID.
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 1), 0), AnswerResult::kLate);
  EXPECT_EQ(rig.completions.code(1), IOPF_CODE_INVALID);
  // The sweep answers the other INVALID; its guest answer afterwards is late too.
  EXPECT_EQ(rig.forwarder->expire(), 1u);
  EXPECT_EQ(rig.completions.code(2), IOPF_CODE_INVALID);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 2), 0), AnswerResult::kLate);
  EXPECT_EQ(rig.c().answers_late.load(), 2u);
  EXPECT_EQ(rig.c().expired.load(), 1u);
  EXPECT_EQ(rig.forwarder->openGroups(), 0u);
}

TEST(GuestForwarderCore, AnAnswerTheRouterRefusesIsCounted) {
  Rig rig;
  rig.submit(1, 8, std::nullopt, 1);
  rig.completions.closeByRouter(1);  // the router timed it out (its own deadline) or detached it
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 1), 0), AnswerResult::kRefusedByRouter);
  EXPECT_EQ(rig.c().answers_refused_by_router.load(), 1u);
}

TEST(GuestForwarderCore, GuestResetViommuResetDeviceDelAndDisconnectDrainAtOnce) {
  Rig rig;
  rig.submit(1, 7, 100, 1);           // vm1 viommu 1
  rig.submit(2, 8, std::nullopt, 1);  // vm1 viommu 2
  rig.submit(3, 8, std::nullopt, 2);  // vm1 viommu 2
  rig.submit(4, 9, std::nullopt, 1);  // vm2
  // vIOMMU reset: only viommu 2 of vm1.
  EXPECT_EQ(rig.forwarder->drain("vm1", 2, std::nullopt, DrainReason::kViommuReset), 2u);
  EXPECT_EQ(rig.completions.code(2), IOPF_CODE_INVALID);
  EXPECT_EQ(rig.completions.code(3), IOPF_CODE_INVALID);
  EXPECT_FALSE(rig.completions.code(1).has_value());
  // The guest's answer for a drained group is a duplicate: refused.
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 1), 0), AnswerResult::kDuplicate);
  // Guest reset: the whole VM.
  rig.submit(5, 8, std::nullopt, 3);
  EXPECT_EQ(rig.forwarder->drain("vm1", std::nullopt, std::nullopt, DrainReason::kGuestReset), 2u);
  EXPECT_EQ(rig.completions.code(1), IOPF_CODE_INVALID);
  EXPECT_EQ(rig.completions.code(5), IOPF_CODE_INVALID);
  EXPECT_FALSE(rig.completions.code(4).has_value());  // the other VM is untouched
  // DEVICE_DEL: one guest device.
  rig.submit(6, 7, 100, 2);
  rig.submit(7, 8, std::nullopt, 4);
  EXPECT_EQ(rig.forwarder->drain("vm1", 1, 0x10, DrainReason::kDeviceDel), 1u);
  EXPECT_EQ(rig.completions.code(6), IOPF_CODE_INVALID);
  EXPECT_FALSE(rig.completions.code(7).has_value());
  // VMM disconnect: everything of the VM, and later groups find no VM.
  EXPECT_EQ(rig.forwarder->detachVm("vm1"), 1u);
  EXPECT_EQ(rig.completions.code(7), IOPF_CODE_INVALID);
  EXPECT_EQ(rig.submit(8, 7, 100, 3), IOPF_VERDICT_RESPOND);
  EXPECT_EQ(rig.c().vm_unavailable.load(), 1u);
  EXPECT_EQ(rig.c().drained_viommu_reset.load(), 2u);
  EXPECT_EQ(rig.c().drained_guest_reset.load(), 2u);
  EXPECT_EQ(rig.c().drained_device_del.load(), 1u);
  EXPECT_EQ(rig.c().drained_disconnect.load(), 1u);
  EXPECT_EQ(rig.completions.refused(), 0u);  // every completion was the first
  EXPECT_EQ(rig.forwarder->openGroups("vm2"), 1u);
}

TEST(GuestForwarderCore, PerVmBoundKeyReuseAndUnreachableVmsAnswerInvalidAtOnce) {
  Rig rig(/*bound=*/2);
  EXPECT_EQ(rig.submit(1, 8, std::nullopt, 1), IOPF_VERDICT_DEFER);
  EXPECT_EQ(rig.submit(2, 8, std::nullopt, 1), IOPF_VERDICT_RESPOND);  // same guest key still open
  EXPECT_EQ(rig.c().key_busy.load(), 1u);
  EXPECT_EQ(rig.submit(3, 8, std::nullopt, 2), IOPF_VERDICT_DEFER);
  EXPECT_EQ(rig.submit(4, 8, std::nullopt, 3), IOPF_VERDICT_RESPOND);  // bound reached
  EXPECT_EQ(rig.c().overload.load(), 1u);
  EXPECT_EQ(rig.submit(5, 9, std::nullopt, 1), IOPF_VERDICT_DEFER);  // the bound is per VM
  rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 1), 0);
  EXPECT_EQ(rig.submit(6, 8, std::nullopt, 3), IOPF_VERDICT_DEFER);  // room again
  // Not a registered device: not ours, the chain goes on.
  EXPECT_EQ(rig.submit(7, 55, std::nullopt, 1), IOPF_VERDICT_CONTINUE);
  EXPECT_EQ(rig.c().not_registered.load(), 1u);
  // A PASID without guest mapping: INVALID.
  EXPECT_EQ(rig.submit(8, 7, 101, 1), IOPF_VERDICT_RESPOND);
  EXPECT_EQ(rig.c().pasid_unmapped.load(), 1u);
  // The transport cannot deliver: INVALID at once, nothing stays open.
  rig.vm2->up = false;
  EXPECT_EQ(rig.submit(9, 9, std::nullopt, 2), IOPF_VERDICT_RESPOND);
  EXPECT_EQ(rig.forwarder->openGroups("vm2"), 1u);
  EXPECT_EQ(rig.c().vm_unavailable.load(), 1u);
}

TEST(GuestForwarderCore, APrgiCanBeReusedOnceItsGroupWasAnswered) {
  Rig rig;
  rig.submit(1, 8, std::nullopt, 7);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 7), 0), AnswerResult::kCompleted);
  EXPECT_EQ(rig.submit(2, 8, std::nullopt, 7), IOPF_VERDICT_DEFER);
  EXPECT_EQ(rig.forwarder->answer(key("vm1", 2, 0x20, kNoPasid, 7), 1), AnswerResult::kCompleted);
  EXPECT_EQ(rig.completions.code(1), IOPF_CODE_SUCCESS);
  EXPECT_EQ(rig.completions.code(2), IOPF_CODE_INVALID);
}

}  // namespace
}  // namespace iopf::guest_forwarder
