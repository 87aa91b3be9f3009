// The detail pane: one group, every request in arrival order, the transitions with their times, the
// handler trace with per-handler time, the response code and origin. Live daemons answer GetGroup
// (in a worker, stale answers dropped); offline, or once the daemon forgot the group, the pane
// rebuilds it from the event history. It only changes when the shown group gets events.
#pragma once

#include <QLabel>
#include <QTimer>
#include <QTreeWidget>
#include <QWidget>
#include <atomic>
#include <functional>
#include <memory>

#include "iopf/v1/router.pb.h"
#include "models.h"

namespace iopf::inspector {

class Session;

class DetailPane : public QWidget {
  Q_OBJECT
 public:
  explicit DetailPane(Session* session, QWidget* parent = nullptr);
  ~DetailPane() override { cancel_->store(UINT64_MAX); }  // running jobs stop at their next check
  void showGroup(int daemon, uint64_t group);
  int daemon() const { return daemon_; }
  uint64_t group() const { return group_; }
  bool loaded() const { return loaded_; }
  // A job is rebuilding the shown group (GetGroup and/or a scan of the event history).
  bool loading() const { return loading_; }
  // Jobs: started, whose result was dropped (a newer selection came first), still running.
  uint64_t jobsStarted() const { return jobs_started_; }
  uint64_t jobsDropped() const { return jobs_dropped_; }
  int jobsRunning() const { return running_->load(); }
  const v1::Group& current() const { return current_; }
  QTreeWidget* tree() const { return tree_; }

 signals:
  void groupLoaded();

 private:
  void refresh();
  void render(const v1::Group& g, const QString& source);
  Session* s_;
  QLabel* header_;
  QTreeWidget* tree_;
  QTimer throttle_;
  int daemon_ = -1;
  uint64_t group_ = 0;
  uint64_t job_ = 0;
  std::shared_ptr<std::atomic<uint64_t>> cancel_ = std::make_shared<std::atomic<uint64_t>>(0);
  std::shared_ptr<std::atomic<int>> running_ = std::make_shared<std::atomic<int>>(0);
  uint64_t jobs_started_ = 0, jobs_dropped_ = 0;
  bool loaded_ = false;
  bool loading_ = false;
  bool refresh_pending_ = false;  // the group got events while its job ran
  v1::Group current_;
};

// The group as the event history tells it (offline captures, forgotten groups). The view form runs
// in workers: `cancelled` is polled every 16,384 events; when it says so the scan stops and
// *was_cancelled is set (the partial group is to be dropped).
v1::Group groupFromEvents(const EventStore& store, int daemon, uint64_t group);
v1::Group groupFromEvents(const EventStore::View& store, int daemon, uint64_t group, const std::function<bool()>& cancelled,
                          bool* was_cancelled = nullptr);

}  // namespace iopf::inspector
