// Fuzz target: iopfd's config file (tools/iopfd/config_loader.h): YAML or JSON text → DaemonConfig,
// validated, every error naming file, line and field. An operator writes it, but a typo must give an
// error, never a crash.
#include <cstdint>
#include <string>

#include "config_loader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto known = [](const std::string& name) {
    return name == "success" || name == "invalid" || name == "observe";
  };
  auto config = iopf::daemon::parseConfig(text, "fuzz.yaml", known);
  if (config.ok()) {
    for (const auto& [field, line] : config->lines) (void)config->where(field);
  } else {
    (void)config.status().message();
  }
  (void)iopf::daemon::parseCode(text);
  (void)iopf::daemon::parseKind(text);
  return 0;
}
