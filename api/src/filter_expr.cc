#include "iopf/api/filter_expr.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>

#include "absl/status/status.h"

namespace iopf::api::filter {
namespace {

// Debian 12's absl::string_view is not std::string_view: concatenate by hand.
template <typename... A>
std::string cat(const A&... a) {
  std::string out;
  ((out += a), ...);
  return out;
}
template <typename... A>
void append(std::string* out, const A&... a) {
  ((*out += a), ...);
}

struct KeyName {
  std::string_view name;
  Field field;
};
constexpr std::array<KeyName, 16> kKeys{{
    {"device", Field::kDevice},   {"dev", Field::kDevice},     {"domain", Field::kDomain},
    {"dom", Field::kDomain},      {"pasid", Field::kPasid},    {"group", Field::kGroup},
    {"prgi", Field::kPrgi},       {"grpid", Field::kPrgi},     {"addr", Field::kAddr},
    {"perm", Field::kPerm},       {"type", Field::kType},      {"code", Field::kCode},
    {"origin", Field::kOrigin},   {"handler", Field::kHandler}, {"latency", Field::kLatency},
    {"age", Field::kAge},
}};

constexpr std::array<std::string_view, 21> kTypeNames{
    "gap",           "request",          "group_queued",       "dispatched",     "handler_verdict",
    "responded",     "timed_out",        "completion_refused", "attach",         "detach",
    "device_added",  "device_removed",   "domain_added",       "stop_marker_dropped",
    "partial_discarded", "protocol_error", "request_dropped",  "domain_removed", "chain_changed",
    "domain_paused", "domain_resumed"};
constexpr std::array<std::string_view, 3> kCodeNames{"success", "invalid", "failure"};
constexpr std::array<std::string_view, 9> kOriginNames{"handler",  "default",  "timeout",
                                                       "detach",   "operator", "shutdown",
                                                       "overload", "no_domain", "handler_error"};
constexpr std::array<std::string_view, 4> kStateNames{"queued", "dispatched", "deferred", "completed"};

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

template <size_t N>
std::optional<int> lookup(const std::array<std::string_view, N>& names, std::string_view word) {
  std::string w = lower(word);
  std::replace(w.begin(), w.end(), '-', '_');
  for (size_t i = 0; i < N; ++i) {
    if (names[i] == w) return static_cast<int>(i);
  }
  return std::nullopt;
}

template <size_t N>
std::string choices(const std::array<std::string_view, N>& names) {
  std::string out;
  for (size_t i = 0; i < N; ++i) append(&out, i ? ", " : "", names[i]);
  return out;
}

bool isOrderedField(Field f) {
  return f == Field::kDevice || f == Field::kDomain || f == Field::kPasid || f == Field::kGroup ||
         f == Field::kPrgi || f == Field::kAddr || f == Field::kHandler || f == Field::kLatency || f == Field::kAge;
}

std::optional<uint64_t> parseNumber(std::string_view s) {
  if (s.empty()) return std::nullopt;
  int base = 10;
  if (s.size() > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    s.remove_prefix(2);
  }
  uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (base == 16 && c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (base == 16 && c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return std::nullopt;
    }
    if (v > (UINT64_MAX - static_cast<uint64_t>(d)) / static_cast<uint64_t>(base)) return std::nullopt;
    v = v * static_cast<uint64_t>(base) + static_cast<uint64_t>(d);
  }
  return v;
}

std::optional<uint64_t> parseDuration(std::string_view s) {
  std::string l = lower(s);
  uint64_t mult = 1;
  auto strip = [&](std::string_view suffix, uint64_t m) {
    if (l.size() > suffix.size() && l.compare(l.size() - suffix.size(), suffix.size(), suffix) == 0) {
      l.resize(l.size() - suffix.size());
      mult = m;
      return true;
    }
    return false;
  };
  (void)(strip("ns", 1) || strip("us", 1000) || strip("ms", 1000000) || strip("s", 1000000000));
  auto v = parseNumber(l);
  if (!v || (mult > 1 && *v > UINT64_MAX / mult)) return std::nullopt;
  return *v * mult;
}

// PCI address: [SSSS:]BB:DD.F → RID (the segment is accepted and not compared).
std::optional<uint32_t> parseBdf(std::string_view s) {
  unsigned seg = 0, bus = 0, dev = 0, fn = 0;
  char tail = 0;
  std::string str(s);
  if (std::sscanf(str.c_str(), "%x:%x:%x.%x%c", &seg, &bus, &dev, &fn, &tail) == 4 ||
      std::sscanf(str.c_str(), "%x:%x.%x%c", &bus, &dev, &fn, &tail) == 3) {
    if (seg > 0xffff || bus > 0xff || dev > 0x1f || fn > 7) return std::nullopt;
    return (bus << 8) | (dev << 3) | fn;
  }
  return std::nullopt;
}

class Parser {
 public:
  explicit Parser(std::string_view text) : text_(text) {}

  ParseResult run() {
    ParseResult r;
    Expr expr;
    size_t i = 0;
    while (true) {
      while (i < text_.size() && std::isspace(static_cast<unsigned char>(text_[i]))) ++i;
      if (i >= text_.size()) break;
      size_t end = i;
      while (end < text_.size() && !std::isspace(static_cast<unsigned char>(text_[end]))) ++end;
      // "age > 10ms": join an operator written apart from its key and value.
      std::string token(text_.substr(i, end - i));
      size_t j = end;
      auto nextWord = [&](size_t from, size_t* word_end) -> std::string_view {
        size_t a = from;
        while (a < text_.size() && std::isspace(static_cast<unsigned char>(text_[a]))) ++a;
        size_t b = a;
        while (b < text_.size() && !std::isspace(static_cast<unsigned char>(text_[b]))) ++b;
        *word_end = b;
        return text_.substr(a, b - a);
      };
      auto endsWithOp = [](std::string_view t) {
        return !t.empty() && (t.back() == '>' || t.back() == '<' || t.back() == '=' || t.back() == ':');
      };
      auto startsWithOp = [](std::string_view t) {
        return !t.empty() && (t.front() == '>' || t.front() == '<' || t.front() == '=' || t.front() == '!' ||
                              t.front() == ':');
      };
      size_t we = 0;
      std::string_view next = nextWord(j, &we);
      if (!next.empty() && token.find_first_of("<>=:") == std::string::npos && startsWithOp(next) &&
          !(next.front() == '!' && next.size() > 1 && next[1] != '=')) {
        token += std::string(next);
        j = we;
        next = nextWord(j, &we);
      }
      if (!next.empty() && endsWithOp(token)) {
        token += std::string(next);
        j = we;
      }
      Term term;
      if (auto err = parseTerm(token, i, term)) {
        r.error = std::move(err);
        return r;
      }
      expr.terms.push_back(std::move(term));
      i = j;
    }
    r.expr = std::move(expr);
    return r;
  }

 private:
  std::optional<ParseError> fail(size_t pos, size_t len, std::string msg) {
    return ParseError{pos, len, std::move(msg)};
  }

  std::optional<ParseError> parseTerm(std::string_view tok, size_t pos, Term& term) {
    term.pos = pos;
    size_t k = 0;
    if (!tok.empty() && (tok[0] == '!' || tok[0] == '-')) {
      term.negated = true;
      k = 1;
    }
    size_t key_end = k;
    while (key_end < tok.size() && (std::isalnum(static_cast<unsigned char>(tok[key_end])) || tok[key_end] == '_')) {
      ++key_end;
    }
    const std::string key = lower(tok.substr(k, key_end - k));
    if (key.empty()) return fail(pos, tok.size(), cat("expected a key (device, domain, pasid, …) at '", tok, "'"));
    std::optional<Field> field;
    for (const auto& kn : kKeys) {
      if (kn.name == key) field = kn.field;
    }
    if (key == "state") field = Field::kState;
    if (!field) return fail(pos + k, key.size(), cat("unknown key '", key, "'"));
    term.field = *field;
    // Operator.
    std::string_view rest = tok.substr(key_end);
    const size_t op_pos = pos + key_end;
    if (rest.empty()) return fail(op_pos, 1, cat("'", key, "' needs ':' or a comparison and a value"));
    size_t op_len = 1;
    if (rest[0] == ':' || rest[0] == '=') {
      term.op = Op::kEq;
      if (rest.size() > 1 && rest[0] == '=' && rest[1] == '=') op_len = 2;
    } else if (rest.substr(0, 2) == "!=") {
      term.op = Op::kNe;
      op_len = 2;
    } else if (rest.substr(0, 2) == ">=") {
      term.op = Op::kGe;
      op_len = 2;
    } else if (rest.substr(0, 2) == "<=") {
      term.op = Op::kLe;
      op_len = 2;
    } else if (rest[0] == '>') {
      term.op = Op::kGt;
    } else if (rest[0] == '<') {
      term.op = Op::kLt;
    } else {
      return fail(op_pos, 1, cat("expected ':' or one of = != > >= < <= after '", key, "'"));
    }
    if (term.op != Op::kEq && term.op != Op::kNe && !isOrderedField(term.field)) {
      return fail(op_pos, op_len, cat("'", key, "' cannot be compared with ", rest.substr(0, op_len),
                                              "; use ", key, ":VALUE"));
    }
    if (term.op == Op::kNe) {  // a != b is !(a == b)
      term.negated = !term.negated;
      term.op = Op::kEq;
    }
    std::string_view value = rest.substr(op_len);
    size_t vpos = op_pos + op_len;
    if (value.empty()) return fail(vpos, 1, cat("'", key, "' needs a value"));
    // Values, comma separated (only for equality).
    size_t start = 0;
    while (start <= value.size()) {
      size_t comma = value.find(',', start);
      if (comma == std::string_view::npos) comma = value.size();
      std::string_view v = value.substr(start, comma - start);
      const size_t p = vpos + start;
      if (v.empty()) return fail(p, 1, "empty value in a comma list");
      if (term.op != Op::kEq && !term.values.empty()) {
        return fail(p, v.size(), "a comparison takes one value, not a list");
      }
      if (auto err = parseValue(term, v, p)) return err;
      if (comma == value.size()) break;
      start = comma + 1;
    }
    return std::nullopt;
  }

  std::optional<ParseError> parseValue(Term& term, std::string_view v, size_t p) {
    const std::string key(fieldName(term.field));
    switch (term.field) {
      case Field::kType: {
        auto t = lookup(kTypeNames, v);
        if (!t) {
          // Accept EVENT_RESPONDED too.
          std::string l = lower(v);
          if (l.rfind("event_", 0) == 0) t = lookup(kTypeNames, std::string_view(l).substr(6));
        }
        if (!t) return fail(p, v.size(), cat("unknown event type '", v, "' (", choices(kTypeNames), ")"));
        term.values.push_back(static_cast<uint64_t>(*t));
        return std::nullopt;
      }
      case Field::kCode: {
        auto c = lookup(kCodeNames, v);
        if (!c) return fail(p, v.size(), cat("unknown response code '", v, "' (", choices(kCodeNames), ")"));
        term.values.push_back(static_cast<uint64_t>(*c));
        return std::nullopt;
      }
      case Field::kOrigin: {
        auto o = lookup(kOriginNames, v);
        if (!o) return fail(p, v.size(), cat("unknown origin '", v, "' (", choices(kOriginNames), ")"));
        term.values.push_back(static_cast<uint64_t>(*o));
        return std::nullopt;
      }
      case Field::kState: {
        auto s = lookup(kStateNames, v);
        if (!s) return fail(p, v.size(), cat("unknown group state '", v, "' (", choices(kStateNames), ")"));
        term.values.push_back(static_cast<uint64_t>(*s));
        return std::nullopt;
      }
      case Field::kPerm: {
        uint64_t bits = 0;
        for (char c : v) {
          switch (std::toupper(static_cast<unsigned char>(c))) {
            case 'R': bits |= 1; break;
            case 'W': bits |= 2; break;
            case 'X': bits |= 4; break;
            case 'P': bits |= 8; break;
            default:
              return fail(p, v.size(), cat("perm takes the letters R, W, X and P, not '", v, "'"));
          }
        }
        term.values.push_back(bits);
        return std::nullopt;
      }
      case Field::kLatency:
      case Field::kAge: {
        auto d = parseDuration(v);
        if (!d) return fail(p, v.size(), cat("'", v, "' is not a duration (e.g. 10ms, 250us, 2s)"));
        term.values.push_back(*d);
        return std::nullopt;
      }
      case Field::kPasid:
        if (lower(v) == "none" || lower(v) == "-") {
          if (term.op != Op::kEq) return fail(p, v.size(), "pasid:none cannot be compared");
          term.pasid_none = true;
          return std::nullopt;
        }
        break;
      case Field::kDevice:
        if (v.find(':') != std::string_view::npos) {
          auto rid = parseBdf(v);
          if (!rid) return fail(p, v.size(), cat("'", v, "' is not a PCI address (0000:03:00.0 or 03:00.0)"));
          if (term.op != Op::kEq) return fail(p, v.size(), "a PCI address cannot be compared, use device:BB:DD.F");
          if (!term.values.empty() && !term.values_are_rids) {
            return fail(p, v.size(), "do not mix device ids and PCI addresses in one list");
          }
          term.values_are_rids = true;
          term.values.push_back(*rid);
          return std::nullopt;
        }
        if (term.values_are_rids) return fail(p, v.size(), "do not mix device ids and PCI addresses in one list");
        break;
      default:
        break;
    }
    auto n = parseNumber(v);
    if (!n) return fail(p, v.size(), cat("'", v, "' is not a number (", key, " wants decimal or 0x hex)"));
    const bool narrow = term.field != Field::kGroup && term.field != Field::kAddr;
    if (narrow && *n > UINT32_MAX) return fail(p, v.size(), cat(key, " ", v, " is out of range"));
    term.values.push_back(*n);
    return std::nullopt;
  }

  std::string_view text_;
};

template <typename T>
bool compare(Op op, T a, T b) {
  switch (op) {
    case Op::kEq: return a == b;
    case Op::kNe: return a != b;
    case Op::kGt: return a > b;
    case Op::kGe: return a >= b;
    case Op::kLt: return a < b;
    case Op::kLe: return a <= b;
  }
  return false;
}

bool anyOf(const Term& t, uint64_t actual) {
  if (t.op == Op::kEq) {
    return std::find(t.values.begin(), t.values.end(), actual) != t.values.end();
  }
  return compare<uint64_t>(t.op, actual, t.values.front());
}

// nullopt: the term does not apply to this kind of subject (ignored).
std::optional<bool> matchTerm(const Term& t, const Facts& f) {
  switch (t.field) {
    case Field::kDevice:
      if (t.values_are_rids) return f.rid && anyOf(t, *f.rid);
      return anyOf(t, f.device);
    case Field::kDomain: return anyOf(t, f.domain);
    case Field::kPasid:
      if (t.pasid_none) return !f.pasid.has_value();
      return f.pasid && anyOf(t, *f.pasid);
    case Field::kGroup: return f.group != 0 && anyOf(t, f.group);
    case Field::kPrgi: return f.prgi && anyOf(t, *f.prgi);
    case Field::kAddr: return f.addr && anyOf(t, *f.addr);
    case Field::kPerm:
      if (!f.perm) return false;
      for (uint64_t bits : t.values) {
        if ((*f.perm & bits) == bits) return true;
      }
      return false;
    case Field::kType:
      if (f.is_group) return std::nullopt;
      return anyOf(t, static_cast<uint64_t>(f.type));
    case Field::kCode:
      if (f.is_group) return std::nullopt;
      return f.code && anyOf(t, static_cast<uint64_t>(*f.code));
    case Field::kOrigin:
      if (f.is_group) return std::nullopt;
      return f.origin && anyOf(t, static_cast<uint64_t>(*f.origin));
    case Field::kHandler:
      if (f.is_group) return std::nullopt;
      return f.handler && anyOf(t, *f.handler);
    case Field::kLatency:
      if (f.is_group) return std::nullopt;
      return f.latency_ns && *f.latency_ns >= 0 && anyOf(t, static_cast<uint64_t>(*f.latency_ns));
    case Field::kAge:
      if (!f.is_group) return std::nullopt;
      return f.age_ns && anyOf(t, static_cast<uint64_t>(std::max<int64_t>(0, *f.age_ns)));
    case Field::kState:
      if (!f.is_group) return std::nullopt;
      return f.state && anyOf(t, static_cast<uint64_t>(*f.state));
  }
  return std::nullopt;
}

}  // namespace

ParseResult parseExpr(std::string_view text) { return Parser(text).run(); }

absl::StatusOr<Expr> parse(std::string_view text) {
  ParseResult r = parseExpr(text);
  if (r.error) {
    return absl::InvalidArgumentError(cat("filter, column ", std::to_string(r.error->pos + 1), ": ", r.error->message));
  }
  return std::move(*r.expr);
}

v1::EventFilter toEventFilter(const Expr& expr, const std::vector<v1::EventType>& keep_types, bool* complete) {
  v1::EventFilter out;
  bool all = true;
  int domains = 0, devices = 0, pasids = 0, groups = 0, types = 0;
  for (const Term& t : expr.terms) {
    if (t.negated || t.op != Op::kEq) continue;
    switch (t.field) {
      case Field::kDomain: domains += t.values.size() == 1; break;
      case Field::kDevice: devices += t.values.size() == 1 && !t.values_are_rids; break;
      case Field::kPasid: pasids += t.values.size() == 1 && !t.pasid_none; break;
      case Field::kGroup: groups += t.values.size() == 1; break;
      case Field::kType: ++types; break;
      default: break;
    }
  }
  for (const Term& t : expr.terms) {
    bool pushed = false;
    if (!t.negated && t.op == Op::kEq) {
      if (t.field == Field::kDomain && domains == 1 && t.values.size() == 1) {
        out.set_domain(static_cast<uint32_t>(t.values[0]));
        pushed = true;
      } else if (t.field == Field::kDevice && devices == 1 && t.values.size() == 1 && !t.values_are_rids) {
        out.set_device(static_cast<uint32_t>(t.values[0]));
        pushed = true;
      } else if (t.field == Field::kPasid && pasids == 1 && t.values.size() == 1 && !t.pasid_none) {
        out.set_pasid(static_cast<uint32_t>(t.values[0]));
        pushed = true;
      } else if (t.field == Field::kGroup && groups == 1 && t.values.size() == 1) {
        out.set_group(t.values[0]);
        pushed = true;
      } else if (t.field == Field::kType && types == 1) {
        for (uint64_t v : t.values) out.add_types(static_cast<v1::EventType>(v));
        bool extra = false;
        for (v1::EventType k : keep_types) {
          if (std::find(t.values.begin(), t.values.end(), static_cast<uint64_t>(k)) == t.values.end()) {
            out.add_types(k);
            extra = true;
          }
        }
        pushed = !extra;
      }
    }
    // age and state never restrict events: they do not make the event filter incomplete.
    if (!pushed && t.field != Field::kAge && t.field != Field::kState) all = false;
  }
  if (complete) *complete = all;
  return out;
}

bool matches(const Expr& expr, const Facts& facts) {
  for (const Term& t : expr.terms) {
    std::optional<bool> m = matchTerm(t, facts);
    if (!m) continue;
    if (*m == t.negated) return false;
  }
  return true;
}

Facts factsOf(const v1::Event& e, const std::function<std::optional<uint32_t>(uint32_t)>& rid_of) {
  Facts f;
  f.is_group = false;
  f.group = e.group();
  f.device = e.device();
  if (rid_of) f.rid = rid_of(e.device());
  f.domain = e.domain();
  if (e.has_pasid()) f.pasid = e.pasid();
  f.type = e.type();
  switch (e.type()) {
    case v1::EVENT_REQUEST:
      f.prgi = e.grpid();
      f.addr = e.addr();
      f.perm = e.perm();
      break;
    case v1::EVENT_GROUP_QUEUED:
    case v1::EVENT_DISPATCHED:
    case v1::EVENT_TIMED_OUT:
      f.prgi = e.grpid();
      break;
    case v1::EVENT_HANDLER_VERDICT:
      f.prgi = e.grpid();
      f.code = e.code();
      f.handler = e.handler();
      break;
    case v1::EVENT_RESPONDED:
      f.prgi = e.grpid();
      f.code = e.code();
      f.origin = e.origin();
      f.latency_ns = e.value();
      break;
    case v1::EVENT_COMPLETION_REFUSED:
      f.origin = e.origin();
      break;
    default:
      break;
  }
  return f;
}

Facts factsOf(const v1::Group& g, int64_t age_ns) {
  Facts f;
  f.is_group = true;
  f.group = g.id();
  f.device = g.device();
  f.rid = g.rid();
  f.domain = g.domain();
  if (g.has_pasid()) f.pasid = g.pasid();
  f.prgi = g.grpid();
  if (g.requests_size() > 0) {
    f.addr = g.requests(0).addr();
    uint32_t perm = 0;
    for (const auto& r : g.requests()) perm |= r.perm();
    f.perm = perm;
  }
  f.age_ns = age_ns;
  f.state = g.state();
  return f;
}

std::string_view eventTypeName(int type) {
  return type >= 0 && static_cast<size_t>(type) < kTypeNames.size() ? kTypeNames[static_cast<size_t>(type)] : "?";
}
std::string_view codeName(int code) {
  return code >= 0 && static_cast<size_t>(code) < kCodeNames.size() ? kCodeNames[static_cast<size_t>(code)] : "?";
}
std::string_view originName(int origin) {
  return origin >= 0 && static_cast<size_t>(origin) < kOriginNames.size() ? kOriginNames[static_cast<size_t>(origin)]
                                                                           : "?";
}
std::string_view stateName(int state) {
  return state >= 0 && static_cast<size_t>(state) < kStateNames.size() ? kStateNames[static_cast<size_t>(state)] : "?";
}
std::string_view fieldName(Field field) {
  switch (field) {
    case Field::kDevice: return "device";
    case Field::kDomain: return "domain";
    case Field::kPasid: return "pasid";
    case Field::kGroup: return "group";
    case Field::kPrgi: return "prgi";
    case Field::kAddr: return "addr";
    case Field::kPerm: return "perm";
    case Field::kType: return "type";
    case Field::kCode: return "code";
    case Field::kOrigin: return "origin";
    case Field::kHandler: return "handler";
    case Field::kLatency: return "latency";
    case Field::kAge: return "age";
    case Field::kState: return "state";
  }
  return "?";
}

std::vector<std::string> completionWords() {
  std::vector<std::string> out;
  for (const auto& k : kKeys) out.push_back(std::string(k.name) + ":");
  out.push_back("state:");
  out.push_back("age>");
  out.push_back("latency>");
  for (auto t : kTypeNames) out.push_back(cat("type:", t));
  for (auto c : kCodeNames) out.push_back(cat("code:", c));
  for (auto o : kOriginNames) out.push_back(cat("origin:", o));
  for (auto s : kStateNames) out.push_back(cat("state:", s));
  return out;
}

}  // namespace iopf::api::filter
