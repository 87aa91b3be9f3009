#include "group_history.h"

#include <chrono>

namespace iopf::api {

GroupHistory::GroupHistory(EventBus& bus, size_t capacity) : bus_(bus), capacity_(capacity) {
  cursor_ = bus_.head();
  if (capacity_ > 0) thread_ = std::thread([this] { run(); });
}

GroupHistory::~GroupHistory() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void GroupHistory::run() {
  while (!stop_.load(std::memory_order_relaxed)) {
    if (pump() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void GroupHistory::catchUp() {
  while (pump() > 0) {
  }
}

size_t GroupHistory::pump() {
  if (capacity_ == 0) return 0;
  std::lock_guard pl(pump_mu_);
  Event buf[512];
  const size_t n = bus_.read(cursor_, std::span<Event>(buf, 512));
  if (n == 0) return 0;
  std::lock_guard lk(mu_);
  for (size_t i = 0; i < n; ++i) apply(buf[i]);
  return n;
}

void GroupHistory::apply(const Event& e) {
  switch (e.type) {
    case EventType::kGap:
      lost_.fetch_add(static_cast<uint64_t>(e.value), std::memory_order_relaxed);
      return;
    case EventType::kGroupQueued: {
      Record& r = records_[e.group];
      r.first = e;
      r.transitions.push_back(e);
      return;
    }
    case EventType::kDispatched:
    case EventType::kHandlerVerdict:
    case EventType::kTimedOut:
    case EventType::kCompletionRefused:
    case EventType::kResponded: {
      auto it = records_.find(e.group);
      if (it == records_.end()) return;  // queued before this reader started or lost
      Record& r = it->second;
      r.transitions.push_back(e);
      if (e.type == EventType::kResponded && !r.completed) {
        r.completed = true;
        r.response = e;
        completed_order_.push_back(e.group);
        while (completed_order_.size() > capacity_) {
          records_.erase(completed_order_.front());
          completed_order_.pop_front();
        }
      }
      return;
    }
    default:
      return;
  }
}

bool GroupHistory::fill(GroupId id, v1::Group& out) const {
  std::lock_guard lk(mu_);
  auto it = records_.find(id);
  if (it == records_.end()) return false;
  const Record& r = it->second;
  for (const Event& e : r.transitions) {
    v1::Transition* t = out.add_transitions();
    t->set_type(static_cast<v1::EventType>(e.type));
    t->set_time_ns(e.time_ns);
    t->set_seq(e.seq);
    switch (e.type) {
      case EventType::kHandlerVerdict:
        t->set_detail("handler " + std::to_string(e.handler) + " verdict " + std::to_string(e.verdict) +
                      " code " + std::string(toString(static_cast<ResponseCode>(e.code))));
        break;
      case EventType::kResponded:
        t->set_detail(std::string(toString(static_cast<ResponseCode>(e.code))) + " origin " +
                      std::string(toString(static_cast<Origin>(e.origin))));
        break;
      case EventType::kCompletionRefused:
        t->set_detail("refused " + std::string(toString(static_cast<Origin>(e.origin))));
        break;
      default:
        break;
    }
  }
  if (out.id() == 0) {
    // Not open any more: identity from the events.
    out.set_id(id);
    out.set_device(r.first.device);
    out.set_domain(r.first.domain);
    if (r.first.flags & event_flag::kPasidValid) out.set_pasid(r.first.pasid);
    out.set_grpid(r.first.grpid);
    if (r.first.flags & event_flag::kCookieValid) out.set_cookie(r.first.cookie);
    out.set_queued_ns(r.first.time_ns);
    out.set_request_count(static_cast<uint32_t>(r.first.value));
    out.set_state(r.completed ? v1::GROUP_STATE_COMPLETED : v1::GROUP_STATE_QUEUED);
  }
  if (r.completed) {
    out.set_state(v1::GROUP_STATE_COMPLETED);
    out.set_code(static_cast<v1::ResponseCode>(r.response.code));
    out.set_origin(static_cast<v1::Origin>(r.response.origin));
    out.set_latency_ns(r.response.value);
  }
  return true;
}

}  // namespace iopf::api
