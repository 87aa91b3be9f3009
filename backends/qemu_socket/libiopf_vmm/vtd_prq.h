/* VT-d page-request-queue model for VMMs that inject host page requests into a guest's emulated
 * Intel IOMMU (vmm-protocols.md §4.1-4.2, VT-d spec 7.4.1). Plain C, no allocation.
 *
 * - Page Request Descriptor (32 bytes, VMM -> guest PRQ): type 1, PP, RID (as the guest sees it),
 *   PASID, ER, PM in QW0; RD, WR, LPIG, PRGI and the page address in QW1; QW2-3 private data.
 * - Page Group Response descriptor (16 bytes, guest invalidation queue -> VMM): type 9, PP,
 *   Response Code, RID, PASID in QW0; LPIG and PRGI in QW1.
 * - A PRQ ring in guest memory: 2^(PQS+7) descriptors, head/tail byte offsets, PPR/PRO status bits.
 *
 * All integers in descriptors are little-endian. Decoders never read past the given size and
 * return 0 or a negative errno (-EINVAL: wrong type, -EPROTO: reserved bits set).
 */
#ifndef IOPF_VTD_PRQ_H
#define IOPF_VTD_PRQ_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IOPF_VTD_PRD_SIZE 32u    /* page request descriptor */
#define IOPF_VTD_PGRESP_SIZE 16u /* page group response descriptor (128-bit inv. descriptor) */
#define IOPF_VTD_PRD_TYPE 1u
#define IOPF_VTD_PGRESP_TYPE 9u
/* Response codes of the page group response. */
#define IOPF_VTD_RC_SUCCESS 0u
#define IOPF_VTD_RC_INVALID_REQUEST 1u
#define IOPF_VTD_RC_RESPONSE_FAILURE 0xFu
/* QEMU's reserved-bit masks of the page group response (intel_iommu_internal.h). */
#define IOPF_VTD_PGRESP_RSVD_LO 0xfff00000000001e0ull
#define IOPF_VTD_PGRESP_RSVD_HI 0xfffffffffffff003ull
/* PRS register bits. */
#define IOPF_VTD_PRS_PPR (1u << 0)
#define IOPF_VTD_PRS_PRO (1u << 1)

typedef struct iopf_vtd_page_request {
  uint16_t rid;          /* requester id as the guest sees it (bus << 8 | devfn) */
  uint32_t pasid;        /* 20 bits, meaningful if pasid_present */
  uint8_t pasid_present; /* PP */
  uint8_t exec_req;      /* ER */
  uint8_t priv_req;      /* PM */
  uint8_t read;          /* RD */
  uint8_t write;         /* WR */
  uint8_t lpig;          /* last page in group */
  uint16_t prgi;         /* 9 bits */
  uint64_t addr;         /* page address (bits 11:0 are dropped on encode) */
  uint64_t private_data[2];
} iopf_vtd_page_request;

typedef struct iopf_vtd_page_group_response {
  uint16_t rid;
  uint32_t pasid;
  uint8_t pasid_present; /* PP (QEMU requires 1) */
  uint8_t response_code; /* IOPF_VTD_RC_* (4 bits) */
  uint8_t lpig;          /* Linux sets it, QEMU ignores it */
  uint16_t prgi;         /* 9 bits */
} iopf_vtd_page_group_response;

/* Encodes one page request descriptor into out[IOPF_VTD_PRD_SIZE]. Fields are masked to their
 * widths. */
void iopf_vtd_encode_page_request(const iopf_vtd_page_request* request, uint8_t* out);
/* Decodes in[size]: -EINVAL if size < 32 or the type is not 1, -EPROTO if QW0 bits 15:9 or 63:54
 * (reserved) are set. */
int iopf_vtd_decode_page_request(const uint8_t* in, size_t size, iopf_vtd_page_request* out);
/* Encodes one page group response descriptor into out[IOPF_VTD_PGRESP_SIZE]. */
void iopf_vtd_encode_page_group_response(const iopf_vtd_page_group_response* response, uint8_t* out);
/* Decodes in[size]: -EINVAL if size < 16 or the type (bits 3:0 with 11:9) is not 9, -EPROTO if a
 * reserved bit (QEMU's masks) is set. */
int iopf_vtd_decode_page_group_response(const uint8_t* in, size_t size, iopf_vtd_page_group_response* out);

/* A page request queue in (guest) memory: the VMM pushes at the tail, the guest pops at the head. */
typedef struct iopf_vtd_prq {
  uint8_t* base;   /* PQA address, as mapped in the VMM */
  uint32_t bytes;  /* 2^(pqs+7) * 32 */
  uint32_t head;   /* DMAR_PQH: byte offset, multiple of 32 */
  uint32_t tail;   /* DMAR_PQT */
  uint32_t status; /* DMAR_PRS: IOPF_VTD_PRS_* */
  uint64_t overflows;
} iopf_vtd_prq;

/* Sets up a queue of 2^(pqs+7) entries over `memory` (which must hold that many * 32 bytes).
 * -EINVAL if pqs > 7 or memory is too small. */
int iopf_vtd_prq_init(iopf_vtd_prq* prq, void* memory, size_t memory_bytes, unsigned pqs);
/* VMM side: writes one descriptor at the tail, advances it, sets PPR. -ENOSPC (and PRO set) if the
 * queue is full or PRO is already set (the guest must clear it). */
int iopf_vtd_prq_push(iopf_vtd_prq* prq, const iopf_vtd_page_request* request);
/* Guest side: reads the descriptor at the head and advances it. -EAGAIN if empty. Clears PPR when
 * the queue becomes empty. */
int iopf_vtd_prq_pop(iopf_vtd_prq* prq, iopf_vtd_page_request* out);
/* Descriptors between head and tail. */
uint32_t iopf_vtd_prq_pending(const iopf_vtd_prq* prq);

#ifdef __cplusplus
}
#endif

#endif /* IOPF_VTD_PRQ_H */
