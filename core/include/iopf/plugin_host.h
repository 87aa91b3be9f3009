// The plugin host: finds handler plugins by their sidecars, loads them through the C ABI
// (iopf/plugin_abi.h), runs their lifecycle, adapts their handler instances to iopf::Handler with a
// per-call budget and a quarantine, and feeds event subscribers from the router's event bus.
//
// Lifecycle of one plugin (docs/plugins.md):
//   discover()            reads <id>.json sidecars only; no code is loaded
//   load()/loadFile()     permission + ABI checks, dlopen, descriptor checks, init(plugin config)
//   createHandler()       one instance per (plugin, domain), from that domain's typed config
//   start()               post_init of every loaded plugin, event readers start
//   shutdown()            event readers drain and stop, instances destroyed, shutdown (time limit)
// A plugin that fails any step is reported and left out; the host and the router go on, and a
// domain whose handler failed still answers every group (quarantine: skipped as Continue).
// Libraries are never unloaded (their code may still be referenced by abandoned threads and by
// protobuf's registries).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopf/handler.h"
#include "iopf/types.h"

namespace iopf {

class Router;

// --- ABI checks (also used by tests and tools) -------------------------------------------------

struct PluginAbi {
  uint32_t major = 0;
  uint32_t minor = 0;
  uint64_t hash = 0;
};
// The ABI this host implements (IOPF_PLUGIN_ABI_* and the build-time hash).
PluginAbi hostPluginAbi();
// OK if a plugin built for `abi` may be loaded by this host: major equal, host minor >= plugin
// minor, and the hash equal to the host's record of that minor. Otherwise FAILED_PRECONDITION
// with a message naming the plugin, the file and both versions.
absl::Status checkPluginAbi(std::string_view plugin, std::string_view file, const PluginAbi& abi);
// PERMISSION_DENIED if `path` (a plugin directory or file) is writable by everyone.
absl::Status checkNotWorldWritable(const std::string& path, std::string_view what);

// What a sidecar says about a plugin, read without loading its code.
struct PluginCandidate {
  std::string id;
  std::string name;
  std::string version;
  std::string description;
  std::string sidecar_path;
  std::string library_path;
  std::string config_type;
  std::string plugin_config_type;
  std::string config_proto;
  PluginAbi abi;
  // OK if the sidecar, the files' permissions and the ABI allow loading; else why not.
  absl::Status status;
};

// Reads and checks one sidecar (<dir>/<id>.json). Errors that make the sidecar unusable (missing,
// unparsable) are returned; refusals of a readable plugin (permissions, ABI) are in `status`.
absl::StatusOr<PluginCandidate> readPluginSidecar(const std::string& json_path);

// --- reports ---------------------------------------------------------------------------------

enum class PluginReportKind : uint8_t {
  kLog = 0,              // a plugin's log line (level in `level`)
  kSuppressed = 1,       // log lines of a plugin dropped by the per-plugin rate limit
  kRefused = 2,          // discovery or load refused a plugin (permissions, ABI, sidecar)
  kLoaded = 3,
  kFailed = 4,           // init, post_init or create failed
  kQuarantined = 5,      // a handler instance was quarantined
  kReenabled = 6,
  kShutdownTimeout = 7,  // a plugin's shutdown overran the time limit and was abandoned
};
std::string_view toString(PluginReportKind kind);

struct PluginReport {
  PluginReportKind kind = PluginReportKind::kLog;
  std::string plugin;   // plugin id ("" for a directory)
  DomainId domain = 0;  // for handler reports
  uint32_t level = 0;   // IOPF_LOG_* for kLog
  std::string message;
};

// --- the host ---------------------------------------------------------------------------------

struct PluginHostOptions {
  // Directories searched by discover(), in order; the first sidecar of an id wins.
  std::vector<std::string> search_paths;
  // Default per-call budget of a handler instance: a call that takes longer counts as a failure
  // and its group is answered INVALID (origin handler-error).
  int64_t call_budget_ns = 1'000'000;
  // Consecutive failures (error, invalid verdict, overrun) after which an instance is quarantined.
  uint32_t quarantine_after = 5;
  // How long shutdown() waits for one plugin's shutdown before abandoning it.
  int64_t shutdown_timeout_ns = 2'000'000'000;
  // Event readers: events per on_events call at most, and the idle poll period.
  uint32_t event_batch = 1024;
  int64_t event_idle_sleep_ns = 1'000'000;
  // Log lines per plugin per second passed on; the rest are counted and reported as suppressed.
  uint32_t log_lines_per_second = 100;
  // Receives every report. Called from any thread (control, shard, reader, plugin threads): MUST be
  // thread-safe and quick. Default: one line on stderr.
  std::function<void(const PluginReport&)> report;
};

// One domain's handler config.
struct PluginHandlerConfig {
  std::string json = "{}";      // JSON of the plugin's config message
  std::string source;           // where it came from (file name), for error messages
  int64_t call_budget_ns = 0;   // 0: PluginHostOptions::call_budget_ns
  uint32_t quarantine_after = 0;  // 0: PluginHostOptions::quarantine_after
};

struct PluginHandlerStatus {
  DomainId domain = 0;
  uint64_t calls = 0;             // calls into the plugin
  uint64_t errors = 0;            // IOPF_VERDICT_ERROR or an invalid verdict
  uint64_t overruns = 0;          // calls over the budget
  uint64_t skipped = 0;           // groups passed on (Continue) while quarantined
  uint64_t consecutive_failures = 0;
  bool quarantined = false;
  bool stand_in = false;          // the plugin could not provide the handler (createHandlerOrStandIn)
  int64_t call_budget_ns = 0;
  uint32_t quarantine_after = 0;
  std::string last_failure;
};

enum class PluginState : uint8_t { kLoaded = 0, kRunning = 1, kFailed = 2, kShutDown = 3 };
std::string_view toString(PluginState state);

struct PluginStatus {
  std::string id;
  std::string name;
  std::string version;
  std::string library_path;
  PluginState state = PluginState::kLoaded;
  std::string error;              // why it failed
  bool handler = false;           // IOPF_PLUGIN_CAP_HANDLER
  bool events = false;            // IOPF_PLUGIN_CAP_EVENTS
  uint64_t events_delivered = 0;  // events handed to on_events (not counting gap markers)
  uint64_t events_lost = 0;       // events the reader lost because it fell behind the bus
  std::vector<std::pair<std::string, uint64_t>> counters;  // the plugin's own
  std::vector<PluginHandlerStatus> handlers;
};

class PluginHost {
 public:
  // `router` MAY be null (no events; device and domain lookups answer "unknown"). Otherwise it
  // MUST outlive shutdown(), and shutdown() MUST come after Router::shutdown() or after every
  // chain holding this host's handlers was replaced.
  PluginHost(Router* router, PluginHostOptions options);
  // Calls shutdown().
  ~PluginHost();
  PluginHost(const PluginHost&) = delete;
  PluginHost& operator=(const PluginHost&) = delete;

  // Control-plane methods: any thread, serialized by the host.

  // Reads the sidecars of every search path without loading code. Refused plugins are returned
  // with their reason in `status` (and reported); a world-writable directory is skipped whole.
  std::vector<PluginCandidate> discover();
  // Loads a plugin found by the last discover() and runs its init with the plugin-wide config.
  absl::Status load(std::string_view id, std::string_view plugin_config_json = "{}");
  // Loads a plugin by the path of its library; its sidecar (<id>.json) MUST be next to it.
  absl::Status loadFile(const std::string& library_path, std::string_view plugin_config_json = "{}");
  // post_init of every loaded plugin, then event readers start. Plugins loaded later are started
  // as they load. A plugin whose post_init fails is shut down and reported; start() returns the
  // first such error but starts the others.
  absl::Status start();

  // One handler instance of `plugin` for `domain` (one per pair while it lives).
  absl::StatusOr<std::shared_ptr<Handler>> createHandler(std::string_view plugin, DomainId domain,
                                                         const PluginHandlerConfig& config = {});
  // As createHandler, but never fails: if the plugin cannot provide the handler, returns a
  // stand-in that passes every group on (Continue), shows as quarantined and is reported, so the
  // domain's chain keeps answering every group.
  std::shared_ptr<Handler> createHandlerOrStandIn(std::string_view plugin, DomainId domain,
                                                  const PluginHandlerConfig& config = {});
  // Lifts the quarantine of (plugin, domain). NOT_FOUND without such a live handler,
  // FAILED_PRECONDITION if it is a stand-in or not quarantined.
  absl::Status reenable(std::string_view plugin, DomainId domain);

  std::vector<PluginStatus> status() const;
  std::optional<PluginStatus> status(std::string_view plugin) const;
  // One of the plugin's own counters.
  std::optional<uint64_t> counter(std::string_view plugin, std::string_view name) const;

  // Idempotent. Event readers deliver what the bus still holds and stop; every handler instance
  // is destroyed (handlers still in a chain then pass groups on); plugins are shut down in reverse
  // load order, each within shutdown_timeout_ns.
  void shutdown();

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace iopf
