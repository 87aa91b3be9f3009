#include "iopf/api/packed_events.h"

#include "absl/strings/str_cat.h"

namespace iopf::api::packed {

absl::StatusOr<size_t> count(const std::string& bytes) {
  if (bytes.size() % kRecordSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat("packed_events: ", bytes.size(), " bytes is not a multiple of the ",
                                                   kRecordSize, "-byte record"));
  }
  return bytes.size() / kRecordSize;
}

void toProto(EventView e, v1::Event& out) {
  out.set_seq(e.seq());
  out.set_type(static_cast<v1::EventType>(e.type()));
  out.set_time_ns(e.timeNs());
  out.set_group(e.group());
  out.set_device(e.device());
  out.set_domain(e.domain());
  if (e.flags() & kFlagPasidValid) out.set_pasid(e.pasid());
  out.set_grpid(e.grpid());
  out.set_addr(e.addr());
  out.set_perm(e.perm());
  out.set_last((e.flags() & kFlagLast) != 0);
  if (e.flags() & kFlagCookieValid) out.set_cookie(e.cookie());
  out.set_code(static_cast<v1::ResponseCode>(e.code()));
  out.set_origin(static_cast<v1::Origin>(e.origin()));
  out.set_verdict(static_cast<v1::Verdict>(e.verdict()));
  out.set_handler(e.handler());
  out.set_value(e.value());
}

absl::Status appendAsMessages(const std::string& bytes, google::protobuf::RepeatedPtrField<v1::Event>& out) {
  absl::StatusOr<size_t> n = count(bytes);
  if (!n.ok()) return n.status();
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  out.Reserve(out.size() + static_cast<int>(*n));
  for (size_t i = 0; i < *n; ++i) toProto(EventView(p + i * kRecordSize), *out.Add());
  return absl::OkStatus();
}

}  // namespace iopf::api::packed
