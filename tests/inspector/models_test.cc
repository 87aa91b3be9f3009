// Every inspector model under QAbstractItemModelTester, fed by a fake transport with recorded batches.
#include <gtest/gtest.h>

#include <QAbstractItemModelTester>
#include <QCoreApplication>
#include <QElapsedTimer>
#include <QFile>
#include <QMenuBar>
#include <QSettings>
#include <QSignalSpy>
#include <QStatusBar>
#include <QTemporaryDir>
#include <QThread>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <set>

#include "detail.h"
#include "exporter.h"
#include "main_window.h"
#include "session.h"

namespace iopf::inspector {
namespace {

using Tester = QAbstractItemModelTester;

std::shared_ptr<v1::Snapshot> snapshot() {
  auto s = std::make_shared<v1::Snapshot>();
  for (uint32_t id : {1u, 2u}) {
    auto* d = s->add_devices();
    d->set_id(id);
    d->set_name("nic" + std::to_string(id));
    d->set_rid(0x0300 + id * 8);
    d->set_backend("sim");
    auto* m = s->add_domains();
    m->set_id(id);
    m->set_name("vm" + std::to_string(id));
    m->set_kind("paging");
    m->set_deadline_ns(50'000'000);
    auto* a = s->add_attachments();
    a->set_device(id);
    a->set_domain(id);
  }
  auto* a = s->add_attachments();
  a->set_device(2);
  a->set_pasid(5);
  a->set_domain(1);
  // One group open at snapshot time.
  auto* g = s->add_open_groups();
  g->set_id(100);
  g->set_device(1);
  g->set_domain(1);
  g->set_grpid(1);
  g->set_first_arrival_ns(1'000'000);
  g->set_age_ns(1'000'000);
  g->set_deadline_ns(51'000'000);
  g->set_state(v1::GROUP_STATE_DEFERRED);
  auto* r = g->add_requests();
  r->set_addr(0x1000);
  r->set_perm(1);
  r->set_arrival_ns(1'000'000);
  s->set_next_seq(10);
  return s;
}

struct Recorder {
  uint64_t seq = 10;
  int64_t t = 2'000'000;
  std::vector<Event> out;
  Event base(EventType type, uint64_t group, uint32_t device, uint32_t domain, std::optional<uint32_t> pasid) {
    Event e;
    e.seq = seq++;
    e.time_ns = (t += 1000);
    e.type = type;
    e.group = group;
    e.device = device;
    e.domain = domain;
    e.grpid = static_cast<uint32_t>(group % 512);
    if (pasid) {
      e.pasid = *pasid;
      e.flags |= event_flag::kPasidValid;
    }
    return e;
  }
  // A full group life: requests, queued, dispatched, verdict, (responded).
  void group(uint64_t id, uint32_t device, uint32_t domain, std::optional<uint32_t> pasid, int requests, bool respond,
             uint8_t code = 0, uint8_t origin = 0) {
    for (int i = 0; i < requests; ++i) {
      // As the router emits them: no group id and no domain before the group is queued.
      Event e = base(EventType::kRequest, 0, device, 0, pasid);
      e.grpid = static_cast<uint32_t>(id % 512);
      e.addr = 0x10000 + static_cast<uint64_t>(i) * 0x1000;
      e.perm = 3;
      if (i == requests - 1) e.flags |= event_flag::kLast;
      out.push_back(e);
    }
    out.push_back(base(EventType::kGroupQueued, id, device, domain, pasid));
    out.push_back(base(EventType::kDispatched, id, device, domain, pasid));
    Event v = base(EventType::kHandlerVerdict, id, device, domain, pasid);
    v.handler = 1;
    v.verdict = respond ? 1 : 2;
    v.value = 1500;
    out.push_back(v);
    if (respond) {
      Event r = base(EventType::kResponded, id, device, domain, pasid);
      r.code = code;
      r.origin = origin;
      r.value = 40'000;
      out.push_back(r);
    }
  }
  void respond(uint64_t id, uint32_t device, uint32_t domain, std::optional<uint32_t> pasid, uint8_t code, uint8_t origin) {
    Event r = base(EventType::kResponded, id, device, domain, pasid);
    r.code = code;
    r.origin = origin;
    r.value = 90'000;
    out.push_back(r);
  }
  std::vector<Event> take() { return std::exchange(out, {}); }
};

class InspectorModels : public ::testing::Test {
 protected:
  void SetUp() override {
    session_ = std::make_unique<Session>(1'000'000);
    testers_.push_back(std::make_unique<Tester>(session_->outstanding(), Tester::FailureReportingMode::Fatal));
    testers_.push_back(std::make_unique<Tester>(session_->outstandingProxy(), Tester::FailureReportingMode::Fatal));
    testers_.push_back(std::make_unique<Tester>(session_->log(), Tester::FailureReportingMode::Fatal));
    testers_.push_back(std::make_unique<Tester>(session_->topology(), Tester::FailureReportingMode::Fatal));
    testers_.push_back(std::make_unique<Tester>(session_->connections(), Tester::FailureReportingMode::Fatal));
    testers_.push_back(std::make_unique<Tester>(session_->plugins(), Tester::FailureReportingMode::Fatal));
    testers_.push_back(std::make_unique<Tester>(session_->handlers(), Tester::FailureReportingMode::Fatal));
    auto t = std::make_unique<FakeTransport>("unix:/tmp/fake.sock");
    fake_ = t.get();
    session_->addTransport(std::move(t));
  }
  void TearDown() override {
    testers_.clear();
    session_.reset();
  }
  // Lets finished re-filter jobs deliver their results.
  void settle() {
    for (int i = 0; i < 200 && session_->refiltering(); ++i) {
      QCoreApplication::processEvents(QEventLoop::AllEvents, 10);
      QThread::msleep(5);
    }
    ASSERT_FALSE(session_->refiltering());
  }
  int topologyNodes(const QModelIndex& parent = {}) {
    int n = 0;
    for (int r = 0; r < session_->topology()->rowCount(parent); ++r) {
      n += 1 + topologyNodes(session_->topology()->index(r, 0, parent));
    }
    return n;
  }
  std::unique_ptr<Session> session_;
  FakeTransport* fake_ = nullptr;
  std::vector<std::unique_ptr<Tester>> testers_;
  Recorder rec_;
};

TEST_F(InspectorModels, SnapshotThenBatchesOpenAndCloseGroups) {
  // The views choose the sort order while the table is still empty.
  session_->outstandingProxy()->sort(OutstandingModel::kAge, Qt::DescendingOrder);
  fake_->snapshot(snapshot());
  session_->tick();
  EXPECT_EQ(session_->outstanding()->rowCount(), 1);
  // daemon, 2 domains, devices (1 under vm1, 2 under vm2, 2/pasid5 under vm1) and PASID/RID nodes.
  EXPECT_GT(topologyNodes(), 6);

  rec_.group(101, 1, 1, std::nullopt, 2, false);
  rec_.group(102, 2, 1, 5, 1, false);
  rec_.group(103, 2, 2, std::nullopt, 3, true);  // opens and closes within one batch: never shown
  fake_->events(rec_.take());
  session_->tick();
  ASSERT_EQ(session_->outstanding()->rowCount(), 3);
  const GroupRow& g101 = session_->outstanding()->row(1);
  EXPECT_EQ(g101.id, 101u);
  EXPECT_EQ(g101.nreq, 2u);
  EXPECT_EQ(g101.state, v1::GROUP_STATE_DEFERRED);
  EXPECT_EQ(g101.deadline_ns, g101.first_arrival_ns + 2000 + 50'000'000);  // queued 2 µs after the first request
  EXPECT_EQ(session_->log()->rowCount(), 5 + 4 + 7);

  // Topology counts: vm1 has groups 100, 101, 102.
  const QModelIndex daemon = session_->topology()->index(0, 0);
  const QModelIndex vm1 = session_->topology()->index(0, 1, daemon);
  EXPECT_EQ(vm1.data().toULongLong(), 3u);

  rec_.respond(100, 1, 1, std::nullopt, 1, 2);
  rec_.respond(102, 2, 1, 5, 0, 4);
  fake_->events(rec_.take());
  session_->tick();
  ASSERT_EQ(session_->outstanding()->rowCount(), 1);
  EXPECT_EQ(session_->outstanding()->row(0).id, 101u);
  EXPECT_EQ(session_->topology()->index(0, 1, daemon).data().toULongLong(), 1u);

  // Every cell of every model renders.
  for (QAbstractItemModel* m : {static_cast<QAbstractItemModel*>(session_->outstanding()),
                                static_cast<QAbstractItemModel*>(session_->log())}) {
    for (int r = 0; r < m->rowCount(); ++r) {
      for (int c = 0; c < m->columnCount(); ++c) (void)m->index(r, c).data(Qt::DisplayRole);
    }
  }
  EXPECT_EQ(session_->outstanding()->index(0, OutstandingModel::kPerm).data().toString(), "RW-");
  // Sorting by age, descending: the oldest group first.
  rec_.group(104, 1, 1, std::nullopt, 1, false);
  fake_->events(rec_.take());
  session_->tick();
  ASSERT_EQ(session_->outstandingProxy()->rowCount(), 2);
  const QModelIndex oldest = session_->outstandingProxy()->index(0, 0);
  EXPECT_EQ(oldest.data(OutstandingModel::kKeyRole).toString(), "0:101");
  // Rows inserted later land in sorted place.
  rec_.group(105, 1, 1, std::nullopt, 1, false);
  fake_->events(rec_.take());
  session_->tick();
  ASSERT_EQ(session_->outstandingProxy()->rowCount(), 3);
  EXPECT_EQ(session_->outstandingProxy()->index(0, 0).data(OutstandingModel::kKeyRole).toString(), "0:101");
  EXPECT_EQ(session_->outstandingProxy()->index(2, 0).data(OutstandingModel::kKeyRole).toString(), "0:105");
  EXPECT_EQ(session_->outstanding()->index(0, OutstandingModel::kDomain).data().toString(), "1 vm1");
}

TEST_F(InspectorModels, FilterAndScopeNarrowTheViews) {
  fake_->snapshot(snapshot());
  for (uint64_t id = 200; id < 220; ++id) {
    rec_.group(id, id % 2 ? 1 : 2, id % 2 ? 1 : 2, std::nullopt, 1, id % 4 == 0, id % 8 == 0 ? 1 : 0, 0);
  }
  fake_->events(rec_.take());
  session_->tick();
  const int open = session_->outstanding()->rowCount();
  EXPECT_EQ(open, 1 + 20 - 5);

  auto r = session_->setFilter("domain:1");
  ASSERT_TRUE(r.expr.has_value());
  settle();
  EXPECT_EQ(session_->outstandingProxy()->rowCount(), 1 + 10);
  for (int i = 0; i < session_->log()->rowCount(); ++i) EXPECT_EQ(session_->log()->rowAt(i).e.domain, 1u);

  r = session_->setFilter("type:responded code:invalid");
  ASSERT_TRUE(r.expr.has_value());
  settle();
  EXPECT_EQ(session_->log()->rowCount(), 3);  // 200, 208, 216
  EXPECT_EQ(session_->outstandingProxy()->rowCount(), open);  // groups ignore type/code terms

  EXPECT_FALSE(session_->setFilter("domain:").expr.has_value());  // invalid: the old filter stays
  EXPECT_EQ(session_->log()->rowCount(), 3);

  ASSERT_TRUE(session_->setFilter("").expr.has_value());
  Scope s;
  s.daemon = 0;
  s.domain = 2;
  session_->setScope(s);
  settle();
  EXPECT_EQ(session_->outstandingProxy()->rowCount(), 10 - 5 + 0);
  for (int i = 0; i < session_->log()->rowCount(); ++i) {
    const Event& e = session_->log()->rowAt(i).e;
    if (e.group) {
      EXPECT_EQ(e.domain, 2u);
    }
  }
  // A new batch while scoped: only domain 2 shows up in the log.
  const int before = session_->log()->rowCount();
  rec_.group(300, 1, 1, std::nullopt, 1, false);
  rec_.group(301, 2, 2, std::nullopt, 1, false);
  fake_->events(rec_.take());
  session_->tick();
  // Group 301's four events, and group 300's request: requests have no domain before assembly, so
  // a domain scope keeps them all (a device scope would not).
  EXPECT_EQ(session_->log()->rowCount(), before + 5);
}

TEST_F(InspectorModels, PauseViewClearAndGapRows) {
  fake_->snapshot(snapshot());
  rec_.group(400, 1, 1, std::nullopt, 1, true);
  fake_->events(rec_.take());
  session_->tick();
  const int shown = session_->log()->rowCount();
  session_->log()->setPaused(true);
  rec_.group(401, 1, 1, std::nullopt, 2, true);
  fake_->events(rec_.take());
  session_->tick();
  EXPECT_EQ(session_->log()->rowCount(), shown);
  EXPECT_EQ(session_->log()->pendingCount(), 6u);
  session_->log()->setPaused(false);
  EXPECT_EQ(session_->log()->rowCount(), shown + 6);
  session_->log()->clear();
  EXPECT_EQ(session_->log()->rowCount(), 0);
  // A gap marker from the daemon (allow_gap) becomes a row.
  Event gap;
  gap.type = EventType::kGap;
  gap.seq = 1000;
  gap.value = 42;
  fake_->events({gap});
  session_->tick();
  ASSERT_EQ(session_->log()->rowCount(), 1);
  EXPECT_EQ(session_->log()->index(0, EventLogModel::kDetail).data().toString(), "GAP: 42 events lost");
}

TEST_F(InspectorModels, CappedHistoryDropsTheOldestChunk) {
  session_.reset();
  testers_.clear();
  session_ = std::make_unique<Session>(EventStore::kChunk);  // keeps between 1 and 2 chunks
  Tester log_tester(session_->log(), Tester::FailureReportingMode::Fatal);
  auto t = std::make_unique<FakeTransport>("fake");
  auto* fake = t.get();
  session_->addTransport(std::move(t));
  fake->snapshot(snapshot());
  uint64_t pushed = 0;
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 10000; ++i) {
      rec_.group(1000 + pushed / 5, 1, 1, std::nullopt, 1, true);
      pushed += 5;
    }
    fake->events(rec_.take());
    session_->tick();
  }
  EXPECT_EQ(session_->store().total(), pushed);
  EXPECT_LT(session_->store().kept(), pushed);
  EXPECT_LE(session_->store().kept(), 2 * EventStore::kChunk);
  EXPECT_EQ(static_cast<size_t>(session_->log()->rowCount()), session_->store().kept());
  EXPECT_EQ(session_->log()->matchedTotal(), pushed);
}

TEST_F(InspectorModels, PanelsAndConnectionsFollowPolledStatus) {
  auto stats = std::make_shared<v1::Stats>();
  auto* h = stats->add_handlers();
  h->set_handler(1);
  h->set_name("resolver");
  h->set_calls(10);
  auto plugins = std::make_shared<v1::ListPluginsResponse>();
  auto* p = plugins->add_plugins();
  p->set_name("logger");
  p->set_state("loaded");
  fake_->status([&](ConnStatus& s) {
    s.health = Health::kServing;
    s.stats = stats;
    s.plugins = plugins;
  });
  session_->tick();
  EXPECT_EQ(session_->plugins()->rowCount(), 1);
  EXPECT_EQ(session_->handlers()->rowCount(), 1);
  EXPECT_EQ(session_->handlerName(0, 1), "resolver");
  EXPECT_EQ(session_->connections()->rowCount(), 1);
  EXPECT_EQ(session_->connections()->index(0, ConnectionsModel::kHealth).data().toString(), "SERVING");
  EXPECT_EQ(session_->handlers()->index(0, HandlersModel::kName).data().toString(), "resolver");
}

TEST_F(InspectorModels, SeveralDaemonsAtOnce) {
  auto t = std::make_unique<FakeTransport>("unix:/tmp/second.sock");
  FakeTransport* second = t.get();
  EXPECT_EQ(session_->addTransport(std::move(t)), 1);
  fake_->snapshot(snapshot());
  second->snapshot(snapshot());  // the same ids on another host: kept apart by daemon
  rec_.group(600, 1, 1, std::nullopt, 1, false);
  fake_->events(rec_.take());
  rec_.group(600, 2, 2, std::nullopt, 1, false);
  second->events(rec_.take());
  session_->tick();
  EXPECT_EQ(session_->topology()->rowCount(), 2);
  EXPECT_EQ(session_->connections()->rowCount(), 2);
  ASSERT_EQ(session_->outstanding()->rowCount(), 4);  // 100 and 600 on each
  Scope s;
  s.daemon = 1;
  session_->setScope(s);
  settle();
  EXPECT_EQ(session_->outstandingProxy()->rowCount(), 2);
  for (int i = 0; i < session_->log()->rowCount(); ++i) EXPECT_EQ(session_->log()->rowAt(i).daemon, 1);
  EXPECT_GT(session_->log()->rowCount(), 0);
}

TEST_F(InspectorModels, RecordAndReopenACapture) {
  fake_->snapshot(snapshot());
  rec_.group(500, 1, 1, std::nullopt, 1, false);
  fake_->events(rec_.take());
  session_->tick();
  QTemporaryDir dir;
  const std::string path = dir.filePath("rec.iopfcap").toStdString();
  ASSERT_TRUE(session_->startRecording(0, path).ok());
  rec_.group(501, 2, 2, std::nullopt, 2, false);
  rec_.group(502, 1, 1, std::nullopt, 1, true);
  rec_.respond(500, 1, 1, std::nullopt, 0, 4);
  fake_->events(rec_.take());
  session_->tick();
  ASSERT_TRUE(session_->stopRecording().ok());
  // Live: 100 (snapshot) and 501 open.
  ASSERT_EQ(session_->outstanding()->rowCount(), 2);

  Session offline;
  Tester t1(offline.outstanding(), Tester::FailureReportingMode::Fatal);
  Tester t2(offline.topology(), Tester::FailureReportingMode::Fatal);
  offline.addTransport(std::make_unique<CaptureTransport>(path));
  for (int i = 0; i < 500 && offline.daemon(0).status.state != ConnState::kFinished; ++i) {
    offline.tick();
    QThread::msleep(5);
  }
  offline.tick();
  ASSERT_EQ(offline.daemon(0).status.state, ConnState::kFinished) << offline.daemon(0).status.message;
  EXPECT_EQ(offline.daemon(0).devices.size(), 2u);
  EXPECT_EQ(offline.daemon(0).attachments.size(), 3u);
  std::set<uint64_t> open;
  for (const auto& g : offline.outstanding()->rows()) open.insert(g.id);
  EXPECT_EQ(open, (std::set<uint64_t>{100, 501}));
  EXPECT_FALSE(offline.daemon(0).transport->live());
}

// Waits (processing events) until `pred` holds or a generous deadline passes.
bool waitFor(const std::function<bool()>& pred, int timeout_ms = 60000) {
  QElapsedTimer t;
  t.start();
  while (!pred()) {
    if (t.elapsed() > timeout_ms) return false;
    QCoreApplication::processEvents(QEventLoop::AllEvents, 10);
    QThread::msleep(2);
  }
  return true;
}

// A fake transport whose stop() blocks until the test opens the gate: disconnecting must not wait.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false, stop_called = false;
  void release() {
    std::lock_guard<std::mutex> l(mu);
    open = true;
    cv.notify_all();
  }
};
class GatedTransport : public FakeTransport {
 public:
  GatedTransport(std::string target, std::shared_ptr<Gate> gate) : FakeTransport(std::move(target)), gate_(std::move(gate)) {}
  void stop() override {
    std::unique_lock<std::mutex> l(gate_->mu);
    gate_->stop_called = true;
    gate_->cv.wait(l, [&] { return gate_->open; });
    FakeTransport::stop();
  }
 private:
  std::shared_ptr<Gate> gate_;
};
struct ReleaseOnExit {
  std::shared_ptr<Gate> g;
  ~ReleaseOnExit() { g->release(); }
};

TEST_F(InspectorModels, DisconnectOneDaemonLeavesTheOther) {
  auto gate = std::make_shared<Gate>();
  ReleaseOnExit guard{gate};
  auto t = std::make_unique<GatedTransport>("unix:/tmp/second.sock", gate);
  GatedTransport* second = t.get();
  ASSERT_EQ(session_->addTransport(std::move(t)), 1);
  fake_->snapshot(snapshot());
  second->snapshot(snapshot());
  rec_.group(700, 1, 1, std::nullopt, 1, false);
  rec_.group(701, 2, 2, 5, 2, true);
  fake_->events(rec_.take());
  rec_.group(800, 2, 2, std::nullopt, 1, false);
  rec_.group(801, 1, 1, std::nullopt, 1, false);
  second->events(rec_.take());
  session_->tick();
  ASSERT_EQ(session_->outstanding()->rowCount(), 5);  // 100 and 700 on 0; 100, 800, 801 on 1
  ASSERT_EQ(session_->topology()->rowCount(), 2);
  ASSERT_EQ(session_->connections()->rowCount(), 2);
  Scope s;
  s.daemon = 1;
  session_->setScope(s);
  settle();
  const int log_rows_of_1 = session_->log()->rowCount();
  ASSERT_GT(log_rows_of_1, 0);
  ASSERT_TRUE(session_->setFilter("").expr.has_value());
  session_->setScope({});
  settle();
  const int log_rows = session_->log()->rowCount();

  QSignalSpy stopped(session_.get(), &Session::transportStopped);
  // The transport's stop() is blocked: disconnectDaemon returns anyway, the worker waits for it.
  ASSERT_TRUE(session_->disconnectDaemon(1));
  EXPECT_EQ(session_->stoppingTransports(), 1);
  EXPECT_FALSE(session_->connected(1));
  EXPECT_TRUE(session_->connected(0));
  EXPECT_EQ(session_->connectedCount(), 1);
  EXPECT_FALSE(session_->disconnectDaemon(1));  // once only
  // Daemon 1's rows left the outstanding table, the topology and the connections; daemon 0's stay.
  ASSERT_EQ(session_->outstanding()->rowCount(), 2);
  for (const GroupRow& g : session_->outstanding()->rows()) EXPECT_EQ(g.daemon, 0);
  EXPECT_EQ(session_->outstandingProxy()->rowCount(), 2);
  ASSERT_EQ(session_->topology()->rowCount(), 1);
  EXPECT_EQ(session_->topology()->scopeOf(session_->topology()->index(0, 0)).daemon, 0);
  EXPECT_EQ(session_->topology()->index(0, 1).data().toULongLong(), 2u);
  ASSERT_EQ(session_->connections()->rowCount(), 1);
  EXPECT_EQ(session_->connections()->index(0, 0).data(ConnectionsModel::kDaemonRole).toInt(), 0);
  EXPECT_EQ(session_->connections()->index(0, ConnectionsModel::kTarget).data().toString(), "unix:/tmp/fake.sock");
  // The log keeps the events already received, marked.
  settle();
  EXPECT_EQ(session_->log()->rowCount(), log_rows);
  bool saw_marked = false;
  for (int i = 0; i < session_->log()->rowCount(); ++i) {
    if (session_->log()->rowAt(i).daemon == 1) {
      saw_marked = true;
      EXPECT_TRUE(session_->log()->index(i, EventLogModel::kDaemon).data().toString().endsWith("(disconnected)"));
    }
  }
  EXPECT_TRUE(saw_marked);
  // The other daemon keeps streaming.
  rec_.group(702, 1, 1, std::nullopt, 1, false);
  fake_->events(rec_.take());
  session_->tick();
  EXPECT_EQ(session_->outstanding()->rowCount(), 3);
  EXPECT_EQ(session_->scope().daemon, -1);

  gate->release();
  ASSERT_TRUE(waitFor([&] { return session_->stoppingTransports() == 0 && stopped.count() == 1; }));
  EXPECT_EQ(stopped.at(0).at(0).toInt(), 1);
  session_->tick();  // the models stay valid (the testers are fatal)
  EXPECT_EQ(session_->outstanding()->rowCount(), 3);
}

TEST_F(InspectorModels, DisconnectFromTheWindowKeepsTheRecentTarget) {
  MainWindow w(session_.get());
  QStringList asked;
  bool answer = false;
  w.setConfirm([&](const QString& q) {
    asked << q;
    return answer;
  });
  const QString target = "unix:/nonexistent-iopf-inspector-test/iopfd.sock";
  ASSERT_TRUE(w.connectTo(target));  // a real gRPC transport (reader and poller retrying)
  ASSERT_EQ(session_->daemonCount(), 2);
  fake_->snapshot(snapshot());
  session_->tick();
  ASSERT_EQ(session_->topology()->rowCount(), 2);
  // The daemon node of the topology tree selects the daemon.
  w.topologyView()->setCurrentIndex(session_->topology()->index(1, 0));
  ASSERT_EQ(w.selectedDaemon(), 1);
  EXPECT_FALSE(w.disconnectDaemon(1));  // the user said no
  EXPECT_TRUE(session_->connected(1));
  ASSERT_EQ(asked.size(), 1);
  EXPECT_TRUE(asked[0].contains(target));
  answer = true;
  EXPECT_TRUE(w.disconnectDaemon(w.selectedDaemon()));
  EXPECT_FALSE(session_->connected(1));
  EXPECT_EQ(session_->topology()->rowCount(), 1);
  EXPECT_EQ(session_->connections()->rowCount(), 1);
  EXPECT_TRUE(QSettings().value("connect/recent").toStringList().contains(target));
  ASSERT_TRUE(waitFor([&] { return session_->stoppingTransports() == 0; }));
  // The context menu of the topology tree carries the disconnect action.
  bool has_action = false;
  for (QAction* a : w.topologyView()->actions()) has_action |= a->text().contains("Disconnect");
  EXPECT_TRUE(has_action);
  // With only daemon 0 left, it is the selected one.
  w.topologyView()->setCurrentIndex({});
  EXPECT_EQ(w.selectedDaemon(), 0);
}

// Saving a filter preset rebuilds the presets menu only: the menu bar and the context menus keep
// one copy of each entry (it used to rebuild every menu, adding them all again).
TEST_F(InspectorModels, SavingAPresetAddsItOnceAndDuplicatesNoMenu) {
  MainWindow w(session_.get());
  auto saveAction = [&]() -> QAction* {
    for (QAction* a : w.findChildren<QAction*>()) {
      if (a->text() == "Save the current filter as a preset") return a;
    }
    return nullptr;
  };
  auto presetCount = [&](const QString& expr) {
    int n = 0;
    for (QAction* a : w.findChildren<QAction*>()) n += a->text() == expr;
    return n;
  };
  const int menus = static_cast<int>(w.menuBar()->actions().size());
  const int topology_actions = static_cast<int>(w.topologyView()->actions().size());
  const QString expr = "code:invalid latency>1ms";
  ASSERT_EQ(presetCount(expr), 0);
  for (int i = 0; i < 2; ++i) {  // saving the same preset twice keeps one
    w.filterBox()->setEditText(expr);
    QAction* save = saveAction();
    ASSERT_NE(save, nullptr);
    save->trigger();
  }
  EXPECT_EQ(presetCount(expr), 1);
  EXPECT_TRUE(QSettings().value("filter/presets").toStringList().contains(expr));
  EXPECT_EQ(w.menuBar()->actions().size(), menus);
  EXPECT_EQ(w.topologyView()->actions().size(), topology_actions);
}

// RFC 4180 reader for the tests: quoted fields, doubled quotes, CRLF.
std::vector<QStringList> parseCsv(const QByteArray& bytes) {
  const QString s = QString::fromUtf8(bytes);
  std::vector<QStringList> rows;
  QStringList row;
  QString field;
  bool quoted = false, any = false;
  for (qsizetype i = 0; i < s.size(); ++i) {
    const QChar c = s[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < s.size() && s[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        field += c;
      }
      continue;
    }
    if (c == '"') {
      quoted = true;
      any = true;
    } else if (c == ',') {
      row << field;
      field.clear();
      any = true;
    } else if (c == '\r') {
      continue;
    } else if (c == '\n') {
      row << field;
      rows.push_back(row);
      row.clear();
      field.clear();
      any = false;
    } else {
      field += c;
      any = true;
    }
  }
  if (any) {
    row << field;
    rows.push_back(row);
  }
  return rows;
}

TEST(InspectorCsv, FieldQuoting) {
  EXPECT_EQ(csvField("plain"), "plain");
  EXPECT_EQ(csvField("a,b"), "\"a,b\"");
  EXPECT_EQ(csvField("say \"hi\""), "\"say \"\"hi\"\"\"");
  EXPECT_EQ(csvField("two\nlines"), "\"two\nlines\"");
  EXPECT_EQ(parseCsv("a,\"b,\"\"c\"\"\",\r\nx,y,z\r\n"),
            (std::vector<QStringList>{{"a", "b,\"c\"", ""}, {"x", "y", "z"}}));
}

TEST_F(InspectorModels, ExportCsvOfTheShownRowsRoundTrips) {
  auto snap = snapshot();
  snap->mutable_domains(0)->set_name("vm,\"one\"");  // a comma and quotes
  fake_->snapshot(snap);
  auto stats = std::make_shared<v1::Stats>();
  auto* h = stats->add_handlers();
  h->set_handler(1);
  h->set_name("resolver, \"fast\"");
  fake_->status([&](ConnStatus& st) { st.stats = stats; });
  for (uint64_t id = 900; id < 930; ++id) rec_.group(id, id % 2 ? 1 : 2, id % 2 ? 1 : 2, std::nullopt, 2, id % 3 == 0);
  fake_->events(rec_.take());
  session_->tick();
  // The current (filtered, sorted) view.
  ASSERT_TRUE(session_->setFilter("domain:1").expr.has_value());
  settle();
  session_->outstandingProxy()->sort(OutstandingModel::kGroup, Qt::DescendingOrder);
  const int shown = session_->outstandingProxy()->rowCount();
  ASSERT_GT(shown, 5);
  ASSERT_LT(shown, session_->outstanding()->rowCount());

  QTemporaryDir dir;
  CsvExporter ex(session_.get());
  QSignalSpy done(&ex, &CsvExporter::finished);
  const QString groups_path = dir.filePath("groups.csv");
  ASSERT_TRUE(ex.start(CsvExporter::Kind::kOutstanding, groups_path));
  QString err;
  EXPECT_FALSE(ex.start(CsvExporter::Kind::kEvents, dir.filePath("x.csv"), &err));  // one at a time
  EXPECT_FALSE(err.isEmpty());
  ASSERT_TRUE(waitFor([&] { return done.count() == 1; }));
  ASSERT_TRUE(done.at(0).at(0).toBool()) << done.at(0).at(3).toString().toStdString();
  EXPECT_EQ(done.at(0).at(2).toULongLong(), static_cast<qulonglong>(shown));
  QFile gf(groups_path);
  ASSERT_TRUE(gf.open(QIODevice::ReadOnly));
  auto rows = parseCsv(gf.readAll());
  ASSERT_EQ(rows.size(), static_cast<size_t>(shown) + 1);
  EXPECT_EQ(rows[0].join(","), "daemon,group,device,rid,pasid,prgi,first_addr,perm,requests,domain,domain_name,state,"
                               "handler,first_arrival_ns,age_ns,deadline_ns");
  bool saw_handler = false;
  for (int r = 0; r < shown; ++r) {
    const QStringList& f = rows[static_cast<size_t>(r) + 1];
    ASSERT_EQ(f.size(), 16);
    const QModelIndex pi = session_->outstandingProxy()->index(r, 0);
    const GroupRow& g = session_->outstanding()->row(session_->outstandingProxy()->mapToSource(pi).row());
    EXPECT_EQ(f[0], "0:fake.sock");
    EXPECT_EQ(f[1].toULongLong(), g.id);
    EXPECT_EQ(f[2].toUInt(), g.device);
    EXPECT_EQ(f[3], ridText(0x0300 + g.device * 8));
    EXPECT_EQ(f[4], g.has_pasid ? QString::number(g.pasid) : QString());
    EXPECT_EQ(f[5].toUInt(), g.grpid);
    EXPECT_EQ(f[6], "0x" + QString::number(g.first_addr, 16));
    EXPECT_EQ(f[7], permText(g.perm));
    EXPECT_EQ(f[8].toUInt(), g.nreq);
    EXPECT_EQ(f[9], "1");
    EXPECT_EQ(f[10], "vm,\"one\"");
    EXPECT_EQ(f[11], session_->outstandingProxy()->index(r, OutstandingModel::kState).data().toString());
    if (g.has_handler) {
      EXPECT_EQ(f[12], "resolver, \"fast\"");
      saw_handler = true;
    }
    EXPECT_EQ(f[13].toLongLong(), g.first_arrival_ns);
    EXPECT_GE(f[14].toLongLong(), 0);
    EXPECT_EQ(f[15].toLongLong(), g.deadline_ns);
  }
  EXPECT_TRUE(saw_handler);

  // The event log as shown (filter domain:1).
  const QString events_path = dir.filePath("events.csv");
  ASSERT_TRUE(ex.start(CsvExporter::Kind::kEvents, events_path));
  ASSERT_TRUE(waitFor([&] { return done.count() == 2; }));
  ASSERT_TRUE(done.at(1).at(0).toBool()) << done.at(1).at(3).toString().toStdString();
  QFile ef(events_path);
  ASSERT_TRUE(ef.open(QIODevice::ReadOnly));
  rows = parseCsv(ef.readAll());
  auto* log = session_->log();
  ASSERT_GT(log->rowCount(), 20);
  ASSERT_EQ(rows.size(), static_cast<size_t>(log->rowCount()) + 1);
  EXPECT_EQ(rows[0].join(","), "seq,time_ns,daemon,type,group,device,domain,pasid,prgi,addr,detail");
  bool saw_quoted_detail = false;
  for (int r = 0; r < log->rowCount(); ++r) {
    const QStringList& f = rows[static_cast<size_t>(r) + 1];
    ASSERT_EQ(f.size(), 11);
    const Event& e = log->rowAt(r).e;
    EXPECT_EQ(f[0].toULongLong(), e.seq);
    EXPECT_EQ(f[1].toLongLong(), e.time_ns);
    for (int c : {EventLogModel::kDaemon, EventLogModel::kType, EventLogModel::kGroup, EventLogModel::kDevice,
                  EventLogModel::kDomain, EventLogModel::kPasid, EventLogModel::kPrgi, EventLogModel::kAddr,
                  EventLogModel::kDetail}) {
      EXPECT_EQ(f[c], log->index(r, c).data().toString()) << "row " << r << " column " << c;
    }
    if (e.type == EventType::kHandlerVerdict) {
      EXPECT_TRUE(f[10].startsWith("resolver, \"fast\": "));
      saw_quoted_detail = true;
    }
  }
  EXPECT_TRUE(saw_quoted_detail);
  EXPECT_FALSE(QFile::exists(events_path + ".part"));
}

TEST_F(InspectorModels, ExportCsvIsCancellable) {
  fake_->snapshot(snapshot());
  for (int round = 0; round < 4; ++round) {
    for (int i = 0; i < 10000; ++i) rec_.group(10000 + static_cast<uint64_t>(round) * 10000 + static_cast<uint64_t>(i), 1, 1, std::nullopt, 1, true);
    fake_->events(rec_.take());
    session_->tick();
  }
  ASSERT_EQ(session_->log()->rowCount(), 4 * 10000 * 5);
  QTemporaryDir dir;
  const QString path = dir.filePath("big.csv");
  CsvExporter ex(session_.get());
  QSignalSpy done(&ex, &CsvExporter::finished);
  QSignalSpy progress(&ex, &CsvExporter::progress);
  ASSERT_TRUE(ex.start(CsvExporter::Kind::kEvents, path));
  EXPECT_TRUE(ex.busy());
  EXPECT_EQ(ex.total(), 200000u);
  ex.cancel();
  ASSERT_TRUE(waitFor([&] { return done.count() == 1; }));
  EXPECT_FALSE(done.at(0).at(0).toBool());
  EXPECT_EQ(done.at(0).at(3).toString(), "cancelled");
  EXPECT_FALSE(ex.busy());
  EXPECT_FALSE(QFile::exists(path));
  EXPECT_FALSE(QFile::exists(path + ".part"));
  // And in full, with progress reports on the way.
  ASSERT_TRUE(ex.start(CsvExporter::Kind::kEvents, path));
  ASSERT_TRUE(waitFor([&] { return done.count() == 2; }));
  EXPECT_TRUE(done.at(1).at(0).toBool());
  EXPECT_GE(progress.count(), 3);  // the start, and every 65,536 rows
  QFile f(path);
  ASSERT_TRUE(f.open(QIODevice::ReadOnly));
  EXPECT_EQ(f.readAll().count('\n'), 200001);
}

TEST_F(InspectorModels, ExportFromTheWindowReportsInTheStatusBar) {
  MainWindow w(session_.get());
  fake_->snapshot(snapshot());
  for (uint64_t id = 950; id < 960; ++id) rec_.group(id, 1, 1, std::nullopt, 1, id % 2 == 0);
  fake_->events(rec_.take());
  session_->tick();
  QTemporaryDir dir;
  const QString path = dir.filePath("log.csv");
  QSignalSpy done(w.exporter(), &CsvExporter::finished);
  ASSERT_TRUE(w.exportCsv(CsvExporter::Kind::kEvents, path));
  EXPECT_TRUE(w.statusBar()->currentMessage().startsWith("exporting CSV"));
  ASSERT_TRUE(waitFor([&] { return done.count() == 1; }));
  EXPECT_TRUE(w.statusBar()->currentMessage().startsWith(QStringLiteral("exported %1 rows").arg(session_->log()->rowCount())))
      << w.statusBar()->currentMessage().toStdString();
  EXPECT_TRUE(QFile::exists(path));
}

// An offline source: no stub, the detail comes from the event history.
class OfflineFake : public FakeTransport {
 public:
  using FakeTransport::FakeTransport;
  bool live() const override { return false; }
};

TEST(InspectorDetail, OfflineDetailLoadsInACancellableJob) {
  Session session(1'000'000);
  Tester t1(session.outstanding(), Tester::FailureReportingMode::Fatal);
  auto t = std::make_unique<OfflineFake>("capture.iopfcap");
  auto* fake = t.get();
  session.addTransport(std::move(t));
  fake->snapshot(snapshot());
  Recorder rec;
  // A big history: 100,000 groups of 2 requests (600,000 events).
  constexpr uint64_t kGroups = 100000;
  for (uint64_t id = 1; id <= kGroups; ++id) rec.group(id, 1 + id % 2, 1 + id % 2, std::nullopt, 2, true, 0, 0);
  fake->events(rec.take());
  session.tick();
  ASSERT_EQ(session.store().kept(), kGroups * 6);

  DetailPane pane(&session);
  QSignalSpy loaded(&pane, &DetailPane::groupLoaded);
  // Quick selections: each starts a job and returns at once, nothing is rendered in between.
  for (uint64_t id : {kGroups - 3, kGroups - 2, kGroups - 1}) {
    pane.showGroup(0, id);
    EXPECT_TRUE(pane.loading());
    EXPECT_FALSE(pane.loaded());
    EXPECT_EQ(loaded.count(), 0);  // the scan did not run on this (the GUI) thread
  }
  EXPECT_EQ(pane.jobsStarted(), 3u);
  ASSERT_TRUE(waitFor([&] { return pane.loaded() && pane.jobsRunning() == 0 && pane.jobsDropped() == 2; }));
  // Let any late result arrive: still only the last selection was applied.
  QCoreApplication::processEvents();
  EXPECT_EQ(loaded.count(), 1);
  EXPECT_FALSE(pane.loading());
  EXPECT_EQ(pane.current().id(), kGroups - 1);
  EXPECT_EQ(pane.current().requests_size(), 2);
  EXPECT_EQ(pane.current().code(), v1::RESPONSE_CODE_SUCCESS);
  const v1::Group expect = groupFromEvents(session.store(), 0, kGroups - 1);
  EXPECT_EQ(pane.current().SerializeAsString(), expect.SerializeAsString());
  EXPECT_GT(pane.tree()->topLevelItemCount(), 0);
}

}  // namespace
}  // namespace iopf::inspector
