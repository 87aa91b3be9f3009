// iopfd: the router, its backends, domains and chains from a config file, and the gRPC API.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "config_loader.h"
#include "iopf/api/router_service.h"
#include "iopf/api/server.h"
#include "iopf/backend.h"
#include "iopf/in_memory_backend.h"
#include "iopf/plugin_host.h"
#include "iopf/router.h"

namespace iopf::daemon {

inline constexpr char kVersion[] = "0.1.0";

// Builds a handler for a domain from the chain entry's config. Registered by name.
using HandlerFactory = std::function<absl::StatusOr<std::shared_ptr<Handler>>(
    const v1::HandlerConfig& config, DomainId domain)>;

// A backend the daemon runs: the Backend, plus the hooks the daemon needs around it.
class DaemonBackend {
 public:
  virtual ~DaemonBackend() = default;
  virtual Backend& backend() = 0;
  virtual std::string type() const = 0;
  // A backend that brings its own Router (the simulator's whole Simulation) returns it; the daemon
  // then uses it instead of building one. Such a backend runs alone.
  virtual Router* ownRouter() { return nullptr; }
  // After Router::addBackend (skipped for ownRouter() backends): declare devices.
  virtual absl::Status begin(Router& router) = 0;
  // After domains, chains and attachments exist and the API serves: start producing requests.
  virtual absl::Status startTraffic() { return absl::OkStatus(); }
  // Simulator control; UNIMPLEMENTED elsewhere.
  virtual absl::Status injectFault(const v1::InjectFaultRequest& request) {
    (void)request;
    return absl::UnimplementedError("backend '" + type() + "' has no fault injection");
  }
  // Simulator control: adds a scenario's devices to the running system (docs/api.md, RunScenario).
  // `path` relative to the config's directory.
  virtual absl::Status runScenario(const std::string& path, v1::RunScenarioResponse& out) {
    (void)path;
    (void)out;
    return absl::UnimplementedError("backend '" + type() + "' cannot run scenarios");
  }
  // Handlers this backend contributes (e.g. the simulator's built-ins).
  virtual void registerHandlers(std::map<std::string, HandlerFactory>& registry) { (void)registry; }
};

// Creates DaemonBackends by config type ("memory", "simulated", …).
using BackendFactory = std::function<absl::StatusOr<std::unique_ptr<DaemonBackend>>(
    const v1::BackendConfig& config, const std::string& config_dir, const RouterOptions& router_options)>;
std::map<std::string, BackendFactory>& backendFactories();

struct DaemonOptions {
  std::string config_path;            // empty: `config` below is used as is
  std::vector<std::string> listen;    // overrides the config's listen addresses
};

class Daemon final : public api::DaemonControl {
 public:
  Daemon();
  ~Daemon() override;

  // Loads and applies the config, starts backends and the API server.
  absl::Status start(const DaemonOptions& options, std::optional<LoadedConfig> config = std::nullopt);
  // SIGTERM/SIGINT: health NOT_SERVING, watchers end, every open group answered INVALID (origin
  // shutdown), backends stopped, server stopped. Idempotent.
  void drain();

  Router& router() { return *router_; }
  api::RouterService& service() { return *service_; }
  bool knownHandler(const std::string& name) const;
  // Tests: the first "memory" backend and its sink (null if there is none).
  InMemoryBackend* testMemory();
  RouterSink* testSink();

  // DaemonControl
  void fillInfo(v1::Info& info) const override;
  std::vector<v1::Plugin> plugins() const override;
  absl::StatusOr<uint64_t> reloadConfig() override;
  absl::StatusOr<std::vector<std::shared_ptr<Handler>>> resolveChain(
      DomainId domain, const std::vector<std::string>& names) override;
  absl::Status injectFault(const v1::InjectFaultRequest& request) override;
  absl::Status runScenario(const std::string& path, v1::RunScenarioResponse& out) override;

 private:
  absl::Status applyDomainsAndAttachments(const LoadedConfig& config, bool initial);
  absl::Status loadPlugins(const LoadedConfig& config);
  absl::StatusOr<std::vector<std::shared_ptr<Handler>>> buildChain(const LoadedConfig& lc, int domain_index,
                                                                   DomainId domain);
  std::optional<DeviceId> deviceByName(const std::string& name) const;
  // Polls every backend's health(); the API's health is SERVING only while all are up.
  void healthLoop();
  void stopHealthLoop();

  // Destruction runs bottom-up: server and service before the router, the router before backends.
  std::map<std::string, HandlerFactory> handlers_;
  std::vector<std::unique_ptr<DaemonBackend>> backends_;
  std::unique_ptr<Router> owned_router_;
  Router* router_ = nullptr;
  std::unique_ptr<PluginHost> plugins_;  // after the router: destroyed (and shut down) before it
  std::vector<PluginCandidate> candidates_;
  std::unique_ptr<api::RouterService> service_;
  std::unique_ptr<api::ApiServer> server_;
  mutable std::mutex mu_;  // config, domains, generation
  LoadedConfig config_;
  std::map<std::string, DomainId> domains_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> drained_{false};
  // Health polling.
  std::thread health_thread_;
  mutable std::mutex health_mu_;
  std::condition_variable health_cv_;
  bool health_stop_ = false;                 // guarded by health_mu_
  std::vector<v1::BackendStatus> health_;    // guarded by health_mu_, in backends_ order
};

}  // namespace iopf::daemon
