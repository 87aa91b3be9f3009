// Every inspector model under QAbstractItemModelTester, fed by a fake transport with recorded batches.
#include <gtest/gtest.h>

#include <QAbstractItemModelTester>
#include <QCoreApplication>
#include <QTemporaryDir>
#include <QThread>
#include <set>

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

}  // namespace
}  // namespace iopf::inspector
