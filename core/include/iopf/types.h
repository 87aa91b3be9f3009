// The data model of the router: identities, page requests, responses and their origins.
//
// Everything here is a plain value type: cheap to copy, no ownership, no threads. The structs that
// cross the hot path (PageRequest, Response) are trivially copyable and fixed-size so the router can
// move them in batches without allocating.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace iopf {

// Router-wide identities. Dense small integers handed out by the Router; never reused while the
// Router lives, so a stale id is detected instead of aliasing a newer object.
using BackendId = uint32_t;
using DeviceId = uint32_t;
using DomainId = uint32_t;
// Router-wide, monotonic, starts at 1. Unique for the Router's lifetime.
using GroupId = uint64_t;

// PCIe PRG response codes (iommu_page_response_code). Only kSuccess and kInvalid may ever reach real
// hardware through iommufd (kernel rule R2); kFailure exists for wire backends and simulated devices,
// where it disables the function's PRI exactly as PCIe "Response Failure" does.
enum class ResponseCode : uint8_t {
  kSuccess = 0,
  kInvalid = 1,
  kFailure = 2,
};
inline constexpr bool isValidResponseCode(uint32_t raw) { return raw <= 2; }
std::string_view toString(ResponseCode code);

// Why a group was answered the way it was. Exactly one origin per group.
enum class Origin : uint8_t {
  kHandler = 0,   // a handler of the domain's chain (its name is in the group's trace)
  kDefault = 1,   // every handler said Continue: the domain's default code
  kTimeout = 2,   // the domain's deadline passed
  kDetach = 3,    // the (device, PASID|RID) was detached or replaced, or the device removed
  kOperator = 4,  // a manual verdict through the API
  kShutdown = 5,  // the router drained on shutdown
  kOverload = 6,  // a per-device or per-domain bound was exceeded
  kNoDomain = 7,  // no attachment for (device, PASID|RID)
  kHandlerError = 8,  // a handler threw, returned an invalid code, or its plugin failed
};
inline constexpr int kOriginCount = 9;
std::string_view toString(Origin origin);

// Permission bits of a page request: iommu_hwpt_pgfault_perm values, so iommufd records need no
// translation.
namespace perm {
inline constexpr uint8_t kRead = 1u << 0;
inline constexpr uint8_t kWrite = 1u << 1;
inline constexpr uint8_t kExec = 1u << 2;
inline constexpr uint8_t kPriv = 1u << 3;
}  // namespace perm

// One page request as a backend hands it to the router. Device identity travels with it.
struct PageRequest {
  DeviceId device = 0;             // router id from Router::addDevice
  uint32_t grpid = 0;              // PRGI (9 bits on PCIe), SMMUv3 STAG (16 bits)
  std::optional<uint32_t> pasid;   // present only if the request carried a PASID (R8)
  uint64_t addr = 0;               // may be unaligned (R8)
  uint8_t perm = 0;                // perm::k* bits
  bool last = false;               // LAST_PAGE: completes the group (R1)
  uint32_t length_hint = 0;        // iommufd `length`: a hint, currently always 0 (R8)
  std::optional<uint32_t> cookie;  // backend cookie; 0 is a legal value (R4)
  int64_t arrival_ns = 0;          // set by the router on ingest (monotonic clock)
};

// A PRI stop marker (L=1, R=0, W=0) expects no response and is dropped (kernel §3.2 point 8, R3).
inline constexpr bool isStopMarker(const PageRequest& r) {
  return r.last && (r.perm & (perm::kRead | perm::kWrite)) == 0;
}

// How the backend must treat a response the router hands it.
enum class Delivery : uint8_t {
  kSend = 0,                // write it to the device / peer
  kKernelAnswered = 1,      // the kernel already answered (iommufd detach/replace auto-response):
                            // MUST NOT be written; the backend only retires its cookie state
};

// The one response of a group, as handed to its backend. Echoes the LAST request's grpid and PASID
// (R3); the backend decides whether the PASID goes on the wire (needs_pasid).
struct Response {
  GroupId group = 0;
  DeviceId device = 0;
  uint64_t backend_handle = 0;     // the device's backend-local handle (dev_id, socket id, sim id)
  uint32_t grpid = 0;
  std::optional<uint32_t> pasid;
  std::optional<uint32_t> cookie;
  ResponseCode code = ResponseCode::kInvalid;
  Origin origin = Origin::kDefault;
  Delivery delivery = Delivery::kSend;
  bool needs_pasid = false;        // the device's "PRG response needs PASID" flag
  uint32_t request_count = 0;      // requests in the group: PRI credits this response returns
  int64_t latency_ns = 0;          // first request's arrival → response
};

// What a backend declares about a device when it adds it.
struct DeviceSpec {
  std::string name;
  uint64_t backend_handle = 0;     // iommufd dev_id, socket device id, simulator id
  uint32_t pci_segment = 0;
  uint16_t rid = 0;                // PCI requester id (bus << 8 | devfn)
  uint32_t pri_allocation = 0;     // outstanding page request allocation (credits); 0 = unbounded
  uint8_t pasid_bits = 0;          // 0 = no PASID support
  bool needs_pasid = false;        // "PRG response PASID required"
  bool stall_model = false;        // SMMU stall: single-request groups only
};

// Domain kinds (ARCHITECTURE.md §3). A guest-owned (nested) domain owns the PASID table: PASID faults
// of a device whose RID is attached to it route to it when no per-PASID attachment exists (R6).
enum class DomainKind : uint8_t { kPaging = 0, kNested = 1, kSva = 2 };
std::string_view toString(DomainKind kind);

struct DomainSpec {
  std::string name;
  DomainKind kind = DomainKind::kPaging;
  int64_t deadline_ns = 1'000'000'000;         // response deadline from the group's completion
  ResponseCode timeout_code = ResponseCode::kInvalid;
  ResponseCode default_code = ResponseCode::kInvalid;  // when the chain ends with Continue
  uint32_t max_open_groups = 0;                 // per-domain queue bound; 0 = unbounded
  int32_t shard = -1;                           // -1: router picks (domain id modulo shards)
};

}  // namespace iopf
