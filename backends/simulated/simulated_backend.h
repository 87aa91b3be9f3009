// The simulated PRI backend: virtual PCIe functions that fault, a software I/O page table per
// domain, and fault injection, feeding the router through the ordinary RouterSink like any wire
// backend (requests one by one, the router assembles groups). docs/backends/simulated.md.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopf/backend.h"
#include "iopf/clock.h"
#include "iopf/stats.h"
#include "sim_device.h"
#include "soft_page_table.h"

namespace iopf::sim {

// Totals over every device of the backend.
struct SimTotals {
  CounterSnapshot counters;
  uint64_t devices = 0;
  uint64_t open_groups = 0;
  uint64_t lost_groups = 0;
  uint64_t credits_in_use = 0;
  uint64_t pri_disabled_devices = 0;
  uint64_t unplugged_devices = 0;
  uint64_t unknown_device_responses = 0;  // responses naming no device of this backend (loud)
  uint64_t overflow_epoch = 0;
};

class SimulatedBackend final : public Backend {
 public:
  struct Options {
    // Device I/O threads ("feeders"); device i belongs to feeder i % feeders. Each feeder is the
    // only thread that feeds its devices (RouterSink contract).
    unsigned feeders = 1;
    // false: no threads; the owner drives every feeder with step() (deterministic tests).
    bool threaded = true;
    // Time source for issue times, arrivals and injections. Default: SteadyClock. MUST outlive
    // the backend. Use the router's clock so device-observed and router latencies agree.
    const Clock* clock = nullptr;
    // How long an idle feeder spins before it sleeps.
    int64_t idle_spin_ns = 50'000;
    // Requests per deliver() call; a pass delivers when its batch reaches this size.
    uint32_t max_batch = 32;
    // New groups one device may issue per pass (fairness between devices).
    uint32_t max_groups_per_device_pass = 64;
    // Print router-bug reports (bogus responses) on stderr. They are always counted and kept.
    bool report_to_stderr = true;
    // Called by the feeder thread at the end of every pass, after its batch was delivered; returns
    // the work it did. Lets one I/O thread also run a manual-mode router to completion (no thread
    // hop between device and router). Only with a single feeder (startTraffic refuses more).
    std::function<size_t()> after_pass;
    // Most devices the backend holds, set up before traffic and hot-added after it together;
    // addDevice beyond it is RESOURCE_EXHAUSTED. The device table is allocated once at this size
    // (one pointer per device), so a hot-add never moves what feeder and shard threads index.
    uint32_t max_devices = kDefaultMaxDevices;
  };
  // The router's own device table holds 65,536 devices.
  static constexpr uint32_t kDefaultMaxDevices = 1u << 16;

  explicit SimulatedBackend(Options options);
  SimulatedBackend() : SimulatedBackend(Options{}) {}
  ~SimulatedBackend() override;
  SimulatedBackend(const SimulatedBackend&) = delete;
  SimulatedBackend& operator=(const SimulatedBackend&) = delete;

  // --- setup: any one thread, before startTraffic() ------------------------------------------
  // Adds a device; returns its simulator index (also its DeviceSpec::backend_handle). After
  // start() it is registered with the router at once. Any thread, also while traffic runs (a
  // hot-add, serialised with other adds): a device added after startTraffic() issues nothing until
  // startDevices() hands it to its feeder, so that the caller can attach it first.
  // ALREADY_EXISTS for a name in use, RESOURCE_EXHAUSTED beyond Options::max_devices,
  // FAILED_PRECONDITION once stopped.
  absl::StatusOr<uint32_t> addDevice(SimDeviceConfig config);
  // Creates the software I/O page table of a router domain (call after Router::addDomain).
  absl::Status addDomain(DomainId domain, DomainKind kind);
  // Mirrors Router::attach for the device model: which page table a retry of (device, pasid|RID)
  // checks. Any thread, any time.
  absl::Status attach(uint32_t device, std::optional<uint32_t> pasid, DomainId domain);
  absl::Status detach(uint32_t device, std::optional<uint32_t> pasid);

  // Starts traffic: threaded, the feeder threads start; manual, step() starts issuing.
  // FAILED_PRECONDITION before start() or twice.
  absl::Status startTraffic();
  // Hot-add, after startTraffic(): hands devices added since to their feeders (device i belongs
  // to feeder i % feeders); each starts its workload (and its scheduled injections, timed from
  // now) at its feeder's next pass. The traffic of the other devices goes on undisturbed. Any
  // thread. FAILED_PRECONDITION before startTraffic(), once stopped, or for a device already
  // started; NOT_FOUND for an unknown index. Nothing is started on an error.
  absl::Status startDevices(std::span<const uint32_t> devices);
  // Manual mode: one pass of every feeder on the calling thread (responses received so far are
  // applied, due injections run, requests issued and delivered). Returns the work done (0: idle).
  size_t step();
  // Queues an injection for the device; its feeder runs it at its next pass. Any thread.
  absl::Status inject(uint32_t device, const Injection& injection);

  // --- Backend ----------------------------------------------------------------------------------
  std::string_view name() const override { return "simulated"; }
  Capabilities capabilities() const override { return {false, false, true}; }
  // Registers every device added so far with the router (on the calling thread).
  absl::Status start(RouterSink& sink) override;
  // Stops and joins the feeders. Responses arriving afterwards (the router's shutdown drain) are
  // still applied to the device model, on the calling thread, under the feeder's lock.
  void stop() override;
  // Thread-safe; hands responses to the owning feeders (no call back into the router).
  void respond(std::span<const Response> responses) override;
  // Maps into the domain's software I/O page table. NOT_FOUND for a domain without one.
  absl::Status map(const MapRequest& request) override;

  // --- observation (any thread) -----------------------------------------------------------------
  // Devices added so far (a hot-add publishes its device before it counts it).
  size_t deviceCount() const;
  SimDeviceStatus deviceStatus(uint32_t device) const;
  const SimDeviceConfig& deviceConfig(uint32_t device) const;
  DeviceId routerId(uint32_t device) const;
  std::optional<uint32_t> deviceIndex(std::string_view name) const;
  SimTotals totals() const;
  // Device-observed latency: request issue → response receipt at the device (respond()).
  LatencyHistogram::Snapshot latency() const;
  const SoftIoPageTable* pageTable(DomainId domain) const;
  // Router-bug reports so far (the first 64 kept) and their total count.
  std::vector<std::string> bogusReports() const;
  uint64_t bogusReportCount() const { return bogus_count_.load(std::memory_order_relaxed); }
  const Options& options() const { return options_; }

  class Feeder;

 private:
  static constexpr uint32_t kMaxDomains = 1u << 14;
  friend class Feeder;
  void performOverflow();
  void report(std::string message);
  // The device with this index, or null (not added yet). Any thread.
  SimDevice* device(uint32_t index) const {
    return index < device_count_.load(std::memory_order_acquire)
               ? devices_[index].load(std::memory_order_acquire)
               : nullptr;
  }
  SimDevice& deviceOrThrow(uint32_t index) const;

  const Options options_;
  SteadyClock steady_;
  const Clock* clock_;
  RouterSink* sink_ = nullptr;
  bool traffic_started_ = false;  // guarded by devices_mu_ (written once, before any feeder runs)
  std::atomic<bool> stopped_{false};

  // Devices: a table of max_devices pointers allocated once, filled in index order and published
  // with device_count_ (release), so feeders, shards (respond) and observers index it without a
  // lock while addDevice appends. devices_mu_ serialises the adds (and startTraffic/startDevices).
  std::mutex devices_mu_;
  std::unique_ptr<std::atomic<SimDevice*>[]> devices_;
  std::atomic<uint32_t> device_count_{0};
  std::vector<std::unique_ptr<SimDevice>> device_storage_;  // guarded by devices_mu_
  std::vector<bool> device_started_;                        // guarded by devices_mu_
  std::vector<std::unique_ptr<Feeder>> feeders_;            // fixed once traffic starts

  std::mutex domains_mu_;
  std::vector<std::unique_ptr<SoftIoPageTable>> table_storage_;  // guarded by domains_mu_
  std::array<std::atomic<SoftIoPageTable*>, kMaxDomains> tables_{};

  // deliver() runs shared, discardPartial() exclusive: no device is fed while partials go.
  std::shared_mutex sink_mu_;
  std::atomic<uint64_t> overflow_epoch_{0};
  std::atomic<bool> overflow_requested_{false};

  std::atomic<uint64_t> unknown_device_responses_{0};
  std::atomic<uint64_t> bogus_count_{0};
  mutable std::mutex reports_mu_;
  std::vector<std::string> reports_;
};

}  // namespace iopf::sim
