// One simulated PCIe function with PRI, modelled the way PCIe defines it (issue "Simulated PRI
// backend" §1, §3, §5):
// - an Outstanding Page Request allocation: every request consumes a credit; the group's response
//   returns the credits of all its requests;
// - a 512-entry PRG index space: an index is reused only after its group was answered;
// - PASIDs, the "PRG response needs PASID" flag, and the SMMU stall variant (single-request groups);
// - the reaction to a response: SUCCESS → the access is retried against the domain's software I/O
//   page table (mapped with the right perms: done; else it faults again, at most max_retries times);
//   INVALID → aborted; FAILURE → the function's PRI is disabled until re-enabled;
// - a response for a PRGI with no open group, with a stale cookie, or with the wrong PASID or
//   request count is a router bug: reported loudly and counted, never applied;
// - scriptable fault injection.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "iopf/backend.h"
#include "iopf/types.h"
#include "rng.h"
#include "soft_page_table.h"
#include "workload.h"

namespace iopf::sim {

inline constexpr uint32_t kPrgiSpace = 512;

enum class InjectionKind : uint8_t {
  kLostLast = 0,       // the next group loses its LAST_PAGE request (a partial group stays behind)
  kDuplicatePrgi = 1,  // a new group reuses the PRGI of a group that is still open
  kOverflow = 2,       // the IOMMU queue overflowed: RouterSink::discardPartial; the simulated
                       // IOMMU auto-answers (SUCCESS) the groups whose LAST it lost, as VT-d does
  kUnplug = 3,         // hot-unplug with open groups: RouterSink::removeDevice
  kStopMarker = 4,     // a PRI stop marker (L=1, R=W=0) for `pasid`; the device stops using it
  kResumePasid = 5,    // the device uses `pasid` again
  kBurst = 6,          // `count` single-request groups at once, ignoring the PRI allocation
  kReenablePri = 7,    // PRI re-enabled after a FAILURE response
};
inline constexpr int kInjectionKindCount = 8;
std::string_view toString(InjectionKind kind);
std::optional<InjectionKind> parseInjectionKind(std::string_view text);

struct Injection {
  InjectionKind kind = InjectionKind::kLostLast;
  uint32_t count = 0;             // burst: groups (0: twice the allocation, at least 1)
  std::optional<uint32_t> pasid;  // stop_marker, resume_pasid
};

struct ScheduledInjection {
  int64_t at_ns = 0;     // from the start of traffic
  int64_t every_ns = 0;  // > 0: periodic
  uint32_t repeat = 0;   // with every_ns: times in all (0: unlimited)
  Injection injection;
};

struct SimDeviceConfig {
  std::string name;
  uint32_t segment = 0;
  uint16_t rid = 0;
  uint32_t pri_allocation = 32;  // credits; 0: unbounded
  uint8_t pasid_bits = 0;
  bool needs_pasid = false;
  bool stall_model = false;
  std::vector<uint32_t> pasids;  // used round-robin by the workload; empty: RID only
  uint32_t max_retries = 3;
  int64_t pri_reenable_after_ns = 0;  // after FAILURE; 0: only by injection
  uint64_t seed = 1;
  WorkloadConfig workload;
  std::vector<ScheduledInjection> injections;
};

// Device-side counters. Written by the device's feeder thread only; readable from any thread.
enum class Counter : uint8_t {
  kGroupsIssued = 0,   // groups whose requests went to the router (retries included)
  kRequestsIssued,     // page requests sent (stop markers excluded)
  kRetryGroups,        // groups made of retried accesses
  kRetriedRequests,    // accesses faulted again after SUCCESS without a usable mapping
  kCompletedAccesses,  // accesses that found their page mapped after SUCCESS
  kAbortedRequests,    // accesses aborted: INVALID, or lost to a FAILURE
  kRetryExhausted,     // accesses aborted after max_retries SUCCESS-but-unmapped rounds
  kResponses,          // valid responses applied
  kResponsesSuccess,
  kResponsesInvalid,
  kResponsesFailure,
  kPriDisabled,  // FAILURE responses that disabled PRI
  kPriReenabled,
  kCreditStalls,          // passes where a group waited for credits
  kPrgiStalls,            // passes where a group waited for a free PRG index
  kArrivalsDropped,       // open-loop arrivals dropped (PRI disabled, unplugged, backlog full)
  kBogusResponses,        // unknown / already answered / stale cookie (router bug, loud)
  kPasidMismatches,       // needs-PASID device got a response with the wrong PASID (loud)
  kCountMismatches,       // response request_count differs from the group's (loud)
  kResponsesAfterUnplug,  // answers (INVALID, detach) for groups open at hot-unplug
  kLostLast,              // injected: groups whose LAST was lost
  kIommuAutoResponses,    // lost groups auto-answered by the simulated IOMMU on overflow
  kDuplicatePrgi,         // injected: groups reusing an open PRGI
  kDuplicateResponses,    // responses to those
  kOverflows,             // injected: overflow signals
  kUnplugs,               // injected: hot-unplugs
  kStopMarkers,           // injected: stop markers sent
  kBurstGroups,           // injected: groups issued beyond the allocation by bursts
  kInjectionsSkipped,     // injections that did not apply (unknown PASID, nothing open, ...)
  kReplayIncomplete,      // replay: captured requests of groups without LAST (not replayed)
  kCount
};
inline constexpr size_t kCounterCount = static_cast<size_t>(Counter::kCount);
std::string_view toString(Counter counter);

struct CounterSnapshot {
  std::array<uint64_t, kCounterCount> values{};
  uint64_t operator[](Counter c) const { return values[static_cast<size_t>(c)]; }
  CounterSnapshot& operator+=(const CounterSnapshot& other) {
    for (size_t i = 0; i < kCounterCount; ++i) values[i] += other.values[i];
    return *this;
  }
};

// A point-in-time view of one device.
struct SimDeviceStatus {
  uint32_t index = 0;
  DeviceId router_id = 0;
  std::string name;
  uint16_t rid = 0;
  CounterSnapshot counters;
  uint64_t open_groups = 0;  // PRG indices waiting for a response (lost ones included)
  uint64_t lost_groups = 0;  // of which: LAST lost, waiting for an overflow auto-response
  uint64_t credits_in_use = 0;
  bool pri_enabled = true;
  bool unplugged = false;
  bool workload_done = false;  // max_groups reached or replay finished (and nothing open)
};

class SimDevice;

// What a device needs from the feeder thread that drives it. Implemented by the backend.
class DeviceIo {
 public:
  virtual ~DeviceIo() = default;
  // Appends a request to the feeder's next deliver() batch.
  virtual void push(const PageRequest& request) = 0;
  // Delivers the batch now. Returns the backend's overflow epoch read while delivering (a lost
  // group whose partial requests went out in this flush is auto-answered by the first overflow
  // with a later epoch).
  virtual uint64_t flush() = 0;
  // RouterSink::removeDevice, serialised against an overflow's discardPartial like deliver().
  virtual absl::Status removeDevice(DeviceId device) = 0;
  // Asks for a backend-wide overflow (discardPartial + IOMMU auto-responses).
  virtual void requestOverflow() = 0;
  virtual void recordLatency(int64_t ns) = 0;
  virtual void reportBogus(const SimDevice& device, const Response& response, std::string_view why) = 0;
};

// The device model. Owned by SimulatedBackend; every method except the translation binding and
// the counters is called only by the feeder thread that owns the device.
class SimDevice {
 public:
  SimDevice(uint32_t index, SimDeviceConfig config);
  SimDevice(const SimDevice&) = delete;
  SimDevice& operator=(const SimDevice&) = delete;

  uint32_t index() const { return index_; }
  const SimDeviceConfig& config() const { return config_; }
  DeviceId routerId() const { return router_id_; }
  void setRouterId(DeviceId id) { router_id_ = id; }

  // --- translation binding (any thread) ---
  // Which software page table a retry of (device, pasid|RID) checks. A PASID without its own
  // table uses the RID's table when the RID is attached to a nested (guest-owned) domain (R6).
  // INVALID_ARGUMENT for a PASID the device does not declare.
  absl::Status bind(std::optional<uint32_t> pasid, const SoftIoPageTable* table);
  const SoftIoPageTable* translation(std::optional<uint32_t> pasid) const;

  // --- feeder thread ---
  void startTraffic(int64_t now);
  // Issues what credits, PRG indices, the rate and the workload allow (at most `max_groups`).
  // Returns the number of groups issued.
  size_t issue(int64_t now, size_t max_groups, DeviceIo& io);
  void onResponse(const Response& response, int64_t received_ns, DeviceIo& io);
  // Runs scheduled and queued injections that are due. Returns how many ran.
  size_t runInjections(int64_t now, DeviceIo& io);
  // A backend-wide overflow with epoch `epoch` happened: auto-answer (SUCCESS) lost groups whose
  // partial requests were flushed before it.
  void onOverflow(uint64_t epoch, int64_t now);
  // Earliest time this device has timed work (open-loop arrival, replay, injection, re-enable);
  // INT64_MAX if none.
  int64_t nextWakeNs() const;
  // True if issue() would send something right now (credits, PRG indices and work available).
  bool hasImmediateWork() const;

  // --- any thread ---
  // Queues an injection for the next pass of the owning feeder.
  void inject(const Injection& injection);
  bool hasQueuedInjections() const { return queued_flag_.load(std::memory_order_acquire); }
  SimDeviceStatus status() const;
  uint64_t counter(Counter c) const {
    return counters_[static_cast<size_t>(c)].load(std::memory_order_relaxed);
  }

 private:
  enum class SlotState : uint8_t { kFree = 0, kAssembling = 1, kOpen = 2, kLost = 3 };
  struct Access {
    uint64_t addr = 0;
    uint8_t perm = 0;
    uint8_t attempts = 0;
    uint32_t next = kNil;
  };
  struct Slot {
    int64_t issue_ns = 0;
    uint64_t lost_epoch = 0;
    Access first;  // the group's first access (the rest: pool, head..tail)
    uint32_t head = kNil;
    uint32_t tail = kNil;
    uint32_t cookie = 0;
    uint32_t pasid = 0;
    uint16_t count = 0;
    SlotState state = SlotState::kFree;
    bool has_pasid = false;
    bool has_first = false;
  };
  struct Retry {
    uint64_t addr = 0;
    uint8_t perm = 0;
    uint8_t attempts = 0;
    bool has_pasid = false;
    uint32_t pasid = 0;
  };
  struct Duplicate {
    uint32_t cookie = 0;
    uint32_t grpid = 0;
    int64_t issue_ns = 0;
    Access access;
    bool has_pasid = false;
    uint32_t pasid = 0;
  };
  static constexpr uint32_t kNil = UINT32_MAX;

  void bump(Counter c, uint64_t by = 1) {
    auto& a = counters_[static_cast<size_t>(c)];
    a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }
  bool canIssue() const { return pri_enabled_ && !unplugged_; }
  bool generationDone() const;
  uint32_t freeCredits() const;
  std::optional<uint32_t> allocPrgi(std::optional<uint32_t> preferred = std::nullopt);
  void freePrgi(uint32_t prgi);
  uint32_t allocAccess(uint64_t addr, uint8_t perm, uint8_t attempts);
  void appendAccess(Slot& slot, uint64_t addr, uint8_t perm, uint8_t attempts);
  void releaseAccesses(Slot& slot);
  template <typename Fn>
  void forEachAccess(const Slot& slot, Fn&& fn) const {
    if (!slot.has_first) return;
    fn(slot.first);
    for (uint32_t i = slot.head; i != kNil; i = pool_[i].next) fn(pool_[i]);
  }
  // The next PASID round-robin (has_pasid false: RID). False if every PASID was stopped.
  bool nextPasid(bool& has_pasid, uint32_t& pasid);
  bool pasidStopped(uint32_t pasid) const;
  bool stageNewGroup(bool force_two);
  // Sends `accesses` as one group on a fresh PRG index. False (nothing sent) when credits or PRG
  // indices are missing. With allow_lose and a pending lost_last injection, LAST is not sent.
  bool sendGroup(const std::vector<Access>& accesses, bool has_pasid, uint32_t pasid, int64_t now,
                 DeviceIo& io, bool ignore_credits, bool allow_lose);
  size_t issueRetries(int64_t now, size_t budget, DeviceIo& io);
  size_t issueReplay(int64_t now, size_t budget, DeviceIo& io);
  void issueDuplicates(int64_t now, DeviceIo& io);
  void applyOutcome(ResponseCode code, const Access& access, bool has_pasid, uint32_t pasid);
  void countResponse(const Response& response);
  void disablePri(int64_t now);
  void dropPending();
  void runInjection(const Injection& injection, int64_t now, DeviceIo& io);
  void setGauges();
  PageRequest makeRequest(uint32_t grpid, bool has_pasid, uint32_t pasid, uint64_t addr, uint8_t perm,
                          bool last, uint32_t cookie) const;

  const uint32_t index_;
  const SimDeviceConfig config_;
  DeviceId router_id_ = 0;

  // Translation binding: one entry per declared PASID (config_.pasids sorted), plus the RID.
  std::vector<uint32_t> sorted_pasids_;
  std::unique_ptr<std::atomic<const SoftIoPageTable*>[]> pasid_tables_;
  std::atomic<const SoftIoPageTable*> rid_table_{nullptr};

  // Feeder-thread state.
  Rng rng_;          // content: addresses, perms, group sizes
  Rng arrival_rng_;  // open-loop arrival times (kept apart so pacing never changes content)
  AddressStream stream_;
  bool started_ = false;
  bool pri_enabled_ = true;
  bool unplugged_ = false;
  int64_t reenable_at_ = INT64_MAX;
  uint64_t credits_in_use_ = 0;
  std::array<Slot, kPrgiSpace> slots_{};
  std::array<uint16_t, kPrgiSpace> free_prgi_{};  // FIFO ring of free PRG indices
  std::array<bool, kPrgiSpace> in_ring_{};
  uint32_t free_head_ = 0;
  uint32_t free_count_ = 0;
  uint32_t open_slots_ = 0;
  std::vector<Access> pool_;
  uint32_t pool_free_ = kNil;
  std::vector<Retry> retries_;  // FIFO: [retry_head_, size)
  size_t retry_head_ = 0;
  std::vector<Access> staged_;   // the next new group, generated but not yet issued
  std::vector<Access> scratch_;  // retry and burst groups
  bool staged_has_pasid_ = false;
  uint32_t staged_pasid_ = 0;
  std::vector<Duplicate> duplicates_;
  uint32_t next_cookie_ = 0;
  size_t pasid_cursor_ = 0;
  std::vector<bool> stopped_;  // per sorted PASID
  uint64_t groups_generated_ = 0;
  int64_t next_arrival_ns_ = INT64_MAX;
  double next_arrival_exact_ = 0;
  uint64_t arrival_backlog_ = 0;
  uint32_t last_open_prgi_ = kNil;
  bool lose_next_last_ = false;
  uint32_t pending_duplicates_ = 0;
  uint32_t lost_count_ = 0;
  // Replay.
  size_t replay_pos_ = 0;
  int64_t replay_base_ns_ = 0;
  absl::flat_hash_map<uint32_t, uint32_t> replay_open_;  // captured grpid → local PRGI
  bool replay_done_ = false;
  int64_t replay_next_ns_ = INT64_MAX;
  // Scheduled injections.
  struct Scheduled {
    ScheduledInjection spec;
    int64_t next_ns = INT64_MAX;
    uint32_t fired = 0;
  };
  std::vector<Scheduled> scheduled_;

  // Injections queued from other threads.
  mutable std::mutex queued_mu_;
  std::vector<Injection> queued_;
  std::vector<Injection> queued_local_;
  std::atomic<bool> queued_flag_{false};

  std::array<std::atomic<uint64_t>, kCounterCount> counters_{};
  // Gauges for status() (written by the feeder).
  std::atomic<uint64_t> g_open_{0}, g_lost_{0}, g_credits_{0};
  std::atomic<bool> g_pri_enabled_{true}, g_unplugged_{false}, g_done_{false};
};

}  // namespace iopf::sim
