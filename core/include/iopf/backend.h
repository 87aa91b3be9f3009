// The backend contract: where page requests come from and where responses go
// (ARCHITECTURE.md §6). Implemented by backends/<name>/ and by the in-memory test backend.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopf/types.h"

namespace iopf {

// The router's face towards one backend, handed to Backend::start. It stays valid until
// Backend::stop has returned.
//
// Threading: for any one device, addDevice/deliver/discardPartial/removeDevice MUST be called from
// one thread at a time (the backend's I/O thread for that device); different devices MAY be fed from
// different threads concurrently. None of these calls blocks on a handler or on a subscriber.
class RouterSink {
 public:
  virtual ~RouterSink() = default;

  virtual BackendId backendId() const = 0;

  // Declares a device of this backend. Returns its router id, used in every PageRequest.
  virtual absl::StatusOr<DeviceId> addDevice(const DeviceSpec& spec) = 0;

  // Hot-unplug / release: discards the device's buffered partial requests (no response), detaches
  // every attachment of the device and answers every open group INVALID with origin `detach`
  // (Delivery::kKernelAnswered where the backend's kernel auto-responds). After it returns, no
  // request of the device is accepted and no response for it will be handed to the backend.
  virtual absl::Status removeDevice(DeviceId device) = 0;

  // Hands a batch of page requests to the router. Never blocks on handlers.
  // - Wire backends (!Capabilities::whole_groups): requests are assembled per (device, grpid);
  //   non-last requests are buffered and never answered on their own; LAST_PAGE completes the group;
  //   stop markers are dropped.
  // - Whole-group backends (iommufd): each run of requests ending with `last` is one group and
  //   bypasses assembly.
  // Requests of unknown or removed devices are dropped and counted (they cannot be answered).
  virtual void deliver(std::span<const PageRequest> requests) = 0;

  // The backend's queue overflowed and a LAST_PAGE may have been lost: drop every buffered partial
  // request of this backend's devices without a response (iopf_queue_discard_partial).
  virtual void discardPartial() = 0;
};

// What the resolver asks a backend to make present: [iova, iova + length) of the domain's I/O page
// table, with the given permission bits.
struct MapRequest {
  DomainId domain = 0;
  DeviceId device = 0;
  std::optional<uint32_t> pasid;
  uint64_t iova = 0;
  uint64_t length = 0;
  uint64_t source_va = 0;   // user VA backing the range (iommufd IOAS_MAP), 0 if not applicable
  uint8_t perm = 0;
};

// A source of page requests and a sink of responses.
class Backend {
 public:
  struct Capabilities {
    bool whole_groups = false;                    // delivers complete groups (iommufd)
    bool kernel_auto_responds_on_detach = false;  // kernel answers open groups on detach (iommufd)
    bool can_map = false;                         // implements map()
  };

  virtual ~Backend() = default;

  // Stable short name ("simulated", "iommufd", "qemu_socket", "memory").
  virtual std::string_view name() const = 0;
  virtual Capabilities capabilities() const = 0;

  // Called once by Router::addBackend. The backend MAY start its I/O threads and call the sink from
  // now on. MUST return an error rather than throw.
  virtual absl::Status start(RouterSink& sink) = 0;

  // Called once by the router during shutdown, after every open group of this backend was answered
  // and handed to respond(). The backend MUST stop calling the sink before returning.
  virtual void stop() = 0;

  // A batch of responses, one per group, each handed exactly once. Called from shard threads:
  // MAY be called concurrently from several shards, so it MUST be thread-safe. MUST NOT call back
  // into the router synchronously (no deliver() from inside respond()), MUST NOT block for long.
  // Responses with Delivery::kKernelAnswered MUST NOT be written to the device.
  virtual void respond(std::span<const Response> responses) = 0;

  // Whether the backend can deliver requests and responses right now (its fds, sockets and threads
  // work). Polled by the daemon (health goes NOT_SERVING while a backend is down); any thread.
  virtual absl::Status health() const { return absl::OkStatus(); }

  // Makes a range present in a domain's I/O page table (resolvers). Called from shard threads or
  // plugin threads; MUST be thread-safe. Default: UNIMPLEMENTED.
  virtual absl::Status map(const MapRequest& request) {
    (void)request;
    return absl::UnimplementedError("backend '" + std::string(name()) + "' has no map()");
  }
};

}  // namespace iopf
