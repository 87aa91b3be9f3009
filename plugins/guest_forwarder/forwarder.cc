#include "forwarder.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_format.h"

namespace iopf::guest_forwarder {

std::string_view toString(AnswerResult r) {
  switch (r) {
    case AnswerResult::kCompleted:
      return "completed";
    case AnswerResult::kDuplicate:
      return "duplicate";
    case AnswerResult::kUnknown:
      return "unknown";
    case AnswerResult::kLate:
      return "late";
    case AnswerResult::kRefusedByRouter:
      return "refused-by-router";
  }
  return "?";
}

Forwarder::Forwarder(DeviceRegistry* registry, ForwarderOptions options)
    : registry_(registry), options_(std::move(options)) {
  if (!options_.now) options_.now = [] { return int64_t{0}; };
}

Forwarder::~Forwarder() {
  std::vector<std::string> vms;
  {
    std::lock_guard lk(mu_);
    for (const auto& [vm, t] : vms_) vms.push_back(vm);
  }
  for (const std::string& vm : vms) detachVm(vm, DrainReason::kShutdown);
}

void Forwarder::log(sdk::LogLevel level, const std::string& message) const {
  if (options_.log) options_.log(level, message);
}

void Forwarder::attachVm(const std::string& vm, std::shared_ptr<VmTransport> transport) {
  std::lock_guard lk(mu_);
  vms_[vm] = std::move(transport);
}

size_t Forwarder::detachVm(const std::string& vm, DrainReason reason) {
  {
    std::lock_guard lk(mu_);
    vms_.erase(vm);
  }
  return drain(vm, std::nullopt, std::nullopt, reason);
}

bool Forwarder::vmAttached(const std::string& vm) const {
  std::lock_guard lk(mu_);
  return vms_.contains(vm);
}

void Forwarder::setVmBound(const std::string& vm, uint32_t max_open) {
  std::lock_guard lk(mu_);
  if (max_open == 0) {
    bounds_.erase(vm);
  } else {
    bounds_[vm] = max_open;
  }
}

uint32_t Forwarder::boundLocked(const std::string& vm) const {
  const auto it = bounds_.find(vm);
  return it == bounds_.end() ? options_.max_open_per_vm : it->second;
}

void Forwarder::closeLocked(const GuestKey& key, Closed how) {
  auto n = open_per_vm_.find(key.vm);
  if (n != open_per_vm_.end() && n->second > 0) --n->second;
  const uint64_t seq = ++closed_seq_;
  closed_[key] = History{how, seq};
  closed_order_.emplace_back(key, seq);
  while (closed_order_.size() > options_.closed_history) {
    const auto& [old, old_seq] = closed_order_.front();
    const auto it = closed_.find(old);
    if (it != closed_.end() && it->second.seq == old_seq) closed_.erase(it);
    closed_order_.pop_front();
  }
}

sdk::Verdict Forwarder::handle(const sdk::Group& group, const sdk::Completion& completion,
                               const std::string& backend, int64_t domain_deadline_ns) {
  counters_.groups.fetch_add(1, std::memory_order_relaxed);
  absl::StatusOr<GuestView> view =
      registry_->toGuest(backend, group.backendHandle(), group.rid(), group.pasid());
  if (!view.ok()) {
    if (absl::IsNotFound(view.status())) {
      counters_.not_registered.fetch_add(1, std::memory_order_relaxed);
      return sdk::Verdict::proceed();  // not a guest device: the rest of the chain decides
    }
    counters_.pasid_unmapped.fetch_add(1, std::memory_order_relaxed);
    log(sdk::LogLevel::kWarning, std::string(view.status().message()));
    return sdk::Verdict::respond(sdk::Code::kInvalid);
  }
  ForwardedGroup fg;
  fg.key.vm = std::move(view->vm);
  fg.key.viommu_id = view->viommu_id;
  fg.key.virt_id = view->virt_id;
  fg.key.pasid = view->guest_pasid ? *view->guest_pasid : kNoPasid;
  fg.key.prgi = static_cast<uint16_t>(group.grpid() & 0xffff);
  fg.guest_rid = view->guest_rid;
  fg.needs_pasid = view->needs_pasid;
  fg.host_group = group.id();
  fg.requests.reserve(group.size());
  int64_t arrival = 0;
  for (const sdk::Request r : group) {
    fg.requests.push_back(GuestRequest{r.addr, r.perm, r.last});
    arrival = r.arrival_ns;
  }
  int64_t timeout = domain_deadline_ns;
  if (options_.answer_timeout_ns > 0 && (timeout <= 0 || options_.answer_timeout_ns < timeout)) {
    timeout = options_.answer_timeout_ns;
  }
  const int64_t deadline = timeout > 0 ? arrival + timeout : INT64_MAX;

  std::shared_ptr<VmTransport> transport;
  {
    std::lock_guard lk(mu_);
    const auto vm = vms_.find(fg.key.vm);
    if (vm == vms_.end()) {
      counters_.vm_unavailable.fetch_add(1, std::memory_order_relaxed);
      return sdk::Verdict::respond(sdk::Code::kInvalid);
    }
    transport = vm->second;
    if (open_.contains(fg.key)) {
      // The guest still owes an answer for this (device, PASID, PRGI): a second group with the
      // same key could not be told apart. The hardware reused a PRGI it had not got back.
      counters_.key_busy.fetch_add(1, std::memory_order_relaxed);
      return sdk::Verdict::respond(sdk::Code::kInvalid);
    }
    uint32_t& open = open_per_vm_[fg.key.vm];
    if (open >= boundLocked(fg.key.vm)) {
      counters_.overload.fetch_add(1, std::memory_order_relaxed);
      return sdk::Verdict::respond(sdk::Code::kInvalid);
    }
    ++open;
    open_.emplace(fg.key, Open{completion, deadline, group.id()});
    closed_.erase(fg.key);
  }
  if (!transport->forward(fg)) {
    bool mine = false;
    {
      std::lock_guard lk(mu_);
      const auto it = open_.find(fg.key);
      if (it != open_.end() && it->second.host_group == fg.host_group) {
        open_.erase(it);
        auto n = open_per_vm_.find(fg.key.vm);
        if (n != open_per_vm_.end() && n->second > 0) --n->second;
        mine = true;
      }
    }
    counters_.vm_unavailable.fetch_add(1, std::memory_order_relaxed);
    // Someone else (a drain racing with us) may have completed it already: then Defer is right.
    return mine ? sdk::Verdict::respond(sdk::Code::kInvalid) : sdk::Verdict::defer();
  }
  counters_.forwarded.fetch_add(1, std::memory_order_relaxed);
  return sdk::Verdict::defer();
}

AnswerResult Forwarder::answer(const GuestKey& key, uint8_t guest_code) {
  Open entry;
  bool late = false;
  {
    std::lock_guard lk(mu_);
    const auto it = open_.find(key);
    if (it == open_.end()) {
      const auto h = closed_.find(key);
      if (h == closed_.end()) {
        counters_.answers_unknown.fetch_add(1, std::memory_order_relaxed);
        return AnswerResult::kUnknown;
      }
      if (h->second.how == Closed::kExpired) {
        counters_.answers_late.fetch_add(1, std::memory_order_relaxed);
        return AnswerResult::kLate;
      }
      counters_.answers_duplicate.fetch_add(1, std::memory_order_relaxed);
      return AnswerResult::kDuplicate;
    }
    entry = it->second;
    open_.erase(it);
    late = options_.now() > entry.deadline_ns;
    closeLocked(key, late ? Closed::kExpired : Closed::kAnswered);
  }
  if (late) {
    // Past the deadline: the guest's verdict is refused; the host group gets INVALID (if the
    // router has not timed it out already).
    counters_.answers_late.fetch_add(1, std::memory_order_relaxed);
    entry.completion.complete(sdk::Code::kInvalid);
    return AnswerResult::kLate;
  }
  sdk::Code code = sdk::Code::kInvalid;
  switch (guest_code) {
    case 0:
      code = sdk::Code::kSuccess;
      counters_.answers_success.fetch_add(1, std::memory_order_relaxed);
      break;
    case 1:
      counters_.answers_invalid.fetch_add(1, std::memory_order_relaxed);
      break;
    case 2:
      counters_.answers_failure_mapped.fetch_add(1, std::memory_order_relaxed);
      break;
    default:
      counters_.answers_bad_code.fetch_add(1, std::memory_order_relaxed);
      break;
  }
  if (!entry.completion.complete(code)) {
    counters_.answers_refused_by_router.fetch_add(1, std::memory_order_relaxed);
    return AnswerResult::kRefusedByRouter;
  }
  return AnswerResult::kCompleted;
}

size_t Forwarder::drain(const std::string& vm, std::optional<uint32_t> viommu_id,
                        std::optional<uint64_t> virt_id, DrainReason reason) {
  std::vector<sdk::Completion> done;
  {
    std::lock_guard lk(mu_);
    std::vector<GuestKey> keys;
    for (const auto& [key, open] : open_) {
      if (key.vm != vm) continue;
      if (viommu_id && key.viommu_id != *viommu_id) continue;
      if (virt_id && key.virt_id != *virt_id) continue;
      keys.push_back(key);
    }
    for (const GuestKey& key : keys) {
      const auto it = open_.find(key);
      done.push_back(it->second.completion);
      open_.erase(it);
      closeLocked(key, Closed::kDrained);
    }
  }
  // Counted before the completions: whoever sees a drained group's response sees the count.
  std::atomic<uint64_t>* counter = nullptr;
  switch (reason) {
    case DrainReason::kGuestReset:
      counter = &counters_.drained_guest_reset;
      break;
    case DrainReason::kViommuReset:
      counter = &counters_.drained_viommu_reset;
      break;
    case DrainReason::kDeviceDel:
      counter = &counters_.drained_device_del;
      break;
    case DrainReason::kDisconnect:
      counter = &counters_.drained_disconnect;
      break;
    case DrainReason::kShutdown:
      counter = &counters_.drained_shutdown;
      break;
  }
  counter->fetch_add(done.size(), std::memory_order_relaxed);
  for (const sdk::Completion& c : done) c.complete(sdk::Code::kInvalid);
  return done.size();
}

size_t Forwarder::drainAll(DrainReason reason) {
  std::vector<std::string> vms;
  {
    std::lock_guard lk(mu_);
    for (const auto& [key, open] : open_) {
      if (std::find(vms.begin(), vms.end(), key.vm) == vms.end()) vms.push_back(key.vm);
    }
  }
  size_t n = 0;
  for (const std::string& vm : vms) n += drain(vm, std::nullopt, std::nullopt, reason);
  return n;
}

size_t Forwarder::expire() {
  std::vector<sdk::Completion> done;
  const int64_t now = options_.now();
  {
    std::lock_guard lk(mu_);
    std::vector<GuestKey> keys;
    for (const auto& [key, open] : open_) {
      if (now > open.deadline_ns) keys.push_back(key);
    }
    for (const GuestKey& key : keys) {
      const auto it = open_.find(key);
      done.push_back(it->second.completion);
      open_.erase(it);
      closeLocked(key, Closed::kExpired);
    }
  }
  counters_.expired.fetch_add(done.size(), std::memory_order_relaxed);
  for (const sdk::Completion& c : done) c.complete(sdk::Code::kInvalid);
  return done.size();
}

size_t Forwarder::openGroups() const {
  std::lock_guard lk(mu_);
  return open_.size();
}

size_t Forwarder::openGroups(const std::string& vm) const {
  std::lock_guard lk(mu_);
  const auto it = open_per_vm_.find(vm);
  return it == open_per_vm_.end() ? 0 : it->second;
}

void Forwarder::addCounters(sdk::Counters& out) const {
  const auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  out.add("groups", v(counters_.groups));
  out.add("forwarded", v(counters_.forwarded));
  out.add("not_registered", v(counters_.not_registered));
  out.add("pasid_unmapped", v(counters_.pasid_unmapped));
  out.add("vm_unavailable", v(counters_.vm_unavailable));
  out.add("overload", v(counters_.overload));
  out.add("key_busy", v(counters_.key_busy));
  out.add("answers_success", v(counters_.answers_success));
  out.add("answers_invalid", v(counters_.answers_invalid));
  out.add("answers_failure_mapped", v(counters_.answers_failure_mapped));
  out.add("answers_bad_code", v(counters_.answers_bad_code));
  out.add("answers_duplicate", v(counters_.answers_duplicate));
  out.add("answers_unknown", v(counters_.answers_unknown));
  out.add("answers_late", v(counters_.answers_late));
  out.add("answers_refused_by_router", v(counters_.answers_refused_by_router));
  out.add("drained_guest_reset", v(counters_.drained_guest_reset));
  out.add("drained_viommu_reset", v(counters_.drained_viommu_reset));
  out.add("drained_device_del", v(counters_.drained_device_del));
  out.add("drained_disconnect", v(counters_.drained_disconnect));
  out.add("drained_shutdown", v(counters_.drained_shutdown));
  out.add("expired", v(counters_.expired));
  out.add("open_groups", openGroups());
}

}  // namespace iopf::guest_forwarder
