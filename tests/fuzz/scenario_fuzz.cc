// Fuzz target: scenario files of the simulated backend (backends/simulated/scenario.h,
// docs/scenarios.md): JSON → SimScenario, validated and expanded. Relative capture paths resolve
// against a directory that does not exist, so from_capture entries fail cleanly.
#include <cstdint>
#include <string>
#include <string_view>

#include "scenario.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto scenario = iopf::sim::parseScenario(text, "/nonexistent-iopf-fuzz/scenario.json");
  if (scenario.ok()) {
    for (const auto& d : scenario->devices) (void)d;
  }
  // The helpers tools share take command-line text.
  (void)iopf::sim::parseSize(text);
  (void)iopf::sim::parseRid(text);
  (void)iopf::sim::parseResponseCode(text);
  return 0;
}
