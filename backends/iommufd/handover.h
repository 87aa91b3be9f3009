// The hand-over channel between a VMM and iopfd (docs/backends/iommufd.md §"Hand-over"): the VMM
// keeps VFIO ownership and passes its iommufd and FAULT fds over a Unix socket with SCM_RIGHTS,
// and fences its own detach/replace with QUIESCE_BEGIN/END (R5).
//
// One message = one fixed 24-byte HandoverMessage (host byte order; both ends are on one host),
// carrying at most one fd as SCM_RIGHTS ancillary data. Every request is answered with kAck whose
// `status` is 0 or a negative errno; QUIESCE_BEGIN's ack carries the new epoch's low 32 bits in
// `dev_id` (informational).
//
//   VMM → iopfd                              iopfd → VMM
//   ADOPT_IOMMUFD  fd=iommufd                 ACK status
//   ADOPT_FAULT    fd=fault fd, fault_id      ACK status   (backend starts reading it)
//   QUIESCE_BEGIN  fault_id, dev_id|~0u       ACK status   (cookies retired, epoch bumped)
//      … the VMM now detaches / replaces / destroys …
//   QUIESCE_END    fault_id, dev_id|~0u       ACK status
#pragma once

#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace iopf::iommufd {

class IommufdBackend;

inline constexpr uint32_t kHandoverMagic = 0x46504f49;  // "IOPF" little-endian
inline constexpr uint16_t kHandoverVersion = 1;
inline constexpr uint32_t kHandoverAllDevices = 0xFFFFFFFFu;

enum class HandoverType : uint16_t {
  kAdoptIommufd = 1,
  kAdoptFault = 2,
  kQuiesceBegin = 3,
  kQuiesceEnd = 4,
  kAck = 5,
};

struct HandoverMessage {
  uint32_t magic = kHandoverMagic;
  uint16_t version = kHandoverVersion;
  uint16_t type = 0;      // HandoverType
  uint32_t fault_id = 0;  // ADOPT_FAULT, QUIESCE_*
  uint32_t dev_id = 0;    // QUIESCE_*: iommufd DEVICE id, kHandoverAllDevices = whole FAULT object
  int32_t status = 0;     // ACK: 0 or -errno
  uint32_t reserved = 0;  // 0
};
static_assert(sizeof(HandoverMessage) == 24);

// Sends one message with an optional fd (-1: none). Blocking.
absl::Status sendHandover(int socket_fd, const HandoverMessage& message, int fd = -1);

struct ReceivedHandover {
  HandoverMessage message;
  int fd = -1;  // owned by the caller; O_CLOEXEC
};
// Receives one message. Validates magic, version, size and that at most one fd came along (extra
// fds are closed). Blocking. UNAVAILABLE on EOF.
absl::StatusOr<ReceivedHandover> receiveHandover(int socket_fd);

// iopfd side before the backend exists: receives ADOPT_IOMMUFD, acks it, returns the iommufd (for
// IommufdBackendOptions::iommufd).
absl::StatusOr<int> receiveIommufd(int socket_fd);

// iopfd side: handles one request (ADOPT_FAULT, QUIESCE_BEGIN, QUIESCE_END) and acks it. Returns
// the error sent to the peer, or a transport error.
absl::Status serveHandoverMessage(IommufdBackend& backend, int socket_fd);

// VMM side helper: sends a request and waits for its ACK; returns the peer's status.
absl::Status requestHandover(int socket_fd, const HandoverMessage& message, int fd = -1);

}  // namespace iopf::iommufd
