#include "iopf/router.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "router_impl.h"

namespace iopf {

using detail::BackendSlot;
using detail::DeviceState;
using detail::DomainState;
using detail::EventBatch;
using detail::Group;
using detail::Shard;

std::string_view toString(GroupState state) {
  switch (state) {
    case GroupState::kQueued: return "queued";
    case GroupState::kDispatched: return "dispatched";
    case GroupState::kDeferred: return "deferred";
    case GroupState::kCompleted: return "completed";
  }
  return "unknown";
}

std::string_view toString(EventType type) {
  switch (type) {
    case EventType::kGap: return "gap";
    case EventType::kRequest: return "request";
    case EventType::kGroupQueued: return "group_queued";
    case EventType::kDispatched: return "dispatched";
    case EventType::kHandlerVerdict: return "handler_verdict";
    case EventType::kResponded: return "responded";
    case EventType::kTimedOut: return "timed_out";
    case EventType::kCompletionRefused: return "completion_refused";
    case EventType::kAttach: return "attach";
    case EventType::kDetach: return "detach";
    case EventType::kDeviceAdded: return "device_added";
    case EventType::kDeviceRemoved: return "device_removed";
    case EventType::kDomainAdded: return "domain_added";
    case EventType::kStopMarkerDropped: return "stop_marker_dropped";
    case EventType::kPartialDiscarded: return "partial_discarded";
    case EventType::kProtocolError: return "protocol_error";
    case EventType::kRequestDropped: return "request_dropped";
    case EventType::kDomainRemoved: return "domain_removed";
    case EventType::kChainChanged: return "chain_changed";
    case EventType::kDomainPaused: return "domain_paused";
    case EventType::kDomainResumed: return "domain_resumed";
  }
  return "unknown";
}

bool CompletionHandle::complete(ResponseCode code) const {
  if (shard_ == nullptr) return false;
  if (!isValidResponseCode(static_cast<uint32_t>(code))) {
    shard_->handlerCounters(handler_).deferred_errors.fetch_add(1, std::memory_order_relaxed);
    return shard_->complete(slot_, group_, ResponseCode::kInvalid, Origin::kHandlerError,
                            Delivery::kSend, handler_);
  }
  return shard_->complete(slot_, group_, code, Origin::kHandler, Delivery::kSend, handler_);
}

namespace {

void fillRequestEvent(Event& e, const PageRequest& r) {
  e.device = r.device;
  e.grpid = r.grpid;
  e.addr = r.addr;
  e.perm = r.perm;
  if (r.pasid) {
    e.pasid = *r.pasid;
    e.flags |= event_flag::kPasidValid;
  }
  if (r.cookie) {
    e.cookie = *r.cookie;
    e.flags |= event_flag::kCookieValid;
  }
  if (r.last) e.flags |= event_flag::kLast;
}

void bump(std::atomic<uint64_t>& a, uint64_t by = 1) { a.fetch_add(by, std::memory_order_relaxed); }

// An attach or detach event of (device, pasid|RID) → domain at `epoch`.
void attachmentEvent(Event& e, EventType type, int64_t time_ns, DeviceId device, std::optional<uint32_t> pasid,
                     const detail::Attachment& a) {
  e.type = type;
  e.time_ns = time_ns;
  e.device = device;
  e.domain = a.domain;
  e.value = static_cast<int64_t>(a.epoch);
  if (pasid) {
    e.pasid = *pasid;
    e.flags |= event_flag::kPasidValid;
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Router::Impl

Router::Impl::Impl(RouterOptions opts)
    : options(opts),
      clock_(opts.clock != nullptr ? opts.clock : &steady_),
      bus(opts.event_capacity) {
  unsigned n = options.shards != 0 ? options.shards : std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; ++i) shards.push_back(std::make_unique<Shard>(*this, i));
  // Id 0 means "none" for backends, devices and domains.
  backend_storage.emplace_back();
  device_storage.emplace_back();
  domain_storage.emplace_back();
  if (options.threaded) {
    for (auto& s : shards) s->startThread();
  }
}

Router::Impl::~Impl() {
  for (auto& s : shards) s->stopThread();
}

uint16_t Router::Impl::registerHandler(std::string_view name) {
  std::lock_guard lk(admin_mu);
  auto it = handler_ids.find(std::string(name));
  if (it != handler_ids.end()) return it->second;
  const auto id = static_cast<uint16_t>(handler_names.size());
  handler_names.emplace_back(name);
  handler_ids.emplace(std::string(name), id);
  return id;
}

void Router::Impl::fillEvent(Event& e, const Group& g) const {
  fillRequestEvent(e, g.requests.back());
  e.group = g.id;
  e.domain = g.domain;
  e.device = g.device;
}

Router::Impl::Route Router::Impl::route(const DeviceState& d, const PageRequest& last) const {
  if (last.pasid) {
    if (auto it = d.pasid_attach.find(*last.pasid); it != d.pasid_attach.end()) {
      return {it->second.domain, it->second.epoch, last.pasid};
    }
    // R6: PASID faults of a device whose RID is attached to a guest-owned (nested) domain go to it.
    if (d.rid_attach) {
      const DomainState* dom = domain(d.rid_attach->domain);
      if (dom != nullptr && dom->spec.kind == DomainKind::kNested) {
        return {d.rid_attach->domain, d.rid_attach->epoch, std::nullopt};
      }
    }
    return {};
  }
  if (d.rid_attach) return {d.rid_attach->domain, d.rid_attach->epoch, std::nullopt};
  return {};
}

// Holds at most one shard mutex at a time, switching only when consecutive groups go to different
// shards: one lock per delivered batch in the common case.
//
// Events of the batch are published before a shard lock is released: once the shard can see a
// group, its group_queued event already has its sequence number, so every event of a group is
// ordered after it (watchers and the history rely on it).
class Router::Impl::ShardLocker {
 public:
  ShardLocker(Impl& router, EventBatch& events) : router_(router), events_(events) {}
  ~ShardLocker() { release(); }
  Shard& lock(uint32_t index) {
    if (current_ != index) {
      release();
      detail::lockBriefly(router_.shards[index]->mutex());
      current_ = index;
    }
    return *router_.shards[index];
  }
  void release() {
    if (current_ == kNone) return;
    events_.flush();
    Shard& s = *router_.shards[current_];
    const bool notify = s.sleepingLocked();
    s.mutex().unlock();
    if (notify) s.notify();
    current_ = kNone;
  }

 private:
  static constexpr uint32_t kNone = UINT32_MAX;
  Impl& router_;
  EventBatch& events_;
  uint32_t current_ = kNone;
};

void Router::Impl::deliver(BackendSlot& backend, std::span<const PageRequest> batch) {
  if (batch.empty()) return;
  const int64_t now = clock_->now();
  EventBatch events(bus);
  std::shared_lock lk(attach_mu);
  ShardLocker locker(*this, events);
  bump(requests, batch.size());
  for (const PageRequest& in : batch) {
    DeviceState* d = device(in.device);
    if (d == nullptr || d->backend != backend.id || d->removed.load(std::memory_order_relaxed)) {
      bump(dropped_requests);
      Event& e = events.add();
      fillRequestEvent(e, in);
      e.type = EventType::kRequestDropped;
      e.time_ns = now;
      continue;
    }
    PageRequest r = in;
    r.arrival_ns = now;
    d->requests.store(d->requests.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    {
      Event& e = events.add();
      fillRequestEvent(e, r);
      e.type = EventType::kRequest;
      e.time_ns = now;
    }
    if (!backend.caps.whole_groups && isStopMarker(r)) {
      bump(d->stop_markers);
      Event& e = events.add();
      fillRequestEvent(e, r);
      e.type = EventType::kStopMarkerDropped;
      e.time_ns = now;
      continue;
    }
    if (!r.last) {
      const uint32_t limit = options.max_partial_requests != 0 ? options.max_partial_requests
                             : d->spec.pri_allocation != 0    ? d->spec.pri_allocation
                                                              : 4096;
      if (!d->assembler.addPartial(r, limit)) {
        bump(d->protocol_errors);
        Event& e = events.add();
        fillRequestEvent(e, r);
        e.type = EventType::kProtocolError;
        e.time_ns = now;
        e.value = 1;  // partial buffer over the device's allocation: request dropped
      }
      continue;
    }
    d->assembler.complete(r, [&](std::span<const PageRequest> group) {
      completeGroup(*d, group, now, events, locker);
    });
  }
}

void Router::Impl::completeGroup(DeviceState& d, std::span<const PageRequest> reqs, int64_t now,
                                 EventBatch& events, ShardLocker& locker) {
  const PageRequest& last = reqs.back();
  const auto n = static_cast<uint64_t>(reqs.size());
  d.groups.store(d.groups.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  if (last.grpid < detail::kTrackedGrpids && d.grpidOpen(last.grpid)) {
    // A PRGI reused while its previous group is still open: the device broke the protocol. The new
    // group is still routed and answered; the error is counted and traced.
    bump(d.protocol_errors);
    Event& e = events.add();
    fillRequestEvent(e, last);
    e.type = EventType::kProtocolError;
    e.time_ns = now;
    e.value = 2;
  }

  Route rt;
  DomainState* dom = nullptr;
  std::optional<Origin> immediate;
  if (shutting_down) {
    immediate = Origin::kShutdown;
  } else {
    rt = route(d, last);
    dom = domain(rt.domain);
    if (dom == nullptr || dom->removed.load(std::memory_order_relaxed)) {
      dom = nullptr;
      immediate = Origin::kNoDomain;
    } else if (d.spec.pri_allocation != 0 &&
               d.outstandingRequests() + n > d.spec.pri_allocation) {
      bump(d.overload);
      immediate = Origin::kOverload;
    } else if (dom->spec.max_open_groups != 0 &&
               dom->openGroups() >= dom->spec.max_open_groups) {
      bump(d.overload);
      immediate = Origin::kOverload;
    }
  }

  const uint32_t shard_index =
      dom != nullptr ? dom->shard : static_cast<uint32_t>(d.id % shards.size());
  Shard& s = locker.lock(shard_index);
  const uint32_t slot = s.allocSlotLocked();
  Group& g = s.at(slot);
  const GroupId id = next_group.fetch_add(1, std::memory_order_relaxed);
  g.id = id;
  g.device = d.id;
  g.backend = d.backend;
  g.domain = dom != nullptr ? dom->id : kNoDomain;
  g.epoch = rt.epoch;
  g.attach_pasid = rt.key;
  g.queued_ns = now;
  g.deadline_ns = now + (dom != nullptr ? dom->spec.deadline_ns : 0);
  g.requests.assign(reqs.begin(), reqs.end());
  g.dispatched_ns = 0;
  g.trace.clear();
  g.state.store(static_cast<uint8_t>(GroupState::kQueued), std::memory_order_relaxed);
  g.counted = !immediate.has_value();
  if (!immediate) {
    // Single writer (the device's feeding thread): load + store, no locked instruction.
    d.issued_requests.store(d.issued_requests.load(std::memory_order_relaxed) + n,
                            std::memory_order_relaxed);
    if (last.grpid < detail::kTrackedGrpids) {
      auto& opened = d.opened_per_grpid[last.grpid];
      opened.store(opened.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    }
    dom->opened.fetch_add(1, std::memory_order_relaxed);
    g.tag.store(detail::openTag(id), std::memory_order_release);
    s.enqueueLocked(slot, id);
  } else {
    g.tag.store(detail::completedTag(id), std::memory_order_release);
    s.enqueueCompletedLocked({slot, id, ResponseCode::kInvalid, *immediate, Delivery::kSend});
  }
  Event& e = events.add();
  fillEvent(e, g);
  e.type = EventType::kGroupQueued;
  e.time_ns = now;
  e.value = static_cast<int64_t>(n);
  e.origin = static_cast<uint8_t>(immediate.value_or(Origin::kHandler));
}

void Router::Impl::discardPartial(BackendSlot& backend) {
  const int64_t now = clock_->now();
  EventBatch events(bus);
  const uint32_t count = [&] {
    std::lock_guard lk(admin_mu);
    return static_cast<uint32_t>(device_storage.size());
  }();
  for (uint32_t id = 1; id < count; ++id) {
    DeviceState* d = device(id);
    if (d == nullptr || d->backend != backend.id) continue;
    const size_t dropped = d->assembler.discardAll();
    if (dropped == 0) continue;
    bump(d->partial_discarded, dropped);
    Event& e = events.add();
    e.type = EventType::kPartialDiscarded;
    e.time_ns = now;
    e.device = id;
    e.value = static_cast<int64_t>(dropped);
  }
}

absl::StatusOr<DeviceId> Router::Impl::addDevice(BackendSlot& backend, const DeviceSpec& spec) {
  if (spec.pasid_bits > 20) {
    return absl::InvalidArgumentError(
        absl::StrCat("device '", spec.name, "': pasid_bits ", int{spec.pasid_bits}, " > 20"));
  }
  DeviceId id;
  {
    std::lock_guard lk(admin_mu);
    if (shut_down.load()) return absl::FailedPreconditionError("router is shutting down");
    for (size_t i = 1; i < device_storage.size(); ++i) {
      const DeviceState& other = *device_storage[i];
      if (other.backend == backend.id && other.spec.backend_handle == spec.backend_handle &&
          !other.removed.load()) {
        return absl::AlreadyExistsError(absl::StrCat("backend '", backend.name, "' already has device ",
                                                     spec.backend_handle, " ('", other.spec.name, "')"));
      }
    }
    if (device_storage.size() >= detail::kMaxDevices) {
      return absl::ResourceExhaustedError("too many devices");
    }
    id = static_cast<DeviceId>(device_storage.size());
    auto d = std::make_unique<DeviceState>();
    d->id = id;
    d->backend = backend.id;
    d->spec = spec;
    devices_[id].store(d.get(), std::memory_order_release);
    device_storage.push_back(std::move(d));
  }
  Event e;
  e.type = EventType::kDeviceAdded;
  e.time_ns = now();
  e.device = id;
  e.value = spec.backend_handle;
  bus.publish(e);
  return id;
}

absl::Status Router::Impl::removeDevice(BackendSlot& backend, DeviceId id) {
  DeviceState* d = device(id);
  if (d == nullptr || d->backend != backend.id) {
    return absl::NotFoundError(absl::StrCat("backend '", backend.name, "' has no device ", id));
  }
  EventBatch events(bus);
  const int64_t t = now();
  {
    std::unique_lock lk(attach_mu);
    if (d->removed.exchange(true)) {
      return absl::NotFoundError(absl::StrCat("device ", id, " was already removed"));
    }
    auto detached = [&](std::optional<uint32_t> pasid, const detail::Attachment& a) {
      attachmentEvent(events.add(), EventType::kDetach, t, id, pasid, a);
    };
    if (d->rid_attach) detached(std::nullopt, *d->rid_attach);
    for (const auto& [pasid, a] : d->pasid_attach) detached(pasid, a);
    d->rid_attach.reset();
    d->pasid_attach.clear();
  }
  const size_t dropped = d->assembler.discardAll();
  if (dropped > 0) {
    bump(d->partial_discarded, dropped);
    Event& e = events.add();
    e.type = EventType::kPartialDiscarded;
    e.time_ns = t;
    e.device = id;
    e.value = static_cast<int64_t>(dropped);
  }
  for (auto& s : shards) {
    s->drain([id](const Group& g) { return g.device == id; }, Origin::kDetach);
  }
  Event& e = events.add();
  e.type = EventType::kDeviceRemoved;
  e.time_ns = t;
  e.device = id;
  return absl::OkStatus();
}

// ------------------------------------------------------------------------------------------------
// Router

Router::Router(RouterOptions options) : impl_(std::make_unique<Impl>(options)) {}

Router::~Router() { shutdown(); }

absl::StatusOr<BackendId> Router::addBackend(Backend& backend) {
  BackendSlot* slot;
  {
    std::lock_guard lk(impl_->admin_mu);
    if (impl_->shut_down.load()) return absl::FailedPreconditionError("router is shutting down");
    if (impl_->backend_storage.size() >= detail::kMaxBackends) {
      return absl::ResourceExhaustedError("too many backends");
    }
    auto b = std::make_unique<BackendSlot>();
    b->id = static_cast<BackendId>(impl_->backend_storage.size());
    b->backend = &backend;
    b->caps = backend.capabilities();
    b->name = std::string(backend.name());
    b->sink = std::make_unique<detail::SinkImpl>(*impl_, *b);
    slot = b.get();
    impl_->backends_[b->id].store(slot, std::memory_order_release);
    impl_->backend_storage.push_back(std::move(b));
  }
  if (absl::Status st = backend.start(*slot->sink); !st.ok()) {
    std::lock_guard lk(impl_->admin_mu);
    slot->stopped = true;
    return absl::Status(st.code(), absl::StrCat("backend '", slot->name, "' failed to start: ", st.message()));
  }
  return slot->id;
}

absl::StatusOr<DomainId> Router::addDomain(DomainSpec spec) {
  if (spec.deadline_ns <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("domain '", spec.name, "': deadline must be > 0"));
  }
  if (spec.shard >= 0 && static_cast<unsigned>(spec.shard) >= impl_->shards.size()) {
    return absl::InvalidArgumentError(absl::StrCat("domain '", spec.name, "': shard ", spec.shard,
                                                   " but the router has ", impl_->shards.size()));
  }
  DomainId id;
  {
    std::lock_guard lk(impl_->admin_mu);
    if (impl_->domain_storage.size() >= detail::kMaxDomains) {
      return absl::ResourceExhaustedError("too many domains");
    }
    id = static_cast<DomainId>(impl_->domain_storage.size());
    auto d = std::make_unique<DomainState>();
    d->id = id;
    d->shard = spec.shard >= 0 ? static_cast<uint32_t>(spec.shard)
                               : static_cast<uint32_t>((id - 1) % impl_->shards.size());
    d->spec = std::move(spec);
    impl_->domains_[id].store(d.get(), std::memory_order_release);
    impl_->domain_storage.push_back(std::move(d));
  }
  Event e;
  e.type = EventType::kDomainAdded;
  e.time_ns = impl_->now();
  e.domain = id;
  impl_->bus.publish(e);
  return id;
}

absl::Status Router::setChain(DomainId domain, std::vector<std::shared_ptr<Handler>> handlers) {
  DomainState* dom = impl_->domain(domain);
  if (dom == nullptr) return absl::NotFoundError(absl::StrCat("no domain ", domain));
  auto chain = std::make_shared<detail::Chain>();
  for (size_t i = 0; i < handlers.size(); ++i) {
    if (!handlers[i]) {
      return absl::InvalidArgumentError(absl::StrCat("domain ", domain, ": chain entry ", i, " is null"));
    }
    const uint16_t hid = impl_->registerHandler(handlers[i]->name());
    if (hid >= detail::kMaxHandlers) return absl::ResourceExhaustedError("too many handler names");
    chain->push_back({std::move(handlers[i]), hid});
  }
  {
    std::lock_guard lk(impl_->shards[dom->shard]->mutex());
    dom->chain = std::move(chain);
    dom->chain_version.fetch_add(1, std::memory_order_release);
  }
  Event e;
  e.type = EventType::kChainChanged;
  e.time_ns = impl_->now();
  e.domain = domain;
  impl_->bus.publish(e);
  return absl::OkStatus();
}

absl::StatusOr<Router::PauseResult> Router::setDomainPaused(DomainId domain, bool paused) {
  DomainState* dom = impl_->domain(domain);
  if (dom == nullptr || dom->removed.load()) return absl::NotFoundError(absl::StrCat("no domain ", domain));
  detail::Shard& shard = *impl_->shards[dom->shard];
  PauseResult result;
  result.was_paused = dom->paused.exchange(paused, std::memory_order_acq_rel);
  shard.forEachOpen([&](const detail::Group& g) {
    if (g.domain == domain &&
        g.state.load(std::memory_order_relaxed) == static_cast<uint8_t>(GroupState::kQueued)) {
      ++result.waiting_groups;
    }
  });
  if (result.was_paused == paused) return result;
  Event e;
  e.type = paused ? EventType::kDomainPaused : EventType::kDomainResumed;
  e.time_ns = impl_->now();
  e.domain = domain;
  e.value = result.waiting_groups;
  impl_->bus.publish(e);
  if (!paused) shard.requestResume();
  return result;
}

absl::StatusOr<uint64_t> Router::attach(DeviceId device, std::optional<uint32_t> pasid,
                                        DomainId domain) {
  DeviceState* d = impl_->device(device);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device ", device));
  DomainState* dom = impl_->domain(domain);
  if (dom == nullptr || dom->removed.load()) return absl::NotFoundError(absl::StrCat("no domain ", domain));
  if (pasid) {
    if (d->spec.pasid_bits == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("device ", device, " ('", d->spec.name, "') has no PASID support"));
    }
    if (d->spec.pasid_bits < 32 && *pasid >= (uint64_t{1} << d->spec.pasid_bits)) {
      return absl::InvalidArgumentError(absl::StrCat("pasid ", *pasid, " exceeds the device's ",
                                                     int{d->spec.pasid_bits}, " PASID bits"));
    }
  }
  std::optional<detail::Attachment> old;
  uint64_t epoch;
  const int64_t t = impl_->now();
  EventBatch events(impl_->bus);
  {
    std::unique_lock lk(impl_->attach_mu);
    if (impl_->shutting_down) return absl::FailedPreconditionError("router is shutting down");
    if (d->removed.load()) return absl::NotFoundError(absl::StrCat("device ", device, " was removed"));
    std::optional<detail::Attachment>* rid_slot = pasid ? nullptr : &d->rid_attach;
    detail::Attachment* current = nullptr;
    if (rid_slot != nullptr) {
      if (*rid_slot) current = &**rid_slot;
    } else if (auto it = d->pasid_attach.find(*pasid); it != d->pasid_attach.end()) {
      current = &it->second;
    }
    if (current != nullptr && current->domain == domain) return current->epoch;
    if (current != nullptr) old = *current;
    epoch = impl_->next_epoch.fetch_add(1, std::memory_order_relaxed);
    const detail::Attachment fresh{domain, epoch};
    if (rid_slot != nullptr) {
      *rid_slot = fresh;
    } else {
      d->pasid_attach[*pasid] = fresh;
    }
    if (old) attachmentEvent(events.add(), EventType::kDetach, t, device, pasid, *old);
    attachmentEvent(events.add(), EventType::kAttach, t, device, pasid, fresh);
  }
  if (old) {
    if (DomainState* old_dom = impl_->domain(old->domain)) {
      const uint64_t old_epoch = old->epoch;
      impl_->shards[old_dom->shard]->drain(
          [device, old_epoch](const Group& g) { return g.device == device && g.epoch == old_epoch; },
          Origin::kDetach);
    }
  }
  return epoch;
}

absl::Status Router::detach(DeviceId device, std::optional<uint32_t> pasid) {
  DeviceState* d = impl_->device(device);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("no device ", device));
  detail::Attachment old;
  {
    std::unique_lock lk(impl_->attach_mu);
    if (pasid) {
      auto it = d->pasid_attach.find(*pasid);
      if (it == d->pasid_attach.end()) {
        return absl::NotFoundError(absl::StrCat("device ", device, " pasid ", *pasid, " is not attached"));
      }
      old = it->second;
      d->pasid_attach.erase(it);
    } else {
      if (!d->rid_attach) return absl::NotFoundError(absl::StrCat("device ", device, " RID is not attached"));
      old = *d->rid_attach;
      d->rid_attach.reset();
    }
  }
  Event e;
  attachmentEvent(e, EventType::kDetach, impl_->now(), device, pasid, old);
  impl_->bus.publish(e);
  if (DomainState* dom = impl_->domain(old.domain)) {
    const uint64_t epoch = old.epoch;
    impl_->shards[dom->shard]->drain(
        [device, epoch](const Group& g) { return g.device == device && g.epoch == epoch; },
        Origin::kDetach);
  }
  return absl::OkStatus();
}

absl::Status Router::removeDomain(DomainId domain) {
  DomainState* dom = impl_->domain(domain);
  if (dom == nullptr) return absl::NotFoundError(absl::StrCat("no domain ", domain));
  EventBatch events(impl_->bus);
  const int64_t t = impl_->now();
  {
    std::unique_lock lk(impl_->attach_mu);
    if (dom->removed.exchange(true)) return absl::NotFoundError(absl::StrCat("domain ", domain, " was removed"));
    std::lock_guard admin(impl_->admin_mu);
    for (size_t i = 1; i < impl_->device_storage.size(); ++i) {
      DeviceState& d = *impl_->device_storage[i];
      auto ev = [&](std::optional<uint32_t> pasid, const detail::Attachment& a) {
        attachmentEvent(events.add(), EventType::kDetach, t, d.id, pasid, a);
      };
      if (d.rid_attach && d.rid_attach->domain == domain) {
        ev(std::nullopt, *d.rid_attach);
        d.rid_attach.reset();
      }
      for (auto it = d.pasid_attach.begin(); it != d.pasid_attach.end();) {
        if (it->second.domain == domain) {
          ev(it->first, it->second);
          d.pasid_attach.erase(it++);
        } else {
          ++it;
        }
      }
    }
    Event& e = events.add();
    e.type = EventType::kDomainRemoved;
    e.time_ns = t;
    e.domain = domain;
  }
  impl_->shards[dom->shard]->drain([domain](const Group& g) { return g.domain == domain; },
                                   Origin::kDetach);
  return absl::OkStatus();
}

absl::Status Router::respond(GroupId group, ResponseCode code, std::string_view reason) {
  (void)reason;  // recorded by the API layer's audit log; the core keeps no strings per group
  if (!isValidResponseCode(static_cast<uint32_t>(code))) {
    return absl::InvalidArgumentError(absl::StrCat("response code ", static_cast<int>(code), " is not valid"));
  }
  if (group == 0 || group >= impl_->next_group.load()) {
    return absl::NotFoundError(absl::StrCat("no group ", group));
  }
  for (auto& s : impl_->shards) {
    const uint32_t count = s->allocatedSlots();
    for (uint32_t slot = 0; slot < count; ++slot) {
      const uint64_t tag = s->at(slot).tag.load(std::memory_order_acquire);
      if ((tag >> 1) != group) continue;
      if (s->complete(slot, group, code, Origin::kOperator, Delivery::kSend, detail::kNoHandler)) {
        return absl::OkStatus();
      }
      return absl::FailedPreconditionError(absl::StrCat("group ", group, " is already complete"));
    }
  }
  // Issued, completed and retired: the attempt is refused like any late completion.
  impl_->refused_completions.fetch_add(1, std::memory_order_relaxed);
  Event e;
  e.type = EventType::kCompletionRefused;
  e.time_ns = impl_->now();
  e.group = group;
  e.code = static_cast<uint8_t>(code);
  e.origin = static_cast<uint8_t>(Origin::kOperator);
  e.handler = detail::kNoHandler;
  impl_->bus.publish(e);
  return absl::FailedPreconditionError(absl::StrCat("group ", group, " is already complete"));
}

void Router::shutdown() {
  if (impl_->shut_down.exchange(true)) return;
  {
    std::unique_lock lk(impl_->attach_mu);
    impl_->shutting_down = true;
  }
  // Backends stop delivering first; anything they delivered meanwhile is answered below.
  std::vector<BackendSlot*> to_stop;
  {
    std::lock_guard lk(impl_->admin_mu);
    for (auto& b : impl_->backend_storage) {
      if (b && !b->stopped) {
        b->stopped = true;
        to_stop.push_back(b.get());
      }
    }
  }
  for (BackendSlot* b : to_stop) b->backend->stop();
  for (auto& s : impl_->shards) s->drain([](const Group&) { return true; }, Origin::kShutdown);
  if (impl_->options.threaded) {
    for (auto& s : impl_->shards) s->stopThread();
  } else {
    runUntilIdle();
  }
}

EventBus& Router::events() { return impl_->bus; }
const Clock& Router::clock() const { return *impl_->clock_; }
unsigned Router::shardCount() const { return static_cast<unsigned>(impl_->shards.size()); }

std::string Router::handlerName(uint16_t handler) const {
  std::lock_guard lk(impl_->admin_mu);
  return handler < impl_->handler_names.size() ? impl_->handler_names[handler] : std::string();
}

size_t Router::runOnce() {
  if (impl_->options.threaded) {
    for (auto& s : impl_->shards) s->wake();
    return 0;
  }
  size_t work = 0;
  for (auto& s : impl_->shards) work += s->runPass();
  return work;
}

void Router::runUntilIdle() {
  if (impl_->options.threaded) {
    runOnce();
    return;
  }
  while (runOnce() > 0) {
  }
}

uint64_t Router::openGroups() const {
  uint64_t n = 0;
  for (auto& s : impl_->shards) s->forEachOpen([&](const Group&) { ++n; });
  return n;
}

StatsSnapshot Router::stats() const {
  StatsSnapshot out;
  out.requests = impl_->requests.load();
  out.refused_completions = impl_->refused_completions.load();
  out.dropped_requests = impl_->dropped_requests.load();
  for (auto& s : impl_->shards) {
    out.responses += s->responses.load();
    for (size_t i = 0; i < 3; ++i) out.responses_by_code[i] += s->responses_by_code[i].load();
    for (int i = 0; i < kOriginCount; ++i) out.responses_by_origin[i] += s->responses_by_origin[i].load();
    out.latency.merge(s->latency.snapshot());
  }
  out.open_groups = openGroups();
  std::lock_guard lk(impl_->admin_mu);
  for (size_t i = 1; i < impl_->device_storage.size(); ++i) {
    const DeviceState& d = *impl_->device_storage[i];
    DeviceStats ds;
    ds.device = d.id;
    ds.name = d.spec.name;
    ds.requests = d.requests.load();
    ds.groups = d.groups.load();
    ds.stop_markers = d.stop_markers.load();
    ds.partial_discarded = d.partial_discarded.load();
    ds.protocol_errors = d.protocol_errors.load();
    ds.overload = d.overload.load();
    ds.outstanding_requests = d.outstandingRequests();
    for (size_t c = 0; c < 3; ++c) ds.responses_by_code[c] = d.responses_by_code[c].load();
    out.stop_markers += ds.stop_markers;
    out.partial_discarded += ds.partial_discarded;
    out.protocol_errors += ds.protocol_errors;
    out.groups += ds.groups;
    out.devices.push_back(std::move(ds));
  }
  for (size_t i = 1; i < impl_->domain_storage.size(); ++i) {
    const DomainState& d = *impl_->domain_storage[i];
    DomainStats ds;
    ds.domain = d.id;
    ds.name = d.spec.name;
    ds.open_groups = d.openGroups();
    ds.groups = ds.open_groups;
    for (size_t c = 0; c < 3; ++c) {
      ds.responses_by_code[c] = d.responses_by_code[c].load();
      ds.groups += ds.responses_by_code[c];
    }
    for (int o = 0; o < kOriginCount; ++o) ds.responses_by_origin[o] = d.responses_by_origin[o].load();
    ds.latency = d.latency.snapshot();
    out.domains.push_back(std::move(ds));
  }
  for (size_t h = 0; h < impl_->handler_names.size(); ++h) {
    HandlerStats hs;
    hs.handler = static_cast<uint16_t>(h);
    hs.name = impl_->handler_names[h];
    for (auto& s : impl_->shards) {
      const detail::HandlerCounters* c = s->handlerCountersIfAny(static_cast<uint16_t>(h));
      if (c == nullptr) continue;
      hs.calls += c->calls.load();
      hs.continues += c->continues.load();
      hs.responds += c->responds.load();
      hs.defers += c->defers.load();
      hs.errors += c->errors.load() + c->deferred_errors.load();
      hs.deferred_completed += c->deferred_completed.load();
      hs.refused += c->refused.load();
      hs.call_time.merge(c->call_time.snapshot());
    }
    out.handlers.push_back(std::move(hs));
  }
  return out;
}

absl::Status Router::map(const MapRequest& request) {
  const DeviceState* d = impl_->device(request.device);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("map: unknown device ", request.device));
  if (d->removed.load(std::memory_order_acquire)) {
    return absl::FailedPreconditionError(absl::StrCat("map: device ", request.device, " was removed"));
  }
  BackendSlot* b = impl_->backend(d->backend);
  if (b == nullptr) {
    return absl::NotFoundError(absl::StrCat("map: device ", request.device, " has no backend"));
  }
  if (!b->caps.can_map) {
    return absl::UnimplementedError(absl::StrCat("backend '", b->name, "' of device ", request.device,
                                                 " has no map()"));
  }
  return b->backend->map(request);
}

std::vector<BackendInfo> Router::backends() const {
  std::vector<BackendInfo> out;
  std::lock_guard lk(impl_->admin_mu);
  for (const auto& b : impl_->backend_storage) {
    if (b == nullptr) continue;
    out.push_back(BackendInfo{b->id, b->name, b->caps});
  }
  return out;
}

std::vector<DeviceInfo> Router::devices() const {
  std::vector<DeviceInfo> out;
  std::lock_guard lk(impl_->admin_mu);
  for (size_t i = 1; i < impl_->device_storage.size(); ++i) {
    const DeviceState& d = *impl_->device_storage[i];
    DeviceInfo info;
    info.id = d.id;
    info.backend = d.backend;
    if (const BackendSlot* b = impl_->backend(d.backend)) info.backend_name = b->name;
    info.spec = d.spec;
    info.removed = d.removed.load();
    info.outstanding_requests = d.outstandingRequests();
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<DomainInfo> Router::domains() const {
  std::vector<DomainInfo> out;
  std::lock_guard lk(impl_->admin_mu);
  for (size_t i = 1; i < impl_->domain_storage.size(); ++i) {
    const DomainState& d = *impl_->domain_storage[i];
    DomainInfo info;
    info.id = d.id;
    info.spec = d.spec;
    info.shard = d.shard;
    info.open_groups = d.openGroups();
    info.removed = d.removed.load();
    info.paused = d.paused.load();
    {
      std::lock_guard slk(impl_->shards[d.shard]->mutex());
      if (d.chain) {
        for (const auto& entry : *d.chain) info.chain.emplace_back(entry.handler->name());
      }
    }
    out.push_back(std::move(info));
  }
  return out;
}

std::vector<AttachmentInfo> Router::attachments() const {
  std::vector<AttachmentInfo> out;
  std::shared_lock lk(impl_->attach_mu);
  std::lock_guard admin(impl_->admin_mu);
  for (size_t i = 1; i < impl_->device_storage.size(); ++i) {
    const DeviceState& d = *impl_->device_storage[i];
    if (d.rid_attach) out.push_back({d.id, std::nullopt, d.rid_attach->domain, d.rid_attach->epoch});
    std::vector<AttachmentInfo> pasids;
    for (const auto& [pasid, a] : d.pasid_attach) pasids.push_back({d.id, pasid, a.domain, a.epoch});
    std::sort(pasids.begin(), pasids.end(),
              [](const AttachmentInfo& a, const AttachmentInfo& b) { return *a.pasid < *b.pasid; });
    out.insert(out.end(), pasids.begin(), pasids.end());
  }
  return out;
}

namespace {

GroupInfo toInfo(const Router::Impl& impl, const Group& g) {
  GroupInfo info;
  info.id = g.id;
  info.device = g.device;
  if (const DeviceState* d = impl.device(g.device)) {
    info.backend_handle = d->spec.backend_handle;
    info.rid = d->spec.rid;
  }
  info.domain = g.domain;
  info.epoch = g.epoch;
  const PageRequest& last = g.requests.back();
  info.pasid = last.pasid;
  info.grpid = last.grpid;
  info.cookie = last.cookie;
  info.state = static_cast<GroupState>(g.state.load(std::memory_order_relaxed));
  info.first_arrival_ns = g.requests.front().arrival_ns;
  info.queued_ns = g.queued_ns;
  info.dispatched_ns = g.dispatched_ns;
  info.deadline_ns = g.deadline_ns;
  info.requests = g.requests;
  for (const detail::RawTrace& t : g.trace) {
    TraceEntry e;
    e.handler = t.handler;
    e.verdict = t.verdict;
    e.code = t.code;
    e.error = t.error;
    e.duration_ns = t.duration_ns;
    info.trace.push_back(e);
  }
  return info;
}

}  // namespace

std::vector<GroupInfo> Router::outstanding(const OutstandingFilter& filter) const {
  // First the ids that match (cheap), then the full copies of the page only: a page of 1,000 out of
  // a million open groups copies 1,000 groups.
  const int64_t now = impl_->now();
  std::vector<std::pair<GroupId, uint32_t>> matches;  // (id, shard)
  for (auto& s : impl_->shards) {
    s->forEachOpen([&](const Group& g) {
      if (g.id <= filter.after) return;
      if (filter.domain && g.domain != *filter.domain) return;
      if (filter.device && g.device != *filter.device) return;
      if (filter.pasid && g.requests.back().pasid != filter.pasid) return;
      if (filter.min_age_ns > 0 && now - g.requests.front().arrival_ns < filter.min_age_ns) return;
      matches.emplace_back(g.id, s->index());
    });
  }
  const size_t n = std::min(filter.limit, matches.size());
  std::partial_sort(matches.begin(), matches.begin() + static_cast<std::ptrdiff_t>(n), matches.end());
  matches.resize(n);
  std::vector<GroupInfo> out;
  out.reserve(n);
  std::vector<GroupId> wanted;
  for (uint32_t si = 0; si < impl_->shards.size(); ++si) {
    wanted.clear();
    for (const auto& [id, shard] : matches) {
      if (shard == si) wanted.push_back(id);
    }
    if (wanted.empty()) continue;
    std::sort(wanted.begin(), wanted.end());
    impl_->shards[si]->forEachOpen([&](const Group& g) {
      if (std::binary_search(wanted.begin(), wanted.end(), g.id)) out.push_back(toInfo(*impl_, g));
    });
  }
  // A group may have completed between the two passes: it is simply not listed.
  std::sort(out.begin(), out.end(), [](const GroupInfo& a, const GroupInfo& b) { return a.id < b.id; });
  for (GroupInfo& info : out) {
    for (TraceEntry& t : info.trace) t.handler_name = handlerName(t.handler);
  }
  return out;
}

std::optional<GroupInfo> Router::group(GroupId id) const {
  std::optional<GroupInfo> out;
  for (auto& s : impl_->shards) {
    s->forEachOpen([&](const Group& g) {
      if (g.id == id) out = toInfo(*impl_, g);
    });
    if (out) break;
  }
  if (out) {
    for (TraceEntry& t : out->trace) t.handler_name = handlerName(t.handler);
  }
  return out;
}

}  // namespace iopf
