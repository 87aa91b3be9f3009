#include "config_loader.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"

namespace iopf::daemon {

namespace {

void appendJsonString(std::string& out, const std::string& s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

bool looksNumeric(const std::string& s) {
  if (s.empty()) return false;
  size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
  if (i == s.size()) return false;
  bool digit = false;
  for (; i < s.size(); ++i) {
    if (std::isdigit(static_cast<unsigned char>(s[i]))) {
      digit = true;
    } else if (s[i] != '.' && s[i] != 'e' && s[i] != 'E' && s[i] != '-' && s[i] != '+') {
      return false;
    }
  }
  return digit;
}

// A config has a few hundred nodes; aliases can make a small file expand exponentially ("billion
// laughs"), so the conversion stops at this many.
constexpr size_t kMaxConfigNodes = 100000;

// An integer literal of YAML 1.1 (hex or octal) that fits 64 bits, as JSON decimal text.
std::optional<std::string> radixInteger(const std::string& digits, int base) {
  errno = 0;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(digits.c_str(), &end, base);
  if (errno == ERANGE || end == digits.c_str() || *end != '\0') return std::nullopt;
  return std::to_string(v);
}

// YAML → JSON text, recording the line of every field path. Errors: a mapping key that is not a
// scalar, an integer beyond 64 bits, more than kMaxConfigNodes nodes.
absl::Status toJson(const YAML::Node& node, const std::string& path, std::string& out,
                    std::map<std::string, int>& lines, size_t& budget) {
  const int line = node.Mark().line + 1;
  lines.emplace(path, line);
  auto fail = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(":", line, ": ", path.empty() ? "" : path + ": ", what));
  };
  if (budget == 0) return fail(absl::StrCat("more than ", kMaxConfigNodes, " nodes (aliases expanding?)"));
  --budget;
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      out += '{';
      bool first = true;
      for (const auto& kv : node) {
        if (!first) out += ',';
        first = false;
        if (!kv.first.IsScalar()) return fail("a mapping key must be a plain name, not a list or mapping");
        const std::string key = kv.first.Scalar();
        appendJsonString(out, key);
        out += ':';
        if (absl::Status st = toJson(kv.second, path.empty() ? key : path + "." + key, out, lines, budget); !st.ok()) {
          return st;
        }
      }
      out += '}';
      return absl::OkStatus();
    }
    case YAML::NodeType::Sequence: {
      out += '[';
      for (size_t i = 0; i < node.size(); ++i) {
        if (i) out += ',';
        if (absl::Status st = toJson(node[i], path + "[" + std::to_string(i) + "]", out, lines, budget); !st.ok()) {
          return st;
        }
      }
      out += ']';
      return absl::OkStatus();
    }
    case YAML::NodeType::Scalar: {
      const std::string v = node.Scalar();
      if (node.Tag() != "!") {  // a plain (unquoted) scalar
        if (v == "true" || v == "false") {
          out += v;
          return absl::OkStatus();
        }
        if (v == "null" || v == "~") {
          out += "null";
          return absl::OkStatus();
        }
        // YAML 1.1 integers: 0x hex and 0-prefixed octal (file modes) become JSON decimals.
        if (v.size() > 2 && v[0] == '0' && (v[1] == 'x' || v[1] == 'X') &&
            v.find_first_not_of("0123456789abcdefABCDEF", 2) == std::string::npos) {
          auto dec = radixInteger(v.substr(2), 16);
          if (!dec) return fail("'" + v + "' does not fit 64 bits");
          out += *dec;
          return absl::OkStatus();
        }
        if (v.size() > 1 && v[0] == '0' && v.find_first_not_of("01234567") == std::string::npos) {
          auto dec = radixInteger(v, 8);
          if (!dec) return fail("'" + v + "' does not fit 64 bits");
          out += *dec;
          return absl::OkStatus();
        }
        if (looksNumeric(v)) {
          out += v;
          return absl::OkStatus();
        }
      }
      appendJsonString(out, v);
      return absl::OkStatus();
    }
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      out += "null";
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

}  // namespace

std::string LoadedConfig::where(const std::string& field) const {
  auto it = lines.find(field);
  // Fall back to the closest enclosing field that has a line.
  std::string f = field;
  while (it == lines.end() && !f.empty()) {
    const size_t cut = f.find_last_of(".[");
    f = cut == std::string::npos ? "" : f.substr(0, cut);
    it = lines.find(f);
  }
  if (it != lines.end() && !field.empty()) return absl::StrCat(path, ":", it->second, ": ", field, ": ");
  return absl::StrCat(path, ": ", field.empty() ? "" : field + ": ");
}

std::optional<ResponseCode> parseCode(const std::string& t) {
  if (t.empty() || t == "invalid" || t == "INVALID") return ResponseCode::kInvalid;
  if (t == "success" || t == "SUCCESS") return ResponseCode::kSuccess;
  if (t == "failure" || t == "FAILURE") return ResponseCode::kFailure;
  return std::nullopt;
}

std::optional<DomainKind> parseKind(const std::string& t) {
  if (t.empty() || t == "paging") return DomainKind::kPaging;
  if (t == "nested") return DomainKind::kNested;
  if (t == "sva") return DomainKind::kSva;
  return std::nullopt;
}

absl::StatusOr<LoadedConfig> parseConfig(const std::string& text, const std::string& path,
                                         const std::function<bool(const std::string&)>& known_handler) {
  LoadedConfig lc;
  lc.path = path;
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ":", e.mark.line + 1, ": ", e.msg));
  }
  if (!root.IsMap()) return absl::InvalidArgumentError(absl::StrCat(path, ": the config must be a mapping"));
  std::string json;
  size_t budget = kMaxConfigNodes;
  if (absl::Status st = toJson(root, "", json, lc.lines, budget); !st.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, st.message()));
  }
  google::protobuf::util::JsonParseOptions opts;
  opts.ignore_unknown_fields = false;
  const auto st = google::protobuf::util::JsonStringToMessage(json, &lc.config, opts);
  if (!st.ok()) {
    // Point at the field the parser names, if we can find it.
    const std::string msg(st.message());
    std::string field;
    for (const auto& [p, line] : lc.lines) {
      const std::string leaf = p.substr(p.find_last_of('.') == std::string::npos ? 0 : p.find_last_of('.') + 1);
      if (!leaf.empty() && msg.find(leaf) != std::string::npos && p.size() > field.size()) field = p;
    }
    return absl::InvalidArgumentError(absl::StrCat(lc.where(field), msg));
  }
  const v1::DaemonConfig& c = lc.config;
  auto bad = [&](const std::string& field, const std::string& what) {
    return absl::InvalidArgumentError(lc.where(field) + what);
  };
  for (int i = 0; i < c.listen_size(); ++i) {
    const std::string& a = c.listen(i);
    const std::string f = "listen[" + std::to_string(i) + "]";
    if (a.rfind("unix:", 0) == 0) {
      if (a.size() <= 5) return bad(f, "'" + a + "' has no socket path");
    } else if (a.find(':') == std::string::npos) {
      return bad(f, "'" + a + "' is neither unix:PATH nor HOST:PORT");
    } else if (c.tls().cert_file().empty() || c.tls().key_file().empty()) {
      return bad(f, "TCP address '" + a + "' requires tls.cert_file and tls.key_file");
    }
  }
  if (c.socket_mode() > 0777) return bad("socket_mode", "must be a file mode (0..0777)");
  if ((c.socket_mode() & 07) != 0) {
    return bad("socket_mode", "gives every local user access to the router: use 0660 (owner and group) or 0600");
  }
  if (const double cores = c.limits().watch_cpu_cores(); cores != 0 && !(cores > 0 && cores <= 64)) {
    return bad("limits.watch_cpu_cores", absl::StrCat("must be a number of cores in (0, 64], not ", cores));
  }
  std::set<std::string> backend_names;
  for (int i = 0; i < c.backends_size(); ++i) {
    const auto& b = c.backends(i);
    const std::string f = "backends[" + std::to_string(i) + "]";
    if (b.name().empty()) return bad(f + ".name", "a backend needs a name");
    if (!backend_names.insert(b.name()).second) return bad(f + ".name", "duplicate backend '" + b.name() + "'");
    if (b.type() == "simulated") {
      if (b.scenario().empty()) return bad(f + ".scenario", "a simulated backend needs a scenario file");
      for (const auto& [key, v] : b.options().fields()) {
        if (key != "max_devices") return bad(f + ".options." + key, "unknown option of a simulated backend (max_devices)");
        if (v.kind_case() != google::protobuf::Value::kNumberValue || v.number_value() < 1 ||
            v.number_value() > 65536 || v.number_value() != static_cast<double>(static_cast<uint32_t>(v.number_value()))) {
          return bad(f + ".options.max_devices", "must be a whole number from 1 to 65536");
        }
      }
    } else if (b.type() == "memory") {
      std::set<std::string> devs;
      for (int d = 0; d < b.devices_size(); ++d) {
        const std::string df = f + ".devices[" + std::to_string(d) + "]";
        if (b.devices(d).name().empty()) return bad(df + ".name", "a device needs a name");
        if (!devs.insert(b.devices(d).name()).second) return bad(df + ".name", "duplicate device '" + b.devices(d).name() + "'");
        if (b.devices(d).pasid_bits() > 20) return bad(df + ".pasid_bits", "at most 20");
        if (b.devices(d).rid() > 0xffff) return bad(df + ".rid", "a RID has 16 bits");
      }
    } else if (b.type() == "qemu_socket") {
      const auto& o = b.options().fields();
      if (o.find("socket") == o.end()) return bad(f + ".options.socket", "a qemu_socket backend needs a socket path");
    } else {
      return bad(f + ".type", "'" + b.type() + "' is not one of simulated, memory, qemu_socket");
    }
  }
  std::set<std::string> domain_names;
  for (int i = 0; i < c.domains_size(); ++i) {
    const auto& d = c.domains(i);
    const std::string f = "domains[" + std::to_string(i) + "]";
    if (d.name().empty()) return bad(f + ".name", "a domain needs a name");
    if (!domain_names.insert(d.name()).second) return bad(f + ".name", "duplicate domain '" + d.name() + "'");
    if (!parseKind(d.kind())) return bad(f + ".kind", "'" + d.kind() + "' is not one of paging, nested, sva");
    if (!parseCode(d.timeout_code())) return bad(f + ".timeout_code", "'" + d.timeout_code() + "' is not success or invalid");
    if (!parseCode(d.default_code())) return bad(f + ".default_code", "'" + d.default_code() + "' is not success or invalid");
    for (int h = 0; h < d.chain_size(); ++h) {
      const std::string hf = f + ".chain[" + std::to_string(h) + "]";
      if (d.chain(h).name().empty()) return bad(hf + ".name", "a handler needs a name");
      if (known_handler && !known_handler(d.chain(h).name())) {
        return bad(hf + ".name", "no handler or plugin named '" + d.chain(h).name() + "'");
      }
    }
  }
  for (int i = 0; i < c.attachments_size(); ++i) {
    const auto& a = c.attachments(i);
    const std::string f = "attachments[" + std::to_string(i) + "]";
    if (a.device().empty()) return bad(f + ".device", "an attachment needs a device name");
    if (!domain_names.count(a.domain())) return bad(f + ".domain", "no domain named '" + a.domain() + "'");
  }
  return lc;
}

absl::StatusOr<LoadedConfig> loadConfig(const std::string& path,
                                        const std::function<bool(const std::string&)>& known_handler) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot be read"));
  std::stringstream ss;
  ss << in.rdbuf();
  return parseConfig(ss.str(), path, known_handler);
}

}  // namespace iopf::daemon
