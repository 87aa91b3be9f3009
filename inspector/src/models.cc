#include "models.h"

#include <QBrush>
#include <QColor>
#include <QFont>
#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <tuple>

#include "session.h"

namespace iopf::inspector {

namespace flt = api::filter;

// ---- EventStore ----

void EventStore::append(const LogRow& r) {
  if (chunks_.empty() || chunks_.back()->rows.size() == kChunk) {
    auto c = std::make_shared<Chunk>();
    c->rows.reserve(kChunk);  // never reallocates: readers of a View may look at earlier rows
    chunks_.push_back(std::move(c));
  }
  chunks_.back()->rows.push_back(r);
  ++end_;
}

// Keep between cap and cap + one chunk: whole chunks go from the front.
uint64_t EventStore::trimBase() const {
  uint64_t base = base_;
  size_t chunks = chunks_.size();
  while (chunks > 1 && (end_ - base) >= cap_ + kChunk) {
    base += kChunk;
    --chunks;
  }
  return base;
}

void EventStore::trim() {
  const uint64_t base = trimBase();
  while (base_ < base) {
    chunks_.pop_front();
    base_ += kChunk;
  }
}

EventStore::View EventStore::view() const {
  View v;
  v.chunks.assign(chunks_.begin(), chunks_.end());
  v.base = base_;
  v.end = end_;
  return v;
}

void EventStore::clear() {
  chunks_.clear();
  base_ = end_;
}

// ---- formatting ----

QString ridText(uint32_t rid) {
  return QString::asprintf("%02x:%02x.%x", (rid >> 8) & 0xff, (rid >> 3) & 0x1f, rid & 7);
}

QString permText(uint32_t perm) {
  QString s;
  s += perm & 1 ? 'R' : '-';
  s += perm & 2 ? 'W' : '-';
  s += perm & 4 ? 'X' : '-';
  if (perm & 8) s += 'P';
  return s;
}

QString durationText(int64_t ns) {
  const double a = static_cast<double>(ns < 0 ? -ns : ns);
  if (a < 1e3) return QString::number(ns) + QStringLiteral(" ns");
  if (a < 1e6) return QString::number(static_cast<double>(ns) / 1e3, 'f', 1) + QStringLiteral(" µs");
  if (a < 1e9) return QString::number(static_cast<double>(ns) / 1e6, 'f', 1) + QStringLiteral(" ms");
  return QString::number(static_cast<double>(ns) / 1e9, 'f', 2) + QStringLiteral(" s");
}

QString eventTypeText(int type) { return QString::fromLatin1(flt::eventTypeName(type).data(), static_cast<int>(flt::eventTypeName(type).size())); }
QString codeText(int code) { return QString::fromLatin1(flt::codeName(code).data(), static_cast<int>(flt::codeName(code).size())).toUpper(); }
QString originText(int origin) { return QString::fromLatin1(flt::originName(origin).data(), static_cast<int>(flt::originName(origin).size())); }

namespace {

// Age colour ramp: green below 10% of the deadline, through yellow to red at the deadline.
QColor ageColour(int64_t age, int64_t budget) {
  if (budget <= 0) budget = 1'000'000'000;
  const double f = std::clamp(static_cast<double>(age) / static_cast<double>(budget), 0.0, 1.0);
  // hue 120 (green) → 0 (red), light backgrounds.
  return QColor::fromHsvF(static_cast<float>((1.0 - f) * 120.0 / 360.0), static_cast<float>(0.25 + 0.35 * f), 1.0f);
}

QColor typeColour(EventType t) {
  switch (t) {
    case EventType::kGap: return QColor(255, 200, 120);
    case EventType::kResponded: return QColor(225, 245, 225);
    case EventType::kTimedOut: return QColor(255, 215, 215);
    case EventType::kCompletionRefused:
    case EventType::kProtocolError:
    case EventType::kRequestDropped: return QColor(255, 230, 200);
    case EventType::kAttach:
    case EventType::kDetach:
    case EventType::kDeviceAdded:
    case EventType::kDeviceRemoved:
    case EventType::kDomainAdded:
    case EventType::kDomainRemoved:
    case EventType::kChainChanged:
    case EventType::kDomainPaused:
    case EventType::kDomainResumed: return QColor(225, 232, 250);
    default: return QColor();
  }
}

}  // namespace

QString eventDetailText(const Event& e, const QString& handler_name) {
  switch (e.type) {
    case EventType::kGap:
      return e.value < 0 ? QStringLiteral("GAP: resume point lost, re-synchronised from a snapshot")
                         : QStringLiteral("GAP: %1 events lost").arg(e.value);
    case EventType::kRequest:
      return QStringLiteral("%1%2").arg(permText(e.perm), (e.flags & event_flag::kLast) ? " last" : "");
    case EventType::kHandlerVerdict: {
      static const char* verdicts[] = {"continue", "respond", "defer"};
      return QStringLiteral("%1: %2 %3 in %4")
          .arg(handler_name, QString::fromLatin1(verdicts[std::min<int>(e.verdict, 2)]),
               e.verdict == 1 ? codeText(e.code) : QString(), durationText(e.value));
    }
    case EventType::kResponded:
      return QStringLiteral("%1 by %2 after %3").arg(codeText(e.code), originText(e.origin), durationText(e.value));
    case EventType::kCompletionRefused: return QStringLiteral("refused (%1)").arg(originText(e.origin));
    case EventType::kAttach:
    case EventType::kDetach: return QStringLiteral("epoch %1").arg(e.value);
    case EventType::kDomainPaused: return QStringLiteral("%1 groups waiting").arg(e.value);
    case EventType::kDomainResumed: return QStringLiteral("%1 groups released").arg(e.value);
    case EventType::kPartialDiscarded: return QStringLiteral("%1 requests").arg(e.value);
    default: return e.value ? QString::number(e.value) : QString();
  }
}

// ---- OutstandingModel ----

GroupRow* OutstandingModel::find(uint16_t daemon, uint64_t id) {
  auto it = index_.find(key(daemon, id));
  if (it == index_.end()) return nullptr;
  GroupRow& r = rows_[it->second];
  return r.dead ? nullptr : &r;
}

GroupRow& OutstandingModel::add(const GroupRow& row) {
  index_[key(row.daemon, row.id)] = rows_.size();
  rows_.push_back(row);
  return rows_.back();
}

void OutstandingModel::remove(uint16_t daemon, uint64_t id) {
  auto it = index_.find(key(daemon, id));
  if (it == index_.end()) return;
  GroupRow& r = rows_[it->second];
  if (!r.dead) {
    r.dead = true;
    ++dead_;
  }
  index_.erase(it);
}

void OutstandingModel::touch(const GroupRow* row) {
  const int r = static_cast<int>(row - rows_.data());
  if (r >= announced_) return;  // not shown yet: the insert covers it
  changed_lo_ = std::min(changed_lo_, r);
  changed_hi_ = std::max(changed_hi_, r);
}

void OutstandingModel::removeDaemon(uint16_t daemon) {
  for (auto& r : rows_) {
    if (r.daemon == daemon && !r.dead) {
      r.dead = true;
      ++dead_;
      index_.erase(key(r.daemon, r.id));
    }
  }
}

size_t OutstandingModel::openCount() const { return rows_.size() - dead_; }

void OutstandingModel::commit() {
  if (changed_hi_ >= 0) {
    // One rectangle for every row changed this tick (before removals shift them).
    emit dataChanged(index(changed_lo_, 0), index(changed_hi_, kColumns - 1));
    changed_lo_ = INT32_MAX;
    changed_hi_ = -1;
  }
  if (dead_ > 0) {
    // Rows opened and closed within this tick were never shown: drop them silently.
    size_t w = static_cast<size_t>(announced_);
    for (size_t i = static_cast<size_t>(announced_); i < rows_.size(); ++i) {
      if (!rows_[i].dead) rows_[w++] = rows_[i];
    }
    rows_.resize(w);
    // Shown dead rows: one removal per contiguous range, from the back (groups mostly complete in
    // arrival order, so this is usually one range at the front).
    int hi = announced_ - 1;
    while (hi >= 0) {
      if (!rows_[static_cast<size_t>(hi)].dead) {
        --hi;
        continue;
      }
      int lo = hi;
      while (lo > 0 && rows_[static_cast<size_t>(lo - 1)].dead) --lo;
      beginRemoveRows({}, lo, hi);
      rows_.erase(rows_.begin() + lo, rows_.begin() + hi + 1);
      announced_ -= hi - lo + 1;
      endRemoveRows();
      hi = lo - 1;
    }
    dead_ = 0;
    index_.clear();
    for (size_t i = 0; i < rows_.size(); ++i) index_[key(rows_[i].daemon, rows_[i].id)] = i;
  }
  if (static_cast<size_t>(announced_) < rows_.size()) {
    beginInsertRows({}, announced_, static_cast<int>(rows_.size()) - 1);
    announced_ = static_cast<int>(rows_.size());
    endInsertRows();
  }
}

QVariant OutstandingModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || index.row() >= announced_) return {};
  const GroupRow& g = rows_[static_cast<size_t>(index.row())];
  const int64_t now = s_->daemonNow(g.daemon);
  const int64_t age = now - g.first_arrival_ns;
  switch (role) {
    case Qt::DisplayRole:
      switch (index.column()) {
        case kDevice: {
          const auto rid = s_->ridOf(g.daemon, g.device);
          return rid ? QStringLiteral("%1 (%2)").arg(g.device).arg(ridText(*rid)) : QString::number(g.device);
        }
        case kPasid: return g.has_pasid ? QString::number(g.pasid) : QStringLiteral("–");
        case kPrgi: return g.grpid;
        case kAddr: return QStringLiteral("0x") + QString::number(g.first_addr, 16);
        case kPerm: return permText(g.perm);
        case kReqs: return g.nreq;
        case kDomain: {
          const auto& d = s_->daemon(g.daemon);
          auto it = d.domains.find(g.domain);
          return it == d.domains.end() ? QString::number(g.domain)
                                       : QStringLiteral("%1 %2").arg(g.domain).arg(QString::fromStdString(it->second.name()));
        }
        case kState: return QString::fromLatin1(flt::stateName(g.state).data());
        case kHandler:
          if (!g.has_handler) return g.state == v1::GROUP_STATE_QUEUED ? QStringLiteral("(queued)") : QString();
          return s_->handlerName(g.daemon, g.handler);
        case kAge: return durationText(age);
        case kDeadline:
          if (g.deadline_ns == 0) return QStringLiteral("–");
          return g.deadline_ns > now ? QStringLiteral("in ") + durationText(g.deadline_ns - now)
                                     : QStringLiteral("passed");
        case kGroup: return QVariant::fromValue<qulonglong>(g.id);
      }
      break;
    case Qt::BackgroundRole:
      if (index.column() == kAge || index.column() == kDeadline) {
        const int64_t budget = g.deadline_ns ? g.deadline_ns - g.first_arrival_ns : 0;
        return QBrush(ageColour(age, budget));
      }
      break;
    case Qt::TextAlignmentRole:
      if (index.column() == kAge || index.column() == kReqs || index.column() == kPrgi || index.column() == kGroup) {
        return QVariant(Qt::AlignRight | Qt::AlignVCenter);
      }
      break;
    case kSortRole:
      switch (index.column()) {
        case kDevice: return g.device;
        case kPasid: return g.has_pasid ? static_cast<qlonglong>(g.pasid) : -1LL;
        case kPrgi: return g.grpid;
        case kAddr: return QVariant::fromValue<qulonglong>(g.first_addr);
        case kPerm: return g.perm;
        case kReqs: return g.nreq;
        case kDomain: return g.domain;
        case kState: return g.state;
        case kHandler: return g.has_handler ? g.handler : -1;
        case kAge: return static_cast<qlonglong>(-g.first_arrival_ns);  // older first when descending
        case kDeadline: return static_cast<qlonglong>(g.deadline_ns);
        case kGroup: return QVariant::fromValue<qulonglong>(g.id);
      }
      break;
    case kKeyRole: return QStringLiteral("%1:%2").arg(g.daemon).arg(g.id);
    default: break;
  }
  return {};
}

QVariant OutstandingModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* names[] = {"Device", "PASID", "PRGI", "Age", "Deadline", "Domain", "State",
                                "Handler", "Reqs", "Perm", "First address", "Group"};
  return section >= 0 && section < kColumns ? QString::fromLatin1(names[section]) : QVariant();
}

OutstandingProxy::OutstandingProxy(const Session* session, QObject* parent) : QSortFilterProxyModel(parent), s_(session) {
  setSortRole(OutstandingModel::kSortRole);
  setDynamicSortFilter(true);
}

void OutstandingProxy::ensureSorted() {
  if (sourceModel()->rowCount() == 0) {
    mapped_ = false;
    return;
  }
  if (!mapped_ && sortColumn() >= 0) invalidate();
  mapped_ = true;
}

bool OutstandingProxy::filterAcceptsRow(int row, const QModelIndex&) const {
  auto* m = static_cast<const OutstandingModel*>(sourceModel());
  return s_->acceptsGroup(m->row(row));
}

// ---- EventLogModel ----

const LogRow& EventLogModel::rowAt(int r) const { return s_->store().at(rows_[static_cast<size_t>(r)]); }

void EventLogModel::setPaused(bool paused) {
  if (paused_ == paused) return;
  paused_ = paused;
  if (!paused_) {
    incoming_.insert(incoming_.end(), pending_.begin(), pending_.end());
    pending_.clear();
    commit();
  }
}

void EventLogModel::daemonLabelsChanged() {
  if (!rows_.empty()) emit dataChanged(index(0, kDaemon), index(static_cast<int>(rows_.size()) - 1, kDaemon));
}

void EventLogModel::clear() {
  beginResetModel();
  rows_.clear();
  pending_.clear();
  incoming_.clear();
  cleared_before_ = s_->store().end();
  endResetModel();
}

void EventLogModel::commit(bool insert) {
  // The store drops its oldest chunk after this commit: rows below its new base go first.
  const uint64_t base = std::max(s_->store().trimBase(), cleared_before_);
  // History dropped by the store's cap: one removal at the front.
  size_t drop = 0;
  while (drop < rows_.size() && rows_[drop] < base) ++drop;
  if (drop > 0) {
    beginRemoveRows({}, 0, static_cast<int>(drop) - 1);
    rows_.erase(rows_.begin(), rows_.begin() + static_cast<std::ptrdiff_t>(drop));
    endRemoveRows();
  }
  if (!pending_.empty() && pending_.front() < base) {
    pending_.erase(pending_.begin(), std::lower_bound(pending_.begin(), pending_.end(), base));
  }
  if (!insert || incoming_.empty()) return;
  auto first = std::lower_bound(incoming_.begin(), incoming_.end(), base);
  if (first != incoming_.end()) {
    const int n = static_cast<int>(incoming_.end() - first);
    const int at = static_cast<int>(rows_.size());
    beginInsertRows({}, at, at + n - 1);
    rows_.insert(rows_.end(), first, incoming_.end());
    endInsertRows();
  }
  incoming_.clear();
}

void EventLogModel::resetRows(std::vector<uint64_t> rows, uint64_t matched_total) {
  beginResetModel();
  const uint64_t base = std::max(s_->store().base(), cleared_before_);
  rows_.clear();
  pending_.clear();
  incoming_.clear();
  for (uint64_t r : rows) {
    if (r < base) continue;
    (paused_ ? pending_ : incoming_).push_back(r);
  }
  rows_.assign(incoming_.begin(), incoming_.end());
  incoming_.clear();
  matched_total_ = matched_total;
  endResetModel();
}

QVariant EventLogModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || static_cast<size_t>(index.row()) >= rows_.size()) return {};
  const LogRow& r = rowAt(index.row());
  const Event& e = r.e;
  if (role == Qt::DisplayRole) {
    switch (index.column()) {
      case kSeq: return QVariant::fromValue<qulonglong>(e.seq);
      case kTime: return QString::number(static_cast<double>(e.time_ns) / 1e9, 'f', 6);
      case kDaemon: return QString::fromStdString(s_->daemon(r.daemon).label);
      case kType: return eventTypeText(static_cast<int>(e.type));
      case kGroup: return e.group ? QVariant::fromValue<qulonglong>(e.group) : QVariant();
      case kDevice: return e.type == EventType::kGap ? QVariant() : QVariant(e.device);
      case kDomain:  // requests have no domain before their group is queued
        return e.type == EventType::kGap || e.type == EventType::kRequest ? QVariant() : QVariant(e.domain);
      case kPasid: return (e.flags & event_flag::kPasidValid) ? QVariant(e.pasid) : QVariant();
      case kPrgi: return e.group || e.type == EventType::kRequest ? QVariant(e.grpid) : QVariant();
      case kAddr: return e.type == EventType::kRequest ? QStringLiteral("0x") + QString::number(e.addr, 16) : QString();
      case kDetail: {
        const QString t = eventDetailText(e, e.type == EventType::kHandlerVerdict ? s_->handlerName(r.daemon, e.handler) : QString());
        return t.isEmpty() ? QVariant() : QVariant(t);
      }
    }
  } else if (role == Qt::BackgroundRole) {
    const QColor c = typeColour(e.type);
    if (c.isValid()) return QBrush(c);
  } else if (role == Qt::FontRole && e.type == EventType::kGap) {
    QFont f;
    f.setBold(true);
    return f;
  }
  return {};
}

QVariant EventLogModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* names[] = {"Seq", "Time (s)", "Daemon", "Event", "Group", "Dev", "Dom", "PASID", "PRGI", "Address", "Detail"};
  return section >= 0 && section < kColumns ? QString::fromLatin1(names[section]) : QVariant();
}

// ---- TopologyModel ----

QModelIndex TopologyModel::index(int row, int column, const QModelIndex& parent) const {
  if (row < 0 || column < 0 || column >= 2) return {};
  const auto& list = parent.isValid() ? static_cast<Node*>(parent.internalPointer())->children : roots_;
  if (parent.isValid() && parent.column() != 0) return {};
  if (static_cast<size_t>(row) >= list.size()) return {};
  return createIndex(row, column, list[static_cast<size_t>(row)].get());
}

QModelIndex TopologyModel::parent(const QModelIndex& child) const {
  if (!child.isValid()) return {};
  const Node* n = static_cast<const Node*>(child.internalPointer());
  if (!n->parent) return {};
  return createIndex(n->parent->row, 0, n->parent);
}

int TopologyModel::rowCount(const QModelIndex& parent) const {
  if (!parent.isValid()) return static_cast<int>(roots_.size());
  if (parent.column() != 0) return 0;
  return static_cast<int>(static_cast<const Node*>(parent.internalPointer())->children.size());
}

int TopologyModel::columnCount(const QModelIndex&) const { return 2; }

const TopologyModel::Node* TopologyModel::node(const QModelIndex& index) const {
  return index.isValid() ? static_cast<const Node*>(index.internalPointer()) : nullptr;
}

QVariant TopologyModel::data(const QModelIndex& index, int role) const {
  const Node* n = node(index);
  if (!n) return {};
  if (role == Qt::DisplayRole) {
    if (index.column() == 1) return QVariant::fromValue<qulonglong>(n->count);
    return n->label;
  }
  if (role == Qt::ToolTipRole) return n->detail;
  if (role == Qt::ForegroundRole && index.column() == 1 && n->count > 0) return QBrush(QColor(170, 40, 20));
  if (role == Qt::FontRole && n->kind == kDaemonNode) {
    QFont f;
    f.setBold(true);
    return f;
  }
  if (role == kScopeRole) {
    return QStringLiteral("%1/%2/%3/%4/%5").arg(n->kind).arg(n->daemon).arg(n->domain).arg(n->device).arg(n->rid ? -1 : static_cast<qint64>(n->pasid));
  }
  return {};
}

QVariant TopologyModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  return section == 0 ? QStringLiteral("Daemon / domain / device / PASID") : QStringLiteral("Open");
}

void TopologyModel::rebuild() {
  beginResetModel();
  roots_.clear();
  for (int d = 0; d < s_->daemonCount(); ++d) {
    const DaemonState& ds = s_->daemon(d);
    if (!ds.connected) continue;  // disconnected: its node leaves the tree
    auto root = std::make_unique<Node>();
    root->kind = kDaemonNode;
    root->daemon = d;
    root->label = QString::fromStdString(ds.label);
    root->detail = QString::fromStdString(ds.target);
    root->row = static_cast<int>(roots_.size());
    // domain → device → pasids (from attachments and open groups).
    std::map<uint32_t, std::map<uint32_t, std::set<int64_t>>> tree;
    for (const auto& [id, dom] : ds.domains) {
      if (!dom.removed()) tree[id];
    }
    for (const auto& a : ds.attachments) tree[a.domain()][a.device()].insert(a.has_pasid() ? static_cast<int64_t>(a.pasid()) : int64_t{-1});
    for (const GroupRow& g : s_->outstanding()->rows()) {
      if (g.daemon == d && !g.dead) tree[g.domain][g.device].insert(g.has_pasid ? static_cast<int64_t>(g.pasid) : int64_t{-1});
    }
    for (const auto& [dom, devices] : tree) {
      auto dn = std::make_unique<Node>();
      dn->kind = kDomainNode;
      dn->daemon = d;
      dn->domain = dom;
      auto it = ds.domains.find(dom);
      dn->label = it == ds.domains.end() ? QStringLiteral("domain %1").arg(dom)
                                         : QStringLiteral("domain %1 · %2 (%3)%4")
                                               .arg(dom)
                                               .arg(QString::fromStdString(it->second.name()),
                                                    QString::fromStdString(it->second.kind()),
                                                    it->second.paused() ? QStringLiteral(" ⏸ paused") : QString());
      if (it != ds.domains.end()) {
        QStringList chain;
        for (const auto& h : it->second.chain()) chain << QString::fromStdString(h);
        dn->detail = QStringLiteral("deadline %1, chain: %2").arg(durationText(it->second.deadline_ns()), chain.join(" → "));
      }
      dn->parent = root.get();
      dn->row = static_cast<int>(root->children.size());
      for (const auto& [dev, pasids] : devices) {
        auto vn = std::make_unique<Node>();
        vn->kind = kDeviceNode;
        vn->daemon = d;
        vn->domain = dom;
        vn->device = dev;
        auto di = ds.devices.find(dev);
        vn->label = di == ds.devices.end() ? QStringLiteral("device %1").arg(dev)
                                           : QStringLiteral("device %1 · %2 %3")
                                                 .arg(dev)
                                                 .arg(QString::fromStdString(di->second.name()), ridText(di->second.rid()));
        if (di != ds.devices.end()) {
          vn->detail = QStringLiteral("backend %1, PRI allocation %2, %3 PASID bits")
                           .arg(QString::fromStdString(di->second.backend()))
                           .arg(di->second.pri_allocation())
                           .arg(di->second.pasid_bits());
        }
        vn->parent = dn.get();
        vn->row = static_cast<int>(dn->children.size());
        for (int64_t p : pasids) {
          auto pn = std::make_unique<Node>();
          pn->kind = kPasidNode;
          pn->daemon = d;
          pn->domain = dom;
          pn->device = dev;
          pn->rid = p < 0;
          pn->pasid = p < 0 ? 0 : static_cast<uint32_t>(p);
          pn->label = p < 0 ? QStringLiteral("RID (no PASID)") : QStringLiteral("PASID %1").arg(p);
          pn->parent = vn.get();
          pn->row = static_cast<int>(vn->children.size());
          vn->children.push_back(std::move(pn));
        }
        dn->children.push_back(std::move(vn));
      }
      root->children.push_back(std::move(dn));
    }
    roots_.push_back(std::move(root));
  }
  endResetModel();
  updateCounts();
}

void TopologyModel::updateCounts() {
  // Count open groups per (daemon, domain, device, pasid) then sum up the tree.
  std::map<std::tuple<int, uint32_t, uint32_t, int64_t>, uint64_t> counts;
  for (const GroupRow& g : s_->outstanding()->rows()) {
    if (!g.dead) counts[{g.daemon, g.domain, g.device, g.has_pasid ? static_cast<int64_t>(g.pasid) : -1}]++;
  }
  std::function<uint64_t(Node*)> walk = [&](Node* n) -> uint64_t {
    uint64_t c = 0;
    if (n->kind == kPasidNode) {
      auto it = counts.find({n->daemon, n->domain, n->device, n->rid ? -1 : static_cast<int64_t>(n->pasid)});
      c = it == counts.end() ? 0 : it->second;
    } else {
      for (auto& ch : n->children) c += walk(ch.get());
    }
    if (c != n->count) {
      n->count = c;
      const QModelIndex i = indexOf(n, 1);
      emit dataChanged(i, i);
    }
    return c;
  };
  for (auto& r : roots_) walk(r.get());
}

QModelIndex TopologyModel::indexOf(const Node* n, int column) const { return createIndex(n->row, column, const_cast<Node*>(n)); }

Scope TopologyModel::scopeOf(const QModelIndex& index) const {
  Scope s;
  const Node* n = node(index);
  if (!n) return s;
  s.daemon = n->daemon;
  if (n->kind >= kDomainNode) s.domain = n->domain;
  if (n->kind >= kDeviceNode) s.device = n->device;
  if (n->kind == kPasidNode) {
    if (n->rid) {
      s.rid_only = true;
    } else {
      s.pasid = n->pasid;
    }
  }
  return s;
}

QModelIndex TopologyModel::indexOf(const Scope& scope) const {
  if (scope.daemon < 0) return {};
  const Node* n = nullptr;  // roots are the connected daemons, in index order
  for (const auto& r : roots_) {
    if (r->daemon == scope.daemon) n = r.get();
  }
  if (!n) return {};
  auto child = [](const Node* p, auto pred) -> const Node* {
    for (const auto& c : p->children) {
      if (pred(*c)) return c.get();
    }
    return nullptr;
  };
  if (scope.domain) {
    const Node* c = child(n, [&](const Node& x) { return x.domain == *scope.domain; });
    if (!c) return indexOf(n);
    n = c;
  }
  if (scope.device) {
    const Node* c = child(n, [&](const Node& x) { return x.device == *scope.device; });
    if (!c) return indexOf(n);
    n = c;
  }
  if (scope.pasid || scope.rid_only) {
    const Node* c = child(n, [&](const Node& x) { return scope.rid_only ? x.rid : (!x.rid && x.pasid == *scope.pasid); });
    if (c) n = c;
  }
  return indexOf(n);
}

// ---- ConnectionsModel ----

int ConnectionsModel::rowCount(const QModelIndex& parent) const { return parent.isValid() ? 0 : static_cast<int>(rows_.size()); }

void ConnectionsModel::refresh() {
  std::vector<int> rows;
  for (int d = 0; d < s_->daemonCount(); ++d) {
    if (s_->daemon(d).connected) rows.push_back(d);
  }
  if (rows != rows_) {
    // Rarely: a connect or a disconnect.
    beginResetModel();
    rows_ = std::move(rows);
    endResetModel();
  } else if (!rows_.empty()) {
    emit dataChanged(index(0, 0), index(static_cast<int>(rows_.size()) - 1, kColumns - 1));
  }
}

QVariant ConnectionsModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || static_cast<size_t>(index.row()) >= rows_.size()) return {};
  if (role == kDaemonRole) return rows_[static_cast<size_t>(index.row())];
  const DaemonState& d = s_->daemon(rows_[static_cast<size_t>(index.row())]);
  const ConnStatus& st = d.status;
  if (role == Qt::DisplayRole) {
    switch (index.column()) {
      case kTarget: return QString::fromStdString(d.target);
      case kState: return QString::fromLatin1(connStateName(st.state));
      case kHealth: return d.live ? QString::fromLatin1(healthName(st.health)) : QStringLiteral("offline");
      case kSeq: return QVariant::fromValue<qulonglong>(st.last_seq);
      case kEvents: return QVariant::fromValue<qulonglong>(st.events);
      case kGaps: return QVariant::fromValue<qulonglong>(st.gaps);
      case kReconnects: return QStringLiteral("%1 (%2 resumed)").arg(st.reconnects).arg(st.resumes);
      case kMessage: return QString::fromStdString(st.message);
    }
  } else if (role == Qt::BackgroundRole && (index.column() == kHealth || index.column() == kState)) {
    if (st.state == ConnState::kBackoff || st.health == Health::kUnreachable) return QBrush(QColor(255, 210, 210));
    if (st.health == Health::kNotServing) return QBrush(QColor(255, 235, 190));
    if (st.state == ConnState::kStreaming && st.health == Health::kServing) return QBrush(QColor(210, 245, 210));
  }
  return {};
}

QVariant ConnectionsModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* names[] = {"Target", "State", "Health", "Last seq", "Events", "Gaps", "Reconnects", "Note"};
  return section >= 0 && section < kColumns ? QString::fromLatin1(names[section]) : QVariant();
}

// ---- Plugins and handlers ----

void PluginsModel::setRows(std::vector<Row> rows) {
  if (rows.size() == rows_.size()) {
    rows_ = std::move(rows);
    if (!rows_.empty()) emit dataChanged(index(0, 0), index(static_cast<int>(rows_.size()) - 1, kColumns - 1));
    return;
  }
  beginResetModel();
  rows_ = std::move(rows);
  endResetModel();
}

QVariant PluginsModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || static_cast<size_t>(index.row()) >= rows_.size()) return {};
  const Row& r = rows_[static_cast<size_t>(index.row())];
  if (role == Qt::DisplayRole) {
    switch (index.column()) {
      case kDaemon: return r.daemon;
      case kName: return QString::fromStdString(r.p.name());
      case kVersion: return QString::fromStdString(r.p.version());
      case kAbi: return QString::fromStdString(r.p.abi());
      case kState: return QString::fromStdString(r.p.state());
      case kFile: return QString::fromStdString(r.p.file());
      case kMessage: return QString::fromStdString(r.p.message());
    }
  } else if (role == Qt::BackgroundRole && index.column() == kState && r.p.state() != "loaded") {
    return QBrush(QColor(255, 215, 215));
  }
  return {};
}

QVariant PluginsModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* names[] = {"Daemon", "Plugin", "Version", "ABI", "State", "File", "Message"};
  return section >= 0 && section < kColumns ? QString::fromLatin1(names[section]) : QVariant();
}

void HandlersModel::setRows(std::vector<Row> rows) {
  if (rows.size() == rows_.size()) {
    rows_ = std::move(rows);
    if (!rows_.empty()) emit dataChanged(index(0, 0), index(static_cast<int>(rows_.size()) - 1, kColumns - 1));
    return;
  }
  beginResetModel();
  rows_ = std::move(rows);
  endResetModel();
}

QVariant HandlersModel::data(const QModelIndex& index, int role) const {
  if (!index.isValid() || static_cast<size_t>(index.row()) >= rows_.size()) return {};
  const Row& r = rows_[static_cast<size_t>(index.row())];
  if (role == Qt::DisplayRole) {
    switch (index.column()) {
      case kDaemon: return r.daemon;
      case kName: return QString::fromStdString(r.h.name());
      case kCalls: return QVariant::fromValue<qulonglong>(r.h.calls());
      case kResponds: return QVariant::fromValue<qulonglong>(r.h.responds());
      case kDefers: return QVariant::fromValue<qulonglong>(r.h.defers());
      case kErrors: return QVariant::fromValue<qulonglong>(r.h.errors());
      case kP50: return durationText(static_cast<int64_t>(r.h.call_time().p50_ns()));
      case kP99: return durationText(static_cast<int64_t>(r.h.call_time().p99_ns()));
      case kMax: return durationText(static_cast<int64_t>(r.h.call_time().max_ns()));
    }
  } else if (role == Qt::BackgroundRole && index.column() == kErrors && r.h.errors() > 0) {
    return QBrush(QColor(255, 215, 215));
  } else if (role == Qt::TextAlignmentRole && index.column() >= kCalls) {
    return QVariant(Qt::AlignRight | Qt::AlignVCenter);
  }
  return {};
}

QVariant HandlersModel::headerData(int section, Qt::Orientation o, int role) const {
  if (o != Qt::Horizontal || role != Qt::DisplayRole) return {};
  static const char* names[] = {"Daemon", "Handler", "Calls", "Responds", "Defers", "Errors", "p50", "p99", "Max"};
  return section >= 0 && section < kColumns ? QString::fromLatin1(names[section]) : QVariant();
}

}  // namespace iopf::inspector
