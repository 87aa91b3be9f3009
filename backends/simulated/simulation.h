// A whole simulated system in one process: a Router, the SimulatedBackend with the scenario's
// devices, the scenario's domains with their (built-in) handler chains, and the attachments.
// Used by the tests, `iopf-bench sim`, `iopf-sim` and the demo.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string_view>
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
  bool stopped_ = false;
};

}  // namespace iopf::sim
