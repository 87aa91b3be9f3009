// The guest forwarder's core: forwards each host page request group of a guest-owned domain to the
// VM's transport with the guest's identifiers, keeps it open (the handler returned Defer) and
// completes the host group exactly once from the guest's answer, keyed by
// (vm, vIOMMU, guest device id, guest PASID, PRGI) — vmm-protocols.md §5, iopf-kernel.md §5.2.
//
// Rules (docs/plugins/guest_forwarder.md §3):
// - guest SUCCESS -> SUCCESS, INVALID -> INVALID, FAILURE -> INVALID (a Response Failure to real
//   hardware would disable PRI for every VF of the function), any other code -> INVALID;
// - a second answer, an answer for a key that is not open, or an answer after the deadline is
//   refused and counted (never reaches the host);
// - guest reset, vIOMMU reset, DEVICE_DEL and VMM disconnect answer every matching open group
//   INVALID at once;
// - at most max_open_per_vm groups open per VM; beyond it INVALID at once (overload);
// - the deadline is the router domain's (or answer_timeout_ns if shorter); expire() answers
//   INVALID what passed it.
//
// Threading: handle() on shard threads; answer()/drain()/attachVm()/detachVm()/expire() on
// transport and sweeper threads; counters from any thread. One mutex guards the open table;
// completions are called outside it.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "device_registry.h"
#include "iopf/plugin_sdk.h"

namespace iopf::guest_forwarder {

inline constexpr uint32_t kNoPasid = 1u << 20;  // key value for "no PASID" (PASIDs are 20 bits)

struct GuestKey {
  std::string vm;
  uint32_t viommu_id = 0;
  uint64_t virt_id = 0;
  uint32_t pasid = kNoPasid;
  uint16_t prgi = 0;
  bool operator==(const GuestKey&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const GuestKey& k) {
    return H::combine(std::move(h), k.vm, k.viommu_id, k.virt_id, k.pasid, k.prgi);
  }
};

struct GuestRequest {
  uint64_t addr = 0;
  uint8_t perm = 0;  // IOPF_PERM_*
  bool last = false;
};

// What a transport sends to the VMM for one group.
struct ForwardedGroup {
  GuestKey key;
  uint16_t guest_rid = 0;
  bool needs_pasid = false;
  uint64_t host_group = 0;
  std::vector<GuestRequest> requests;
};

// One VM's way to its VMM.
class VmTransport {
 public:
  virtual ~VmTransport() = default;
  // Shard thread; MUST NOT block. false: cannot be delivered (the VMM is gone); the forwarder
  // answers INVALID at once.
  virtual bool forward(const ForwardedGroup& group) = 0;
};

enum class DrainReason { kGuestReset, kViommuReset, kDeviceDel, kDisconnect, kShutdown };

enum class AnswerResult { kCompleted, kDuplicate, kUnknown, kLate, kRefusedByRouter };
std::string_view toString(AnswerResult result);

struct ForwarderOptions {
  uint32_t max_open_per_vm = 256;
  int64_t answer_timeout_ns = 0;  // 0: the domain's deadline only
  size_t closed_history = 4096;   // keys remembered after closing (duplicate vs unknown)
  std::function<int64_t()> now;   // the router's clock (host().now())
  std::function<void(sdk::LogLevel, const std::string&)> log;
};

class Forwarder {
 public:
  Forwarder(DeviceRegistry* registry, ForwarderOptions options);
  ~Forwarder();

  DeviceRegistry& registry() { return *registry_; }

  // Transport up / down. detachVm answers every open group of the VM INVALID (kDisconnect).
  void attachVm(const std::string& vm, std::shared_ptr<VmTransport> transport);
  size_t detachVm(const std::string& vm, DrainReason reason = DrainReason::kDisconnect);
  bool vmAttached(const std::string& vm) const;
  // Per-VM bound override (0: the default).
  void setVmBound(const std::string& vm, uint32_t max_open);

  // Shard thread: one host group. `backend` is the device's backend name (may be empty when no
  // registry entry names one); `domain_deadline_ns` the domain's response deadline.
  sdk::Verdict handle(const sdk::Group& group, const sdk::Completion& completion, const std::string& backend,
                      int64_t domain_deadline_ns);

  // Transport threads: the guest's answer.
  AnswerResult answer(const GuestKey& key, uint8_t guest_code);
  // Answers INVALID every open group of `vm` (optionally only of one vIOMMU / one guest device).
  size_t drain(const std::string& vm, std::optional<uint32_t> viommu_id, std::optional<uint64_t> virt_id,
               DrainReason reason);
  // Answers INVALID every open group of every VM (plugin shutdown).
  size_t drainAll(DrainReason reason);
  // Answers INVALID every open group past its deadline. Returns how many.
  size_t expire();
  size_t openGroups() const;
  size_t openGroups(const std::string& vm) const;

  struct Counters {
    std::atomic<uint64_t> groups{0}, forwarded{0}, not_registered{0}, pasid_unmapped{0}, vm_unavailable{0},
        overload{0}, key_busy{0}, answers_success{0}, answers_invalid{0}, answers_failure_mapped{0},
        answers_bad_code{0}, answers_duplicate{0}, answers_unknown{0}, answers_late{0},
        answers_refused_by_router{0}, drained_guest_reset{0}, drained_viommu_reset{0}, drained_device_del{0},
        drained_disconnect{0}, drained_shutdown{0}, expired{0};
  };
  const Counters& counters() const { return counters_; }
  void addCounters(sdk::Counters& out) const;

 private:
  enum class Closed : uint8_t { kAnswered, kExpired, kDrained };
  struct Open {
    sdk::Completion completion;
    int64_t deadline_ns = 0;
    uint64_t host_group = 0;
  };
  struct History {
    Closed how;
    uint64_t seq;
  };
  void closeLocked(const GuestKey& key, Closed how);
  uint32_t boundLocked(const std::string& vm) const;
  void log(sdk::LogLevel level, const std::string& message) const;

  DeviceRegistry* registry_;
  ForwarderOptions options_;
  mutable std::mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<VmTransport>> vms_;
  absl::flat_hash_map<std::string, uint32_t> bounds_;
  absl::flat_hash_map<std::string, uint32_t> open_per_vm_;
  absl::flat_hash_map<GuestKey, Open> open_;
  absl::flat_hash_map<GuestKey, History> closed_;
  std::deque<std::pair<GuestKey, uint64_t>> closed_order_;
  uint64_t closed_seq_ = 0;
  Counters counters_;
};

}  // namespace iopf::guest_forwarder
