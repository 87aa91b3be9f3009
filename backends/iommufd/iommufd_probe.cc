#include "iommufd_probe.h"

#include <sys/utsname.h>

#include <cerrno>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "iommufd_abi.h"

namespace iopf::iommufd {
namespace {

// A known ioctl rejects size 0 with EINVAL (min_size check); an unknown one says ENOTTY.
bool ioctlKnown(KernelIo& io, int fd, unsigned long request) {
  uint64_t zero[16] = {};  // size field 0, large enough for any argument struct
  return io.ioctl(fd, request, zero) != -ENOTTY;
}

bool releaseAtLeast(const std::string& release, int major, int minor) {
  int ma = 0, mi = 0;
  if (std::sscanf(release.c_str(), "%d.%d", &ma, &mi) != 2) return false;
  return ma > major || (ma == major && mi >= minor);
}

}  // namespace

absl::StatusOr<FeatureReport> probeFeatures(KernelIo& io, int iommufd) {
  FeatureReport report;
  utsname uts{};
  report.kernel_release = ::uname(&uts) == 0 ? uts.release : "unknown";
  if (!ioctlKnown(io, iommufd, abi::kIommuDestroy)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "fd ", iommufd, " is not an iommufd: IOMMU_DESTROY (0x3B80) answered ENOTTY (kernel ",
        report.kernel_release, ", iommufd needs 6.2+)"));
  }
  report.ioas = ioctlKnown(io, iommufd, abi::kIommuIoasAlloc);
  report.hwpt_alloc = ioctlKnown(io, iommufd, abi::kIommuHwptAlloc);
  report.fault_queue = ioctlKnown(io, iommufd, abi::kIommuFaultQueueAlloc);
  report.viommu = ioctlKnown(io, iommufd, abi::kIommuViommuAlloc);
  report.veventq = ioctlKnown(io, iommufd, abi::kIommuVeventqAlloc);
  report.test_cmd = ioctlKnown(io, iommufd, abi::kIommuTestCmd);
  // FAULT_ID_VALID arrived with FAULT_QUEUE_ALLOC (same 6.11 series). It cannot be probed on its
  // own without a device: HWPT_ALLOC looks the device up before it checks the flags.
  report.hwpt_fault_id = report.hwpt_alloc && report.fault_queue;
  report.paging_hwpt_faults_inferred = report.hwpt_fault_id && releaseAtLeast(report.kernel_release, 6, 13);
  return report;
}

std::string FeatureReport::toString() const {
  auto yn = [](bool b) { return b ? "yes" : "no"; };
  std::string out = absl::StrCat("iommufd features of kernel ", kernel_release, ":\n");
  absl::StrAppend(&out, "  IOAS alloc/map (6.2):                 ", yn(ioas), "\n");
  absl::StrAppend(&out, "  HWPT alloc (6.6):                     ", yn(hwpt_alloc), "\n");
  absl::StrAppend(&out, "  FAULT queue alloc (6.11):             ", yn(fault_queue), "\n");
  absl::StrAppend(&out, "  HWPT FAULT_ID_VALID (6.11):           ", yn(hwpt_fault_id), "\n");
  absl::StrAppend(&out, "  faults on paging HWPTs (6.13, inferred): ", yn(paging_hwpt_faults_inferred),
                  paging_hwpt_faults_inferred ? "\n" : " (use a nested HWPT)\n");
  absl::StrAppend(&out, "  vIOMMU (6.13):                        ", yn(viommu), "\n");
  absl::StrAppend(&out, "  vEVENTQ (6.15):                       ", yn(veventq), "\n");
  absl::StrAppend(&out, "  selftest mock (CONFIG_IOMMUFD_TEST):  ", yn(test_cmd), "\n");
  absl::StrAppend(&out, "  verdict: ",
                  usable() ? "usable: user-space IOPF handling is supported"
                           : "NOT usable: the kernel lacks FAULT objects (needs Linux 6.11+)",
                  "\n");
  return out;
}

}  // namespace iopf::iommufd
