// Recent group history for GetGroup: transitions of open and recently completed groups, rebuilt
// from the event bus by one background reader (never on the routing path). Best effort: a reader
// that falls behind the ring loses the transitions of those events, and the oldest completed groups
// are forgotten past `capacity`.
#pragma once

#include <atomic>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "iopf/event_bus.h"
#include "iopf/v1/router.pb.h"

namespace iopf::api {

class GroupHistory {
 public:
  // capacity 0: disabled (no thread).
  GroupHistory(EventBus& bus, size_t capacity);
  ~GroupHistory();
  GroupHistory(const GroupHistory&) = delete;
  GroupHistory& operator=(const GroupHistory&) = delete;

  // Fills transitions (and, for completed groups, identity, code, origin, latency) if known.
  bool fill(GroupId id, v1::Group& out) const;
  // Processes everything published so far (GetGroup calls it before answering NOT_FOUND).
  void catchUp();
  uint64_t lost() const { return lost_.load(std::memory_order_relaxed); }

 private:
  struct Record {
    Event first;               // group_queued
    std::vector<Event> transitions;
    bool completed = false;
    Event response;
  };
  void run();
  size_t pump();
  void apply(const Event& e);

  EventBus& bus_;
  const size_t capacity_;
  mutable std::mutex mu_;
  absl::flat_hash_map<GroupId, Record> records_;
  std::deque<GroupId> completed_order_;
  uint64_t cursor_ = 0;
  std::mutex pump_mu_;
  std::atomic<uint64_t> lost_{0};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace iopf::api
