// A Simulation driven by hand for deterministic tests: one shard, no threads, a ManualClock, every
// router event collected.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "iopf/clock.h"
#include "iopf/event_bus.h"
#include "scenario.h"
#include "simulation.h"

namespace iopf::sim::testing {

inline constexpr int64_t kUs = 1'000;
inline constexpr int64_t kMs = 1'000'000;

class ManualSimulation {
 public:
  // Parses `json` as a scenario named `path` (relative captures resolve against its directory).
  explicit ManualSimulation(const std::string& json, const std::string& path = "test.json") {
    auto scenario = parseScenario(json, path);
    if (!scenario.ok()) {
      ADD_FAILURE() << scenario.status();
      return;
    }
    SimulationOptions o;
    o.threaded = false;
    o.clock = &clock_;
    o.shards = 1;
    o.event_capacity = size_t{1} << 18;
    o.report_to_stderr = false;
    auto sim = Simulation::create(*scenario, o);
    if (!sim.ok()) {
      ADD_FAILURE() << sim.status();
      return;
    }
    sim_ = std::move(*sim);
    EXPECT_TRUE(sim_->start().ok());
  }

  bool ok() const { return sim_ != nullptr; }
  Simulation& sim() { return *sim_; }
  Router& router() { return sim_->router(); }
  SimulatedBackend& backend() { return sim_->backend(); }
  ManualClock& clock() { return clock_; }

  size_t step() {
    const size_t n = sim_->step();
    collect();
    return n;
  }
  void steps(int n) {
    for (int i = 0; i < n; ++i) step();
  }
  void runUntilIdle() {
    sim_->runUntilIdle(10'000);
    collect();
  }
  void advance(int64_t ns) { clock_.advance(ns); }

  uint32_t device(const std::string& name) {
    auto i = sim_->deviceIndex(name);
    EXPECT_TRUE(i.has_value()) << name;
    return i.value_or(0);
  }
  SimDeviceStatus status(const std::string& name) { return backend().deviceStatus(device(name)); }
  uint64_t counter(const std::string& name, Counter c) { return status(name).counters[c]; }
  void inject(const std::string& name, Injection injection) {
    ASSERT_TRUE(backend().inject(device(name), injection).ok());
  }

  const std::vector<Event>& events() { return events_; }
  std::vector<Event> events(EventType type) {
    std::vector<Event> out;
    for (const Event& e : events_) {
      if (e.type == type) out.push_back(e);
    }
    return out;
  }
  void collect() {
    std::vector<Event> buf(4096);
    for (;;) {
      const size_t n = sim_->router().events().read(cursor_, buf);
      for (size_t i = 0; i < n; ++i) {
        EXPECT_NE(buf[i].type, EventType::kGap) << "event ring too small for the test";
        events_.push_back(buf[i]);
      }
      if (n < buf.size()) break;
    }
  }
  void stop() {
    sim_->stop();
    collect();
  }

 private:
  ManualClock clock_;
  std::unique_ptr<Simulation> sim_;
  uint64_t cursor_ = 1;
  std::vector<Event> events_;
};

// A one-domain, one-device scenario; `device` and `domain` are JSON object bodies merged in.
inline std::string oneDeviceScenario(const std::string& device_fields, const std::string& chain,
                                     const std::string& attach = R"({"device": "dev", "domain": "d"})",
                                     const std::string& extra_domain_fields = "") {
  return R"({
  "name": "unit",
  "seed": 7,
  "domains": [{"name": "d", "kind": "paging", "deadline_ms": 1000,
               "address_space": [{"base": "0x100000", "size": "1MiB", "perm": "rw"},
                                 {"base": "0x200000", "size": "64KiB", "perm": "r"}],
               "chain": )" +
         chain + extra_domain_fields + R"(}],
  "devices": [{"name": "dev", )" +
         device_fields + R"(}],
  "attachments": [)" +
         attach + R"(]
})";
}

}  // namespace iopf::sim::testing
