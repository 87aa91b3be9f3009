// End to end: a real `iopfd --demo` on a temporary socket and the inspector (offscreen) connected to
// it. Compares what the views show with `iopfctl --json`, answers a group from the UI, survives a
// dropped stream (resume) and a daemon restart (new snapshot after a gap row).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <QApplication>
#include <QElapsedTimer>
#include <QJsonArray>
#include <QJsonDocument>
#include <QJsonObject>
#include <QTemporaryDir>
#include <QThread>
#include <cstdio>
#include <functional>
#include <set>

#include "detail.h"
#include "main_window.h"
#include "session.h"

namespace iopf::inspector {
namespace {

class InspectorE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.isValid());
    sock_ = dir_.filePath("iopfd.sock").toStdString();
    addr_ = "unix:" + sock_;
    startDaemon();
  }
  void TearDown() override { stopDaemon(); }

  void startDaemon() {
    const std::string log = dir_.filePath("iopfd.log").toStdString();
    pid_ = fork();
    if (pid_ == 0) {
      FILE* f = std::freopen(log.c_str(), "a", stderr);
      (void)f;
      execl(IOPFD_BIN, IOPFD_BIN, "--demo", "--listen", addr_.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    ASSERT_GT(pid_, 0);
    ASSERT_TRUE(waitFor([&] { return ctl("health").first == 0; }, 20000)) << "iopfd did not serve";
  }
  void stopDaemon() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      int st = 0;
      waitpid(pid_, &st, 0);
      pid_ = -1;
    }
  }
  // Runs iopfctl --json; returns the exit code and stdout.
  std::pair<int, std::string> ctl(const std::string& args) {
    const std::string cmd = std::string(IOPFCTL_BIN) + " --connect " + addr_ + " --json " + args + " 2>/dev/null";
    FILE* p = popen(cmd.c_str(), "r");
    std::string out;
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    const int rc = pclose(p);
    return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, out};
  }
  QJsonObject ctlJson(const std::string& args) {
    auto [rc, out] = ctl(args);
    EXPECT_EQ(rc, 0) << args;
    return QJsonDocument::fromJson(QByteArray::fromStdString(out)).object();
  }
  // Runs the event loop until `cond` holds or the deadline passes.
  static bool waitFor(const std::function<bool()>& cond, int ms) {
    QElapsedTimer t;
    t.start();
    while (t.elapsed() < ms) {
      if (cond()) return true;
      QApplication::processEvents(QEventLoop::AllEvents, 20);
      QThread::msleep(10);
    }
    return cond();
  }

  QTemporaryDir dir_;
  std::string sock_, addr_;
  pid_t pid_ = -1;
};

TEST_F(InspectorE2E, ViewsMatchTheDaemonActionsReachItAndRestartsAreSurvived) {
  Session session;
  MainWindow w(&session);
  std::vector<QString> questions;
  w.setConfirm([&](const QString& q) {
    questions.push_back(q);
    return true;
  });
  w.show();
  ASSERT_TRUE(w.connectTo(QString::fromStdString(addr_)));
  session.startTicking(50);
  const DaemonState& d = session.daemon(0);
  ASSERT_TRUE(waitFor([&] { return d.status.state == ConnState::kStreaming && !d.devices.empty() && session.totalEvents() > 500; }, 20000))
      << d.status.message;
  ASSERT_TRUE(waitFor([&] { return d.status.health == Health::kServing; }, 5000));

  // Devices and domains: the same as iopfctl's.
  const QJsonArray devices = ctlJson("devices")["devices"].toArray();
  const QJsonArray domains = ctlJson("domains")["domains"].toArray();
  ASSERT_FALSE(devices.isEmpty());
  ASSERT_FALSE(domains.isEmpty());
  EXPECT_EQ(d.devices.size(), static_cast<size_t>(devices.size()));
  for (const auto& v : devices) {
    const auto o = v.toObject();
    auto it = d.devices.find(static_cast<uint32_t>(o["id"].toInt()));
    ASSERT_NE(it, d.devices.end());
    EXPECT_EQ(QString::fromStdString(it->second.name()), o["name"].toString());
  }
  // The topology shows every domain under the daemon node, labelled with its name.
  const QModelIndex root = session.topology()->index(0, 0);
  std::set<QString> labels;
  for (int r = 0; r < session.topology()->rowCount(root); ++r) labels.insert(session.topology()->index(r, 0, root).data().toString());
  for (const auto& v : domains) {
    const auto o = v.toObject();
    bool found = false;
    for (const auto& l : labels) found |= l.startsWith(QStringLiteral("domain %1 · %2").arg(o["id"].toInt()).arg(o["name"].toString()));
    EXPECT_TRUE(found) << o["name"].toString().toStdString();
  }
  // Open groups: every group iopfctl lists is (or was, if answered since) in the inspector.
  const QJsonArray open = ctlJson("outstanding")["groups"].toArray();
  ASSERT_TRUE(waitFor([&] {
    for (const auto& v : open) {
      const uint64_t id = v.toObject()["id"].toString().toULongLong();
      bool seen = false;
      for (const auto& g : session.outstanding()->rows()) seen |= g.id == id && !g.dead;
      for (uint64_t i = session.store().base(); !seen && i < session.store().end(); ++i) {
        seen = session.store().at(i).e.group == id && session.store().at(i).e.type == EventType::kResponded;
      }
      if (!seen) return false;
    }
    return true;
  }, 10000)) << open.size() << " groups listed by iopfctl";
  std::printf("e2e: %d devices, %d domains, %d groups open per iopfctl, %d rows in the inspector\n",
              static_cast<int>(devices.size()), static_cast<int>(domains.size()), static_cast<int>(open.size()),
              session.outstanding()->rowCount());

  // A manual respond from the UI reaches the daemon: GetGroup says origin operator.
  bool answered = false;
  uint64_t answered_id = 0;
  for (int attempt = 0; attempt < 40 && !answered; ++attempt) {
    ASSERT_TRUE(waitFor([&] { return session.outstandingProxy()->rowCount() > 0; }, 10000));
    // The oldest open group has the best chance to still be open when the call lands.
    const QModelIndex first = session.outstandingProxy()->index(0, 0);
    const QString key = first.data(OutstandingModel::kKeyRole).toString();
    const uint64_t id = key.section(':', 1, 1).toULongLong();
    ASSERT_TRUE(w.selectGroup(0, id));
    bool finished = false, ok = false;
    auto c = QObject::connect(&w, &MainWindow::actionFinished, [&](const QString&, bool k, const QString&) {
      finished = true;
      ok = k;
    });
    w.respondSelected(v1::RESPONSE_CODE_SUCCESS);
    ASSERT_TRUE(waitFor([&] { return finished; }, 10000));
    QObject::disconnect(c);
    if (ok) {
      answered = true;
      answered_id = id;
    }
  }
  ASSERT_TRUE(answered) << "no group stayed open long enough to answer it";
  ASSERT_FALSE(questions.empty());
  EXPECT_TRUE(questions.back().contains("Respond SUCCESS"));
  const QJsonObject g = ctlJson("group " + std::to_string(answered_id));
  EXPECT_EQ(g["origin"].toString(), "ORIGIN_OPERATOR");
  EXPECT_EQ(g["code"].toString(), "RESPONSE_CODE_SUCCESS");
  // …and the inspector saw the operator's response in the stream.
  EXPECT_TRUE(waitFor([&] {
    for (uint64_t i = session.store().base(); i < session.store().end(); ++i) {
      const Event& e = session.store().at(i).e;
      if (e.group == answered_id && e.type == EventType::kResponded) return e.origin == v1::ORIGIN_OPERATOR;
    }
    return false;
  }, 5000));
  EXPECT_TRUE(waitFor([&] { return w.detail()->loaded(); }, 5000));

  // PauseDomain: works, or (daemon without it) fails with a message that says so.
  {
    bool finished = false, ok = false;
    QString msg;
    auto c = QObject::connect(&w, &MainWindow::actionFinished, [&](const QString&, bool k, const QString& m) {
      finished = true;
      ok = k;
      msg = m;
    });
    w.pauseSelectedDomain(true);
    ASSERT_TRUE(waitFor([&] { return finished; }, 10000));
    if (!ok) {
      EXPECT_TRUE(msg.contains("PauseDomain")) << msg.toStdString();
      EXPECT_TRUE(msg.contains("not implemented by this daemon") || msg.contains("refused")) << msg.toStdString();
    } else {
      finished = false;
      w.pauseSelectedDomain(false);
      ASSERT_TRUE(waitFor([&] { return finished; }, 10000));
    }
    QObject::disconnect(c);
  }

  // A filter pushed to the daemon: only domain 2 arrives (requests carry no domain before
  // assembly, so the daemon's domain filter leaves them out), the views follow.
  {
    const uint64_t reconnects = d.status.reconnects;
    ASSERT_TRUE(session.setFilter("domain:2").expr.has_value());
    ASSERT_TRUE(waitFor([&] { return d.status.reconnects > reconnects && d.status.state == ConnState::kStreaming; }, 10000));
    const uint64_t from = session.store().end();
    ASSERT_TRUE(waitFor([&] { return session.store().end() > from + 200 && !session.refiltering(); }, 15000));
    for (uint64_t i = from; i < session.store().end(); ++i) {
      const Event& e = session.store().at(i).e;
      if (e.type != EventType::kGap) {
        EXPECT_EQ(e.domain, 2u) << "seq " << e.seq << " type " << static_cast<int>(e.type);
      }
    }
    for (int r = 0; r < session.outstandingProxy()->rowCount(); ++r) {
      const QModelIndex src = session.outstandingProxy()->mapToSource(session.outstandingProxy()->index(r, 0));
      EXPECT_EQ(session.outstanding()->row(src.row()).domain, 2u);
    }
    for (int r = 0; r < session.log()->rowCount(); ++r) {
      const Event& e = session.log()->rowAt(r).e;
      if (e.type != EventType::kGap && e.type != EventType::kRequest) {
        EXPECT_EQ(e.domain, 2u);
      }
    }
    ASSERT_TRUE(session.setFilter("").expr.has_value());
    ASSERT_TRUE(waitFor([&] { return d.status.state == ConnState::kStreaming && !session.refiltering(); }, 10000));
  }

  // A dropped stream resumes at last seq + 1 without a gap.
  auto* grpc_t = dynamic_cast<GrpcTransport*>(session.daemon(0).transport.get());
  ASSERT_NE(grpc_t, nullptr);
  const uint64_t gaps_before = d.status.gaps;
  grpc_t->dropStreamForTest();
  ASSERT_TRUE(waitFor([&] { return d.status.resumes >= 1 && d.status.state == ConnState::kStreaming; }, 15000));
  const uint64_t events_at_resume = session.totalEvents();
  ASSERT_TRUE(waitFor([&] { return session.totalEvents() > events_at_resume + 100; }, 10000));
  EXPECT_EQ(d.status.gaps, gaps_before);

  // The daemon restarts: the inspector reconnects, marks the break with a gap row and shows the
  // new daemon's state from a fresh snapshot.
  const uint64_t reconnects = d.status.reconnects;
  stopDaemon();
  ASSERT_TRUE(waitFor([&] { return d.status.state == ConnState::kBackoff; }, 15000));
  startDaemon();
  ASSERT_TRUE(waitFor([&] { return d.status.reconnects > reconnects && d.status.state == ConnState::kStreaming; }, 30000))
      << d.status.message;
  const uint64_t after = session.totalEvents();
  ASSERT_TRUE(waitFor([&] { return session.totalEvents() > after + 100 && !d.devices.empty(); }, 15000));
  bool restart_gap = false;
  for (uint64_t i = session.store().base(); i < session.store().end(); ++i) {
    const Event& e = session.store().at(i).e;
    restart_gap |= e.type == EventType::kGap && e.value < 0;
  }
  EXPECT_TRUE(restart_gap) << "no gap row marks the restart";
  const QJsonArray devices2 = ctlJson("devices")["devices"].toArray();
  EXPECT_EQ(d.devices.size(), static_cast<size_t>(devices2.size()));
  session.stopAll();
}

}  // namespace
}  // namespace iopf::inspector
