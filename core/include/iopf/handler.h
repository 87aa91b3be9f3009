// The handler contract: what a domain's chain is made of (ARCHITECTURE.md §5).
//
// A domain has an ordered chain of handlers. For each complete page request group the router calls
// them in order on the domain's shard thread; each returns a Verdict. Plugins (C ABI) are adapted to
// this interface by the plugin host; in-process handlers implement it directly.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "iopf/types.h"

namespace iopf {

namespace detail {
class Shard;
}

// Read-only view of a complete group handed to Handler::handle. Valid only during that call: a
// handler that defers MUST copy what it needs before returning.
struct GroupView {
  GroupId id = 0;
  DomainId domain = 0;
  DeviceId device = 0;
  uint64_t backend_handle = 0;
  uint16_t rid = 0;
  uint32_t pci_segment = 0;
  bool needs_pasid = false;
  std::optional<uint32_t> pasid;      // the LAST request's PASID
  uint32_t grpid = 0;                 // the LAST request's PRGI
  std::optional<uint32_t> cookie;
  std::span<const PageRequest> requests;  // arrival order, LAST request last (R7)
};

// Answer of one handler for one group.
struct Verdict {
  enum class Kind : uint8_t { kContinue = 0, kRespond = 1, kDefer = 2 };
  Kind kind = Kind::kContinue;
  ResponseCode code = ResponseCode::kInvalid;

  static constexpr Verdict proceed() { return {Kind::kContinue, ResponseCode::kInvalid}; }
  static constexpr Verdict respond(ResponseCode c) { return {Kind::kRespond, c}; }
  static constexpr Verdict defer() { return {Kind::kDefer, ResponseCode::kInvalid}; }
};

// Completes one deferred group later. A small value: copy it freely.
//
// Thread-safety: complete() MAY be called from any thread, any number of times, including from
// inside Handler::handle before it returns Defer. Only the first completion of the group wins (one
// atomic transition); every later call — and any call after the group timed out, was detached or
// drained — is refused: it returns false, is counted and traced, and nothing is sent.
// Lifetime: a handle MUST NOT be used after the Router that issued it is destroyed.
class CompletionHandle {
 public:
  CompletionHandle() = default;
  // Returns true if this call completed the group. `code` outside ResponseCode is answered INVALID
  // and counted as a handler error.
  bool complete(ResponseCode code) const;
  bool valid() const { return shard_ != nullptr; }
  GroupId group() const { return group_; }

 private:
  friend class detail::Shard;
  CompletionHandle(detail::Shard* shard, uint32_t slot, GroupId group, uint16_t handler)
      : shard_(shard), slot_(slot), handler_(handler), group_(group) {}
  detail::Shard* shard_ = nullptr;
  uint32_t slot_ = 0;
  uint16_t handler_ = 0;
  GroupId group_ = 0;
};

// A handler of a domain's chain.
//
// Threading: handle() is called on the shard thread that owns the domain, one group at a time per
// shard; a handler instance shared by domains on different shards MUST be thread-safe. handle() SHOULD
// return quickly: slow work belongs behind Defer. It MAY throw; the router turns an exception into
// INVALID for that group (origin handler-error) and counts it against the handler.
class Handler {
 public:
  virtual ~Handler() = default;
  // Stable name used in stats, traces and events. MUST outlive the handler.
  virtual std::string_view name() const = 0;
  // Decide about one group. `completion` is valid for this group only; use it if returning Defer.
  virtual Verdict handle(const GroupView& group, const CompletionHandle& completion) = 0;
};

}  // namespace iopf
