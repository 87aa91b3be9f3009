#include "iopf_protocol.h"

#include <algorithm>

namespace iopf::qemu_socket::p2 {

std::string_view toString(Status status) {
  switch (status) {
    case Status::kOk: return "ok";
    case Status::kAlreadyExists: return "already-exists";
    case Status::kNotFound: return "not-found";
    case Status::kInvalidArgument: return "invalid-argument";
    case Status::kResourceExhausted: return "resource-exhausted";
    case Status::kInternal: return "internal";
  }
  return "unknown";
}

void encodeHello(const Hello& h, uint8_t* out) {
  putU32(out, h.magic);
  putU16(out + 4, h.major);
  putU16(out + 6, h.minor);
  putU64(out + 8, h.features);
}

Hello decodeHello(const uint8_t* in) { return Hello{getU32(in), getU16(in + 4), getU16(in + 6), getU64(in + 8)}; }

void encodeDeviceAdd(const DeviceAdd& a, uint8_t* out) {
  putU32(out, a.dev_id);
  putU16(out + 4, a.rid);
  putU16(out + 6, a.segment);
  out[8] = a.pasid_bits;
  out[9] = a.flags;
  putU16(out + 10, a.reserved0);
  putU32(out + 12, a.pri_outstanding_alloc);
  putU32(out + 16, a.viommu_id);
  putU32(out + 20, a.reserved1);
  putU64(out + 24, a.virt_id);
}

DeviceAdd decodeDeviceAdd(const uint8_t* in) {
  DeviceAdd a;
  a.dev_id = getU32(in);
  a.rid = getU16(in + 4);
  a.segment = getU16(in + 6);
  a.pasid_bits = in[8];
  a.flags = in[9];
  a.reserved0 = getU16(in + 10);
  a.pri_outstanding_alloc = getU32(in + 12);
  a.viommu_id = getU32(in + 16);
  a.reserved1 = getU32(in + 20);
  a.virt_id = getU64(in + 24);
  return a;
}

std::vector<uint8_t> helloFrame(const Hello& hello, bool reply) {
  uint8_t p[kHelloSize];
  encodeHello(hello, p);
  return encodeFrame(kHello, reply ? kFlagReply : 0, p);
}

std::vector<uint8_t> deviceAddFrame(const DeviceAdd& add) {
  uint8_t p[kDeviceAddSize];
  encodeDeviceAdd(add, p);
  return encodeFrame(kDeviceAdd, 0, p);
}

std::vector<uint8_t> deviceDelFrame(uint32_t dev_id) {
  uint8_t p[4];
  putU32(p, dev_id);
  return encodeFrame(kDeviceDel, 0, p);
}

std::vector<uint8_t> statusReplyFrame(uint32_t request, Status status) {
  uint8_t p[8];
  putU64(p, static_cast<uint64_t>(status));
  return encodeFrame(request, kFlagReply, p);
}

std::vector<uint8_t> pageReqFrame(std::span<const PgfaultRecord> records) {
  std::vector<uint8_t> p(records.size() * kPgfaultSize);
  for (size_t i = 0; i < records.size(); ++i) encodePgfault(records[i], p.data() + i * kPgfaultSize);
  return encodeFrame(kPageReq, 0, p);
}

std::vector<uint8_t> pageRespFrame(std::span<const PageResponseRecord> responses) {
  std::vector<uint8_t> p(responses.size() * kPageResponseSize);
  for (size_t i = 0; i < responses.size(); ++i) encodePageResponse(responses[i], p.data() + i * kPageResponseSize);
  return encodeFrame(kPageResp, 0, p);
}

void appendErrorFrame(std::vector<uint8_t>& out, const ErrorMessage& e) {
  const size_t text = std::min<size_t>(e.text.size(), kMaxErrorText);
  std::vector<uint8_t> p(8 + text);
  putU32(p.data(), e.code);
  putU32(p.data() + 4, e.request);
  std::memcpy(p.data() + 8, e.text.data(), text);
  appendFrame(out, kError, 0, p);
}

std::vector<uint8_t> errorFrame(const ErrorMessage& e) {
  std::vector<uint8_t> out;
  appendErrorFrame(out, e);
  return out;
}

ErrorMessage decodeError(std::span<const uint8_t> payload) {
  ErrorMessage e;
  if (payload.size() < 8) return e;
  e.code = getU32(payload.data());
  e.request = getU32(payload.data() + 4);
  e.text.assign(reinterpret_cast<const char*>(payload.data() + 8), payload.size() - 8);
  return e;
}

const MessageTable& serverInboundTable() {
  static const MessageTable table("iopf", {
      {kHello, "HELLO", kHelloSize, kHelloSize, 0, 0, 0},
      {kDeviceAdd, "DEVICE_ADD", kDeviceAddSize, kDeviceAddSize, 0, 0, 0},
      {kDeviceDel, "DEVICE_DEL", 4, 4, 0, 0, 0},
      {kPageReq, "PAGE_REQ", kPgfaultSize, kMaxPayload, kPgfaultSize, 0, 0},
      {kError, "ERROR", 8, 8 + kMaxErrorText, 0, 0, 0},
  });
  return table;
}

const MessageTable& peerInboundTable() {
  static const MessageTable table("iopf", {
      {kHello, "HELLO", kHelloSize, kHelloSize, 0, 0, 0},
      {kDeviceAdd, "DEVICE_ADD", 8, 8, 0, 0, 0},
      {kDeviceDel, "DEVICE_DEL", 8, 8, 0, 0, 0},
      {kPageResp, "PAGE_RESP", kPageResponseSize, kMaxBatch * kPageResponseSize, kPageResponseSize, 0, 0},
      {kError, "ERROR", 8, 8 + kMaxErrorText, 0, 0, 0},
  });
  return table;
}

}  // namespace iopf::qemu_socket::p2
