// A scripted guest behind a VMM, for the guest forwarder's "iopf" transport (feature FORWARD,
// docs/plugins/guest_forwarder.md §4). It connects, says HELLO (FORWARD), VM_NAME and DEVICE_ADD,
// then for every GUEST_PAGE_REQ group does what a VMM with an emulated VT-d does: writes one page
// request descriptor per request into a PRQ ring (vtd_prq.h), lets the "guest" pop them, builds the
// guest's page group response descriptor, decodes it back and sends GUEST_PAGE_RESP keyed by the
// guest identifiers. The answer per group follows a script (cycled): success, invalid, failure,
// late (after late_ms), twice (the same answer two times), never, reset (GUEST_RESET of the VM).
// Used by tools/iopf-vmm-peer --guest, the plugin tests and `iopf-bench forwarder`. C++.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace iopf::qemu_socket {

enum class GuestAnswer { kSuccess, kInvalid, kFailure, kLate, kTwice, kNever, kReset };

// "success,invalid,..." -> script; INVALID_ARGUMENT names the bad word.
absl::StatusOr<std::vector<GuestAnswer>> parseGuestScript(const std::string& text);

struct GuestDeviceDecl {
  uint32_t dev_id = 0;  // the host device's backend handle
  uint16_t rid = 0;     // guest RID
  uint32_t viommu_id = 0;
  uint64_t virt_id = 0;
  uint8_t pasid_bits = 0;
  bool needs_pasid = false;
};

struct GuestPeerOptions {
  std::string socket_path;
  std::string vm_name;  // "" = anonymous (iopf-<connection>)
  std::vector<GuestDeviceDecl> devices;
  std::vector<GuestAnswer> script{GuestAnswer::kSuccess};
  int late_ms = 200;
  uint64_t groups = 0;  // stop after this many groups (0: until seconds / stop)
  double seconds = 0;   // 0: no time limit
  unsigned pqs = 0;     // PRQ of 2^(pqs+7) descriptors
  const std::atomic<bool>* stop = nullptr;
  std::atomic<bool>* ready = nullptr;  // set once HELLO, VM_NAME and every DEVICE_ADD succeeded
  int timeout_ms = 10'000;
};

struct GuestPeerResult {
  bool ok = false;
  std::string error;
  uint64_t groups = 0, requests = 0;
  uint64_t success = 0, invalid = 0, failure = 0, late = 0, twice = 0, never = 0, resets = 0;
  uint64_t reset_drained = 0;    // groups the forwarder reported drained by our resets
  uint64_t errors_received = 0;  // ERROR frames (refused answers: twice, late)
  std::string last_error;
  uint64_t prq_overflows = 0;
  std::vector<uint32_t> prgis;  // guest PRGIs seen, in order (first 4096)
};

GuestPeerResult runGuestPeer(const GuestPeerOptions& options);

}  // namespace iopf::qemu_socket
