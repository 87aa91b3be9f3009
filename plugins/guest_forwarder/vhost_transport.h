// Transport "vhost-iotlb": the guest forwarder as the vhost-user BACK-END of a virtio device that
// QEMU emulates behind its intel-iommu (vmm-protocols.md §3.1, §7.2 "P1-forward", §8.2-8.3).
//
// QEMU connects to `socket_path` (-chardev socket,path=...; -netdev vhost-user). The transport
// answers the set-up messages, takes the back-end channel (SET_BACKEND_REQ_FD) and then turns
// each page request of a forwarded group into BACKEND_IOTLB_MSG{MISS, iova = page, perm} with
// NEED_REPLY. QEMU resolves the MISS by walking the guest's IOMMU page tables: it sends
// IOTLB_MSG{UPDATE} on the main socket (acked at once) and acks the MISS with 0; or it acks
// non-zero (unmapped, or the device is stopped). A group is SUCCESS iff every page was granted
// (ack 0 and an UPDATE covering the page with the permissions asked), else INVALID. The guest's
// later unmaps arrive as IOTLB_MSG{INVALIDATE} and are applied to the transport's IOTLB.
//
// One event-loop thread serves the listener, the main socket and the back-end channel (the
// deadlock rule: QEMU sends the UPDATE and waits for its ack before it acks the MISS). One MISS
// is in flight at a time; groups queue behind it.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "forwarder.h"

namespace iopf::guest_forwarder {

struct IotlbEntry {
  uint64_t iova = 0;
  uint64_t size = 0;
  uint64_t uaddr = 0;
  uint8_t perm = 0;  // vhost perm: 1 RO, 2 WO, 3 RW
};

struct VringAddresses {
  uint32_t index = 0;
  uint64_t desc = 0, used = 0, avail = 0;  // IOVAs (VIRTIO_F_IOMMU_PLATFORM)
};

class VhostForwardTransport {
 public:
  struct Options {
    std::string vm;
    std::string socket_path;
    // The guest device the groups name (one virtio device per vhost-user socket).
    std::function<void(sdk::LogLevel, const std::string&)> log;
  };
  struct Stats {
    std::atomic<uint64_t> connections{0}, setup_messages{0}, misses{0}, miss_ok{0}, miss_refused{0},
        miss_no_update{0}, updates{0}, invalidations{0}, iotlb_removed{0}, groups_success{0},
        groups_invalid{0}, protocol_errors{0}, device_starts{0}, device_stops{0};
  };

  VhostForwardTransport(Forwarder* forwarder, Options options);
  ~VhostForwardTransport();
  absl::Status start();
  void stop();

  const Stats& stats() const;
  // Snapshots (any thread).
  std::vector<IotlbEntry> iotlb() const;
  std::vector<VringAddresses> vrings() const;
  bool connected() const;
  bool channelReady() const;
  void addCounters(sdk::Counters& out) const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace iopf::guest_forwarder
