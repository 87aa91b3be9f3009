// Profile "iopf", feature FORWARD (bit 2): the guest-forwarding direction, spoken by the guest
// forwarder plugin (plugins/guest_forwarder/) on its own socket. The router sends a host page
// request group to the VMM with the GUEST's identifiers; the VMM injects it into its vIOMMU (e.g.
// as VT-d page request descriptors, libiopf_vmm/vtd_prq.h) and returns the guest's page group
// response keyed by those identifiers. Normative text: docs/plugins/guest_forwarder.md §4.
//
// Framing, HELLO, DEVICE_ADD/DEVICE_DEL, ERROR and their codecs are the "iopf" profile's
// (iopf_protocol.h); this header adds ids 0x1020-0x1023.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "iopf_protocol.h"
#include "vhost_user_codec.h"

namespace iopf::qemu_socket::fwd {

inline constexpr uint64_t kFeatureForward = 1ull << 2;

inline constexpr uint32_t kVmName = 0x1020;         // peer -> router: u8 name[1..64]; reply u64 status
inline constexpr uint32_t kGuestPageReq = 0x1021;   // router -> peer: n x GuestPageRequest (one group)
inline constexpr uint32_t kGuestPageResp = 0x1022;  // peer -> router: n x GuestPageResponse
inline constexpr uint32_t kGuestReset = 0x1023;     // peer -> router: GuestReset; reply u64 groups drained

inline constexpr uint32_t kMaxVmName = 64;

// GuestPageRequest flags.
inline constexpr uint8_t kReqPasidValid = 1u << 0;
inline constexpr uint8_t kReqLast = 1u << 1;
inline constexpr uint8_t kReqRespNeedsPasid = 1u << 2;

// One page request as the guest must see it (32 bytes).
struct GuestPageRequest {
  uint64_t virt_id = 0;    // @0  guest device id (vRID / vSID / endpoint)
  uint32_t viommu_id = 0;  // @8  vIOMMU instance
  uint16_t rid = 0;        // @12 guest RID (VT-d PRD RID)
  uint8_t flags = 0;       // @14 kReq*
  uint8_t perm = 0;        // @15 READ 1, WRITE 2, EXEC 4, PRIV 8
  uint32_t pasid = 0;      // @16 guest PASID (if kReqPasidValid)
  uint16_t prgi = 0;       // @20 guest PRGI (9 bits)
  uint16_t reserved = 0;   // @22
  uint64_t addr = 0;       // @24
  bool operator==(const GuestPageRequest&) const = default;
};
inline constexpr size_t kGuestPageRequestSize = 32;

// Guest response codes (as the guest gave them; FAILURE becomes INVALID towards hardware).
inline constexpr uint8_t kGuestSuccess = 0;
inline constexpr uint8_t kGuestInvalid = 1;
inline constexpr uint8_t kGuestFailure = 2;
inline constexpr uint8_t kRespPasidValid = 1u << 0;

// The guest's answer for one group, keyed by its identifiers (24 bytes).
struct GuestPageResponse {
  uint64_t virt_id = 0;    // @0
  uint32_t viommu_id = 0;  // @8
  uint32_t pasid = 0;      // @12 (if kRespPasidValid)
  uint16_t prgi = 0;       // @16
  uint8_t code = 0;        // @18 kGuest*
  uint8_t flags = 0;       // @19 kResp*
  uint32_t reserved = 0;   // @20
  bool operator==(const GuestPageResponse&) const = default;
};
inline constexpr size_t kGuestPageResponseSize = 24;

// GUEST_RESET: every open group of the vIOMMU (or, with kResetWholeVm, of the VM) is answered
// INVALID at once.
inline constexpr uint32_t kResetWholeVm = 1u << 0;
struct GuestReset {
  uint32_t viommu_id = 0;  // @0
  uint32_t flags = 0;      // @4
  bool operator==(const GuestReset&) const = default;
};
inline constexpr size_t kGuestResetSize = 8;

void encodeGuestPageRequest(const GuestPageRequest& r, uint8_t* out);
GuestPageRequest decodeGuestPageRequest(const uint8_t* in);
void encodeGuestPageResponse(const GuestPageResponse& r, uint8_t* out);
GuestPageResponse decodeGuestPageResponse(const uint8_t* in);
void encodeGuestReset(const GuestReset& r, uint8_t* out);
GuestReset decodeGuestReset(const uint8_t* in);

std::vector<uint8_t> vmNameFrame(std::string_view name);
void appendGuestPageReqFrame(std::vector<uint8_t>& out, std::span<const GuestPageRequest> group);
std::vector<uint8_t> guestPageRespFrame(std::span<const GuestPageResponse> responses);
std::vector<uint8_t> guestResetFrame(const GuestReset& reset);

// What the forwarder accepts from a VMM, and what a VMM accepts from the forwarder.
const MessageTable& forwarderInboundTable();
const MessageTable& vmmInboundTable();

}  // namespace iopf::qemu_socket::fwd
