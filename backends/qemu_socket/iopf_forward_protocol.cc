#include "iopf_forward_protocol.h"

namespace iopf::qemu_socket::fwd {

void encodeGuestPageRequest(const GuestPageRequest& r, uint8_t* out) {
  putU64(out, r.virt_id);
  putU32(out + 8, r.viommu_id);
  putU16(out + 12, r.rid);
  out[14] = r.flags;
  out[15] = r.perm;
  putU32(out + 16, r.pasid);
  putU16(out + 20, r.prgi);
  putU16(out + 22, r.reserved);
  putU64(out + 24, r.addr);
}

GuestPageRequest decodeGuestPageRequest(const uint8_t* in) {
  GuestPageRequest r;
  r.virt_id = getU64(in);
  r.viommu_id = getU32(in + 8);
  r.rid = getU16(in + 12);
  r.flags = in[14];
  r.perm = in[15];
  r.pasid = getU32(in + 16);
  r.prgi = getU16(in + 20);
  r.reserved = getU16(in + 22);
  r.addr = getU64(in + 24);
  return r;
}

void encodeGuestPageResponse(const GuestPageResponse& r, uint8_t* out) {
  putU64(out, r.virt_id);
  putU32(out + 8, r.viommu_id);
  putU32(out + 12, r.pasid);
  putU16(out + 16, r.prgi);
  out[18] = r.code;
  out[19] = r.flags;
  putU32(out + 20, r.reserved);
}

GuestPageResponse decodeGuestPageResponse(const uint8_t* in) {
  GuestPageResponse r;
  r.virt_id = getU64(in);
  r.viommu_id = getU32(in + 8);
  r.pasid = getU32(in + 12);
  r.prgi = getU16(in + 16);
  r.code = in[18];
  r.flags = in[19];
  r.reserved = getU32(in + 20);
  return r;
}

void encodeGuestReset(const GuestReset& r, uint8_t* out) {
  putU32(out, r.viommu_id);
  putU32(out + 4, r.flags);
}

GuestReset decodeGuestReset(const uint8_t* in) {
  return GuestReset{getU32(in), getU32(in + 4)};
}

std::vector<uint8_t> vmNameFrame(std::string_view name) {
  return encodeFrame(kVmName, kFlagNeedReply,
                     std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(name.data()), name.size()));
}

void appendGuestPageReqFrame(std::vector<uint8_t>& out, std::span<const GuestPageRequest> group) {
  const size_t at = out.size();
  out.resize(at + kHeaderSize + group.size() * kGuestPageRequestSize);
  encodeHeader(
      FrameHeader{kGuestPageReq, kVersion, static_cast<uint32_t>(group.size() * kGuestPageRequestSize)},
      out.data() + at);
  uint8_t* p = out.data() + at + kHeaderSize;
  for (const GuestPageRequest& r : group) {
    encodeGuestPageRequest(r, p);
    p += kGuestPageRequestSize;
  }
}

std::vector<uint8_t> guestPageRespFrame(std::span<const GuestPageResponse> responses) {
  std::vector<uint8_t> payload(responses.size() * kGuestPageResponseSize);
  for (size_t i = 0; i < responses.size(); ++i)
    encodeGuestPageResponse(responses[i], &payload[i * kGuestPageResponseSize]);
  return encodeFrame(kGuestPageResp, 0, payload);
}

std::vector<uint8_t> guestResetFrame(const GuestReset& reset) {
  uint8_t p[kGuestResetSize];
  encodeGuestReset(reset, p);
  return encodeFrame(kGuestReset, kFlagNeedReply, p);
}

const MessageTable& forwarderInboundTable() {
  static const MessageTable table(
      "iopf", {
                  {p2::kHello, "HELLO", p2::kHelloSize, p2::kHelloSize, 0, 0, 0},
                  {p2::kDeviceAdd, "DEVICE_ADD", p2::kDeviceAddSize, p2::kDeviceAddSize, 0, 0, 0},
                  {p2::kDeviceDel, "DEVICE_DEL", 4, 4, 0, 0, 0},
                  {kVmName, "VM_NAME", 1, kMaxVmName, 0, 0, 0},
                  {kGuestPageResp, "GUEST_PAGE_RESP", kGuestPageResponseSize,
                   p2::kMaxBatch * kGuestPageResponseSize, kGuestPageResponseSize, 0, 0},
                  {kGuestReset, "GUEST_RESET", kGuestResetSize, kGuestResetSize, 0, 0, 0},
                  {p2::kError, "ERROR", 8, 8 + p2::kMaxErrorText, 0, 0, 0},
              });
  return table;
}

const MessageTable& vmmInboundTable() {
  static const MessageTable table("iopf",
                                  {
                                      {p2::kHello, "HELLO", p2::kHelloSize, p2::kHelloSize, 0, 0, 0},
                                      {p2::kDeviceAdd, "DEVICE_ADD", 8, 8, 0, 0, 0},
                                      {p2::kDeviceDel, "DEVICE_DEL", 8, 8, 0, 0, 0},
                                      {kVmName, "VM_NAME", 8, 8, 0, 0, 0},
                                      {kGuestReset, "GUEST_RESET", 8, 8, 0, 0, 0},
                                      {kGuestPageReq, "GUEST_PAGE_REQ", kGuestPageRequestSize,
                                       p2::kMaxBatch * kGuestPageRequestSize, kGuestPageRequestSize, 0, 0},
                                      {p2::kError, "ERROR", 8, 8 + p2::kMaxErrorText, 0, 0, 0},
                                  });
  return table;
}

}  // namespace iopf::qemu_socket::fwd
