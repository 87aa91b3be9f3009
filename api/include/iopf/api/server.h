// The gRPC server of iopfd: iopf.v1.Router, grpc.health.v1.Health, reflection (v1alpha), channelz.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "iopf/api/router_service.h"

namespace iopf::api {

inline constexpr char kDefaultSocket[] = "unix:/run/iopf/iopfd.sock";
inline constexpr char kServiceName[] = "iopf.v1.Router";

struct ServerOptions {
  // "unix:/path" or "host:port". TCP requires tls_cert + tls_key.
  std::vector<std::string> listen{kDefaultSocket};
  std::string tls_cert_file, tls_key_file, tls_client_ca_file;
  uint32_t socket_mode = 0660;   // the socket's directory is created 0750
  int max_message_bytes = 4 << 20;
};

class ApiServer {
 public:
  // Validates the options (a clear error for TCP without TLS, unreadable certificates, a socket
  // path in use), starts serving and marks the service SERVING.
  static absl::StatusOr<std::unique_ptr<ApiServer>> start(RouterService& service, const ServerOptions& options);
  ~ApiServer();

  // Health of iopf.v1.Router and of the server as a whole ("").
  void setServing(bool serving);
  // Stops accepting calls and waits up to `grace` for calls in flight (watchers end on drain).
  void shutdown(std::chrono::milliseconds grace);
  const std::vector<std::string>& unixSockets() const { return unix_sockets_; }

 private:
  std::unique_ptr<grpc::Server> server_;
  std::vector<std::string> unix_sockets_;
};

}  // namespace iopf::api
