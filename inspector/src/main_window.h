// The inspector's main window: outstanding groups in the centre, topology, connections, event log,
// detail, charts and plugins as dock widgets; the filter bar; actions with confirmation.
#pragma once

#include <QComboBox>
#include <QLabel>
#include <QMainWindow>
#include <QPushButton>
#include <QTableView>
#include <QTimer>
#include <QTreeView>
#include <functional>
#include <grpcpp/grpcpp.h>

#include "exporter.h"
#include "iopf/v1/router.grpc.pb.h"

class QCheckBox;
class QDockWidget;
class QMenu;

namespace iopf::inspector {

class Session;
class DetailPane;
class ChartsWidget;

// "PauseDomain: not implemented by this daemon (UNIMPLEMENTED) …": an action's error for people.
QString describeStatus(const QString& action, const grpc::Status& st);

class MainWindow : public QMainWindow {
  Q_OBJECT
 public:
  explicit MainWindow(Session* session, QWidget* parent = nullptr);
  ~MainWindow() override;

  // Confirmation of actions (tests answer it; default: a QMessageBox).
  void setConfirm(std::function<bool(const QString&)> confirm) { confirm_ = std::move(confirm); }
  // Saves main.png and detail.png into `dir` once `events` events arrived and a group is shown, then quits.
  void screenshotWhenReady(const QString& dir, uint64_t events);

  // Actions on the current selection (menu, shortcuts, tests).
  void respondSelected(v1::ResponseCode code);
  void detachSelected();
  void pauseSelectedDomain(bool pause);
  bool connectTo(const QString& target, const QString& ca_file = {}, const QString& token = {});
  bool openCapture(const QString& path);
  bool selectGroup(int daemon, uint64_t group);  // in the outstanding table; shows the detail
  // Disconnects a daemon (or closes a capture) after confirmation; the recent targets keep it.
  bool disconnectDaemon(int daemon);
  // The daemon of the topology's current node, else of the connections table's, else the only one.
  int selectedDaemon() const;
  // Exports the outstanding table as shown / the event log's shown rows to `path` (a background job;
  // progress in the status bar; File → Cancel export).
  bool exportCsv(CsvExporter::Kind kind, const QString& path);
  CsvExporter* exporter() const { return exporter_; }
  QTableView* connectionsView() const { return connections_; }

  QTableView* outstandingView() const { return outstanding_; }
  QTableView* logView() const { return log_; }
  QTreeView* topologyView() const { return topology_; }
  DetailPane* detail() const { return detail_; }
  QComboBox* filterBox() const { return filter_; }
  QLabel* filterStatus() const { return filter_status_; }

 signals:
  void actionFinished(const QString& action, bool ok, const QString& message);

 protected:
  void closeEvent(QCloseEvent* e) override;

 private:
  void buildMenus();
  void rebuildPresetsMenu();
  void onFilterEdited(const QString& text);
  void applyFilter();
  void onTicked(qint64 ns, qulonglong events);
  void updateLogStatus();
  void showConnectDialog();
  void toggleRecording();
  void chooseExport(CsvExporter::Kind kind);
  void runAction(int daemon, const QString& name,
                 std::function<grpc::Status(v1::Router::StubInterface&, grpc::ClientContext&)> call);
  bool confirm(const QString& question);
  // The selected group: from the outstanding table, else the detail pane's.
  bool currentGroup(int* daemon, uint64_t* group, uint32_t* device, uint32_t* domain, std::optional<uint32_t>* pasid) const;
  void rememberTarget(const QString& target);
  void savePresets();

  Session* s_;
  QTableView* outstanding_;
  QTableView* log_;
  QTreeView* topology_;
  QTableView* connections_;
  DetailPane* detail_;
  ChartsWidget* charts_;
  QComboBox* filter_;
  QLabel* filter_status_;
  QLabel* log_status_;
  QLabel* tick_status_;
  QCheckBox* follow_;
  QPushButton* pause_;
  QMenu* presets_menu_;
  QAction* record_action_;
  QAction* cancel_export_action_ = nullptr;
  CsvExporter* exporter_;
  QTimer age_timer_;
  QTimer filter_debounce_;
  std::function<bool(const QString&)> confirm_;
  std::vector<QDockWidget*> docks_;
  uint64_t events_this_second_ = 0;
  qint64 second_start_ms_ = 0;
  double events_per_s_ = 0;
  std::vector<qint64> tick_ns_;
};

}  // namespace iopf::inspector
