#include "iopf/event_bus.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace iopf {
namespace {

Event ev(EventType t, uint64_t group) {
  Event e;
  e.type = t;
  e.group = group;
  return e;
}

TEST(EventBus, SequenceNumbersStartAtOneAndAreContiguous) {
  EventBus bus(64);
  EXPECT_EQ(bus.publish(ev(EventType::kRequest, 10)), 1u);
  EXPECT_EQ(bus.publish(ev(EventType::kResponded, 11)), 2u);
  std::vector<Event> out(8);
  uint64_t cursor = 1;
  ASSERT_EQ(bus.read(cursor, out), 2u);
  EXPECT_EQ(out[0].seq, 1u);
  EXPECT_EQ(out[0].group, 10u);
  EXPECT_EQ(out[1].seq, 2u);
  EXPECT_EQ(out[1].type, EventType::kResponded);
  EXPECT_EQ(cursor, 3u);
  EXPECT_EQ(bus.read(cursor, out), 0u);
}

TEST(EventBus, SlowReaderGetsAGapMarkerWithTheCountLost) {
  EventBus bus(64);
  for (uint64_t i = 0; i < 200; ++i) bus.publish(ev(EventType::kRequest, i));
  std::vector<Event> out(256);
  uint64_t cursor = 1;
  const size_t n = bus.read(cursor, out);
  ASSERT_GE(n, 1u);
  EXPECT_EQ(out[0].type, EventType::kGap);
  EXPECT_EQ(out[0].seq, 1u);
  EXPECT_EQ(out[0].value, 200 - 64);
  ASSERT_EQ(n, 65u);
  for (size_t i = 1; i < n; ++i) EXPECT_EQ(out[i].seq, 200 - 64 + i);
  EXPECT_EQ(bus.oldest(), 137u);
}

TEST(EventBus, ReadStopsAtAReservedButUnwrittenEvent) {
  EventBus bus(64);
  const uint64_t a = bus.reserve(2);
  bus.write(a + 1, ev(EventType::kRequest, 2));
  std::vector<Event> out(4);
  uint64_t cursor = 1;
  EXPECT_EQ(bus.read(cursor, out), 0u);
  bus.write(a, ev(EventType::kRequest, 1));
  EXPECT_EQ(bus.read(cursor, out), 2u);
  EXPECT_EQ(out[0].group, 1u);
  EXPECT_EQ(out[1].group, 2u);
}

TEST(EventBus, ConcurrentProducersAndAReaderSeeEveryEventOnceOrAGap) {
  EventBus bus(1 << 10);
  constexpr int kPerThread = 100'000;
  std::atomic<bool> done{false};
  std::vector<std::thread> producers;
  for (int t = 0; t < 2; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) bus.publish(ev(EventType::kRequest, t * kPerThread + i));
    });
  }
  uint64_t cursor = 1, seen = 0, lost = 0, expected_seq = 1;
  std::vector<Event> out(512);
  auto drain = [&]() -> size_t {
    const size_t n = bus.read(cursor, out);
    for (size_t i = 0; i < n; ++i) {
      EXPECT_EQ(out[i].seq, expected_seq);
      expected_seq = out[i].seq;
      if (out[i].type == EventType::kGap) {
        lost += static_cast<uint64_t>(out[i].value);
        expected_seq += static_cast<uint64_t>(out[i].value);
      } else {
        ++seen;
        ++expected_seq;
      }
    }
    return n;
  };
  std::thread reader([&] {
    while (!done.load()) drain();
  });
  for (auto& p : producers) p.join();
  done = true;
  reader.join();
  while (drain() > 0) {
  }
  EXPECT_EQ(seen + lost, 2u * kPerThread);
  EXPECT_EQ(cursor, 2u * kPerThread + 1);
}

}  // namespace
}  // namespace iopf
