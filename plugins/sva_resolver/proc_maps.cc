#include "proc_maps.h"

#include <algorithm>

#include "iopf/plugin_abi.h"

namespace iopf::plugins::sva_resolver {
namespace {

bool parseHex(std::string_view& s, uint64_t& out) {
  size_t i = 0;
  uint64_t v = 0;
  for (; i < s.size() && i < 17; ++i) {
    const char c = s[i];
    uint64_t d;
    if (c >= '0' && c <= '9') {
      d = static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      d = static_cast<uint64_t>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      d = static_cast<uint64_t>(c - 'A' + 10);
    } else {
      break;
    }
    v = (v << 4) | d;
  }
  if (i == 0 || i > 16) return false;  // nothing, or more than 64 bits
  out = v;
  s.remove_prefix(i);
  return true;
}

bool parseLine(std::string_view line, Mapping& out) {
  uint64_t start = 0, end = 0;
  if (!parseHex(line, start) || line.empty() || line.front() != '-') return false;
  line.remove_prefix(1);
  if (!parseHex(line, end) || line.size() < 5 || line.front() != ' ') return false;
  line.remove_prefix(1);
  const std::string_view perms = line.substr(0, 4);
  if (line.size() > 4 && line[4] != ' ') return false;
  if ((perms[0] != 'r' && perms[0] != '-') || (perms[1] != 'w' && perms[1] != '-') ||
      (perms[2] != 'x' && perms[2] != '-') || (perms[3] != 'p' && perms[3] != 's')) {
    return false;
  }
  if (end <= start) return false;
  out.start = start;
  out.end = end;
  out.perm = static_cast<uint8_t>((perms[0] == 'r' ? IOPF_PERM_READ : 0u) |
                                  (perms[1] == 'w' ? IOPF_PERM_WRITE : 0u) |
                                  (perms[2] == 'x' ? IOPF_PERM_EXEC : 0u));
  out.shared = perms[3] == 's';
  return true;  // offset, dev, inode and path are not needed
}

}  // namespace

ParsedMaps parseProcMaps(std::string_view text) {
  ParsedMaps out;
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    const std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (line.empty()) continue;
    Mapping m;
    if (parseLine(line, m)) {
      out.mappings.push_back(m);
    } else {
      ++out.bad_lines;
    }
  }
  if (!std::is_sorted(out.mappings.begin(), out.mappings.end(),
                      [](const Mapping& a, const Mapping& b) { return a.start < b.start; })) {
    std::sort(out.mappings.begin(), out.mappings.end(),
              [](const Mapping& a, const Mapping& b) { return a.start < b.start; });
  }
  return out;
}

const Mapping* findMapping(const std::vector<Mapping>& mappings, uint64_t addr) {
  auto it = std::upper_bound(mappings.begin(), mappings.end(), addr,
                             [](uint64_t a, const Mapping& m) { return a < m.start; });
  if (it == mappings.begin()) return nullptr;
  --it;
  return addr < it->end ? &*it : nullptr;
}

}  // namespace iopf::plugins::sva_resolver
