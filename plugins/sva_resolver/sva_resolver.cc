#include "sva_resolver.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <optional>

namespace iopf::plugins::sva_resolver {
namespace {

constexpr uint32_t kMaxFaultAround = 511;
constexpr uint32_t kPasidLimit = 1u << 20;

// "0x1000", "4096", "64MiB", "2G" -> bytes (binary suffixes K/M/G/T with optional "B"/"iB").
std::optional<uint64_t> parseSize(const std::string& text) {
  if (text.empty()) return std::nullopt;
  size_t i = 0;
  uint64_t v = 0;
  const bool hex = text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X');
  if (hex) {
    i = 2;
    const size_t first = i;
    for (; i < text.size() && std::isxdigit(static_cast<unsigned char>(text[i])); ++i) {
      if (v >> 60) return std::nullopt;
      const char c = static_cast<char>(std::tolower(static_cast<unsigned char>(text[i])));
      v = (v << 4) | static_cast<uint64_t>(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    if (i == first || i != text.size()) return std::nullopt;
    return v;
  }
  for (; i < text.size() && std::isdigit(static_cast<unsigned char>(text[i])); ++i) {
    const uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return std::nullopt;
    v = v * 10 + d;
  }
  if (i == 0) return std::nullopt;
  const std::string suffix = text.substr(i);
  int shift = 0;
  if (suffix.empty()) {
    shift = 0;
  } else {
    const char u = static_cast<char>(std::toupper(static_cast<unsigned char>(suffix[0])));
    const std::string rest = suffix.substr(1);
    if (rest != "" && rest != "B" && rest != "iB") return std::nullopt;
    switch (u) {
      case 'K':
        shift = 10;
        break;
      case 'M':
        shift = 20;
        break;
      case 'G':
        shift = 30;
        break;
      case 'T':
        shift = 40;
        break;
      default:
        return std::nullopt;
    }
  }
  if (shift > 0 && (v >> (64 - shift)) != 0) return std::nullopt;
  return v << shift;
}

}  // namespace

const char* counterName(Cause cause) {
  switch (cause) {
    case Cause::kNoPasid:
      return "invalid_no_pasid";
    case Cause::kNoBinding:
      return "invalid_no_binding";
    case Cause::kPrivileged:
      return "invalid_privileged";
    case Cause::kProcessGone:
      return "invalid_process_gone";
    case Cause::kNoMapping:
      return "invalid_no_mapping";
    case Cause::kPermission:
      return "invalid_permission";
    case Cause::kPopulateFailed:
      return "invalid_populate_failed";
    case Cause::kMapFailed:
      return "invalid_map_failed";
    case Cause::kCount:
      break;
  }
  return "invalid_other";
}

SvaResolverHandler::SvaResolverHandler(const v1::SvaResolverConfig& config, const std::string& source,
                                       const sdk::Host& host, ResolverStats& stats)
    : host_(host), recent_(kRecentEntries), stats_(&stats), source_(source) {
  const std::string where = "config '" + source + "': ";
  // Populating needs the backend's map(): refuse now, not at the first fault.
  if (!host.hasMap()) {
    throw sdk::Error(where + "this host has no map() in its plugin API (ABI " +
                     std::to_string(host.raw().abi_major) + "." + std::to_string(host.raw().abi_minor) +
                     "; the resolver needs 1.1 or later)");
  }
  const std::vector<sdk::BackendInfo> backends = host.backends();
  if (config.backends_size() == 0) {
    if (backends.empty()) {
      throw sdk::Error(where +
                       "the router has no backend yet, so none can map(); add the backend "
                       "first or name it in 'backends'");
    }
    for (const sdk::BackendInfo& b : backends) {
      if (!b.can_map) {
        throw sdk::Error(where + "backend '" + b.name +
                         "' has no map(): the resolver could not "
                         "populate its I/O page tables (list the backends of this domain in 'backends')");
      }
    }
  }
  for (int i = 0; i < config.backends_size(); ++i) {
    const std::string& name = config.backends(i);
    const std::string field = "field 'backends[" + std::to_string(i) + "]'";
    auto it = std::find_if(backends.begin(), backends.end(),
                           [&](const sdk::BackendInfo& b) { return b.name == name; });
    if (it == backends.end()) throw sdk::Error(where + field + ": the router has no backend '" + name + "'");
    if (!it->can_map) {
      throw sdk::Error(where + field + ": backend '" + name +
                       "' has no map(): the resolver could not populate its I/O page tables");
    }
  }

  if (config.fault_around() > kMaxFaultAround) {
    throw sdk::Error(where + "field 'fault_around' must be at most " + std::to_string(kMaxFaultAround) +
                     " pages, got " + std::to_string(config.fault_around()));
  }
  options_.fault_around = config.fault_around();
  if (config.privileged() == "allow") {
    options_.allow_privileged = true;
  } else if (!config.privileged().empty() && config.privileged() != "deny") {
    throw sdk::Error(where + "field 'privileged' must be 'deny' or 'allow', got '" + config.privileged() +
                     "'");
  }
  if (config.refresh_interval_ms() > 0) {
    options_.refresh_interval_ns = int64_t{config.refresh_interval_ms()} * 1'000'000;
  }

  if (config.bindings_size() == 0) throw sdk::Error(where + "field 'bindings' needs at least one binding");
  for (int i = 0; i < config.bindings_size(); ++i) {
    const v1::Binding& b = config.bindings(i);
    const std::string field = "field 'bindings[" + std::to_string(i) + "]";
    if (b.pasid() >= kPasidLimit) {
      throw sdk::Error(where + field + ".pasid' must be below 2^20, got " + std::to_string(b.pasid()));
    }
    for (int j = 0; j < i; ++j) {
      if (config.bindings(j).pasid() == b.pasid()) {
        throw sdk::Error(where + field + ".pasid': PASID " + std::to_string(b.pasid()) +
                         " is already bound by bindings[" + std::to_string(j) + "]");
      }
    }
    Binding out;
    out.pasid = b.pasid();
    switch (b.provider_case()) {
      case v1::Binding::kProcess: {
        if (b.process().pid() == 0) throw sdk::Error(where + field + ".process.pid' must be > 0");
        std::string error;
        auto p = ProcessAddressSpace::open(static_cast<pid_t>(b.process().pid()),
                                           options_.refresh_interval_ns, options_.fault_around + 1, &error);
        if (!p) throw sdk::Error(where + field + ".process': " + error);
        p->setCounters(&stats_->maps_refreshes, &stats_->maps_bad_lines);
        out.provider = std::move(p);
        break;
      }
      case v1::Binding::kSimulated: {
        const v1::SimulatedProvider& sim = b.simulated();
        if (sim.regions_size() == 0) {
          throw sdk::Error(where + field + ".simulated.regions' needs at least one region");
        }
        std::vector<Mapping> regions;
        for (int k = 0; k < sim.regions_size(); ++k) {
          const v1::SimulatedRegion& r = sim.regions(k);
          const std::string rf = field + ".simulated.regions[" + std::to_string(k) + "]";
          const auto base = parseSize(r.base());
          const auto size = parseSize(r.size());
          if (!base) throw sdk::Error(where + rf + ".base' is not an address: '" + r.base() + "'");
          if (!size || *size == 0) {
            throw sdk::Error(where + rf + ".size' must be a size > 0 (\"4096\", \"64MiB\"), got '" +
                             r.size() + "'");
          }
          if (*base % kPageSize != 0)
            throw sdk::Error(where + rf + ".base' must be 4 KiB aligned, got " + r.base());
          if (*size % kPageSize != 0)
            throw sdk::Error(where + rf + ".size' must be a multiple of 4 KiB, got " + r.size());
          if (*base + *size < *base) throw sdk::Error(where + rf + "' wraps around the address space");
          Mapping m;
          m.start = *base;
          m.end = *base + *size;
          const std::string perm = r.perm().empty() ? std::string("rw") : r.perm();
          for (char c : perm) {
            if (c == 'r') {
              m.perm |= IOPF_PERM_READ;
            } else if (c == 'w') {
              m.perm |= IOPF_PERM_WRITE;
            } else if (c == 'x') {
              m.perm |= IOPF_PERM_EXEC;
            } else {
              throw sdk::Error(where + rf + ".perm' has '" + std::string(1, c) + "': use letters of \"rwx\"");
            }
          }
          regions.push_back(m);
        }
        std::sort(regions.begin(), regions.end(),
                  [](const Mapping& a, const Mapping& c) { return a.start < c.start; });
        for (size_t k = 1; k < regions.size(); ++k) {
          if (regions[k].start < regions[k - 1].end) {
            throw sdk::Error(where + field + ".simulated.regions': regions overlap at " +
                             std::to_string(regions[k].start));
          }
        }
        out.provider = std::make_unique<SimulatedAddressSpace>(std::move(regions));
        break;
      }
      case v1::Binding::PROVIDER_NOT_SET:
        throw sdk::Error(where + field + "': set one provider, 'process' or 'simulated'");
    }
    bindings_.push_back(std::move(out));
  }
  std::sort(bindings_.begin(), bindings_.end(),
            [](const Binding& a, const Binding& b) { return a.pasid < b.pasid; });
  deferred_ = std::any_of(bindings_.begin(), bindings_.end(),
                          [](const Binding& b) { return b.provider->kind() == "process"; });
  if (deferred_) worker_ = std::thread([this] { workerMain(); });
}

SvaResolverHandler::~SvaResolverHandler() {
  if (!worker_.joinable()) return;
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  worker_.join();
  for (const Job& job : jobs_) job.completion.complete(sdk::Code::kInvalid);
}

void SvaResolverHandler::workerMain() {
  std::unique_lock lk(mu_);
  for (;;) {
    cv_.wait(lk, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lk.unlock();
    const sdk::Code code = resolve(
        static_cast<uint32_t>(job.requests.size()), [&](uint32_t i) { return job.requests[i]; }, job.group_id,
        job.domain, job.device);
    job.completion.complete(code);
    lk.lock();
    job.requests.clear();
    if (spare_.size() < 64) spare_.push_back(std::move(job));
  }
}

AddressSpaceProvider* SvaResolverHandler::provider(uint32_t pasid) const {
  if (bindings_.size() <= 8) {
    for (const Binding& b : bindings_) {
      if (b.pasid == pasid) return b.provider.get();
    }
    return nullptr;
  }
  auto it = std::lower_bound(bindings_.begin(), bindings_.end(), pasid,
                             [](const Binding& b, uint32_t p) { return b.pasid < p; });
  return it != bindings_.end() && it->pasid == pasid ? it->provider.get() : nullptr;
}

void SvaResolverHandler::fail(Cause cause, uint32_t device, const sdk::Request& r, const char* detail) {
  stats_->invalid[static_cast<size_t>(cause)].fetch_add(1, std::memory_order_relaxed);
  stats_->invalid_groups.fetch_add(1, std::memory_order_relaxed);
  if (cause == Cause::kMapFailed) {
    // An operational error, not a verdict about the address: say it (the host rate-limits).
    char page[32];
    std::snprintf(page, sizeof page, "0x%llx", static_cast<unsigned long long>(r.addr & ~(kPageSize - 1)));
    host_.log(sdk::LogLevel::kError, "sva_resolver (" + source_ + "): device " + std::to_string(device) +
                                         " page " + page + ": map failed: " + (detail ? detail : ""));
  }
}

sdk::Verdict SvaResolverHandler::handle(const sdk::Group& group, const sdk::Completion& completion) {
  if (!deferred_) {
    return sdk::Verdict::respond(resolve(
        group.size(), [&](uint32_t i) { return group.request(i); }, group.id(), group.domain(),
        group.device()));
  }
  {
    std::lock_guard lk(mu_);
    Job job;
    if (!spare_.empty()) {
      job = std::move(spare_.back());
      spare_.pop_back();
    }
    job.completion = completion;
    job.group_id = group.id();
    job.domain = group.domain();
    job.device = group.device();
    for (const sdk::Request r : group) job.requests.push_back(r);
    jobs_.push_back(std::move(job));
  }
  cv_.notify_one();
  return sdk::Verdict::defer();
}

template <typename RequestAt>
sdk::Code SvaResolverHandler::resolve(uint32_t count, RequestAt&& request_at, uint64_t group_id,
                                      uint32_t domain, uint32_t device) {
  stats_->groups.fetch_add(1, std::memory_order_relaxed);
  stats_->requests.fetch_add(count, std::memory_order_relaxed);
  constexpr sdk::Code invalid = sdk::Code::kInvalid;
  for (uint32_t i = 0; i < count; ++i) {
    const sdk::Request r = request_at(i);
    const uint8_t need = static_cast<uint8_t>(IOPF_PERM_READ | (r.perm & (IOPF_PERM_WRITE | IOPF_PERM_EXEC)));
    if (!r.pasid) {
      fail(Cause::kNoPasid, device, r, nullptr);
      return invalid;
    }
    const uint32_t pasid = *r.pasid;
    AddressSpaceProvider* space = provider(pasid);
    if (space == nullptr) {
      fail(Cause::kNoBinding, device, r, nullptr);
      return invalid;
    }
    if (r.privileged() && !options_.allow_privileged) {
      fail(Cause::kPrivileged, device, r, nullptr);
      return invalid;
    }
    const uint64_t page = r.addr & ~(kPageSize - 1);
    const Recent& hit = recent_[recentIndex(pasid, page)];
    if (hit.page == page && hit.pasid == pasid && (hit.mapped_ns > r.arrival_ns || hit.group == group_id) &&
        (need & ~hit.perm) == 0 && space->alive()) {
      stats_->coalesced.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    Mapping m;
    const Lookup found = space->find(r.addr, m);
    if (found != Lookup::kFound) {
      fail(found == Lookup::kGone ? Cause::kProcessGone : Cause::kNoMapping, device, r, nullptr);
      return invalid;
    }
    if ((need & ~m.perm) != 0) {
      fail(Cause::kPermission, device, r, nullptr);
      return invalid;
    }
    const uint64_t want = std::min<uint64_t>((uint64_t{options_.fault_around} + 1) * kPageSize, m.end - page);
    bool gone = false;
    const uint64_t present = space->populate(page, want, gone);
    if (gone || present == 0) {
      fail(gone ? Cause::kProcessGone : Cause::kPopulateFailed, device, r, nullptr);
      return invalid;
    }
    iopf_plugin_map_request map{};
    map.struct_size = sizeof map;
    map.domain = domain;
    map.device = device;
    map.pasid = pasid;
    map.flags = IOPF_MAP_PASID_VALID;
    map.iova = page;  // SVA: the device uses the process's virtual addresses
    map.length = present;
    map.source_va = page;
    map.perm = m.perm;
    const int64_t mapped_ns = host_.now();
    if (!host_.map(map, &error_)) {
      fail(Cause::kMapFailed, device, r, error_.c_str());
      return invalid;
    }
    for (uint64_t p = page; p < page + present; p += kPageSize) {
      recent_[recentIndex(pasid, p)] = Recent{p, mapped_ns, group_id, pasid, m.perm};
    }
    stats_->pages_mapped.fetch_add(1, std::memory_order_relaxed);
    if (present > kPageSize) {
      stats_->fault_around_pages.fetch_add(present / kPageSize - 1, std::memory_order_relaxed);
    }
  }
  stats_->resolved_groups.fetch_add(1, std::memory_order_relaxed);
  return sdk::Code::kSuccess;
}

}  // namespace iopf::plugins::sva_resolver
