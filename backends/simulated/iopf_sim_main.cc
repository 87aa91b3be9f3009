// iopf-sim: validates and runs simulated-backend scenarios in-process (router + simulated devices
// + the scenario's built-in handler chains), with a live summary once per second. The daemon runs
// the same Simulation behind its API (iopfd --demo, scripts/demo.sh); iopf-sim needs no daemon.
//
//   iopf-sim validate FILE...            checks scenario files; errors name file:line: field
//   iopf-sim run FILE [--seconds S]      runs a scenario; prints a live summary once per second
//                                        for S seconds (0: until Ctrl-C; default: the scenario's
//                                        duration_ms, where 0 also means until Ctrl-C)
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "simulation.h"
#include "string_view_bridge.h"

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
void onSignal(int) {
  g_interrupted = 1;
}

int usage(FILE* out) {
  std::fprintf(out,
               "usage: iopf-sim validate FILE...\n"
               "       iopf-sim run FILE [--seconds S] [--quiet]\n");
  return out == stdout ? 0 : 2;
}

std::string thousands(uint64_t v) {
  const std::string digits = std::to_string(v);
  std::string out;
  out.reserve(digits.size() + digits.size() / 3);
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i != 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return out;
}

std::string micros(uint64_t ns) {
  return absl::StrFormat("%.1fµs", static_cast<double>(ns) / 1e3);
}

iopf::LatencyHistogram::Snapshot diff(const iopf::LatencyHistogram::Snapshot& later,
                                      const iopf::LatencyHistogram::Snapshot& earlier) {
  iopf::LatencyHistogram::Snapshot d = later;
  if (d.buckets.empty()) return d;
  if (!earlier.buckets.empty()) {
    for (size_t i = 0; i < d.buckets.size(); ++i) d.buckets[i] -= earlier.buckets[i];
  }
  d.count -= earlier.count;
  d.sum -= earlier.sum;
  return d;
}

int validate(int argc, char** argv) {
  if (argc < 1) return usage(stderr);
  int rc = 0;
  for (int i = 0; i < argc; ++i) {
    auto s = iopf::sim::loadScenario(argv[i]);
    if (!s.ok()) {
      std::fprintf(stderr, "%s\n", std::string(s.status().message()).c_str());
      rc = 1;
      continue;
    }
    size_t injections = 0;
    for (const auto& d : s->devices) injections += d.injections.size();
    std::printf("%s: ok ('%s': %zu devices, %zu domains, %zu attachments, %zu scheduled injections)\n",
                argv[i], s->name.c_str(), s->devices.size(), s->domains.size(), s->attachments.size(),
                injections);
  }
  return rc;
}

int run(int argc, char** argv) {
  if (argc < 1) return usage(stderr);
  const std::string file = argv[0];
  double seconds = -1;
  bool quiet = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--seconds") == 0 && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--quiet") == 0) {
      quiet = true;
    } else {
      std::fprintf(stderr, "iopf-sim run: unknown option '%s'\n", argv[i]);
      return 2;
    }
  }
  auto scenario = iopf::sim::loadScenario(file);
  if (!scenario.ok()) {
    std::fprintf(stderr, "%s\n", std::string(scenario.status().message()).c_str());
    return 1;
  }
  if (seconds < 0) seconds = static_cast<double>(scenario->duration_ns) / 1e9;
  auto sim = iopf::sim::Simulation::create(*scenario);
  if (!sim.ok()) {
    std::fprintf(stderr, "%s\n", std::string(sim.status().message()).c_str());
    return 1;
  }
  std::signal(SIGINT, onSignal);
  std::signal(SIGTERM, onSignal);
  iopf::Router& router = (*sim)->router();
  iopf::sim::SimulatedBackend& backend = (*sim)->backend();
  std::printf(
      "scenario '%s' (%s): %zu devices, %zu domains, router shards %u — in-process simulation "
      "(the iopfd daemon will take over)\n",
      scenario->name.c_str(), file.c_str(), scenario->devices.size(), scenario->domains.size(),
      router.shardCount());
  if (!scenario->description.empty()) std::printf("  %s\n", scenario->description.c_str());
  if (absl::Status st = (*sim)->start(); !st.ok()) {
    std::fprintf(stderr, "%s\n", std::string(st.message()).c_str());
    return 1;
  }
  const auto t0 = std::chrono::steady_clock::now();
  iopf::StatsSnapshot prev = router.stats();
  iopf::sim::SimTotals prev_dev = backend.totals();
  iopf::LatencyHistogram::Snapshot prev_devlat = backend.latency();
  int tick = 0;
  while (!g_interrupted) {
    const auto next = t0 + std::chrono::seconds(tick + 1);
    while (!g_interrupted && std::chrono::steady_clock::now() < next) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ++tick;
    const iopf::StatsSnapshot now = router.stats();
    const iopf::sim::SimTotals dev = backend.totals();
    const iopf::LatencyHistogram::Snapshot devlat = backend.latency();
    const auto lat = diff(now.latency, prev.latency);
    const auto dlat = diff(devlat, prev_devlat);
    if (!quiet) {
      std::string origins;
      for (int o = 0; o < iopf::kOriginCount; ++o) {
        const uint64_t n = now.responses_by_origin[o] - prev.responses_by_origin[o];
        if (n == 0) continue;
        absl::StrAppend(&origins, origins.empty() ? "" : " ",
                        iopf::sim::toAbsl(iopf::toString(static_cast<iopf::Origin>(o))), "=", thousands(n));
      }
      using C = iopf::sim::Counter;
      std::printf(
          "[%3ds] groups/s %s  outstanding %s  p99 %s (device-observed %s)  verdicts{%s}  "
          "device{retried %s aborted %s pri_off %s lost %s bogus %s}\n",
          tick, thousands(now.responses - prev.responses).c_str(), thousands(now.open_groups).c_str(),
          micros(lat.percentile(0.99)).c_str(), micros(dlat.percentile(0.99)).c_str(),
          origins.empty() ? "-" : origins.c_str(),
          thousands(dev.counters[C::kRetriedRequests] - prev_dev.counters[C::kRetriedRequests]).c_str(),
          thousands(dev.counters[C::kAbortedRequests] - prev_dev.counters[C::kAbortedRequests]).c_str(),
          thousands(dev.pri_disabled_devices).c_str(), thousands(dev.lost_groups).c_str(),
          thousands(dev.counters[C::kBogusResponses] + dev.unknown_device_responses).c_str());
      std::fflush(stdout);
    }
    prev = now;
    prev_dev = dev;
    prev_devlat = devlat;
    if (seconds > 0 && tick >= seconds) break;
  }
  (*sim)->stop();
  const iopf::StatsSnapshot end = router.stats();
  const iopf::sim::SimTotals dev = backend.totals();
  using C = iopf::sim::Counter;
  std::printf(
      "total: %s groups answered (success %s, invalid %s, failure %s), p99 %s; devices issued %s "
      "requests, retried %s, aborted %s, completed %s; protocol errors %s, stop markers dropped %s, "
      "partials discarded %s; router-bug reports %s\n",
      thousands(end.responses).c_str(), thousands(end.responses_by_code[0]).c_str(),
      thousands(end.responses_by_code[1]).c_str(), thousands(end.responses_by_code[2]).c_str(),
      micros(end.latency.percentile(0.99)).c_str(), thousands(dev.counters[C::kRequestsIssued]).c_str(),
      thousands(dev.counters[C::kRetriedRequests]).c_str(),
      thousands(dev.counters[C::kAbortedRequests]).c_str(),
      thousands(dev.counters[C::kCompletedAccesses]).c_str(), thousands(end.protocol_errors).c_str(),
      thousands(end.stop_markers).c_str(), thousands(end.partial_discarded).c_str(),
      thousands(backend.bogusReportCount()).c_str());
  return backend.bogusReportCount() == 0 ? 0 : 3;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage(stderr);
  if (std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) return usage(stdout);
  if (std::strcmp(argv[1], "validate") == 0) return validate(argc - 2, argv + 2);
  if (std::strcmp(argv[1], "run") == 0) return run(argc - 2, argv + 2);
  std::fprintf(stderr, "iopf-sim: unknown command '%s'\n", argv[1]);
  return usage(stderr);
}
