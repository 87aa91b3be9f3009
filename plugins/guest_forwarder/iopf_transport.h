// Transport "iopf": the guest forwarder's socket server for VMMs that speak the QEMU socket
// backend's iopf profile with feature FORWARD (backends/qemu_socket/iopf_forward_protocol.h,
// docs/plugins/guest_forwarder.md §4). A VMM connects, says HELLO (FORWARD), optionally VM_NAME,
// declares its guest devices with DEVICE_ADD (dev_id = the host device's backend handle, rid/virt_id/
// viommu_id = the guest's view), then receives GUEST_PAGE_REQ frames (one group each, guest
// identifiers) and answers with GUEST_PAGE_RESP keyed by those identifiers. GUEST_RESET drains a
// vIOMMU or the whole VM; DEVICE_DEL drains the device; a disconnect drains the VM and removes
// its DEVICE_ADD entries from the registry.
//
// Threading: one event-loop thread serves the listener and every connection; forward() (shard
// threads) appends to an outbox and wakes the loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "forwarder.h"

namespace iopf::guest_forwarder {

class IopfForwardServer {
 public:
  struct Options {
    std::string socket_path;
    uint32_t max_connections = 64;
    uint32_t max_devices_per_connection = 256;
    std::function<void(sdk::LogLevel, const std::string&)> log;
  };
  struct Stats {
    std::atomic<uint64_t> connections{0}, frames_in{0}, groups_sent{0}, responses_in{0}, responses_refused{0},
        resets{0}, devices_added{0}, devices_refused{0}, protocol_errors{0};
  };

  IopfForwardServer(Forwarder* forwarder, Options options);
  ~IopfForwardServer();
  // Binds the socket and starts the loop thread.
  absl::Status start();
  // Stops the loop; every connection's VM is detached (open groups answered INVALID).
  void stop();
  const Stats& stats() const;
  void addCounters(sdk::Counters& out) const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace iopf::guest_forwarder
