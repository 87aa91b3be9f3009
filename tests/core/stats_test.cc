#include "iopf/stats.h"

#include <gtest/gtest.h>

namespace iopf {
namespace {

TEST(LatencyHistogram, BucketsAreMonotonicAndCoverEveryValue) {
  int prev = -1;
  for (uint64_t v : {0ull, 1ull, 15ull, 16ull, 17ull, 31ull, 32ull, 1000ull, 123456ull, 1ull << 39,
                     (1ull << 41) - 1, 1ull << 50}) {
    const int b = LatencyHistogram::bucketOf(v);
    EXPECT_GE(b, prev);
    EXPECT_LT(b, LatencyHistogram::kBuckets);
    if (v < (1ull << 41)) {
      EXPECT_LE(LatencyHistogram::bucketLowerBound(b), v);
      EXPECT_GE(LatencyHistogram::bucketUpperBound(b), v);
    }
    prev = b;
  }
}

TEST(LatencyHistogram, RelativeErrorBelowSevenPercent) {
  for (uint64_t v = 16; v < (1ull << 40); v = v * 3 + 7) {
    const int b = LatencyHistogram::bucketOf(v);
    const double width = static_cast<double>(LatencyHistogram::bucketUpperBound(b) -
                                              LatencyHistogram::bucketLowerBound(b) + 1);
    EXPECT_LE(width / static_cast<double>(v), 1.0 / 16 + 1e-9) << v;
  }
}

TEST(LatencyHistogram, PercentilesOfAKnownDistribution) {
  LatencyHistogram h;
  for (uint64_t v = 1; v <= 1000; ++v) h.record(v * 1000);  // 1 µs .. 1 ms
  auto s = h.snapshot();
  EXPECT_EQ(s.count, 1000u);
  EXPECT_EQ(s.max, 1'000'000u);
  const double p50 = static_cast<double>(s.percentile(0.5));
  const double p99 = static_cast<double>(s.percentile(0.99));
  EXPECT_NEAR(p50, 500'000, 500'000 * 0.07);
  EXPECT_NEAR(p99, 990'000, 990'000 * 0.07);
  EXPECT_EQ(s.percentile(1.0), 1'000'000u);
}

TEST(LatencyHistogram, MergeAddsCounts) {
  LatencyHistogram a, b;
  a.record(10);
  b.record(20);
  b.recordShared(30);
  auto s = a.snapshot();
  s.merge(b.snapshot());
  EXPECT_EQ(s.count, 3u);
  EXPECT_EQ(s.sum, 60u);
  EXPECT_EQ(s.max, 30u);
}

TEST(LatencyHistogram, EmptySnapshot) {
  LatencyHistogram h;
  auto s = h.snapshot();
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.percentile(0.99), 0u);
}

}  // namespace
}  // namespace iopf
