// Internals of the plugin host: the state of a loaded plugin, the services behind the host API, and
// the adapter from a plugin's C handler instance to iopf::Handler (budget, quarantine).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "iopf/backend.h"
#include "iopf/handler.h"
#include "iopf/plugin_abi.h"
#include "iopf/plugin_host.h"

namespace iopf::detail {

// What the host API functions reach: the router (until the host shuts down) and the report sink.
// Shared by every plugin context and handler, so it outlives the PluginHost while an abandoned
// plugin thread or a handler still in a chain holds it.
class PluginServices {
 public:
  PluginServices(Router* router, std::function<void(const PluginReport&)> report)
      : router_(router), report_(std::move(report)) {}

  void report(const PluginReport& report) const { report_(report); }
  // After this, lookups answer "unknown" and now() falls back to the steady clock.
  void detachRouter();

  int64_t now() const;
  bool device(uint32_t id, iopf_plugin_device_info& out) const;
  uint32_t listDevices(uint32_t* ids, uint32_t capacity) const;
  bool domain(uint32_t id, iopf_plugin_domain_info& out) const;
  uint32_t listDomains(uint32_t* ids, uint32_t capacity) const;
  std::string handlerName(uint32_t id) const;
  std::string domainName(uint32_t id) const;
  uint32_t listBackends(uint32_t* ids, uint32_t capacity) const;
  bool backend(uint32_t id, iopf_plugin_backend_info& out) const;
  // Router::map; FAILED_PRECONDITION once the router is detached.
  absl::Status map(const MapRequest& request) const;

 private:
  mutable std::shared_mutex mu_;
  Router* router_;
  std::function<void(const PluginReport&)> report_;
};

// ctx of one plugin's iopf_plugin_host_api: who is calling, and its log rate limit.
struct PluginContext {
  std::shared_ptr<PluginServices> services;
  std::string plugin;
  uint32_t lines_per_second = 100;
  std::mutex log_mu;
  int64_t window_start_ns = 0;
  uint32_t lines_in_window = 0;
  uint64_t suppressed = 0;

  void log(uint32_t level, std::string_view message);
};

class PluginHandler;

// One plugin the host loaded. Shared by the host, its handlers and abandoned shutdown threads.
struct LoadedPlugin {
  PluginCandidate candidate;
  void* library = nullptr;  // dlopen handle; never closed
  const iopf_plugin_descriptor* descriptor = nullptr;
  void* state = nullptr;    // the plugin's opaque state from init
  std::unique_ptr<PluginContext> context;
  iopf_plugin_host_api api{};

  // Guards everything below. Handler instances are created and destroyed under it, so a handler
  // dropped by a chain and the host's shutdown never destroy one instance twice.
  mutable std::mutex mu;
  PluginState phase = PluginState::kLoaded;
  bool initialized = false;  // init succeeded and shutdown has not been called
  std::string error;
  std::vector<PluginHandler*> instances;
  // The plugin's counters as they were right before its shutdown (its state is gone afterwards).
  std::vector<std::pair<std::string, uint64_t>> final_counters;

  std::atomic<uint64_t> events_delivered{0};
  std::atomic<uint64_t> events_lost{0};

  bool hasHandler() const { return (descriptor->capabilities & IOPF_PLUGIN_CAP_HANDLER) != 0; }
  bool hasEvents() const { return (descriptor->capabilities & IOPF_PLUGIN_CAP_EVENTS) != 0; }
};

// Cheap monotonic ticks for per-call budgets (the TSC on x86-64: two reads per call must stay
// well under the ABI's 50 ns overhead target) and their conversion to nanoseconds.
uint64_t readTicks();
double ticksPerNs();

// Adapts one C handler instance to iopf::Handler.
//
// Threading: handle() runs on the shard thread of the instance's domain (one group at a time);
// reenable()/status() on any thread; destroyInstanceLocked() under the plugin's mutex.
class PluginHandler final : public Handler {
 public:
  // A live instance. Registers itself in plugin->instances (caller holds plugin->mu).
  PluginHandler(std::shared_ptr<LoadedPlugin> plugin, void* instance, DomainId domain,
                int64_t call_budget_ns, uint32_t quarantine_after);
  // A stand-in for a handler the plugin could not provide: always quarantined.
  PluginHandler(std::string plugin_id, DomainId domain, std::shared_ptr<PluginServices> services,
                std::string reason);
  ~PluginHandler() override;

  std::string_view name() const override { return name_; }
  Verdict handle(const GroupView& group, const CompletionHandle& completion) override;

  // Destroys the plugin instance (idempotent). Caller holds plugin->mu.
  void destroyInstanceLocked();
  absl::Status reenable();
  PluginHandlerStatus status() const;
  DomainId domain() const { return domain_; }
  bool standIn() const { return plugin_ == nullptr; }

 private:
  [[noreturn]] void fail(uint64_t spent_ticks, const iopf_plugin_verdict& verdict, bool overrun);
  static void bump(std::atomic<uint64_t>& a) {
    a.store(a.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  std::shared_ptr<LoadedPlugin> plugin_;  // null for a stand-in
  std::shared_ptr<PluginServices> services_;
  std::string name_;
  void* instance_ = nullptr;
  iopf_plugin_verdict (*handle_)(void*, const iopf_plugin_group*, const iopf_plugin_completion*) =
      nullptr;
  DomainId domain_;
  int64_t call_budget_ns_ = 0;
  uint64_t budget_ticks_ = 0;
  uint32_t quarantine_after_ = 0;

  std::atomic<bool> quarantined_{false};
  std::atomic<bool> destroyed_{false};
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> overruns_{0};
  std::atomic<uint64_t> skipped_{0};
  std::atomic<uint64_t> consecutive_{0};
  mutable std::mutex failure_mu_;
  std::string last_failure_;
};

}  // namespace iopf::detail
