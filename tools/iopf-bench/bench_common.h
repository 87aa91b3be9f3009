// Shared pieces of iopf-bench: argument parsing, a small JSON writer, allocation counting, RSS and
// the closed-loop router load that every mode builds on.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "iopf/handler.h"
#include "iopf/router.h"
#include "iopf/stats.h"

namespace iopf::bench {

// --- arguments ------------------------------------------------------------------------------
// "--name value" and "--flag" pairs after the mode name.
class Args {
 public:
  Args(int argc, char** argv);
  bool flag(const std::string& name) const;
  double number(const std::string& name, double fallback) const;
  std::string text(const std::string& name, const std::string& fallback) const;
  // Names given that no mode asked about: reported as errors by main.
  std::vector<std::string> unused() const;

 private:
  std::map<std::string, std::optional<std::string>> values_;
  mutable std::map<std::string, bool> used_;
};

// --- JSON ---------------------------------------------------------------------------------------
class Json {
 public:
  Json& begin();                          // {
  Json& end();                            // }
  Json& key(const std::string& k);        // "k":
  Json& value(double v);
  Json& value(uint64_t v);
  Json& value(int64_t v);
  Json& value(const std::string& v);
  Json& value(bool v);
  template <typename T>
  Json& field(const std::string& k, T v) { return key(k).value(v); }
  Json& field(const std::string& k, const char* v) { return key(k).value(std::string(v)); }
  const std::string& str() const { return out_; }

 private:
  void comma();
  std::string out_;
  std::vector<bool> first_{true};
};

// `"key": {"p50", "p90", "p99", "p999", "max"}` of a latency histogram, in nanoseconds.
void latencyJson(Json& json, const std::string& key, const LatencyHistogram::Snapshot& latency);

// --- process figures ----------------------------------------------------------------------------
// Heap allocations made by this process so far (counted by iopf-bench's operator new).
uint64_t allocationCount();
uint64_t rssBytes();

// Histogram of the values recorded between two snapshots of one histogram.
LatencyHistogram::Snapshot histogramDiff(const LatencyHistogram::Snapshot& later,
                                         const LatencyHistogram::Snapshot& earlier);

// --- the closed-loop router load ---------------------------------------------------------------
struct LoadOptions {
  double seconds = 2.0;
  double warmup = 0.5;
  uint32_t devices = 8;
  uint32_t window_per_device = 256;  // groups in flight per device (≤ 512: no PRGI reuse while open)
  uint32_t batch = 64;               // requests handed to the router per deliver()
  uint32_t group_size = 1;           // requests per group
  unsigned shards = 1;
  // Hooks for modes that add observers: after the router is set up (before the load starts), and
  // at the start (true) and end (false) of the measured window. Called on the producer thread.
  std::function<void(Router&)> on_ready;
  std::function<void(bool)> on_window;
};

struct LoadResult {
  uint64_t groups = 0;
  uint64_t requests = 0;
  double seconds = 0;
  double groups_per_s = 0;
  double requests_per_s = 0;
  LatencyHistogram::Snapshot latency;  // request → response, measured by the router
  double allocs_per_group = 0;
};

using ChainFactory = std::function<std::vector<std::shared_ptr<Handler>>()>;

// One producer thread plays the backend's I/O thread: it keeps `window_per_device` groups in
// flight per device and delivers them in batches; responses return the credits. Measures after a
// warm-up.
LoadResult runRouterLoad(const LoadOptions& options, const ChainFactory& chain);

// A handler that answers SUCCESS at once: the cheapest possible chain.
std::shared_ptr<Handler> trivialHandler();

// Comparisons of `iopf-bench core` registered from other source files (e.g. plugin_chain):
// each adds `"name": {...}` to the "compare" object, measured in the same run.
using CoreComparison = std::function<void(const LoadOptions& options, const LoadResult& router, Json& json)>;
struct CoreComparisonRegistrar {
  CoreComparisonRegistrar(const std::string& name, CoreComparison fn);
};
const std::vector<std::pair<std::string, CoreComparison>>& coreComparisons();

}  // namespace iopf::bench
