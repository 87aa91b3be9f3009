#include "detail.h"

#include <QHeaderView>
#include <QPointer>
#include <QScrollBar>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrentRun>
#include <grpcpp/grpcpp.h>

#include <functional>
#include <map>
#include <tuple>

#include "session.h"

namespace iopf::inspector {

namespace {
QString hex(uint64_t v) { return QStringLiteral("0x") + QString::number(v, 16); }
}  // namespace

v1::Group groupFromEvents(const EventStore& store, int daemon, uint64_t group) {
  return groupFromEvents(store.view(), daemon, group, {});
}

v1::Group groupFromEvents(const EventStore::View& store, int daemon, uint64_t group, const std::function<bool()>& cancelled,
                          bool* was_cancelled) {
  if (was_cancelled) *was_cancelled = false;
  v1::Group g;
  g.set_id(group);
  bool first = true;
  // Requests carry no group id (it is assigned when the group is queued): collect them per
  // (device, PASID, PRGI) and take those of our group's key when it is queued.
  std::map<std::tuple<uint32_t, int64_t, uint32_t>, std::vector<Event>> partial;
  auto keyOf = [](const Event& e) {
    return std::make_tuple(e.device, (e.flags & event_flag::kPasidValid) ? static_cast<int64_t>(e.pasid) : int64_t{-1}, e.grpid);
  };
  for (uint64_t i = store.base; i < store.end; ++i) {
    if ((i & 0x3fff) == 0 && cancelled && cancelled()) {
      if (was_cancelled) *was_cancelled = true;
      return g;
    }
    const LogRow& r = store.at(i);
    if (r.daemon != daemon) continue;
    if (r.e.type == EventType::kRequest && r.e.group == 0) {
      partial[keyOf(r.e)].push_back(r.e);
      continue;
    }
    if (r.e.group != group) {
      if (r.e.type == EventType::kGroupQueued) partial.erase(keyOf(r.e));  // another group took them
      continue;
    }
    const Event& e = r.e;
    if (e.type == EventType::kGroupQueued) {
      auto it = partial.find(keyOf(e));
      if (it != partial.end()) {
        for (const Event& q : it->second) {
          if (first) {
            first = false;
            g.set_device(q.device);
            if (q.flags & event_flag::kPasidValid) g.set_pasid(q.pasid);
            g.set_grpid(q.grpid);
            g.set_first_arrival_ns(q.time_ns);
          }
          auto* t = g.add_transitions();
          t->set_type(v1::EVENT_REQUEST);
          t->set_time_ns(q.time_ns);
          t->set_seq(q.seq);
          auto* rq = g.add_requests();
          rq->set_grpid(q.grpid);
          if (q.flags & event_flag::kPasidValid) rq->set_pasid(q.pasid);
          rq->set_addr(q.addr);
          rq->set_perm(q.perm);
          rq->set_last((q.flags & event_flag::kLast) != 0);
          rq->set_arrival_ns(q.time_ns);
        }
        partial.erase(it);
      }
      g.set_domain(e.domain);
    }
    if (first) {
      first = false;
      g.set_device(e.device);
      g.set_domain(e.domain);
      if (e.flags & event_flag::kPasidValid) g.set_pasid(e.pasid);
      g.set_grpid(e.grpid);
      g.set_first_arrival_ns(e.time_ns);
    }
    auto* t = g.add_transitions();
    t->set_type(static_cast<v1::EventType>(e.type));
    t->set_time_ns(e.time_ns);
    t->set_seq(e.seq);
    switch (e.type) {
      case EventType::kRequest: {
        auto* q = g.add_requests();
        q->set_grpid(e.grpid);
        if (e.flags & event_flag::kPasidValid) q->set_pasid(e.pasid);
        q->set_addr(e.addr);
        q->set_perm(e.perm);
        q->set_last((e.flags & event_flag::kLast) != 0);
        q->set_arrival_ns(e.time_ns);
        break;
      }
      case EventType::kGroupQueued: g.set_queued_ns(e.time_ns); break;
      case EventType::kDispatched:
        g.set_dispatched_ns(e.time_ns);
        g.set_state(v1::GROUP_STATE_DISPATCHED);
        break;
      case EventType::kHandlerVerdict: {
        auto* h = g.add_trace();
        h->set_handler(e.handler);
        h->set_verdict(static_cast<v1::Verdict>(e.verdict));
        h->set_code(static_cast<v1::ResponseCode>(e.code));
        h->set_duration_ns(e.value);
        break;
      }
      case EventType::kResponded:
        g.set_state(v1::GROUP_STATE_COMPLETED);
        g.set_code(static_cast<v1::ResponseCode>(e.code));
        g.set_origin(static_cast<v1::Origin>(e.origin));
        g.set_latency_ns(e.value);
        break;
      default: break;
    }
  }
  g.set_request_count(static_cast<uint32_t>(g.requests_size()));
  return g;
}

DetailPane::DetailPane(Session* session, QWidget* parent) : QWidget(parent), s_(session) {
  auto* l = new QVBoxLayout(this);
  l->setContentsMargins(4, 4, 4, 4);
  header_ = new QLabel(tr("Double-click a group (outstanding table or event log) to see it here."));
  header_->setWordWrap(true);
  header_->setTextFormat(Qt::RichText);
  header_->setTextInteractionFlags(Qt::TextSelectableByMouse);
  tree_ = new QTreeWidget();
  tree_->setColumnCount(3);
  tree_->setHeaderLabels({tr("Item"), tr("When / value"), tr("Detail")});
  tree_->setUniformRowHeights(true);
  tree_->setAlternatingRowColors(true);
  tree_->header()->resizeSection(0, 190);
  tree_->header()->resizeSection(1, 110);
  l->addWidget(header_);
  l->addWidget(tree_, 1);
  throttle_.setSingleShot(true);
  throttle_.setInterval(300);
  connect(&throttle_, &QTimer::timeout, this, [this] {
    // One job at a time for the shown group: a refresh asked for while it runs follows it (else a
    // long scan of a big history could be cancelled by every new event of the group).
    if (loading_) {
      refresh_pending_ = true;
    } else {
      refresh();
    }
  });
  connect(s_, &Session::watchedGroupTouched, this, [this] {
    if (!throttle_.isActive()) throttle_.start();
  });
}

void DetailPane::showGroup(int daemon, uint64_t group) {
  if (daemon == daemon_ && group == group_) return;
  daemon_ = daemon;
  group_ = group;
  loaded_ = false;
  refresh_pending_ = false;
  s_->watchGroup(daemon, group);
  tree_->clear();
  header_->setText(tr("Loading group %1…").arg(group));
  refresh();
}

// Every refresh is a job on the thread pool: GetGroup for a live daemon, and a scan of an immutable
// view of the event history (offline, a forgotten group, or to fill in what GetGroup lacks). A newer
// selection or refresh bumps the job number: the older job stops at its next check and its result
// is dropped. The GUI thread only takes the view (a few shared pointers) and renders the result.
void DetailPane::refresh() {
  if (daemon_ < 0) return;
  const uint64_t job = ++job_;
  cancel_->store(job);
  const int daemon = daemon_;
  const uint64_t group = group_;
  const DaemonState& ds = s_->daemon(daemon);
  std::shared_ptr<v1::Router::StubInterface> stub = ds.transport ? ds.transport->stub() : nullptr;
  std::vector<std::pair<std::string, std::string>> meta;
  if (ds.transport) meta = ds.transport->metadata();
  loading_ = true;
  if (!loaded_) {
    header_->setText(stub ? tr("Loading group %1…").arg(group)
                          : tr("Loading group %1 from the event history (%2 events)…").arg(group).arg(s_->store().kept()));
  }
  EventStore::View view = s_->store().view();
  QPointer<DetailPane> self(this);
  auto cancel = cancel_;
  auto running = running_;
  running->fetch_add(1);
  ++jobs_started_;
  (void)QtConcurrent::run([self, stub, meta, job, daemon, group, view = std::move(view), cancel, running]() {
    auto stale = [&] { return cancel->load(std::memory_order_relaxed) != job; };
    auto g = std::make_shared<v1::Group>();
    QString source;
    bool dropped = false;
    if (stub) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      for (const auto& [k, v] : meta) ctx.AddMetadata(k, v);
      v1::GetGroupRequest req;
      req.set_id(group);
      const grpc::Status st = stub->GetGroup(&ctx, req, g.get());
      if (st.ok()) {
        // The daemon's recent history may hold a completed group without its requests or trace:
        // fill them in from the events this inspector saw.
        source = tr("GetGroup");
        if (!stale() && (g->requests_size() == 0 || g->trace_size() == 0)) {
          const v1::Group local = groupFromEvents(view, daemon, group, stale, &dropped);
          if (g->requests_size() == 0 && local.requests_size() > 0) {
            *g->mutable_requests() = local.requests();
            if (g->first_arrival_ns() == 0) g->set_first_arrival_ns(local.first_arrival_ns());
            source += tr(" + requests from the event history");
          }
          if (g->trace_size() == 0 && local.trace_size() > 0) {
            *g->mutable_trace() = local.trace();
            source += tr(" + handler trace from the event history");
          }
        }
      } else if (!stale()) {
        *g = groupFromEvents(view, daemon, group, stale, &dropped);
        source = tr("event history (GetGroup: %1)").arg(QString::fromStdString(st.error_message()));
      }
    } else {
      *g = groupFromEvents(view, daemon, group, stale, &dropped);
      source = tr("event history");
    }
    dropped = dropped || stale();
    running->fetch_sub(1);
    QMetaObject::invokeMethod(
        self.data(),
        [self, job, g, source, dropped]() {
          if (!self) return;
          if (dropped || job != self->job_) {  // a newer selection or refresh
            ++self->jobs_dropped_;
            return;
          }
          self->loading_ = false;
          self->render(*g, source);
          if (self->refresh_pending_) {
            self->refresh_pending_ = false;
            self->refresh();
          }
        },
        Qt::QueuedConnection);
  });
}

void DetailPane::render(const v1::Group& g, const QString& source) {
  current_ = g;
  const int scroll = tree_->verticalScrollBar()->value();
  std::map<QString, bool> expanded;
  for (int i = 0; i < tree_->topLevelItemCount(); ++i) {
    auto* it = tree_->topLevelItem(i);
    expanded[it->text(0).section(' ', 0, 0)] = it->isExpanded();
  }
  tree_->setUpdatesEnabled(false);
  tree_->clear();
  const int64_t t0 = g.first_arrival_ns();
  auto rel = [&](int64_t t) { return t == 0 ? QString("–") : QStringLiteral("+") + durationText(t - t0); };
  const auto rid = s_->ridOf(daemon_, g.device());
  QString state = QString::fromLatin1(api::filter::stateName(g.state()).data());
  QString resp;
  if (g.has_code()) {
    resp = tr("<b>%1</b> by <b>%2</b> after %3")
               .arg(codeText(g.code()), originText(g.origin()), durationText(g.latency_ns()));
  } else {
    resp = tr("open, age %1").arg(durationText(s_->daemonNow(daemon_) - t0));
  }
  header_->setText(tr("<b>Group %1</b> · daemon %2 · device %3%4 · domain %5 · PASID %6 · PRGI %7 · %8<br>%9"
                      "<br><small>source: %10</small>")
                       .arg(g.id())
                       .arg(QString::fromStdString(s_->daemon(daemon_).label))
                       .arg(g.device())
                       .arg(rid ? " (" + ridText(*rid) + ")" : QString())
                       .arg(g.domain())
                       .arg(g.has_pasid() ? QString::number(g.pasid()) : QStringLiteral("none"))
                       .arg(g.grpid())
                       .arg(state, resp, source.toHtmlEscaped()));
  auto section = [&](const QString& title) {
    auto* it = new QTreeWidgetItem(tree_, {title});
    QFont f = it->font(0);
    f.setBold(true);
    it->setFont(0, f);
    return it;
  };
  auto* reqs = section(tr("Requests (%1)").arg(g.requests_size()));
  int i = 0;
  for (const auto& r : g.requests()) {
    new QTreeWidgetItem(reqs, {QStringLiteral("#%1 %2").arg(++i).arg(hex(r.addr())), rel(r.arrival_ns()),
                               QStringLiteral("%1%2%3").arg(permText(r.perm()), r.last() ? " last" : "",
                                                             r.has_pasid() ? QStringLiteral(" pasid %1").arg(r.pasid()) : QString())});
  }
  auto* trans = section(tr("Transitions (%1)").arg(g.transitions_size()));
  for (const auto& t : g.transitions()) {
    new QTreeWidgetItem(trans, {eventTypeText(t.type()), rel(t.time_ns()),
                                QStringLiteral("#%1 %2").arg(t.seq()).arg(QString::fromStdString(t.detail()))});
  }
  auto* trace = section(tr("Handler trace (%1)").arg(g.trace_size()));
  static const char* verdicts[] = {"continue", "respond", "defer"};
  for (const auto& h : g.trace()) {
    const QString name = h.handler_name().empty() ? s_->handlerName(daemon_, h.handler()) : QString::fromStdString(h.handler_name());
    new QTreeWidgetItem(trace, {name, durationText(h.duration_ns()),
                                QStringLiteral("%1%2%3").arg(QString::fromLatin1(verdicts[std::min<int>(h.verdict(), 2)]),
                                                             h.verdict() == v1::VERDICT_RESPOND ? " " + codeText(h.code()) : QString(),
                                                             h.error() ? " ERROR" : "")});
  }
  auto* response = section(tr("Response"));
  if (g.has_code()) {
    new QTreeWidgetItem(response, {tr("code"), codeText(g.code()), QString()});
    new QTreeWidgetItem(response, {tr("origin"), originText(g.origin()), QString()});
    new QTreeWidgetItem(response, {tr("latency"), durationText(g.latency_ns()), QString()});
  } else {
    new QTreeWidgetItem(response, {tr("not answered yet"), QString(),
                                   g.deadline_ns() ? tr("deadline in %1").arg(durationText(g.deadline_ns() - s_->daemonNow(daemon_)))
                                                   : QString()});
  }
  for (int k = 0; k < tree_->topLevelItemCount(); ++k) {
    auto* it = tree_->topLevelItem(k);
    auto e = expanded.find(it->text(0).section(' ', 0, 0));
    it->setExpanded(e == expanded.end() ? true : e->second);
  }
  tree_->setUpdatesEnabled(true);
  tree_->verticalScrollBar()->setValue(scroll);
  loaded_ = true;
  emit groupLoaded();
}

}  // namespace iopf::inspector
