#include "scenario.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "iopf/v1/sim_scenario.pb.h"
#include "json_document.h"
#include "rng.h"
#include "string_view_bridge.h"

namespace iopf::sim {

// ---------------------------------------------------------------------------------------------
// value helpers

std::optional<uint64_t> parseSize(std::string_view text) {
  std::string t = absl::AsciiStrToLower(absl::StripAsciiWhitespace(toAbsl(text)));
  if (t.empty()) return std::nullopt;
  uint64_t mult = 1;
  struct Suffix {
    const char* s;
    uint64_t mult;
  };
  static constexpr Suffix kSuffixes[] = {{"kib", 1ull << 10}, {"mib", 1ull << 20}, {"gib", 1ull << 30},
                                         {"tib", 1ull << 40}, {"kb", 1ull << 10},  {"mb", 1ull << 20},
                                         {"gb", 1ull << 30},  {"tb", 1ull << 40},  {"k", 1ull << 10},
                                         {"m", 1ull << 20},   {"g", 1ull << 30},   {"t", 1ull << 40}};
  const bool hex = absl::StartsWith(t, "0x");
  if (!hex) {
    for (const Suffix& s : kSuffixes) {
      if (absl::EndsWith(t, s.s)) {
        mult = s.mult;
        t.resize(t.size() - std::strlen(s.s));
        break;
      }
    }
  }
  uint64_t n = 0;
  if (hex) {
    if (t.size() <= 2 || !absl::SimpleHexAtoi(t.substr(2), &n)) return std::nullopt;
  } else if (t.empty() || !std::all_of(t.begin(), t.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
             !absl::SimpleAtoi(t, &n)) {
    return std::nullopt;
  }
  if (n > UINT64_MAX / mult) return std::nullopt;
  return n * mult;
}

std::optional<uint16_t> parseRid(std::string_view text) {
  unsigned bus = 0, dev = 0, fn = 0;
  char tail = 0;
  const std::string t(absl::StripAsciiWhitespace(toAbsl(text)));
  if (std::sscanf(t.c_str(), "%x:%x.%x%c", &bus, &dev, &fn, &tail) == 3) {
    if (bus > 0xFF || dev > 0x1F || fn > 7) return std::nullopt;
    return static_cast<uint16_t>(bus << 8 | dev << 3 | fn);
  }
  if (t.find(':') != std::string::npos) return std::nullopt;
  const std::optional<uint64_t> n = parseSize(t);
  if (!n || *n > 0xFFFF) return std::nullopt;
  return static_cast<uint16_t>(*n);
}

std::string formatRid(uint16_t rid) {
  return absl::StrFormat("%02x:%02x.%x", rid >> 8, (rid >> 3) & 0x1f, rid & 7);
}

std::optional<ResponseCode> parseResponseCode(std::string_view text) {
  const std::string t = absl::AsciiStrToUpper(toAbsl(text));
  if (t == "SUCCESS") return ResponseCode::kSuccess;
  if (t == "INVALID") return ResponseCode::kInvalid;
  if (t == "FAILURE") return ResponseCode::kFailure;
  return std::nullopt;
}

namespace {

// A duration read as a double that must convert to int64 nanoseconds: finite, and under ~292 years
// (a larger value, NaN or infinity would be undefined behaviour in the conversion).
bool durationFits(double value, double ns_per_unit) { return value * ns_per_unit < 9.2e18 && value >= 0; }
constexpr char kDurationTooLarge[] = "is not a finite duration under 292 years (got ";

constexpr uint64_t kIovaLimit = uint64_t{1} << SoftIoPageTable::kIovaBits;
constexpr uint32_t kMaxDevicesPerEntry = 4096;
constexpr uint32_t kMaxDevices = 16384;
constexpr uint32_t kMaxHotPages = 1u << 22;

std::optional<uint8_t> parsePerm(std::string_view text) {
  uint8_t p = 0;
  for (char c : text) {
    switch (c) {
      case 'r':
        p |= perm::kRead;
        break;
      case 'w':
        p |= perm::kWrite;
        break;
      case 'x':
        p |= perm::kExec;
        break;
      case 'p':
        p |= perm::kPriv;
        break;
      default:
        return std::nullopt;
    }
  }
  return p;
}

std::string fmt(double v) {
  return absl::StrFormat("%g", v);
}

std::string dirOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

class Builder {
 public:
  // (domain, chain index) -> (config JSON text, line) of "plugin:<id>" handlers.
  using PluginConfigs = std::map<std::pair<int, int>, std::pair<std::string, int>>;
  Builder(const std::string& path, const JsonLines& lines, const v1::SimScenario& pb,
          PluginConfigs plugin_configs = {})
      : path_(path), lines_(lines), pb_(pb), plugin_configs_(std::move(plugin_configs)) {}

  absl::StatusOr<Scenario> build() {
    Scenario s;
    s.path = path_;
    s.name = pb_.name();
    s.description = pb_.description();
    s.seed = pb_.seed();
    if (pb_.duration_ms() < 0)
      return err("duration_ms", absl::StrCat("must be ≥ 0 (got ", fmt(pb_.duration_ms()), ")"));
    if (!durationFits(pb_.duration_ms(), 1e6))
      return err("duration_ms", absl::StrCat(kDurationTooLarge, fmt(pb_.duration_ms()), ")"));
    s.duration_ns = static_cast<int64_t>(pb_.duration_ms() * 1e6);
    if (absl::Status st = options(s); !st.ok()) return st;
    if (absl::Status st = domains(s); !st.ok()) return st;
    if (absl::Status st = devices(s); !st.ok()) return st;
    if (absl::Status st = attachments(s); !st.ok()) return st;
    if (absl::Status st = injections(s); !st.ok()) return st;
    return s;
  }

 private:
  absl::Status err(std::string_view field, std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ":", lines_.lineOf(field), ": ",
                     field.empty() ? absl::string_view("(top level)") : toAbsl(field), ": ", toAbsl(what)));
  }

  absl::Status options(Scenario& s) {
    const v1::SimRouterOptions& r = pb_.router();
    if (r.shards() > 64) return err("router.shards", absl::StrCat(r.shards(), " is out of range (0..64)"));
    if (r.batch_cap() > 65536)
      return err("router.batch_cap", absl::StrCat(r.batch_cap(), " is out of range (0..65536)"));
    if (r.event_capacity() > (1u << 26)) {
      return err("router.event_capacity", absl::StrCat(r.event_capacity(), " is out of range (0..67108864)"));
    }
    if (r.has_idle_spin_us()) {
      if (r.idle_spin_us() < 0) return err("router.idle_spin_us", "must be ≥ 0");
      if (!durationFits(r.idle_spin_us(), 1e3))
        return err("router.idle_spin_us", absl::StrCat(kDurationTooLarge, fmt(r.idle_spin_us()), ")"));
      s.router_idle_spin_ns = static_cast<int64_t>(r.idle_spin_us() * 1e3);
    }
    s.shards = r.shards();
    s.batch_cap = r.batch_cap();
    s.event_capacity = r.event_capacity();
    const v1::SimBackendOptions& b = pb_.backend();
    if (b.feeders() > 64)
      return err("backend.feeders", absl::StrCat(b.feeders(), " is out of range (0..64)"));
    if (b.max_batch() > 65536)
      return err("backend.max_batch", absl::StrCat(b.max_batch(), " is out of range (0..65536)"));
    if (b.has_idle_spin_us()) {
      if (b.idle_spin_us() < 0) return err("backend.idle_spin_us", "must be ≥ 0");
      if (!durationFits(b.idle_spin_us(), 1e3))
        return err("backend.idle_spin_us", absl::StrCat(kDurationTooLarge, fmt(b.idle_spin_us()), ")"));
      s.backend_idle_spin_ns = static_cast<int64_t>(b.idle_spin_us() * 1e3);
    }
    s.feeders = std::max(1u, b.feeders());
    s.max_batch = b.max_batch();
    return absl::OkStatus();
  }

  // --- domains ---------------------------------------------------------------------------------

  absl::Status domains(Scenario& s) {
    if (pb_.domains_size() == 0) return err("domains", "at least one domain is required");
    for (int i = 0; i < pb_.domains_size(); ++i) {
      const v1::SimDomain& d = pb_.domains(i);
      const std::string p = absl::StrCat("domains[", i, "]");
      ScenarioDomain out;
      if (d.name().empty()) return err(p + ".name", "is required");
      for (int j = 0; j < i; ++j) {
        if (pb_.domains(j).name() == d.name()) {
          return err(p + ".name", absl::StrCat("'", d.name(), "' is also the name of domains[", j, "]"));
        }
      }
      out.spec.name = d.name();
      if (d.kind().empty() || d.kind() == "paging") {
        out.spec.kind = DomainKind::kPaging;
      } else if (d.kind() == "nested") {
        out.spec.kind = DomainKind::kNested;
      } else if (d.kind() == "sva") {
        out.spec.kind = DomainKind::kSva;
      } else {
        return err(p + ".kind", absl::StrCat("'", d.kind(), "' is not one of paging, nested, sva"));
      }
      if (d.deadline_ms() < 0)
        return err(p + ".deadline_ms", absl::StrCat("must be > 0 (got ", fmt(d.deadline_ms()), ")"));
      if (!durationFits(d.deadline_ms(), 1e6))
        return err(p + ".deadline_ms", absl::StrCat(kDurationTooLarge, fmt(d.deadline_ms()), ")"));
      out.spec.deadline_ns = d.deadline_ms() == 0
                                 ? 1'000'000'000
                                 : std::max<int64_t>(1, static_cast<int64_t>(d.deadline_ms() * 1e6));
      if (auto c = code(d.timeout_code(), p + ".timeout_code"); !c.ok()) {
        return c.status();
      } else {
        out.spec.timeout_code = *c;
      }
      if (auto c = code(d.default_code(), p + ".default_code"); !c.ok()) {
        return c.status();
      } else {
        out.spec.default_code = *c;
      }
      out.spec.max_open_groups = d.max_open_groups();
      if (d.has_shard()) {
        if (d.shard() >= 64) return err(p + ".shard", absl::StrCat(d.shard(), " is out of range (0..63)"));
        out.spec.shard = static_cast<int32_t>(d.shard());
      }
      for (int k = 0; k < d.address_space_size(); ++k) {
        const v1::SimRegion& r = d.address_space(k);
        const std::string rp = absl::StrCat(p, ".address_space[", k, "]");
        AddressRegion region;
        const std::optional<uint64_t> base = parseSize(r.base());
        if (!base)
          return err(rp + ".base", absl::StrCat("'", r.base(), "' is not an address (e.g. \"0x10000000\")"));
        const std::optional<uint64_t> size = parseSize(r.size());
        if (!size || *size == 0) {
          return err(rp + ".size", absl::StrCat("'", r.size(), "' is not a size > 0 (e.g. \"64MiB\")"));
        }
        if (*base >= kIovaLimit || *size > kIovaLimit - *base) {
          return err(rp + ".size", "the region leaves the 48-bit IOVA space");
        }
        const std::optional<uint8_t> pm = parsePerm(r.perm().empty() ? "rw" : r.perm());
        if (!pm)
          return err(rp + ".perm", absl::StrCat("'", r.perm(), "' is not made of the letters r, w, x, p"));
        region.base = *base;
        region.size = *size;
        region.perm = *pm;
        for (size_t j = 0; j < out.address_space.size(); ++j) {
          const AddressRegion& o = out.address_space[j];
          if (region.base < o.base + o.size && o.base < region.base + region.size) {
            return err(rp + ".base", absl::StrCat("overlaps ", p, ".address_space[", j, "]"));
          }
        }
        out.address_space.push_back(region);
      }
      for (int k = 0; k < d.chain_size(); ++k) {
        const v1::SimHandler& h = d.chain(k);
        const std::string hp = absl::StrCat(p, ".chain[", k, "]");
        HandlerSpec spec;
        std::string name = h.name();
        std::string code_text = h.code();
        if (absl::StartsWith(name, "fixed:")) {
          if (!code_text.empty()) return err(hp + ".code", "given twice (in the name and in code)");
          code_text = name.substr(6);
          name = "fixed";
        }
        const auto plugin_config = plugin_configs_.find({i, k});
        if (plugin_config != plugin_configs_.end() && !absl::StartsWith(name, "plugin:")) {
          return err(hp + ".config", "applies to plugin handlers (\"plugin:<id>\") only");
        }
        if (absl::StartsWith(name, "plugin:")) {
          spec.kind = HandlerSpec::Kind::kPlugin;
          spec.plugin = name.substr(7);
          const bool valid_id = !spec.plugin.empty() &&
              std::all_of(spec.plugin.begin(), spec.plugin.end(), [](char c) {
                return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
              });
          if (!valid_id) return err(hp + ".name", absl::StrCat("'", name, "': a plugin id is [a-z0-9_]+"));
          spec.config_source = absl::StrCat(path_, ":", lines_.lineOf(hp + ".name"));
          if (plugin_config != plugin_configs_.end()) {
            spec.config_json = plugin_config->second.first;
            spec.config_source = absl::StrCat(path_, ":", plugin_config->second.second);
          }
        } else if (name == "sim_resolver") {
          spec.kind = HandlerSpec::Kind::kResolver;
        } else if (name == "fixed") {
          spec.kind = HandlerSpec::Kind::kFixed;
          if (code_text.empty()) return err(hp + ".code", "is required for a fixed handler");
          const std::optional<ResponseCode> c = parseResponseCode(code_text);
          if (!c)
            return err(hp + ".code",
                       absl::StrCat("'", code_text, "' is not one of SUCCESS, INVALID, FAILURE"));
          spec.code = *c;
        } else if (name == "sim_guest") {
          spec.kind = HandlerSpec::Kind::kGuest;
          if (h.has_delay_us()) {
            if (h.delay_us() < 0)
              return err(hp + ".delay_us", absl::StrCat("must be ≥ 0 (got ", fmt(h.delay_us()), ")"));
            if (!durationFits(h.delay_us(), 1e3))
              return err(hp + ".delay_us", absl::StrCat(kDurationTooLarge, fmt(h.delay_us()), ")"));
            spec.delay_ns = static_cast<int64_t>(h.delay_us() * 1e3);
          }
        } else if (name == "sim_hold") {
          spec.kind = HandlerSpec::Kind::kHold;
        } else if (name.empty()) {
          return err(hp + ".name", "is required");
        } else {
          return err(hp + ".name",
                     absl::StrCat("unknown handler '", h.name(),
                                  "' (built-in: sim_resolver, fixed:<CODE>, sim_guest, sim_hold; "
                                  "plugins: plugin:<id>)"));
        }
        if (spec.kind != HandlerSpec::Kind::kFixed && !code_text.empty()) {
          return err(hp + ".code", "applies to fixed handlers only");
        }
        if (spec.kind != HandlerSpec::Kind::kGuest && h.has_delay_us()) {
          return err(hp + ".delay_us", "applies to sim_guest only");
        }
        if ((spec.kind == HandlerSpec::Kind::kResolver || spec.kind == HandlerSpec::Kind::kGuest) &&
            out.address_space.empty()) {
          return err(hp + ".name", absl::StrCat(name, " needs the domain's address_space"));
        }
        out.chain.push_back(spec);
      }
      s.domains.push_back(std::move(out));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<ResponseCode> code(const std::string& text, const std::string& field) const {
    if (text.empty()) return ResponseCode::kInvalid;
    const std::optional<ResponseCode> c = parseResponseCode(text);
    if (!c) return err(field, absl::StrCat("'", text, "' is not one of SUCCESS, INVALID, FAILURE"));
    return *c;
  }

  // --- devices ---------------------------------------------------------------------------------

  absl::StatusOr<const std::vector<CapturedDevice>*> capture(const std::string& file,
                                                             const std::string& field) {
    const std::string resolved =
        !file.empty() && file[0] == '/' ? file : absl::StrCat(dirOf(path_), "/", file);
    auto it = captures_.find(resolved);
    if (it == captures_.end()) {
      auto loaded = loadCapture(resolved);
      if (!loaded.ok()) return err(field, std::string(loaded.status().message()));
      it = captures_.emplace(resolved, std::move(*loaded)).first;
    }
    return &it->second;
  }

  absl::Status commonDevice(const v1::SimDevice& d, const std::string& p, SimDeviceConfig& cfg) {
    if (d.has_pri_allocation()) {
      if (d.pri_allocation() > 65536) {
        return err(p + ".pri_allocation", absl::StrCat(d.pri_allocation(), " is out of range (0..65536)"));
      }
      cfg.pri_allocation = d.pri_allocation();
    }
    if (d.has_max_retries()) {
      if (d.max_retries() > 255)
        return err(p + ".max_retries", absl::StrCat(d.max_retries(), " is out of range (0..255)"));
      cfg.max_retries = d.max_retries();
    }
    if (d.pri_reenable_after_ms() < 0) {
      return err(p + ".pri_reenable_after_ms",
                 absl::StrCat("must be ≥ 0 (got ", fmt(d.pri_reenable_after_ms()), ")"));
    }
    if (!durationFits(d.pri_reenable_after_ms(), 1e6)) {
      return err(p + ".pri_reenable_after_ms", absl::StrCat(kDurationTooLarge, fmt(d.pri_reenable_after_ms()), ")"));
    }
    cfg.pri_reenable_after_ns = static_cast<int64_t>(d.pri_reenable_after_ms() * 1e6);
    return absl::OkStatus();
  }

  absl::Status pasids(const v1::SimDevice& d, const std::string& p, SimDeviceConfig& cfg) {
    if (d.pasid_bits() > 20)
      return err(p + ".pasid_bits", absl::StrCat(d.pasid_bits(), " is out of range (0..20)"));
    cfg.pasid_bits = static_cast<uint8_t>(d.pasid_bits());
    for (int k = 0; k < d.pasids_size(); ++k) {
      const uint32_t pasid = d.pasids(k);
      const std::string pp = absl::StrCat(p, ".pasids[", k, "]");
      if (cfg.pasid_bits == 0) return err(pp, "the device has no PASID support (pasid_bits is 0)");
      if (pasid >= (1u << cfg.pasid_bits)) {
        return err(pp, absl::StrCat("PASID ", pasid, " does not fit in ", d.pasid_bits(), " PASID bits"));
      }
      if (std::find(cfg.pasids.begin(), cfg.pasids.end(), pasid) != cfg.pasids.end()) {
        return err(pp, absl::StrCat("PASID ", pasid, " is listed twice"));
      }
      cfg.pasids.push_back(pasid);
    }
    return absl::OkStatus();
  }

  absl::Status replayWorkload(const v1::SimWorkload& w, const std::string& p, WorkloadConfig& out) {
    if (w.rate_groups_per_s() != 0)
      return err(p + ".rate_groups_per_s", "does not apply to a replay workload (see timing)");
    if (w.has_group_size())
      return err(p + ".group_size", "does not apply to a replay workload (groups come from the capture)");
    if (!w.base().empty() || !w.size().empty())
      return err(p + (w.base().empty() ? ".size" : ".base"), "does not apply to a replay workload");
    out.kind = WorkloadKind::kReplay;
    if (w.timing().empty() || w.timing() == "original") {
      out.replay_original_timing = true;
    } else if (w.timing() == "asap") {
      out.replay_original_timing = false;
    } else {
      return err(p + ".timing", absl::StrCat("'", w.timing(), "' is not one of original, asap"));
    }
    if (w.speed() < 0) return err(p + ".speed", absl::StrCat("must be > 0 (got ", fmt(w.speed()), ")"));
    out.replay_speed = w.speed() == 0 ? 1.0 : w.speed();
    out.replay_loop = w.loop();
    out.max_groups = w.max_groups();
    if (w.skip_mapped()) return err(p + ".skip_mapped", "applies to synthetic workloads only");
    return absl::OkStatus();
  }

  absl::Status syntheticWorkload(const v1::SimWorkload& w, const std::string& p, const SimDeviceConfig& cfg,
                                 WorkloadConfig& out) {
    if (!w.capture().empty()) return err(p + ".capture", "applies to replay workloads only");
    if (!w.capture_device().empty()) return err(p + ".capture_device", "applies to replay workloads only");
    if (!w.timing().empty()) return err(p + ".timing", "applies to replay workloads only");
    if (w.loop()) return err(p + ".loop", "applies to replay workloads only");
    if (w.speed() != 0) return err(p + ".speed", "applies to replay workloads only");
    if (w.kind().empty() || w.kind() == "uniform") {
      out.kind = WorkloadKind::kUniform;
    } else if (w.kind() == "sequential") {
      out.kind = WorkloadKind::kSequential;
    } else if (w.kind() == "zipf") {
      out.kind = WorkloadKind::kZipf;
    } else {
      return err(p + ".kind",
                 absl::StrCat("'", w.kind(), "' is not one of sequential, uniform, zipf, replay"));
    }
    const std::optional<uint64_t> base = parseSize(w.base().empty() ? "0x10000000" : w.base());
    if (!base)
      return err(p + ".base", absl::StrCat("'", w.base(), "' is not an address (e.g. \"0x10000000\")"));
    const std::optional<uint64_t> size = parseSize(w.size().empty() ? "64MiB" : w.size());
    if (!size || *size < 4096)
      return err(p + ".size", absl::StrCat("'", w.size(), "' is not a size of at least one page (4096)"));
    if (*base >= kIovaLimit || *size > kIovaLimit - *base)
      return err(p + ".size", "the range leaves the 48-bit IOVA space");
    out.base = *base;
    out.size = *size;
    if (w.write_ratio() < 0 || w.write_ratio() > 1) {
      return err(p + ".write_ratio",
                 absl::StrCat("must be between 0 and 1 (got ", fmt(w.write_ratio()), ")"));
    }
    out.write_ratio = w.write_ratio();
    const uint32_t gmin = w.group_size().min() == 0 ? 1 : w.group_size().min();
    const uint32_t gmax = w.group_size().max() == 0 ? gmin : w.group_size().max();
    if (gmax < gmin)
      return err(p + ".group_size.max", absl::StrCat(gmax, " is below group_size.min (", gmin, ")"));
    if (gmax > kPrgiSpace) return err(p + ".group_size.max", absl::StrCat(gmax, " is out of range (1..512)"));
    if (cfg.stall_model && gmax > 1) {
      return err(p + ".group_size.max", "a stall-model device issues single-request groups: must be 1");
    }
    if (cfg.pri_allocation != 0 && gmax > cfg.pri_allocation) {
      return err(p + ".group_size.max",
                 absl::StrCat(gmax, " exceeds the device's ", cfg.pri_allocation, " PRI credits"));
    }
    out.group_min = gmin;
    out.group_max = gmax;
    if (w.rate_groups_per_s() < 0) {
      return err(p + ".rate_groups_per_s",
                 absl::StrCat("must be ≥ 0 (got ", fmt(w.rate_groups_per_s()), ")"));
    }
    out.rate_groups_per_s = w.rate_groups_per_s();
    if (w.arrivals().empty() || w.arrivals() == "poisson") {
      out.poisson = true;
    } else if (w.arrivals() == "fixed") {
      out.poisson = false;
    } else {
      return err(p + ".arrivals", absl::StrCat("'", w.arrivals(), "' is not one of poisson, fixed"));
    }
    const uint64_t pages = out.size / 4096;
    if (out.kind == WorkloadKind::kZipf) {
      if (w.zipf_s() < 0) return err(p + ".zipf_s", absl::StrCat("must be > 0 (got ", fmt(w.zipf_s()), ")"));
      const double s = w.zipf_s() == 0 ? 0.99 : w.zipf_s();
      uint64_t hot = w.hot_pages() == 0 ? std::min<uint64_t>(pages, kMaxHotPages) : w.hot_pages();
      if (hot > pages)
        return err(p + ".hot_pages", absl::StrCat(hot, " exceeds the ", pages, " pages of the range"));
      if (hot > kMaxHotPages)
        return err(p + ".hot_pages", absl::StrCat(hot, " is out of range (1..4194304)"));
      const auto key = std::make_pair(static_cast<uint32_t>(hot), s);
      auto it = zipf_.find(key);
      if (it == zipf_.end()) it = zipf_.emplace(key, ZipfTable::build(key.first, s)).first;
      out.zipf = it->second;
    } else {
      if (w.zipf_s() != 0) return err(p + ".zipf_s", "applies to zipf workloads only");
      if (w.hot_pages() != 0) return err(p + ".hot_pages", "applies to zipf workloads only");
    }
    out.max_groups = w.max_groups();
    out.skip_mapped = w.skip_mapped();
    return absl::OkStatus();
  }

  absl::Status addDevice(Scenario& s, SimDeviceConfig cfg, const std::string& p) {
    for (size_t j = 0; j < s.devices.size(); ++j) {
      const SimDeviceConfig& o = s.devices[j];
      if (o.name == cfg.name) {
        return err(p + ".name",
                   absl::StrCat("device name '", cfg.name, "' is used twice (", origin_[j], ")"));
      }
      if (o.segment == cfg.segment && o.rid == cfg.rid) {
        return err(p + ".rid", absl::StrCat("RID ", formatRid(cfg.rid), " of '", cfg.name,
                                            "' is also the RID of '", o.name, "' (", origin_[j], ")"));
      }
    }
    if (s.devices.size() >= kMaxDevices) return err(p, absl::StrCat("more than ", kMaxDevices, " devices"));
    uint64_t x = s.seed ^ (0x9E3779B97F4A7C15ull * (s.devices.size() + 1));
    cfg.seed = Rng::splitMix(x);
    s.devices.push_back(std::move(cfg));
    origin_.push_back(p);
    return absl::OkStatus();
  }

  static bool validName(std::string_view name) {
    return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' || c == ':';
    });
  }

  absl::Status devices(Scenario& s) {
    if (pb_.devices_size() == 0) return err("devices", "at least one device is required");
    uint32_t auto_rid = 0x0100;  // 01:00.0
    for (int i = 0; i < pb_.devices_size(); ++i) {
      const v1::SimDevice& d = pb_.devices(i);
      const std::string p = absl::StrCat("devices[", i, "]");
      const std::string wp = p + ".workload";
      if (!d.from_capture().empty()) {
        if (!d.name().empty() || d.count() != 0 || !d.rid().empty()) {
          return err(p + ".from_capture", "name, count and rid come from the capture: leave them unset");
        }
        if (d.pasids_size() != 0 || d.pasid_bits() != 0 || d.needs_pasid() || d.stall_model()) {
          return err(p + ".from_capture", "PASIDs and device flags come from the capture: leave them unset");
        }
        if (!d.workload().kind().empty() && d.workload().kind() != "replay") {
          return err(wp + ".kind",
                     "a from_capture device replays its capture: kind must be replay (or unset)");
        }
        if (!d.workload().capture().empty()) return err(wp + ".capture", "is given by from_capture");
        auto caps = capture(d.from_capture(), p + ".from_capture");
        if (!caps.ok()) return caps.status();
        if ((*caps)->empty())
          return err(p + ".from_capture", absl::StrCat("capture '", d.from_capture(), "' lists no device"));
        WorkloadConfig w;
        if (absl::Status st = replayWorkload(d.workload(), wp, w); !st.ok()) return st;
        for (const CapturedDevice& c : **caps) {
          SimDeviceConfig cfg;
          cfg.name = c.name;
          cfg.segment = c.segment;
          cfg.rid = c.rid;
          cfg.pri_allocation = c.pri_allocation;
          cfg.pasid_bits = c.pasid_bits;
          cfg.needs_pasid = c.needs_pasid;
          cfg.stall_model = c.stall_model;
          cfg.pasids = c.pasids;
          if (cfg.pasid_bits == 0 && !cfg.pasids.empty()) cfg.pasid_bits = 20;
          if (absl::Status st = commonDevice(d, p, cfg); !st.ok()) return st;
          cfg.workload = w;
          cfg.workload.replay = c.trace;
          if (absl::Status st = addDevice(s, std::move(cfg), p); !st.ok()) return st;
        }
        continue;
      }
      if (d.name().empty()) return err(p + ".name", "is required");
      if (!validName(d.name())) {
        return err(p + ".name", absl::StrCat("'", d.name(), "' may hold only letters, digits and _ - . :"));
      }
      const uint32_t count = d.count() == 0 ? 1 : d.count();
      if (count > kMaxDevicesPerEntry)
        return err(p + ".count", absl::StrCat(count, " is out of range (1..4096)"));
      uint32_t rid = auto_rid;
      if (!d.rid().empty()) {
        const std::optional<uint16_t> r = parseRid(d.rid());
        if (!r)
          return err(p + ".rid",
                     absl::StrCat("'", d.rid(), "' is not a RID (\"BB:DD.F\" or a number ≤ 0xffff)"));
        rid = *r;
      }
      if (rid + count - 1 > 0xFFFF) return err(p + ".count", "the RIDs run past ff:1f.7");
      SimDeviceConfig tmpl;
      tmpl.segment = d.segment();
      tmpl.needs_pasid = d.needs_pasid();
      tmpl.stall_model = d.stall_model();
      if (absl::Status st = commonDevice(d, p, tmpl); !st.ok()) return st;
      if (absl::Status st = pasids(d, p, tmpl); !st.ok()) return st;
      const v1::SimWorkload& w = d.workload();
      std::shared_ptr<const ReplayTrace> trace;
      if (w.kind() == "replay") {
        if (count != 1)
          return err(p + ".count", "a replay device replays one captured device: count must be 1");
        if (w.capture().empty()) return err(wp + ".capture", "is required for a replay workload");
        if (absl::Status st = replayWorkload(w, wp, tmpl.workload); !st.ok()) return st;
        auto caps = capture(w.capture(), wp + ".capture");
        if (!caps.ok()) return caps.status();
        const std::string want = w.capture_device().empty() ? d.name() : w.capture_device();
        std::vector<std::string> names;
        for (const CapturedDevice& c : **caps) {
          names.push_back(c.name);
          if (c.name == want) trace = c.trace;
          if (c.name == want && tmpl.pasids.empty() && !c.pasids.empty()) {
            if (tmpl.pasid_bits == 0)
              return err(p + ".pasid_bits", absl::StrCat("the captured device '", want, "' uses PASIDs"));
            tmpl.pasids = c.pasids;
          }
        }
        if (!trace) {
          return err(w.capture_device().empty() ? p + ".name" : wp + ".capture_device",
                     absl::StrCat("capture '", w.capture(), "' has no device '", want,
                                  "' (it has: ", absl::StrJoin(names, ", "), ")"));
        }
        tmpl.workload.replay = trace;
      } else {
        if (absl::Status st = syntheticWorkload(w, wp, tmpl, tmpl.workload); !st.ok()) return st;
      }
      for (uint32_t k = 0; k < count; ++k) {
        SimDeviceConfig cfg = tmpl;
        cfg.name = count > 1 ? absl::StrCat(d.name(), k) : d.name();
        cfg.rid = static_cast<uint16_t>(rid + k);
        if (absl::Status st = addDevice(s, std::move(cfg), p); !st.ok()) return st;
      }
      auto_rid =
          std::max<uint32_t>(auto_rid, ((rid + count + 7) & ~7u));  // next auto RID: a fresh device number
      if (auto_rid > 0xFFFF) auto_rid = 0x0100;
    }
    return absl::OkStatus();
  }

  // --- selectors, attachments, injections ------------------------------------------------------

  std::vector<uint32_t> select(const Scenario& s, const std::string& selector) const {
    std::vector<uint32_t> out;
    const bool prefix = !selector.empty() && selector.back() == '*';
    const std::string_view stem =
        prefix ? std::string_view(selector).substr(0, selector.size() - 1) : selector;
    for (size_t i = 0; i < s.devices.size(); ++i) {
      const std::string& n = s.devices[i].name;
      if (prefix ? absl::StartsWith(n, toAbsl(stem)) : n == selector) out.push_back(static_cast<uint32_t>(i));
    }
    return out;
  }

  absl::Status pasidDeclared(const Scenario& s, uint32_t dev, uint32_t pasid,
                             const std::string& field) const {
    const SimDeviceConfig& c = s.devices[dev];
    if (std::find(c.pasids.begin(), c.pasids.end(), pasid) != c.pasids.end()) return absl::OkStatus();
    return err(field, absl::StrCat("device '", c.name, "' does not use PASID ", pasid, " (its pasids: ",
                                   c.pasids.empty() ? "none" : absl::StrJoin(c.pasids, ", "), ")"));
  }

  absl::Status attachments(Scenario& s) {
    std::map<std::pair<uint32_t, int64_t>, int> seen;
    for (int i = 0; i < pb_.attachments_size(); ++i) {
      const v1::SimAttachment& a = pb_.attachments(i);
      const std::string p = absl::StrCat("attachments[", i, "]");
      if (a.device().empty()) return err(p + ".device", "is required");
      const std::vector<uint32_t> devs = select(s, a.device());
      if (devs.empty()) return err(p + ".device", absl::StrCat("'", a.device(), "' matches no device"));
      uint32_t dom = UINT32_MAX;
      for (size_t k = 0; k < s.domains.size(); ++k) {
        if (s.domains[k].spec.name == a.domain()) dom = static_cast<uint32_t>(k);
      }
      if (a.domain().empty()) return err(p + ".domain", "is required");
      if (dom == UINT32_MAX)
        return err(p + ".domain", absl::StrCat("'", a.domain(), "' is not a domain of this scenario"));
      for (uint32_t dev : devs) {
        if (a.has_pasid()) {
          if (absl::Status st = pasidDeclared(s, dev, a.pasid(), p + ".pasid"); !st.ok()) return st;
        }
        const auto key = std::make_pair(dev, a.has_pasid() ? int64_t{a.pasid()} : int64_t{-1});
        if (auto it = seen.find(key); it != seen.end()) {
          return err(p, absl::StrCat("device '", s.devices[dev].name, "' ",
                                     a.has_pasid() ? absl::StrCat("PASID ", a.pasid()) : std::string("RID"),
                                     " is attached twice (also attachments[", it->second, "])"));
        }
        seen.emplace(key, i);
        s.attachments.push_back(
            {dev, a.has_pasid() ? std::optional<uint32_t>(a.pasid()) : std::nullopt, dom});
      }
    }
    return absl::OkStatus();
  }

  absl::Status injections(Scenario& s) {
    for (int i = 0; i < pb_.injections_size(); ++i) {
      const v1::SimInjection& in = pb_.injections(i);
      const std::string p = absl::StrCat("injections[", i, "]");
      if (in.device().empty()) return err(p + ".device", "is required");
      const std::vector<uint32_t> devs = select(s, in.device());
      if (devs.empty()) return err(p + ".device", absl::StrCat("'", in.device(), "' matches no device"));
      const std::optional<InjectionKind> kind = parseInjectionKind(in.kind());
      if (!kind) {
        std::vector<std::string> names;
        for (int k = 0; k < kInjectionKindCount; ++k)
          names.emplace_back(toString(static_cast<InjectionKind>(k)));
        return err(p + ".kind", absl::StrCat(in.kind().empty() ? std::string("is required")
                                                               : absl::StrCat("'", in.kind(), "' is not"),
                                             " one of ", absl::StrJoin(names, ", ")));
      }
      if (in.at_ms() < 0) return err(p + ".at_ms", absl::StrCat("must be ≥ 0 (got ", fmt(in.at_ms()), ")"));
      if (!durationFits(in.at_ms(), 1e6))
        return err(p + ".at_ms", absl::StrCat(kDurationTooLarge, fmt(in.at_ms()), ")"));
      if (in.every_ms() < 0)
        return err(p + ".every_ms", absl::StrCat("must be ≥ 0 (got ", fmt(in.every_ms()), ")"));
      if (!durationFits(in.every_ms(), 1e6))
        return err(p + ".every_ms", absl::StrCat(kDurationTooLarge, fmt(in.every_ms()), ")"));
      if (in.repeat() != 0 && in.every_ms() == 0) return err(p + ".repeat", "needs every_ms > 0");
      if (in.count() != 0 && *kind != InjectionKind::kBurst)
        return err(p + ".count", "applies to burst only");
      const bool needs_pasid = *kind == InjectionKind::kStopMarker || *kind == InjectionKind::kResumePasid;
      if (needs_pasid && !in.has_pasid())
        return err(p + ".pasid", absl::StrCat("is required for ", in.kind()));
      if (!needs_pasid && in.has_pasid())
        return err(p + ".pasid", "applies to stop_marker and resume_pasid only");
      ScheduledInjection sch;
      sch.at_ns = static_cast<int64_t>(in.at_ms() * 1e6);
      sch.every_ns = static_cast<int64_t>(in.every_ms() * 1e6);
      sch.repeat = in.repeat();
      sch.injection.kind = *kind;
      sch.injection.count = in.count();
      if (in.has_pasid()) sch.injection.pasid = in.pasid();
      for (uint32_t dev : devs) {
        if (needs_pasid) {
          if (absl::Status st = pasidDeclared(s, dev, in.pasid(), p + ".pasid"); !st.ok()) return st;
        }
        if (*kind == InjectionKind::kLostLast && s.devices[dev].workload.kind == WorkloadKind::kReplay) {
          return err(
              p + ".kind",
              absl::StrCat("device '", s.devices[dev].name,
                           "' replays a capture: its groups come from the file, lost_last does not apply"));
        }
        s.devices[dev].injections.push_back(sch);
      }
    }
    return absl::OkStatus();
  }

  const std::string& path_;
  const JsonLines& lines_;
  const v1::SimScenario& pb_;
  const PluginConfigs plugin_configs_;
  std::vector<std::string> origin_;  // per expanded device: the entry it came from
  std::map<std::string, std::vector<CapturedDevice>> captures_;
  std::map<std::pair<uint32_t, double>, std::shared_ptr<const ZipfTable>> zipf_;
};

}  // namespace

namespace {

void appendJsonString(std::string& out, const std::string& text) {
  out.push_back('"');
  for (char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          out += absl::StrFormat("\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
}

// A parsed value back to JSON text (a plugin's config is handed on as text).
void appendJson(std::string& out, const JsonValue& v) {
  switch (v.kind) {
    case JsonValue::Kind::kNull: out += "null"; break;
    case JsonValue::Kind::kBool: out += v.boolean ? "true" : "false"; break;
    case JsonValue::Kind::kNumber: out += v.text; break;
    case JsonValue::Kind::kString: appendJsonString(out, v.text); break;
    case JsonValue::Kind::kArray:
      out.push_back('[');
      for (size_t i = 0; i < v.values.size(); ++i) {
        if (i > 0) out.push_back(',');
        appendJson(out, v.values[i]);
      }
      out.push_back(']');
      break;
    case JsonValue::Kind::kObject:
      out.push_back('{');
      for (size_t i = 0; i < v.values.size(); ++i) {
        if (i > 0) out.push_back(',');
        appendJsonString(out, v.keys[i]);
        out.push_back(':');
        appendJson(out, v.values[i]);
      }
      out.push_back('}');
      break;
  }
}

JsonValue* member(JsonValue& object, std::string_view key) {
  if (object.kind != JsonValue::Kind::kObject) return nullptr;
  for (size_t i = 0; i < object.keys.size(); ++i) {
    if (object.keys[i] == key) return &object.values[i];
  }
  return nullptr;
}

// Takes the `config` objects out of domains[i].chain[k] (plugin handler configs are opaque to the
// scenario schema) and returns them as JSON text with their line.
absl::StatusOr<std::map<std::pair<int, int>, std::pair<std::string, int>>> extractPluginConfigs(
    JsonValue& doc, const std::string& path) {
  std::map<std::pair<int, int>, std::pair<std::string, int>> out;
  JsonValue* domains = member(doc, "domains");
  if (domains == nullptr || domains->kind != JsonValue::Kind::kArray) return out;
  for (size_t i = 0; i < domains->values.size(); ++i) {
    JsonValue* chain = member(domains->values[i], "chain");
    if (chain == nullptr || chain->kind != JsonValue::Kind::kArray) continue;
    for (size_t k = 0; k < chain->values.size(); ++k) {
      JsonValue& h = chain->values[k];
      if (h.kind != JsonValue::Kind::kObject) continue;
      for (size_t m = 0; m < h.keys.size(); ++m) {
        if (h.keys[m] != "config") continue;
        const JsonValue& c = h.values[m];
        if (c.kind != JsonValue::Kind::kObject) {
          return absl::InvalidArgumentError(absl::StrCat(path, ":", c.line, ": domains[", i, "].chain[", k,
                                                         "].config: must be an object (the plugin's config)"));
        }
        std::string text;
        appendJson(text, c);
        out[{static_cast<int>(i), static_cast<int>(k)}] = {std::move(text), c.line};
        h.keys.erase(h.keys.begin() + static_cast<std::ptrdiff_t>(m));
        h.values.erase(h.values.begin() + static_cast<std::ptrdiff_t>(m));
        break;
      }
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<Scenario> parseScenario(std::string_view json, const std::string& path) {
  auto doc = parseJson(json, path);
  if (!doc.ok()) return doc.status();
  auto plugin_configs = extractPluginConfigs(*doc, path);
  if (!plugin_configs.ok()) return plugin_configs.status();
  v1::SimScenario pb;
  JsonLines lines;
  if (absl::Status st = fillMessage(*doc, pb, path, lines); !st.ok()) return st;
  return Builder(path, lines, pb, std::move(*plugin_configs)).build();
}

absl::StatusOr<Scenario> loadScenario(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("scenario '", path, "': cannot open: ", std::strerror(errno)));
  }
  std::stringstream buf;
  buf << in.rdbuf();
  return parseScenario(buf.str(), path);
}

}  // namespace iopf::sim
