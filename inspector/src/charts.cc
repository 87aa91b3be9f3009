#include "charts.h"

#include <QChart>
#include <QChartView>
#include <QGridLayout>
#include <QLineSeries>
#include <QValueAxis>
#include <algorithm>

#include "session.h"

namespace iopf::inspector {

namespace {

QChart* makeChart(const QString& title, QValueAxis** x, QValueAxis** y, const QString& ylabel) {
  auto* c = new QChart();
  c->setTitle(title);
  c->setMargins(QMargins(4, 4, 4, 4));
  c->legend()->setAlignment(Qt::AlignRight);
  c->setAnimationOptions(QChart::NoAnimation);
  *x = new QValueAxis();
  (*x)->setRange(-ChartsWidget::kWindowSeconds, 0);
  (*x)->setLabelFormat("%d s");
  (*x)->setTickCount(7);
  *y = new QValueAxis();
  (*y)->setTitleText(ylabel);
  (*y)->setLabelFormat("%.0f");
  c->addAxis(*x, Qt::AlignBottom);
  c->addAxis(*y, Qt::AlignLeft);
  return c;
}

QLineSeries* addSeries(QChart* c, QValueAxis* x, QValueAxis* y, const QString& name) {
  auto* s = new QLineSeries();
  s->setName(name);
  c->addSeries(s);
  s->attachAxis(x);
  s->attachAxis(y);
  return s;
}

}  // namespace

ChartsWidget::ChartsWidget(Session* session, QWidget* parent) : QWidget(parent), s_(session) {
  auto* grid = new QGridLayout(this);
  grid->setContentsMargins(0, 0, 0, 0);
  rates_ = makeChart(tr("Faults/s and responses/s per domain"), &rates_x_, &rates_y_, tr("per s"));
  latency_ = makeChart(tr("Response latency"), &lat_x_, &lat_y_, tr("ms"));
  outstanding_ = makeChart(tr("Outstanding groups"), &out_x_, &out_y_, tr("groups"));
  p50_ = addSeries(latency_, lat_x_, lat_y_, "p50");
  p99_ = addSeries(latency_, lat_x_, lat_y_, "p99");
  open_ = addSeries(outstanding_, out_x_, out_y_, tr("open"));
  outstanding_->legend()->hide();
  int col = 0;
  for (QChart* c : {rates_, latency_, outstanding_}) {
    auto* v = new QChartView(c);
    v->setRenderHint(QPainter::Antialiasing);
    v->setMinimumHeight(160);
    grid->addWidget(v, 0, col++);
  }
  grid->setColumnStretch(0, 2);
  grid->setColumnStretch(1, 1);
  grid->setColumnStretch(2, 1);
  connect(&timer_, &QTimer::timeout, this, &ChartsWidget::update);
  timer_.start(1000);
}

QLineSeries* ChartsWidget::series(std::map<std::pair<int, uint32_t>, QLineSeries*>& m, QChart* chart, QValueAxis* x,
                                  QValueAxis* y, std::pair<int, uint32_t> key, const QString& suffix, bool dashed) {
  auto it = m.find(key);
  if (it != m.end()) return it->second;
  QString name = QStringLiteral("dom %1").arg(key.second);
  if (s_->daemonCount() > 1) name = QStringLiteral("%1/%2").arg(key.first).arg(name);
  const auto& ds = s_->daemon(key.first);
  auto di = ds.domains.find(key.second);
  if (di != ds.domains.end() && !di->second.name().empty()) name += " " + QString::fromStdString(di->second.name());
  auto* s = addSeries(chart, x, y, name + " " + suffix);
  if (dashed) {
    // Responses: the same colour as the domain's faults, dashed.
    auto f = faults_.find(key);
    QPen pen = s->pen();
    if (f != faults_.end()) pen.setColor(f->second->pen().color());
    pen.setStyle(Qt::DashLine);
    pen.setWidth(2);
    s->setPen(pen);
  }
  m[key] = s;
  return s;
}

void ChartsWidget::update() {
  const auto& b = s_->chartBuckets();
  if (b.empty()) return;
  // The newest second may still be filling: plot up to the one before it.
  const int64_t newest = b.rbegin()->first;
  const int64_t last = b.size() > 1 ? newest - 1 : newest;
  std::map<std::pair<int, uint32_t>, QList<QPointF>> f, r;
  QList<QPointF> p50, p99, open;
  double ymax_rate = 1, ymax_lat = 1, ymax_open = 1;
  for (auto it = b.lower_bound(last - kWindowSeconds); it != b.end() && it->first <= last; ++it) {
    const double x = static_cast<double>(it->first - last);
    for (const auto& [k, v] : it->second.faults) f[k].append(QPointF(x, static_cast<double>(v)));
    for (const auto& [k, v] : it->second.responses) r[k].append(QPointF(x, static_cast<double>(v)));
    for (const auto& [k, v] : it->second.faults) ymax_rate = std::max(ymax_rate, static_cast<double>(v));
    for (const auto& [k, v] : it->second.responses) ymax_rate = std::max(ymax_rate, static_cast<double>(v));
    std::vector<int64_t> lat = it->second.latencies;
    if (!lat.empty()) {
      auto pct = [&](double q) {
        const size_t i = std::min(lat.size() - 1, static_cast<size_t>(q * static_cast<double>(lat.size())));
        std::nth_element(lat.begin(), lat.begin() + static_cast<std::ptrdiff_t>(i), lat.end());
        return static_cast<double>(lat[i]) / 1e6;
      };
      const double a = pct(0.5), c = pct(0.99);
      p50.append(QPointF(x, a));
      p99.append(QPointF(x, c));
      ymax_lat = std::max(ymax_lat, c);
    }
    open.append(QPointF(x, static_cast<double>(it->second.outstanding)));
    ymax_open = std::max(ymax_open, static_cast<double>(it->second.outstanding));
  }
  for (auto& [k, pts] : f) series(faults_, rates_, rates_x_, rates_y_, k, tr("faults"), false)->replace(pts);
  for (auto& [k, pts] : r) series(responses_, rates_, rates_x_, rates_y_, k, tr("responses"), true)->replace(pts);
  p50_->replace(p50);
  p99_->replace(p99);
  open_->replace(open);
  rates_y_->setRange(0, ymax_rate * 1.1);
  lat_y_->setRange(0, ymax_lat * 1.1);
  lat_y_->setLabelFormat(ymax_lat < 10 ? "%.2f" : "%.0f");
  out_y_->setRange(0, ymax_open * 1.1 + 1);
}

}  // namespace iopf::inspector
