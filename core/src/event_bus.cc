#include "iopf/event_bus.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <thread>

namespace iopf {

// A slot is a seqlock: `stamp` is 2*seq+1 while seq is being written and 2*seq+2 once it is
// complete. The payload is held in relaxed atomic words so that a reader racing a writer is a
// detected retry, not undefined behaviour (and TSan-clean).
struct EventBus::Slot {
  static constexpr size_t kWords = sizeof(Event) / sizeof(uint64_t);
  std::atomic<uint64_t> stamp{0};
  std::array<std::atomic<uint64_t>, kWords> words{};
};

EventBus::EventBus(size_t capacity)
    : mask_(std::bit_ceil(std::max<size_t>(capacity, 64)) - 1),
      slots_(std::make_unique<Slot[]>(mask_ + 1)) {}

EventBus::~EventBus() = default;

void EventBus::write(uint64_t seq, const Event& event) {
  Slot& slot = slots_[seq & mask_];
  const uint64_t writing = 2 * seq + 1;
  // Claim the slot. An older writer still busy in it (only possible after the ring wrapped past a
  // preempted producer) finishes first; a newer claim means this event is already lost.
  uint64_t cur = slot.stamp.load(std::memory_order_relaxed);
  for (;;) {
    if (cur >= writing) return;
    if ((cur & 1) != 0) {
      std::this_thread::yield();
      cur = slot.stamp.load(std::memory_order_relaxed);
      continue;
    }
    if (slot.stamp.compare_exchange_weak(cur, writing, std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
      break;
    }
  }
  std::atomic_thread_fence(std::memory_order_release);
  Event stamped = event;
  stamped.seq = seq;
  std::array<uint64_t, Slot::kWords> raw;
  std::memcpy(raw.data(), static_cast<const void*>(&stamped), sizeof(Event));
  for (size_t i = 0; i < Slot::kWords; ++i) slot.words[i].store(raw[i], std::memory_order_relaxed);
  slot.stamp.store(writing + 1, std::memory_order_release);
}

uint64_t EventBus::publish(Event event) {
  const uint64_t seq = reserve(1);
  write(seq, event);
  return seq;
}

uint64_t EventBus::oldest() const {
  const uint64_t h = head();
  return h > mask_ + 1 ? h - (mask_ + 1) : 1;
}

size_t EventBus::read(uint64_t& cursor, std::span<Event> out) const {
  size_t n = 0;
  if (cursor == 0) cursor = 1;
  while (n < out.size()) {
    const uint64_t h = head();
    if (cursor >= h) break;
    const uint64_t first_held = h > mask_ + 1 ? h - (mask_ + 1) : 1;
    if (cursor < first_held) {
      Event gap;
      gap.type = EventType::kGap;
      gap.seq = cursor;
      gap.value = static_cast<int64_t>(first_held - cursor);
      out[n++] = gap;
      cursor = first_held;
      continue;
    }
    const Slot& slot = slots_[cursor & mask_];
    const uint64_t want = 2 * cursor + 2;
    const uint64_t s1 = slot.stamp.load(std::memory_order_acquire);
    if (s1 < want) break;  // still being written
    std::array<uint64_t, Slot::kWords> raw;
    if (s1 == want) {
      for (size_t i = 0; i < Slot::kWords; ++i) raw[i] = slot.words[i].load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (slot.stamp.load(std::memory_order_relaxed) == want) {
        std::memcpy(static_cast<void*>(&out[n++]), raw.data(), sizeof(Event));
        ++cursor;
        continue;
      }
    }
    // Overwritten before or while we read it: everything up to the new oldest is lost. Loop again:
    // the gap branch above reports it against the current head.
    if (cursor >= (head() > mask_ + 1 ? head() - (mask_ + 1) : 1)) {
      // The slot was overwritten by a writer whose sequence number is not yet behind the ring
      // (a reservation ran ahead): report this one event as lost.
      Event gap;
      gap.type = EventType::kGap;
      gap.seq = cursor;
      gap.value = 1;
      out[n++] = gap;
      ++cursor;
    }
  }
  return n;
}

}  // namespace iopf
