// Internals of the router. Not installed; included by core/src only (and white-box tests).
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <new>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "assembler.h"
#include "deadline_wheel.h"
#include "iopf/router.h"

namespace iopf::detail {

inline constexpr uint32_t kMaxBackends = 64;
inline constexpr uint32_t kMaxDevices = 1u << 16;
inline constexpr uint32_t kMaxDomains = 1u << 16;
inline constexpr uint32_t kMaxHandlers = 1024;
inline constexpr uint16_t kNoHandler = UINT16_MAX;
inline constexpr uint32_t kTrackedGrpids = 512;  // PCIe PRGI space; larger tags are stall tags

// A group's `tag`: (id << 1) | completed. Zero: free slot. One compare-and-swap from (id << 1) to
// (id << 1 | 1) is THE completion of the group; everyone else loses it.
inline constexpr uint64_t openTag(GroupId id) { return id << 1; }
inline constexpr uint64_t completedTag(GroupId id) { return (id << 1) | 1; }

class EventBatch;

// Locks a mutex that is held only for microseconds (a shard's inbox): spin on try_lock first, so
// that the other side does not fall asleep in the kernel (a futex wait and wake costs more than the
// whole critical section).
inline void lockBriefly(std::mutex& mu) {
  for (int i = 0; i < 2048; ++i) {
    if (mu.try_lock()) return;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
  mu.lock();
}

struct Attachment {
  DomainId domain = kNoDomain;
  uint64_t epoch = 0;
};

struct BackendSlot;

struct DeviceState {
  DeviceId id = 0;
  BackendId backend = 0;
  DeviceSpec spec;
  std::atomic<bool> removed{false};
  // Attach table rows of this device; guarded by Router::Impl::attach_mu.
  std::optional<Attachment> rid_attach;
  absl::flat_hash_map<uint32_t, Attachment> pasid_attach;
  // Owned by the thread that feeds the device (RouterSink contract).
  Assembler assembler;
  // Bounds. Each side writes only its own counter (no cache line written by both the feeding
  // thread and the shards): outstanding = issued - released, open(grpid) = opened - closed.
  std::atomic<uint64_t> issued_requests{0};                          // feeding thread
  std::array<std::atomic<uint32_t>, kTrackedGrpids> opened_per_grpid{};  // feeding thread
  alignas(64) std::atomic<uint64_t> released_requests{0};            // shards
  std::array<std::atomic<uint32_t>, kTrackedGrpids> closed_per_grpid{};  // shards
  uint64_t outstandingRequests() const {
    return issued_requests.load(std::memory_order_relaxed) -
           released_requests.load(std::memory_order_relaxed);
  }
  bool grpidOpen(uint32_t grpid) const {
    return opened_per_grpid[grpid].load(std::memory_order_relaxed) !=
           closed_per_grpid[grpid].load(std::memory_order_relaxed);
  }
  // Counters (relaxed).
  std::atomic<uint64_t> requests{0}, groups{0}, stop_markers{0}, partial_discarded{0},
      protocol_errors{0}, overload{0};
  std::array<std::atomic<uint64_t>, 3> responses_by_code{};
};

struct ChainEntry {
  std::shared_ptr<Handler> handler;
  uint16_t id = 0;
};
using Chain = std::vector<ChainEntry>;

struct DomainState {
  DomainId id = 0;
  DomainSpec spec;
  uint32_t shard = 0;
  std::atomic<bool> removed{false};
  std::atomic<bool> paused{false};  // groups are held by the shard, not dispatched
  // Published chain: written under the shard mutex, version bumped after.
  std::shared_ptr<const Chain> chain;
  std::atomic<uint64_t> chain_version{0};
  // The shard thread's copy.
  std::shared_ptr<const Chain> active_chain;
  uint64_t active_version = 0;
  // open = opened (feeding threads) - closed (the owning shard).
  std::atomic<uint64_t> opened{0};
  alignas(64) std::atomic<uint64_t> closed{0};
  uint64_t openGroups() const {
    return opened.load(std::memory_order_relaxed) - closed.load(std::memory_order_relaxed);
  }
  // Written only by the owning shard thread.
  std::array<std::atomic<uint64_t>, 3> responses_by_code{};
  std::array<std::atomic<uint64_t>, kOriginCount> responses_by_origin{};
  LatencyHistogram latency;
};

struct HandlerCounters {
  // Written by one shard thread.
  std::atomic<uint64_t> calls{0}, continues{0}, responds{0}, defers{0}, errors{0};
  LatencyHistogram call_time;
  // Written from any thread.
  std::atomic<uint64_t> deferred_completed{0}, refused{0}, deferred_errors{0};
};

struct RawTrace {
  uint16_t handler = 0;
  Verdict::Kind verdict = Verdict::Kind::kContinue;
  ResponseCode code = ResponseCode::kInvalid;
  bool error = false;
  int64_t duration_ns = 0;
};

struct Group {
  std::atomic<uint64_t> tag{0};
  std::atomic<uint8_t> state{0};  // GroupState, for observers
  // Written under the shard mutex when the slot is filled; read-only until it is freed.
  GroupId id = 0;
  DeviceId device = 0;
  BackendId backend = 0;
  DomainId domain = kNoDomain;
  uint64_t epoch = 0;
  std::optional<uint32_t> attach_pasid;
  bool counted = false;  // holds device credits / domain open count (released on response)
  int64_t queued_ns = 0;
  int64_t deadline_ns = 0;
  std::vector<PageRequest> requests;
  // Written under the shard mutex at the end of a pass.
  int64_t dispatched_ns = 0;
  std::vector<RawTrace> trace;
};

struct PendingCompletion {
  uint32_t slot = 0;
  GroupId id = 0;
  ResponseCode code = ResponseCode::kInvalid;
  Origin origin = Origin::kDefault;
  Delivery delivery = Delivery::kSend;
};

struct QueuedGroup {
  uint32_t slot = 0;
  GroupId id = 0;
};

class Shard {
 public:
  static constexpr uint32_t kChunkBits = 10;
  static constexpr uint32_t kChunk = 1u << kChunkBits;
  static constexpr uint32_t kMaxChunks = 1u << 14;  // 16M groups per shard

  Shard(Router::Impl& router, uint32_t index);
  ~Shard();

  uint32_t index() const { return index_; }
  std::mutex& mutex() { return mu_; }

  // Any thread; `slot` MUST have been allocated.
  Group& at(uint32_t slot) const {
    return chunks_[slot >> kChunkBits].load(std::memory_order_acquire)[slot & (kChunk - 1)];
  }
  uint32_t allocatedSlots() const { return allocated_.load(std::memory_order_acquire); }

  // --- producer side, mutex held ---
  uint32_t allocSlotLocked();
  void enqueueLocked(uint32_t slot, GroupId id);
  void enqueueCompletedLocked(const PendingCompletion& c);
  // True if the shard sleeps and must be notified after the caller unlocks.
  bool sleepingLocked() const { return sleeping_; }
  void notify() { cv_.notify_one(); }

  // Any thread: the one atomic completion. Returns false (refused, counted, traced) if the group is
  // already complete or `id` is not the slot's group any more.
  bool complete(uint32_t slot, GroupId id, ResponseCode code, Origin origin, Delivery delivery,
                uint16_t handler);

  // Any thread: completes every open group for which pred(group) holds with INVALID and `origin`.
  // For origin detach, groups of backends whose kernel auto-responds get Delivery::kKernelAnswered.
  template <typename Pred>
  size_t drain(Pred&& pred, Origin origin);

  // Observation under the mutex.
  template <typename Fn>
  void forEachOpen(Fn&& fn) const;

  // One pass (shard thread, or the manual driver). Returns the work done.
  size_t runPass();
  void startThread();
  // Finishes what is queued, then stops the thread.
  void stopThread();
  void wake();
  // Any thread: a domain of this shard was resumed; the next pass releases its held groups.
  void requestResume() {
    resume_requests_.fetch_add(1, std::memory_order_release);
    wake();
  }

  HandlerCounters& handlerCounters(uint16_t handler);
  HandlerCounters* handlerCountersIfAny(uint16_t handler) const {
    return handler_counters_[handler].load(std::memory_order_acquire);
  }

  // Stats written by this shard (read by anyone).
  LatencyHistogram latency;
  std::array<std::atomic<uint64_t>, kOriginCount> responses_by_origin{};
  std::array<std::atomic<uint64_t>, 3> responses_by_code{};
  std::atomic<uint64_t> responses{0};

 private:
  void threadMain();
  void dispatch(uint32_t slot, GroupId id, int64_t now, EventBatch& events);
  void completeLocal(uint32_t slot, GroupId id, ResponseCode code, Origin origin, uint16_t handler,
                     int64_t now, EventBatch& events);
  void emitResponse(uint32_t slot, GroupId id, ResponseCode code, Origin origin, Delivery delivery,
                    int64_t now, EventBatch& events);
  void flushResponses();
  const Chain* activeChain(DomainState& domain);
  void hold(const QueuedGroup& q);
  size_t releaseResumed(int64_t now, EventBatch& events);

  Router::Impl& router_;
  const uint32_t index_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool sleeping_ = false;  // guarded by mu_
  bool stop_ = false;      // guarded by mu_
  std::atomic<bool> pending_{false};
  std::vector<QueuedGroup> inbox_;                // guarded by mu_
  std::vector<PendingCompletion> completions_;    // guarded by mu_
  std::vector<uint32_t> free_;                    // guarded by mu_
  std::array<std::atomic<Group*>, kMaxChunks> chunks_{};
  std::vector<std::unique_ptr<Group[]>> chunk_storage_;  // guarded by mu_
  std::atomic<uint32_t> allocated_{0};

  // Shard-thread state.
  std::vector<QueuedGroup> local_inbox_;
  size_t local_pos_ = 0;
  std::vector<PendingCompletion> local_completions_;
  std::vector<std::vector<Response>> batches_;  // per backend
  std::vector<uint32_t> to_free_;
  struct TraceRecord {
    uint32_t slot;
    GroupId id;
    RawTrace entry;
  };
  std::vector<TraceRecord> traces_;
  struct Dispatched {
    uint32_t slot;
    GroupId id;
    int64_t at;
  };
  std::vector<Dispatched> dispatched_;
  // Groups of paused domains, in arrival order (entries of groups completed meanwhile are dropped
  // when the list is compacted or released).
  std::vector<QueuedGroup> held_;
  size_t held_compact_at_ = 1024;
  std::atomic<uint64_t> resume_requests_{0};
  uint64_t resume_seen_ = 0;
  DeadlineWheel wheel_;

  std::array<std::atomic<HandlerCounters*>, kMaxHandlers> handler_counters_{};
  std::vector<std::unique_ptr<HandlerCounters>> handler_storage_;  // shard thread / under mu_

  std::thread thread_;
};

// A small stack buffer of events published with one reservation.
class EventBatch {
 public:
  explicit EventBatch(EventBus& bus) : bus_(bus) {}
  ~EventBatch() { flush(); }
  EventBatch(const EventBatch&) = delete;
  EventBatch& operator=(const EventBatch&) = delete;
  Event& add() {
    if (n_ == kSize) flush();
    return *new (&storage_.events[n_++]) Event{};
  }
  void flush() {
    if (n_ == 0) return;
    const uint64_t seq = bus_.reserve(static_cast<uint32_t>(n_));
    for (size_t i = 0; i < n_; ++i) bus_.write(seq + i, storage_.events[i]);
    n_ = 0;
  }

 private:
  static constexpr size_t kSize = 64;
  // Uninitialised storage: constructing 64 events per batch would cost a 4.6 KB memset per
  // delivered batch and per shard pass; add() constructs each event in place.
  union Storage {
    Storage() {}
    Event events[kSize];
  };
  EventBus& bus_;
  Storage storage_;
  size_t n_ = 0;
};

}  // namespace iopf::detail

namespace iopf {

class Router::Impl {
 public:
  explicit Impl(RouterOptions options);
  ~Impl();

  // Ingest (RouterSink).
  void deliver(detail::BackendSlot& backend, std::span<const PageRequest> requests);
  void discardPartial(detail::BackendSlot& backend);
  absl::StatusOr<DeviceId> addDevice(detail::BackendSlot& backend, const DeviceSpec& spec);
  absl::Status removeDevice(detail::BackendSlot& backend, DeviceId device);

  detail::DeviceState* device(DeviceId id) const {
    return id < detail::kMaxDevices ? devices_[id].load(std::memory_order_acquire) : nullptr;
  }
  detail::DomainState* domain(DomainId id) const {
    return id < detail::kMaxDomains ? domains_[id].load(std::memory_order_acquire) : nullptr;
  }
  detail::BackendSlot* backend(BackendId id) const {
    return id < detail::kMaxBackends ? backends_[id].load(std::memory_order_acquire) : nullptr;
  }
  uint16_t registerHandler(std::string_view name);
  int64_t now() const { return clock_->now(); }
  void fillEvent(Event& e, const detail::Group& g) const;

  const RouterOptions options;
  const Clock* clock_;
  SteadyClock steady_;
  EventBus bus;
  std::vector<std::unique_ptr<detail::Shard>> shards;

  mutable std::mutex admin_mu;  // backends, devices, domains, handler registry
  std::array<std::atomic<detail::BackendSlot*>, detail::kMaxBackends> backends_{};
  std::array<std::atomic<detail::DeviceState*>, detail::kMaxDevices> devices_{};
  std::array<std::atomic<detail::DomainState*>, detail::kMaxDomains> domains_{};
  std::vector<std::unique_ptr<detail::BackendSlot>> backend_storage;
  std::vector<std::unique_ptr<detail::DeviceState>> device_storage;
  std::vector<std::unique_ptr<detail::DomainState>> domain_storage;
  std::vector<std::string> handler_names;
  absl::flat_hash_map<std::string, uint16_t> handler_ids;

  // Routing reads it shared (once per delivered batch); attach/detach/shutdown take it exclusive.
  mutable std::shared_mutex attach_mu;
  bool shutting_down = false;  // guarded by attach_mu
  std::atomic<bool> shut_down{false};

  std::atomic<uint64_t> next_group{1};
  std::atomic<uint64_t> next_epoch{1};
  std::atomic<uint64_t> dropped_requests{0};
  std::atomic<uint64_t> refused_completions{0};
  std::atomic<uint64_t> requests{0};

 private:
  struct Route {
    DomainId domain = kNoDomain;
    uint64_t epoch = 0;
    std::optional<uint32_t> key;
  };
  Route route(const detail::DeviceState& device, const PageRequest& last) const;
  class ShardLocker;
  void completeGroup(detail::DeviceState& device, std::span<const PageRequest> requests,
                     int64_t now, detail::EventBatch& events, ShardLocker& locker);
};

namespace detail {

class SinkImpl final : public RouterSink {
 public:
  SinkImpl(Router::Impl& router, BackendSlot& slot) : router_(router), slot_(slot) {}
  BackendId backendId() const override;
  absl::StatusOr<DeviceId> addDevice(const DeviceSpec& spec) override {
    return router_.addDevice(slot_, spec);
  }
  absl::Status removeDevice(DeviceId device) override { return router_.removeDevice(slot_, device); }
  void deliver(std::span<const PageRequest> requests) override { router_.deliver(slot_, requests); }
  void discardPartial() override { router_.discardPartial(slot_); }

 private:
  Router::Impl& router_;
  BackendSlot& slot_;
};

struct BackendSlot {
  BackendId id = 0;
  Backend* backend = nullptr;
  Backend::Capabilities caps;
  std::string name;
  std::unique_ptr<SinkImpl> sink;
  bool stopped = false;  // guarded by Router::Impl::admin_mu
};

inline BackendId SinkImpl::backendId() const { return slot_.id; }

template <typename Pred>
size_t Shard::drain(Pred&& pred, Origin origin) {
  size_t n = 0;
  bool wake_needed = false;
  {
    std::lock_guard lk(mu_);
    const uint32_t count = allocated_.load(std::memory_order_relaxed);
    for (uint32_t slot = 0; slot < count; ++slot) {
      Group& g = at(slot);
      const uint64_t tag = g.tag.load(std::memory_order_acquire);
      if (tag == 0 || (tag & 1) != 0 || !pred(g)) continue;
      uint64_t expect = tag;
      if (g.tag.compare_exchange_strong(expect, tag | 1, std::memory_order_acq_rel)) {
        const BackendSlot* b = router_.backend(g.backend);
        const Delivery delivery =
            origin == Origin::kDetach && b != nullptr && b->caps.kernel_auto_responds_on_detach
                ? Delivery::kKernelAnswered
                : Delivery::kSend;
        completions_.push_back({slot, tag >> 1, ResponseCode::kInvalid, origin, delivery});
        ++n;
      }
    }
    if (n > 0) {
      pending_.store(true, std::memory_order_release);
      wake_needed = sleeping_;
    }
  }
  if (wake_needed) cv_.notify_one();
  return n;
}

template <typename Fn>
void Shard::forEachOpen(Fn&& fn) const {
  std::lock_guard lk(mu_);
  const uint32_t count = allocated_.load(std::memory_order_relaxed);
  for (uint32_t slot = 0; slot < count; ++slot) {
    const Group& g = at(slot);
    const uint64_t tag = g.tag.load(std::memory_order_acquire);
    if (tag == 0 || (tag & 1) != 0) continue;
    fn(g);
  }
}

}  // namespace detail
}  // namespace iopf
