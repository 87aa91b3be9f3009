#include "socket_backend.h"

#include <cstdio>
#include <filesystem>

#include "qemu_socket_backend.h"

namespace iopf::daemon {

namespace {

using google::protobuf::Value;

class QemuSocketDaemonBackend final : public DaemonBackend {
 public:
  QemuSocketDaemonBackend(qemu_socket::QemuSocketBackend::Options options, std::string domain)
      : domain_(std::move(domain)) {
    options.on_device = [this](const qemu_socket::VmmDeviceEvent& e) { onDevice(e); };
    options.log = [](std::string_view line) {
      std::fprintf(stderr, "iopfd: qemu_socket: %.*s\n", static_cast<int>(line.size()), line.data());
    };
    backend_ = std::make_unique<qemu_socket::QemuSocketBackend>(std::move(options));
  }
  Backend& backend() override { return *backend_; }
  std::string type() const override { return "qemu_socket"; }
  absl::Status begin(Router& router) override {
    router_.store(&router, std::memory_order_release);
    return absl::OkStatus();
  }

 private:
  // Event-loop thread: attach what the VMM just added (before any of its requests is delivered).
  void onDevice(const qemu_socket::VmmDeviceEvent& e) {
    Router* router = router_.load(std::memory_order_acquire);
    if (!e.added || domain_.empty() || router == nullptr) return;
    for (const DomainInfo& d : router->domains()) {
      if (d.removed || d.spec.name != domain_) continue;
      if (auto epoch = router->attach(e.device, std::nullopt, d.id); !epoch.ok()) {
        std::fprintf(stderr, "iopfd: qemu_socket: attaching '%s' to '%s': %s\n", e.spec.name.c_str(),
                     domain_.c_str(), std::string(epoch.status().message()).c_str());
      }
      return;
    }
    std::fprintf(stderr, "iopfd: qemu_socket: no domain '%s' for device '%s' (left unattached)\n",
                 domain_.c_str(), e.spec.name.c_str());
  }

  std::string domain_;
  std::atomic<Router*> router_{nullptr};
  std::unique_ptr<qemu_socket::QemuSocketBackend> backend_;
};

absl::StatusOr<uint32_t> count(const google::protobuf::Struct& options, const std::string& key, uint32_t fallback) {
  auto it = options.fields().find(key);
  if (it == options.fields().end()) return fallback;
  const Value& v = it->second;
  if (v.kind_case() != Value::kNumberValue || v.number_value() < 1 || v.number_value() > 1e6 ||
      v.number_value() != static_cast<double>(static_cast<uint32_t>(v.number_value()))) {
    return absl::InvalidArgumentError("options." + key + " must be a whole number from 1 to 1000000");
  }
  return static_cast<uint32_t>(v.number_value());
}

}  // namespace

absl::StatusOr<std::unique_ptr<DaemonBackend>> makeQemuSocketBackend(const v1::BackendConfig& config,
                                                                     const std::string& config_dir,
                                                                     const RouterOptions&) {
  const auto& fields = config.options().fields();
  for (const auto& [key, value] : fields) {
    if (key != "socket" && key != "domain" && key != "max_connections" && key != "max_devices_per_connection") {
      return absl::InvalidArgumentError("options." + key +
                                        " is not a qemu_socket option (socket, domain, max_connections, "
                                        "max_devices_per_connection)");
    }
  }
  auto socket = fields.find("socket");
  if (socket == fields.end() || socket->second.kind_case() != Value::kStringValue ||
      socket->second.string_value().empty()) {
    return absl::InvalidArgumentError("options.socket (the Unix socket VMMs connect to) is required");
  }
  std::string domain;
  if (auto it = fields.find("domain"); it != fields.end()) {
    if (it->second.kind_case() != Value::kStringValue) return absl::InvalidArgumentError("options.domain must be a name");
    domain = it->second.string_value();
  }
  std::filesystem::path path(socket->second.string_value());
  if (path.is_relative() && !config_dir.empty()) path = std::filesystem::path(config_dir) / path;
  qemu_socket::QemuSocketBackend::Options o;
  o.socket_path = path.string();
  auto conns = count(config.options(), "max_connections", o.max_connections);
  if (!conns.ok()) return conns.status();
  auto devs = count(config.options(), "max_devices_per_connection", o.max_devices_per_connection);
  if (!devs.ok()) return devs.status();
  o.max_connections = *conns;
  o.max_devices_per_connection = *devs;
  return std::make_unique<QemuSocketDaemonBackend>(std::move(o), std::move(domain));
}

}  // namespace iopf::daemon
