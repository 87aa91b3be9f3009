// A hashed timing wheel of deadlines keyed by small integer ids (the shard's group slots).
//
// One thread owns it (the shard thread). schedule/cancel are O(1) and allocation-free once the id
// space has been seen; expire() visits only the buckets whose tick has passed. Deadlines further
// away than one revolution stay in their bucket and are skipped until due.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace iopf::detail {

class DeadlineWheel {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;

  DeadlineWheel(int64_t tick_ns, uint32_t buckets, int64_t start_ns);

  // Schedules `id` to expire at `deadline_ns`. `id` MUST NOT be scheduled already.
  void schedule(uint32_t id, int64_t deadline_ns);
  // Removes `id` if scheduled; no-op otherwise.
  void cancel(uint32_t id);
  bool scheduled(uint32_t id) const { return id < nodes_.size() && nodes_[id].bucket != kNone; }
  size_t size() const { return size_; }

  // Calls fn(id) for every id whose deadline is <= now_ns, removing it first. fn MAY schedule or
  // cancel other ids.
  template <typename Fn>
  void expire(int64_t now_ns, Fn&& fn);

  // The earliest tick boundary at which something may expire, or INT64_MAX if empty.
  int64_t nextCheck() const;

 private:
  struct Node {
    uint32_t prev = kNone;
    uint32_t next = kNone;
    uint32_t bucket = kNone;
    int64_t deadline = 0;
  };
  void unlink(uint32_t id);
  uint32_t bucketOf(int64_t deadline_ns) const;

  int64_t tick_ns_;
  uint32_t mask_;
  int64_t start_ns_;
  int64_t processed_tick_;  // every bucket up to this tick has been visited
  std::vector<uint32_t> heads_;
  std::vector<Node> nodes_;
  size_t size_ = 0;
  int64_t earliest_ = INT64_MAX;  // lower bound of the earliest deadline scheduled
};

template <typename Fn>
void DeadlineWheel::expire(int64_t now_ns, Fn&& fn) {
  if (size_ == 0 || now_ns < earliest_) {
    if (size_ == 0) processed_tick_ = (now_ns - start_ns_) / tick_ns_;
    return;
  }
  const int64_t now_tick = (now_ns - start_ns_) / tick_ns_;
  int64_t from = processed_tick_ + 1;
  // After a long pause every bucket is visited once.
  if (now_tick - from >= static_cast<int64_t>(mask_)) from = now_tick - mask_;
  for (int64_t t = from; t <= now_tick; ++t) {
    const uint32_t b = static_cast<uint32_t>(t) & mask_;
    uint32_t id = heads_[b];
    while (id != kNone) {
      const uint32_t next = nodes_[id].next;
      if (nodes_[id].deadline <= now_ns) {
        unlink(id);
        fn(id);
      }
      id = next;
    }
  }
  processed_tick_ = now_tick;
  // Anything left is due at the next tick at the earliest: a cheap lower bound.
  earliest_ = size_ == 0 ? INT64_MAX : start_ns_ + (now_tick + 1) * tick_ns_;
}

}  // namespace iopf::detail
