// A closed-loop VMM over libiopf-vmm: declares devices, keeps a window of groups in flight, checks
// that every group gets exactly one response. Used by tools/iopf-vmm-peer, `iopf-bench socket` and
// the threaded tests. C++ (not part of the C API).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "iopf/stats.h"

namespace iopf::qemu_socket {

struct VmmLoadOptions {
  std::string socket_path;
  uint32_t devices = 1;            // dev_ids first_dev_id .. first_dev_id + devices - 1
  uint32_t first_dev_id = 1;
  uint64_t groups = 0;             // stop after this many groups answered (0: run for `seconds`)
  double seconds = 1.0;
  double warmup = 0.0;             // not measured
  uint32_t group_size = 1;         // records per group
  uint32_t window = 256;           // groups in flight on the connection (≤ 512 per device)
  bool batch = true;               // negotiate BATCH and send up to 256 records per frame
  uint32_t invalid_every = 0;      // every k-th group asks for an address the handler refuses (bit 40)
  bool use_pasid = false;          // records carry PASID 1
  bool delete_devices = true;      // DEVICE_DEL at the end (open groups answered INVALID first)
  uint64_t disconnect_after = 0;   // close abruptly after sending this many groups (0: never)
  int reply_timeout_ms = 10'000;
  const std::atomic<bool>* stop = nullptr;  // optional external stop
};

struct VmmLoadResult {
  bool ok = false;
  std::string error;
  uint64_t groups_sent = 0;
  uint64_t responses = 0;          // in the measured window
  uint64_t total_responses = 0;
  uint64_t success = 0, invalid = 0, failure = 0;
  uint64_t unknown_cookies = 0;    // responses to no open group: duplicates or strays (must be 0)
  uint64_t detach_invalid = 0;     // INVALID responses received during DEVICE_DEL
  uint64_t errors_received = 0;
  double seconds = 0;
  double groups_per_s = 0;
  double requests_per_s = 0;
  LatencyHistogram::Snapshot latency;  // send → response, ns
};

VmmLoadResult runVmmLoad(const VmmLoadOptions& options);

}  // namespace iopf::qemu_socket
