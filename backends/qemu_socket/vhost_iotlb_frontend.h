// The QEMU socket backend, profile "vhost-iotlb": iopfd as the vhost-user FRONT-END towards a
// device process (e.g. DPDK's vhost PMD with iommu-support=1) that raises IOTLB MISS messages on
// the back-end channel (docs/protocols/qemu-socket.md §4).
//
// Per connection the front-end negotiates features, hands over the back-end channel, shares a
// memfd "guest memory" whose IOVA space is identity-mapped to it (iova_base + offset), and sets up
// `queues` split virtqueues in it. Every MISS becomes a single-request router group (device = the
// connection, stall model); a SUCCESS verdict sends IOTLB_MSG UPDATE and, once the back-end acked
// it, acks the MISS (u64 0) if it asked for an ack; INVALID/FAILURE acks it with 1. Outstanding
// MISSes for the same (page, perm) are coalesced into the first one's group. The main socket and
// the back-end channel are served by one event loop (the deadlock rule).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "iopf/backend.h"
#include "loop_thread.h"

namespace iopf::qemu_socket {

struct VhostIotlbStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;
  uint64_t connections_ready = 0;   // set-up finished (every vring enabled)
  uint64_t misses = 0;              // BACKEND_IOTLB_MSG MISS received
  uint64_t misses_coalesced = 0;    // of those: joined an outstanding MISS for the same page/perm
  uint64_t groups = 0;              // router groups created (one per uncoalesced MISS)
  uint64_t updates_sent = 0;
  uint64_t updates_acked = 0;       // UPDATE acked with 0
  uint64_t miss_acks_ok = 0;        // u64 0 sent for a MISS with NEED_REPLY
  uint64_t miss_acks_failed = 0;    // non-zero ack sent
  uint64_t misses_refused = 0;      // INVALID/FAILURE verdicts (acked or, without NEED_REPLY, logged)
  uint64_t protocol_errors = 0;
  uint64_t setup_failures = 0;      // a set-up message acked non-zero
};

// The front-end's shared memory of one connection.
struct GuestMemory {
  uint8_t* base = nullptr;
  uint64_t size = 0;
  uint64_t iova_base = 0;
  uint8_t* at(uint64_t iova) const { return base + (iova - iova_base); }
};

class VhostIotlbFrontend final : public Backend {
 public:
  struct Options {
    std::string socket_path;            // listen here (the device process connects, DPDK client=1)
    uint64_t memory_bytes = 4ull << 20;  // memfd per connection
    uint64_t iova_base = 0x100000;       // IOVA (= guest-physical) of the memory's first byte
    uint32_t queues = 2;                 // virtqueues set up (virtio-net needs 2)
    uint32_t queue_size = 256;
    std::function<void(DeviceId device, uint32_t connection, bool added)> on_device;  // loop thread
    std::function<void(std::string_view)> log;
  };

  // Layout inside the memory: vring i at iova_base + i * kRingStride (descriptors), + 0x1000
  // (avail), + 0x2000 (used); data pages from iova_base + kDataOffset.
  static constexpr uint64_t kRingStride = 0x3000;
  static constexpr uint64_t kDataOffset = 0x40000;

  explicit VhostIotlbFrontend(Options options);
  ~VhostIotlbFrontend() override;
  VhostIotlbFrontend(const VhostIotlbFrontend&) = delete;
  VhostIotlbFrontend& operator=(const VhostIotlbFrontend&) = delete;

  std::string_view name() const override { return "vhost_iotlb"; }
  Capabilities capabilities() const override { return Capabilities{}; }
  absl::Status start(RouterSink& sink) override;
  void stop() override;
  void respond(std::span<const Response> responses) override;

  VhostIotlbStats stats() const;
  const std::string& socketPath() const { return options_.socket_path; }
  const Options& options() const { return options_; }
  // Serials of the open connections (any thread).
  std::vector<uint32_t> connections() const;
  // The memory of a connection; the shared_ptr keeps it mapped (any thread).
  std::shared_ptr<const GuestMemory> memory(uint32_t connection) const;
  // Writes vring `vring`'s kick eventfd of a connection (any thread).
  absl::Status kick(uint32_t connection, uint32_t vring) const;

  class Loop;

 private:
  Options options_;
  LoopThread<Loop> loop_;
};

}  // namespace iopf::qemu_socket
