// iopf-inspector — the desktop inspector of iopfd (docs/inspector.md).
//
//   iopf-inspector [--connect ADDR]... [--open CAPTURE] [--screenshot DIR --screenshot-after-events N]
#include <QApplication>
#include <QCommandLineParser>
#include <QSettings>
#include <cstdio>

#include "main_window.h"
#include "session.h"

int main(int argc, char** argv) {
  QApplication app(argc, argv);
  QApplication::setOrganizationName("iopf");
  QApplication::setApplicationName("iopf-inspector");
  QApplication::setApplicationVersion("0.1.0");

  QCommandLineParser p;
  p.setApplicationDescription("The desktop inspector of iopfd: domains, devices and outstanding page requests, live.");
  p.addHelpOption();
  p.addVersionOption();
  QCommandLineOption connect_opt({"c", "connect"}, "Connect to a daemon (unix:PATH, a socket path or host:port); repeatable.", "ADDR");
  QCommandLineOption open_opt({"o", "open"}, "Open a capture file (offline).", "CAPTURE");
  QCommandLineOption filter_opt("filter", "Start with this filter expression.", "EXPR");
  QCommandLineOption shot_opt("screenshot", "Save main.png and detail.png into DIR once live data is shown, then exit.", "DIR");
  QCommandLineOption shot_n_opt("screenshot-after-events", "Events to wait for before the screenshot (default 2000).", "N", "2000");
  QCommandLineOption settings_opt("no-settings", "Ignore the saved layout (clean start).");
  p.addOptions({connect_opt, open_opt, filter_opt, shot_opt, shot_n_opt, settings_opt});
  p.process(app);

  if (p.isSet(settings_opt) || p.isSet(shot_opt)) {
    // A clean, reproducible layout: settings of this run go to a scratch scope.
    QApplication::setApplicationName("iopf-inspector-clean");
    QSettings().clear();
  }
  iopf::inspector::Session session;
  iopf::inspector::MainWindow w(&session);
  for (const QString& a : p.values(connect_opt)) w.connectTo(a);
  for (const QString& f : p.values(open_opt)) w.openCapture(f);
  if (p.isSet(filter_opt)) {
    const auto r = session.setFilter(p.value(filter_opt));
    if (!r.expr) {
      std::fprintf(stderr, "iopf-inspector: --filter, column %zu: %s\n", r.error->pos + 1, r.error->message.c_str());
      return 2;
    }
    w.filterBox()->setEditText(p.value(filter_opt));
  }
  session.startTicking(80);
  if (p.isSet(shot_opt)) {
    w.resize(1600, 960);
    w.screenshotWhenReady(p.value(shot_opt), p.value(shot_n_opt).toULongLong());
  }
  w.show();
  const int rc = app.exec();
  session.stopAll();
  return rc;
}
