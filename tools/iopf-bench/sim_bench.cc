// iopf-bench sim: simulated PCIe devices → router → chain → responses → devices, end to end and
// in-process, with the device-side view (requests issued, retried, aborted; latency from request
// issue to response receipt at the device). Compared in the same run with:
// - raw_echo: the same simulated devices answered inline by their own feeding thread (resolve +
//   answer, no router, no thread hop): the ceiling of the device model itself;
// - naive: the same devices behind what a VMM writes by hand: one mutex, std::map of partial and
//   open groups, a deque, a condition variable signalled per group, one worker answering one group
//   at a time.
// Then: p99 device-observed latency at a fixed offered rate (open loop, Poisson), and memory per
// open group at 512 open groups × 1,024 devices.
#include <algorithm>
#include <array>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <iostream>
#include <map>
#include <mutex>
#include <thread>

#include "bench_common.h"
#include "bench_modes.h"
#include "iopf/clock.h"
#include "scenario.h"
#include "sim_handlers.h"
#include "simulation.h"
#ifdef IOPF_BENCH_SIM_PLUGINS
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "iopf/plugin_host.h"
#endif

namespace iopf::bench {
namespace {

using sim::Counter;

std::string builtinScenario(uint32_t devices, uint32_t credits, uint32_t group_size) {
  return R"({
    "name": "bench-closed-loop",
    "description": "builtin: every device closed loop, uniform misses over 1 GiB, sim_resolver maps",
    "seed": 1,
    "router": {"shards": 1},
    "backend": {"feeders": 1},
    "domains": [{"name": "host", "kind": "paging", "deadline_ms": 1000,
                 "address_space": [{"base": "0x100000000", "size": "1GiB", "perm": "rw"}],
                 "chain": [{"name": "sim_resolver"}]}],
    "devices": [{"name": "dev", "count": )" +
         std::to_string(devices) + R"(, "rid": "01:00.0",
                 "pri_allocation": )" +
         std::to_string(credits) + R"(,
                 "workload": {"kind": "uniform", "base": "0x100000000", "size": "1GiB",
                              "group_size": {"min": )" +
         std::to_string(group_size) + R"(, "max": )" + std::to_string(group_size) + R"(}}}],
    "attachments": [{"device": "dev*", "domain": "host"}]
  })";
}

sim::Scenario mustParse(const std::string& json, const std::string& name) {
  auto s = sim::parseScenario(json, name);
  if (!s.ok()) throw std::runtime_error(std::string(s.status().message()));
  return *s;
}

void sleepSeconds(double s) {
  std::this_thread::sleep_for(std::chrono::duration<double>(s));
}

// How "plugin:<id>" chain entries of a scenario are built: a plugin host over the run's router,
// plugins loaded from `dir` by id. `fault_around` overrides sva_resolver's config.
struct PluginOptions {
  std::string dir;
  std::optional<uint32_t> fault_around;
};

bool usesPlugin(const sim::Scenario& scenario, const std::string& id) {
  for (const sim::ScenarioDomain& d : scenario.domains) {
    for (const sim::HandlerSpec& h : d.chain) {
      if (h.kind == sim::HandlerSpec::Kind::kPlugin && h.plugin == id) return true;
    }
  }
  return false;
}

struct SimRun {
  uint64_t groups = 0;
  uint64_t requests = 0;
  double seconds = 0;
  double groups_per_s = 0;
  double requests_per_s = 0;
  LatencyHistogram::Snapshot latency;         // router: first request → response
  LatencyHistogram::Snapshot device_latency;  // device: issue → response receipt
  double allocs_per_group = 0;
  sim::CounterSnapshot device;  // deltas over the measured window
  uint64_t bogus = 0;
  uint64_t rss = 0;
  unsigned shards = 0;
  unsigned feeders = 0;
  uint64_t success = 0;             // SUCCESS responses in the window
  uint64_t completed_accesses = 0;  // device accesses completed in the window (mapped or retried)
  std::vector<std::pair<std::string, uint64_t>> resolver;  // sva_resolver counters, whole run
};

sim::CounterSnapshot minus(const sim::CounterSnapshot& a, const sim::CounterSnapshot& b) {
  sim::CounterSnapshot d;
  for (size_t i = 0; i < sim::kCounterCount; ++i) d.values[i] = a.values[i] - b.values[i];
  return d;
}

#ifdef IOPF_BENCH_SIM_PLUGINS
// The handler config with sva_resolver's fault_around replaced.
std::string withFaultAround(const std::string& json, uint32_t pages) {
  google::protobuf::Struct config;
  if (!google::protobuf::util::JsonStringToMessage(json, &config).ok()) return json;
  (*config.mutable_fields())["fault_around"].set_number_value(pages);
  std::string out;
  if (!google::protobuf::util::MessageToJsonString(config, &out).ok()) return json;
  return out;
}
#endif

SimRun runSimulation(const sim::Scenario& scenario, double warmup, double seconds,
                     std::optional<unsigned> shards, std::optional<unsigned> feeders,
                     bool run_to_completion = false, const PluginOptions* plugins = nullptr) {
  sim::SimulationOptions o;
  o.shards = shards;
  o.feeders = feeders;
  o.run_to_completion = run_to_completion;
#ifdef IOPF_BENCH_SIM_PLUGINS
  // Declared before the simulation: destroyed after it (the router shuts down first).
  std::unique_ptr<PluginHost> host;
  if (plugins != nullptr) {
    o.plugin_handler = [&](Router& router, DomainId domain,
                           const sim::HandlerSpec& h) -> absl::StatusOr<std::shared_ptr<Handler>> {
      if (!host) {
        PluginHostOptions ho;
        ho.report = [](const PluginReport& r) {  // one "loaded" line per run would drown the figures
          if (r.kind != PluginReportKind::kLoaded) {
            std::fprintf(stderr, "iopf-bench: plugin %s: %s\n", r.plugin.c_str(), r.message.c_str());
          }
        };
        host = std::make_unique<PluginHost>(&router, ho);
      }
      if (!host->status(h.plugin)) {
        if (absl::Status st = host->loadFile(plugins->dir + "/" + h.plugin + ".so"); !st.ok()) return st;
      }
      PluginHandlerConfig c;
      c.json = h.config_json;
      c.source = h.config_source;
      if (h.plugin == "sva_resolver" && plugins->fault_around) {
        c.json = withFaultAround(c.json, *plugins->fault_around);
      }
      return host->createHandler(h.plugin, domain, c);
    };
  }
#else
  (void)plugins;
#endif
  auto created = sim::Simulation::create(scenario, o);
  if (!created.ok()) throw std::runtime_error(std::string(created.status().message()));
  sim::Simulation& s = **created;
#ifdef IOPF_BENCH_SIM_PLUGINS
  if (host) {
    if (absl::Status st = host->start(); !st.ok()) throw std::runtime_error(std::string(st.message()));
  }
#endif
  if (absl::Status st = s.start(); !st.ok()) throw std::runtime_error(std::string(st.message()));
  sleepSeconds(warmup);
  const StatsSnapshot r0 = s.router().stats();
  const sim::SimTotals d0 = s.backend().totals();
  const LatencyHistogram::Snapshot dl0 = s.backend().latency();
  const uint64_t a0 = allocationCount();
  const int64_t t0 = SteadyClock::read();
  sleepSeconds(seconds);
  const int64_t t1 = SteadyClock::read();
  const uint64_t a1 = allocationCount();
  const StatsSnapshot r1 = s.router().stats();
  const sim::SimTotals d1 = s.backend().totals();
  const LatencyHistogram::Snapshot dl1 = s.backend().latency();
  SimRun out;
  out.rss = rssBytes();
  out.shards = s.router().shardCount();
  out.feeders = scenario.feeders;
  if (feeders) out.feeders = *feeders;
  s.stop();
#ifdef IOPF_BENCH_SIM_PLUGINS
  if (host) {
    if (auto st = host->status("sva_resolver")) out.resolver = st->counters;
    host->shutdown();
  }
#endif
  out.success = r1.responses_by_code[0] - r0.responses_by_code[0];
  out.seconds = static_cast<double>(t1 - t0) / 1e9;
  out.groups = r1.responses - r0.responses;
  out.requests = r1.requests - r0.requests;
  out.groups_per_s = static_cast<double>(out.groups) / out.seconds;
  out.requests_per_s = static_cast<double>(out.requests) / out.seconds;
  out.latency = histogramDiff(r1.latency, r0.latency);
  out.device_latency = histogramDiff(dl1, dl0);
  // Measured before stop(): allocations of the steady state only (the bench thread sleeps).
  out.allocs_per_group = out.groups == 0 ? 0 : static_cast<double>(a1 - a0) / static_cast<double>(out.groups);
  out.device = minus(d1.counters, d0.counters);
  out.completed_accesses = out.device[Counter::kCompletedAccesses];
  out.bogus = s.backend().bogusReportCount();
  return out;
}

// --- comparisons: the same devices without the router -------------------------------------------

// Answers each complete group like sim_resolver would (map the pages, SUCCESS), either inline on
// the device's feeding thread (raw_echo) or through a hand-written mutex/map/condvar worker (naive).
class ComparisonSink final : public RouterSink {
 public:
  enum class Kind { kRawEcho, kNaive };
  ComparisonSink(Kind kind, sim::SimulatedBackend& backend, DomainId domain,
                 std::shared_ptr<const sim::AddressSpace> space)
      : kind_(kind), backend_(backend), domain_(domain), space_(std::move(space)) {
    if (kind_ == Kind::kNaive) worker_ = std::thread([this] { naiveWorker(); });
  }
  ~ComparisonSink() override { stopWorker(); }

  void stopWorker() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    if (worker_.joinable()) worker_.join();
  }

  BackendId backendId() const override { return 1; }
  absl::StatusOr<DeviceId> addDevice(const DeviceSpec& spec) override {
    handles_.push_back(spec.backend_handle);
    partial_count_.emplace_back();
    return static_cast<DeviceId>(handles_.size());
  }
  absl::Status removeDevice(DeviceId) override { return absl::OkStatus(); }
  void discardPartial() override {}

  void deliver(std::span<const PageRequest> requests) override {
    if (kind_ == Kind::kRawEcho) {
      out_.clear();
      for (const PageRequest& r : requests) {
        auto& counts = partial_count_[r.device - 1];
        ++counts[r.grpid & 511];
        if (!r.last) continue;
        Response resp = answer(r, counts[r.grpid & 511]);
        counts[r.grpid & 511] = 0;
        resolvePage(r);
        out_.push_back(resp);
      }
      backend_.respond(out_);
      return;
    }
    for (const PageRequest& r : requests) {
      std::unique_lock lk(mu_);
      auto& buf = partial_[{r.device, r.grpid}];
      buf.push_back(r);
      if (!r.last) continue;
      const uint64_t id = next_id_++;
      open_.emplace(id, std::move(buf));
      partial_.erase({r.device, r.grpid});
      queue_.push_back(id);
      lk.unlock();
      cv_.notify_one();
    }
  }

 private:
  Response answer(const PageRequest& last, uint32_t count) const {
    Response r;
    r.device = last.device;
    r.backend_handle = handles_[last.device - 1];
    r.grpid = last.grpid;
    r.pasid = last.pasid;
    r.cookie = last.cookie;
    r.code = ResponseCode::kSuccess;
    r.origin = Origin::kHandler;
    r.request_count = count;
    return r;
  }
  void resolvePage(const PageRequest& r) {
    const sim::AddressRegion* region = space_->find(r.addr);
    if (region == nullptr) return;
    MapRequest m;
    m.domain = domain_;
    m.iova = r.addr & ~uint64_t{4095};
    m.length = 4096;
    m.perm = region->perm;
    (void)backend_.map(m);
  }
  void naiveWorker() {
    for (;;) {
      std::unique_lock lk(mu_);
      cv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      const uint64_t id = queue_.front();
      queue_.pop_front();
      std::vector<PageRequest> group = open_.at(id);
      lk.unlock();
      for (const PageRequest& r : group) resolvePage(r);
      const Response resp = answer(group.back(), static_cast<uint32_t>(group.size()));
      lk.lock();
      open_.erase(id);
      lk.unlock();
      backend_.respond({&resp, 1});
    }
  }

  const Kind kind_;
  sim::SimulatedBackend& backend_;
  const DomainId domain_;
  std::shared_ptr<const sim::AddressSpace> space_;
  std::vector<uint64_t> handles_;
  std::vector<std::array<uint32_t, 512>> partial_count_;
  std::vector<Response> out_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::pair<DeviceId, uint32_t>, std::vector<PageRequest>> partial_;
  std::map<uint64_t, std::vector<PageRequest>> open_;
  std::deque<uint64_t> queue_;
  uint64_t next_id_ = 1;
  bool stop_ = false;
  std::thread worker_;
};

double runComparison(ComparisonSink::Kind kind, const sim::Scenario& scenario, double warmup,
                     double seconds) {
  sim::SimulatedBackend::Options bo;
  bo.feeders = scenario.feeders;
  sim::SimulatedBackend backend(bo);
  for (const sim::SimDeviceConfig& d : scenario.devices) {
    if (!backend.addDevice(d).ok()) throw std::runtime_error("comparison: addDevice failed");
  }
  constexpr DomainId kDomain = 1;
  if (!backend.addDomain(kDomain, scenario.domains.at(0).spec.kind).ok())
    throw std::runtime_error("addDomain");
  auto space = std::make_shared<const sim::AddressSpace>(scenario.domains.at(0).address_space);
  ComparisonSink sink(kind, backend, kDomain, space);
  if (!backend.start(sink).ok()) throw std::runtime_error("comparison: start failed");
  for (uint32_t i = 0; i < backend.deviceCount(); ++i) (void)backend.attach(i, std::nullopt, kDomain);
  if (!backend.startTraffic().ok()) throw std::runtime_error("comparison: startTraffic failed");
  sleepSeconds(warmup);
  const uint64_t g0 = backend.totals().counters[Counter::kResponses];
  const int64_t t0 = SteadyClock::read();
  sleepSeconds(seconds);
  const uint64_t g1 = backend.totals().counters[Counter::kResponses];
  const int64_t t1 = SteadyClock::read();
  backend.stop();
  sink.stopWorker();
  return static_cast<double>(g1 - g0) / (static_cast<double>(t1 - t0) / 1e9);
}

// --- memory at 512 open groups × 1,024 devices ------------------------------------------------------

struct MemoryResult {
  uint64_t devices = 0;
  uint64_t open_groups = 0;
  uint64_t rss_before = 0;  // process before the simulation exists
  uint64_t rss_idle = 0;    // router, backend, 1,024 registered devices, no traffic
  uint64_t rss_open = 0;    // every device at 512 open groups
};

MemoryResult runMemory(uint32_t devices, uint32_t open_per_device) {
  const std::string json = R"({
    "name": "bench-memory",
    "router": {"shards": 1},
    "domains": [{"name": "hold", "deadline_ms": 100000000, "chain": [{"name": "sim_hold"}]}],
    "devices": [{"name": "dev", "count": )" +
                           std::to_string(devices) + R"(, "rid": "01:00.0",
                 "pri_allocation": )" +
                           std::to_string(open_per_device) + R"(,
                 "workload": {"kind": "sequential", "base": "0x100000000", "size": "1GiB"}}],
    "attachments": [{"device": "dev*", "domain": "hold"}]
  })";
  const sim::Scenario scenario = mustParse(json, "builtin:memory");
  MemoryResult m;
  m.devices = devices;
  m.rss_before = rssBytes();
  ManualClock clock;
  sim::SimulationOptions o;
  o.threaded = false;
  o.clock = &clock;
  o.shards = 1;
  auto created = sim::Simulation::create(scenario, o);
  if (!created.ok()) throw std::runtime_error(std::string(created.status().message()));
  sim::Simulation& s = **created;
  m.rss_idle = rssBytes();
  if (!s.start().ok()) throw std::runtime_error("memory: start failed");
  s.runUntilIdle(100000);
  m.open_groups = s.router().stats().open_groups;
  m.rss_open = rssBytes();
  s.stop();
  return m;
}

// How much of the machine a spinning thread actually gets: two threads (one per core here) spin
// reading the clock and count the gaps. On a VM, gaps are host preemption; every tail latency
// below sits on top of them.
struct MachineNoise {
  double share_in_gaps_over_10us = 0;  // of wall time, per thread, averaged
  double gaps_over_50us_per_s = 0;
  int64_t max_gap_ns = 0;
};

MachineNoise measureNoise(double seconds) {
  constexpr int kThreads = 2;
  std::array<int64_t, kThreads> in_gaps{}, over50{}, max_gap{};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const int64_t end = SteadyClock::read() + static_cast<int64_t>(seconds * 1e9);
      int64_t prev = SteadyClock::read();
      for (;;) {
        const int64_t now = SteadyClock::read();
        const int64_t gap = now - prev;
        prev = now;
        if (now > end) break;
        if (gap > 10'000) in_gaps[t] += gap;
        if (gap > 50'000) ++over50[t];
        max_gap[t] = std::max(max_gap[t], gap);
      }
    });
  }
  for (auto& th : threads) th.join();
  MachineNoise n;
  for (int t = 0; t < kThreads; ++t) {
    n.share_in_gaps_over_10us += static_cast<double>(in_gaps[t]) / (seconds * 1e9) / kThreads;
    n.gaps_over_50us_per_s += static_cast<double>(over50[t]) / seconds / kThreads;
    n.max_gap_ns = std::max(n.max_gap_ns, max_gap[t]);
  }
  return n;
}

bool hasScenarioArg(const Args& args) {
  return !args.text("scenario", "").empty();
}

}  // namespace

int runSim(const Args& args) {
  const double seconds = args.number("seconds", 2.0);
  const double warmup = args.number("warmup", 0.5);
  const bool json = args.flag("json");
  const std::string file = args.text("scenario", "");
  const auto devices = static_cast<uint32_t>(args.number("devices", 64));
  const auto credits = static_cast<uint32_t>(args.number("credits", 32));
  const auto group_size = static_cast<uint32_t>(args.number("group-size", 1));
  const double latency_rate = args.number("latency-rate", 500'000);
  const bool skip_compare = args.flag("no-compare");
  const bool skip_memory = args.flag("no-memory");
  const bool skip_latency = args.flag("no-latency");
  const bool skip_rtc = args.flag("no-run-to-completion");
  const auto mem_devices = static_cast<uint32_t>(args.number("memory-devices", 1024));
  const auto mem_open = static_cast<uint32_t>(args.number("memory-open", 512));
  std::optional<unsigned> shards, feeders;
  if (args.number("shards", 0) > 0) shards = static_cast<unsigned>(args.number("shards", 0));
  if (args.number("feeders", 0) > 0) feeders = static_cast<unsigned>(args.number("feeders", 0));

  sim::Scenario scenario;
  if (hasScenarioArg(args)) {
    auto s = sim::loadScenario(file);
    if (!s.ok()) throw std::runtime_error(std::string(s.status().message()));
    scenario = *s;
  } else {
    scenario = mustParse(builtinScenario(devices, credits, group_size), "builtin:closed-loop");
  }

  if (args.number("max-batch", 0) > 0)
    scenario.max_batch = static_cast<uint32_t>(args.number("max-batch", 0));

  PluginOptions plugin_options;
#ifdef IOPF_BENCH_SIM_PLUGINS
  plugin_options.dir = args.text("plugin-dir", IOPF_BENCH_PLUGIN_DIR);
#endif
  const PluginOptions* plugins = &plugin_options;
  const SimRun run = runSimulation(scenario, warmup, seconds, shards, feeders, false, plugins);
  Json j;
  j.begin();
  j.field("mode", "sim");
  j.field("scenario", file.empty() ? std::string("builtin:closed-loop") : file);
  j.field("devices", static_cast<uint64_t>(scenario.devices.size()));
  j.field("shards", static_cast<uint64_t>(run.shards));
  j.field("feeders", static_cast<uint64_t>(run.feeders));
  j.field("groups", run.groups);
  j.field("seconds", run.seconds);
  j.field("groups_per_s", run.groups_per_s);
  j.field("requests_per_s", run.requests_per_s);
  latencyJson(j, "latency_ns", run.latency);
  j.field("allocs_per_group", run.allocs_per_group);
  j.field("rss_bytes", run.rss);
  j.key("device").begin();
  j.field("groups_issued", run.device[Counter::kGroupsIssued]);
  j.field("requests_issued", run.device[Counter::kRequestsIssued]);
  j.field("retried", run.device[Counter::kRetriedRequests]);
  j.field("aborted", run.device[Counter::kAbortedRequests]);
  j.field("retry_exhausted", run.device[Counter::kRetryExhausted]);
  j.field("completed", run.device[Counter::kCompletedAccesses]);
  j.field("credit_stalls", run.device[Counter::kCreditStalls]);
  j.field("bogus_responses", run.bogus);
  latencyJson(j, "latency_ns", run.device_latency);
  j.end();

  // The SVA resolver plugin in the chain: the same scenario with fault-around off and on.
  double fa_off_gps = 0, fa_on_gps = 0;
  uint64_t fa_off_p99 = 0, fa_on_p99 = 0;
  const bool resolver = usesPlugin(scenario, "sva_resolver");
  if (resolver) {
    j.field("resolved_groups_per_s", static_cast<double>(run.success) / run.seconds);
    const auto on_pages = static_cast<uint32_t>(args.number("fault-around", 15));
    j.key("sva_resolver").begin();
    auto resolverRun = [&](const SimRun& r) {
      j.field("groups_per_s", r.groups_per_s);
      j.field("resolved_groups_per_s", static_cast<double>(r.success) / r.seconds);
      j.field("completed_accesses_per_s", static_cast<double>(r.completed_accesses) / r.seconds);
      j.field("faults_per_1000_accesses",
              r.completed_accesses == 0 ? 0.0
                                        : 1000.0 * static_cast<double>(r.requests) /
                                              static_cast<double>(r.completed_accesses));
      latencyJson(j, "latency_ns", r.latency);
      latencyJson(j, "device_latency_ns", r.device_latency);
      j.field("allocs_per_group", r.allocs_per_group);
      j.key("counters_whole_run").begin();
      for (const auto& [name, value] : r.resolver) j.field(name, value);
      j.end();
    };
    for (const uint32_t pages : {0u, on_pages}) {
      PluginOptions po = plugin_options;
      po.fault_around = pages;
      const SimRun r = runSimulation(scenario, warmup, seconds, shards, feeders, false, &po);
      j.key(pages == 0 ? "fault_around_off" : "fault_around_on").begin();
      j.field("fault_around_pages", static_cast<uint64_t>(pages));
      resolverRun(r);
      if (!skip_rtc) {
        // The same with the router run to completion on the device I/O thread (one thread).
        const SimRun c = runSimulation(scenario, warmup, seconds, shards, 1u, true, &po);
        j.key("run_to_completion").begin();
        resolverRun(c);
        j.end();
      }
      j.end();
      (pages == 0 ? fa_off_gps : fa_on_gps) = r.groups_per_s;
      (pages == 0 ? fa_off_p99 : fa_on_p99) = r.latency.percentile(0.99);
    }
    j.end();
  }

  // Open loop at a fixed offered rate, spread over the devices, Poisson arrivals.
  sim::Scenario paced = scenario;
  for (sim::SimDeviceConfig& d : paced.devices) {
    d.workload.rate_groups_per_s = latency_rate / static_cast<double>(paced.devices.size());
    d.workload.poisson = true;
  }
  auto halfRate = [&](const SimRun& half) {
    j.field("offered_groups_per_s", latency_rate);
    j.field("groups_per_s", half.groups_per_s);
    latencyJson(j, "latency_ns", half.latency);
    latencyJson(j, "device_latency_ns", half.device_latency);
    j.field("allocs_per_group", half.allocs_per_group);
  };
  double half_p99 = 0;
  if (!skip_latency) {
    const SimRun half = runSimulation(paced, warmup, seconds, shards, feeders, false, plugins);
    half_p99 = static_cast<double>(half.device_latency.percentile(0.99));
    j.key("half_rate").begin();
    halfRate(half);
    j.end();
  }
  if (!skip_rtc) {
    // The same, with the router run to completion on the device I/O thread (no shard threads).
    const SimRun closed = runSimulation(scenario, warmup, seconds, shards, 1u, true, plugins);
    j.key("run_to_completion").begin();
    j.field("groups_per_s", closed.groups_per_s);
    latencyJson(j, "latency_ns", closed.latency);
    latencyJson(j, "device_latency_ns", closed.device_latency);
    j.field("allocs_per_group", closed.allocs_per_group);
    if (!skip_latency) {
      const SimRun half = runSimulation(paced, warmup, seconds, shards, 1u, true, plugins);
      j.key("half_rate").begin();
      halfRate(half);
      j.end();
    }
    j.end();
  }

  if (!skip_memory) {
    const MemoryResult m = runMemory(mem_devices, mem_open);
    j.key("memory").begin();
    j.field("devices", m.devices);
    j.field("open_groups", m.open_groups);
    j.field("rss_before_bytes", m.rss_before);
    j.field("rss_idle_bytes", m.rss_idle);
    j.field("rss_open_bytes", m.rss_open);
    const double open = static_cast<double>(std::max<uint64_t>(1, m.open_groups));
    j.field("bytes_per_open_group", static_cast<double>(m.rss_open - m.rss_idle) / open);
    j.field("bytes_per_open_group_incl_devices", static_cast<double>(m.rss_open - m.rss_before) / open);
    j.end();
  }

  const MachineNoise noise = measureNoise(0.5);
  j.key("machine_noise").begin();
  j.field("share_in_gaps_over_10us", noise.share_in_gaps_over_10us);
  j.field("gaps_over_50us_per_s", noise.gaps_over_50us_per_s);
  j.field("max_gap_ns", noise.max_gap_ns);
  j.end();

  j.key("compare").begin();
  if (!skip_compare) {
    for (auto [name, kind] : {std::pair{"raw_echo", ComparisonSink::Kind::kRawEcho},
                              std::pair{"naive", ComparisonSink::Kind::kNaive}}) {
      const double rate = runComparison(kind, scenario, warmup, seconds);
      j.key(name).begin();
      j.field("groups_per_s", rate);
      j.field("ratio", rate > 0 ? run.groups_per_s / rate : 0.0);
      j.end();
    }
  }
  j.end();
  j.end();
  if (json) {
    std::cout << j.str() << std::endl;
  } else {
    if (resolver) {
      std::printf("sva_resolver: fault-around off %.0f groups/s, p99 %" PRIu64
                  " ns; on %.0f groups/s, p99 %" PRIu64 " ns\n",
                  fa_off_gps, fa_off_p99, fa_on_gps, fa_on_p99);
    }
    std::printf("sim: %.0f groups/s (%.0f requests/s) with %zu devices; router p99 %" PRIu64
                " ns; device-observed p99 %" PRIu64 " ns; at %.0f groups/s offered: device p99 %.0f ns\n%s\n",
                run.groups_per_s, run.requests_per_s, scenario.devices.size(), run.latency.percentile(0.99),
                run.device_latency.percentile(0.99), latency_rate, half_p99, j.str().c_str());
  }
  return run.bogus == 0 ? 0 : 3;
}

}  // namespace iopf::bench
