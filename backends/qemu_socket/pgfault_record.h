// The kernel fault-fd records, byte for byte: struct iommu_hwpt_pgfault (40 bytes) and struct
// iommu_hwpt_page_response (8 bytes), iopf-kernel.md §1.4-§1.5. One codec for the iopf socket
// profile and any reader of an iommufd fault fd: a P2 peer can copy read(fault_fd) records onto the
// socket unchanged.
#pragma once

#include <cstdint>
#include <optional>

#include "iopf/types.h"

namespace iopf::qemu_socket {

inline constexpr size_t kPgfaultSize = 40;
inline constexpr size_t kPageResponseSize = 8;

// enum iommu_hwpt_pgfault_flags. Other bits (bit 2 leaks the kernel's NEEDS_PASID) are ignored (R8).
inline constexpr uint32_t kPgfaultPasidValid = 1u << 0;
inline constexpr uint32_t kPgfaultLastPage = 1u << 1;
inline constexpr uint32_t kPgfaultPermMask = 0xF;  // READ | WRITE | EXEC | PRIV (types.h perm::)

struct PgfaultRecord {
  uint32_t flags = 0;     // @0
  uint32_t dev_id = 0;    // @4  iommufd device id, or the VMM's dev_id on the socket
  uint32_t pasid = 0;     // @8  meaningful only with kPgfaultPasidValid
  uint32_t grpid = 0;     // @12
  uint32_t perm = 0;      // @16
  uint32_t reserved = 0;  // @20 ignored on input (garbage before Linux 6.14), 0 on output
  uint64_t addr = 0;      // @24
  uint32_t length = 0;    // @32 a hint
  uint32_t cookie = 0;    // @36 group token, identical in every record of a group

  bool operator==(const PgfaultRecord&) const = default;
};

void encodePgfault(const PgfaultRecord& record, uint8_t* out);  // writes kPgfaultSize bytes
PgfaultRecord decodePgfault(const uint8_t* in);                 // reads kPgfaultSize bytes

// Record → router request for router device `device` (unknown flag bits ignored, perm masked, the
// cookie always present: 0 is a legal cookie, R4).
PageRequest toPageRequest(const PgfaultRecord& record, DeviceId device);
// Router request → record with the given wire dev_id (simulators, tests, replay).
PgfaultRecord fromPageRequest(const PageRequest& request, uint32_t dev_id);

struct PageResponseRecord {
  uint32_t cookie = 0;  // @0
  uint32_t code = 0;    // @4 0 SUCCESS, 1 INVALID (2 FAILURE only on the iopf socket profile)

  bool operator==(const PageResponseRecord&) const = default;
};

void encodePageResponse(const PageResponseRecord& response, uint8_t* out);  // kPageResponseSize
PageResponseRecord decodePageResponse(const uint8_t* in);

}  // namespace iopf::qemu_socket
