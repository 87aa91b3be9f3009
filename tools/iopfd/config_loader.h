// iopfd's configuration: YAML or JSON (JSON is read as YAML), converted to iopf.v1.DaemonConfig and
// validated. Every error names the file, the line and the field: "iopfd.yaml:12: domains[1].kind:
// 'pagin' is not one of paging, nested, sva".
#pragma once

#include <functional>
#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "iopf/types.h"
#include "iopf/v1/config.pb.h"

namespace iopf::daemon {

struct LoadedConfig {
  std::string path;
  v1::DaemonConfig config;
  std::map<std::string, int> lines;  // field path → 1-based line

  // "FILE:LINE: FIELD: " (line omitted when unknown).
  std::string where(const std::string& field) const;
};

// `known_handler` says whether a chain entry name exists (built-ins, plugins); null: not checked.
absl::StatusOr<LoadedConfig> loadConfig(const std::string& path,
                                        const std::function<bool(const std::string&)>& known_handler = {});
absl::StatusOr<LoadedConfig> parseConfig(const std::string& text, const std::string& path,
                                         const std::function<bool(const std::string&)>& known_handler = {});

std::optional<ResponseCode> parseCode(const std::string& text);   // "success", "invalid", "" → invalid
std::optional<DomainKind> parseKind(const std::string& text);     // "paging" (also ""), "nested", "sva"

}  // namespace iopf::daemon
