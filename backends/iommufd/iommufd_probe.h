// Run-time feature probing of the running kernel's iommufd (reference §1.1: ENOTTY = unknown ioctl,
// EOPNOTSUPP = unknown flag). Probes have no side effects: they send argument structs the kernel
// rejects before it allocates anything (size 0 → EINVAL on a known ioctl, ENOTTY on an unknown one).
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "kernel_io.h"

namespace iopf::iommufd {

struct FeatureReport {
  std::string kernel_release;      // uname -r of the running kernel
  bool ioas = false;               // IOMMU_IOAS_ALLOC / IOAS_MAP (6.2)
  bool hwpt_alloc = false;         // IOMMU_HWPT_ALLOC (6.6)
  bool fault_queue = false;        // IOMMU_FAULT_QUEUE_ALLOC (6.11)
  bool hwpt_fault_id = false;      // IOMMU_HWPT_FAULT_ID_VALID (6.11, same series as FAULT)
  bool viommu = false;             // IOMMU_VIOMMU_ALLOC (6.13)
  bool veventq = false;            // IOMMU_VEVENTQ_ALLOC (6.15)
  bool test_cmd = false;           // IOMMU_TEST_CMD: CONFIG_IOMMUFD_TEST (mock device)
  // Not probeable without a device: inferred from the release (6.13+: FAULT_ID_VALID on paging
  // HWPTs; 6.11–6.12: nested HWPTs only).
  bool paging_hwpt_faults_inferred = false;

  // What the backend needs to work at all: FAULT objects and fault-capable HWPTs.
  bool usable() const { return fault_queue && hwpt_fault_id; }
  // A multi-line human-readable report ("fault queue (6.11): yes", ...), ending with the verdict.
  std::string toString() const;
};

// Probes the iommufd `fd`. Fails only if `fd` is not an iommufd at all (IOMMU_DESTROY unknown).
absl::StatusOr<FeatureReport> probeFeatures(KernelIo& io, int iommufd);

}  // namespace iopf::iommufd
