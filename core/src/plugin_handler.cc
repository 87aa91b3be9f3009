// The adapter from a plugin's C handler instance to iopf::Handler, and the host services plugins
// call back into.
#include "plugin_handler.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <thread>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "iopf/clock.h"
#include "iopf/router.h"

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace iopf::detail {

namespace {

// A CompletionHandle travels through iopf_plugin_completion::opaque as its bytes.
static_assert(std::is_trivially_copyable_v<CompletionHandle>);
static_assert(sizeof(CompletionHandle) <= sizeof(iopf_plugin_completion::opaque));

int32_t completeThunk(const iopf_plugin_completion* self, uint32_t code) {
  if (self == nullptr) return 0;
  CompletionHandle handle;
  std::memcpy(static_cast<void*>(&handle), self->opaque, sizeof handle);
  try {
    return handle.complete(static_cast<ResponseCode>(code)) ? 1 : 0;
  } catch (...) {
    return 0;  // nothing may unwind into the plugin
  }
}

// Thrown to the router for a failed call: it answers the group INVALID (origin handler-error) and
// counts the error against the handler. Only on the failure path.
class PluginCallFailed final : public std::exception {
 public:
  const char* what() const noexcept override { return "plugin call failed"; }
};

void copyName(char* out, size_t capacity, const std::string& name) {
  const size_t n = std::min(name.size(), capacity - 1);
  std::memcpy(out, name.data(), n);
  out[n] = '\0';
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ticks

uint64_t readTicks() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  return static_cast<uint64_t>(SteadyClock::read());
#endif
}

double ticksPerNs() {
#if defined(__x86_64__)
  // Measured once against the steady clock (a few milliseconds, on first use).
  static const double ratio = [] {
    const int64_t t0 = SteadyClock::read();
    const uint64_t c0 = readTicks();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    const int64_t t1 = SteadyClock::read();
    const uint64_t c1 = readTicks();
    const double r = static_cast<double>(c1 - c0) / static_cast<double>(std::max<int64_t>(1, t1 - t0));
    return r > 0 ? r : 1.0;
  }();
  return ratio;
#else
  return 1.0;
#endif
}

// ---------------------------------------------------------------------------------------------
// services

namespace {
// Writes up to `capacity` ids of `items` (anything with an `id`); returns how many there are.
template <typename Items>
uint32_t copyIds(const Items& items, uint32_t* ids, uint32_t capacity) {
  for (uint32_t i = 0; i < items.size() && i < capacity; ++i) ids[i] = items[i].id;
  return static_cast<uint32_t>(items.size());
}
}  // namespace

void PluginServices::detachRouter() {
  std::unique_lock lk(mu_);
  router_ = nullptr;
}

int64_t PluginServices::now() const {
  std::shared_lock lk(mu_);
  return router_ != nullptr ? router_->clock().now() : SteadyClock::read();
}

bool PluginServices::device(uint32_t id, iopf_plugin_device_info& out) const {
  std::shared_lock lk(mu_);
  if (router_ == nullptr) return false;
  for (const DeviceInfo& d : router_->devices()) {
    if (d.id != id) continue;
    out.device = d.id;
    out.backend_handle = d.spec.backend_handle;
    out.backend = d.backend;
    out.pci_segment = d.spec.pci_segment;
    out.pri_allocation = d.spec.pri_allocation;
    out.rid = d.spec.rid;
    out.pasid_bits = d.spec.pasid_bits;
    out.flags = static_cast<uint8_t>((d.spec.needs_pasid ? IOPF_DEVICE_NEEDS_PASID : 0) |
                                     (d.spec.stall_model ? IOPF_DEVICE_STALL_MODEL : 0) |
                                     (d.removed ? IOPF_DEVICE_REMOVED : 0));
    for (const BackendInfo& b : router_->backends()) {
      if (b.id == d.backend && b.capabilities.can_map) out.flags |= IOPF_DEVICE_CAN_MAP;
    }
    copyName(out.name, sizeof out.name, d.spec.name);
    copyName(out.backend_name, sizeof out.backend_name, d.backend_name);
    return true;
  }
  return false;
}

uint32_t PluginServices::listDevices(uint32_t* ids, uint32_t capacity) const {
  std::shared_lock lk(mu_);
  return router_ == nullptr ? 0 : copyIds(router_->devices(), ids, capacity);
}

bool PluginServices::domain(uint32_t id, iopf_plugin_domain_info& out) const {
  std::shared_lock lk(mu_);
  if (router_ == nullptr) return false;
  for (const DomainInfo& d : router_->domains()) {
    if (d.id != id) continue;
    out.domain = d.id;
    out.kind = static_cast<uint32_t>(d.spec.kind);
    out.deadline_ns = d.spec.deadline_ns;
    copyName(out.name, sizeof out.name, d.spec.name);
    return true;
  }
  return false;
}

uint32_t PluginServices::listDomains(uint32_t* ids, uint32_t capacity) const {
  std::shared_lock lk(mu_);
  return router_ == nullptr ? 0 : copyIds(router_->domains(), ids, capacity);
}

std::string PluginServices::handlerName(uint32_t id) const {
  std::shared_lock lk(mu_);
  if (router_ == nullptr || id > UINT16_MAX) return {};
  return router_->handlerName(static_cast<uint16_t>(id));
}

uint32_t PluginServices::listBackends(uint32_t* ids, uint32_t capacity) const {
  std::shared_lock lk(mu_);
  return router_ == nullptr ? 0 : copyIds(router_->backends(), ids, capacity);
}

bool PluginServices::backend(uint32_t id, iopf_plugin_backend_info& out) const {
  std::shared_lock lk(mu_);
  if (router_ == nullptr) return false;
  for (const BackendInfo& b : router_->backends()) {
    if (b.id != id) continue;
    out.backend = b.id;
    out.flags = (b.capabilities.can_map ? IOPF_BACKEND_CAN_MAP : 0u) |
                (b.capabilities.whole_groups ? IOPF_BACKEND_WHOLE_GROUPS : 0u);
    copyName(out.name, sizeof out.name, b.name);
    return true;
  }
  return false;
}

absl::Status PluginServices::map(const MapRequest& request) const {
  std::shared_lock lk(mu_);
  if (router_ == nullptr) return absl::FailedPreconditionError("map: the plugin host has shut down");
  return router_->map(request);
}

std::string PluginServices::domainName(uint32_t id) const {
  iopf_plugin_domain_info info{};
  return domain(id, info) ? std::string(info.name) : std::string();
}

void PluginContext::log(uint32_t level, std::string_view message) {
  uint64_t report_suppressed = 0;
  bool pass = false;
  {
    std::lock_guard lk(log_mu);
    const int64_t now = SteadyClock::read();
    if (now - window_start_ns >= 1'000'000'000) {
      report_suppressed = suppressed;
      suppressed = 0;
      window_start_ns = now;
      lines_in_window = 0;
    }
    pass = lines_in_window < lines_per_second;
    if (pass) {
      ++lines_in_window;
    } else {
      ++suppressed;
    }
  }
  if (report_suppressed != 0) {
    PluginReport r;
    r.kind = PluginReportKind::kSuppressed;
    r.plugin = plugin;
    r.level = IOPF_LOG_WARNING;
    r.message = absl::StrCat(report_suppressed, " log lines suppressed (limit ", lines_per_second, "/s)");
    services->report(r);
  }
  if (!pass) return;
  PluginReport r;
  r.kind = PluginReportKind::kLog;
  r.plugin = plugin;
  r.level = level;
  r.message = std::string(message);
  services->report(r);
}

// ---------------------------------------------------------------------------------------------
// the adapter

PluginHandler::PluginHandler(std::shared_ptr<LoadedPlugin> plugin, void* instance, DomainId domain,
                             int64_t call_budget_ns, uint32_t quarantine_after)
    : plugin_(std::move(plugin)),
      services_(plugin_->context->services),
      name_(plugin_->candidate.id),
      instance_(instance),
      handle_(plugin_->descriptor->handle),
      domain_(domain),
      call_budget_ns_(call_budget_ns),
      budget_ticks_(static_cast<uint64_t>(static_cast<double>(call_budget_ns) * ticksPerNs())),
      quarantine_after_(std::max<uint32_t>(1, quarantine_after)) {
  plugin_->instances.push_back(this);
}

PluginHandler::PluginHandler(std::string plugin_id, DomainId domain,
                             std::shared_ptr<PluginServices> services, std::string reason)
    : services_(std::move(services)), name_(std::move(plugin_id)), domain_(domain) {
  quarantined_.store(true, std::memory_order_relaxed);
  destroyed_.store(true, std::memory_order_relaxed);
  last_failure_ = std::move(reason);
}

PluginHandler::~PluginHandler() {
  if (plugin_ == nullptr) return;
  std::lock_guard lk(plugin_->mu);
  destroyInstanceLocked();
  auto& v = plugin_->instances;
  v.erase(std::remove(v.begin(), v.end(), this), v.end());
}

void PluginHandler::destroyInstanceLocked() {
  if (plugin_ == nullptr || instance_ == nullptr) return;
  destroyed_.store(true, std::memory_order_release);
  void* instance = instance_;
  instance_ = nullptr;
  if (plugin_->initialized) plugin_->descriptor->destroy(plugin_->state, instance);
}

Verdict PluginHandler::handle(const GroupView& view, const CompletionHandle& completion) {
  if (quarantined_.load(std::memory_order_relaxed) || destroyed_.load(std::memory_order_acquire)) {
    bump(skipped_);
    return Verdict::proceed();
  }
  // The group as the C view. Most groups are one request: no allocation in steady state.
  constexpr size_t kInline = 8;
  iopf_plugin_request inline_requests[kInline];
  thread_local std::vector<iopf_plugin_request> large_requests;
  const size_t n = view.requests.size();
  iopf_plugin_request* requests = inline_requests;
  if (n > kInline) {
    if (large_requests.size() < n) large_requests.resize(n);
    requests = large_requests.data();
  }
  for (size_t i = 0; i < n; ++i) {
    const PageRequest& r = view.requests[i];
    iopf_plugin_request& c = requests[i];
    c.addr = r.addr;
    c.arrival_ns = r.arrival_ns;
    c.grpid = r.grpid;
    c.pasid = r.pasid.value_or(0);
    c.cookie = r.cookie.value_or(0);
    c.length_hint = r.length_hint;
    c.perm = r.perm;
    c.flags = static_cast<uint8_t>((r.pasid ? IOPF_REQUEST_PASID_VALID : 0) |
                                   (r.last ? IOPF_REQUEST_LAST : 0) |
                                   (r.cookie ? IOPF_REQUEST_COOKIE_VALID : 0));
    c.reserved0 = 0;
    c.reserved1 = 0;
  }
  iopf_plugin_group g;
  g.struct_size = sizeof g;
  g.request_size = sizeof(iopf_plugin_request);
  g.group_id = view.id;
  g.backend_handle = view.backend_handle;
  g.requests = requests;
  g.request_count = static_cast<uint32_t>(n);
  g.domain = view.domain;
  g.device = view.device;
  g.pci_segment = view.pci_segment;
  g.pasid = view.pasid.value_or(0);
  g.grpid = view.grpid;
  g.cookie = view.cookie.value_or(0);
  g.rid = view.rid;
  g.flags = static_cast<uint8_t>((view.pasid ? IOPF_GROUP_PASID_VALID : 0) |
                                 (view.cookie ? IOPF_GROUP_COOKIE_VALID : 0) |
                                 (view.needs_pasid ? IOPF_GROUP_NEEDS_PASID : 0));
  g.reserved0 = 0;
  iopf_plugin_completion c;
  c.struct_size = sizeof c;
  c.reserved0 = 0;
  c.group_id = view.id;
  c.complete = &completeThunk;
  std::memset(c.opaque, 0, sizeof c.opaque);
  std::memcpy(c.opaque, static_cast<const void*>(&completion), sizeof completion);

  const uint64_t t0 = readTicks();
  const iopf_plugin_verdict v = handle_(instance_, &g, &c);
  const uint64_t spent = readTicks() - t0;
  bump(calls_);

  const bool overrun = spent > budget_ticks_;
  const bool valid = v.kind <= IOPF_VERDICT_DEFER &&
                     (v.kind != IOPF_VERDICT_RESPOND || isValidResponseCode(v.code));
  if (overrun || !valid) fail(spent, v, overrun);
  if (consecutive_.load(std::memory_order_relaxed) != 0) {
    consecutive_.store(0, std::memory_order_relaxed);
  }
  switch (v.kind) {
    case IOPF_VERDICT_RESPOND:
      return Verdict::respond(static_cast<ResponseCode>(v.code));
    case IOPF_VERDICT_DEFER:
      return Verdict::defer();
    default:
      return Verdict::proceed();
  }
}

void PluginHandler::fail(uint64_t spent_ticks, const iopf_plugin_verdict& v, bool overrun) {
  std::string why;
  const double spent_ms = static_cast<double>(spent_ticks) / ticksPerNs() / 1e6;
  if (overrun) {
    bump(overruns_);
    why = absl::StrFormat("call took %.3f ms, budget %.3f ms", spent_ms,
                          static_cast<double>(call_budget_ns_) / 1e6);
  } else {
    bump(errors_);
    if (v.kind == IOPF_VERDICT_ERROR) {
      why = "the plugin reported an error";
    } else {
      why = absl::StrCat("invalid verdict (kind ", v.kind, ", code ", v.code, ")");
    }
  }
  const uint64_t consecutive = consecutive_.load(std::memory_order_relaxed) + 1;
  consecutive_.store(consecutive, std::memory_order_relaxed);
  {
    std::lock_guard lk(failure_mu_);
    last_failure_ = why;
  }
  if (consecutive >= quarantine_after_ && !quarantined_.exchange(true, std::memory_order_relaxed)) {
    PluginReport r;
    r.kind = PluginReportKind::kQuarantined;
    r.plugin = name_;
    r.domain = domain_;
    r.level = IOPF_LOG_ERROR;
    r.message = absl::StrCat("plugin '", name_, "' handler of domain ", domain_,
                             " quarantined after ", consecutive,
                             " consecutive failures (last: ", why,
                             "); its groups pass on to the rest of the chain until re-enabled");
    services_->report(r);
  }
  throw PluginCallFailed();
}

absl::Status PluginHandler::reenable() {
  if (plugin_ == nullptr) {
    std::lock_guard lk(failure_mu_);
    return absl::FailedPreconditionError(absl::StrCat(
        "plugin '", name_, "' handler of domain ", domain_, " is a stand-in: ", last_failure_));
  }
  if (!quarantined_.load(std::memory_order_relaxed)) {
    return absl::FailedPreconditionError(
        absl::StrCat("plugin '", name_, "' handler of domain ", domain_, " is not quarantined"));
  }
  consecutive_.store(0, std::memory_order_relaxed);
  quarantined_.store(false, std::memory_order_relaxed);
  PluginReport r;
  r.kind = PluginReportKind::kReenabled;
  r.plugin = name_;
  r.domain = domain_;
  r.level = IOPF_LOG_INFO;
  r.message = absl::StrCat("plugin '", name_, "' handler of domain ", domain_, " re-enabled");
  services_->report(r);
  return absl::OkStatus();
}

PluginHandlerStatus PluginHandler::status() const {
  PluginHandlerStatus s;
  s.domain = domain_;
  s.calls = calls_.load(std::memory_order_relaxed);
  s.errors = errors_.load(std::memory_order_relaxed);
  s.overruns = overruns_.load(std::memory_order_relaxed);
  s.skipped = skipped_.load(std::memory_order_relaxed);
  s.consecutive_failures = consecutive_.load(std::memory_order_relaxed);
  s.quarantined = quarantined_.load(std::memory_order_relaxed);
  s.stand_in = plugin_ == nullptr;
  s.call_budget_ns = call_budget_ns_;
  s.quarantine_after = quarantine_after_;
  std::lock_guard lk(failure_mu_);
  s.last_failure = last_failure_;
  return s;
}

}  // namespace iopf::detail
