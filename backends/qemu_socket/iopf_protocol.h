// Profile "iopf" (P2) of the QEMU socket backend: ids, payloads and their codecs. The normative
// text is docs/protocols/qemu-socket.md §3; this header and that document MUST agree.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "pgfault_record.h"
#include "vhost_user_codec.h"

namespace iopf::qemu_socket::p2 {

// Message ids (outside the upstream vhost-user id space, which is below 0x100).
inline constexpr uint32_t kHello = 0x1000;
inline constexpr uint32_t kDeviceAdd = 0x1001;
inline constexpr uint32_t kDeviceDel = 0x1002;
inline constexpr uint32_t kPageReq = 0x1010;
inline constexpr uint32_t kPageResp = 0x1011;
inline constexpr uint32_t kInvalidate = 0x1012;  // reserved: needs kFeatureInvalidate (not offered in 1.0)
inline constexpr uint32_t kError = 0x10ff;

inline constexpr uint32_t kMagic = 0x46504F49;  // 'I' 'O' 'P' 'F' in memory order
inline constexpr uint16_t kMajor = 1;
inline constexpr uint16_t kMinor = 0;

// Feature bits of HELLO. The server accepts the intersection of what the peer asks and it offers.
inline constexpr uint64_t kFeatureBatch = 1ull << 0;       // up to kMaxBatch records/responses per frame
inline constexpr uint64_t kFeatureInvalidate = 1ull << 1;  // reserved for INVALIDATE (not offered in 1.0)
inline constexpr uint64_t kServerFeatures = kFeatureBatch;

inline constexpr uint32_t kMaxBatch = 256;
inline constexpr uint32_t kMaxErrorText = 256;
// Largest payload of the profile: a full PAGE_REQ batch.
inline constexpr uint32_t kMaxPayload = kMaxBatch * kPgfaultSize;

// DEVICE_ADD flags.
inline constexpr uint8_t kDeviceNeedsPasid = 1u << 0;  // PRG response needs PASID
inline constexpr uint8_t kDeviceStallModel = 1u << 1;  // SMMU stall: single-request groups
inline constexpr uint8_t kDeviceKnownFlags = kDeviceNeedsPasid | kDeviceStallModel;
inline constexpr uint8_t kMaxPasidBits = 20;

// u64 status of DEVICE_ADD / DEVICE_DEL replies.
enum class Status : uint64_t {
  kOk = 0,
  kAlreadyExists = 1,      // dev_id already declared on this connection
  kNotFound = 2,           // DEVICE_DEL of an undeclared dev_id
  kInvalidArgument = 3,    // a field out of range or a reserved field non-zero
  kResourceExhausted = 4,  // too many devices on this connection
  kInternal = 5,           // the router refused the device
};
std::string_view toString(Status status);

struct Hello {
  uint32_t magic = kMagic;  // @0
  uint16_t major = kMajor;  // @4
  uint16_t minor = kMinor;  // @6
  uint64_t features = 0;    // @8
  bool operator==(const Hello&) const = default;
};
inline constexpr size_t kHelloSize = 16;

struct DeviceAdd {
  uint32_t dev_id = 0;                 // @0  the VMM's own handle, unique per connection
  uint16_t rid = 0;                    // @4  BDF as the VMM/guest sees it
  uint16_t segment = 0;                // @6
  uint8_t pasid_bits = 0;              // @8  0 = no PASID, at most 20
  uint8_t flags = 0;                   // @9  kDevice*
  uint16_t reserved0 = 0;              // @10 must be 0
  uint32_t pri_outstanding_alloc = 0;  // @12 PRI credits, 0 = unbounded
  uint32_t viommu_id = 0;              // @16 the VMM's vIOMMU instance
  uint32_t reserved1 = 0;              // @20 must be 0
  uint64_t virt_id = 0;                // @24 the VMM's virtual device id (vRID / vSID / endpoint)
  bool operator==(const DeviceAdd&) const = default;
};
inline constexpr size_t kDeviceAddSize = 32;

struct ErrorMessage {
  uint32_t code = 0;     // @0 WireError
  uint32_t request = 0;  // @4 id of the offending message (0 if none)
  std::string text;      // @8 UTF-8, not NUL-terminated, at most kMaxErrorText bytes
  bool operator==(const ErrorMessage&) const = default;
};

void encodeHello(const Hello& hello, uint8_t* out);
Hello decodeHello(const uint8_t* in);
void encodeDeviceAdd(const DeviceAdd& add, uint8_t* out);
DeviceAdd decodeDeviceAdd(const uint8_t* in);

// Whole frames (header + payload), for the server, the client library and golden tests.
std::vector<uint8_t> helloFrame(const Hello& hello, bool reply);
std::vector<uint8_t> deviceAddFrame(const DeviceAdd& add);
std::vector<uint8_t> deviceDelFrame(uint32_t dev_id);
std::vector<uint8_t> statusReplyFrame(uint32_t request, Status status);
std::vector<uint8_t> pageReqFrame(std::span<const PgfaultRecord> records);
std::vector<uint8_t> pageRespFrame(std::span<const PageResponseRecord> responses);
std::vector<uint8_t> errorFrame(const ErrorMessage& error);
void appendErrorFrame(std::vector<uint8_t>& out, const ErrorMessage& error);
ErrorMessage decodeError(std::span<const uint8_t> payload);

// What the server accepts from a peer, and what a peer accepts from the server.
const MessageTable& serverInboundTable();
const MessageTable& peerInboundTable();

}  // namespace iopf::qemu_socket::p2
