// The iopf.v1.Router service over an iopf::Router (synchronous gRPC API: one thread per call; a
// watcher owns its thread and reads the event bus at its own pace).
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "iopf/router.h"
#include "iopf/v1/router.grpc.pb.h"

namespace iopf::api {

class GroupHistory;

// What the daemon adds around the router. Called from gRPC threads: implementations MUST be
// thread-safe. Every method returns an error rather than throw.
class DaemonControl {
 public:
  virtual ~DaemonControl() = default;
  // Backends, config path and generation (Info fields the router does not know).
  virtual void fillInfo(v1::Info& info) const = 0;
  virtual std::vector<v1::Plugin> plugins() const { return {}; }
  // Re-reads the config file; the old config stays on error. Returns the new generation.
  virtual absl::StatusOr<uint64_t> reloadConfig() {
    return absl::UnimplementedError("this daemon has no config file to reload");
  }
  // Builds handlers by name for SetDomainChain.
  virtual absl::StatusOr<std::vector<std::shared_ptr<Handler>>> resolveChain(
      DomainId domain, const std::vector<std::string>& names) = 0;
  virtual absl::Status injectFault(const v1::InjectFaultRequest& request) {
    (void)request;
    return absl::UnimplementedError("no simulated backend: InjectFault is unavailable");
  }
  // Adds a scenario's traffic to the running simulation; fills `out` with what it started.
  virtual absl::Status runScenario(const std::string& path, v1::RunScenarioResponse& out) {
    (void)path;
    (void)out;
    return absl::UnimplementedError("no simulated backend: RunScenario is unavailable");
  }
};

struct ServiceOptions {
  uint32_t max_watchers = 64;
  uint32_t max_list_page = 10000;
  size_t recent_groups = 65536;
  // Bearer token required for mutating calls from TCP peers (empty: TCP mutations refused).
  std::string token;
  std::string daemon_version = "0.1.0";
  // CPU the Watch streams may use together, in cores (0: unpaced). Each watcher's thread is paced
  // to its share (this / active watchers) of its own CPU time, so watchers never take the cores the
  // router needs; a watcher that cannot keep up at its share falls behind and gets a gap marker.
  double watch_cpu_cores = 0.08;
};

class RouterService final : public v1::Router::Service {
 public:
  RouterService(Router& router, DaemonControl& control, ServiceOptions options);
  ~RouterService() override;

  // Watch streams end cleanly (OK) from now on; new calls see draining in GetInfo.
  void beginDrain();
  bool draining() const { return draining_.load(); }
  uint32_t activeWatchers() const { return watchers_.load(); }
  GroupHistory& history() { return *history_; }

  grpc::Status GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*, v1::Info*) override;
  grpc::Status ListDevices(grpc::ServerContext*, const v1::ListDevicesRequest*, v1::ListDevicesResponse*) override;
  grpc::Status ListDomains(grpc::ServerContext*, const v1::ListDomainsRequest*, v1::ListDomainsResponse*) override;
  grpc::Status ListAttachments(grpc::ServerContext*, const v1::ListAttachmentsRequest*,
                               v1::ListAttachmentsResponse*) override;
  grpc::Status ListOutstanding(grpc::ServerContext*, const v1::ListOutstandingRequest*,
                               v1::ListOutstandingResponse*) override;
  grpc::Status GetGroup(grpc::ServerContext*, const v1::GetGroupRequest*, v1::Group*) override;
  grpc::Status Watch(grpc::ServerContext*, const v1::WatchRequest*, grpc::ServerWriter<v1::WatchBatch>*) override;
  grpc::Status GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::Stats*) override;
  grpc::Status Respond(grpc::ServerContext*, const v1::RespondRequest*, v1::RespondResponse*) override;
  grpc::Status Attach(grpc::ServerContext*, const v1::AttachRequest*, v1::AttachResponse*) override;
  grpc::Status Detach(grpc::ServerContext*, const v1::DetachRequest*, v1::DetachResponse*) override;
  grpc::Status SetDomainChain(grpc::ServerContext*, const v1::SetDomainChainRequest*,
                              v1::SetDomainChainResponse*) override;
  grpc::Status ListPlugins(grpc::ServerContext*, const v1::ListPluginsRequest*, v1::ListPluginsResponse*) override;
  grpc::Status ReloadConfig(grpc::ServerContext*, const v1::ReloadConfigRequest*, v1::ReloadConfigResponse*) override;
  grpc::Status InjectFault(grpc::ServerContext*, const v1::InjectFaultRequest*, v1::InjectFaultResponse*) override;
  grpc::Status RunScenario(grpc::ServerContext*, const v1::RunScenarioRequest*, v1::RunScenarioResponse*) override;
  grpc::Status PauseDomain(grpc::ServerContext*, const v1::PauseDomainRequest*, v1::PauseDomainResponse*) override;

 private:
  // Mutating calls from TCP peers need "authorization: Bearer <token>".
  grpc::Status authorizeMutation(grpc::ServerContext* ctx) const;
  // Sleeps as long as this watcher's thread is over its CPU share (see watch_cpu_cores).
  class WatchPacer;
  void buildSnapshot(v1::Snapshot& snapshot) const;

  Router& router_;
  DaemonControl& control_;
  const ServiceOptions options_;
  const int64_t started_ns_;
  std::unique_ptr<GroupHistory> history_;
  std::atomic<bool> draining_{false};
  std::atomic<uint32_t> watchers_{0};
};

}  // namespace iopf::api
