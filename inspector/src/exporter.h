// Export to CSV: the outstanding-groups table as shown (filter, topology scope and sort order) and
// the event log's shown rows. The GUI thread copies what the job needs (the shown rows, an immutable
// view of the event history, the names the cells use); a worker formats and writes the file, reports
// progress and stops when cancelled. RFC 4180 quoting, a header row, times in daemon-clock
// nanoseconds (docs/inspector.md).
#pragma once

#include <QObject>
#include <QString>
#include <atomic>
#include <memory>

namespace iopf::inspector {

class Session;

// One CSV field: quoted when it holds a comma, a quote, CR or LF; quotes doubled.
QString csvField(const QString& s);

class CsvExporter : public QObject {
  Q_OBJECT
 public:
  enum class Kind { kOutstanding, kEvents };
  explicit CsvExporter(Session* session, QObject* parent = nullptr);
  ~CsvExporter() override;  // cancels a running job and waits for it

  // Starts an export job. False (and *error) when one is running already.
  bool start(Kind kind, const QString& path, QString* error = nullptr);
  void cancel();  // the job stops at its next check; finished(false, …, "cancelled") follows
  bool busy() const { return job_ != 0; }
  uint64_t total() const { return total_; }  // rows of the running (or last) job

 signals:
  void progress(qulonglong done, qulonglong total);
  // ok: the file is complete at `path`; else nothing is left at `path` (a partial file is removed).
  void finished(bool ok, const QString& path, qulonglong rows, const QString& message);

 private:
  void done(uint64_t job, bool ok, const QString& path, uint64_t rows, const QString& message);
  Session* s_;
  uint64_t job_ = 0, last_job_ = 0;
  uint64_t total_ = 0;
  QString part_;  // the running job's file until it is complete
  std::shared_ptr<std::atomic<uint64_t>> current_ = std::make_shared<std::atomic<uint64_t>>(0);
  std::shared_ptr<std::atomic<int>> running_ = std::make_shared<std::atomic<int>>(0);
};

}  // namespace iopf::inspector
