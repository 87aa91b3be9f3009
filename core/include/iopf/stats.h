// Counters and latency histograms (log-linear buckets) of the router.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "iopf/types.h"

namespace iopf {

// Log-linear histogram of nanosecond values: 16 linear sub-buckets per power of two (≤ 6.25%
// relative error), values up to 2^40 ns (≈ 18 min) kept apart, larger ones in the last bucket.
// record() is wait-free; with one writer per histogram (the router keeps one per shard) it costs a
// few relaxed loads and stores. Readers MAY run concurrently and see a slightly stale state.
class LatencyHistogram {
 public:
  static constexpr int kSubBits = 4;
  static constexpr int kSub = 1 << kSubBits;
  static constexpr int kMaxExponent = 40;
  static constexpr int kBuckets = (kMaxExponent - kSubBits + 1) * kSub + kSub;

  static int bucketOf(uint64_t value);
  static uint64_t bucketLowerBound(int bucket);
  static uint64_t bucketUpperBound(int bucket);  // inclusive

  // Single-writer record (the writer MUST be the only thread recording into this histogram).
  void record(uint64_t value) {
    bump(buckets_[bucketOf(value)], 1);
    bump(count_, 1);
    bump(sum_, value);
    if (value > max_.load(std::memory_order_relaxed)) max_.store(value, std::memory_order_relaxed);
  }
  // Multi-writer record.
  void recordShared(uint64_t value);

  struct Snapshot {
    uint64_t count = 0;
    uint64_t sum = 0;
    uint64_t max = 0;
    std::vector<uint64_t> buckets;  // kBuckets entries (empty if count == 0)
    // Upper bound of the bucket holding quantile q in [0, 1] (clamped to max); 0 if empty.
    uint64_t percentile(double q) const;
    void merge(const Snapshot& other);
  };
  Snapshot snapshot() const;

 private:
  static void bump(std::atomic<uint64_t>& a, uint64_t by) {
    a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> count_{0};
  std::atomic<uint64_t> sum_{0};
  std::atomic<uint64_t> max_{0};
};

struct DeviceStats {
  DeviceId device = 0;
  std::string name;
  uint64_t requests = 0;           // ingested (including non-last and stop markers)
  uint64_t groups = 0;             // completed assembly
  uint64_t stop_markers = 0;
  uint64_t partial_discarded = 0;  // requests dropped by discardPartial / removal
  uint64_t protocol_errors = 0;
  uint64_t overload = 0;           // groups answered INVALID for the device's PRI allocation
  uint64_t outstanding_requests = 0;
  std::array<uint64_t, 3> responses_by_code{};
};

struct DomainStats {
  DomainId domain = 0;
  std::string name;
  uint64_t groups = 0;
  uint64_t open_groups = 0;
  std::array<uint64_t, 3> responses_by_code{};
  std::array<uint64_t, kOriginCount> responses_by_origin{};
  LatencyHistogram::Snapshot latency;  // request → response of this domain's groups
};

struct HandlerStats {
  uint16_t handler = 0;
  std::string name;
  uint64_t calls = 0;
  uint64_t continues = 0;
  uint64_t responds = 0;
  uint64_t defers = 0;
  uint64_t errors = 0;                 // threw, invalid code, invalid deferred code
  uint64_t deferred_completed = 0;     // deferred completions that won
  uint64_t refused = 0;                // deferred completions refused (late, duplicate)
  LatencyHistogram::Snapshot call_time;
};

struct StatsSnapshot {
  uint64_t requests = 0;
  uint64_t groups = 0;
  uint64_t responses = 0;
  uint64_t open_groups = 0;
  uint64_t refused_completions = 0;
  uint64_t dropped_requests = 0;       // unknown / removed device
  uint64_t stop_markers = 0;
  uint64_t partial_discarded = 0;
  uint64_t protocol_errors = 0;
  std::array<uint64_t, 3> responses_by_code{};
  std::array<uint64_t, kOriginCount> responses_by_origin{};
  LatencyHistogram::Snapshot latency;  // request → response, all groups
  std::vector<DeviceStats> devices;
  std::vector<DomainStats> domains;
  std::vector<HandlerStats> handlers;
};

}  // namespace iopf
