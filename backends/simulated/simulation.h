// A whole simulated system in one process: a Router, the SimulatedBackend with the scenario's
// devices, the scenario's domains with their (built-in) handler chains, and the attachments.
// Used by the tests, `iopf-bench sim`, `iopf-sim` and the demo.
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "iopf/router.h"
#include "scenario.h"
#include "sim_handlers.h"
#include "simulated_backend.h"

namespace iopf::sim {

struct SimulationOptions {
  // false: nothing runs by itself; the owner calls step()/runUntilIdle() (deterministic tests).
  bool threaded = true;
  // Shared by router, backend and sim_guest handlers. Default: SteadyClock. MUST outlive.
  const Clock* clock = nullptr;
  std::optional<unsigned> shards;   // overrides the scenario
  std::optional<unsigned> feeders;  // overrides the scenario
  std::optional<size_t> event_capacity;
  bool report_to_stderr = true;
  // Threaded only: no router shard threads; the (single) feeder thread runs the router to
  // completion after each of its passes (Router manual mode on the I/O thread). One thread carries
  // a request from the device to its response: no hand-off latency, one core's throughput.
  bool run_to_completion = false;
  // Builds the handler of a "plugin:<id>" chain entry (the tool owns the plugin host). Called
  // during create(), after the domain was added to the router and before any attachment. Unset:
  // a scenario with a plugin handler is refused.
  std::function<absl::StatusOr<std::shared_ptr<Handler>>(Router& router, DomainId domain,
                                                         const HandlerSpec& handler)>
      plugin_handler;
  // Most simulated devices (the scenario's and those added later by addScenario together).
  // Unset: SimulatedBackend::kDefaultMaxDevices.
  std::optional<uint32_t> max_devices;
};

// What Simulation::addScenario added to the running simulation.
struct ScenarioAddition {
  struct Device {
    uint32_t index = 0;  // the simulator's index (backend handle)
    DeviceId router_id = 0;
    std::string name;
  };
  std::vector<Device> devices;  // in scenario order, every one started
  // Domains of the scenario the router did not have, created with the scenario's chains.
  std::vector<std::pair<std::string, DomainId>> created_domains;
  // New groups the workloads issue in all (workload max_groups; a replay without loop: its
  // captured groups, capped by max_groups), retries and injected groups not counted. nullopt: some
  // workload runs until the simulation stops.
  std::optional<uint64_t> groups;
};

class Simulation {
 public:
  // Builds everything; traffic starts with start().
  static absl::StatusOr<std::unique_ptr<Simulation>> create(const Scenario& scenario,
                                                            SimulationOptions options = {});
  // Only create() can make the key: a Simulation is never used before build() succeeded.
  class Key {
    friend class Simulation;
    Key() = default;
  };
  Simulation(Key, const Scenario& scenario, SimulationOptions options);
  ~Simulation();
  Simulation(const Simulation&) = delete;
  Simulation& operator=(const Simulation&) = delete;

  absl::Status start();
  // Adds a scenario's traffic to the running simulation (after start(), any thread; manual mode:
  // the thread that steps). Its domains are looked up in the router by name: an existing one is
  // used as it is (its chain, deadline and address space stay; only its kind must match, else
  // FAILED_PRECONDITION), a missing one is created with the scenario's definition and built-in
  // chain (a plugin handler needs SimulationOptions::plugin_handler, else FAILED_PRECONDITION).
  // Its devices are hot-added to the backend (a name in use: ALREADY_EXISTS; beyond max_devices:
  // RESOURCE_EXHAUSTED), attached as the scenario says, and started at once; the devices already
  // running go on undisturbed. Everything is checked before anything changes. The scenario's
  // `router` and `backend` sections and its duration do not apply (the running router and feeders
  // carry the new devices; scheduled injections count from the devices' start).
  // FAILED_PRECONDITION before start() or after stop().
  absl::StatusOr<ScenarioAddition> addScenario(const Scenario& scenario);
  // Manual mode: one round — the backend's feeders pass once, the router runs until idle, due
  // sim_guest completions run (and the router again). Returns the work done (0: nothing moved).
  size_t step();
  // Manual mode: step() until a round does nothing or `max_rounds` rounds ran. Returns rounds.
  size_t runUntilIdle(size_t max_rounds = 1'000'000);
  // Shuts the router down (every open group answered INVALID, origin shutdown), stops the guests.
  // Idempotent.
  void stop();

  Router& router() { return *router_; }
  SimulatedBackend& backend() { return *backend_; }
  const Scenario& scenario() const { return scenario_; }
  DomainId domainId(size_t scenario_domain) const { return domain_ids_.at(scenario_domain); }
  std::optional<DomainId> domainId(std::string_view name) const;
  std::optional<uint32_t> deviceIndex(std::string_view name) const { return backend_->deviceIndex(name); }

 private:
  absl::Status build();
  // Adds a scenario domain to the router and the backend with its chain. Setup, or under add_mu_.
  absl::StatusOr<DomainId> addScenarioDomain(const ScenarioDomain& d);

  Scenario scenario_;
  SimulationOptions options_;
  SteadyClock steady_;
  const Clock* clock_;
  // Declaration order is destruction order reversed: the router goes first, then the handlers,
  // then the backend the router and handlers refer to.
  std::unique_ptr<SimulatedBackend> backend_;
  std::vector<std::shared_ptr<Handler>> handlers_;
  std::vector<std::shared_ptr<SimGuest>> guests_;
  std::unique_ptr<Router> router_;
  std::vector<DomainId> domain_ids_;
  // addScenario against itself and stop(): guards handlers_, guests_, added_domains_, started_
  // and stopped_ once the simulation is built.
  mutable std::mutex add_mu_;
  std::vector<std::pair<std::string, DomainId>> added_domains_;
  bool started_ = false;
  bool stopped_ = false;
};

}  // namespace iopf::sim
