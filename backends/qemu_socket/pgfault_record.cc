#include "pgfault_record.h"

#include "vhost_user_codec.h"

namespace iopf::qemu_socket {

void encodePgfault(const PgfaultRecord& r, uint8_t* out) {
  putU32(out + 0, r.flags);
  putU32(out + 4, r.dev_id);
  putU32(out + 8, r.pasid);
  putU32(out + 12, r.grpid);
  putU32(out + 16, r.perm);
  putU32(out + 20, r.reserved);
  putU64(out + 24, r.addr);
  putU32(out + 32, r.length);
  putU32(out + 36, r.cookie);
}

PgfaultRecord decodePgfault(const uint8_t* in) {
  PgfaultRecord r;
  r.flags = getU32(in + 0);
  r.dev_id = getU32(in + 4);
  r.pasid = getU32(in + 8);
  r.grpid = getU32(in + 12);
  r.perm = getU32(in + 16);
  r.reserved = getU32(in + 20);
  r.addr = getU64(in + 24);
  r.length = getU32(in + 32);
  r.cookie = getU32(in + 36);
  return r;
}

PageRequest toPageRequest(const PgfaultRecord& r, DeviceId device) {
  PageRequest q;
  q.device = device;
  q.grpid = r.grpid;
  if ((r.flags & kPgfaultPasidValid) != 0) q.pasid = r.pasid;
  q.addr = r.addr;
  q.perm = static_cast<uint8_t>(r.perm & kPgfaultPermMask);
  q.last = (r.flags & kPgfaultLastPage) != 0;
  q.length_hint = r.length;
  q.cookie = r.cookie;
  return q;
}

PgfaultRecord fromPageRequest(const PageRequest& q, uint32_t dev_id) {
  PgfaultRecord r;
  r.flags = (q.pasid ? kPgfaultPasidValid : 0) | (q.last ? kPgfaultLastPage : 0);
  r.dev_id = dev_id;
  r.pasid = q.pasid.value_or(0);
  r.grpid = q.grpid;
  r.perm = q.perm;
  r.addr = q.addr;
  r.length = q.length_hint;
  r.cookie = q.cookie.value_or(0);
  return r;
}

void encodePageResponse(const PageResponseRecord& r, uint8_t* out) {
  putU32(out, r.cookie);
  putU32(out + 4, r.code);
}

PageResponseRecord decodePageResponse(const uint8_t* in) { return {getU32(in), getU32(in + 4)}; }

}  // namespace iopf::qemu_socket
