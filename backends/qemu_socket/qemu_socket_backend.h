// The QEMU socket backend, profile "iopf": iopfd is the server of a Unix socket; VMMs connect,
// say HELLO, declare their devices and send page-request records; each group gets exactly one
// PAGE_RESP. docs/protocols/qemu-socket.md §3 is the protocol, docs/backends/qemu_socket.md the
// operator's view.
//
// Isolation: every connection has its own dev_id and cookie namespaces; a response is routed back
// by the (connection, dev_id) encoded in the router device's backend_handle and written only if
// that connection still has the group open. A protocol error of one VMM closes (if fatal) only its
// connection.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "iopf/backend.h"
#include "loop_thread.h"

namespace iopf::qemu_socket {

// A device appearing or disappearing on a connection (DEVICE_ADD / DEVICE_DEL / disconnect).
struct VmmDeviceEvent {
  bool added = false;
  DeviceId device = 0;          // router id
  uint32_t connection = 0;      // connection serial (1, 2, ...; never reused by one backend)
  uint32_t vmm_dev_id = 0;      // the VMM's dev_id
  uint32_t viommu_id = 0;
  uint64_t virt_id = 0;         // the VMM's virtual device id
  DeviceSpec spec;
};

struct QemuSocketStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;
  uint64_t connections_refused = 0;     // above max_connections
  uint64_t fatal_closes = 0;            // connections closed for a fatal protocol error
  uint64_t frames_in = 0;
  uint64_t records_in = 0;              // page-request records handed to the router
  uint64_t records_rejected = 0;
  uint64_t errors_sent = 0;             // ERROR frames written
  uint64_t responses_sent = 0;          // PAGE_RESP records written
  uint64_t detach_responses = 0;        // of those: synthesized INVALID on DEVICE_DEL
  uint64_t responses_dropped = 0;       // router responses for groups no longer open (late/duplicate/gone)
  uint64_t devices_open = 0;
};

class QemuSocketBackend final : public Backend {
 public:
  struct Options {
    std::string socket_path;                  // where to listen (a stale socket file is replaced)
    uint32_t max_connections = 64;
    uint32_t max_devices_per_connection = 1024;
    // Called on the event-loop thread right after a device was added to the router (before any of
    // its requests is delivered: attach it here) and right after it was removed. MUST NOT block
    // for long; MAY call Router::attach/detach.
    std::function<void(const VmmDeviceEvent&)> on_device;
    // Diagnostics (protocol errors, closes), on the event-loop thread. Default: none.
    std::function<void(std::string_view)> log;
  };

  explicit QemuSocketBackend(Options options);
  ~QemuSocketBackend() override;
  QemuSocketBackend(const QemuSocketBackend&) = delete;
  QemuSocketBackend& operator=(const QemuSocketBackend&) = delete;

  std::string_view name() const override { return "qemu_socket"; }
  Capabilities capabilities() const override { return Capabilities{}; }
  // Listens on Options::socket_path and starts the event-loop thread. Errors: the socket cannot
  // be created (path too long, exists and is not a socket, permissions).
  absl::Status start(RouterSink& sink) override;
  // Writes every response handed so far, then closes every connection and joins the loop thread.
  void stop() override;
  // Thread-safe; queues the responses for the event-loop thread (never blocks on I/O).
  void respond(std::span<const Response> responses) override;

  QemuSocketStats stats() const;
  const std::string& socketPath() const { return options_.socket_path; }

  class Loop;

 private:
  Options options_;
  LoopThread<Loop> loop_;
};

}  // namespace iopf::qemu_socket
