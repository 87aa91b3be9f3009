// The guest forwarder's device registry: translation host -> guest and guest -> host, and every
// refusal of add().
#include <gtest/gtest.h>

#include "device_registry.h"

namespace iopf::guest_forwarder {
namespace {

GuestDevice nic(uint64_t handle, const std::string& vm, uint64_t virt_id) {
  GuestDevice d;
  d.backend = "iommufd";
  d.backend_handle = handle;
  d.host_rid = 0x0300;
  d.vm = vm;
  d.viommu_id = 1;
  d.virt_id = virt_id;
  d.guest_rid = 0x0010;  // 00:02.0 in the guest
  d.pri_allocation = 32;
  return d;
}

TEST(DeviceRegistry, TranslatesHostToGuestAndBackWithIdentityPasid) {
  DeviceRegistry r;
  ASSERT_TRUE(r.add(nic(7, "vm1", 0x10)).ok());
  auto g = r.toGuest("iommufd", 7, 0x0300, 5);
  ASSERT_TRUE(g.ok()) << g.status();
  EXPECT_EQ(*g, (GuestView{"vm1", 1, 0x10, 0x0010, 5, false}));
  auto h = r.toHost("vm1", 1, 0x10, 5);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(*h, (HostView{"iommufd", 7, 5}));
  // No PASID on either side stays no PASID.
  EXPECT_EQ(r.toGuest("iommufd", 7, 0x0300, std::nullopt)->guest_pasid, std::nullopt);
  EXPECT_EQ(r.toHost("vm1", 1, 0x10, std::nullopt)->host_pasid, std::nullopt);
}

TEST(DeviceRegistry, TranslatesMappedPasidsBothWaysAndRefusesUnmappedOnes) {
  DeviceRegistry r;
  GuestDevice d = nic(7, "vm1", 0x10);
  d.pasids = {{100, 1}, {200, 2}};
  d.needs_pasid = true;
  ASSERT_TRUE(r.add(d).ok());
  EXPECT_EQ(r.toGuest("iommufd", 7, 0x0300, 200)->guest_pasid, 2u);
  EXPECT_TRUE(r.toGuest("iommufd", 7, 0x0300, 200)->needs_pasid);
  EXPECT_EQ(r.toHost("vm1", 1, 0x10, 1)->host_pasid, 100u);
  const auto unmapped = r.toGuest("iommufd", 7, 0x0300, 300);
  EXPECT_EQ(unmapped.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(unmapped.status().message().find("host PASID 300 has no guest PASID"), absl::string_view::npos)
      << unmapped.status();
  const auto no_pasid = r.toGuest("iommufd", 7, 0x0300, std::nullopt);
  EXPECT_EQ(no_pasid.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(r.toHost("vm1", 1, 0x10, 3).status().code(), absl::StatusCode::kNotFound);
}

TEST(DeviceRegistry, HostKeyNeedsBackendAndRidToMatch) {
  DeviceRegistry r;
  ASSERT_TRUE(r.add(nic(7, "vm1", 0x10)).ok());
  EXPECT_EQ(r.toGuest("qemu_socket", 7, 0x0300, std::nullopt).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.toGuest("iommufd", 7, 0x0301, std::nullopt).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.toGuest("iommufd", 8, 0x0300, std::nullopt).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.toHost("vm2", 1, 0x10, std::nullopt).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.toHost("vm1", 2, 0x10, std::nullopt).status().code(), absl::StatusCode::kNotFound);
  // An entry without a backend name matches any backend.
  GuestDevice any = nic(9, "vm1", 0x18);
  any.backend.clear();
  any.host_rid.reset();
  ASSERT_TRUE(r.add(any).ok());
  EXPECT_TRUE(r.toGuest("qemu_socket", 9, 0x1234, std::nullopt).ok());
  EXPECT_TRUE(r.namesBackends());
}

TEST(DeviceRegistry, AddRefusesDuplicatesAndBadPasidsNamingBothEntries) {
  DeviceRegistry r;
  ASSERT_TRUE(r.add(nic(7, "vm1", 0x10)).ok());
  const absl::Status host_dup = r.add(nic(7, "vm2", 0x20));
  EXPECT_EQ(host_dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(host_dup.message().find("host device already registered as host iommufd/7"),
            absl::string_view::npos)
      << host_dup;
  const absl::Status guest_dup = r.add(nic(8, "vm1", 0x10));
  EXPECT_EQ(guest_dup.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(guest_dup.message().find("guest device already registered"), absl::string_view::npos)
      << guest_dup;
  GuestDevice bad = nic(9, "vm1", 0x30);
  bad.pasids = {{1u << 20, 1}};
  EXPECT_EQ(r.add(bad).code(), absl::StatusCode::kInvalidArgument);
  bad.pasids = {{1, 1}, {2, 1}};
  const absl::Status twice = r.add(bad);
  EXPECT_EQ(twice.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.message().find("pasids[1] (host 2, guest 1) maps a PASID already mapped by pasids[0]"),
            absl::string_view::npos)
      << twice;
  bad.pasids.clear();
  bad.vm.clear();
  EXPECT_EQ(r.add(bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.size(), 1u);
}

TEST(DeviceRegistry, VmmEntriesLeaveWithTheirConnection) {
  DeviceRegistry r;
  ASSERT_TRUE(r.add(nic(7, "vm1", 0x10)).ok());
  GuestDevice a = nic(8, "vm1", 0x18);
  a.source = Source::kVmm;
  a.owner = 3;
  GuestDevice b = nic(9, "vm1", 0x20);
  b.source = Source::kVmm;
  b.owner = 3;
  ASSERT_TRUE(r.add(a).ok());
  ASSERT_TRUE(r.add(b).ok());
  EXPECT_EQ(r.removeOwner(4), 0u);
  EXPECT_EQ(r.removeOwner(3), 2u);
  EXPECT_EQ(r.size(), 1u);
  EXPECT_TRUE(r.removeGuest("vm1", 1, 0x10));
  EXPECT_FALSE(r.removeGuest("vm1", 1, 0x10));
}

}  // namespace
}  // namespace iopf::guest_forwarder
