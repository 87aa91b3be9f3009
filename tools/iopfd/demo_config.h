// The embedded configuration of `iopfd --demo`.
#pragma once

#include "config_loader.h"

namespace iopf::daemon {

// The shipped demo: the simulated backend running scenarios/demo.json (looked up beside the binary,
// in the source tree and in the install prefix), with its domains and chains.
absl::StatusOr<LoadedConfig> demoConfig();

}  // namespace iopf::daemon
