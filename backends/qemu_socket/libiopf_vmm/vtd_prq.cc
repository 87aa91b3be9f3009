// VT-d page request / page group response descriptors and the PRQ ring (vtd_prq.h). Bit layouts:
// vmm-protocols.md §4.1-4.2 (QEMU intel_iommu_internal.h, Linux struct page_req_dsc).
#include "vtd_prq.h"

#include <cerrno>
#include <cstring>

namespace {

void put64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t get64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{p[i]} << (8 * i);
  return v;
}

constexpr uint64_t kPrdRsvdLo = (uint64_t{0x7f} << 9) | (uint64_t{0x3ff} << 54);  // 15:9, 63:54
constexpr uint64_t kPageMask = ~uint64_t{0xfff};

}  // namespace

extern "C" {

void iopf_vtd_encode_page_request(const iopf_vtd_page_request* r, uint8_t* out) {
  uint64_t qw0 = IOPF_VTD_PRD_TYPE;
  qw0 |= uint64_t{r->pasid_present ? 1u : 0u} << 8;
  qw0 |= uint64_t{r->rid} << 16;
  qw0 |= uint64_t{r->pasid & 0xfffffu} << 32;
  qw0 |= uint64_t{r->exec_req ? 1u : 0u} << 52;
  qw0 |= uint64_t{r->priv_req ? 1u : 0u} << 53;
  uint64_t qw1 = 0;
  qw1 |= r->read ? 1u : 0u;
  qw1 |= uint64_t{r->write ? 1u : 0u} << 1;
  qw1 |= uint64_t{r->lpig ? 1u : 0u} << 2;
  qw1 |= uint64_t{r->prgi & 0x1ffu} << 3;
  qw1 |= r->addr & kPageMask;
  put64(out, qw0);
  put64(out + 8, qw1);
  put64(out + 16, r->private_data[0]);
  put64(out + 24, r->private_data[1]);
}

int iopf_vtd_decode_page_request(const uint8_t* in, size_t size, iopf_vtd_page_request* out) {
  if (in == nullptr || out == nullptr || size < IOPF_VTD_PRD_SIZE) return -EINVAL;
  const uint64_t qw0 = get64(in);
  const uint64_t qw1 = get64(in + 8);
  if ((qw0 & 0xff) != IOPF_VTD_PRD_TYPE) return -EINVAL;
  if ((qw0 & kPrdRsvdLo) != 0) return -EPROTO;
  std::memset(out, 0, sizeof *out);
  out->pasid_present = (qw0 >> 8) & 1;
  out->rid = static_cast<uint16_t>(qw0 >> 16);
  out->pasid = static_cast<uint32_t>((qw0 >> 32) & 0xfffff);
  out->exec_req = (qw0 >> 52) & 1;
  out->priv_req = (qw0 >> 53) & 1;
  out->read = qw1 & 1;
  out->write = (qw1 >> 1) & 1;
  out->lpig = (qw1 >> 2) & 1;
  out->prgi = static_cast<uint16_t>((qw1 >> 3) & 0x1ff);
  out->addr = qw1 & kPageMask;
  out->private_data[0] = get64(in + 16);
  out->private_data[1] = get64(in + 24);
  return 0;
}

void iopf_vtd_encode_page_group_response(const iopf_vtd_page_group_response* r, uint8_t* out) {
  uint64_t qw0 = IOPF_VTD_PGRESP_TYPE;  // bits 3:0 = 9, bits 11:9 (type high) = 0
  qw0 |= uint64_t{r->pasid_present ? 1u : 0u} << 4;
  qw0 |= uint64_t{r->response_code & 0xfu} << 12;
  qw0 |= uint64_t{r->rid} << 16;
  qw0 |= uint64_t{r->pasid & 0xfffffu} << 32;
  uint64_t qw1 = 0;
  qw1 |= uint64_t{r->lpig ? 1u : 0u} << 2;
  qw1 |= uint64_t{r->prgi & 0x1ffu} << 3;
  put64(out, qw0);
  put64(out + 8, qw1);
}

int iopf_vtd_decode_page_group_response(const uint8_t* in, size_t size, iopf_vtd_page_group_response* out) {
  if (in == nullptr || out == nullptr || size < IOPF_VTD_PGRESP_SIZE) return -EINVAL;
  const uint64_t qw0 = get64(in);
  const uint64_t qw1 = get64(in + 8);
  const uint64_t type = (qw0 & 0xf) | (((qw0 >> 9) & 0x7) << 4);
  if (type != IOPF_VTD_PGRESP_TYPE) return -EINVAL;
  if ((qw0 & IOPF_VTD_PGRESP_RSVD_LO) != 0 || (qw1 & IOPF_VTD_PGRESP_RSVD_HI) != 0) return -EPROTO;
  std::memset(out, 0, sizeof *out);
  out->pasid_present = (qw0 >> 4) & 1;
  out->response_code = static_cast<uint8_t>((qw0 >> 12) & 0xf);
  out->rid = static_cast<uint16_t>(qw0 >> 16);
  out->pasid = static_cast<uint32_t>((qw0 >> 32) & 0xfffff);
  out->lpig = (qw1 >> 2) & 1;
  out->prgi = static_cast<uint16_t>((qw1 >> 3) & 0x1ff);
  return 0;
}

int iopf_vtd_prq_init(iopf_vtd_prq* prq, void* memory, size_t memory_bytes, unsigned pqs) {
  if (prq == nullptr || memory == nullptr || pqs > 7) return -EINVAL;
  const size_t bytes = (size_t{1} << (pqs + 7)) * IOPF_VTD_PRD_SIZE;
  if (memory_bytes < bytes) return -EINVAL;
  std::memset(prq, 0, sizeof *prq);
  prq->base = static_cast<uint8_t*>(memory);
  prq->bytes = static_cast<uint32_t>(bytes);
  return 0;
}

uint32_t iopf_vtd_prq_pending(const iopf_vtd_prq* prq) {
  return ((prq->tail + prq->bytes - prq->head) % prq->bytes) / IOPF_VTD_PRD_SIZE;
}

int iopf_vtd_prq_push(iopf_vtd_prq* prq, const iopf_vtd_page_request* request) {
  if (prq == nullptr || prq->base == nullptr || request == nullptr) return -EINVAL;
  const uint32_t next = (prq->tail + IOPF_VTD_PRD_SIZE) % prq->bytes;
  if ((prq->status & IOPF_VTD_PRS_PRO) != 0 || next == prq->head) {
    prq->status |= IOPF_VTD_PRS_PRO;
    ++prq->overflows;
    return -ENOSPC;
  }
  iopf_vtd_encode_page_request(request, prq->base + prq->tail);
  prq->tail = next;
  prq->status |= IOPF_VTD_PRS_PPR;
  return 0;
}

int iopf_vtd_prq_pop(iopf_vtd_prq* prq, iopf_vtd_page_request* out) {
  if (prq == nullptr || prq->base == nullptr || out == nullptr) return -EINVAL;
  if (prq->head == prq->tail) return -EAGAIN;
  const int rc = iopf_vtd_decode_page_request(prq->base + prq->head, IOPF_VTD_PRD_SIZE, out);
  prq->head = (prq->head + IOPF_VTD_PRD_SIZE) % prq->bytes;
  if (prq->head == prq->tail) prq->status &= ~IOPF_VTD_PRS_PPR;
  return rc;
}

}  // extern "C"
