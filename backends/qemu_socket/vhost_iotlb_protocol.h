// Profile "vhost-iotlb" (P1): the upstream vhost-user messages the front-end role needs, byte for
// byte (vmm-protocols.md §3.1; docs/protocols/qemu-socket.md §4). Framing is vhost_user_codec.h.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "vhost_user_codec.h"

namespace iopf::qemu_socket::vu {

// Front-end → back-end requests (main socket).
inline constexpr uint32_t kGetFeatures = 1;
inline constexpr uint32_t kSetFeatures = 2;
inline constexpr uint32_t kSetOwner = 3;
inline constexpr uint32_t kSetMemTable = 5;
inline constexpr uint32_t kSetVringNum = 8;
inline constexpr uint32_t kSetVringAddr = 9;
inline constexpr uint32_t kSetVringBase = 10;
inline constexpr uint32_t kGetVringBase = 11;
inline constexpr uint32_t kSetVringKick = 12;
inline constexpr uint32_t kSetVringCall = 13;
inline constexpr uint32_t kGetProtocolFeatures = 15;
inline constexpr uint32_t kSetProtocolFeatures = 16;
inline constexpr uint32_t kGetQueueNum = 17;
inline constexpr uint32_t kSetVringEnable = 18;
inline constexpr uint32_t kSetBackendReqFd = 21;
inline constexpr uint32_t kIotlbMsg = 22;
// Back-end → front-end requests (back-end channel).
inline constexpr uint32_t kBackendIotlbMsg = 1;

// Virtio / vhost-user feature bits.
inline constexpr uint64_t kFeatureProtocolFeatures = 1ull << 30;  // VHOST_USER_F_PROTOCOL_FEATURES
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;          // VIRTIO_F_VERSION_1
inline constexpr uint64_t kFeatureIommuPlatform = 1ull << 33;     // VIRTIO_F_IOMMU_PLATFORM
inline constexpr uint64_t kProtocolReplyAck = 1ull << 3;
inline constexpr uint64_t kProtocolBackendReq = 1ull << 5;

// struct vhost_iotlb_msg (32 bytes).
inline constexpr size_t kIotlbMsgSize = 32;
inline constexpr uint8_t kIotlbMiss = 1;
inline constexpr uint8_t kIotlbUpdate = 2;
inline constexpr uint8_t kIotlbInvalidate = 3;
inline constexpr uint8_t kIotlbAccessFail = 4;
inline constexpr uint8_t kPermNone = 0, kPermRo = 1, kPermWo = 2, kPermRw = 3;

struct IotlbMsg {
  uint64_t iova = 0;   // @0
  uint64_t size = 0;   // @8
  uint64_t uaddr = 0;  // @16 front-end virtual address
  uint8_t perm = 0;    // @24
  uint8_t type = 0;    // @25 (6 bytes padding follow)
  bool operator==(const IotlbMsg&) const = default;
};
void encodeIotlb(const IotlbMsg& msg, uint8_t* out);
IotlbMsg decodeIotlb(const uint8_t* in);

// VhostUserMemoryRegion (32 bytes); SET_MEM_TABLE = {u32 nregions, u32 padding, regions[n]}.
struct MemoryRegion {
  uint64_t guest_phys_addr = 0;
  uint64_t memory_size = 0;
  uint64_t userspace_addr = 0;
  uint64_t mmap_offset = 0;
};
inline constexpr size_t kMemoryRegionSize = 32;
inline constexpr uint32_t kMaxMemoryRegions = 8;

// Frames the front-end sends (golden-tested).
std::vector<uint8_t> getFrame(uint32_t request);  // GET_FEATURES, GET_PROTOCOL_FEATURES, SET_OWNER, ...
std::vector<uint8_t> u64Frame(uint32_t request, uint32_t flags, uint64_t value);
std::vector<uint8_t> memTableFrame(std::span<const MemoryRegion> regions, uint32_t flags);
// VhostUserVringState {u32 index, u32 num}.
std::vector<uint8_t> vringStateFrame(uint32_t request, uint32_t index, uint32_t num, uint32_t flags);
// VhostUserVringAddr {u32 index, u32 flags, u64 desc, u64 used, u64 avail, u64 log} (40 bytes).
std::vector<uint8_t> vringAddrFrame(uint32_t index, uint64_t desc, uint64_t used, uint64_t avail, uint32_t flags);
std::vector<uint8_t> iotlbFrame(uint32_t request, const IotlbMsg& msg, uint32_t flags);

// Replies the front-end accepts on the main socket; requests it accepts on the back-end channel.
const MessageTable& frontEndReplyTable();
const MessageTable& backendChannelTable();

}  // namespace iopf::qemu_socket::vu
