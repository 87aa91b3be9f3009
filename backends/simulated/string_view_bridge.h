// Debian's abseil (20220623) has its own absl::string_view, distinct from std::string_view: StrCat
// and friends need this bridge for std::string_view arguments.
#pragma once

#include <string_view>

#include "absl/strings/string_view.h"

namespace iopf::sim {

inline absl::string_view toAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

}  // namespace iopf::sim
