#include "iopf/stats.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace iopf {

int LatencyHistogram::bucketOf(uint64_t value) {
  if (value < kSub) return static_cast<int>(value);
  const int exponent = std::bit_width(value) - 1;  // >= kSubBits
  if (exponent > kMaxExponent) return kBuckets - 1;
  const int sub = static_cast<int>((value >> (exponent - kSubBits)) & (kSub - 1));
  return (exponent - kSubBits + 1) * kSub + sub;
}

uint64_t LatencyHistogram::bucketLowerBound(int bucket) {
  if (bucket < kSub) return static_cast<uint64_t>(bucket);
  const int exponent = bucket / kSub + kSubBits - 1;
  const uint64_t sub = static_cast<uint64_t>(bucket % kSub);
  return (uint64_t{1} << exponent) | (sub << (exponent - kSubBits));
}

uint64_t LatencyHistogram::bucketUpperBound(int bucket) {
  if (bucket >= kBuckets - 1) return UINT64_MAX;
  return bucketLowerBound(bucket + 1) - 1;
}

void LatencyHistogram::recordShared(uint64_t value) {
  buckets_[bucketOf(value)].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
  uint64_t cur = max_.load(std::memory_order_relaxed);
  while (value > cur && !max_.compare_exchange_weak(cur, value, std::memory_order_relaxed)) {
  }
}

LatencyHistogram::Snapshot LatencyHistogram::snapshot() const {
  Snapshot s;
  s.count = count_.load(std::memory_order_relaxed);
  s.sum = sum_.load(std::memory_order_relaxed);
  s.max = max_.load(std::memory_order_relaxed);
  if (s.count == 0) return s;
  s.buckets.resize(kBuckets);
  uint64_t total = 0;
  for (int i = 0; i < kBuckets; ++i) {
    s.buckets[i] = buckets_[i].load(std::memory_order_relaxed);
    total += s.buckets[i];
  }
  s.count = total;  // consistent with the buckets even while a writer runs
  return s;
}

uint64_t LatencyHistogram::Snapshot::percentile(double q) const {
  if (count == 0 || buckets.empty()) return 0;
  q = std::clamp(q, 0.0, 1.0);
  const uint64_t rank = std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(q * static_cast<double>(count))));
  uint64_t seen = 0;
  for (int i = 0; i < kBuckets; ++i) {
    seen += buckets[i];
    if (seen >= rank) return std::min(bucketUpperBound(i), max);
  }
  return max;
}

void LatencyHistogram::Snapshot::merge(const Snapshot& other) {
  if (other.count == 0) return;
  if (buckets.empty()) buckets.assign(kBuckets, 0);
  for (int i = 0; i < kBuckets; ++i) buckets[i] += other.buckets[i];
  count += other.count;
  sum += other.sum;
  max = std::max(max, other.max);
}

std::string_view toString(ResponseCode code) {
  switch (code) {
    case ResponseCode::kSuccess: return "success";
    case ResponseCode::kInvalid: return "invalid";
    case ResponseCode::kFailure: return "failure";
  }
  return "unknown";
}

std::string_view toString(Origin origin) {
  switch (origin) {
    case Origin::kHandler: return "handler";
    case Origin::kDefault: return "default";
    case Origin::kTimeout: return "timeout";
    case Origin::kDetach: return "detach";
    case Origin::kOperator: return "operator";
    case Origin::kShutdown: return "shutdown";
    case Origin::kOverload: return "overload";
    case Origin::kNoDomain: return "no-domain";
    case Origin::kHandlerError: return "handler-error";
  }
  return "unknown";
}

std::string_view toString(DomainKind kind) {
  switch (kind) {
    case DomainKind::kPaging: return "paging";
    case DomainKind::kNested: return "nested";
    case DomainKind::kSva: return "sva";
  }
  return "unknown";
}

}  // namespace iopf
