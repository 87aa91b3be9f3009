// The fault router: ingest → assemble → route → handler chain → exactly one response per group.
//
// Guarantees (docs/architecture.md lists where each one is enforced):
// - every group that completes assembly gets exactly one Response, handed once to its backend;
//   non-last requests, stop markers and discarded partials never get one;
// - a group completes by one atomic transition; every later completion is refused, counted, traced;
// - every open group is answered by its deadline, on detach/replace/removal, and on shutdown;
// - routing is per (device, PASID|RID) → domain through an attach table whose changes are atomic with
//   respect to routing; the device identity stays on every request, response and event.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopf/backend.h"
#include "iopf/clock.h"
#include "iopf/event_bus.h"
#include "iopf/handler.h"
#include "iopf/stats.h"
#include "iopf/types.h"

namespace iopf {

struct RouterOptions {
  // Worker shards; a domain is pinned to one. 0 = one per hardware thread.
  unsigned shards = 0;
  // false: no threads are started; the owner drives the shards with runOnce()/runUntilIdle() (for
  // deterministic tests). Backends and API calls behave the same otherwise.
  bool threaded = true;
  size_t event_capacity = size_t{1} << 16;
  // Groups a shard takes per pass before it flushes responses and looks at deadlines again.
  uint32_t batch_cap = 256;
  // How long an idle shard spins before it sleeps (0: sleep at once).
  int64_t idle_spin_ns = 50'000;
  int64_t wheel_tick_ns = 1'000'000;
  // Buffered partial requests per device beyond which new partials are refused as a protocol error
  // (0: the device's PRI allocation, or 4096 if it has none).
  uint32_t max_partial_requests = 0;
  // Default clock: SteadyClock. MUST outlive the router.
  const Clock* clock = nullptr;
};

inline constexpr DomainId kNoDomain = 0;

struct DeviceInfo {
  DeviceId id = 0;
  BackendId backend = 0;
  std::string backend_name;
  DeviceSpec spec;
  bool removed = false;
  uint64_t outstanding_requests = 0;
};

struct BackendInfo {
  BackendId id = 0;
  std::string name;
  Backend::Capabilities capabilities;
};

struct DomainInfo {
  DomainId id = 0;
  DomainSpec spec;
  uint32_t shard = 0;
  std::vector<std::string> chain;
  uint64_t open_groups = 0;
  bool removed = false;
  bool paused = false;
};

struct AttachmentInfo {
  DeviceId device = 0;
  std::optional<uint32_t> pasid;  // nullopt: the RID
  DomainId domain = 0;
  uint64_t epoch = 0;
};

struct TraceEntry {
  uint16_t handler = 0;
  std::string handler_name;
  Verdict::Kind verdict = Verdict::Kind::kContinue;
  ResponseCode code = ResponseCode::kInvalid;
  bool error = false;
  int64_t duration_ns = 0;
};

enum class GroupState : uint8_t { kQueued = 0, kDispatched = 1, kDeferred = 2, kCompleted = 3 };
std::string_view toString(GroupState state);

struct GroupInfo {
  GroupId id = 0;
  DeviceId device = 0;
  uint64_t backend_handle = 0;
  uint16_t rid = 0;
  DomainId domain = kNoDomain;
  uint64_t epoch = 0;
  std::optional<uint32_t> pasid;
  uint32_t grpid = 0;
  std::optional<uint32_t> cookie;
  GroupState state = GroupState::kQueued;
  int64_t first_arrival_ns = 0;
  int64_t queued_ns = 0;
  int64_t dispatched_ns = 0;
  int64_t deadline_ns = 0;
  std::vector<PageRequest> requests;
  std::vector<TraceEntry> trace;
};

struct OutstandingFilter {
  std::optional<DomainId> domain;
  std::optional<DeviceId> device;
  std::optional<uint32_t> pasid;
  int64_t min_age_ns = 0;
  size_t limit = SIZE_MAX;
  GroupId after = 0;  // paging: only groups with id > after, ascending
};

class Router {
 public:
  explicit Router(RouterOptions options = {});
  // Shuts down if shutdown() was not called.
  ~Router();
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // --- backends ------------------------------------------------------------------------------
  // Registers a backend and calls its start(). The backend MUST outlive the router (or its
  // shutdown()).
  absl::StatusOr<BackendId> addBackend(Backend& backend);

  // --- domains, chains, attachments (any thread) ----------------------------------------------
  absl::StatusOr<DomainId> addDomain(DomainSpec spec);
  // Detaches everything attached to the domain (open groups answered INVALID, origin detach) and
  // retires it.
  absl::Status removeDomain(DomainId domain);
  // Replaces the domain's chain. Groups dispatched after the shard picks the change up use it.
  absl::Status setChain(DomainId domain, std::vector<std::shared_ptr<Handler>> chain);
  // Pauses (or resumes) dispatching the domain's groups. While paused, new groups are held before
  // their chain runs; their deadline keeps running (a held group still times out), and detach,
  // shutdown and operator verdicts still answer them. Resuming hands every held group to the chain.
  struct PauseResult {
    bool was_paused = false;
    uint64_t waiting_groups = 0;  // open groups of the domain not dispatched yet, at the call
  };
  absl::StatusOr<PauseResult> setDomainPaused(DomainId domain, bool paused);
  // Attaches (device, pasid|RID) to a domain, replacing an existing attachment: the replaced
  // domain's open groups of that key are answered INVALID, origin detach (Delivery::kKernelAnswered
  // when the backend's kernel auto-responds). Returns the new epoch.
  absl::StatusOr<uint64_t> attach(DeviceId device, std::optional<uint32_t> pasid, DomainId domain);
  absl::Status detach(DeviceId device, std::optional<uint32_t> pasid);

  // An operator's verdict. NOT_FOUND for an id never issued, FAILED_PRECONDITION if the group is
  // already complete (the attempt is counted and traced as a refused completion).
  absl::Status respond(GroupId group, ResponseCode code, std::string_view reason = {});

  // Drains: new groups are answered INVALID (origin shutdown), every open group is answered INVALID
  // (origin shutdown), responses are flushed, shard threads stop, backends are stopped. Idempotent.
  void shutdown();

  // --- populating I/O page tables (resolvers) --------------------------------------------------
  // Asks the backend of request.device to make a range present (Backend::map). Any thread (shard
  // threads, plugin threads); takes no router lock. NOT_FOUND for an unknown device,
  // FAILED_PRECONDITION for a removed one, UNIMPLEMENTED (naming the backend) if the device's
  // backend has no map() (Capabilities::can_map false); otherwise the backend's answer.
  absl::Status map(const MapRequest& request);

  // --- observation (any thread) ----------------------------------------------------------------
  EventBus& events();
  std::vector<BackendInfo> backends() const;
  StatsSnapshot stats() const;
  std::vector<DeviceInfo> devices() const;
  std::vector<DomainInfo> domains() const;
  std::vector<AttachmentInfo> attachments() const;
  std::vector<GroupInfo> outstanding(const OutstandingFilter& filter = {}) const;
  std::optional<GroupInfo> group(GroupId id) const;
  uint64_t openGroups() const;
  std::string handlerName(uint16_t handler) const;
  const Clock& clock() const;
  unsigned shardCount() const;

  // --- manual driving (RouterOptions::threaded == false) --------------------------------------
  // One pass over every shard: takes queued groups (up to batch_cap each), applies external
  // completions, runs chains, expires deadlines by the clock, flushes responses. Returns the number
  // of groups handled. In threaded mode it only wakes the shards and returns 0.
  size_t runOnce();
  // runOnce() until a pass handles nothing.
  void runUntilIdle();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace iopf
