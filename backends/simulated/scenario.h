// Scenario files of the simulated backend (docs/scenarios.md): JSON documents of the
// iopf.v1.SimScenario message, loaded, validated and expanded into what Simulation builds.
//
// Every error names the file, the line and the field path:
//   scenarios/x.json:14: devices[0].workload.group_size.max: 8 exceeds the device's 4 PRI credits
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "iopf/types.h"
#include "sim_device.h"
#include "sim_handlers.h"

namespace iopf::sim {

struct HandlerSpec {
  enum class Kind : uint8_t { kResolver = 0, kFixed = 1, kGuest = 2, kHold = 3, kPlugin = 4 };
  Kind kind = Kind::kResolver;
  ResponseCode code = ResponseCode::kInvalid;  // kFixed
  int64_t delay_ns = 50'000;                   // kGuest
  std::string plugin;                          // kPlugin: the plugin id ("plugin:<id>")
  std::string config_json = "{}";              // kPlugin: the handler's config, JSON text
  std::string config_source;                   // kPlugin: "FILE:LINE" of the config, for errors
};

struct ScenarioDomain {
  DomainSpec spec;
  std::vector<AddressRegion> address_space;
  std::vector<HandlerSpec> chain;
};

struct ScenarioAttachment {
  uint32_t device = 0;            // index into Scenario::devices
  std::optional<uint32_t> pasid;  // nullopt: the RID
  uint32_t domain = 0;            // index into Scenario::domains
};

struct Scenario {
  std::string path;
  std::string name;
  std::string description;
  uint64_t seed = 0;
  int64_t duration_ns = 0;  // 0: until stopped
  // Router.
  unsigned shards = 0;
  uint32_t batch_cap = 0;
  std::optional<int64_t> router_idle_spin_ns;
  uint32_t event_capacity = 0;
  // Backend.
  unsigned feeders = 1;
  std::optional<int64_t> backend_idle_spin_ns;
  uint32_t max_batch = 0;
  std::vector<ScenarioDomain> domains;
  std::vector<SimDeviceConfig> devices;  // expanded (count, from_capture), with injections
  std::vector<ScenarioAttachment> attachments;
};

// Reads and validates a scenario file. Relative capture paths are resolved against the file's
// directory.
absl::StatusOr<Scenario> loadScenario(const std::string& path);
// Same, from text; `path` names the document in errors and anchors relative paths.
absl::StatusOr<Scenario> parseScenario(std::string_view json, const std::string& path);

// Helpers shared with tools: "0x1000", "4096", "64MiB", "2G" → bytes; "00:03.0" or a number → RID.
std::optional<uint64_t> parseSize(std::string_view text);
std::optional<uint16_t> parseRid(std::string_view text);
std::optional<ResponseCode> parseResponseCode(std::string_view text);
std::string formatRid(uint16_t rid);

}  // namespace iopf::sim
