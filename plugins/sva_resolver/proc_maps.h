// Parsing of /proc/PID/maps (proc(5)): one mapping per line,
//   start-end perms offset dev inode [path]
// e.g. "7f2c1a000000-7f2c1a021000 rw-p 00000000 00:00 0    [heap]". The path may contain spaces
// (or be followed by " (deleted)"); it is kept verbatim and never interpreted.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace iopf::plugins::sva_resolver {

// One mapping of an address space: [start, end) with IOPF_PERM_READ/WRITE/EXEC bits.
struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;  // exclusive
  uint8_t perm = 0;
  bool shared = false;  // 's' in /proc/PID/maps (MAP_SHARED)
};

struct ParsedMaps {
  std::vector<Mapping> mappings;  // sorted by start, as the kernel prints them
  uint64_t bad_lines = 0;         // lines that did not parse (skipped)
};

// Parses the whole text of a maps file. Never throws; malformed lines (bad hex, end <= start, a
// perms field that is not 4 of "r-", "w-", "x-", "ps") are skipped and counted; a last line
// without a newline is parsed; out-of-order lines are sorted.
ParsedMaps parseProcMaps(std::string_view text);

// Finds the mapping that holds addr in sorted, non-overlapping mappings (binary search).
const Mapping* findMapping(const std::vector<Mapping>& mappings, uint64_t addr);

}  // namespace iopf::plugins::sva_resolver
