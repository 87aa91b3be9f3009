// Golden vectors: the VT-d page request / page group response descriptors (vmm-protocols.md
// §4.1-4.2, bit by bit), the PRQ ring, and the FORWARD messages of the iopf profile.
#include <gtest/gtest.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "iopf_forward_protocol.h"
#include "vtd_prq.h"

namespace iopf::qemu_socket {
namespace {

std::vector<uint8_t> bytes(std::initializer_list<int> v) {
  return std::vector<uint8_t>(v.begin(), v.end());
}

iopf_vtd_page_request fullRequest() {
  iopf_vtd_page_request r{};
  r.rid = 0x0310;  // 03:02.0
  r.pasid = 0x12345;
  r.pasid_present = 1;
  r.priv_req = 1;
  r.read = 1;
  r.write = 1;
  r.lpig = 1;
  r.prgi = 0x1a5;
  r.addr = 0x7f1234567000;
  r.private_data[0] = 0x1122334455667788;
  return r;
}

TEST(VtdDescriptors, PageRequestGoldenVector) {
  // QW0 = type 1 | PP << 8 | RID << 16 | PASID << 32 | PM << 53 = 0x0021234503100101
  // QW1 = RD | WR << 1 | LPIG << 2 | PRGI << 3 | addr       = 0x00007f1234567d2f
  const auto want = bytes({0x01, 0x01, 0x10, 0x03, 0x45, 0x23, 0x21, 0x00,  //
                           0x2f, 0x7d, 0x56, 0x34, 0x12, 0x7f, 0x00, 0x00,  //
                           0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  //
                           0,    0,    0,    0,    0,    0,    0,    0});
  const iopf_vtd_page_request r = fullRequest();
  uint8_t out[IOPF_VTD_PRD_SIZE];
  iopf_vtd_encode_page_request(&r, out);
  EXPECT_EQ(std::vector<uint8_t>(out, out + sizeof out), want);
  iopf_vtd_page_request back{};
  ASSERT_EQ(iopf_vtd_decode_page_request(want.data(), want.size(), &back), 0);
  EXPECT_EQ(std::memcmp(&back, &r, sizeof r), 0);
}

TEST(VtdDescriptors, PageRequestExecNoPasidMasksFieldsToTheirWidths) {
  iopf_vtd_page_request r{};
  r.rid = 0xffff;
  r.pasid = 0;
  r.exec_req = 1;
  r.read = 1;
  r.prgi = 0x3ff;               // 10 bits given: 9 kept
  r.addr = 0xfffffffffffff123;  // offset dropped
  uint8_t out[IOPF_VTD_PRD_SIZE];
  iopf_vtd_encode_page_request(&r, out);
  // QW0 = 1 | 0xffff << 16 | ER << 52 = 0x00100000ffff0001; QW1 = 1 | 0x1ff << 3 | 0xfff..f000
  EXPECT_EQ(std::vector<uint8_t>(out, out + 16), bytes({0x01, 0x00, 0xff, 0xff, 0x00, 0x00, 0x10, 0x00,  //
                                                        0xf9, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}));
  iopf_vtd_page_request back{};
  ASSERT_EQ(iopf_vtd_decode_page_request(out, sizeof out, &back), 0);
  EXPECT_EQ(back.prgi, 0x1ff);
  EXPECT_EQ(back.addr, 0xfffffffffffff000u);
  EXPECT_EQ(back.exec_req, 1);
  EXPECT_EQ(back.pasid_present, 0);
}

TEST(VtdDescriptors, PageRequestDecoderRefusesWrongTypeReservedBitsAndShortInput) {
  const iopf_vtd_page_request r = fullRequest();
  uint8_t d[IOPF_VTD_PRD_SIZE];
  iopf_vtd_encode_page_request(&r, d);
  iopf_vtd_page_request out{};
  EXPECT_EQ(iopf_vtd_decode_page_request(d, 31, &out), -EINVAL);
  uint8_t bad[IOPF_VTD_PRD_SIZE];
  std::memcpy(bad, d, sizeof d);
  bad[0] = 2;  // type
  EXPECT_EQ(iopf_vtd_decode_page_request(bad, sizeof bad, &out), -EINVAL);
  std::memcpy(bad, d, sizeof d);
  bad[1] |= 0x02;  // bit 9 (reserved 15:9)
  EXPECT_EQ(iopf_vtd_decode_page_request(bad, sizeof bad, &out), -EPROTO);
  std::memcpy(bad, d, sizeof d);
  bad[7] |= 0x40;  // bit 62 (reserved 63:54)
  EXPECT_EQ(iopf_vtd_decode_page_request(bad, sizeof bad, &out), -EPROTO);
}

TEST(VtdDescriptors, PageGroupResponseGoldenVectors) {
  iopf_vtd_page_group_response g{};
  g.rid = 0x0310;
  g.pasid = 0x12345;
  g.pasid_present = 1;
  g.response_code = IOPF_VTD_RC_INVALID_REQUEST;
  g.prgi = 0x1a5;
  g.lpig = 1;
  // QW0 = 9 | PP << 4 | RC << 12 | RID << 16 | PASID << 32 = 0x0001234503101019; QW1 = LPIG << 2 | PRGI << 3
  const auto want = bytes({0x19, 0x10, 0x10, 0x03, 0x45, 0x23, 0x01, 0x00,  //
                           0x2c, 0x0d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00});
  uint8_t out[IOPF_VTD_PGRESP_SIZE];
  iopf_vtd_encode_page_group_response(&g, out);
  EXPECT_EQ(std::vector<uint8_t>(out, out + sizeof out), want);
  iopf_vtd_page_group_response back{};
  ASSERT_EQ(iopf_vtd_decode_page_group_response(want.data(), want.size(), &back), 0);
  EXPECT_EQ(std::memcmp(&back, &g, sizeof g), 0);

  g.response_code = IOPF_VTD_RC_RESPONSE_FAILURE;  // RC 0xF in bits 15:12
  iopf_vtd_encode_page_group_response(&g, out);
  EXPECT_EQ(out[1], 0xf0);
  ASSERT_EQ(iopf_vtd_decode_page_group_response(out, sizeof out, &back), 0);
  EXPECT_EQ(back.response_code, 0xf);
}

TEST(VtdDescriptors, PageGroupResponseDecoderAppliesQemusReservedMasks) {
  iopf_vtd_page_group_response g{};
  g.rid = 0x0010;
  g.pasid_present = 1;
  g.prgi = 3;
  uint8_t d[IOPF_VTD_PGRESP_SIZE];
  iopf_vtd_encode_page_group_response(&g, d);
  iopf_vtd_page_group_response out{};
  EXPECT_EQ(iopf_vtd_decode_page_group_response(d, 15, &out), -EINVAL);
  for (int bit : {5, 6, 7, 8, 52, 63}) {  // RSVD_LO 0xfff00000000001e0
    uint8_t bad[IOPF_VTD_PGRESP_SIZE];
    std::memcpy(bad, d, sizeof d);
    bad[bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_EQ(iopf_vtd_decode_page_group_response(bad, sizeof bad, &out), -EPROTO) << "QW0 bit " << bit;
  }
  for (int bit : {0, 1, 12, 40, 63}) {  // RSVD_HI 0xfffffffffffff003
    uint8_t bad[IOPF_VTD_PGRESP_SIZE];
    std::memcpy(bad, d, sizeof d);
    bad[8 + bit / 8] |= static_cast<uint8_t>(1u << (bit % 8));
    EXPECT_EQ(iopf_vtd_decode_page_group_response(bad, sizeof bad, &out), -EPROTO) << "QW1 bit " << bit;
  }
  uint8_t bad[IOPF_VTD_PGRESP_SIZE];
  std::memcpy(bad, d, sizeof d);
  bad[1] |= 0x02;  // bit 9: type becomes 0x19
  EXPECT_EQ(iopf_vtd_decode_page_group_response(bad, sizeof bad, &out), -EINVAL);
  std::memcpy(bad, d, sizeof d);
  bad[0] = (bad[0] & 0xf0) | 0x1;  // a page request's type
  EXPECT_EQ(iopf_vtd_decode_page_group_response(bad, sizeof bad, &out), -EINVAL);
}

TEST(VtdPrq, RingFillsSetsPprAndProAndWrapsAround) {
  std::vector<uint8_t> memory(128 * IOPF_VTD_PRD_SIZE);
  iopf_vtd_prq q;
  EXPECT_EQ(iopf_vtd_prq_init(&q, memory.data(), memory.size() - 1, 0), -EINVAL);
  EXPECT_EQ(iopf_vtd_prq_init(&q, memory.data(), memory.size(), 8), -EINVAL);
  ASSERT_EQ(iopf_vtd_prq_init(&q, memory.data(), memory.size(), 0), 0);  // 2^7 entries
  iopf_vtd_page_request r = fullRequest();
  iopf_vtd_page_request out{};
  EXPECT_EQ(iopf_vtd_prq_pop(&q, &out), -EAGAIN);
  for (uint16_t i = 0; i < 127; ++i) {  // one slot stays empty: head == tail means empty
    r.prgi = i;
    ASSERT_EQ(iopf_vtd_prq_push(&q, &r), 0) << i;
  }
  EXPECT_EQ(iopf_vtd_prq_pending(&q), 127u);
  EXPECT_EQ(q.status & IOPF_VTD_PRS_PPR, IOPF_VTD_PRS_PPR);
  EXPECT_EQ(iopf_vtd_prq_push(&q, &r), -ENOSPC);
  EXPECT_EQ(q.status & IOPF_VTD_PRS_PRO, IOPF_VTD_PRS_PRO);
  ASSERT_EQ(iopf_vtd_prq_pop(&q, &out), 0);
  EXPECT_EQ(out.prgi, 0);
  // PRO stays until the guest clears it (RW1C), even with room.
  EXPECT_EQ(iopf_vtd_prq_push(&q, &r), -ENOSPC);
  q.status &= ~IOPF_VTD_PRS_PRO;
  r.prgi = 0x1ff;
  ASSERT_EQ(iopf_vtd_prq_push(&q, &r), 0);  // wraps to offset 0
  EXPECT_EQ(q.tail, 0u);
  for (uint16_t i = 1; i < 127; ++i) {
    ASSERT_EQ(iopf_vtd_prq_pop(&q, &out), 0);
    EXPECT_EQ(out.prgi, i);
  }
  ASSERT_EQ(iopf_vtd_prq_pop(&q, &out), 0);
  EXPECT_EQ(out.prgi, 0x1ff);
  EXPECT_EQ(q.status & IOPF_VTD_PRS_PPR, 0u);
  EXPECT_EQ(q.overflows, 2u);
}

TEST(ForwardProtocol, GuestPageRequestResponseAndResetGoldenVectors) {
  fwd::GuestPageRequest r;
  r.virt_id = 0x0102030405060708;
  r.viommu_id = 0x11223344;
  r.rid = 0x0310;
  r.flags = fwd::kReqPasidValid | fwd::kReqLast;
  r.perm = 3;
  r.pasid = 0x12345;
  r.prgi = 0x1a5;
  r.addr = 0x7f1234567000;
  uint8_t req[fwd::kGuestPageRequestSize];
  fwd::encodeGuestPageRequest(r, req);
  EXPECT_EQ(std::vector<uint8_t>(req, req + sizeof req),
            bytes({0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01, 0x44, 0x33, 0x22,
                   0x11, 0x10, 0x03, 0x03, 0x03, 0x45, 0x23, 0x01, 0x00, 0xa5, 0x01,
                   0x00, 0x00, 0x00, 0x70, 0x56, 0x34, 0x12, 0x7f, 0x00, 0x00}));
  EXPECT_EQ(fwd::decodeGuestPageRequest(req), r);

  fwd::GuestPageResponse a;
  a.virt_id = 0x10;
  a.viommu_id = 1;
  a.pasid = 5;
  a.prgi = 0x1ff;
  a.code = fwd::kGuestFailure;
  a.flags = fwd::kRespPasidValid;
  const std::vector<uint8_t> frame = fwd::guestPageRespFrame(std::span(&a, 1));
  EXPECT_EQ(frame, bytes({0x22, 0x10, 0, 0, 0x01, 0,    0,    0,    0x18, 0, 0, 0,  //
                          0x10, 0,    0, 0, 0,    0,    0,    0,    0x01, 0, 0, 0,
                          0x05, 0,    0, 0, 0xff, 0x01, 0x02, 0x01, 0,    0, 0, 0}));
  EXPECT_EQ(fwd::decodeGuestPageResponse(frame.data() + kHeaderSize), a);

  EXPECT_EQ(fwd::guestResetFrame({7, fwd::kResetWholeVm}),
            bytes({0x23, 0x10, 0, 0, 0x09, 0, 0, 0, 0x08, 0, 0, 0, 0x07, 0, 0, 0, 0x01, 0, 0, 0}));
  EXPECT_EQ(fwd::vmNameFrame("vm1"), bytes({0x20, 0x10, 0, 0, 0x09, 0, 0, 0, 0x03, 0, 0, 0, 'v', 'm', '1'}));
}

TEST(ForwardProtocol, TablesCheckSizesOfEveryForwardMessage) {
  Frame f;
  f.header.request = fwd::kGuestPageResp;
  std::vector<uint8_t> payload(25);
  f.header.size = 25;
  f.payload = payload;
  auto e = fwd::forwarderInboundTable().check(f);
  ASSERT_TRUE(e.has_value());
  EXPECT_EQ(e->code, WireError::kBadPayloadSize);
  payload.resize(48);
  f.header.size = 48;
  f.payload = payload;
  EXPECT_FALSE(fwd::forwarderInboundTable().check(f).has_value());
  f.header.request = fwd::kVmName;
  payload.resize(65);
  f.header.size = 65;
  f.payload = payload;
  EXPECT_TRUE(fwd::forwarderInboundTable().check(f).has_value());
  f.header.request = fwd::kGuestPageReq;  // only the router sends it
  EXPECT_EQ(fwd::forwarderInboundTable().check(f)->code, WireError::kUnknownRequest);
}

}  // namespace
}  // namespace iopf::qemu_socket
