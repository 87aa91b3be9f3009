// The inspector's models. All live on the GUI thread and change only inside Session::tick():
// one beginInsertRows/endInsertRows per batch, removals per contiguous range, one dataChanged per
// changed rectangle; data() is O(1) and builds strings only for the cell being drawn.
#pragma once

#include <QAbstractItemModel>
#include <QAbstractTableModel>
#include <QSortFilterProxyModel>
#include <deque>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include "iopf/api/filter_expr.h"
#include "iopf/event_bus.h"
#include "transport.h"

namespace iopf::inspector {

// What the topology selection narrows every view to. daemon < 0: everything.
struct Scope {
  int daemon = -1;
  std::optional<uint32_t> domain, device;
  std::optional<uint32_t> pasid;
  bool rid_only = false;  // the device's RID node (requests without PASID)
  bool operator==(const Scope&) const = default;
};

// One event as the log keeps it.
struct LogRow {
  Event e;
  uint16_t daemon = 0;
};

// Append-only event history in immutable-once-full chunks: the GUI thread appends, workers read a
// snapshot (shared chunks + the end index) without locks. Oldest whole chunks are dropped beyond cap.
class EventStore {
 public:
  static constexpr size_t kChunk = 1u << 16;
  struct Chunk {
    std::vector<LogRow> rows;
  };
  struct View {
    std::vector<std::shared_ptr<const Chunk>> chunks;
    uint64_t base = 0, end = 0;
    const LogRow& at(uint64_t abs) const {
      const uint64_t i = abs - base;
      return chunks[i / kChunk]->rows[i % kChunk];
    }
  };
  explicit EventStore(size_t cap) : cap_(cap) {}
  void append(const LogRow& r);
  const LogRow& at(uint64_t abs) const {
    const uint64_t i = abs - base_;
    return chunks_[i / kChunk]->rows[i % kChunk];
  }
  uint64_t base() const { return base_; }
  uint64_t end() const { return end_; }
  uint64_t total() const { return end_; }  // every event ever appended
  size_t kept() const { return static_cast<size_t>(end_ - base_); }
  size_t cap() const { return cap_; }
  View view() const;
  uint64_t trimBase() const;  // base() after the next trim()
  void trim();                // drops the chunks beyond the cap (after the models let go of them)
  void clear();
  size_t memoryBytes() const { return chunks_.size() * kChunk * sizeof(LogRow); }

 private:
  size_t cap_;
  std::deque<std::shared_ptr<Chunk>> chunks_;
  uint64_t base_ = 0, end_ = 0;
};

// Names, colours and formats the views use (the daemon sends numbers).
QString ridText(uint32_t rid);
QString permText(uint32_t perm);
QString durationText(int64_t ns);
QString eventTypeText(int type);
QString codeText(int code);
QString originText(int origin);
// The event log's Detail cell (also the CSV export's); handler_name matters for verdicts only.
QString eventDetailText(const Event& e, const QString& handler_name);

// ---- Outstanding groups ----

struct GroupRow {
  uint64_t id = 0;
  int64_t first_arrival_ns = 0;
  int64_t last_arrival_ns = 0;
  int64_t deadline_ns = 0;      // absolute, daemon clock; 0 unknown
  uint64_t first_addr = 0;
  uint32_t device = 0, domain = 0, pasid = 0, grpid = 0, nreq = 0;
  uint16_t daemon = 0;
  uint16_t handler = 0;
  uint8_t perm = 0;
  uint8_t state = 0;            // v1::GroupState
  bool has_pasid = false;
  bool has_handler = false;
  bool dead = false;            // responded; removed at the next commit
};

class Session;

class OutstandingModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  enum Column { kDevice, kPasid, kPrgi, kAge, kDeadline, kDomain, kState, kHandler, kReqs, kPerm, kAddr, kGroup, kColumns };
  static constexpr int kSortRole = Qt::UserRole + 1;
  static constexpr int kKeyRole = Qt::UserRole + 2;  // "daemon:group"
  explicit OutstandingModel(const Session* session, QObject* parent = nullptr) : QAbstractTableModel(parent), s_(session) {}
  int rowCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : announced_; }
  int columnCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : kColumns; }
  QVariant data(const QModelIndex& index, int role) const override;
  QVariant headerData(int section, Qt::Orientation o, int role) const override;

  // Session side (GUI thread, inside a tick).
  GroupRow* find(uint16_t daemon, uint64_t id);
  GroupRow& add(const GroupRow& row);       // pending until commit()
  void remove(uint16_t daemon, uint64_t id);  // marks dead
  void touch(const GroupRow* row);          // changed: one dataChanged rectangle at commit()
  void removeDaemon(uint16_t daemon);       // a new snapshot replaces the daemon's groups
  void commit();
  const std::vector<GroupRow>& rows() const { return rows_; }  // [0, rowCount()) are announced
  const GroupRow& row(int r) const { return rows_[static_cast<size_t>(r)]; }
  size_t openCount() const;

 private:
  static uint64_t key(uint16_t d, uint64_t id) { return (static_cast<uint64_t>(d) << 48) ^ id; }
  const Session* s_;
  std::vector<GroupRow> rows_;
  std::unordered_map<uint64_t, size_t> index_;
  int announced_ = 0;
  int changed_lo_ = INT32_MAX, changed_hi_ = -1;
  size_t dead_ = 0;
};

// Sort and client-side filter of the outstanding table: a flat, non-recursive proxy; filter changes
// re-evaluate it once (invalidateFilter), inserts are filtered row by row in O(1).
class OutstandingProxy : public QSortFilterProxyModel {
  Q_OBJECT
 public:
  explicit OutstandingProxy(const Session* session, QObject* parent = nullptr);
  // QSortFilterProxyModel maps its sort column to the source through row 0: a sort chosen while the
  // table is empty sorts nothing until re-mapped. Called after each commit; re-maps once rows exist.
  void ensureSorted();
 protected:
  bool filterAcceptsRow(int row, const QModelIndex& parent) const override;
 private:
  const Session* s_;
  bool mapped_ = false;
};

// ---- Event log ----

class EventLogModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  enum Column { kSeq, kTime, kDaemon, kType, kGroup, kDevice, kDomain, kPasid, kPrgi, kAddr, kDetail, kColumns };
  explicit EventLogModel(const Session* session, QObject* parent = nullptr) : QAbstractTableModel(parent), s_(session) {}
  int rowCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : static_cast<int>(rows_.size()); }
  int columnCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : kColumns; }
  QVariant data(const QModelIndex& index, int role) const override;
  QVariant headerData(int section, Qt::Orientation o, int role) const override;

  // Pause view: rows keep arriving into a pending list, counted by the badge; resume shows them.
  void setPaused(bool paused);
  bool paused() const { return paused_; }
  size_t pendingCount() const { return pending_.size(); }
  void clear();  // the view only; the store keeps history for re-filtering
  void daemonLabelsChanged();  // a daemon was disconnected: its label in the daemon column changed
  uint64_t matchedTotal() const { return matched_total_; }

  // Session side.
  void appendMatched(uint64_t abs) {
    ++matched_total_;
    (paused_ ? pending_ : incoming_).push_back(abs);
  }
  // One front removal for history the store is about to drop, then (insert) one insert per tick.
  void commit(bool insert = true);
  void resetRows(std::vector<uint64_t> rows, uint64_t matched_total);  // a finished re-filter job
  const LogRow& rowAt(int r) const;
  uint64_t absAt(int r) const { return rows_[static_cast<size_t>(r)]; }
  std::vector<uint64_t> shownRows() const { return {rows_.begin(), rows_.end()}; }  // for exports

 private:
  const Session* s_;
  std::deque<uint64_t> rows_;        // absolute indices into the session's EventStore
  std::vector<uint64_t> incoming_, pending_;
  bool paused_ = false;
  uint64_t matched_total_ = 0;
  uint64_t cleared_before_ = 0;      // Clear: rows below this index stay hidden
};

// ---- Topology tree: daemon → domain → device → PASID ----

class TopologyModel : public QAbstractItemModel {
  Q_OBJECT
 public:
  enum Kind : uint8_t { kDaemonNode, kDomainNode, kDeviceNode, kPasidNode };
  struct Node {
    Kind kind = kDaemonNode;
    int daemon = 0;
    uint32_t domain = 0, device = 0, pasid = 0;
    bool rid = false;               // PASID node standing for the RID (no PASID)
    QString label, detail;
    uint64_t count = 0;             // open groups below
    Node* parent = nullptr;
    int row = 0;
    std::vector<std::unique_ptr<Node>> children;
  };
  static constexpr int kScopeRole = Qt::UserRole + 1;
  explicit TopologyModel(const Session* session, QObject* parent = nullptr) : QAbstractItemModel(parent), s_(session) {}
  QModelIndex index(int row, int column, const QModelIndex& parent = {}) const override;
  QModelIndex parent(const QModelIndex& child) const override;
  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override;
  QVariant data(const QModelIndex& index, int role) const override;
  QVariant headerData(int section, Qt::Orientation o, int role) const override;

  void rebuild();                    // structure changed (rare): reset
  void updateCounts();               // per tick: dataChanged for changed counts only
  Scope scopeOf(const QModelIndex& index) const;
  QModelIndex indexOf(const Scope& scope) const;
  const Node* node(const QModelIndex& index) const;

 private:
  QModelIndex indexOf(const Node* n, int column = 0) const;
  const Session* s_;
  std::vector<std::unique_ptr<Node>> roots_;
};

// ---- Connections, plugins, handlers: small tables refreshed from polled status ----

class ConnectionsModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  enum Column { kTarget, kState, kHealth, kSeq, kEvents, kGaps, kReconnects, kMessage, kColumns };
  explicit ConnectionsModel(const Session* session, QObject* parent = nullptr) : QAbstractTableModel(parent), s_(session) {}
  int rowCount(const QModelIndex& parent = {}) const override;
  int columnCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : kColumns; }
  QVariant data(const QModelIndex& index, int role) const override;
  QVariant headerData(int section, Qt::Orientation o, int role) const override;
  static constexpr int kDaemonRole = Qt::UserRole + 1;  // the row's daemon index
  void refresh();
  int daemonAt(int row) const { return rows_[static_cast<size_t>(row)]; }
 private:
  const Session* s_;
  std::vector<int> rows_;  // connected daemons, in index order
};

class PluginsModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  enum Column { kDaemon, kName, kVersion, kAbi, kState, kFile, kMessage, kColumns };
  explicit PluginsModel(QObject* parent = nullptr) : QAbstractTableModel(parent) {}
  int rowCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : static_cast<int>(rows_.size()); }
  int columnCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : kColumns; }
  QVariant data(const QModelIndex& index, int role) const override;
  QVariant headerData(int section, Qt::Orientation o, int role) const override;
  struct Row {
    int daemon;
    v1::Plugin p;
  };
  void setRows(std::vector<Row> rows);
 private:
  std::vector<Row> rows_;
};

class HandlersModel : public QAbstractTableModel {
  Q_OBJECT
 public:
  enum Column { kDaemon, kName, kCalls, kResponds, kDefers, kErrors, kP50, kP99, kMax, kColumns };
  explicit HandlersModel(QObject* parent = nullptr) : QAbstractTableModel(parent) {}
  int rowCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : static_cast<int>(rows_.size()); }
  int columnCount(const QModelIndex& parent = {}) const override { return parent.isValid() ? 0 : kColumns; }
  QVariant data(const QModelIndex& index, int role) const override;
  QVariant headerData(int section, Qt::Orientation o, int role) const override;
  struct Row {
    int daemon;
    v1::HandlerStats h;
  };
  void setRows(std::vector<Row> rows);
 private:
  std::vector<Row> rows_;
};

}  // namespace iopf::inspector
