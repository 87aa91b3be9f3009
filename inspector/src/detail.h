// The detail pane: one group, every request in arrival order, the transitions with their times, the
// handler trace with per-handler time, the response code and origin. Live daemons answer GetGroup
// (in a worker, stale answers dropped); offline, or once the daemon forgot the group, the pane
// rebuilds it from the event history. It only changes when the shown group gets events.
#pragma once

#include <QLabel>
#include <QTimer>
#include <QTreeWidget>
#include <QWidget>
#include <memory>

#include "iopf/v1/router.pb.h"

namespace iopf::inspector {

class Session;

class DetailPane : public QWidget {
  Q_OBJECT
 public:
  explicit DetailPane(Session* session, QWidget* parent = nullptr);
  void showGroup(int daemon, uint64_t group);
  int daemon() const { return daemon_; }
  uint64_t group() const { return group_; }
  bool loaded() const { return loaded_; }
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
  bool loaded_ = false;
  v1::Group current_;
};

// The group as the event history tells it (offline captures, forgotten groups).
v1::Group groupFromEvents(const class EventStore& store, int daemon, uint64_t group);

}  // namespace iopf::inspector
