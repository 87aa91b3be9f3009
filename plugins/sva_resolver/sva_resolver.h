// sva_resolver: resolves page request groups against the address space bound to each PASID of the
// domain, with the semantics of the kernel's SVA handler (iommu-sva.c), and populates the I/O page
// table through the device's backend (docs/plugins/sva_resolver.md).
//
//   for each request of the group, in order (the first non-success is sticky and answers):
//     no PASID                                  -> INVALID
//     no binding for the PASID                  -> INVALID
//     privileged and the policy is "deny"       -> INVALID
//     the process exited                        -> INVALID
//     no mapping holds the address              -> INVALID
//     the mapping lacks R, or W for a write, or X for an exec   -> INVALID
//     the page cannot be made present           -> INVALID
//     the backend's map() fails                 -> INVALID
//     else: the page (plus `fault_around` following pages of the same mapping) is mapped with the
//     mapping's perms
//   all resolved -> SUCCESS
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "address_space.h"
#include "iopf/plugin_sdk.h"
#include "plugins/sva_resolver/sva_resolver.pb.h"

namespace iopf::plugins::sva_resolver {

// Why a request was answered INVALID (counter index).
enum class Cause : uint8_t {
  kNoPasid = 0,
  kNoBinding,
  kPrivileged,
  kProcessGone,
  kNoMapping,
  kPermission,
  kPopulateFailed,
  kMapFailed,
  kCount
};
const char* counterName(Cause cause);

// Counters of one handler instance. Written by its shard thread only, read from any thread.
struct ResolverStats {
  alignas(64) std::atomic<uint64_t> groups{0};
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> resolved_groups{0};
  std::atomic<uint64_t> invalid_groups{0};
  std::atomic<uint64_t> pages_mapped{0};        // faulting pages mapped
  std::atomic<uint64_t> fault_around_pages{0};  // neighbours mapped with them
  std::atomic<uint64_t> coalesced{0};           // requests whose page was made present while in flight
  std::atomic<uint64_t> maps_refreshes{0};      // process: /proc/PID/maps reads
  std::atomic<uint64_t> maps_bad_lines{0};      // process: lines of maps files skipped
  std::array<std::atomic<uint64_t>, static_cast<size_t>(Cause::kCount)> invalid{};
};

struct ResolverOptions {
  uint32_t fault_around = 0;
  bool allow_privileged = false;
  int64_t refresh_interval_ns = 1'000'000'000;
};

// Validates a config (throws sdk::Error naming `source` and the field) and builds the options and
// one provider per binding. `host` is used to check that the backends can map.
//
// Threading: an instance whose bindings are all `simulated` resolves inline in handle() (no system
// calls, bounded work). An instance with a `process` binding defers every group to its own worker
// thread, because reading another process's pages may block (swap-in, file I/O) and handle() MUST
// NOT block: the worker resolves groups in arrival order and completes them. Providers and the
// coalescing cache are only ever touched by one thread (handle's, or the worker's).
class SvaResolverHandler final : public sdk::Handler {
 public:
  SvaResolverHandler(const v1::SvaResolverConfig& config, const std::string& source, const sdk::Host& host,
                     ResolverStats& stats);
  // Stops the worker; groups it had not resolved yet are answered INVALID (refused, and harmless,
  // if the router already answered them).
  ~SvaResolverHandler() override;

  sdk::Verdict handle(const sdk::Group& group, const sdk::Completion& completion) override;

 private:
  struct Binding {
    uint32_t pasid = 0;
    std::unique_ptr<AddressSpaceProvider> provider;
  };
  // Pages this instance mapped recently (direct-mapped, overwritten freely): a request whose page
  // was mapped after the request arrived was in flight while another resolution made its page
  // present, and is coalesced: SUCCESS without resolving or mapping again. A page mapped before
  // the request arrived is resolved in full (the device faulted on it anyway: it may have been
  // unmapped since).
  struct Recent {
    uint64_t page = UINT64_MAX;
    int64_t mapped_ns = 0;  // router clock, read right before the map() call
    uint64_t group = 0;     // the group that mapped it (its own later requests are coalesced too)
    uint32_t pasid = 0;
    uint8_t perm = 0;
  };
  static constexpr size_t kRecentEntries = 8192;
  static size_t recentIndex(uint32_t pasid, uint64_t page) {
    return static_cast<size_t>(((page >> 12) ^ (uint64_t{pasid} * 0x9E3779B1u)) & (kRecentEntries - 1));
  }
  // One group, copied for the worker.
  struct Job {
    sdk::Completion completion;
    uint64_t group_id = 0;
    uint32_t domain = 0;
    uint32_t device = 0;
    std::vector<sdk::Request> requests;
  };
  AddressSpaceProvider* provider(uint32_t pasid) const;
  // The kernel SVA handler's loop over one group's requests (in order, first failure sticky).
  template <typename RequestAt>
  sdk::Code resolve(uint32_t count, RequestAt&& request_at, uint64_t group_id, uint32_t domain,
                    uint32_t device);
  void fail(Cause cause, uint32_t device, const sdk::Request& r, const char* detail);
  void workerMain();

  const sdk::Host& host_;
  ResolverOptions options_;
  std::vector<Binding> bindings_;  // sorted by PASID
  std::vector<Recent> recent_;     // kRecentEntries
  ResolverStats* stats_;           // owned by the plugin, outlives the handler
  std::string source_;
  std::string error_;  // map() failure text, reused

  // The worker (instances with a process binding).
  bool deferred_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;    // guarded by mu_
  std::vector<Job> spare_;  // guarded by mu_: finished jobs whose request vectors are reused
  bool stop_ = false;       // guarded by mu_
  std::thread worker_;
};

}  // namespace iopf::plugins::sva_resolver
