// The inspector's state on the GUI thread: the connected daemons, the event history and the models.
// tick() (a coalescing QTimer, 50–100 ms) drains every transport's inbox and applies it in one pass.
#pragma once

#include <QElapsedTimer>
#include <QFuture>
#include <QObject>
#include <QTimer>
#include <atomic>
#include <map>
#include <memory>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "iopf/api/filter_expr.h"
#include "models.h"
#include "recorder.h"
#include "transport.h"

namespace iopf::inspector {

struct DaemonState {
  std::unique_ptr<Transport> transport;  // null once disconnected (the slot stays: indices are stable)
  std::string target;           // transport->target(), kept after a disconnect
  bool live = true;             // transport->live(), kept after a disconnect
  bool connected = true;        // false after Session::disconnectDaemon()
  ConnStatus status;
  std::map<uint32_t, v1::Device> devices;
  std::map<uint32_t, v1::Domain> domains;
  std::vector<v1::Attachment> attachments;
  std::map<uint32_t, std::string> handler_names;  // from polled stats
  int64_t latest_ns = 0;        // newest daemon time seen (events, snapshot)
  int64_t latest_local_ms = 0;  // local steady ms when latest_ns was seen (ticking ages)
  uint64_t last_applied_seq = 0;
  bool have_seq = false;
  std::string label;            // short name for views
};

// Per-second counters for the charts, keyed by daemon time.
struct ChartBucket {
  std::map<std::pair<int, uint32_t>, uint64_t> faults, responses;  // (daemon, domain)
  std::vector<int64_t> latencies;
  uint64_t outstanding = 0;
};

class Session : public QObject {
  Q_OBJECT
 public:
  explicit Session(size_t event_cap = 1'000'000, QObject* parent = nullptr);
  ~Session() override;

  // Takes ownership and starts it; returns the daemon index.
  int addTransport(std::unique_ptr<Transport> t);
  void stopAll();
  // Disconnects a daemon (or closes a capture): its transport is stopped and joined on a worker
  // thread (the GUI thread does not wait for the reader and poller), its open groups leave the
  // outstanding table, its node leaves the topology, its row leaves the connections, plugins and
  // handlers panels. Its events stay in the history and the log (their daemon column says
  // "disconnected"). The index is never reused. Returns false if there is no such connected daemon.
  bool disconnectDaemon(int daemon);
  bool connected(int daemon) const {
    return daemon >= 0 && daemon < daemonCount() && daemons_[static_cast<size_t>(daemon)]->connected;
  }
  int connectedCount() const;
  // Transports being stopped by a worker right now (0 once every disconnect has joined its threads).
  int stoppingTransports() const { return stopping_->load(); }
  int daemonCount() const { return static_cast<int>(daemons_.size()); }
  const DaemonState& daemon(int i) const { return *daemons_[static_cast<size_t>(i)]; }
  DaemonState& daemon(int i) { return *daemons_[static_cast<size_t>(i)]; }

  void startTicking(int interval_ms = 80);
  // Drains the transports and applies everything (the timer calls it; tests call it directly).
  void tick();

  // Filter: returns the parse result; a valid expression is applied (pushed to the daemons where
  // possible, the rest client side).
  api::filter::ParseResult setFilter(const QString& text);
  const api::filter::Expr& filter() const { return filter_; }
  bool filterFullyPushed() const { return filter_pushed_complete_; }
  void setScope(const Scope& scope);
  const Scope& scope() const { return scope_; }
  bool refiltering() const { return refilter_job_ != 0; }

  bool acceptsGroup(const GroupRow& g) const;
  bool acceptsEvent(const LogRow& r) const;
  api::filter::Facts factsOf(const LogRow& r) const;
  api::filter::Facts factsOf(const GroupRow& g) const;
  // Daemon "now" for ages: newest daemon time plus local time since then (live); newest (offline).
  int64_t daemonNow(int daemon) const;
  std::optional<uint32_t> ridOf(int daemon, uint32_t device) const;
  QString handlerName(int daemon, uint32_t handler) const;

  const EventStore& store() const { return store_; }
  OutstandingModel* outstanding() { return outstanding_; }
  const OutstandingModel* outstanding() const { return outstanding_; }
  OutstandingProxy* outstandingProxy() { return proxy_; }
  EventLogModel* log() { return log_; }
  TopologyModel* topology() { return topology_; }
  ConnectionsModel* connections() { return connections_; }
  PluginsModel* plugins() { return plugins_; }
  HandlersModel* handlers() { return handlers_; }
  const std::map<int64_t, ChartBucket>& chartBuckets() const { return buckets_; }

  // Detail pane: events of this group raise watchedGroupTouched() once per tick.
  void watchGroup(int daemon, uint64_t group) {
    watched_daemon_ = daemon;
    watched_group_ = group;
  }

  // Recording the event stream of one daemon to a capture file.
  absl::Status startRecording(int daemon, const std::string& path);
  absl::Status stopRecording();
  bool recording() const { return recorder_ != nullptr; }
  uint64_t recordedEvents() const { return recorder_ ? recorder_->records() : 0; }

  // Tick statistics (GUI thread time of the last tick, events applied).
  qint64 lastTickNs() const { return last_tick_ns_; }
  uint64_t totalEvents() const { return total_events_; }

 signals:
  void ticked(qint64 gui_ns, qulonglong events);
  void structureChanged();
  void statusChanged();
  void watchedGroupTouched();
  void refilterFinished();
  void daemonDisconnected(int daemon);
  void transportStopped(int daemon);  // the worker joined the transport's threads

 private:
  void applySnapshot(int d, const v1::Snapshot& s);
  void applyEvent(int d, const Event& e);
  void startRefilter();
  void finishRefilter(uint64_t job, std::vector<uint64_t> rows, uint64_t scanned_end, uint64_t matched);
  void refreshPanels(bool force = false);

  std::vector<std::unique_ptr<DaemonState>> daemons_;
  EventStore store_;
  OutstandingModel* outstanding_;
  OutstandingProxy* proxy_;
  EventLogModel* log_;
  TopologyModel* topology_;
  ConnectionsModel* connections_;
  PluginsModel* plugins_;
  HandlersModel* handlers_;
  QTimer timer_;
  api::filter::Expr filter_;
  bool filter_pushed_complete_ = true;
  Scope scope_;
  bool structure_dirty_ = false;
  std::unordered_set<uint64_t> known_triples_;
  // Requests waiting for their group (the router assigns group and domain when it queues the group).
  struct Partial {
    int64_t first_arrival_ns = 0, last_arrival_ns = 0;
    uint64_t first_addr = 0;
    uint32_t n = 0;
    uint8_t perm = 0;
  };
  static uint64_t partialKey(int d, const Event& e);
  std::unordered_map<uint64_t, Partial> partials_;
  std::map<int64_t, ChartBucket> buckets_;
  int watched_daemon_ = -1;
  uint64_t watched_group_ = 0;
  bool watched_touched_ = false;
  std::unique_ptr<Recorder> recorder_;
  int recording_daemon_ = -1;
  uint64_t refilter_job_ = 0;
  std::shared_ptr<std::atomic<uint64_t>> current_job_;
  qint64 last_tick_ns_ = 0;
  uint64_t total_events_ = 0;
  std::vector<Chunk> chunks_;  // reused between ticks
  std::map<int, std::pair<const void*, const void*>> panel_sources_;  // daemon → (stats, plugins) shown
  std::shared_ptr<std::atomic<int>> stopping_ = std::make_shared<std::atomic<int>>(0);
  std::vector<QFuture<void>> stoppers_;  // disconnects in flight; the destructor waits for them
};

}  // namespace iopf::inspector
