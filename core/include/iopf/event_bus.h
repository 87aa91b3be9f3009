// The event bus: every transition of the router as a sequenced event in a bounded ring.
//
// Producers (backend threads on ingest, shard threads, API threads) never wait for a reader: a
// reader that falls more than the ring's capacity behind loses the oldest events and is told so by a
// gap marker carrying the count lost. Sequence numbers are router-wide, monotonic and start at 1.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>
#include <type_traits>

#include "iopf/types.h"

namespace iopf {

enum class EventType : uint8_t {
  kGap = 0,                // synthetic, reader side only: `value` events were lost before `seq`
  kRequest = 1,            // a page request was ingested (before assembly)
  kGroupQueued = 2,        // a group completed assembly and was routed to its domain's shard
  kDispatched = 3,         // the shard started the domain's chain for the group
  kHandlerVerdict = 4,     // one handler answered: `code`, `verdict`, `handler`, `value` = ns spent
  kResponded = 5,          // the group's one response: `code`, `origin`, `value` = latency ns
  kTimedOut = 6,           // the deadline passed (followed by kResponded with origin timeout)
  kCompletionRefused = 7,  // a late / duplicate completion was refused; `origin` = who tried
  kAttach = 8,             // (device, pasid|RID) → domain; `value` = epoch
  kDetach = 9,             // (device, pasid|RID) detached; `value` = epoch
  kDeviceAdded = 10,
  kDeviceRemoved = 11,
  kDomainAdded = 12,
  kStopMarkerDropped = 13,
  kPartialDiscarded = 14,  // buffered partial requests dropped on overflow; `value` = requests
  kProtocolError = 15,     // device protocol error, e.g. a PRGI reused while its group is open
  kRequestDropped = 16,    // request of an unknown / removed device
  kDomainRemoved = 17,
  kChainChanged = 18,
  kDomainPaused = 19,       // dispatching of the domain's groups paused; `value` = groups waiting
  kDomainResumed = 20,      // resumed; `value` = held groups released to the chain
};
std::string_view toString(EventType type);

// Flag bits of Event::flags.
namespace event_flag {
inline constexpr uint8_t kPasidValid = 1u << 0;
inline constexpr uint8_t kLast = 1u << 1;
inline constexpr uint8_t kCookieValid = 1u << 2;
}  // namespace event_flag

// One event: 72 bytes, trivially copyable. Fields that do not apply to a type are zero.
struct Event {
  uint64_t seq = 0;
  int64_t time_ns = 0;     // monotonic clock of the router
  GroupId group = 0;
  uint64_t addr = 0;
  int64_t value = 0;       // type-specific (see EventType)
  DeviceId device = 0;
  DomainId domain = 0;
  uint32_t pasid = 0;      // valid if flags & kPasidValid
  uint32_t grpid = 0;      // the bus keeps 16 bits (PRGI: 9, SMMU STAG: 16)
  uint32_t cookie = 0;     // valid if flags & kCookieValid
  EventType type = EventType::kGap;
  uint8_t flags = 0;
  uint8_t perm = 0;
  uint8_t code = 0;        // ResponseCode
  uint8_t origin = 0;      // Origin
  uint8_t verdict = 0;     // Verdict::Kind
  uint16_t handler = 0;    // handler registry id (Router::handlerName)
};
static_assert(sizeof(Event) == 72 && std::is_trivially_copyable_v<Event>);

// A gap marker: the events from `seq` on were lost, `lost` of them (-1: an unknown number).
inline Event gapEvent(uint64_t seq, int64_t lost) {
  Event gap;
  gap.type = EventType::kGap;
  gap.seq = seq;
  gap.value = lost;
  return gap;
}

class EventBus {
 public:
  // `capacity` is rounded up to a power of two (minimum 64).
  explicit EventBus(size_t capacity);
  ~EventBus();
  EventBus(const EventBus&) = delete;
  EventBus& operator=(const EventBus&) = delete;

  size_t capacity() const { return mask_ + 1; }

  // Producer side. reserve(n) hands out n consecutive sequence numbers; the producer then MUST
  // write() each of them (an unwritten reserved number stalls readers until the ring wraps past it).
  // Safe from any number of threads; never waits for readers.
  uint64_t reserve(uint32_t n) { return next_.fetch_add(n, std::memory_order_relaxed); }
  void write(uint64_t seq, const Event& event);
  // reserve(1) + write.
  uint64_t publish(Event event);

  // The sequence number the next reserved event will get. Events [oldest(), head()) may be readable.
  uint64_t head() const { return next_.load(std::memory_order_acquire); }
  uint64_t oldest() const;

  // Consumer side, any thread, any number of independent readers (each owns its cursor).
  // Reads events starting at *cursor into `out`, advances *cursor, returns how many were written.
  // If *cursor is older than the oldest event still held, the first event written is a gap marker
  // (type kGap, seq = *cursor, value = number of events lost) and reading resumes at the oldest.
  // Stops early at an event still being written, and at the head it saw when called (one load of
  // the writers' counter per call): call again for what was published meanwhile.
  size_t read(uint64_t& cursor, std::span<Event> out) const;

 public:
  struct Slot;  // one cache line: a seqlock stamp and the packed event

 private:
  uint64_t mask_;
  std::unique_ptr<Slot[]> slots_;
  alignas(64) std::atomic<uint64_t> next_{1};
};

}  // namespace iopf
