// The QEMU socket backend ("iopf" profile) inside iopfd: VMMs connect to a Unix socket, declare
// their devices and send page requests; each device the VMM adds is attached to a configured domain.
#pragma once

#include "daemon.h"

namespace iopf::daemon {

// options (all but `socket` optional):
//   socket: PATH                      where VMMs connect (relative: to the config file's directory)
//   domain: NAME                      every device a VMM adds is attached to it by RID; without it
//                                     devices stay unattached until the API attaches them
//   max_connections: N                default 64
//   max_devices_per_connection: N     default 1024
absl::StatusOr<std::unique_ptr<DaemonBackend>> makeQemuSocketBackend(const v1::BackendConfig& config,
                                                                     const std::string& config_dir,
                                                                     const RouterOptions& router_options);

}  // namespace iopf::daemon
