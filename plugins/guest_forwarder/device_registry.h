// The guest forwarder's device registry (vmm-protocols.md §5): which host device belongs to which
// VM and how the guest sees it. Host side: (backend name, backend handle[, host RID]). Guest side:
// (VM, vIOMMU instance, virt_id = vRID / vSID / endpoint id, guest RID) plus the host->guest PASID
// mapping, the PRI allocation and whether the guest's PRG response carries a PASID.
//
// Entries come from the plugin config (Source::kConfig) and from a VMM's DEVICE_ADD on the iopf
// socket (Source::kVmm, owned by that connection and removed with it). Translation works both
// ways: toGuest() for a host group about to be forwarded, toHost() for a guest answer.
//
// Thread-safety: every method MAY be called from any thread (one mutex; lookups copy out).
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace iopf::guest_forwarder {

struct PasidMapping {
  uint32_t host = 0;
  uint32_t guest = 0;
  bool operator==(const PasidMapping&) const = default;
};

enum class Source { kConfig, kVmm };

struct GuestDevice {
  // host side
  std::string backend;               // router backend name; "" matches any backend
  uint64_t backend_handle = 0;       // iommufd dev_id, socket device handle, sim id, ...
  std::optional<uint16_t> host_rid;  // if set, the group's RID must match too
  // guest side
  std::string vm;
  uint32_t viommu_id = 0;
  uint64_t virt_id = 0;              // vRID / vSID / virtio-iommu endpoint
  uint16_t guest_rid = 0;            // the RID in the guest's page request descriptors
  std::vector<PasidMapping> pasids;  // host -> guest; empty: the identity
  uint32_t pri_allocation = 0;       // the guest's view of the PRI outstanding allocation
  bool needs_pasid = false;          // the guest's PRG response must carry the PASID
  Source source = Source::kConfig;
  uint64_t owner = 0;  // Source::kVmm: the connection that declared it
  bool operator==(const GuestDevice&) const = default;
};

// A host group's guest identity.
struct GuestView {
  std::string vm;
  uint32_t viommu_id = 0;
  uint64_t virt_id = 0;
  uint16_t guest_rid = 0;
  std::optional<uint32_t> guest_pasid;
  bool needs_pasid = false;
  bool operator==(const GuestView&) const = default;
};

// A guest answer's host identity.
struct HostView {
  std::string backend;
  uint64_t backend_handle = 0;
  std::optional<uint32_t> host_pasid;
  bool operator==(const HostView&) const = default;
};

class DeviceRegistry {
 public:
  // ALREADY_EXISTS if the host key (backend, handle) or the guest key (vm, viommu_id, virt_id) is
  // taken; INVALID_ARGUMENT for an empty VM name, a PASID above 20 bits or a host/guest PASID
  // mapped twice. Messages name both entries.
  absl::Status add(GuestDevice device);
  // Removes the entry of (vm, viommu_id, virt_id); false if there is none.
  bool removeGuest(const std::string& vm, uint32_t viommu_id, uint64_t virt_id);
  // Removes every Source::kVmm entry declared by `owner`; returns how many.
  size_t removeOwner(uint64_t owner);

  // NOT_FOUND: no entry for the device; FAILED_PRECONDITION: the device is known but the host
  // PASID has no guest PASID (a non-identity mapping without it) or the group has no PASID while
  // the guest needs one.
  absl::StatusOr<GuestView> toGuest(const std::string& backend, uint64_t backend_handle, uint16_t host_rid,
                                    std::optional<uint32_t> host_pasid) const;
  // NOT_FOUND: no such guest device, or the guest PASID is not mapped.
  absl::StatusOr<HostView> toHost(const std::string& vm, uint32_t viommu_id, uint64_t virt_id,
                                  std::optional<uint32_t> guest_pasid) const;
  std::optional<GuestDevice> findGuest(const std::string& vm, uint32_t viommu_id, uint64_t virt_id) const;

  std::vector<GuestDevice> list() const;
  size_t size() const;
  // True if some entry names a backend (the handler then asks the host for the device's backend).
  bool namesBackends() const;

 private:
  mutable std::mutex mu_;
  std::vector<GuestDevice> devices_;  // small (devices given to VMs on one host): linear scans
};

std::string describe(const GuestDevice& device);

}  // namespace iopf::guest_forwarder
