#include "deadline_wheel.h"

#include <gtest/gtest.h>

#include <vector>

namespace iopf::detail {
namespace {

std::vector<uint32_t> expireAt(DeadlineWheel& w, int64_t now) {
  std::vector<uint32_t> out;
  w.expire(now, [&](uint32_t id) { out.push_back(id); });
  return out;
}

TEST(DeadlineWheel, FiresWithinOneTickAfterTheDeadlineNeverBefore) {
  DeadlineWheel w(1000, 16, 0);
  w.schedule(1, 5500);
  EXPECT_TRUE(expireAt(w, 5499).empty());
  EXPECT_EQ(expireAt(w, 5500), (std::vector<uint32_t>{}));  // tick rounding: due at the next tick
  EXPECT_EQ(expireAt(w, 6000), (std::vector<uint32_t>{1}));
  EXPECT_EQ(w.size(), 0u);
}

TEST(DeadlineWheel, CancelledIdsNeverFire) {
  DeadlineWheel w(1000, 16, 0);
  w.schedule(1, 3000);
  w.schedule(2, 3000);
  w.cancel(1);
  w.cancel(7);  // never scheduled: no-op
  EXPECT_EQ(expireAt(w, 10000), (std::vector<uint32_t>{2}));
}

TEST(DeadlineWheel, DeadlinesBeyondOneRevolutionWaitTheirTurn) {
  DeadlineWheel w(1000, 4, 0);  // 4 buckets = 4 µs per revolution
  w.schedule(1, 10'000);
  for (int64_t t = 1000; t < 10'000; t += 1000) EXPECT_TRUE(expireAt(w, t).empty()) << t;
  EXPECT_EQ(expireAt(w, 10'000), (std::vector<uint32_t>{1}));
}

TEST(DeadlineWheel, LongPauseVisitsEveryBucketOnce) {
  DeadlineWheel w(1000, 8, 0);
  for (uint32_t i = 0; i < 8; ++i) w.schedule(i, 1000 * (i + 1));
  auto fired = expireAt(w, 1'000'000);
  EXPECT_EQ(fired.size(), 8u);
  EXPECT_EQ(w.size(), 0u);
}

TEST(DeadlineWheel, AlreadyDueDeadlineFiresOnNextExpire) {
  DeadlineWheel w(1000, 8, 0);
  EXPECT_TRUE(expireAt(w, 5000).empty());
  w.schedule(3, 2000);  // in the past
  EXPECT_EQ(expireAt(w, 6000), (std::vector<uint32_t>{3}));
}

TEST(DeadlineWheel, RescheduleAfterExpiry) {
  DeadlineWheel w(1000, 8, 0);
  w.schedule(1, 1000);
  EXPECT_EQ(expireAt(w, 2000).size(), 1u);
  w.schedule(1, 4000);
  EXPECT_TRUE(w.scheduled(1));
  EXPECT_EQ(expireAt(w, 4000).size(), 1u);
}

}  // namespace
}  // namespace iopf::detail
