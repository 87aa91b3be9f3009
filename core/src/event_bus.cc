#include "iopf/event_bus.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <thread>

namespace iopf {

// A slot is a seqlock: `stamp` is 2*seq+1 while seq is being written and 2*seq+2 once it is
// complete. The payload is packed into 7 relaxed atomic words (the sequence number is the stamp),
// so a slot is exactly one cache line, and a reader racing a writer is a detected retry, not
// undefined behaviour (TSan-clean). Packing keeps 16 bits of grpid (PRGI: 9, SMMU STAG: 16).
struct alignas(64) EventBus::Slot {
  static constexpr size_t kWords = 7;
  std::atomic<uint64_t> stamp{0};
  std::array<std::atomic<uint64_t>, kWords> words{};
};
static_assert(sizeof(EventBus::Slot) == 64);

namespace {

using Words = std::array<uint64_t, 7>;

Words pack(const Event& e) {
  const uint64_t small = uint64_t{e.code & 0x3u} | uint64_t{e.verdict & 0x3u} << 2 |
                         uint64_t{e.origin & 0xfu} << 4;
  return {static_cast<uint64_t>(e.time_ns),
          e.group,
          e.addr,
          static_cast<uint64_t>(e.value),
          uint64_t{e.device} | uint64_t{e.domain} << 32,
          uint64_t{e.pasid} | uint64_t{e.cookie} << 32,
          uint64_t{e.grpid & 0xffffu} | uint64_t{e.handler} << 16 |
              uint64_t{static_cast<uint8_t>(e.type)} << 32 | uint64_t{e.flags} << 40 |
              uint64_t{e.perm} << 48 | small << 56};
}

Event unpack(uint64_t seq, const Words& w) {
  Event e;
  e.seq = seq;
  e.time_ns = static_cast<int64_t>(w[0]);
  e.group = w[1];
  e.addr = w[2];
  e.value = static_cast<int64_t>(w[3]);
  e.device = static_cast<uint32_t>(w[4]);
  e.domain = static_cast<uint32_t>(w[4] >> 32);
  e.pasid = static_cast<uint32_t>(w[5]);
  e.cookie = static_cast<uint32_t>(w[5] >> 32);
  e.grpid = static_cast<uint32_t>(w[6] & 0xffff);
  e.handler = static_cast<uint16_t>(w[6] >> 16);
  e.type = static_cast<EventType>((w[6] >> 32) & 0xff);
  e.flags = static_cast<uint8_t>(w[6] >> 40);
  e.perm = static_cast<uint8_t>(w[6] >> 48);
  const auto small = static_cast<uint8_t>(w[6] >> 56);
  e.code = small & 0x3;
  e.verdict = (small >> 2) & 0x3;
  e.origin = (small >> 4) & 0xf;
  return e;
}

}  // namespace

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
  // Release stores (plain moves on x86): a reader that sees any new word also sees the claim.
  const Words raw = pack(event);
  for (size_t i = 0; i < Slot::kWords; ++i) slot.words[i].store(raw[i], std::memory_order_release);
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
  // The head once per call, again only when a slot was overwritten: `next_` is the writers' hottest
  // cache line, and a reader loading it per event would pull it out of their caches millions of
  // times a second (a slower router for every watcher). Events published meanwhile wait for the
  // next call.
  uint64_t h = head();
  while (n < out.size() && cursor < h) {
    const uint64_t first_held = h > mask_ + 1 ? h - (mask_ + 1) : 1;
    if (cursor < first_held) {
      out[n++] = gapEvent(cursor, static_cast<int64_t>(first_held - cursor));
      cursor = first_held;
      continue;
    }
    const Slot& slot = slots_[cursor & mask_];
    const uint64_t want = 2 * cursor + 2;
    const uint64_t s1 = slot.stamp.load(std::memory_order_acquire);
    if (s1 < want) break;  // still being written
    Words raw;
    if (s1 == want) {
      // Acquire loads keep the second stamp check after the words (no fence: TSan models none).
      for (size_t i = 0; i < Slot::kWords; ++i) raw[i] = slot.words[i].load(std::memory_order_acquire);
      if (slot.stamp.load(std::memory_order_relaxed) == want) {
        out[n++] = unpack(cursor, raw);
        ++cursor;
        continue;
      }
    }
    // Overwritten before or while we read it: everything up to the new oldest is lost. Loop again
    // with a fresh head: the gap branch above reports it.
    h = head();
    if (cursor >= (h > mask_ + 1 ? h - (mask_ + 1) : 1)) {
      // The slot was overwritten by a writer whose sequence number is not yet behind the ring
      // (a reservation ran ahead): report this one event as lost.
      out[n++] = gapEvent(cursor, 1);
      ++cursor;
    }
  }
  return n;
}

}  // namespace iopf
