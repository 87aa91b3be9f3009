#include "exporter.h"

#include <QFile>
#include <QFuture>
#include <QPointer>
#include <QThread>
#include <QtConcurrent/QtConcurrentRun>
#include <map>
#include <vector>

#include "session.h"

namespace iopf::inspector {

namespace {

// What a worker needs of a daemon to format cells (copied on the GUI thread).
struct DaemonNames {
  QString label;
  int64_t now = 0;
  std::map<uint32_t, uint32_t> rids;
  std::map<uint32_t, QString> domains;
  std::map<uint32_t, QString> handlers;
  QString handler(uint32_t h) const {
    auto it = handlers.find(h);
    return it == handlers.end() ? QStringLiteral("handler #%1").arg(h) : it->second;
  }
};

std::vector<DaemonNames> copyNames(const Session& s) {
  std::vector<DaemonNames> out;
  for (int d = 0; d < s.daemonCount(); ++d) {
    const DaemonState& ds = s.daemon(d);
    DaemonNames n;
    n.label = QString::fromStdString(ds.label);
    n.now = s.daemonNow(d);
    for (const auto& [id, dev] : ds.devices) n.rids[id] = dev.rid();
    for (const auto& [id, dom] : ds.domains) n.domains[id] = QString::fromStdString(dom.name());
    for (const auto& [id, name] : ds.handler_names) n.handlers[id] = QString::fromStdString(name);
    out.push_back(std::move(n));
  }
  return out;
}

QString hex(uint64_t v) { return QStringLiteral("0x") + QString::number(v, 16); }

void appendRow(QByteArray& out, const QStringList& fields) {
  for (qsizetype i = 0; i < fields.size(); ++i) {
    if (i) out += ',';
    out += csvField(fields[i]).toUtf8();
  }
  out += "\r\n";  // RFC 4180 line ends
}

}  // namespace

QString csvField(const QString& s) {
  if (!s.contains(QLatin1Char(',')) && !s.contains(QLatin1Char('"')) && !s.contains(QLatin1Char('\n')) &&
      !s.contains(QLatin1Char('\r'))) {
    return s;
  }
  QString q = s;
  q.replace(QLatin1String("\""), QLatin1String("\"\""));
  return QLatin1Char('"') + q + QLatin1Char('"');
}

// Writes `header` and one row per item of `items` (`row` returns false to skip one) to `part`,
// flushing and reporting progress every `step` rows and checking for a cancel every 1,024; ends
// with exactly one call of `finish`.
template <typename Items, typename Row, typename Report, typename Finish>
void writeCsv(const QString& part, const QStringList& header, const Items& items, uint64_t step,
              const std::shared_ptr<std::atomic<uint64_t>>& cancel, uint64_t job, const Report& report,
              const Finish& finish, const Row& row) {
  QFile f(part);
  if (!f.open(QIODevice::WriteOnly | QIODevice::Truncate)) return finish(false, 0, f.errorString());
  QByteArray out;
  appendRow(out, header);
  uint64_t n = 0;
  QStringList cells;
  for (const auto& item : items) {
    if ((n & 0x3ff) == 0 && cancel->load(std::memory_order_relaxed) != job) {
      return finish(false, n, CsvExporter::tr("cancelled"));
    }
    cells.clear();
    if (!row(item, cells)) continue;
    appendRow(out, cells);
    if (++n % step == 0) {
      if (f.write(out) != out.size()) return finish(false, n, f.errorString());
      out.clear();
      report(n, items.size());
    }
  }
  if (f.write(out) != out.size()) return finish(false, n, f.errorString());
  f.close();
  finish(f.error() == QFileDevice::NoError, n, f.errorString());
}

CsvExporter::CsvExporter(Session* session, QObject* parent) : QObject(parent), s_(session) {}

CsvExporter::~CsvExporter() {
  current_->store(UINT64_MAX);
  // A job only touches its own copies and its file: wait for it so the file is closed and removed.
  while (running_->load() > 0) QThread::yieldCurrentThread();
  if (job_ != 0) QFile::remove(part_);
}

void CsvExporter::cancel() {
  if (job_ != 0) current_->store(UINT64_MAX);
}

bool CsvExporter::start(Kind kind, const QString& path, QString* error) {
  if (job_ != 0) {
    if (error) *error = tr("an export is running already (%1 rows); cancel it first").arg(total_);
    return false;
  }
  const uint64_t job = ++last_job_;
  job_ = job;
  current_->store(job);
  const QString part = path + QStringLiteral(".part");
  part_ = part;
  auto cancel = current_;
  auto running = running_;
  QPointer<CsvExporter> self(this);
  // Progress is reported every this many rows (a queued call each: a few per second at most).
  constexpr uint64_t kStep = 1u << 16;
  auto report = [self, job](uint64_t done, uint64_t total) {
    QMetaObject::invokeMethod(
        self.data(), [self, job, done, total] {
          if (self && self->job_ == job) emit self->progress(done, total);
        },
        Qt::QueuedConnection);
  };
  auto finish = [self, job, path, running](bool ok, uint64_t rows, const QString& message) {
    QMetaObject::invokeMethod(
        self.data(), [self, job, ok, path, rows, message] {
          if (self) self->done(job, ok, path, rows, message);
        },
        Qt::QueuedConnection);
    running->fetch_sub(1);  // last: the exporter's destructor waits for this
  };
  std::vector<DaemonNames> names = copyNames(*s_);
  running->fetch_add(1);
  if (kind == Kind::kOutstanding) {
    // The table as shown: the proxy's rows (filter, scope) in its sort order.
    std::vector<GroupRow> rows;
    auto* proxy = s_->outstandingProxy();
    rows.reserve(static_cast<size_t>(proxy->rowCount()));
    for (int r = 0; r < proxy->rowCount(); ++r) {
      rows.push_back(s_->outstanding()->row(proxy->mapToSource(proxy->index(r, 0)).row()));
    }
    total_ = rows.size();
    (void)QtConcurrent::run([rows = std::move(rows), names = std::move(names), part, cancel, job, report, finish]() {
      writeCsv(part,
               {"daemon", "group", "device", "rid", "pasid", "prgi", "first_addr", "perm", "requests", "domain",
                "domain_name", "state", "handler", "first_arrival_ns", "age_ns", "deadline_ns"},
               rows, kStep, cancel, job, report, finish, [&](const GroupRow& g, QStringList& cells) {
                 const DaemonNames& d = names[g.daemon];
                 auto rid = d.rids.find(g.device);
                 auto dom = d.domains.find(g.domain);
                 cells = {d.label, QString::number(g.id), QString::number(g.device),
                          rid == d.rids.end() ? QString() : ridText(rid->second),
                          g.has_pasid ? QString::number(g.pasid) : QString(), QString::number(g.grpid),
                          hex(g.first_addr), permText(g.perm), QString::number(g.nreq), QString::number(g.domain),
                          dom == d.domains.end() ? QString() : dom->second,
                          QString::fromLatin1(api::filter::stateName(g.state).data()),
                          g.has_handler ? d.handler(g.handler) : QString(), QString::number(g.first_arrival_ns),
                          QString::number(d.now - g.first_arrival_ns),
                          g.deadline_ns ? QString::number(g.deadline_ns) : QString()};
                 return true;
               });
    });
  } else {
    // The event log as shown: its rows (filter, scope, Clear) in order, read from an immutable view.
    std::vector<uint64_t> rows = s_->log()->shownRows();
    EventStore::View view = s_->store().view();
    total_ = rows.size();
    (void)QtConcurrent::run([rows = std::move(rows), view = std::move(view), names = std::move(names), part, cancel, job,
                             report, finish]() {
      writeCsv(part, {"seq", "time_ns", "daemon", "type", "group", "device", "domain", "pasid", "prgi", "addr", "detail"},
               rows, kStep, cancel, job, report, finish, [&](uint64_t abs, QStringList& cells) {
                 if (abs < view.base || abs >= view.end) return false;  // dropped by the cap meanwhile
                 const LogRow& r = view.at(abs);
                 const Event& e = r.e;
                 const DaemonNames& d = names[r.daemon];
                 const bool gap = e.type == EventType::kGap;
                 cells = {QString::number(e.seq), QString::number(e.time_ns), d.label,
                          eventTypeText(static_cast<int>(e.type)), e.group ? QString::number(e.group) : QString(),
                          gap ? QString() : QString::number(e.device),
                          gap || e.type == EventType::kRequest ? QString() : QString::number(e.domain),
                          (e.flags & event_flag::kPasidValid) ? QString::number(e.pasid) : QString(),
                          e.group || e.type == EventType::kRequest ? QString::number(e.grpid) : QString(),
                          e.type == EventType::kRequest ? hex(e.addr) : QString(),
                          eventDetailText(e, e.type == EventType::kHandlerVerdict ? d.handler(e.handler) : QString())};
                 return true;
               });
    });
  }
  emit progress(0, total_);
  return true;
}

void CsvExporter::done(uint64_t job, bool ok, const QString& path, uint64_t rows, const QString& message) {
  if (job != job_) return;
  job_ = 0;
  const QString part = path + QStringLiteral(".part");
  if (current_->load() != job) ok = false;  // cancelled after the worker finished: drop the file too
  QString msg = message;
  if (ok) {
    QFile::remove(path);
    if (!QFile::rename(part, path)) {
      ok = false;
      msg = tr("cannot rename %1 to %2").arg(part, path);
    }
  } else if (current_->load() != job && msg.isEmpty()) {
    msg = tr("cancelled");
  }
  if (!ok) QFile::remove(part);
  emit finished(ok, path, rows, ok ? QString() : msg);
}

}  // namespace iopf::inspector
