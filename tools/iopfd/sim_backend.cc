#include "sim_backend.h"

#include <filesystem>
#include <limits>
#include <mutex>
#include <system_error>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "iopf/api/convert.h"
#include "simulation.h"

namespace iopf::daemon {

namespace {

using google::protobuf::Value;

// RunScenario reads at most this much (the largest shipped scenario is a few KiB).
constexpr uintmax_t kMaxScenarioBytes = uintmax_t{16} << 20;

// PASIDs are at most 20 bits wide (PCIe).
constexpr uint64_t kMaxPasid = (uint64_t{1} << 20) - 1;

// An InjectFault argument: a decimal number in [0, max]. Errors name the argument.
absl::StatusOr<uint32_t> numericArg(const std::string& name, const std::string& text, uint64_t max) {
  uint64_t value = 0;
  if (!absl::SimpleAtoi(text, &value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("InjectFault arg '", name, "': '", text, "' is not a non-negative decimal number"));
  }
  if (value > max) {
    return absl::InvalidArgumentError(
        absl::StrCat("InjectFault arg '", name, "': ", value, " is out of range (0..", max, ")"));
  }
  return static_cast<uint32_t>(value);
}

std::string resolve(const std::string& path, const std::string& config_dir) {
  std::filesystem::path p(path);
  if (p.is_relative() && !config_dir.empty()) p = std::filesystem::path(config_dir) / p;
  return p.string();
}

class SimulatedDaemonBackend final : public DaemonBackend {
 public:
  SimulatedDaemonBackend(std::unique_ptr<sim::Simulation> sim, std::string config_dir)
      : sim_(std::move(sim)), config_dir_(std::move(config_dir)) {}
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
    sim::Injection inj;
    inj.kind = *kind;
    for (const auto& [name, text] : request.args()) {
      if (name == "count") {
        auto count = numericArg(name, text, std::numeric_limits<uint32_t>::max());
        if (!count.ok()) return count.status();
        inj.count = *count;
      } else if (name == "pasid") {
        auto pasid = numericArg(name, text, kMaxPasid);
        if (!pasid.ok()) return pasid.status();
        inj.pasid = *pasid;
      } else {
        return absl::InvalidArgumentError(
            absl::StrCat("InjectFault arg '", name, "' is unknown (count, pasid)"));
      }
    }
    // The request names the router's device id; the simulator indexes its own.
    std::optional<uint32_t> index;
    const auto n = static_cast<uint32_t>(sim_->backend().deviceCount());
    for (uint32_t i = 0; i < n; ++i) {
      if (sim_->backend().routerId(i) == request.device()) index = i;
    }
    if (!index)
      return absl::NotFoundError("no simulated device with router id " + std::to_string(request.device()));
    return sim_->backend().inject(*index, inj);
  }

  absl::Status runScenario(const std::string& path, v1::RunScenarioResponse& out) override {
    if (path.empty()) return absl::InvalidArgumentError("RunScenario: path is empty");
    const std::string file = resolve(path, config_dir_);
    std::error_code ec;
    if (!std::filesystem::exists(file, ec)) {
      return absl::NotFoundError(absl::StrCat("scenario '", file, "' does not exist"));
    }
    // Not a FIFO or device (a read that never ends), nor a file too large to be a scenario.
    if (!std::filesystem::is_regular_file(file, ec)) {
      return absl::InvalidArgumentError(absl::StrCat("scenario '", file, "' is not a regular file"));
    }
    if (const auto size = std::filesystem::file_size(file, ec); ec || size > kMaxScenarioBytes) {
      return absl::InvalidArgumentError(absl::StrCat("scenario '", file, "' is larger than ",
                                                     kMaxScenarioBytes >> 20, " MiB (or its size is unknown)"));
    }
    auto scenario = sim::loadScenario(file);
    if (!scenario.ok()) {
      // Unreadable, malformed or meaningless: the message names the file, the line and the field.
      return absl::InvalidArgumentError(scenario.status().message());
    }
    auto added = sim_->addScenario(*scenario);
    if (!added.ok()) {
      return absl::Status(added.status().code(),
                          absl::StrCat("scenario '", file, "': ", added.status().message()));
    }
    const std::vector<DeviceInfo> devices = sim_->router().devices();
    for (const sim::ScenarioAddition::Device& d : added->devices) {
      for (const DeviceInfo& info : devices) {
        if (info.id == d.router_id) api::toProto(info, *out.add_devices());
      }
    }
    if (!added->created_domains.empty()) {
      const std::vector<DomainInfo> domains = sim_->router().domains();
      for (const auto& [name, id] : added->created_domains) {
        for (const DomainInfo& info : domains) {
          if (info.id == id) api::toProto(info, *out.add_created_domains());
        }
      }
    }
    out.set_bounded(added->groups.has_value());
    out.set_groups(added->groups.value_or(0));
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<sim::Simulation> sim_;
  const std::string config_dir_;
};

// options.max_devices: the most simulated devices, the scenario's and RunScenario's together.
absl::StatusOr<std::optional<uint32_t>> maxDevices(const google::protobuf::Struct& options) {
  std::optional<uint32_t> max;
  for (const auto& [key, v] : options.fields()) {
    if (key != "max_devices")
      return absl::InvalidArgumentError("options." + key + ": unknown option (max_devices)");
    const double limit = sim::SimulatedBackend::kDefaultMaxDevices;
    if (v.kind_case() != Value::kNumberValue || v.number_value() < 1 || v.number_value() > limit ||
        v.number_value() != static_cast<double>(static_cast<uint32_t>(v.number_value()))) {
      return absl::InvalidArgumentError(absl::StrCat("options.max_devices must be a whole number from 1 to ",
                                                     sim::SimulatedBackend::kDefaultMaxDevices));
    }
    max = static_cast<uint32_t>(v.number_value());
  }
  return max;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DaemonBackend>> makeSimulatedBackend(const v1::BackendConfig& config,
                                                                    const std::string& config_dir,
                                                                    const RouterOptions& router_options) {
  auto max_devices = maxDevices(config.options());
  if (!max_devices.ok()) return max_devices.status();
  auto scenario = sim::loadScenario(resolve(config.scenario(), config_dir));
  if (!scenario.ok()) return scenario.status();
  sim::SimulationOptions so;
  so.threaded = true;
  if (router_options.shards != 0) so.shards = router_options.shards;
  so.event_capacity = router_options.event_capacity;
  so.report_to_stderr = true;
  so.max_devices = *max_devices;
  auto sim = sim::Simulation::create(*scenario, so);
  if (!sim.ok()) return sim.status();
  return std::make_unique<SimulatedDaemonBackend>(std::move(*sim), config_dir);
}

}  // namespace iopf::daemon
