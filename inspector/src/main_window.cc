#include "main_window.h"

#include <QAction>
#include <QApplication>
#include <QCheckBox>
#include <QCloseEvent>
#include <QCompleter>
#include <QDateTime>
#include <QDialog>
#include <QDialogButtonBox>
#include <QDir>
#include <QDockWidget>
#include <QFileDialog>
#include <QFormLayout>
#include <QHBoxLayout>
#include <QHeaderView>
#include <QInputDialog>
#include <QLineEdit>
#include <QMenu>
#include <QMenuBar>
#include <QMessageBox>
#include <QPointer>
#include <QScreen>
#include <QScrollBar>
#include <QSettings>
#include <QSplitter>
#include <QStatusBar>
#include <QToolBar>
#include <QToolButton>
#include <QVBoxLayout>
#include <QtConcurrent/QtConcurrentRun>
#include <algorithm>

#include "charts.h"
#include "detail.h"
#include "session.h"

namespace iopf::inspector {

namespace {

const char* codeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    default: return "error";
  }
}

QTableView* makeTable(QAbstractItemModel* model, QWidget* parent) {
  auto* v = new QTableView(parent);
  v->setModel(model);
  v->setSelectionBehavior(QAbstractItemView::SelectRows);
  v->setSelectionMode(QAbstractItemView::SingleSelection);
  v->setAlternatingRowColors(true);
  v->setWordWrap(false);
  v->setTextElideMode(Qt::ElideRight);
  v->verticalHeader()->setVisible(false);
  // Uniform row heights: fixed sections, never ResizeToContents on live tables.
  v->verticalHeader()->setSectionResizeMode(QHeaderView::Fixed);
  v->verticalHeader()->setDefaultSectionSize(v->fontMetrics().height() + 6);
  v->horizontalHeader()->setSectionResizeMode(QHeaderView::Interactive);
  v->horizontalHeader()->setHighlightSections(false);
  v->horizontalHeader()->setStretchLastSection(true);
  return v;
}

void setWidths(QTableView* v, std::initializer_list<int> chars) {
  const int cw = v->fontMetrics().horizontalAdvance(QLatin1Char('0'));
  int i = 0;
  for (int c : chars) v->setColumnWidth(i++, c * cw + 14);
}

const char* kPresets[][2] = {
    {"Only responses", "type:responded"},
    {"Failures and timeouts", "type:responded code:invalid,failure"},
    {"Timeouts", "origin:timeout"},
    {"Operator answers", "origin:operator"},
    {"Slow responses (> 1 ms)", "type:responded latency>1ms"},
    {"Old open groups (> 10 ms)", "age>10ms"},
    {"Deferred groups", "state:deferred"},
    {"Requests without PASID", "type:request pasid:none"},
    {"Gaps and protocol errors", "type:gap,protocol_error,request_dropped,completion_refused"},
};

}  // namespace

QString describeStatus(const QString& action, const grpc::Status& st) {
  const QString msg = QString::fromStdString(st.error_message());
  switch (st.error_code()) {
    case grpc::StatusCode::UNIMPLEMENTED:
      return QObject::tr("%1 is not implemented by this daemon (UNIMPLEMENTED). The daemon is older than this "
                         "inspector or its backend does not support it.%2")
          .arg(action, msg.isEmpty() ? QString() : QStringLiteral("\nDaemon says: ") + msg);
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return QObject::tr("%1 did not reach the daemon (%2): %3").arg(action, QString::fromLatin1(codeName(st.error_code())), msg);
    case grpc::StatusCode::PERMISSION_DENIED:
    case grpc::StatusCode::UNAUTHENTICATED:
      return QObject::tr("%1 was refused: not authorised (%2). Give a token in the connect dialog. %3")
          .arg(action, QString::fromLatin1(codeName(st.error_code())), msg);
    default:
      return QObject::tr("%1 was refused (%2): %3").arg(action, QString::fromLatin1(codeName(st.error_code())), msg);
  }
}

MainWindow::MainWindow(Session* session, QWidget* parent) : QMainWindow(parent), s_(session) {
  setWindowTitle(tr("iopf-inspector"));
  setObjectName("main");
  setDockOptions(AnimatedDocks | AllowNestedDocks | AllowTabbedDocks);

  // Centre: outstanding groups.
  outstanding_ = makeTable(s_->outstandingProxy(), this);
  outstanding_->setObjectName("outstanding");
  outstanding_->setSortingEnabled(true);
  outstanding_->sortByColumn(OutstandingModel::kAge, Qt::DescendingOrder);
  setWidths(outstanding_, {11, 5, 4, 9, 9, 9, 9, 11, 4, 4, 13, 8});
  auto* centre = new QWidget(this);
  auto* cl = new QVBoxLayout(centre);
  cl->setContentsMargins(2, 2, 2, 2);
  auto* title = new QLabel(tr("<b>Outstanding page request groups</b> — double-click for the detail"));
  cl->addWidget(title);
  cl->addWidget(outstanding_, 1);
  setCentralWidget(centre);

  auto dock = [&](const QString& name, const QString& id, QWidget* w, Qt::DockWidgetArea area) {
    auto* d = new QDockWidget(name, this);
    d->setObjectName(id);
    d->setWidget(w);
    addDockWidget(area, d);
    docks_.push_back(d);
    return d;
  };

  topology_ = new QTreeView(this);
  topology_->setModel(s_->topology());
  topology_->setUniformRowHeights(true);
  topology_->setAlternatingRowColors(true);
  topology_->header()->setStretchLastSection(false);
  topology_->header()->setSectionResizeMode(0, QHeaderView::Stretch);
  topology_->header()->resizeSection(1, 60);
  auto* topo_dock = dock(tr("Topology"), "topology", topology_, Qt::LeftDockWidgetArea);

  connections_ = makeTable(s_->connections(), this);
  setWidths(connections_, {22, 10, 10, 9, 9, 5, 12, 30});
  auto* conn_dock = dock(tr("Connections"), "connections", connections_, Qt::LeftDockWidgetArea);
  splitDockWidget(topo_dock, conn_dock, Qt::Vertical);

  detail_ = new DetailPane(s_, this);
  dock(tr("Detail"), "detail", detail_, Qt::RightDockWidgetArea);

  // Event log with Follow / Pause view / Clear.
  auto* logw = new QWidget(this);
  auto* ll = new QVBoxLayout(logw);
  ll->setContentsMargins(2, 2, 2, 2);
  auto* bar = new QHBoxLayout();
  follow_ = new QCheckBox(tr("&Follow"));
  follow_->setChecked(true);
  pause_ = new QPushButton(tr("&Pause view"));
  pause_->setCheckable(true);
  auto* clear = new QPushButton(tr("C&lear"));
  log_status_ = new QLabel();
  bar->addWidget(follow_);
  bar->addWidget(pause_);
  bar->addWidget(clear);
  bar->addStretch(1);
  bar->addWidget(log_status_);
  ll->addLayout(bar);
  log_ = makeTable(s_->log(), this);
  log_->setObjectName("log");
  setWidths(log_, {8, 12, 10, 14, 8, 4, 4, 6, 5, 13});
  ll->addWidget(log_, 1);
  auto* log_dock = dock(tr("Event log"), "log", logw, Qt::BottomDockWidgetArea);
  connect(pause_, &QPushButton::toggled, this, [this](bool on) {
    s_->log()->setPaused(on);
    updateLogStatus();
  });
  connect(clear, &QPushButton::clicked, this, [this] {
    s_->log()->clear();
    updateLogStatus();
  });

  charts_ = new ChartsWidget(s_, this);
  auto* charts_dock = dock(tr("Charts"), "charts", charts_, Qt::BottomDockWidgetArea);

  auto* plugins = new QSplitter(Qt::Vertical, this);
  auto* pt = makeTable(s_->plugins(), plugins);
  setWidths(pt, {6, 16, 9, 6, 10, 30});
  auto* ht = makeTable(s_->handlers(), plugins);
  setWidths(ht, {6, 18, 9, 9, 9, 7, 9, 9});
  plugins->addWidget(pt);
  plugins->addWidget(ht);
  auto* plugins_dock = dock(tr("Plugins && handlers"), "plugins", plugins, Qt::BottomDockWidgetArea);
  tabifyDockWidget(log_dock, charts_dock);
  tabifyDockWidget(charts_dock, plugins_dock);
  log_dock->raise();

  // Filter bar.
  auto* fbar = addToolBar(tr("Filter"));
  fbar->setObjectName("filterbar");
  fbar->addWidget(new QLabel(tr(" Filter: ")));
  filter_ = new QComboBox(this);
  filter_->setEditable(true);
  filter_->setInsertPolicy(QComboBox::NoInsert);
  filter_->setMinimumWidth(420);
  filter_->setSizePolicy(QSizePolicy::Expanding, QSizePolicy::Fixed);
  filter_->lineEdit()->setPlaceholderText(tr("e.g. device:3 pasid:5 code:INVALID age>10ms domain:2 type:responded"));
  filter_->lineEdit()->setClearButtonEnabled(true);
  QStringList words;
  for (const auto& w : api::filter::completionWords()) words << QString::fromStdString(w);
  auto* completer = new QCompleter(words, filter_);
  completer->setCaseSensitivity(Qt::CaseInsensitive);
  completer->setCompletionMode(QCompleter::InlineCompletion);
  filter_->lineEdit()->setCompleter(completer);
  fbar->addWidget(filter_);
  auto* presets = new QToolButton(this);
  presets->setText(tr("Presets"));
  presets->setPopupMode(QToolButton::InstantPopup);
  presets_menu_ = new QMenu(presets);
  presets->setMenu(presets_menu_);
  fbar->addWidget(presets);
  filter_status_ = new QLabel(this);
  filter_status_->setMinimumWidth(260);
  fbar->addWidget(filter_status_);
  filter_debounce_.setSingleShot(true);
  filter_debounce_.setInterval(250);
  connect(filter_->lineEdit(), &QLineEdit::textEdited, this, &MainWindow::onFilterEdited);
  connect(filter_->lineEdit(), &QLineEdit::returnPressed, this, &MainWindow::applyFilter);
  connect(filter_, &QComboBox::textActivated, this, [this](const QString& t) {
    onFilterEdited(t);
    applyFilter();
  });
  connect(&filter_debounce_, &QTimer::timeout, this, &MainWindow::applyFilter);

  tick_status_ = new QLabel(this);
  statusBar()->addPermanentWidget(tick_status_);

  // Topology selection narrows every view.
  connect(topology_->selectionModel(), &QItemSelectionModel::currentChanged, this, [this](const QModelIndex& cur) {
    s_->setScope(s_->topology()->scopeOf(cur));
    updateLogStatus();
  });
  connect(s_, &Session::structureChanged, this, [this] {
    topology_->expandAll();
    const QModelIndex i = s_->topology()->indexOf(s_->scope());
    if (i.isValid()) {
      QSignalBlocker b(topology_->selectionModel());
      topology_->setCurrentIndex(i);
    }
  });
  // Double click: the detail.
  connect(outstanding_, &QTableView::doubleClicked, this, [this](const QModelIndex& i) {
    const QString key = i.siblingAtColumn(0).data(OutstandingModel::kKeyRole).toString();
    detail_->showGroup(key.section(':', 0, 0).toInt(), key.section(':', 1, 1).toULongLong());
  });
  // A click or Enter shows the group too; rows moving under the selection (groups completing) do
  // not: the detail stays on the group the user picked.
  auto show = [this](const QModelIndex& i) {
    const QString key = i.siblingAtColumn(0).data(OutstandingModel::kKeyRole).toString();
    detail_->showGroup(key.section(':', 0, 0).toInt(), key.section(':', 1, 1).toULongLong());
  };
  connect(outstanding_, &QTableView::clicked, this, show);
  connect(outstanding_, &QTableView::activated, this, show);
  connect(log_, &QTableView::doubleClicked, this, [this](const QModelIndex& i) {
    const LogRow& r = s_->log()->rowAt(i.row());
    if (r.e.group) detail_->showGroup(r.daemon, r.e.group);
  });
  // Ticking ages: repaint only the visible part of the age and deadline columns.
  connect(&age_timer_, &QTimer::timeout, this, [this] {
    auto* vp = outstanding_->viewport();
    for (int c : {OutstandingModel::kAge, OutstandingModel::kDeadline}) {
      const int x = outstanding_->columnViewportPosition(c);
      if (x >= 0) vp->update(QRect(x, 0, outstanding_->columnWidth(c), vp->height()));
    }
  });
  age_timer_.start(250);
  connect(s_, &Session::ticked, this, &MainWindow::onTicked);
  connect(s_, &Session::refilterFinished, this, [this] {
    updateLogStatus();
    if (follow_->isChecked()) log_->scrollToBottom();
  });

  exporter_ = new CsvExporter(s_, this);
  connect(exporter_, &CsvExporter::progress, this, [this](qulonglong done, qulonglong total) {
    statusBar()->showMessage(tr("exporting CSV… %1 of %2 rows (%3 %) — File → Cancel export")
                                 .arg(done)
                                 .arg(total)
                                 .arg(total ? done * 100 / total : 100));
  });
  connect(exporter_, &CsvExporter::finished, this, [this](bool ok, const QString& path, qulonglong rows, const QString& msg) {
    if (cancel_export_action_) cancel_export_action_->setEnabled(false);
    statusBar()->showMessage(ok ? tr("exported %1 rows to %2").arg(rows).arg(path)
                                : tr("export to %1 stopped: %2").arg(path, msg),
                             15000);
  });
  connect(s_, &Session::transportStopped, this, [this](int d) {
    statusBar()->showMessage(tr("%1: reader and poller stopped").arg(QString::fromStdString(s_->daemon(d).label)), 5000);
  });

  buildMenus();

  QSettings settings;
  restoreGeometry(settings.value("window/geometry").toByteArray());
  restoreState(settings.value("window/state").toByteArray());
  const QStringList history = settings.value("filter/history").toStringList();
  filter_->addItems(history);
  filter_->setCurrentIndex(-1);
  filter_->setEditText(QString());
  if (!settings.contains("window/state")) {
    // First start: room for the tree labels and the detail, a third of the height for the log.
    resize(1600, 960);
    resizeDocks({topo_dock, docks_[2]}, {320, 400}, Qt::Horizontal);
    resizeDocks({topo_dock, conn_dock}, {420, 160}, Qt::Vertical);
    resizeDocks({log_dock}, {330}, Qt::Vertical);
  }
  onFilterEdited(QString());
}

MainWindow::~MainWindow() = default;

void MainWindow::buildMenus() {
  auto* file = menuBar()->addMenu(tr("&File"));
  file->addAction(tr("&Connect to daemon…"), QKeySequence(tr("Ctrl+N")), this, &MainWindow::showConnectDialog);
  file->addAction(tr("&Open capture…"), QKeySequence::Open, this, [this] {
    const QString p = QFileDialog::getOpenFileName(this, tr("Open capture"), QString(), tr("Captures (*.iopfcap *.cap);;All files (*)"));
    if (!p.isEmpty()) openCapture(p);
  });
  record_action_ = file->addAction(tr("&Record event stream…"), QKeySequence(tr("Ctrl+R")), this, &MainWindow::toggleRecording);
  auto* disconnect_action = file->addAction(tr("&Disconnect the selected daemon…"), QKeySequence(tr("Ctrl+Shift+W")), this, [this] {
    const int d = selectedDaemon();
    if (d < 0) {
      statusBar()->showMessage(tr("select a daemon (topology or connections) first"), 5000);
      return;
    }
    disconnectDaemon(d);
  });
  file->addSeparator();
  file->addAction(tr("Export outstanding groups as &CSV…"), this, [this] { chooseExport(CsvExporter::Kind::kOutstanding); });
  file->addAction(tr("Export the &event log as CSV…"), QKeySequence(tr("Ctrl+E")), this,
                  [this] { chooseExport(CsvExporter::Kind::kEvents); });
  cancel_export_action_ = file->addAction(tr("Cancel e&xport"), this, [this] { exporter_->cancel(); });
  cancel_export_action_->setEnabled(exporter_->busy());
  file->addSeparator();
  file->addAction(tr("&Quit"), QKeySequence::Quit, this, &QWidget::close);

  auto* actions = menuBar()->addMenu(tr("&Actions"));
  actions->addAction(tr("Respond &SUCCESS to the selected group"), QKeySequence(tr("Ctrl+Shift+S")), this,
                     [this] { respondSelected(v1::RESPONSE_CODE_SUCCESS); });
  actions->addAction(tr("Respond &INVALID to the selected group"), QKeySequence(tr("Ctrl+Shift+I")), this,
                     [this] { respondSelected(v1::RESPONSE_CODE_INVALID); });
  actions->addSeparator();
  actions->addAction(tr("&Detach the selected device / PASID"), QKeySequence(tr("Ctrl+Shift+D")), this, &MainWindow::detachSelected);
  actions->addAction(tr("&Pause the selected domain"), QKeySequence(tr("Ctrl+Shift+P")), this, [this] { pauseSelectedDomain(true); });
  actions->addAction(tr("R&esume the selected domain"), QKeySequence(tr("Ctrl+Shift+R")), this, [this] { pauseSelectedDomain(false); });
  // Context menus carry the same actions.
  outstanding_->setContextMenuPolicy(Qt::ActionsContextMenu);
  outstanding_->addActions(actions->actions());
  topology_->setContextMenuPolicy(Qt::ActionsContextMenu);
  topology_->addActions(actions->actions());
  // The daemon node (and every node below it) can be disconnected from the tree's context menu; so
  // can a row of the connections table.
  auto* sep = new QAction(topology_);
  sep->setSeparator(true);
  topology_->addAction(sep);
  topology_->addAction(disconnect_action);
  connections_->setContextMenuPolicy(Qt::ActionsContextMenu);
  connections_->addAction(disconnect_action);

  auto* view = menuBar()->addMenu(tr("&View"));
  view->addAction(tr("Focus the &filter"), QKeySequence(tr("Ctrl+L")), this, [this] {
    filter_->setFocus();
    filter_->lineEdit()->selectAll();
  });
  view->addAction(tr("Toggle &Follow"), QKeySequence(tr("Ctrl+F")), this, [this] { follow_->toggle(); });
  view->addAction(tr("Toggle &Pause view"), QKeySequence(tr("Ctrl+P")), this, [this] { pause_->toggle(); });
  view->addAction(tr("C&lear the event log"), QKeySequence(tr("Ctrl+K")), this, [this] {
    s_->log()->clear();
    updateLogStatus();
  });
  view->addAction(tr("Show &everything (clear topology selection)"), QKeySequence(tr("Esc")), this, [this] {
    topology_->clearSelection();
    topology_->setCurrentIndex({});
    s_->setScope({});
  });
  view->addSeparator();
  for (auto* d : docks_) view->addAction(d->toggleViewAction());

  rebuildPresetsMenu();

  auto* help = menuBar()->addMenu(tr("&Help"));
  help->addAction(tr("&Filter syntax and shortcuts"), QKeySequence::HelpContents, this, [this] {
    QMessageBox::information(
        this, tr("iopf-inspector"),
        tr("<b>Filter</b>: terms separated by spaces, all must match.<br>"
           "<tt>device:3</tt> <tt>device:03:00.0</tt> <tt>domain:2</tt> <tt>pasid:5</tt> <tt>pasid:none</tt> "
           "<tt>group:42</tt> <tt>prgi:7</tt> <tt>addr:0x1000</tt> <tt>perm:W</tt> <tt>type:responded,timed_out</tt> "
           "<tt>code:invalid</tt> <tt>origin:timeout</tt> <tt>handler:2</tt> <tt>latency&gt;1ms</tt> "
           "<tt>age&gt;10ms</tt> <tt>state:deferred</tt>; <tt>!</tt> negates a term.<br><br>"
           "<b>Shortcuts</b>: Ctrl+N connect, Ctrl+O open capture, Ctrl+R record, Ctrl+E export the event log (CSV), "
           "Ctrl+Shift+W disconnect the selected daemon, Ctrl+L filter, Ctrl+F follow, "
           "Ctrl+P pause view, Ctrl+K clear log, Esc show everything, Ctrl+Shift+S / I respond SUCCESS / INVALID, "
           "Ctrl+Shift+D detach, Ctrl+Shift+P / R pause / resume domain."));
  });
}

// The presets menu alone: built presets, then the saved ones, then "save". Rebuilt when a preset is
// saved (rebuilding every menu would add each menu bar entry and context action again).
void MainWindow::rebuildPresetsMenu() {
  presets_menu_->clear();
  for (const auto& p : kPresets) {
    const QString expr = QString::fromLatin1(p[1]);
    presets_menu_->addAction(QStringLiteral("%1    %2").arg(tr(p[0]), expr), this, [this, expr] {
      filter_->setEditText(expr);
      onFilterEdited(expr);
      applyFilter();
    });
  }
  QSettings settings;
  const QStringList saved = settings.value("filter/presets").toStringList();
  if (!saved.isEmpty()) presets_menu_->addSeparator();
  for (const QString& expr : saved) {
    presets_menu_->addAction(expr, this, [this, expr] {
      filter_->setEditText(expr);
      onFilterEdited(expr);
      applyFilter();
    });
  }
  presets_menu_->addSeparator();
  presets_menu_->addAction(tr("Save the current filter as a preset"), this, &MainWindow::savePresets);
}

void MainWindow::savePresets() {
  const QString expr = filter_->currentText().trimmed();
  if (expr.isEmpty() || !api::filter::parseExpr(expr.toStdString()).expr) return;
  QSettings settings;
  QStringList saved = settings.value("filter/presets").toStringList();
  if (!saved.contains(expr)) saved << expr;
  settings.setValue("filter/presets", saved);
  rebuildPresetsMenu();
}

void MainWindow::onFilterEdited(const QString& text) {
  // Validate as you type: green valid, red invalid (with the column), grey empty.
  const auto r = api::filter::parseExpr(text.toStdString());
  QPalette pal = filter_->lineEdit()->palette();
  if (text.trimmed().isEmpty()) {
    pal.setColor(QPalette::Base, QApplication::palette().color(QPalette::Base));
    filter_status_->setText(tr(" no filter"));
  } else if (r.expr) {
    pal.setColor(QPalette::Base, QColor(220, 250, 220));
    bool complete = false;
    (void)api::filter::toEventFilter(*r.expr, {}, &complete);
    filter_status_->setText(complete ? tr(" ✔ valid — filtered in the daemon") : tr(" ✔ valid — partly filtered here"));
    filter_debounce_.start();
  } else {
    pal.setColor(QPalette::Base, QColor(255, 220, 220));
    filter_status_->setText(tr(" ✘ column %1: %2").arg(r.error->pos + 1).arg(QString::fromStdString(r.error->message)));
    filter_->lineEdit()->setToolTip(filter_status_->text());
  }
  filter_->lineEdit()->setPalette(pal);
}

void MainWindow::applyFilter() {
  filter_debounce_.stop();
  const QString text = filter_->currentText().trimmed();
  const auto r = s_->setFilter(text);
  if (!r.expr) return;
  if (!text.isEmpty() && filter_->findText(text) < 0) {
    filter_->insertItem(0, text);
    while (filter_->count() > 30) filter_->removeItem(filter_->count() - 1);
    QStringList history;
    for (int i = 0; i < filter_->count(); ++i) history << filter_->itemText(i);
    QSettings().setValue("filter/history", history);
  }
  updateLogStatus();
}

void MainWindow::onTicked(qint64 ns, qulonglong events) {
  tick_ns_.push_back(ns);
  events_this_second_ += events;
  const qint64 now = QDateTime::currentMSecsSinceEpoch();
  if (second_start_ms_ == 0) second_start_ms_ = now;
  if (now - second_start_ms_ >= 1000) {
    events_per_s_ = static_cast<double>(events_this_second_) * 1000.0 / static_cast<double>(now - second_start_ms_);
    events_this_second_ = 0;
    second_start_ms_ = now;
    std::sort(tick_ns_.begin(), tick_ns_.end());
    const double p99 = tick_ns_.empty() ? 0 : static_cast<double>(tick_ns_[tick_ns_.size() * 99 / 100]) / 1e6;
    tick_ns_.clear();
    QString rec;
    if (s_->recording()) rec = tr(" · ● recording (%1 records)").arg(s_->recordedEvents());
    tick_status_->setText(tr("%1 events/s · %2 open · tick p99 %3 ms%4")
                              .arg(events_per_s_, 0, 'f', 0)
                              .arg(s_->outstanding()->openCount())
                              .arg(p99, 0, 'f', 2)
                              .arg(rec));
  }
  if (events > 0) {
    updateLogStatus();
    if (follow_->isChecked() && !s_->log()->paused()) log_->scrollToBottom();
  }
}

void MainWindow::updateLogStatus() {
  auto* m = s_->log();
  QString text = tr("%1 of %2 matching events shown · %3 kept of %4 received (cap %5)")
                     .arg(m->rowCount())
                     .arg(m->matchedTotal())
                     .arg(s_->store().kept())
                     .arg(s_->store().total())
                     .arg(s_->store().cap());
  if (s_->refiltering()) text = tr("re-filtering the history… ") + text;
  log_status_->setText(text);
  pause_->setText(m->paused() ? tr("Resume view (%1 new)").arg(m->pendingCount()) : tr("&Pause view"));
}

int MainWindow::selectedDaemon() const {
  const Scope sc = s_->topology()->scopeOf(topology_->currentIndex());
  if (sc.daemon >= 0 && s_->connected(sc.daemon)) return sc.daemon;
  const QModelIndex c = connections_->currentIndex();
  if (c.isValid()) return c.siblingAtColumn(0).data(ConnectionsModel::kDaemonRole).toInt();
  if (s_->connectedCount() == 1) {
    for (int d = 0; d < s_->daemonCount(); ++d) {
      if (s_->connected(d)) return d;
    }
  }
  return -1;
}

bool MainWindow::disconnectDaemon(int daemon) {
  if (!s_->connected(daemon)) return false;
  const DaemonState& ds = s_->daemon(daemon);
  const QString what = ds.live ? tr("Disconnect from %1").arg(QString::fromStdString(ds.target))
                               : tr("Close the capture %1").arg(QString::fromStdString(ds.target));
  if (!confirm(tr("%1? Its open groups and its topology leave the views; the events already received stay in the "
                  "event log, marked \"disconnected\". The recent targets keep it.")
                   .arg(what))) {
    return false;
  }
  const bool was_recording = s_->recording();
  s_->disconnectDaemon(daemon);
  if (was_recording && !s_->recording()) record_action_->setText(tr("&Record event stream…"));
  statusBar()->showMessage(tr("%1: disconnected (stopping its reader)").arg(QString::fromStdString(ds.target)), 5000);
  return true;
}

void MainWindow::chooseExport(CsvExporter::Kind kind) {
  const bool events = kind == CsvExporter::Kind::kEvents;
  const QString path = QFileDialog::getSaveFileName(
      this, events ? tr("Export the event log (shown rows) as CSV") : tr("Export the outstanding groups (as shown) as CSV"),
      QDir::home().filePath((events ? "iopf-events-" : "iopf-outstanding-") +
                            QDateTime::currentDateTime().toString("yyyyMMdd-HHmmss") + ".csv"),
      tr("CSV (*.csv)"));
  if (!path.isEmpty()) exportCsv(kind, path);
}

bool MainWindow::exportCsv(CsvExporter::Kind kind, const QString& path) {
  QString err;
  if (!exporter_->start(kind, path, &err)) {
    statusBar()->showMessage(err, 8000);
    return false;
  }
  if (cancel_export_action_) cancel_export_action_->setEnabled(true);
  return true;
}

void MainWindow::rememberTarget(const QString& target) {
  QSettings settings;
  QStringList recent = settings.value("connect/recent").toStringList();
  recent.removeAll(target);
  recent.prepend(target);
  while (recent.size() > 12) recent.removeLast();
  settings.setValue("connect/recent", recent);
}

bool MainWindow::connectTo(const QString& target, const QString& ca_file, const QString& token) {
  if (target.trimmed().isEmpty()) return false;
  ConnectOptions o;
  o.target = target.trimmed().toStdString();
  o.tls_ca_file = ca_file.toStdString();
  o.token = token.toStdString();
  s_->addTransport(std::make_unique<GrpcTransport>(o));
  rememberTarget(QString::fromStdString(normalizeTarget(o.target)));
  statusBar()->showMessage(tr("connecting to %1").arg(target), 2000);
  return true;
}

bool MainWindow::openCapture(const QString& path) {
  s_->addTransport(std::make_unique<CaptureTransport>(path.toStdString()));
  setWindowTitle(tr("iopf-inspector — %1").arg(path));
  return true;
}

void MainWindow::showConnectDialog() {
  QDialog dlg(this);
  dlg.setWindowTitle(tr("Connect to iopfd"));
  auto* form = new QFormLayout(&dlg);
  auto* target = new QComboBox(&dlg);
  target->setEditable(true);
  target->addItems(QSettings().value("connect/recent").toStringList());
  target->lineEdit()->setPlaceholderText("unix:/run/iopf/iopfd.sock or host:port");
  auto* ca = new QLineEdit(&dlg);
  ca->setPlaceholderText(tr("TCP only: PEM file of the CA (default: system roots)"));
  auto* token = new QLineEdit(&dlg);
  token->setEchoMode(QLineEdit::Password);
  token->setPlaceholderText(tr("TCP only: bearer token for actions"));
  form->addRow(tr("Daemon (recent targets):"), target);
  form->addRow(tr("TLS CA file:"), ca);
  form->addRow(tr("Token:"), token);
  auto* buttons = new QDialogButtonBox(QDialogButtonBox::Ok | QDialogButtonBox::Cancel, &dlg);
  form->addRow(buttons);
  connect(buttons, &QDialogButtonBox::accepted, &dlg, &QDialog::accept);
  connect(buttons, &QDialogButtonBox::rejected, &dlg, &QDialog::reject);
  dlg.resize(560, dlg.sizeHint().height());
  if (dlg.exec() == QDialog::Accepted) connectTo(target->currentText(), ca->text(), token->text());
}

void MainWindow::toggleRecording() {
  if (s_->recording()) {
    const uint64_t n = s_->recordedEvents();
    absl::Status st = s_->stopRecording();
    record_action_->setText(tr("&Record event stream…"));
    if (!st.ok()) {
      QMessageBox::warning(this, tr("Recording"), QString::fromStdString(std::string(st.message())));
    } else {
      statusBar()->showMessage(tr("recording stopped: %1 records written").arg(n), 8000);
    }
    return;
  }
  int daemon = s_->scope().daemon >= 0 ? s_->scope().daemon : selectedDaemon();
  if (daemon < 0) {
    for (int d = 0; d < s_->daemonCount() && daemon < 0; ++d) {
      if (s_->connected(d)) daemon = d;
    }
  }
  if (daemon < 0) return;
  const QString path = QFileDialog::getSaveFileName(
      this, tr("Record %1 to").arg(QString::fromStdString(s_->daemon(daemon).label)),
      QDir::home().filePath("inspector-" + QDateTime::currentDateTime().toString("yyyyMMdd-HHmmss") + ".iopfcap"),
      tr("Captures (*.iopfcap)"));
  if (path.isEmpty()) return;
  absl::Status st = s_->startRecording(daemon, path.toStdString());
  if (!st.ok()) {
    QMessageBox::warning(this, tr("Recording"), QString::fromStdString(std::string(st.message())));
    return;
  }
  record_action_->setText(tr("Stop &recording"));
}

bool MainWindow::confirm(const QString& question) {
  if (confirm_) return confirm_(question);
  return QMessageBox::question(this, tr("Confirm"), question, QMessageBox::Yes | QMessageBox::Cancel,
                               QMessageBox::Cancel) == QMessageBox::Yes;
}

bool MainWindow::currentGroup(int* daemon, uint64_t* group, uint32_t* device, uint32_t* domain,
                              std::optional<uint32_t>* pasid) const {
  const QModelIndex i = outstanding_->currentIndex();
  if (i.isValid()) {
    const QModelIndex src = s_->outstandingProxy()->mapToSource(i);
    const GroupRow& g = s_->outstanding()->row(src.row());
    *daemon = g.daemon;
    *group = g.id;
    *device = g.device;
    *domain = g.domain;
    *pasid = g.has_pasid ? std::optional<uint32_t>(g.pasid) : std::nullopt;
    return true;
  }
  if (detail_->daemon() >= 0) {
    const auto& g = detail_->current();
    *daemon = detail_->daemon();
    *group = detail_->group();
    *device = g.device();
    *domain = g.domain();
    *pasid = g.has_pasid() ? std::optional<uint32_t>(g.pasid()) : std::nullopt;
    return true;
  }
  return false;
}

bool MainWindow::selectGroup(int daemon, uint64_t group) {
  const QString key = QStringLiteral("%1:%2").arg(daemon).arg(group);
  auto* proxy = s_->outstandingProxy();
  for (int r = 0; r < proxy->rowCount(); ++r) {
    const QModelIndex i = proxy->index(r, 0);
    if (i.data(OutstandingModel::kKeyRole).toString() == key) {
      outstanding_->setCurrentIndex(i);
      outstanding_->scrollTo(i);
      detail_->showGroup(daemon, group);
      return true;
    }
  }
  return false;
}

void MainWindow::runAction(int daemon, const QString& name,
                           std::function<grpc::Status(v1::Router::StubInterface&, grpc::ClientContext&)> call) {
  const DaemonState& ds = s_->daemon(daemon);
  if (!ds.transport) {
    if (!confirm_) QMessageBox::information(this, name, tr("%1: this daemon was disconnected.").arg(name));
    emit actionFinished(name, false, tr("disconnected"));
    return;
  }
  auto stub = ds.transport->stub();
  if (!stub) {
    QMessageBox::information(this, name, tr("%1: this view is a capture file; actions need a live daemon.").arg(name));
    emit actionFinished(name, false, tr("offline"));
    return;
  }
  auto meta = s_->daemon(daemon).transport->metadata();
  statusBar()->showMessage(tr("%1…").arg(name));
  QPointer<MainWindow> self(this);
  (void)QtConcurrent::run([self, stub, meta, name, call]() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    for (const auto& [k, v] : meta) ctx.AddMetadata(k, v);
    const grpc::Status st = call(*stub, ctx);
    QMetaObject::invokeMethod(
        self.data(),
        [self, name, st]() {
          if (!self) return;
          if (st.ok()) {
            self->statusBar()->showMessage(tr("%1: done").arg(name), 8000);
            emit self->actionFinished(name, true, QString());
          } else {
            const QString msg = describeStatus(name, st);
            self->statusBar()->showMessage(msg, 15000);
            if (!self->confirm_) QMessageBox::warning(self, name, msg);
            emit self->actionFinished(name, false, msg);
          }
        },
        Qt::QueuedConnection);
  });
}

void MainWindow::respondSelected(v1::ResponseCode code) {
  int daemon;
  uint64_t group;
  uint32_t device, domain;
  std::optional<uint32_t> pasid;
  if (!currentGroup(&daemon, &group, &device, &domain, &pasid)) {
    statusBar()->showMessage(tr("select a group first"), 5000);
    return;
  }
  const QString c = code == v1::RESPONSE_CODE_SUCCESS ? "SUCCESS" : "INVALID";
  if (!confirm(tr("Respond %1 to group %2 (device %3, domain %4) as the operator?").arg(c).arg(group).arg(device).arg(domain))) return;
  runAction(daemon, tr("Respond %1 to group %2").arg(c).arg(group),
            [group, code](v1::Router::StubInterface& stub, grpc::ClientContext& ctx) {
              v1::RespondRequest req;
              req.set_group(group);
              req.set_code(code);
              req.set_reason("iopf-inspector");
              v1::RespondResponse resp;
              return stub.Respond(&ctx, req, &resp);
            });
}

void MainWindow::detachSelected() {
  // A device or PASID node of the topology, else the selected group's device/PASID.
  const Scope sc = s_->topology()->scopeOf(topology_->currentIndex());
  int daemon;
  uint32_t device;
  std::optional<uint32_t> pasid;
  if (sc.daemon >= 0 && sc.device) {
    daemon = sc.daemon;
    device = *sc.device;
    pasid = sc.pasid;
  } else {
    uint64_t group;
    uint32_t domain;
    if (!currentGroup(&daemon, &group, &device, &domain, &pasid)) {
      statusBar()->showMessage(tr("select a device (topology) or a group first"), 5000);
      return;
    }
  }
  const QString what = pasid ? tr("PASID %1 of device %2").arg(*pasid).arg(device) : tr("device %1 (RID)").arg(device);
  if (!confirm(tr("Detach %1? Its open groups are answered by the daemon.").arg(what))) return;
  runAction(daemon, tr("Detach %1").arg(what), [device, pasid](v1::Router::StubInterface& stub, grpc::ClientContext& ctx) {
    v1::DetachRequest req;
    req.set_device(device);
    if (pasid) req.set_pasid(*pasid);
    v1::DetachResponse resp;
    return stub.Detach(&ctx, req, &resp);
  });
}

void MainWindow::pauseSelectedDomain(bool pause) {
  const Scope sc = s_->topology()->scopeOf(topology_->currentIndex());
  int daemon;
  uint32_t domain;
  if (sc.daemon >= 0 && sc.domain) {
    daemon = sc.daemon;
    domain = *sc.domain;
  } else {
    uint64_t group;
    uint32_t device;
    std::optional<uint32_t> pasid;
    if (!currentGroup(&daemon, &group, &device, &domain, &pasid)) {
      statusBar()->showMessage(tr("select a domain (topology) or a group first"), 5000);
      return;
    }
  }
  const QString verb = pause ? tr("Pause") : tr("Resume");
  if (!confirm(tr("%1 domain %2? %3").arg(verb).arg(domain).arg(pause ? tr("New groups wait (under their deadline) until it resumes.") : QString()))) {
    return;
  }
  runAction(daemon, tr("%1 domain %2 (PauseDomain)").arg(verb).arg(domain),
            [domain, pause](v1::Router::StubInterface& stub, grpc::ClientContext& ctx) {
              v1::PauseDomainRequest req;
              req.set_domain(domain);
              req.set_paused(pause);
              v1::PauseDomainResponse resp;
              return stub.PauseDomain(&ctx, req, &resp);
            });
}

void MainWindow::screenshotWhenReady(const QString& dir, uint64_t events) {
  auto* poll = new QTimer(this);
  auto started = std::make_shared<QElapsedTimer>();
  started->start();
  auto phase = std::make_shared<int>(0);
  connect(poll, &QTimer::timeout, this, [this, dir, events, poll, started, phase] {
    if (started->elapsed() > 60000) {
      std::fprintf(stderr, "iopf-inspector: no live data within 60 s (%llu events, %d groups shown, detail %s)\n",
                   static_cast<unsigned long long>(s_->totalEvents()), s_->outstandingProxy()->rowCount(),
                   detail_->loaded() ? "loaded" : "not loaded");
      QApplication::exit(1);
      return;
    }
    if (*phase == 0) {
      if (s_->totalEvents() < events || s_->outstandingProxy()->rowCount() == 0) return;
      // Show the oldest open group (the most interesting one) in the detail pane.
      const QModelIndex first = s_->outstandingProxy()->index(0, 0);
      outstanding_->setCurrentIndex(first);
      const QString key = first.data(OutstandingModel::kKeyRole).toString();
      detail_->showGroup(key.section(':', 0, 0).toInt(), key.section(':', 1, 1).toULongLong());
      *phase = 1;
      return;
    }
    if (*phase == 1) {
      if (!detail_->loaded()) return;
      *phase = 2;
      return;  // one more tick so the charts and ages settle
    }
    if (!detail_->loaded()) return;
    poll->stop();
    charts_->update();
    QDir().mkpath(dir);
    const bool a = grab().save(QDir(dir).filePath("main.png"));
    const bool b = detail_->grab().save(QDir(dir).filePath("detail.png"));
    // The charts tab too (not asked for by the script, handy for the docs).
    for (auto* d : docks_) {
      if (d->objectName() == "charts") {
        d->raise();
        QApplication::processEvents();
        (void)charts_->grab().save(QDir(dir).filePath("charts.png"));
      }
    }
    std::fprintf(stderr, "iopf-inspector: screenshots %s in %s\n", a && b ? "saved" : "FAILED", qPrintable(dir));
    QApplication::exit(a && b ? 0 : 1);
  });
  poll->start(500);
}

void MainWindow::closeEvent(QCloseEvent* e) {
  QSettings settings;
  settings.setValue("window/geometry", saveGeometry());
  settings.setValue("window/state", saveState());
  (void)s_->stopRecording();
  QMainWindow::closeEvent(e);
}

}  // namespace iopf::inspector
