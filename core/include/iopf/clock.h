// Time source of the router. Deadlines, latencies and event times use one monotonic clock.
#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>

namespace iopf {

// A monotonic nanosecond clock. The router calls now() from every thread: implementations MUST be
// thread-safe and monotonic.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t now() const = 0;
};

// CLOCK_MONOTONIC (vDSO, no syscall). The default.
class SteadyClock final : public Clock {
 public:
  int64_t now() const override { return read(); }
  static int64_t read() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
  }
};

// A clock that moves only when told: deterministic deadline tests and model checks.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_ns = 1'000'000'000) : now_(start_ns) {}
  int64_t now() const override { return now_.load(std::memory_order_acquire); }
  void advance(int64_t ns) { now_.fetch_add(ns, std::memory_order_acq_rel); }
  void set(int64_t ns) { now_.store(ns, std::memory_order_release); }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace iopf
