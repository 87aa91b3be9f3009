#include "deadline_wheel.h"

#include <algorithm>
#include <bit>

namespace iopf::detail {

DeadlineWheel::DeadlineWheel(int64_t tick_ns, uint32_t buckets, int64_t start_ns)
    : tick_ns_(std::max<int64_t>(tick_ns, 1)),
      mask_(std::bit_ceil(std::max<uint32_t>(buckets, 2)) - 1),
      start_ns_(start_ns),
      processed_tick_(-1),
      heads_(mask_ + 1, kNone) {}

uint32_t DeadlineWheel::bucketOf(int64_t deadline_ns) const {
  int64_t tick = (deadline_ns - start_ns_ + tick_ns_ - 1) / tick_ns_;  // round up: never early
  // A deadline already due lands in the next bucket to be visited.
  tick = std::max(tick, processed_tick_ + 1);
  return static_cast<uint32_t>(tick) & mask_;
}

void DeadlineWheel::schedule(uint32_t id, int64_t deadline_ns) {
  if (id >= nodes_.size()) nodes_.resize(std::max<size_t>(id + 1, nodes_.size() * 2));
  Node& n = nodes_[id];
  const uint32_t b = bucketOf(deadline_ns);
  n.bucket = b;
  n.deadline = deadline_ns;
  n.prev = kNone;
  n.next = heads_[b];
  if (n.next != kNone) nodes_[n.next].prev = id;
  heads_[b] = id;
  ++size_;
  earliest_ = std::min(earliest_, deadline_ns);
}

void DeadlineWheel::unlink(uint32_t id) {
  Node& n = nodes_[id];
  if (n.prev != kNone) {
    nodes_[n.prev].next = n.next;
  } else {
    heads_[n.bucket] = n.next;
  }
  if (n.next != kNone) nodes_[n.next].prev = n.prev;
  n.bucket = kNone;
  n.prev = n.next = kNone;
  --size_;
}

void DeadlineWheel::cancel(uint32_t id) {
  if (scheduled(id)) unlink(id);
}

int64_t DeadlineWheel::nextCheck() const {
  if (size_ == 0) return INT64_MAX;
  return std::max(earliest_, start_ns_ + (processed_tick_ + 1) * tick_ns_);
}

}  // namespace iopf::detail
