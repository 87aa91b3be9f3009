/* Compiled as C: proves iopf_vmm.h is a C header and drives one whole exchange through it. */
#include <stddef.h>
#include <string.h>

#include "iopf_vmm.h"

_Static_assert(sizeof(iopf_vmm_page_request) == 40, "iommu_hwpt_pgfault layout");
_Static_assert(offsetof(iopf_vmm_page_request, addr) == 24, "addr at 24");
_Static_assert(sizeof(iopf_vmm_page_response) == 8, "iommu_hwpt_page_response layout");

/* Returns 0 on success, or the step that failed (1..6). `code` gets the response code. */
int iopf_vmm_c_client_exchange(const char* path, uint32_t* code) {
  iopf_vmm* vmm = NULL;
  if (iopf_vmm_connect(path, IOPF_VMM_FEATURE_BATCH, 5000, &vmm) != 0) return 1;
  if (iopf_vmm_features(vmm) != IOPF_VMM_FEATURE_BATCH) return 2;
  iopf_vmm_device dev;
  memset(&dev, 0, sizeof(dev));
  dev.dev_id = 3;
  dev.rid = 0x0308;
  dev.pasid_bits = 8;
  dev.flags = IOPF_VMM_DEVICE_NEEDS_PASID;
  if (iopf_vmm_device_add(vmm, &dev, 5000) != 0) return 3;
  iopf_vmm_page_request req[2];
  memset(req, 0, sizeof(req));
  for (int i = 0; i < 2; ++i) {
    req[i].flags = IOPF_VMM_PGFAULT_PASID_VALID | (i == 1 ? IOPF_VMM_PGFAULT_LAST_PAGE : 0);
    req[i].dev_id = 3;
    req[i].pasid = 7;
    req[i].grpid = 1;
    req[i].perm = IOPF_VMM_PERM_READ | IOPF_VMM_PERM_WRITE;
    req[i].addr = 0x5000 + 0x1000 * (uint64_t)i;
    req[i].cookie = 0xabc;
  }
  if (iopf_vmm_send(vmm, req, 2) != 0) return 4;
  iopf_vmm_page_response resp;
  if (iopf_vmm_recv(vmm, &resp, 1, 5000) != 1 || resp.cookie != 0xabc) return 5;
  *code = resp.code;
  if (iopf_vmm_device_del(vmm, 3, 5000) != 0) return 6;
  iopf_vmm_close(vmm);
  return 0;
}
