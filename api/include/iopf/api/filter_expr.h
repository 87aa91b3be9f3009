// The filter expression language of the inspector (and of any client): parse and validate with an
// error position, convert what the daemon can filter into an iopf.v1.EventFilter, and match events and
// groups on the client. Qt-free; target iopf_filter_expr (depends on iopf_api_proto and absl only).
//
// Syntax: terms separated by spaces, all must match (AND). A term is
//     [!]KEY:VALUE[,VALUE…]      equality; a comma list matches any of the values (OR)
//     [!]KEY OP VALUE            OP is one of = != > >= < <= (numbers and durations)
// Keys and values are case-insensitive. Keys:
//   device   router device id (3) or PCI address: 0000:03:00.0, 03:00.0 (matched against the RID)
//   domain   domain id            pasid   PASID, or "none" for requests without one
//   group    group id             prgi    page request group index (alias grpid)
//   addr     page address (0x…)   perm    R W X P letters, all must be present (perm:W, perm:RW)
//   type     event type: request, group_queued, dispatched, handler_verdict, responded, timed_out, …
//   code     success | invalid | failure          origin  handler | default | timeout | operator | …
//   handler  handler id           latency  response latency (RESPONDED events), a duration
//   age      open-group age, a duration           state   queued | dispatched | deferred | completed
// Durations: a number with ns, us, ms or s (a bare number is ns). Numbers: decimal or 0x hex.
// Example: `device:3 pasid:5 code:INVALID age>10ms domain:2 type:responded`.
//
// Which terms apply to what: events ignore `age` and `state`; groups ignore `type`, `code`,
// `origin`, `handler` and `latency` (an open group has none of them yet). Every other term whose
// field the subject lacks (pasid:5 on an event without PASID) does not match.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "iopf/v1/router.pb.h"

namespace iopf::api::filter {

enum class Field : uint8_t {
  kDevice,
  kDomain,
  kPasid,
  kGroup,
  kPrgi,
  kAddr,
  kPerm,
  kType,
  kCode,
  kOrigin,
  kHandler,
  kLatency,
  kAge,
  kState,
};
enum class Op : uint8_t { kEq, kNe, kGt, kGe, kLt, kLe };

struct Term {
  Field field = Field::kDevice;
  Op op = Op::kEq;
  bool negated = false;             // "!" prefix
  std::vector<uint64_t> values;     // OR'd for kEq; one value for the ordered ops
  bool values_are_rids = false;     // device given as a PCI address: values hold RIDs
  bool pasid_none = false;          // pasid:none
  size_t pos = 0;                   // column of the term in the text (0-based)
};

struct Expr {
  std::vector<Term> terms;          // AND
  bool empty() const { return terms.empty(); }
};

// A parse error: 0-based byte position in the text and what is wrong.
struct ParseError {
  size_t pos = 0;
  size_t length = 0;
  std::string message;
};

struct ParseResult {
  std::optional<Expr> expr;         // set when valid
  std::optional<ParseError> error;  // set when not
};

// Parses and validates `text`. Empty or blank text is the empty expression (matches everything).
ParseResult parseExpr(std::string_view text);
// The same as a StatusOr; the message reads "column N: …".
absl::StatusOr<Expr> parse(std::string_view text);

// What the daemon's Watch filter can do for `expr`: positive single-valued domain/device(id)/pasid/
// group terms and the event types (plus `keep_types`, types the client needs to track state, added
// when a type restriction is pushed). `complete` is set to whether the daemon's filter is exactly the
// expression (then the client-side match is a no-op; the caller may still run it).
v1::EventFilter toEventFilter(const Expr& expr, const std::vector<v1::EventType>& keep_types = {},
                              bool* complete = nullptr);

// What a match looks at. Absent fields are nullopt.
struct Facts {
  bool is_group = false;            // a group (outstanding table) or an event
  uint64_t group = 0;
  uint32_t device = 0;
  std::optional<uint32_t> rid;      // from the device table (device:BB:DD.F terms)
  uint32_t domain = 0;
  std::optional<uint32_t> pasid;
  std::optional<uint32_t> prgi;
  std::optional<uint64_t> addr;
  std::optional<uint32_t> perm;
  // Events only.
  int type = -1;
  std::optional<int> code;
  std::optional<int> origin;
  std::optional<uint32_t> handler;
  std::optional<int64_t> latency_ns;
  // Groups only.
  std::optional<int64_t> age_ns;
  std::optional<int> state;         // v1::GroupState
};

bool matches(const Expr& expr, const Facts& facts);

// Facts of API messages. `rid_of` maps a device id to its RID (may be empty).
Facts factsOf(const v1::Event& event, const std::function<std::optional<uint32_t>(uint32_t)>& rid_of = {});
Facts factsOf(const v1::Group& group, int64_t age_ns);

// Names used in the language (lower case): "responded", "invalid", "operator", "queued".
std::string_view eventTypeName(int type);
std::string_view codeName(int code);
std::string_view originName(int origin);
std::string_view stateName(int state);
std::string_view fieldName(Field field);

// Keys and value words for completion in a UI.
std::vector<std::string> completionWords();

}  // namespace iopf::api::filter
