// Client side of grpc.health.v1.Health/Check without the health proto's generated code (Debian's
// gRPC ships no C++ stub for it): the request and response are two tiny hand-encoded messages.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <string>

#include "absl/status/statusor.h"

namespace iopf::api {

enum class HealthStatus { kUnknown = 0, kServing = 1, kNotServing = 2, kServiceUnknown = 3 };
const char* toString(HealthStatus status);

// Checks `service` ("" = the server as a whole). A transport or RPC error comes back as a status
// carrying the gRPC code's name and message.
absl::StatusOr<HealthStatus> checkHealth(const std::shared_ptr<grpc::Channel>& channel,
                                         const std::string& service = "iopf.v1.Router",
                                         std::chrono::milliseconds deadline = std::chrono::seconds(5));

}  // namespace iopf::api
