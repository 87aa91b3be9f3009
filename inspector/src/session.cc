#include "session.h"

#include <QPointer>
#include <QtConcurrent/QtConcurrentRun>
#include <algorithm>
#include <chrono>
#include <cstdio>

namespace iopf::inspector {

namespace flt = api::filter;

namespace {

int64_t steadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

uint64_t tripleKey(int d, uint32_t domain, uint32_t device, bool has_pasid, uint32_t pasid) {
  return (static_cast<uint64_t>(d) << 56) ^ (static_cast<uint64_t>(domain) << 44) ^
         (static_cast<uint64_t>(device) << 32) ^ (has_pasid ? (1ull << 31) | pasid : 0);
}

// The event types the inspector needs to keep its tables right; added to a pushed type filter.
const std::vector<v1::EventType>& stateTypes() {
  static const std::vector<v1::EventType> t{
      v1::EVENT_GAP,          v1::EVENT_REQUEST,        v1::EVENT_GROUP_QUEUED,   v1::EVENT_DISPATCHED,
      v1::EVENT_HANDLER_VERDICT, v1::EVENT_RESPONDED,   v1::EVENT_ATTACH,         v1::EVENT_DETACH,
      v1::EVENT_DEVICE_ADDED, v1::EVENT_DEVICE_REMOVED, v1::EVENT_DOMAIN_ADDED,   v1::EVENT_DOMAIN_REMOVED,
      v1::EVENT_CHAIN_CHANGED, v1::EVENT_DOMAIN_PAUSED, v1::EVENT_DOMAIN_RESUMED};
  return t;
}

}  // namespace

uint64_t Session::partialKey(int d, const Event& e) {
  return (static_cast<uint64_t>(d) << 56) ^ (static_cast<uint64_t>(e.device) << 36) ^
         ((e.flags & event_flag::kPasidValid) ? (1ull << 35) | (static_cast<uint64_t>(e.pasid) << 16) : 0) ^ e.grpid;
}

Session::Session(size_t event_cap, QObject* parent) : QObject(parent), store_(event_cap) {
  outstanding_ = new OutstandingModel(this, this);
  proxy_ = new OutstandingProxy(this, this);
  proxy_->setSourceModel(outstanding_);
  log_ = new EventLogModel(this, this);
  topology_ = new TopologyModel(this, this);
  connections_ = new ConnectionsModel(this, this);
  plugins_ = new PluginsModel(this);
  handlers_ = new HandlersModel(this);
  timer_.setTimerType(Qt::CoarseTimer);
  connect(&timer_, &QTimer::timeout, this, &Session::tick);
  current_job_ = std::make_shared<std::atomic<uint64_t>>(0);
}

Session::~Session() {
  current_job_->store(UINT64_MAX);  // running re-filter jobs stop and drop their results
  (void)stopRecording();
  stopAll();
  for (auto& f : stoppers_) f.waitForFinished();
}

int Session::addTransport(std::unique_ptr<Transport> t) {
  auto d = std::make_unique<DaemonState>();
  const int index = static_cast<int>(daemons_.size());
  std::string target = t->target();
  if (target.rfind("unix:", 0) == 0) target = target.substr(5);
  const auto slash = target.find_last_of('/');
  d->label = std::to_string(index) + ":" + (slash == std::string::npos ? target : target.substr(slash + 1));
  d->target = t->target();
  d->live = t->live();
  d->transport = std::move(t);
  if (!filter_.empty()) d->transport->setFilter(flt::toEventFilter(filter_, stateTypes()));
  d->transport->start();
  daemons_.push_back(std::move(d));
  connections_->refresh();
  structure_dirty_ = true;
  return index;
}

void Session::stopAll() {
  for (auto& d : daemons_) {
    if (d->transport) d->transport->stop();
  }
}

int Session::connectedCount() const {
  int n = 0;
  for (const auto& d : daemons_) n += d->connected ? 1 : 0;
  return n;
}

bool Session::disconnectDaemon(int daemon) {
  if (!connected(daemon)) return false;
  DaemonState& ds = *daemons_[static_cast<size_t>(daemon)];
  ds.connected = false;
  ds.status.state = ConnState::kStopped;
  ds.status.message = "disconnected";
  if (recording_daemon_ == daemon) (void)stopRecording();
  // The reader and poller may sit in a gRPC call for up to their deadline: stop and join them on a
  // worker; the transport is destroyed there too. Nothing of the session is touched off the GUI thread.
  std::shared_ptr<Transport> t(std::move(ds.transport));
  stopping_->fetch_add(1);
  QPointer<Session> self(this);
  auto stopping = stopping_;
  stoppers_.erase(std::remove_if(stoppers_.begin(), stoppers_.end(), [](const QFuture<void>& f) { return f.isFinished(); }),
                  stoppers_.end());
  stoppers_.push_back(QtConcurrent::run([t = std::move(t), self, stopping, daemon]() mutable {
    t->stop();
    t.reset();
    stopping->fetch_sub(1);
    QMetaObject::invokeMethod(
        self.data(), [self, daemon] {
          if (self) emit self->transportStopped(daemon);
        },
        Qt::QueuedConnection);
  }));
  // Its rows leave the models now: one removal pass over the outstanding table.
  const uint16_t dd = static_cast<uint16_t>(daemon);
  outstanding_->removeDaemon(dd);
  outstanding_->commit();
  for (auto it = partials_.begin(); it != partials_.end();) {
    it = (it->first >> 56) == static_cast<uint64_t>(daemon) ? partials_.erase(it) : std::next(it);
  }
  for (auto it = known_triples_.begin(); it != known_triples_.end();) {
    it = (*it >> 56) == static_cast<uint64_t>(daemon) ? known_triples_.erase(it) : std::next(it);
  }
  ds.label += " (disconnected)";
  log_->daemonLabelsChanged();
  if (scope_.daemon == daemon) setScope({});
  structure_dirty_ = false;
  topology_->rebuild();
  connections_->refresh();
  panel_sources_.erase(daemon);
  refreshPanels(true);
  emit structureChanged();
  emit statusChanged();
  emit daemonDisconnected(daemon);
  return true;
}

void Session::startTicking(int interval_ms) { timer_.start(interval_ms); }

int64_t Session::daemonNow(int daemon) const {
  const DaemonState& d = *daemons_[static_cast<size_t>(daemon)];
  if (!d.live || !d.connected || d.status.state != ConnState::kStreaming) return d.latest_ns;
  return d.latest_ns + (steadyMs() - d.latest_local_ms) * 1'000'000;
}

std::optional<uint32_t> Session::ridOf(int daemon, uint32_t device) const {
  const DaemonState& d = *daemons_[static_cast<size_t>(daemon)];
  auto it = d.devices.find(device);
  if (it == d.devices.end()) return std::nullopt;
  return it->second.rid();
}

QString Session::handlerName(int daemon, uint32_t handler) const {
  const DaemonState& d = *daemons_[static_cast<size_t>(daemon)];
  auto it = d.handler_names.find(handler);
  return it == d.handler_names.end() ? QStringLiteral("handler #%1").arg(handler) : QString::fromStdString(it->second);
}

flt::Facts Session::factsOf(const LogRow& r) const {
  v1::Event p;
  // Build the facts directly from the compact record (no proto round trip on the hot path).
  flt::Facts f;
  const Event& e = r.e;
  f.group = e.group;
  f.device = e.device;
  f.rid = ridOf(r.daemon, e.device);
  f.domain = e.domain;
  if (e.flags & event_flag::kPasidValid) f.pasid = e.pasid;
  f.type = static_cast<int>(e.type);
  switch (e.type) {
    case EventType::kRequest:
      f.prgi = e.grpid;
      f.addr = e.addr;
      f.perm = e.perm;
      break;
    case EventType::kGroupQueued:
    case EventType::kDispatched:
    case EventType::kTimedOut: f.prgi = e.grpid; break;
    case EventType::kHandlerVerdict:
      f.prgi = e.grpid;
      f.code = e.code;
      f.handler = e.handler;
      break;
    case EventType::kResponded:
      f.prgi = e.grpid;
      f.code = e.code;
      f.origin = e.origin;
      f.latency_ns = e.value;
      break;
    case EventType::kCompletionRefused: f.origin = e.origin; break;
    default: break;
  }
  return f;
}

flt::Facts Session::factsOf(const GroupRow& g) const {
  flt::Facts f;
  f.is_group = true;
  f.group = g.id;
  f.device = g.device;
  f.rid = ridOf(g.daemon, g.device);
  f.domain = g.domain;
  if (g.has_pasid) f.pasid = g.pasid;
  f.prgi = g.grpid;
  f.addr = g.first_addr;
  f.perm = g.perm;
  f.age_ns = daemonNow(g.daemon) - g.first_arrival_ns;
  f.state = g.state;
  return f;
}

namespace {
bool inScope(const Scope& s, int daemon, uint32_t domain, uint32_t device, bool has_pasid, uint32_t pasid) {
  if (s.daemon < 0) return true;
  if (daemon != s.daemon) return false;
  if (s.domain && domain != *s.domain) return false;
  if (s.device && device != *s.device) return false;
  if (s.rid_only && has_pasid) return false;
  if (s.pasid && (!has_pasid || pasid != *s.pasid)) return false;
  return true;
}
}  // namespace

bool Session::acceptsGroup(const GroupRow& g) const {
  if (!inScope(scope_, g.daemon, g.domain, g.device, g.has_pasid, g.pasid)) return false;
  return filter_.empty() || flt::matches(filter_, factsOf(g));
}

bool Session::acceptsEvent(const LogRow& r) const {
  const Event& e = r.e;
  if (e.type == EventType::kGap) return scope_.daemon < 0 || scope_.daemon == r.daemon;  // gaps always show
  if (scope_.daemon >= 0) {
    // Structural events (domain/device added…) carry zeros in fields that do not apply: scope only
    // on what the event has.
    const bool grouped = e.group != 0 || e.type == EventType::kRequest;
    if (grouped) {
      Scope sc = scope_;
      if (e.type == EventType::kRequest) sc.domain.reset();  // requests have no domain before assembly
      if (!inScope(sc, r.daemon, e.domain, e.device, (e.flags & event_flag::kPasidValid) != 0, e.pasid)) return false;
    } else if (r.daemon != scope_.daemon) {
      return false;
    }
  }
  return filter_.empty() || flt::matches(filter_, factsOf(r));
}

flt::ParseResult Session::setFilter(const QString& text) {
  flt::ParseResult r = flt::parseExpr(text.toStdString());
  if (!r.expr) return r;
  filter_ = *r.expr;
  bool complete = false;
  const v1::EventFilter pushed = flt::toEventFilter(filter_, stateTypes(), &complete);
  filter_pushed_complete_ = complete;
  for (auto& d : daemons_) {
    if (d->transport && d->live) d->transport->setFilter(pushed);
  }
  proxy_->invalidate();
  startRefilter();
  return r;
}

void Session::setScope(const Scope& scope) {
  if (scope == scope_) return;
  scope_ = scope;
  proxy_->invalidate();
  startRefilter();
}

// Re-filtering the history is a cancellable job on the thread pool: it reads an immutable view of
// the store; a newer job (or the session's end) makes it stop and its result is dropped.
void Session::startRefilter() {
  const uint64_t job = ++refilter_job_ == 0 ? ++refilter_job_ : refilter_job_;
  current_job_->store(job);
  EventStore::View view = store_.view();
  auto cancel = current_job_;
  QPointer<Session> self(this);
  const flt::Expr expr = filter_;
  const Scope scope = scope_;
  // The job needs the device RID table for device:BB:DD.F terms: copy it.
  std::vector<std::map<uint32_t, uint32_t>> rids;
  std::vector<uint8_t> live;
  for (const auto& d : daemons_) {
    std::map<uint32_t, uint32_t> m;
    for (const auto& [id, dev] : d->devices) m[id] = dev.rid();
    rids.push_back(std::move(m));
  }
  (void)QtConcurrent::run([self, view = std::move(view), cancel, job, expr, scope, rids = std::move(rids)]() {
    std::vector<uint64_t> rows;
    uint64_t matched = 0;
    for (uint64_t i = view.base; i < view.end; ++i) {
      if ((i & 0xffff) == 0 && cancel->load(std::memory_order_relaxed) != job) return;
      const LogRow& r = view.at(i);
      const Event& e = r.e;
      bool ok;
      if (e.type == EventType::kGap) {
        ok = scope.daemon < 0 || scope.daemon == r.daemon;
      } else {
        ok = true;
        if (scope.daemon >= 0) {
          const bool grouped = e.group != 0 || e.type == EventType::kRequest;
          Scope sc = scope;
          if (e.type == EventType::kRequest) sc.domain.reset();
          ok = grouped ? inScope(sc, r.daemon, e.domain, e.device, (e.flags & event_flag::kPasidValid) != 0, e.pasid)
                       : r.daemon == scope.daemon;
        }
        if (ok && !expr.empty()) {
          flt::Facts f;
          v1::Event p;
          toProto(e, p);
          const auto& m = rids[r.daemon];
          f = flt::factsOf(p, [&m](uint32_t dev) -> std::optional<uint32_t> {
            auto it = m.find(dev);
            if (it == m.end()) return std::nullopt;
            return it->second;
          });
          ok = flt::matches(expr, f);
        }
      }
      if (ok) {
        rows.push_back(i);
        ++matched;
      }
    }
    if (cancel->load() != job) return;
    QMetaObject::invokeMethod(
        self.data(),
        [self, job, rows = std::move(rows), end = view.end, matched]() mutable {
          if (self) self->finishRefilter(job, std::move(rows), end, matched);
        },
        Qt::QueuedConnection);
  });
}

void Session::finishRefilter(uint64_t job, std::vector<uint64_t> rows, uint64_t scanned_end, uint64_t matched) {
  if (job != refilter_job_) return;  // stale: a newer filter is being applied
  // Events that arrived while the job ran.
  for (uint64_t i = std::max(scanned_end, store_.base()); i < store_.end(); ++i) {
    if (acceptsEvent(store_.at(i))) {
      rows.push_back(i);
      ++matched;
    }
  }
  refilter_job_ = 0;
  log_->resetRows(std::move(rows), matched);
  emit refilterFinished();
}

void Session::applySnapshot(int d, const v1::Snapshot& s) {
  DaemonState& ds = *daemons_[static_cast<size_t>(d)];
  ds.devices.clear();
  ds.domains.clear();
  for (const auto& dev : s.devices()) ds.devices[dev.id()] = dev;
  for (const auto& dom : s.domains()) ds.domains[dom.id()] = dom;
  ds.attachments.assign(s.attachments().begin(), s.attachments().end());
  ds.have_seq = false;  // a snapshot restarts the sequence (the daemon may have restarted)
  outstanding_->removeDaemon(static_cast<uint16_t>(d));
  for (auto it = partials_.begin(); it != partials_.end();) {
    it = (it->first >> 56) == static_cast<uint64_t>(d) ? partials_.erase(it) : std::next(it);
  }
  for (const auto& g : s.open_groups()) {
    GroupRow r;
    r.daemon = static_cast<uint16_t>(d);
    r.id = g.id();
    r.device = g.device();
    r.domain = g.domain();
    r.has_pasid = g.has_pasid();
    r.pasid = g.pasid();
    r.grpid = g.grpid();
    r.first_arrival_ns = g.first_arrival_ns();
    r.deadline_ns = g.deadline_ns();
    r.state = static_cast<uint8_t>(g.state());
    r.nreq = static_cast<uint32_t>(g.requests_size());
    for (const auto& q : g.requests()) {
      r.perm |= static_cast<uint8_t>(q.perm());
      r.last_arrival_ns = std::max(r.last_arrival_ns, q.arrival_ns());
    }
    if (g.requests_size() > 0) r.first_addr = g.requests(0).addr();
    if (g.trace_size() > 0) {
      r.has_handler = true;
      r.handler = static_cast<uint16_t>(g.trace(g.trace_size() - 1).handler());
    }
    ds.latest_ns = std::max(ds.latest_ns, g.first_arrival_ns() + g.age_ns());
    if (!filter_.empty() && !flt::matches(filter_, factsOf(r))) {
      // Pushed filters hide the events of groups outside them: keep only groups the filter keeps
      // (those outside would never see their response).
      bool complete = false;
      const v1::EventFilter pushed = flt::toEventFilter(filter_, stateTypes(), &complete);
      if ((pushed.has_domain() && pushed.domain() != r.domain) || (pushed.has_device() && pushed.device() != r.device) ||
          (pushed.has_pasid() && (!r.has_pasid || pushed.pasid() != r.pasid)) || (pushed.has_group() && pushed.group() != r.id)) {
        continue;
      }
    }
    outstanding_->add(r);
  }
  ds.latest_local_ms = steadyMs();
  structure_dirty_ = true;
}

void Session::applyEvent(int d, const Event& e) {
  DaemonState& ds = *daemons_[static_cast<size_t>(d)];
  if (e.type != EventType::kGap) {
    if (ds.have_seq && e.seq != 0 && e.seq <= ds.last_applied_seq) return;  // repeated after a snapshot
    ds.last_applied_seq = e.seq;
    ds.have_seq = true;
    if (e.time_ns > ds.latest_ns) ds.latest_ns = e.time_ns;
  }
  const uint16_t dd = static_cast<uint16_t>(d);
  const bool has_pasid = (e.flags & event_flag::kPasidValid) != 0;
  int64_t bucket_key = e.time_ns / 1'000'000'000;
  switch (e.type) {
    case EventType::kRequest: {
      // Requests come before their group exists (group 0, domain 0): collect them by
      // (device, PASID, PRGI) until the group is queued.
      Partial& p = partials_[partialKey(d, e)];
      if (p.n == 0) {
        p.first_arrival_ns = e.time_ns;
        p.first_addr = e.addr;
      }
      p.n++;
      p.perm |= e.perm;
      p.last_arrival_ns = e.time_ns;
      break;
    }
    case EventType::kGroupQueued: {
      Partial p;
      auto pit = partials_.find(partialKey(d, e));
      if (pit != partials_.end()) {
        p = pit->second;
        partials_.erase(pit);
      }
      GroupRow* g = outstanding_->find(dd, e.group);
      if (!g) {
        // Groups outside a pushed filter would never see their response: do not open them.
        GroupRow r;
        r.daemon = dd;
        r.id = e.group;
        r.device = e.device;
        r.domain = e.domain;
        r.has_pasid = has_pasid;
        r.pasid = e.pasid;
        r.grpid = e.grpid;
        r.first_arrival_ns = p.n ? p.first_arrival_ns : e.time_ns;
        r.last_arrival_ns = p.n ? p.last_arrival_ns : e.time_ns;
        r.first_addr = p.n ? p.first_addr : e.addr;
        r.perm = p.n ? p.perm : e.perm;
        r.nreq = p.n ? p.n : 1;
        g = &outstanding_->add(r);
        if (known_triples_.insert(tripleKey(d, e.domain, e.device, has_pasid, e.pasid)).second) structure_dirty_ = true;
      }
      auto it = ds.domains.find(g->domain);
      if (it != ds.domains.end()) g->deadline_ns = e.time_ns + it->second.deadline_ns();
      g->state = v1::GROUP_STATE_QUEUED;
      outstanding_->touch(g);
      buckets_[bucket_key].faults[{d, e.domain}] += p.n ? p.n : 1;
      break;
    }
    case EventType::kDispatched:
      if (GroupRow* g = outstanding_->find(dd, e.group)) {
        g->state = v1::GROUP_STATE_DISPATCHED;
        outstanding_->touch(g);
      }
      break;
    case EventType::kHandlerVerdict:
      if (GroupRow* g = outstanding_->find(dd, e.group)) {
        g->has_handler = true;
        g->handler = e.handler;
        if (e.verdict == v1::VERDICT_DEFER) g->state = v1::GROUP_STATE_DEFERRED;
        outstanding_->touch(g);
      }
      break;
    case EventType::kResponded: {
      outstanding_->remove(dd, e.group);
      auto& b = buckets_[bucket_key];
      b.responses[{d, e.domain}]++;
      b.latencies.push_back(e.value);
      break;
    }
    case EventType::kAttach:
    case EventType::kDetach: {
      auto& a = ds.attachments;
      a.erase(std::remove_if(a.begin(), a.end(),
                             [&](const v1::Attachment& x) {
                               return x.device() == e.device && x.has_pasid() == has_pasid && (!has_pasid || x.pasid() == e.pasid);
                             }),
              a.end());
      if (e.type == EventType::kAttach) {
        v1::Attachment x;
        x.set_device(e.device);
        if (has_pasid) x.set_pasid(e.pasid);
        x.set_domain(e.domain);
        x.set_epoch(static_cast<uint64_t>(e.value));
        a.push_back(x);
      }
      structure_dirty_ = true;
      break;
    }
    case EventType::kDeviceAdded:
      if (!ds.devices.count(e.device)) {
        ds.devices[e.device].set_id(e.device);
      }
      ds.devices[e.device].set_removed(false);
      structure_dirty_ = true;
      break;
    case EventType::kDeviceRemoved:
      ds.devices[e.device].set_removed(true);
      structure_dirty_ = true;
      break;
    case EventType::kDomainAdded:
      ds.domains[e.domain].set_id(e.domain);
      ds.domains[e.domain].set_removed(false);
      structure_dirty_ = true;
      break;
    case EventType::kDomainRemoved:
      ds.domains[e.domain].set_removed(true);
      structure_dirty_ = true;
      break;
    case EventType::kDomainPaused:
    case EventType::kDomainResumed:
      ds.domains[e.domain].set_paused(e.type == EventType::kDomainPaused);
      structure_dirty_ = true;
      break;
    default: break;
  }
  if (watched_daemon_ == d && e.group == watched_group_ && e.group != 0) watched_touched_ = true;
  LogRow row{e, dd};
  store_.append(row);
  const uint64_t abs = store_.end() - 1;
  if (acceptsEvent(row)) log_->appendMatched(abs);
}

void Session::tick() {
  QElapsedTimer t;
  t.start();
  uint64_t n = 0;
  bool status_changed = false;
  std::vector<Event> rec;
  for (size_t di = 0; di < daemons_.size(); ++di) {
    DaemonState& ds = *daemons_[di];
    if (!ds.transport) continue;  // disconnected
    chunks_.clear();
    ConnStatus st;
    n += ds.transport->take(chunks_, st);
    if (st.state != ds.status.state || st.health != ds.status.health || st.message != ds.status.message ||
        st.events != ds.status.events || st.stats != ds.status.stats || st.reconnects != ds.status.reconnects) {
      status_changed = true;
    }
    if (st.stats && st.stats != ds.status.stats) {
      for (const auto& h : st.stats->handlers()) ds.handler_names[h.handler()] = h.name();
    }
    ds.status = std::move(st);
    for (Chunk& c : chunks_) {
      if (c.snapshot) applySnapshot(static_cast<int>(di), *c.snapshot);
      for (const Event& e : c.events) applyEvent(static_cast<int>(di), e);
      if (recorder_ && recording_daemon_ == static_cast<int>(di)) recorder_->add(c.events.data(), c.events.size());
    }
    if (!chunks_.empty()) ds.latest_local_ms = steadyMs();
  }
  total_events_ += n;
  const qint64 t_apply = t.nsecsElapsed();
  // Charts: the open count at the newest second.
  if (!buckets_.empty()) {
    buckets_.rbegin()->second.outstanding = outstanding_->openCount();
    while (buckets_.size() > 600) buckets_.erase(buckets_.begin());
  }
  outstanding_->commit();
  proxy_->ensureSorted();
  const qint64 t_out = t.nsecsElapsed();
  log_->commit(refilter_job_ == 0);  // while a re-filter runs, only drops (its result replaces the rows)
  store_.trim();
  if (structure_dirty_) {
    structure_dirty_ = false;
    topology_->rebuild();
    emit structureChanged();
  } else {
    topology_->updateCounts();
  }
  if (status_changed) {
    connections_->refresh();
    refreshPanels();
    emit statusChanged();
  }
  if (watched_touched_) {
    watched_touched_ = false;
    emit watchedGroupTouched();
  }
  last_tick_ns_ = t.nsecsElapsed();
  if (qEnvironmentVariableIsSet("IOPF_TICK_TRACE") && last_tick_ns_ > 50'000'000) {
    std::fprintf(stderr, "tick %.1f ms: apply %.1f, outstanding %.1f, rest %.1f (%llu events)\n", last_tick_ns_ / 1e6,
                 t_apply / 1e6, (t_out - t_apply) / 1e6, (last_tick_ns_ - t_out) / 1e6, static_cast<unsigned long long>(n));
  }
  emit ticked(last_tick_ns_, n);
}

void Session::refreshPanels(bool force) {
  bool changed = force;
  for (size_t i = 0; i < daemons_.size(); ++i) {
    if (!daemons_[i]->connected) continue;
    const auto& st = daemons_[i]->status;
    auto src = std::make_pair<const void*, const void*>(st.stats.get(), st.plugins.get());
    if (panel_sources_[static_cast<int>(i)] != src) {
      panel_sources_[static_cast<int>(i)] = src;
      changed = true;
    }
  }
  if (!changed) return;
  std::vector<PluginsModel::Row> prow;
  std::vector<HandlersModel::Row> hrow;
  for (size_t i = 0; i < daemons_.size(); ++i) {
    if (!daemons_[i]->connected) continue;
    const auto& st = daemons_[i]->status;
    if (st.plugins) {
      for (const auto& p : st.plugins->plugins()) prow.push_back({static_cast<int>(i), p});
    }
    if (st.stats) {
      for (const auto& h : st.stats->handlers()) hrow.push_back({static_cast<int>(i), h});
    }
  }
  plugins_->setRows(std::move(prow));
  handlers_->setRows(std::move(hrow));
}

absl::Status Session::startRecording(int daemon, const std::string& path) {
  if (recorder_) return absl::FailedPreconditionError("already recording to " + recorder_->path());
  if (!connected(daemon)) return absl::InvalidArgumentError("no connected daemon to record");
  const DaemonState& ds = *daemons_[static_cast<size_t>(daemon)];
  v1::CaptureHeader h;
  h.set_format_version(capture::kFormatVersion);
  h.set_producer("iopf-inspector 0.1.0 (" + ds.target + ")");
  h.set_start_time_ns(ds.latest_ns);
  h.set_wall_time_unix_ns(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  for (const auto& [id, d] : ds.devices) {
    auto* o = h.add_devices();
    o->set_device_id(id);
    o->set_name(d.name());
    o->set_backend(d.backend());
    o->set_backend_handle(d.backend_handle());
    o->set_pci_segment(d.pci_segment());
    o->set_rid(d.rid());
    o->set_pri_allocation(d.pri_allocation());
    o->set_pasid_bits(d.pasid_bits());
    o->set_needs_pasid(d.needs_pasid());
    o->set_stall_model(d.stall_model());
  }
  for (const auto& [id, d] : ds.domains) {
    auto* o = h.add_domains();
    o->set_domain_id(id);
    o->set_name(d.name());
    o->set_kind(d.kind());
    o->set_deadline_ns(d.deadline_ns());
  }
  auto r = Recorder::start(path, h);
  if (!r.ok()) return r.status();
  // The state at the start as seq-0 records: attachments, then the open groups' requests.
  std::vector<Event> initial;
  for (const auto& a : ds.attachments) {
    Event e;
    e.type = EventType::kAttach;
    e.time_ns = ds.latest_ns;
    e.device = a.device();
    e.domain = a.domain();
    if (a.has_pasid()) {
      e.pasid = a.pasid();
      e.flags |= event_flag::kPasidValid;
    }
    e.value = static_cast<int64_t>(a.epoch());
    initial.push_back(e);
  }
  for (const GroupRow& g : outstanding_->rows()) {
    if (g.dead || g.daemon != daemon) continue;
    Event e;
    e.type = EventType::kRequest;  // as the router emits it: before assembly, no group or domain
    e.time_ns = g.first_arrival_ns;
    e.device = g.device;
    e.grpid = g.grpid;
    e.addr = g.first_addr;
    e.perm = g.perm;
    if (g.has_pasid) {
      e.pasid = g.pasid;
      e.flags |= event_flag::kPasidValid;
    }
    initial.push_back(e);
    e.type = EventType::kGroupQueued;
    e.group = g.id;
    e.domain = g.domain;
    e.time_ns = g.deadline_ns ? g.first_arrival_ns : g.first_arrival_ns;
    initial.push_back(e);
  }
  (*r)->add(initial.data(), initial.size());
  recorder_ = std::move(*r);
  recording_daemon_ = daemon;
  return absl::OkStatus();
}

absl::Status Session::stopRecording() {
  if (!recorder_) return absl::OkStatus();
  absl::Status st = recorder_->finish();
  recorder_.reset();
  recording_daemon_ = -1;
  return st;
}

}  // namespace iopf::inspector
