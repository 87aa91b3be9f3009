// The iommufd uAPI the backend uses, carried by the project: Debian 12's linux-libc-dev (6.1) has
// no <linux/iommufd.h>. Values and layouts follow include/uapi/linux/iommufd.h of Linux 6.12
// (reference iopf-kernel.md §1, §4.1); every size and offset is pinned by a static_assert below so
// a typo cannot silently change the ABI. Feature availability is probed at run time
// (iommufd_probe.h), never assumed from these definitions.
#pragma once

#include <cstddef>
#include <cstdint>

namespace iopf::iommufd::abi {

// --- ioctl numbers: _IO(';', nr), no direction and no size bits ----------------------------------
inline constexpr unsigned long kIommufdType = 0x3B;  // ';'
inline constexpr unsigned long ioctlNumber(unsigned nr) { return (kIommufdType << 8) | nr; }

inline constexpr unsigned long kIommuDestroy = ioctlNumber(0x80);          // 6.2
inline constexpr unsigned long kIommuIoasAlloc = ioctlNumber(0x81);        // 6.2
inline constexpr unsigned long kIommuIoasMap = ioctlNumber(0x85);          // 6.2
inline constexpr unsigned long kIommuIoasUnmap = ioctlNumber(0x86);        // 6.2
inline constexpr unsigned long kIommuHwptAlloc = ioctlNumber(0x89);        // 6.6 (fault_id 6.11)
inline constexpr unsigned long kIommuFaultQueueAlloc = ioctlNumber(0x8e);  // 6.11
inline constexpr unsigned long kIommuViommuAlloc = ioctlNumber(0x90);      // 6.13
inline constexpr unsigned long kIommuVeventqAlloc = ioctlNumber(0x93);     // 6.15
inline constexpr unsigned long kIommuTestCmd = ioctlNumber(0xA0);          // CONFIG_IOMMUFD_TEST only

// VFIO cdev ioctls (include/uapi/linux/vfio.h): VFIO_BASE 100 on type ';'.
inline constexpr unsigned long kVfioDeviceBindIommufd = ioctlNumber(100 + 18);     // 0x3B76
inline constexpr unsigned long kVfioDeviceAttachIommufdPt = ioctlNumber(100 + 19);  // 0x3B77
inline constexpr unsigned long kVfioDeviceDetachIommufdPt = ioctlNumber(100 + 20);  // 0x3B78
static_assert(kIommuFaultQueueAlloc == 0x3B8E && kIommuTestCmd == 0x3BA0);
static_assert(kVfioDeviceAttachIommufdPt == 0x3B77 && kVfioDeviceDetachIommufdPt == 0x3B78);

// --- objects --------------------------------------------------------------------------------------
struct IommuDestroy {
  uint32_t size = sizeof(IommuDestroy);
  uint32_t id = 0;
};

struct IommuIoasAlloc {
  uint32_t size = sizeof(IommuIoasAlloc);
  uint32_t flags = 0;
  uint32_t out_ioas_id = 0;
};

inline constexpr uint32_t kIoasMapFixedIova = 1u << 0;
inline constexpr uint32_t kIoasMapWriteable = 1u << 1;
inline constexpr uint32_t kIoasMapReadable = 1u << 2;

struct IommuIoasMap {
  uint32_t size = sizeof(IommuIoasMap);
  uint32_t flags = 0;
  uint32_t ioas_id = 0;
  uint32_t reserved = 0;
  alignas(8) uint64_t user_va = 0;
  alignas(8) uint64_t length = 0;
  alignas(8) uint64_t iova = 0;
};

struct IommuIoasUnmap {
  uint32_t size = sizeof(IommuIoasUnmap);
  uint32_t ioas_id = 0;
  alignas(8) uint64_t iova = 0;
  alignas(8) uint64_t length = 0;
};

// enum iommufd_hwpt_alloc_flags
inline constexpr uint32_t kHwptAllocNestParent = 1u << 0;
inline constexpr uint32_t kHwptAllocDirtyTracking = 1u << 1;
inline constexpr uint32_t kHwptFaultIdValid = 1u << 2;  // 6.11
inline constexpr uint32_t kHwptAllocPasid = 1u << 3;    // 6.15

// enum iommu_hwpt_data_type
inline constexpr uint32_t kHwptDataNone = 0;
inline constexpr uint32_t kHwptDataVtdS1 = 1;
inline constexpr uint32_t kHwptDataArmSmmuv3 = 2;
inline constexpr uint32_t kHwptDataSelftest = 0xdead;

struct IommuHwptAlloc {
  uint32_t size = sizeof(IommuHwptAlloc);
  uint32_t flags = 0;
  uint32_t dev_id = 0;
  uint32_t pt_id = 0;
  uint32_t out_hwpt_id = 0;
  uint32_t reserved = 0;
  uint32_t data_type = kHwptDataNone;
  uint32_t data_len = 0;
  alignas(8) uint64_t data_uptr = 0;
  uint32_t fault_id = 0;
  uint32_t reserved2 = 0;
};

struct IommuFaultAlloc {
  uint32_t size = sizeof(IommuFaultAlloc);
  uint32_t flags = 0;
  uint32_t out_fault_id = 0;
  uint32_t out_fault_fd = 0;
};

// --- the fault fd ---------------------------------------------------------------------------------
// enum iommu_hwpt_pgfault_flags. Bit 2 (internal NEEDS_PASID) leaks through on VT-d/AMD: unknown
// bits are ignored (R8).
inline constexpr uint32_t kPgfaultPasidValid = 1u << 0;
inline constexpr uint32_t kPgfaultLastPage = 1u << 1;
// enum iommu_hwpt_pgfault_perm
inline constexpr uint32_t kPgfaultPermRead = 1u << 0;
inline constexpr uint32_t kPgfaultPermWrite = 1u << 1;
inline constexpr uint32_t kPgfaultPermExec = 1u << 2;
inline constexpr uint32_t kPgfaultPermPriv = 1u << 3;
inline constexpr uint32_t kPgfaultPermMask = 0xF;

// struct iommu_hwpt_pgfault: one record read from the fault fd.
struct IommuHwptPgfault {
  uint32_t flags = 0;
  uint32_t dev_id = 0;
  uint32_t pasid = 0;
  uint32_t grpid = 0;
  uint32_t perm = 0;
  uint32_t reserved = 0;  // may be garbage before 6.14 / 6.12.15
  alignas(8) uint64_t addr = 0;
  uint32_t length = 0;    // a hint, always 0 so far
  uint32_t cookie = 0;
};

// enum iommufd_page_response_code: the only values the kernel accepts (R2).
inline constexpr uint32_t kPageRespSuccess = 0;
inline constexpr uint32_t kPageRespInvalid = 1;

// struct iommu_hwpt_page_response: written to the fault fd.
struct IommuHwptPageResponse {
  uint32_t cookie = 0;
  uint32_t code = 0;
};

// read() sizes: multiples of the record size; the default holds a 256-record group (R9).
inline constexpr size_t kRecordSize = 40;
inline constexpr size_t kResponseSize = 8;
inline constexpr size_t kDefaultReadBytes = kRecordSize * 256;  // 10,240

// --- VFIO cdev --------------------------------------------------------------------------------------
struct VfioDeviceAttachIommufdPt {
  uint32_t argsz = sizeof(VfioDeviceAttachIommufdPt);
  uint32_t flags = 0;
  uint32_t pt_id = 0;
};

struct VfioDeviceDetachIommufdPt {
  uint32_t argsz = sizeof(VfioDeviceDetachIommufdPt);
  uint32_t flags = 0;
};

// --- selftest mock device (CONFIG_IOMMUFD_TEST; iommufd_test.h of 6.12) -----------------------------
inline constexpr uint32_t kTestOpMockDomain = 2;
inline constexpr uint32_t kTestOpMockDomainReplace = 10;
inline constexpr uint32_t kTestOpTriggerIopf = 15;  // 6.11
inline constexpr uint32_t kTestIotlbDefault = 0xbadbeef;

struct IommuTestCmd {
  uint32_t size = sizeof(IommuTestCmd);
  uint32_t op = 0;
  uint32_t id = 0;
  uint32_t reserved = 0;
  // The 48-byte union of 6.12; the accessors below name the members this project uses.
  alignas(8) uint8_t payload[48] = {};
  uint32_t last = 0;
};

// Union members (offsets within the payload).
struct TestMockDomainOut {      // MOCK_DOMAIN
  uint32_t out_stdev_id;
  uint32_t out_hwpt_id;
  uint32_t out_idev_id;         // the iommufd DEVICE id = dev_id of fault records
};
struct TestMockDomainReplace {  // MOCK_DOMAIN_REPLACE
  uint32_t pt_id;
};
struct TestTriggerIopf {        // TRIGGER_IOPF
  uint32_t dev_id;
  uint32_t pasid;
  uint32_t grpid;
  uint32_t perm;
  uint64_t addr;
};

struct IommuHwptSelftest {
  uint32_t iotlb = kTestIotlbDefault;
};

// --- layout checks (offsets from the L6.12 header, reference §1 and §4.1) -------------------------
static_assert(sizeof(IommuDestroy) == 8 && offsetof(IommuDestroy, id) == 4);
static_assert(sizeof(IommuIoasAlloc) == 12 && offsetof(IommuIoasAlloc, out_ioas_id) == 8);
static_assert(sizeof(IommuIoasMap) == 40 && offsetof(IommuIoasMap, ioas_id) == 8 &&
              offsetof(IommuIoasMap, user_va) == 16 && offsetof(IommuIoasMap, length) == 24 &&
              offsetof(IommuIoasMap, iova) == 32);
static_assert(sizeof(IommuIoasUnmap) == 24 && offsetof(IommuIoasUnmap, iova) == 8 &&
              offsetof(IommuIoasUnmap, length) == 16);
static_assert(sizeof(IommuHwptAlloc) == 48);
static_assert(offsetof(IommuHwptAlloc, flags) == 4 && offsetof(IommuHwptAlloc, dev_id) == 8 &&
              offsetof(IommuHwptAlloc, pt_id) == 12 && offsetof(IommuHwptAlloc, out_hwpt_id) == 16 &&
              offsetof(IommuHwptAlloc, reserved) == 20 && offsetof(IommuHwptAlloc, data_type) == 24 &&
              offsetof(IommuHwptAlloc, data_len) == 28 && offsetof(IommuHwptAlloc, data_uptr) == 32 &&
              offsetof(IommuHwptAlloc, fault_id) == 40 && offsetof(IommuHwptAlloc, reserved2) == 44);
static_assert(sizeof(IommuFaultAlloc) == 16 && offsetof(IommuFaultAlloc, flags) == 4 &&
              offsetof(IommuFaultAlloc, out_fault_id) == 8 &&
              offsetof(IommuFaultAlloc, out_fault_fd) == 12);
static_assert(sizeof(IommuHwptPgfault) == kRecordSize);
static_assert(offsetof(IommuHwptPgfault, flags) == 0 && offsetof(IommuHwptPgfault, dev_id) == 4 &&
              offsetof(IommuHwptPgfault, pasid) == 8 && offsetof(IommuHwptPgfault, grpid) == 12 &&
              offsetof(IommuHwptPgfault, perm) == 16 && offsetof(IommuHwptPgfault, reserved) == 20 &&
              offsetof(IommuHwptPgfault, addr) == 24 && offsetof(IommuHwptPgfault, length) == 32 &&
              offsetof(IommuHwptPgfault, cookie) == 36);
static_assert(sizeof(IommuHwptPageResponse) == kResponseSize &&
              offsetof(IommuHwptPageResponse, code) == 4);
static_assert(kDefaultReadBytes == 10240 && kDefaultReadBytes % kRecordSize == 0);
static_assert(sizeof(VfioDeviceAttachIommufdPt) == 12 && sizeof(VfioDeviceDetachIommufdPt) == 8);
static_assert(sizeof(IommuTestCmd) == 72 && offsetof(IommuTestCmd, payload) == 16 &&
              offsetof(IommuTestCmd, last) == 64);
static_assert(sizeof(TestTriggerIopf) == 24 && offsetof(TestTriggerIopf, pasid) == 4 &&
              offsetof(TestTriggerIopf, grpid) == 8 && offsetof(TestTriggerIopf, perm) == 12 &&
              offsetof(TestTriggerIopf, addr) == 16);
static_assert(sizeof(TestMockDomainOut) == 12 && offsetof(TestMockDomainOut, out_idev_id) == 8);
static_assert(sizeof(IommuHwptSelftest) == 4);

}  // namespace iopf::iommufd::abi
