// iopf-bench core, comparison `plugin_chain`: the same closed-loop load with the chain made of a
// trivial handler plugin called through the C ABI (bench_trivial, with its per-call budget
// measurement) while the logger plugin consumes the event bus on its reader thread, against the
// in-process trivial handler (run again right before, so both see the same machine). Reports
// baseline_groups_per_s, groups_per_s, ratio (baseline / this) and
// overhead_ns (extra ns per group); `abi_only` is the same without the logger. Whole-router runs on a
// busy machine differ by more than the boundary costs, so `call` also measures the boundary alone:
// one handle() call of the plugin adapter (group converted to the C view, budget measurement,
// indirect call into the SDK) against one call of the in-process handler, single-threaded, the
// best of several rounds (target: ≤ 50 ns per group).
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include <algorithm>
#include <span>

#include "bench_common.h"
#include "iopf/clock.h"
#include "iopf/plugin_host.h"

namespace iopf::bench {
namespace {

PluginHostOptions quietOptions() {
  PluginHostOptions o;
  o.report = [](const PluginReport& r) {
    if (r.kind != PluginReportKind::kLog && r.kind != PluginReportKind::kLoaded) {
      std::fprintf(stderr, "iopf-bench plugin_chain: %s\n", r.message.c_str());
    }
  };
  o.call_budget_ns = 1'000'000'000'000;  // never the limit here: only the measurement's cost counts
  return o;
}

struct PluginRun {
  LoadResult load;
  std::map<std::string, uint64_t> logger;  // the logger's counters (empty without it)
};

PluginRun runThroughPlugins(const LoadOptions& base, bool with_logger, const std::string& out_dir) {
  PluginHost handlers(nullptr, quietOptions());
  if (absl::Status s = handlers.loadFile(IOPF_BENCH_TRIVIAL_PLUGIN); !s.ok()) {
    throw std::runtime_error(std::string(s.message()));
  }
  if (absl::Status s = handlers.start(); !s.ok()) throw std::runtime_error(std::string(s.message()));
  std::unique_ptr<PluginHost> events;
  PluginRun run;
  LoadOptions o = base;
  DomainId next_domain = 1;  // runRouterLoad creates one domain per shard, ids from 1
  const ChainFactory chain = [&] {
    auto h = handlers.createHandler("bench_trivial", next_domain++);
    if (!h.ok()) throw std::runtime_error(std::string(h.status().message()));
    return std::vector<std::shared_ptr<Handler>>{*h};
  };
  if (with_logger) {
    o.on_ready = [&](Router& router) {
      events = std::make_unique<PluginHost>(&router, quietOptions());
      const std::string config = "{\"json_path\": \"" + out_dir + "/events.jsonl\", \"capture_path\": \"" +
                                 out_dir + "/events.iopfcap\", \"max_file_bytes\": 67108864, "
                                 "\"max_files\": 1, \"max_events_per_second\": 100000}";
      if (absl::Status s = events->loadFile(IOPF_BENCH_LOGGER_PLUGIN, config); !s.ok()) {
        throw std::runtime_error(std::string(s.message()));
      }
      if (absl::Status s = events->start(); !s.ok()) throw std::runtime_error(std::string(s.message()));
    };
    o.on_window = [&](bool start) {
      if (start || !events) return;
      events->shutdown();  // before the router goes: the reader drains and the logger flushes
      if (auto st = events->status("logger")) {
        for (const auto& [k, v] : st->counters) run.logger[k] = v;
      }
    };
  }
  run.load = runRouterLoad(o, chain);
  handlers.shutdown();
  return run;
}

// ns per handle() call of `h` on a one-request group: the best of `rounds` rounds.
double callNs(Handler& h, int rounds, int calls) {
  PageRequest req;
  req.device = 1;
  req.grpid = 3;
  req.addr = 0x1000;
  req.perm = perm::kRead;
  req.last = true;
  GroupView view;
  view.id = 1;
  view.domain = 1;
  view.device = 1;
  view.grpid = 3;
  view.requests = std::span<const PageRequest>(&req, 1);
  const CompletionHandle completion;
  double best = 1e18;
  uint64_t sink = 0;
  for (int r = 0; r < rounds; ++r) {
    const int64_t t0 = SteadyClock::read();
    for (int i = 0; i < calls; ++i) {
      view.id = static_cast<GroupId>(i);
      sink += static_cast<uint64_t>(h.handle(view, completion).kind);
    }
    const int64_t t1 = SteadyClock::read();
    best = std::min(best, static_cast<double>(t1 - t0) / calls);
  }
  if (sink == 42) std::fprintf(stderr, " ");  // keeps the calls
  return best;
}

void pluginChain(const LoadOptions& o, const LoadResult& router, Json& j) {
  char tmpl[] = "/tmp/iopf-bench-logger-XXXXXX";
  const std::string dir = ::mkdtemp(tmpl) == nullptr ? std::string("/tmp") : std::string(tmpl);
  // A baseline of its own right before: the same machine state as the plugin runs.
  const LoadResult baseline = runRouterLoad(o, [] { return std::vector<std::shared_ptr<Handler>>{trivialHandler()}; });
  const PluginRun abi = runThroughPlugins(o, false, dir);
  const PluginRun full = runThroughPlugins(o, true, dir);
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  (void)router;  // compared with its own adjacent baseline instead (see above)
  const double base = baseline.groups_per_s;
  auto overhead = [&](double rate) { return rate > 0 && base > 0 ? 1e9 / rate - 1e9 / base : 0.0; };
  j.begin();
  j.field("baseline_groups_per_s", base);
  j.field("groups_per_s", full.load.groups_per_s);
  j.field("ratio", full.load.groups_per_s > 0 ? base / full.load.groups_per_s : 0.0);
  j.field("overhead_ns", overhead(full.load.groups_per_s));
  j.field("latency_p99_ns", full.load.latency.percentile(0.99));
  j.field("allocs_per_group", full.load.allocs_per_group);
  j.key("logger").begin();
  for (const char* k : {"events_seen", "events_written", "dropped_rate_limited", "dropped_lost", "write_errors"}) {
    j.field(k, full.logger.count(k) ? full.logger.at(k) : uint64_t{0});
  }
  j.end();
  {
    PluginHost host(nullptr, quietOptions());
    if (absl::Status s = host.loadFile(IOPF_BENCH_TRIVIAL_PLUGIN); !s.ok()) throw std::runtime_error(std::string(s.message()));
    auto plugin = host.createHandler("bench_trivial", 1);
    if (!plugin.ok()) throw std::runtime_error(std::string(plugin.status().message()));
    std::shared_ptr<Handler> local = trivialHandler();
    double plugin_ns = 1e18, local_ns = 1e18;
    for (int pass = 0; pass < 5; ++pass) {  // interleaved, so both see the same machine
      local_ns = std::min(local_ns, callNs(*local, 3, 2'000'000));
      plugin_ns = std::min(plugin_ns, callNs(**plugin, 3, 2'000'000));
    }
    j.key("call").begin();
    j.field("in_process_ns", local_ns);
    j.field("plugin_ns", plugin_ns);
    j.field("overhead_ns", plugin_ns - local_ns);
    j.end();
  }
  j.key("abi_only").begin();
  j.field("groups_per_s", abi.load.groups_per_s);
  j.field("ratio", abi.load.groups_per_s > 0 ? base / abi.load.groups_per_s : 0.0);
  j.field("overhead_ns", overhead(abi.load.groups_per_s));
  j.field("allocs_per_group", abi.load.allocs_per_group);
  j.end();
  j.end();
}

const CoreComparisonRegistrar kRegistered("plugin_chain", &pluginChain);

}  // namespace
}  // namespace iopf::bench
