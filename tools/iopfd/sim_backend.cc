#include "sim_backend.h"

#include <filesystem>

#include "simulation.h"

namespace iopf::daemon {

namespace {

class SimulatedDaemonBackend final : public DaemonBackend {
 public:
  explicit SimulatedDaemonBackend(std::unique_ptr<sim::Simulation> sim) : sim_(std::move(sim)) {}
  ~SimulatedDaemonBackend() override { sim_->stop(); }

  Backend& backend() override { return sim_->backend(); }
  std::string type() const override { return "simulated"; }
  Router* ownRouter() override { return &sim_->router(); }
  absl::Status begin(Router&) override { return absl::OkStatus(); }  // the Simulation built it all
  absl::Status startTraffic() override { return sim_->start(); }

  absl::Status injectFault(const v1::InjectFaultRequest& request) override {
    const auto kind = sim::parseInjectionKind(request.kind());
    if (!kind) {
      return absl::InvalidArgumentError("unknown injection '" + request.kind() +
                                        "' (lost_last, duplicate_prgi, overflow, unplug, stop_marker, "
                                        "resume_pasid, burst, reenable_pri)");
    }
    // The request names the router's device id; the simulator indexes its own.
    std::optional<uint32_t> index;
    for (uint32_t i = 0; i < sim_->backend().deviceCount(); ++i) {
      if (sim_->backend().routerId(i) == request.device()) index = i;
    }
    if (!index) return absl::NotFoundError("no simulated device with router id " + std::to_string(request.device()));
    sim::Injection inj;
    inj.kind = *kind;
    if (auto it = request.args().find("count"); it != request.args().end()) {
      inj.count = static_cast<uint32_t>(std::stoul(it->second));
    }
    if (auto it = request.args().find("pasid"); it != request.args().end()) {
      inj.pasid = static_cast<uint32_t>(std::stoul(it->second));
    }
    return sim_->backend().inject(*index, inj);
  }

 private:
  std::unique_ptr<sim::Simulation> sim_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DaemonBackend>> makeSimulatedBackend(const v1::BackendConfig& config,
                                                                    const std::string& config_dir,
                                                                    const RouterOptions& router_options) {
  std::filesystem::path path(config.scenario());
  if (path.is_relative() && !config_dir.empty()) path = std::filesystem::path(config_dir) / path;
  auto scenario = sim::loadScenario(path.string());
  if (!scenario.ok()) return scenario.status();
  sim::SimulationOptions so;
  so.threaded = true;
  if (router_options.shards != 0) so.shards = router_options.shards;
  so.event_capacity = router_options.event_capacity;
  so.report_to_stderr = true;
  auto sim = sim::Simulation::create(*scenario, so);
  if (!sim.ok()) return sim.status();
  return std::make_unique<SimulatedDaemonBackend>(std::move(*sim));
}

}  // namespace iopf::daemon
