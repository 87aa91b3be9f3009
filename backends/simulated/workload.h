// What a simulated device accesses: address streams (sequential, uniform, Zipf hot set) and replay
// of a capture file, group sizes and open/closed-loop pacing (issue "Simulated PRI backend" §2).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "rng.h"

namespace iopf::sim {

enum class WorkloadKind : uint8_t { kSequential = 0, kUniform = 1, kZipf = 2, kReplay = 3 };
std::string_view toString(WorkloadKind kind);

// Cumulative distribution of a Zipf law over ranks 1..n with exponent s. Immutable once built;
// shared by every device with the same (n, s).
class ZipfTable {
 public:
  // n ≥ 1, s > 0. Memory: 8 bytes per rank.
  static std::shared_ptr<const ZipfTable> build(uint32_t n, double s);
  // Rank in [0, n) for a uniform u in [0, 1): rank 0 is the hottest.
  uint32_t sample(double u) const;
  uint32_t size() const { return static_cast<uint32_t>(cdf_.size()); }
  double exponent() const { return s_; }

 private:
  double s_ = 0;
  std::vector<double> cdf_;
};

// One captured page request of one device, as replayed.
struct ReplayRequest {
  int64_t offset_ns = 0;  // since the capture's first request record
  uint64_t addr = 0;
  uint32_t grpid = 0;  // as captured
  uint32_t pasid = 0;
  bool has_pasid = false;
  uint8_t perm = 0;
  bool last = false;
  bool stop_marker = false;
  uint32_t group_size = 0;  // requests of this request's group (set on every request of the group)
};

// The requests of one captured device, in capture order. Requests of groups that never completed
// in the capture (a LAST_PAGE never came) are left out and counted.
struct ReplayTrace {
  std::vector<ReplayRequest> requests;
  uint64_t incomplete_skipped = 0;
  int64_t span_ns = 0;  // offset of the last request
};

// One device of a capture file with its trace.
struct CapturedDevice {
  uint32_t capture_id = 0;
  std::string name;
  uint32_t segment = 0;
  uint16_t rid = 0;
  uint32_t pri_allocation = 0;
  uint8_t pasid_bits = 0;
  bool needs_pasid = false;
  bool stall_model = false;
  std::vector<uint32_t> pasids;  // PASIDs seen in its requests, ascending
  std::shared_ptr<const ReplayTrace> trace;
};

// Reads the kRequest records of a capture file (iopf/capture_file.h) and splits them per device.
// Errors name the file and what is wrong (unknown device id in a record, unreadable file, ...).
absl::StatusOr<std::vector<CapturedDevice>> loadCapture(const std::string& path);

struct WorkloadConfig {
  WorkloadKind kind = WorkloadKind::kUniform;
  uint64_t base = 0x1000'0000;
  uint64_t size = uint64_t{64} << 20;  // bytes
  double write_ratio = 0;
  uint32_t group_min = 1;
  uint32_t group_max = 1;
  double rate_groups_per_s = 0;  // 0: closed loop
  bool poisson = true;           // open loop: Poisson arrivals (else fixed intervals)
  std::shared_ptr<const ZipfTable> zipf;
  std::shared_ptr<const ReplayTrace> replay;
  bool replay_original_timing = true;
  double replay_speed = 1.0;
  bool replay_loop = false;
  uint64_t max_groups = 0;  // 0: unlimited
  bool skip_mapped = false;  // synthetic: accesses the page table allows complete without a fault
};

// Address stream of the synthetic workloads. A value type owned by its device's thread.
class AddressStream {
 public:
  explicit AddressStream(const WorkloadConfig& config);
  // The next accessed address (page-aligned plus a small cache-line offset: R8 says addresses need
  // not be aligned).
  uint64_t next(Rng& rng);

 private:
  WorkloadKind kind_;
  uint64_t base_;
  uint64_t pages_;
  uint64_t cursor_ = 0;
  const ZipfTable* zipf_;
};

}  // namespace iopf::sim
