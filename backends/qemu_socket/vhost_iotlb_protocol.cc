#include "vhost_iotlb_protocol.h"

namespace iopf::qemu_socket::vu {

void encodeIotlb(const IotlbMsg& m, uint8_t* out) {
  std::memset(out, 0, kIotlbMsgSize);
  putU64(out, m.iova);
  putU64(out + 8, m.size);
  putU64(out + 16, m.uaddr);
  out[24] = m.perm;
  out[25] = m.type;
}

IotlbMsg decodeIotlb(const uint8_t* in) {
  return IotlbMsg{getU64(in), getU64(in + 8), getU64(in + 16), in[24], in[25]};
}

std::vector<uint8_t> getFrame(uint32_t request) { return encodeFrame(request, 0, {}); }

std::vector<uint8_t> u64Frame(uint32_t request, uint32_t flags, uint64_t value) {
  uint8_t p[8];
  putU64(p, value);
  return encodeFrame(request, flags, p);
}

std::vector<uint8_t> memTableFrame(std::span<const MemoryRegion> regions, uint32_t flags) {
  std::vector<uint8_t> p(8 + regions.size() * kMemoryRegionSize, 0);
  putU32(p.data(), static_cast<uint32_t>(regions.size()));
  for (size_t i = 0; i < regions.size(); ++i) {
    uint8_t* r = p.data() + 8 + i * kMemoryRegionSize;
    putU64(r, regions[i].guest_phys_addr);
    putU64(r + 8, regions[i].memory_size);
    putU64(r + 16, regions[i].userspace_addr);
    putU64(r + 24, regions[i].mmap_offset);
  }
  return encodeFrame(kSetMemTable, flags, p);
}

std::vector<uint8_t> vringStateFrame(uint32_t request, uint32_t index, uint32_t num, uint32_t flags) {
  uint8_t p[8];
  putU32(p, index);
  putU32(p + 4, num);
  return encodeFrame(request, flags, p);
}

std::vector<uint8_t> vringAddrFrame(uint32_t index, uint64_t desc, uint64_t used, uint64_t avail, uint32_t flags) {
  uint8_t p[40] = {};
  putU32(p, index);
  putU32(p + 4, 0);
  putU64(p + 8, desc);
  putU64(p + 16, used);
  putU64(p + 24, avail);
  putU64(p + 32, 0);
  return encodeFrame(kSetVringAddr, flags, p);
}

std::vector<uint8_t> iotlbFrame(uint32_t request, const IotlbMsg& msg, uint32_t flags) {
  uint8_t p[kIotlbMsgSize];
  encodeIotlb(msg, p);
  return encodeFrame(request, flags, p);
}

const MessageTable& frontEndReplyTable() {
  // Every reply the front-end can get is a u64 (feature words, queue numbers, REPLY_ACK status);
  // GET_VRING_BASE answers a vring state.
  static const MessageTable table("vhost-iotlb", {
      {kGetFeatures, "GET_FEATURES", 8, 8, 0, 0, 0},
      {kSetFeatures, "SET_FEATURES", 8, 8, 0, 0, 0},
      {kSetOwner, "SET_OWNER", 8, 8, 0, 0, 0},
      {kSetMemTable, "SET_MEM_TABLE", 8, 8 + kMaxMemoryRegions * kMemoryRegionSize, 0, 0, 0},
      {kSetVringNum, "SET_VRING_NUM", 8, 8, 0, 0, 0},
      {kSetVringAddr, "SET_VRING_ADDR", 8, 8, 0, 0, 0},
      {kSetVringBase, "SET_VRING_BASE", 8, 8, 0, 0, 0},
      {kGetVringBase, "GET_VRING_BASE", 8, 8, 0, 0, 0},
      {kSetVringKick, "SET_VRING_KICK", 8, 8, 0, 0, 0},
      {kSetVringCall, "SET_VRING_CALL", 8, 8, 0, 0, 0},
      {kGetProtocolFeatures, "GET_PROTOCOL_FEATURES", 8, 8, 0, 0, 0},
      {kSetProtocolFeatures, "SET_PROTOCOL_FEATURES", 8, 8, 0, 0, 0},
      {kGetQueueNum, "GET_QUEUE_NUM", 8, 8, 0, 0, 0},
      {kSetVringEnable, "SET_VRING_ENABLE", 8, 8, 0, 0, 0},
      {kSetBackendReqFd, "SET_BACKEND_REQ_FD", 8, 8, 0, 0, 0},
      {kIotlbMsg, "IOTLB_MSG", 8, 8, 0, 0, 0},
  });
  return table;
}

const MessageTable& backendChannelTable() {
  static const MessageTable table("vhost-iotlb", {
      {kBackendIotlbMsg, "BACKEND_IOTLB_MSG", kIotlbMsgSize, kIotlbMsgSize, 0, 0, 0},
  });
  return table;
}

}  // namespace iopf::qemu_socket::vu
