// The simulated backend inside iopfd: a whole Simulation (scenario devices, domains, built-in
// chains, attachments) whose Router becomes the daemon's router.
#pragma once

#include "daemon.h"

namespace iopf::daemon {

// `config.scenario` relative paths are resolved against `config_dir`.
absl::StatusOr<std::unique_ptr<DaemonBackend>> makeSimulatedBackend(const v1::BackendConfig& config,
                                                                    const std::string& config_dir,
                                                                    const RouterOptions& router_options);

}  // namespace iopf::daemon
