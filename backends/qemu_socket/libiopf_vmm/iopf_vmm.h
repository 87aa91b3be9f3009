/* libiopf-vmm: the client side of the QEMU socket backend's "iopf" profile, for VMMs and device
 * emulators (docs/protocols/qemu-socket.md §3). Plain C, no allocation in the send/receive path.
 *
 * Usage: iopf_vmm_connect() (socket + HELLO), iopf_vmm_device_add() per device, then
 * iopf_vmm_send() page-request records (struct iommu_hwpt_pgfault layout) and iopf_vmm_recv()
 * their responses (struct iommu_hwpt_page_response layout): exactly one per group, matched by
 * cookie. iopf_vmm_device_del() answers every open group of the device INVALID before it returns.
 *
 * Threading: one iopf_vmm handle MUST be used by one thread at a time. Errors: functions return 0
 * (or a count) on success and a negative errno on failure; iopf_vmm_last_error() says why.
 */
#ifndef IOPF_VMM_H
#define IOPF_VMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IOPF_VMM_FEATURE_BATCH (1ull << 0) /* up to IOPF_VMM_MAX_BATCH records per frame */
#define IOPF_VMM_MAX_BATCH 256

#define IOPF_VMM_DEVICE_NEEDS_PASID (1u << 0) /* PRG response needs PASID */
#define IOPF_VMM_DEVICE_STALL_MODEL (1u << 1) /* SMMU stall: single-request groups */

#define IOPF_VMM_PGFAULT_PASID_VALID (1u << 0)
#define IOPF_VMM_PGFAULT_LAST_PAGE (1u << 1)
#define IOPF_VMM_PERM_READ (1u << 0)
#define IOPF_VMM_PERM_WRITE (1u << 1)
#define IOPF_VMM_PERM_EXEC (1u << 2)
#define IOPF_VMM_PERM_PRIV (1u << 3)

#define IOPF_VMM_RESP_SUCCESS 0u
#define IOPF_VMM_RESP_INVALID 1u
#define IOPF_VMM_RESP_FAILURE 2u

typedef struct iopf_vmm iopf_vmm;

/* A device declaration (DEVICE_ADD). */
typedef struct iopf_vmm_device {
  uint32_t dev_id;                /* the VMM's handle, unique on this connection */
  uint16_t rid;                   /* requester id (bus << 8 | devfn) as the guest sees it */
  uint16_t segment;
  uint8_t pasid_bits;             /* 0: no PASID; at most 20 */
  uint8_t flags;                  /* IOPF_VMM_DEVICE_* */
  uint32_t pri_outstanding_alloc; /* PRI credits, 0 = unbounded */
  uint32_t viommu_id;
  uint64_t virt_id;               /* the VMM's virtual device id (vRID, vSID, endpoint) */
} iopf_vmm_device;

/* One page request: struct iommu_hwpt_pgfault, 40 bytes. `cookie` is the VMM's group token: equal
 * in every record of a group, not reused on this connection until the group's response arrived. */
typedef struct iopf_vmm_page_request {
  uint32_t flags; /* IOPF_VMM_PGFAULT_* */
  uint32_t dev_id;
  uint32_t pasid;
  uint32_t grpid; /* PRGI (9 bits), or stall tag (16 bits) for stall-model devices */
  uint32_t perm;  /* IOPF_VMM_PERM_* */
  uint32_t reserved;
  uint64_t addr;
  uint32_t length;
  uint32_t cookie;
} iopf_vmm_page_request;

/* One response: struct iommu_hwpt_page_response, 8 bytes. */
typedef struct iopf_vmm_page_response {
  uint32_t cookie;
  uint32_t code; /* IOPF_VMM_RESP_* */
} iopf_vmm_page_response;

/* Connects to `path`, sends HELLO asking for `features`, waits up to timeout_ms for the server's
 * HELLO. On success *out owns the connection (free it with iopf_vmm_close). */
int iopf_vmm_connect(const char* path, uint64_t features, int timeout_ms, iopf_vmm** out);
/* The features the server accepted. */
uint64_t iopf_vmm_features(const iopf_vmm* vmm);
/* Declares a device and waits for the reply. Returns 0, -EEXIST, -ENOENT, -EINVAL, -ENOSPC,
 * -EIO (server refused), or a transport error. Responses arriving meanwhile are kept for recv. */
int iopf_vmm_device_add(iopf_vmm* vmm, const iopf_vmm_device* device, int timeout_ms);
/* Removes a device. When it returns 0, the INVALID responses of the device's open groups have been
 * received (they precede the reply) and are queued for iopf_vmm_recv. */
int iopf_vmm_device_del(iopf_vmm* vmm, uint32_t dev_id, int timeout_ms);
/* Sends `count` records (split into frames of at most 1, or IOPF_VMM_MAX_BATCH with BATCH).
 * Blocks until written. Returns 0 or a negative errno. */
int iopf_vmm_send(iopf_vmm* vmm, const iopf_vmm_page_request* records, size_t count);
/* Receives up to `max` responses, waiting at most timeout_ms (0: poll, -1: forever) for the first.
 * Returns the count (0 on timeout) or a negative errno (-EPIPE: the server closed). */
int iopf_vmm_recv(iopf_vmm* vmm, iopf_vmm_page_response* out, size_t max, int timeout_ms);
/* The socket, for the VMM's own poll loop (readable: call iopf_vmm_recv with timeout 0). */
int iopf_vmm_fd(const iopf_vmm* vmm);
/* ERROR messages received from the server so far; the last one's text is iopf_vmm_last_error. */
uint64_t iopf_vmm_errors_received(const iopf_vmm* vmm);
uint32_t iopf_vmm_last_error_code(const iopf_vmm* vmm);
const char* iopf_vmm_last_error(const iopf_vmm* vmm);
void iopf_vmm_close(iopf_vmm* vmm);

#ifdef __cplusplus
}
#endif

#endif /* IOPF_VMM_H */
