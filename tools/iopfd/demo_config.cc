#include "demo_config.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

namespace iopf::daemon {

namespace {

// Where the shipped scenarios are: $IOPF_SCENARIO_DIR, beside an installed binary, or the source
// tree this binary was built from.
std::string findScenario(const std::string& name) {
  namespace fs = std::filesystem;
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("IOPF_SCENARIO_DIR")) dirs.emplace_back(env);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) dirs.push_back(exe.parent_path().parent_path() / "share/iopf/scenarios");
  dirs.emplace_back(IOPF_SOURCE_DIR "/scenarios");
  for (const fs::path& d : dirs) {
    if (fs::exists(d / name, ec)) return (d / name).string();
  }
  return {};
}

}  // namespace

absl::StatusOr<LoadedConfig> demoConfig() {
  const std::string scenario = findScenario("demo.json");
  if (scenario.empty()) {
    return absl::NotFoundError("scenarios/demo.json not found (set IOPF_SCENARIO_DIR)");
  }
  // The scenario brings its devices, domains, chains and attachments.
  const std::string text = "backends:\n  - name: sim\n    type: simulated\n    scenario: \"" + scenario + "\"\n";
  return parseConfig(text, "<demo>");
}

}  // namespace iopf::daemon
