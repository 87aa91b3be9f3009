// Load test: 100,000 events/s for 10 s through the session and its models with the main window
// (offscreen) attached. Prints the GUI thread's time per tick (p50/p99/max) and the memory with
// 1,000,000 events kept. Figures only, no timing assertions. Run alone: ctest -L load.
#include <gtest/gtest.h>

#include <QApplication>
#include <QElapsedTimer>
#include <QTimer>
#include <algorithm>
#include <atomic>
#include <deque>
#include <cstdio>
#include <fstream>
#include <thread>

#include "main_window.h"
#include "session.h"

namespace iopf::inspector {
namespace {

long rssKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

TEST(InspectorLoad, HundredThousandEventsPerSecond) {
  const int rate = qEnvironmentVariableIntValue("IOPF_LOAD_RATE") > 0 ? qEnvironmentVariableIntValue("IOPF_LOAD_RATE") : 100000;
  const int seconds = qEnvironmentVariableIntValue("IOPF_LOAD_SECONDS") > 0 ? qEnvironmentVariableIntValue("IOPF_LOAD_SECONDS") : 10;
  const long rss0 = rssKb();
  Session session(1'000'000);
  MainWindow window(&session);
  window.setConfirm([](const QString&) { return true; });
  window.resize(1400, 900);
  window.show();
  auto t = std::make_unique<FakeTransport>("load");
  FakeTransport* fake = t.get();
  session.addTransport(std::move(t));
  auto snap = std::make_shared<v1::Snapshot>();
  for (uint32_t i = 1; i <= 4; ++i) {
    auto* d = snap->add_devices();
    d->set_id(i);
    d->set_name("dev" + std::to_string(i));
    auto* m = snap->add_domains();
    m->set_id(i);
    m->set_name("vm" + std::to_string(i));
    m->set_deadline_ns(100'000'000);
    auto* a = snap->add_attachments();
    a->set_device(i);
    a->set_domain(i);
  }
  fake->snapshot(snap);

  // Producer: every 10 ms, rate/100 events: groups of 4 events (request, queued, dispatched,
  // responded), each group answered ~2,000 groups after it opened (so ~2,000 stay open).
  std::atomic<bool> done{false};
  std::thread producer([&] {
    uint64_t seq = 1, group = 1;
    std::deque<Event> open;
    const auto start = std::chrono::steady_clock::now();
    std::vector<Event> batch;
    for (int step = 0; step < seconds * 100; ++step) {
      batch.clear();
      const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                 std::chrono::steady_clock::now() - start).count();
      while (batch.size() + 4 <= static_cast<size_t>(rate / 100)) {
        Event e;
        e.seq = seq++;
        e.time_ns = now_ns;
        e.type = EventType::kRequest;
        e.group = group++;
        e.device = static_cast<uint32_t>(e.group % 4 + 1);
        e.domain = e.device;
        e.pasid = static_cast<uint32_t>(e.group % 16);
        e.flags = event_flag::kPasidValid | event_flag::kLast;
        e.addr = e.group << 12;
        e.perm = 3;
        e.grpid = static_cast<uint32_t>(e.group % 512);
        Event req = e;  // as the router emits it: no group or domain before assembly
        req.group = 0;
        req.domain = 0;
        batch.push_back(req);
        Event q = e;
        q.seq = seq++;
        q.type = EventType::kGroupQueued;
        batch.push_back(q);
        q.seq = seq++;
        q.type = EventType::kDispatched;
        batch.push_back(q);
        open.push_back(e);
        if (open.size() > 2000) {
          Event r = open.front();
          open.pop_front();
          r.seq = seq++;
          r.time_ns = now_ns;
          r.type = EventType::kResponded;
          r.value = now_ns - open.front().time_ns + 1000;
          batch.push_back(r);
        }
      }
      fake->events(batch);
      std::this_thread::sleep_until(start + std::chrono::milliseconds(10 * (step + 1)));
    }
    done = true;
  });

  std::vector<qint64> ticks;
  QObject::connect(&session, &Session::ticked, [&](qint64 ns, qulonglong n) {
    if (n > 0) ticks.push_back(ns);
  });
  session.startTicking(80);
  QElapsedTimer wall;
  wall.start();
  while (!done || session.totalEvents() < session.daemon(0).status.events || session.totalEvents() == 0) {
    QApplication::processEvents(QEventLoop::AllEvents, 20);
    if (wall.elapsed() > (seconds + 60) * 1000) break;
  }
  producer.join();
  for (int i = 0; i < 5; ++i) {
    session.tick();
    QApplication::processEvents();
  }
  std::sort(ticks.begin(), ticks.end());
  auto pct = [&](double q) {
    return ticks.empty() ? 0.0 : static_cast<double>(ticks[std::min(ticks.size() - 1, static_cast<size_t>(q * static_cast<double>(ticks.size())))]) / 1e6;
  };
  const long rss = rssKb();
  std::printf("inspector load: %d events/s for %d s: %llu events, %zu ticks of 80 ms\n", rate, seconds,
              static_cast<unsigned long long>(session.totalEvents()), ticks.size());
  std::printf("inspector load: GUI time per tick p50 %.2f ms, p99 %.2f ms, max %.2f ms\n", pct(0.5), pct(0.99),
              ticks.empty() ? 0.0 : static_cast<double>(ticks.back()) / 1e6);
  std::printf("inspector load: %zu events kept (cap %zu), event store %.1f MiB, process RSS %.1f MiB (+%.1f MiB)\n",
              session.store().kept(), session.store().cap(), static_cast<double>(session.store().memoryBytes()) / 1048576.0,
              static_cast<double>(rss) / 1024.0, static_cast<double>(rss - rss0) / 1024.0);
  std::printf("inspector load: %d open groups, %d log rows\n", session.outstanding()->rowCount(), session.log()->rowCount());
  EXPECT_EQ(session.totalEvents(), session.daemon(0).status.events);
  EXPECT_GE(session.store().kept(), std::min<size_t>(1'000'000, session.totalEvents()));
  EXPECT_NEAR(session.outstanding()->rowCount(), 2000, 1);
}

}  // namespace
}  // namespace iopf::inspector
