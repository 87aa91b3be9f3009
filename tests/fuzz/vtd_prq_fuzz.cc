// libFuzzer target: the VT-d page request / page group response codec and the PRQ ring
// (backends/qemu_socket/libiopf_vmm/vtd_prq.h). Checks: decoders never read past the input, never
// crash; whatever decodes re-encodes to exactly the input bytes (both decoders refuse reserved
// bits, so decoding is lossless); the ring never loses, reorders or invents descriptors. Seeds:
// tests/fuzz/corpus/vtd_prq/.
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "vtd_prq.h"

namespace {

void check(bool ok) {
  if (!ok) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // 1. Page request descriptor.
  iopf_vtd_page_request r{};
  if (iopf_vtd_decode_page_request(data, size, &r) == 0) {
    uint8_t out[IOPF_VTD_PRD_SIZE];
    iopf_vtd_encode_page_request(&r, out);
    check(std::memcmp(out, data, IOPF_VTD_PRD_SIZE) == 0);  // reserved bits are refused: lossless
  }
  // 2. Page group response descriptor.
  iopf_vtd_page_group_response g{};
  const int rc = iopf_vtd_decode_page_group_response(data, size, &g);
  check(rc == 0 || rc == -EINVAL || rc == -EPROTO);
  if (rc == 0) {
    uint8_t out[IOPF_VTD_PGRESP_SIZE];
    iopf_vtd_encode_page_group_response(&g, out);
    iopf_vtd_page_group_response again{};
    check(iopf_vtd_decode_page_group_response(out, sizeof out, &again) == 0);
    check(std::memcmp(&again, &g, sizeof g) == 0);
    // Bits the decoder accepts are exactly the encoded ones.
    check(std::memcmp(out, data, IOPF_VTD_PGRESP_SIZE) == 0);
  }
  // 3. The ring: the input drives pushes (byte odd) and pops (byte even).
  std::vector<uint8_t> memory(128 * IOPF_VTD_PRD_SIZE);
  iopf_vtd_prq q;
  check(iopf_vtd_prq_init(&q, memory.data(), memory.size(), 0) == 0);
  uint32_t pushed = 0, popped = 0;
  for (size_t i = 0; i < size; ++i) {
    if (data[i] & 1) {
      iopf_vtd_page_request p{};
      p.prgi = static_cast<uint16_t>(pushed & 0x1ff);
      p.lpig = 1;
      p.read = 1;
      p.addr = uint64_t{data[i]} << 12;
      if (iopf_vtd_prq_push(&q, &p) == 0) {
        ++pushed;
      } else {
        check((q.status & IOPF_VTD_PRS_PRO) != 0);
        q.status &= ~IOPF_VTD_PRS_PRO;  // the guest clears PRO
      }
    } else {
      iopf_vtd_page_request p{};
      if (iopf_vtd_prq_pop(&q, &p) == 0) {
        check(p.prgi == (popped & 0x1ff));
        ++popped;
      } else {
        check(pushed == popped);
      }
    }
    check(iopf_vtd_prq_pending(&q) == pushed - popped);
  }
  return 0;
}
