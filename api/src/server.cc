#include "iopf/api/server.h"

#include <grpcpp/ext/channelz_service_plugin.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace iopf::api {

namespace {

absl::StatusOr<std::string> readFile(const std::string& path, const std::string& what) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat(what, " '", path, "' cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Prepares the directory of a Unix socket (created 0750) and removes a stale socket file. A
// directory anyone may write to (without the sticky bit) is refused: anyone could replace the
// socket with their own and collect the operators' calls.
absl::Status prepareUnixSocket(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  std::error_code ec;
  if (p.has_parent_path() && !fs::exists(p.parent_path(), ec)) {
    fs::create_directories(p.parent_path(), ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat("cannot create ", p.parent_path().string(), ": ", ec.message()));
    ::chmod(p.parent_path().c_str(), 0750);
  }
  struct stat dir;
  const std::string parent = p.has_parent_path() ? p.parent_path().string() : ".";
  if (::stat(parent.c_str(), &dir) == 0 && (dir.st_mode & S_IWOTH) != 0 && (dir.st_mode & S_ISVTX) == 0) {
    char mode[16];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(dir.st_mode & 07777));
    return absl::PermissionDeniedError(absl::StrCat("the directory ", parent, " of socket ", path,
                                                    " is world-writable (mode ", mode,
                                                    ") without the sticky bit: anyone could replace the socket"));
  }
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(absl::StrCat(path, " exists and is not a socket"));
    }
    ::unlink(path.c_str());  // stale socket of an earlier run
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiServer>> ApiServer::start(RouterService& service, const ServerOptions& options) {
  if (options.listen.empty()) return absl::InvalidArgumentError("no listen address");
  if ((options.socket_mode & 07) != 0 || (options.socket_mode & ~0777u) != 0) {
    char mode[16];
    std::snprintf(mode, sizeof mode, "%04o", options.socket_mode);
    return absl::InvalidArgumentError(absl::StrCat("socket_mode ", mode,
                                                   " would let every local user drive the router: use 0660 "
                                                   "(owner and group) or 0600"));
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::channelz::experimental::InitChannelzService();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  auto server = std::unique_ptr<ApiServer>(new ApiServer());
  for (const std::string& addr : options.listen) {
    if (addr.rfind("unix:", 0) == 0) {
      std::string path = addr.substr(5);
      if (path.rfind("//", 0) == 0) path = path.substr(2);
      if (path.empty()) return absl::InvalidArgumentError(absl::StrCat("listen address '", addr, "' has no path"));
      if (absl::Status st = prepareUnixSocket(path); !st.ok()) return st;
      builder.AddListeningPort(addr, grpc::experimental::LocalServerCredentials(UDS));
      server->unix_sockets_.push_back(path);
      continue;
    }
    if (addr.rfind("unix-abstract:", 0) == 0) {
      return absl::InvalidArgumentError(absl::StrCat("listen address '", addr,
                                                     "': abstract sockets have no permissions; use unix:PATH"));
    }
    if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("listen address '", addr,
                                                        "' is TCP: it requires tls.cert_file and tls.key_file"));
    }
    auto cert = readFile(options.tls_cert_file, "tls.cert_file");
    if (!cert.ok()) return cert.status();
    auto key = readFile(options.tls_key_file, "tls.key_file");
    if (!key.ok()) return key.status();
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({*key, *cert});
    if (!options.tls_client_ca_file.empty()) {
      auto ca = readFile(options.tls_client_ca_file, "tls.client_ca_file");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *ca;
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    builder.AddListeningPort(addr, grpc::SslServerCredentials(ssl));
  }
  builder.RegisterService(&service);
  server->server_ = builder.BuildAndStart();
  if (!server->server_) {
    return absl::UnavailableError("the gRPC server did not start (address in use or not permitted?)");
  }
  for (const std::string& path : server->unix_sockets_) {
    if (::chmod(path.c_str(), options.socket_mode) != 0) {
      return absl::PermissionDeniedError(absl::StrCat("chmod ", path, ": ", std::strerror(errno)));
    }
  }
  server->setServing(true);
  return server;
}

ApiServer::~ApiServer() {
  if (server_) shutdown(std::chrono::milliseconds(0));
}

void ApiServer::setServing(bool serving) {
  if (!server_) return;
  if (auto* health = server_->GetHealthCheckService()) {
    health->SetServingStatus(kServiceName, serving);
    health->SetServingStatus("", serving);
  }
}

void ApiServer::shutdown(std::chrono::milliseconds grace) {
  if (!server_) return;
  setServing(false);
  server_->Shutdown(std::chrono::system_clock::now() + grace);
  server_->Wait();
  server_.reset();
  for (const std::string& path : unix_sockets_) ::unlink(path.c_str());
}

}  // namespace iopf::api
