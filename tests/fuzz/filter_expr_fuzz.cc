// Fuzz target: the filter expression language (api/include/iopf/api/filter_expr.h) — text a user
// types into the inspector's filter bar or passes to a client. Whatever the text: parse() and
// parseExpr() agree, an error points inside the text, a valid expression converts to the daemon's
// EventFilter and matches events and groups without crashing, and matching is deterministic.
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "iopf/api/filter_expr.h"

namespace f = iopf::api::filter;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const f::ParseResult r = f::parseExpr(text);
  const auto st = f::parse(text);
  if (r.expr.has_value() == r.error.has_value()) std::abort();  // exactly one of them
  if (st.ok() != r.expr.has_value()) std::abort();
  if (r.error) {
    if (r.error->pos > size || r.error->message.empty()) std::abort();
    return 0;
  }
  bool complete = false;
  (void)f::toEventFilter(*r.expr, {iopf::v1::EVENT_RESPONDED}, &complete);
  iopf::v1::Event e;
  e.set_type(static_cast<iopf::v1::EventType>(size % 21));
  e.set_device(size > 0 ? data[0] : 0);
  e.set_domain(size > 1 ? data[1] : 0);
  e.set_pasid(size > 2 ? data[2] : 0);
  e.set_group(size);
  const f::Facts fe = f::factsOf(e, [](uint32_t d) { return std::optional<uint32_t>(d * 8); });
  if (f::matches(*r.expr, fe) != f::matches(*r.expr, fe)) std::abort();
  iopf::v1::Group g;
  g.set_id(size);
  g.set_device(size > 0 ? data[size - 1] : 0);
  g.set_pasid(7);
  const f::Facts fg = f::factsOf(g, static_cast<int64_t>(size) * 1000);
  (void)f::matches(*r.expr, fg);
  return 0;
}
