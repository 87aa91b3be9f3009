// A worker shard: owns the groups of its domains from queueing to the one response.
#include <algorithm>
#include <chrono>
#include <exception>
#include <vector>

#include "router_impl.h"

namespace iopf::detail {

namespace {
constexpr uint32_t kWheelBuckets = 4096;

bool validKind(Verdict::Kind kind) { return static_cast<uint8_t>(kind) <= 2; }
}  // namespace

Shard::Shard(Router::Impl& router, uint32_t index)
    : router_(router),
      index_(index),
      wheel_(router.options.wheel_tick_ns, kWheelBuckets, router.now()) {}

Shard::~Shard() { stopThread(); }

uint32_t Shard::allocSlotLocked() {
  if (!free_.empty()) {
    const uint32_t slot = free_.back();
    free_.pop_back();
    return slot;
  }
  const uint32_t slot = allocated_.load(std::memory_order_relaxed);
  if ((slot & (kChunk - 1)) == 0) {
    const uint32_t chunk = slot >> kChunkBits;
    if (chunk >= kMaxChunks) std::terminate();  // 16M open groups in one shard: out of memory anyway
    chunk_storage_.push_back(std::make_unique<Group[]>(kChunk));
    chunks_[chunk].store(chunk_storage_.back().get(), std::memory_order_release);
  }
  allocated_.store(slot + 1, std::memory_order_release);
  return slot;
}

void Shard::enqueueLocked(uint32_t slot, GroupId id) {
  inbox_.push_back({slot, id});
  pending_.store(true, std::memory_order_release);
}

void Shard::enqueueCompletedLocked(const PendingCompletion& c) {
  completions_.push_back(c);
  pending_.store(true, std::memory_order_release);
}

void Shard::wake() {
  bool notify_needed;
  {
    std::lock_guard lk(mu_);
    pending_.store(true, std::memory_order_release);
    notify_needed = sleeping_;
  }
  if (notify_needed) cv_.notify_one();
}

HandlerCounters& Shard::handlerCounters(uint16_t handler) {
  HandlerCounters* c = handler_counters_[handler].load(std::memory_order_acquire);
  if (c != nullptr) return *c;
  std::lock_guard lk(mu_);
  c = handler_counters_[handler].load(std::memory_order_relaxed);
  if (c == nullptr) {
    handler_storage_.push_back(std::make_unique<HandlerCounters>());
    c = handler_storage_.back().get();
    handler_counters_[handler].store(c, std::memory_order_release);
  }
  return *c;
}

bool Shard::complete(uint32_t slot, GroupId id, ResponseCode code, Origin origin, Delivery delivery,
                     uint16_t handler) {
  Group& g = at(slot);
  uint64_t expect = openTag(id);
  if (!g.tag.compare_exchange_strong(expect, completedTag(id), std::memory_order_acq_rel)) {
    router_.refused_completions.fetch_add(1, std::memory_order_relaxed);
    if (handler != kNoHandler) handlerCounters(handler).refused.fetch_add(1, std::memory_order_relaxed);
    Event e;
    e.type = EventType::kCompletionRefused;
    e.time_ns = router_.now();
    e.group = id;
    e.code = static_cast<uint8_t>(code);
    e.origin = static_cast<uint8_t>(origin);
    e.handler = handler;
    router_.bus.publish(e);
    return false;
  }
  if (handler != kNoHandler) {
    handlerCounters(handler).deferred_completed.fetch_add(1, std::memory_order_relaxed);
  }
  bool notify_needed;
  {
    std::lock_guard lk(mu_);
    completions_.push_back({slot, id, code, origin, delivery});
    pending_.store(true, std::memory_order_release);
    notify_needed = sleeping_;
  }
  if (notify_needed) cv_.notify_one();
  return true;
}

const Chain* Shard::activeChain(DomainState& domain) {
  const uint64_t version = domain.chain_version.load(std::memory_order_acquire);
  if (version != domain.active_version) {
    std::lock_guard lk(mu_);
    domain.active_chain = domain.chain;
    domain.active_version = domain.chain_version.load(std::memory_order_relaxed);
  }
  return domain.active_chain.get();
}

void Shard::emitResponse(uint32_t slot, GroupId id, ResponseCode code, Origin origin,
                         Delivery delivery, int64_t now, EventBatch& events) {
  Group& g = at(slot);
  const PageRequest& last = g.requests.back();
  DeviceState* dev = router_.device(g.device);
  Response r;
  r.group = id;
  r.device = g.device;
  r.backend_handle = dev->spec.backend_handle;
  r.grpid = last.grpid;
  r.pasid = last.pasid;
  r.cookie = last.cookie;
  r.code = code;
  r.origin = origin;
  r.delivery = delivery;
  r.needs_pasid = dev->spec.needs_pasid;
  r.request_count = static_cast<uint32_t>(g.requests.size());
  r.latency_ns = std::max<int64_t>(0, now - g.requests.front().arrival_ns);

  // Release bounds before the backend sees the response: a closed-loop device re-issues at once.
  if (g.counted) {
    // A device may have domains on several shards: these are shared between shards.
    dev->released_requests.fetch_add(g.requests.size(), std::memory_order_relaxed);
    if (last.grpid < kTrackedGrpids) {
      dev->closed_per_grpid[last.grpid].fetch_add(1, std::memory_order_relaxed);
    }
    if (DomainState* dom = router_.domain(g.domain)) {
      // Only the domain's own shard writes `closed`.
      dom->closed.store(dom->closed.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
  }
  const auto c = static_cast<size_t>(code);
  const auto o = static_cast<size_t>(origin);
  dev->responses_by_code[c].fetch_add(1, std::memory_order_relaxed);
  if (DomainState* dom = router_.domain(g.domain)) {
    auto bump = [](std::atomic<uint64_t>& a) {
      a.store(a.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    };
    bump(dom->responses_by_code[c]);
    bump(dom->responses_by_origin[o]);
    dom->latency.record(static_cast<uint64_t>(r.latency_ns));
  }
  latency.record(static_cast<uint64_t>(r.latency_ns));
  responses_by_origin[o].store(responses_by_origin[o].load(std::memory_order_relaxed) + 1,
                               std::memory_order_relaxed);
  responses_by_code[c].store(responses_by_code[c].load(std::memory_order_relaxed) + 1,
                             std::memory_order_relaxed);
  responses.store(responses.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);

  if (g.backend >= batches_.size()) batches_.resize(g.backend + 1);
  batches_[g.backend].push_back(r);
  wheel_.cancel(slot);
  to_free_.push_back(slot);

  Event& e = events.add();
  router_.fillEvent(e, g);
  e.type = EventType::kResponded;
  e.time_ns = now;
  e.code = static_cast<uint8_t>(code);
  e.origin = static_cast<uint8_t>(origin);
  e.value = r.latency_ns;
}

void Shard::completeLocal(uint32_t slot, GroupId id, ResponseCode code, Origin origin,
                          uint16_t handler, int64_t now, EventBatch& events) {
  Group& g = at(slot);
  uint64_t expect = openTag(id);
  if (g.tag.compare_exchange_strong(expect, completedTag(id), std::memory_order_acq_rel)) {
    emitResponse(slot, id, code, origin, Delivery::kSend, now, events);
    return;
  }
  // Someone else (a deferred completion from inside the handler, a detach) won.
  router_.refused_completions.fetch_add(1, std::memory_order_relaxed);
  if (handler != kNoHandler) handlerCounters(handler).refused.fetch_add(1, std::memory_order_relaxed);
  Event& e = events.add();
  router_.fillEvent(e, g);
  e.type = EventType::kCompletionRefused;
  e.time_ns = now;
  e.code = static_cast<uint8_t>(code);
  e.origin = static_cast<uint8_t>(origin);
  e.handler = handler;
}

void Shard::hold(const QueuedGroup& q) {
  const Group& g = at(q.slot);
  // The deadline runs while the group waits: a pause never stalls a device past its timeout.
  if (!wheel_.scheduled(q.slot)) wheel_.schedule(q.slot, g.deadline_ns);
  held_.push_back(q);
  if (held_.size() >= held_compact_at_) {
    std::erase_if(held_, [&](const QueuedGroup& h) {
      return at(h.slot).tag.load(std::memory_order_acquire) != openTag(h.id);
    });
    held_compact_at_ = std::max<size_t>(1024, held_.size() * 2);
  }
}

size_t Shard::releaseResumed(int64_t now, EventBatch& events) {
  const uint64_t requests = resume_requests_.load(std::memory_order_acquire);
  if (requests == resume_seen_) return 0;
  resume_seen_ = requests;
  std::vector<QueuedGroup> held;
  held.swap(held_);
  for (const QueuedGroup& q : held) {
    // Answered meanwhile (deadline, detach, operator): dropped. Otherwise dispatch() runs the chain
    // or, if the domain is (again) paused, holds the group once more.
    if (at(q.slot).tag.load(std::memory_order_acquire) != openTag(q.id)) continue;
    dispatch(q.slot, q.id, now, events);
  }
  return held.size() + 1;  // the resume itself is work (manual mode runs another pass)
}

void Shard::dispatch(uint32_t slot, GroupId id, int64_t now, EventBatch& events) {
  Group& g = at(slot);
  DomainState* dom = router_.domain(g.domain);
  if (dom != nullptr && dom->paused.load(std::memory_order_acquire)) {
    hold({slot, id});
    return;
  }
  if (!wheel_.scheduled(slot)) wheel_.schedule(slot, g.deadline_ns);
  g.state.store(static_cast<uint8_t>(GroupState::kDispatched), std::memory_order_relaxed);
  dispatched_.push_back({slot, id, now});
  {
    Event& e = events.add();
    router_.fillEvent(e, g);
    e.type = EventType::kDispatched;
    e.time_ns = now;
  }
  const Chain* chain = dom != nullptr ? activeChain(*dom) : nullptr;
  DeviceState* dev = router_.device(g.device);
  const PageRequest& last = g.requests.back();
  GroupView view;
  view.id = id;
  view.domain = g.domain;
  view.device = g.device;
  view.backend_handle = dev->spec.backend_handle;
  view.rid = dev->spec.rid;
  view.pci_segment = dev->spec.pci_segment;
  view.needs_pasid = dev->spec.needs_pasid;
  view.pasid = last.pasid;
  view.grpid = last.grpid;
  view.cookie = last.cookie;
  view.requests = g.requests;

  int64_t t0 = now;
  if (chain != nullptr) {
    for (const ChainEntry& entry : *chain) {
      HandlerCounters& hc = handlerCounters(entry.id);
      Verdict v;
      bool error = false;
      try {
        v = entry.handler->handle(view, CompletionHandle(this, slot, id, entry.id));
      } catch (...) {
        error = true;
      }
      if (!error && (!validKind(v.kind) ||
                     (v.kind == Verdict::Kind::kRespond &&
                      !isValidResponseCode(static_cast<uint32_t>(v.code))))) {
        error = true;
      }
      const int64_t t1 = router_.now();
      const int64_t spent = std::max<int64_t>(0, t1 - t0);
      t0 = t1;
      auto bump = [](std::atomic<uint64_t>& a) {
        a.store(a.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      };
      bump(hc.calls);
      hc.call_time.record(static_cast<uint64_t>(spent));
      RawTrace trace{entry.id, error ? Verdict::Kind::kRespond : v.kind,
                     error ? ResponseCode::kInvalid : v.code, error, spent};
      traces_.push_back({slot, id, trace});
      {
        Event& e = events.add();
        router_.fillEvent(e, g);
        e.type = EventType::kHandlerVerdict;
        e.time_ns = t1;
        e.handler = entry.id;
        e.verdict = static_cast<uint8_t>(trace.verdict);
        e.code = static_cast<uint8_t>(trace.code);
        e.origin = static_cast<uint8_t>(error ? Origin::kHandlerError : Origin::kHandler);
        e.value = spent;
      }
      if (error) {
        bump(hc.errors);
        completeLocal(slot, id, ResponseCode::kInvalid, Origin::kHandlerError, entry.id, t1, events);
        return;
      }
      switch (v.kind) {
        case Verdict::Kind::kContinue:
          bump(hc.continues);
          continue;
        case Verdict::Kind::kRespond:
          bump(hc.responds);
          completeLocal(slot, id, v.code, Origin::kHandler, entry.id, t1, events);
          return;
        case Verdict::Kind::kDefer:
          bump(hc.defers);
          g.state.store(static_cast<uint8_t>(GroupState::kDeferred), std::memory_order_relaxed);
          return;
      }
    }
  }
  const ResponseCode code = dom != nullptr ? dom->spec.default_code : ResponseCode::kInvalid;
  completeLocal(slot, id, code, Origin::kDefault, kNoHandler, t0, events);
}

void Shard::flushResponses() {
  for (size_t b = 0; b < batches_.size(); ++b) {
    if (batches_[b].empty()) continue;
    if (BackendSlot* slot = router_.backend(static_cast<BackendId>(b))) {
      slot->backend->respond(batches_[b]);
    }
    batches_[b].clear();
  }
}

size_t Shard::runPass() {
  const int64_t now = router_.now();
  EventBatch events(router_.bus);
  size_t work = 0;
  if (pending_.load(std::memory_order_acquire)) {
    lockBriefly(mu_);
    std::lock_guard lk(mu_, std::adopt_lock);
    if (local_pos_ >= local_inbox_.size()) {
      local_inbox_.clear();
      local_pos_ = 0;
      local_inbox_.swap(inbox_);
    }
    local_completions_.swap(completions_);
    // Still pending if queued groups wait behind the ones this shard has not dispatched yet.
    pending_.store(!inbox_.empty(), std::memory_order_relaxed);
  }
  // 1. Completions decided elsewhere (deferred handlers, operator, detach, shutdown, overload).
  for (const PendingCompletion& c : local_completions_) {
    emitResponse(c.slot, c.id, c.code, c.origin, c.delivery, now, events);
  }
  work += local_completions_.size();
  local_completions_.clear();

  // 2. Groups of resumed domains, then new groups (at most batch_cap per pass); a paused domain's
  //    groups are held.
  work += releaseResumed(now, events);
  const size_t end = std::min(local_inbox_.size(), local_pos_ + router_.options.batch_cap);
  for (; local_pos_ < end; ++local_pos_) {
    const QueuedGroup q = local_inbox_[local_pos_];
    ++work;
    // Completed (drained) before dispatch: its completion is handled in step 1.
    if (at(q.slot).tag.load(std::memory_order_acquire) != openTag(q.id)) continue;
    dispatch(q.slot, q.id, now, events);
  }

  // 3. Deadlines.
  const int64_t after = router_.now();
  wheel_.expire(after, [&](uint32_t slot) {
    Group& g = at(slot);
    const uint64_t tag = g.tag.load(std::memory_order_acquire);
    if (tag == 0 || (tag & 1) != 0) return;
    const GroupId id = tag >> 1;
    DomainState* dom = router_.domain(g.domain);
    const ResponseCode code = dom != nullptr ? dom->spec.timeout_code : ResponseCode::kInvalid;
    uint64_t expect = tag;
    if (!g.tag.compare_exchange_strong(expect, completedTag(id), std::memory_order_acq_rel)) return;
    Event& e = events.add();
    router_.fillEvent(e, g);
    e.type = EventType::kTimedOut;
    e.time_ns = after;
    e.value = after - g.queued_ns;
    emitResponse(slot, id, code, Origin::kTimeout, Delivery::kSend, after, events);
    ++work;
  });

  // 4. Publish the pass's events (a response's event precedes whatever the device does next), then
  //    hand the responses to the backends, one batch each.
  events.flush();
  flushResponses();

  // 5. Publish traces of groups still open and free the completed slots.
  if (!traces_.empty() || !to_free_.empty() || !dispatched_.empty()) {
    lockBriefly(mu_);
    std::lock_guard lk(mu_, std::adopt_lock);
    for (const Dispatched& d : dispatched_) {
      Group& g = at(d.slot);
      if (g.id == d.id) g.dispatched_ns = d.at;
    }
    for (const TraceRecord& t : traces_) {
      Group& g = at(t.slot);
      if (g.id == t.id && (g.tag.load(std::memory_order_relaxed) & 1) == 0) g.trace.push_back(t.entry);
    }
    for (uint32_t slot : to_free_) {
      Group& g = at(slot);
      g.requests.clear();
      g.trace.clear();
      g.tag.store(0, std::memory_order_release);
      free_.push_back(slot);
    }
  }
  traces_.clear();
  to_free_.clear();
  dispatched_.clear();
  events.flush();
  return work;
}

void Shard::startThread() {
  thread_ = std::thread([this] { threadMain(); });
}

void Shard::stopThread() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

void Shard::threadMain() {
  const int64_t spin_ns = router_.options.idle_spin_ns;
  for (;;) {
    if (runPass() > 0) continue;
    if (local_pos_ < local_inbox_.size()) continue;
    if (spin_ns > 0) {
      const int64_t until = SteadyClock::read() + spin_ns;
      while (!pending_.load(std::memory_order_acquire) && SteadyClock::read() < until) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
      }
      if (pending_.load(std::memory_order_acquire)) continue;
    }
    std::unique_lock lk(mu_);
    if (!inbox_.empty() || !completions_.empty() || pending_.load(std::memory_order_relaxed)) continue;
    if (stop_) break;
    // Sleep until new work or the next deadline check (bounded so a moved clock is noticed).
    const int64_t next = wheel_.nextCheck();
    int64_t wait_ns = 100'000'000;
    if (next != INT64_MAX) wait_ns = std::clamp<int64_t>(next - router_.now(), 0, wait_ns);
    if (wait_ns == 0) continue;
    sleeping_ = true;
    cv_.wait_for(lk, std::chrono::nanoseconds(wait_ns));
    sleeping_ = false;
  }
}

}  // namespace iopf::detail
