// Charts (Qt Charts): faults/s and responses/s per domain, response latency p50/p99, outstanding
// groups over time. Fed from the session's per-second buckets (daemon time, so a capture file plots
// as it happened); one series->replace() per series per chart tick.
#pragma once

#include <QTimer>
#include <QWidget>
#include <map>

class QChart;
class QLineSeries;
class QValueAxis;

namespace iopf::inspector {

class Session;

class ChartsWidget : public QWidget {
  Q_OBJECT
 public:
  explicit ChartsWidget(Session* session, QWidget* parent = nullptr);
  void update();
  static constexpr int kWindowSeconds = 120;

 private:
  QLineSeries* series(std::map<std::pair<int, uint32_t>, QLineSeries*>& m, QChart* chart, QValueAxis* x, QValueAxis* y,
                      std::pair<int, uint32_t> key, const QString& suffix, bool dashed);
  Session* s_;
  QTimer timer_;
  QChart *rates_, *latency_, *outstanding_;
  QValueAxis *rates_x_, *rates_y_, *lat_x_, *lat_y_, *out_x_, *out_y_;
  std::map<std::pair<int, uint32_t>, QLineSeries*> faults_, responses_;
  QLineSeries *p50_, *p99_, *open_;
};

}  // namespace iopf::inspector
