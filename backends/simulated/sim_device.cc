#include "sim_device.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace iopf::sim {

namespace {
constexpr uint64_t kMaxArrivalBacklog = 4096;
}  // namespace

std::string_view toString(InjectionKind kind) {
  switch (kind) {
    case InjectionKind::kLostLast:
      return "lost_last";
    case InjectionKind::kDuplicatePrgi:
      return "duplicate_prgi";
    case InjectionKind::kOverflow:
      return "overflow";
    case InjectionKind::kUnplug:
      return "unplug";
    case InjectionKind::kStopMarker:
      return "stop_marker";
    case InjectionKind::kResumePasid:
      return "resume_pasid";
    case InjectionKind::kBurst:
      return "burst";
    case InjectionKind::kReenablePri:
      return "reenable_pri";
  }
  return "unknown";
}

std::optional<InjectionKind> parseInjectionKind(std::string_view text) {
  for (int i = 0; i < kInjectionKindCount; ++i) {
    const auto kind = static_cast<InjectionKind>(i);
    if (toString(kind) == text) return kind;
  }
  return std::nullopt;
}

std::string_view toString(Counter counter) {
  switch (counter) {
    case Counter::kGroupsIssued:
      return "groups_issued";
    case Counter::kRequestsIssued:
      return "requests_issued";
    case Counter::kRetryGroups:
      return "retry_groups";
    case Counter::kRetriedRequests:
      return "retried_requests";
    case Counter::kCompletedAccesses:
      return "completed_accesses";
    case Counter::kAbortedRequests:
      return "aborted_requests";
    case Counter::kRetryExhausted:
      return "retry_exhausted";
    case Counter::kResponses:
      return "responses";
    case Counter::kResponsesSuccess:
      return "responses_success";
    case Counter::kResponsesInvalid:
      return "responses_invalid";
    case Counter::kResponsesFailure:
      return "responses_failure";
    case Counter::kPriDisabled:
      return "pri_disabled";
    case Counter::kPriReenabled:
      return "pri_reenabled";
    case Counter::kCreditStalls:
      return "credit_stalls";
    case Counter::kPrgiStalls:
      return "prgi_stalls";
    case Counter::kArrivalsDropped:
      return "arrivals_dropped";
    case Counter::kBogusResponses:
      return "bogus_responses";
    case Counter::kPasidMismatches:
      return "pasid_mismatches";
    case Counter::kCountMismatches:
      return "count_mismatches";
    case Counter::kResponsesAfterUnplug:
      return "responses_after_unplug";
    case Counter::kLostLast:
      return "lost_last";
    case Counter::kIommuAutoResponses:
      return "iommu_auto_responses";
    case Counter::kDuplicatePrgi:
      return "duplicate_prgi";
    case Counter::kDuplicateResponses:
      return "duplicate_responses";
    case Counter::kOverflows:
      return "overflows";
    case Counter::kUnplugs:
      return "unplugs";
    case Counter::kStopMarkers:
      return "stop_markers";
    case Counter::kBurstGroups:
      return "burst_groups";
    case Counter::kInjectionsSkipped:
      return "injections_skipped";
    case Counter::kReplayIncomplete:
      return "replay_incomplete";
    case Counter::kCount:
      break;
  }
  return "unknown";
}

SimDevice::SimDevice(uint32_t index, SimDeviceConfig config)
    : index_(index),
      config_(std::move(config)),
      rng_(config_.seed),
      arrival_rng_(config_.seed ^ 0xA5A5'5A5A'C3C3'3C3Cull),
      stream_(config_.workload) {
  sorted_pasids_ = config_.pasids;
  std::sort(sorted_pasids_.begin(), sorted_pasids_.end());
  sorted_pasids_.erase(std::unique(sorted_pasids_.begin(), sorted_pasids_.end()), sorted_pasids_.end());
  pasid_tables_ = std::make_unique<std::atomic<const SoftIoPageTable*>[]>(sorted_pasids_.size());
  for (size_t i = 0; i < sorted_pasids_.size(); ++i) pasid_tables_[i].store(nullptr);
  stopped_.assign(sorted_pasids_.size(), false);
  for (uint32_t i = 0; i < kPrgiSpace; ++i) {
    free_prgi_[i] = static_cast<uint16_t>(i);
    in_ring_[i] = true;
  }
  free_count_ = kPrgiSpace;
  const uint32_t group_max = config_.stall_model ? 1 : std::max<uint32_t>(1, config_.workload.group_max);
  // Buffers sized for the steady state up front (they may still grow, e.g. under bursts): the pool
  // holds the 2nd..nth accesses of multi-request groups only.
  const uint32_t credits =
      config_.pri_allocation == 0 ? 4096 : std::min<uint32_t>(config_.pri_allocation, 4096);
  if (group_max > 1 || config_.workload.kind == WorkloadKind::kReplay) pool_.reserve(credits + 8);
  staged_.reserve(group_max + 1);
  scratch_.reserve(group_max + 1);
  retries_.reserve(std::min<uint32_t>(credits, 256));
  for (const ScheduledInjection& s : config_.injections) scheduled_.push_back({s, INT64_MAX, 0});
  if (config_.workload.kind == WorkloadKind::kReplay && config_.workload.replay) {
    bump(Counter::kReplayIncomplete, config_.workload.replay->incomplete_skipped);
  }
}

absl::Status SimDevice::bind(std::optional<uint32_t> pasid, const SoftIoPageTable* table) {
  if (!pasid) {
    rid_table_.store(table, std::memory_order_release);
    return absl::OkStatus();
  }
  const auto it = std::lower_bound(sorted_pasids_.begin(), sorted_pasids_.end(), *pasid);
  if (it == sorted_pasids_.end() || *it != *pasid) {
    return absl::InvalidArgumentError(absl::StrCat("simulated device '", config_.name,
                                                   "' does not use PASID ", *pasid, " (its pasids list)"));
  }
  pasid_tables_[static_cast<size_t>(it - sorted_pasids_.begin())].store(table, std::memory_order_release);
  return absl::OkStatus();
}

const SoftIoPageTable* SimDevice::translation(std::optional<uint32_t> pasid) const {
  const SoftIoPageTable* rid = rid_table_.load(std::memory_order_acquire);
  if (!pasid) return rid;
  const auto it = std::lower_bound(sorted_pasids_.begin(), sorted_pasids_.end(), *pasid);
  if (it != sorted_pasids_.end() && *it == *pasid) {
    if (const SoftIoPageTable* t =
            pasid_tables_[static_cast<size_t>(it - sorted_pasids_.begin())].load(std::memory_order_acquire)) {
      return t;
    }
  }
  // R6: PASID traffic of a device whose RID belongs to a guest-owned domain goes through it.
  return rid != nullptr && rid->kind() == DomainKind::kNested ? rid : nullptr;
}

// ---------------------------------------------------------------------------------------------
// resources

uint32_t SimDevice::freeCredits() const {
  if (config_.pri_allocation == 0) return UINT32_MAX;
  return credits_in_use_ >= config_.pri_allocation
             ? 0
             : static_cast<uint32_t>(config_.pri_allocation - credits_in_use_);
}

std::optional<uint32_t> SimDevice::allocPrgi(std::optional<uint32_t> preferred) {
  if (preferred && *preferred < kPrgiSpace && slots_[*preferred].state == SlotState::kFree) {
    ++open_slots_;
    return *preferred;  // it stays in the ring; popping skips it while it is in use
  }
  while (free_count_ > 0) {
    const uint32_t p = free_prgi_[free_head_];
    free_head_ = (free_head_ + 1) % kPrgiSpace;
    --free_count_;
    in_ring_[p] = false;
    if (slots_[p].state == SlotState::kFree) {
      ++open_slots_;
      return p;
    }
  }
  return std::nullopt;
}

void SimDevice::freePrgi(uint32_t prgi) {
  slots_[prgi].state = SlotState::kFree;
  --open_slots_;
  if (in_ring_[prgi]) return;
  free_prgi_[(free_head_ + free_count_) % kPrgiSpace] = static_cast<uint16_t>(prgi);
  ++free_count_;
  in_ring_[prgi] = true;
}

uint32_t SimDevice::allocAccess(uint64_t addr, uint8_t perm, uint8_t attempts) {
  uint32_t idx;
  if (pool_free_ != kNil) {
    idx = pool_free_;
    pool_free_ = pool_[idx].next;
  } else {
    idx = static_cast<uint32_t>(pool_.size());
    pool_.emplace_back();
  }
  pool_[idx] = Access{addr, perm, attempts, kNil};
  return idx;
}

void SimDevice::appendAccess(Slot& slot, uint64_t addr, uint8_t perm, uint8_t attempts) {
  // The first access lives in the slot itself: single-request groups never touch the pool.
  if (!slot.has_first) {
    slot.first = Access{addr, perm, attempts, kNil};
    slot.has_first = true;
    return;
  }
  const uint32_t access = allocAccess(addr, perm, attempts);
  if (slot.head == kNil) {
    slot.head = access;
  } else {
    pool_[slot.tail].next = access;
  }
  slot.tail = access;
}

void SimDevice::releaseAccesses(Slot& slot) {
  if (slot.head != kNil) {
    pool_[slot.tail].next = pool_free_;
    pool_free_ = slot.head;
  }
  slot.head = slot.tail = kNil;
  slot.has_first = false;
}

bool SimDevice::pasidStopped(uint32_t pasid) const {
  const auto it = std::lower_bound(sorted_pasids_.begin(), sorted_pasids_.end(), pasid);
  return it != sorted_pasids_.end() && *it == pasid &&
         stopped_[static_cast<size_t>(it - sorted_pasids_.begin())];
}

bool SimDevice::nextPasid(bool& has_pasid, uint32_t& pasid) {
  const size_t n = config_.pasids.size();
  if (n == 0) {
    has_pasid = false;
    return true;
  }
  for (size_t i = 0; i < n; ++i) {
    const uint32_t p = config_.pasids[(pasid_cursor_ + i) % n];
    if (pasidStopped(p)) continue;
    pasid_cursor_ = (pasid_cursor_ + i + 1) % n;
    has_pasid = true;
    pasid = p;
    return true;
  }
  return false;  // every PASID was stopped
}

bool SimDevice::stageNewGroup(bool force_two) {
  bool has_pasid = false;
  uint32_t pasid = 0;
  if (!nextPasid(has_pasid, pasid)) return false;
  const WorkloadConfig& w = config_.workload;
  uint32_t size = 1;
  if (!config_.stall_model) {
    size = w.group_min + static_cast<uint32_t>(rng_.below(uint64_t{w.group_max} - w.group_min + 1));
    if (force_two && size < 2) size = 2;
  }
  staged_.clear();
  // skip_mapped: the device translates first; accesses its page table allows complete at once
  // (bounded, so a fully mapped range ends the pass instead of spinning).
  const SoftIoPageTable* table =
      w.skip_mapped ? translation(has_pasid ? std::optional<uint32_t>(pasid) : std::nullopt) : nullptr;
  uint32_t skipped = 0;
  for (uint32_t i = 0; i < size;) {
    const uint64_t addr = stream_.next(rng_);
    const uint8_t p = (w.write_ratio > 0 && rng_.unit() < w.write_ratio) ? perm::kWrite : perm::kRead;
    if (table != nullptr && table->allows(addr, p)) {
      bump(Counter::kCompletedAccesses);
      if (++skipped >= 4096) break;
      continue;
    }
    staged_.push_back(Access{addr, p, 0, kNil});
    ++i;
  }
  if (staged_.empty()) return false;
  staged_has_pasid_ = has_pasid;
  staged_pasid_ = pasid;
  ++groups_generated_;
  return true;
}

PageRequest SimDevice::makeRequest(uint32_t grpid, bool has_pasid, uint32_t pasid, uint64_t addr,
                                   uint8_t perm, bool last, uint32_t cookie) const {
  PageRequest r;
  r.device = router_id_;
  r.grpid = grpid;
  if (has_pasid) r.pasid = pasid;
  r.addr = addr;
  r.perm = perm;
  r.last = last;
  r.cookie = cookie;
  return r;
}

bool SimDevice::sendGroup(const std::vector<Access>& accesses, bool has_pasid, uint32_t pasid, int64_t now,
                          DeviceIo& io, bool ignore_credits, bool allow_lose) {
  const auto size = static_cast<uint32_t>(accesses.size());
  if (!ignore_credits && freeCredits() < size) {
    bump(Counter::kCreditStalls);
    return false;
  }
  const std::optional<uint32_t> prgi = allocPrgi();
  if (!prgi) {
    bump(Counter::kPrgiStalls);
    return false;
  }
  Slot& s = slots_[*prgi];
  s.state = SlotState::kOpen;
  s.issue_ns = now;
  s.cookie = next_cookie_++;
  s.has_pasid = has_pasid;
  s.pasid = pasid;
  s.count = static_cast<uint16_t>(size);
  s.head = s.tail = kNil;
  s.has_first = false;
  // A lost LAST leaves a partial group behind only if the group has another request; a stall-model
  // device (single-request groups) loses the request itself.
  const bool lose = allow_lose && lose_next_last_ && (size >= 2 || config_.stall_model);
  for (uint32_t i = 0; i < size; ++i) {
    const Access& a = accesses[i];
    appendAccess(s, a.addr, a.perm, a.attempts);
    const bool last = i + 1 == size;
    if (last && lose) break;  // the LAST request is lost on its way through the IOMMU
    io.push(makeRequest(*prgi, has_pasid, pasid, a.addr, a.perm, last, s.cookie));
  }
  credits_in_use_ += size;
  bump(Counter::kRequestsIssued, size);
  bump(Counter::kGroupsIssued);
  if (lose) {
    lose_next_last_ = false;
    s.state = SlotState::kLost;
    ++lost_count_;
    bump(Counter::kLostLast);
    // Its partial requests must be in the router before an overflow may answer it.
    s.lost_epoch = io.flush();
  } else {
    last_open_prgi_ = *prgi;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// issuing

void SimDevice::startTraffic(int64_t now) {
  started_ = true;
  replay_base_ns_ = now;
  for (Scheduled& s : scheduled_) s.next_ns = now + s.spec.at_ns;
  const WorkloadConfig& w = config_.workload;
  if (w.kind != WorkloadKind::kReplay && w.rate_groups_per_s > 0) {
    const double mean = 1e9 / w.rate_groups_per_s;
    next_arrival_exact_ = static_cast<double>(now) + (w.poisson ? arrival_rng_.exponential(mean) : mean);
    next_arrival_ns_ = static_cast<int64_t>(next_arrival_exact_);
  }
  setGauges();
}

size_t SimDevice::issueRetries(int64_t now, size_t budget, DeviceIo& io) {
  size_t n = 0;
  const uint32_t group_max = config_.stall_model ? 1 : std::max<uint32_t>(1, config_.workload.group_max);
  while (n < budget && retry_head_ < retries_.size()) {
    const Retry& first = retries_[retry_head_];
    size_t k = 1;
    while (k < group_max && retry_head_ + k < retries_.size() &&
           retries_[retry_head_ + k].has_pasid == first.has_pasid &&
           retries_[retry_head_ + k].pasid == first.pasid) {
      ++k;
    }
    k = std::min<size_t>(k, freeCredits());
    if (k == 0) {
      bump(Counter::kCreditStalls);
      break;
    }
    scratch_.clear();
    for (size_t i = 0; i < k; ++i) {
      const Retry& r = retries_[retry_head_ + i];
      scratch_.push_back(Access{r.addr, r.perm, r.attempts, kNil});
    }
    if (!sendGroup(scratch_, first.has_pasid, first.pasid, now, io, false, false)) break;
    retry_head_ += k;
    bump(Counter::kRetryGroups);
    ++n;
  }
  if (retry_head_ == retries_.size()) {
    retries_.clear();
    retry_head_ = 0;
  }
  return n;
}

size_t SimDevice::issueReplay(int64_t now, size_t budget, DeviceIo& io) {
  const WorkloadConfig& w = config_.workload;
  if (!w.replay) {
    replay_done_ = true;
    return 0;
  }
  const std::vector<ReplayRequest>& trace = w.replay->requests;
  replay_next_ns_ = INT64_MAX;
  size_t n = 0;
  while (n < budget && !replay_done_) {
    if (replay_pos_ == trace.size()) {
      if (!w.replay_loop || trace.empty()) {
        replay_done_ = true;
        break;
      }
      replay_pos_ = 0;
      replay_base_ns_ = now;
    }
    const ReplayRequest& r = trace[replay_pos_];
    if (w.replay_original_timing) {
      const int64_t due =
          replay_base_ns_ + static_cast<int64_t>(static_cast<double>(r.offset_ns) / w.replay_speed);
      if (due > now) {
        replay_next_ns_ = due;
        break;
      }
    }
    if (r.stop_marker) {
      io.push(makeRequest(r.grpid, r.has_pasid, r.pasid, r.addr, r.perm, true, next_cookie_++));
      bump(Counter::kStopMarkers);
      ++replay_pos_;
      continue;
    }
    uint32_t prgi;
    if (auto it = replay_open_.find(r.grpid); it != replay_open_.end()) {
      prgi = it->second;
    } else {
      // The group's first request: it takes the credits of the whole group and a PRG index (the
      // captured one when it is free here too).
      if (freeCredits() < r.group_size && credits_in_use_ != 0) {
        bump(Counter::kCreditStalls);
        break;
      }
      const std::optional<uint32_t> p = allocPrgi(r.grpid);
      if (!p) {
        bump(Counter::kPrgiStalls);
        break;
      }
      prgi = *p;
      Slot& s = slots_[prgi];
      s.state = SlotState::kAssembling;
      s.issue_ns = now;
      s.cookie = next_cookie_++;
      s.has_pasid = r.has_pasid;
      s.pasid = r.pasid;
      s.count = static_cast<uint16_t>(r.group_size);
      s.head = s.tail = kNil;
      s.has_first = false;
      credits_in_use_ += r.group_size;
      replay_open_[r.grpid] = prgi;
    }
    Slot& s = slots_[prgi];
    appendAccess(s, r.addr, r.perm, 0);
    io.push(makeRequest(prgi, r.has_pasid, r.pasid, r.addr, r.perm, r.last, s.cookie));
    bump(Counter::kRequestsIssued);
    if (r.last) {
      s.state = SlotState::kOpen;
      replay_open_.erase(r.grpid);
      last_open_prgi_ = prgi;
      bump(Counter::kGroupsIssued);
      ++groups_generated_;
      ++n;
    }
    ++replay_pos_;
  }
  return n;
}

void SimDevice::issueDuplicates(int64_t now, DeviceIo& io) {
  while (pending_duplicates_ > 0) {
    uint32_t prgi = kNil;
    if (last_open_prgi_ != kNil && slots_[last_open_prgi_].state == SlotState::kOpen) {
      prgi = last_open_prgi_;
    } else {
      for (uint32_t p = 0; p < kPrgiSpace; ++p) {
        if (slots_[p].state == SlotState::kOpen) {
          prgi = p;
          break;
        }
      }
    }
    if (prgi == kNil) return;  // nothing open yet: try again next pass
    const Slot& s = slots_[prgi];
    Duplicate d;
    d.cookie = next_cookie_++;
    d.grpid = prgi;
    d.issue_ns = now;
    d.access = Access{s.first.addr + SoftIoPageTable::kPageSize, perm::kRead, 0, kNil};
    d.has_pasid = s.has_pasid;
    d.pasid = s.pasid;
    io.push(makeRequest(prgi, d.has_pasid, d.pasid, d.access.addr, d.access.perm, true, d.cookie));
    duplicates_.push_back(d);
    ++credits_in_use_;
    --pending_duplicates_;
    bump(Counter::kDuplicatePrgi);
    bump(Counter::kRequestsIssued);
    bump(Counter::kGroupsIssued);
  }
}

size_t SimDevice::issue(int64_t now, size_t max_groups, DeviceIo& io) {
  if (!started_) return 0;
  if (!pri_enabled_ && now >= reenable_at_) {
    pri_enabled_ = true;
    reenable_at_ = INT64_MAX;
    bump(Counter::kPriReenabled);
  }
  const WorkloadConfig& w = config_.workload;
  const bool open_loop = w.kind != WorkloadKind::kReplay && w.rate_groups_per_s > 0;
  if (open_loop) {
    const double mean = 1e9 / w.rate_groups_per_s;
    // Bounded catch-up: a device that slept through many arrivals records them without spinning.
    for (int guard = 0; next_arrival_ns_ <= now && guard < 65536; ++guard) {
      if (canIssue() && !generationDone() && arrival_backlog_ < kMaxArrivalBacklog) {
        ++arrival_backlog_;
      } else {
        bump(Counter::kArrivalsDropped);
      }
      next_arrival_exact_ += w.poisson ? arrival_rng_.exponential(mean) : mean;
      next_arrival_ns_ = static_cast<int64_t>(next_arrival_exact_);
    }
  }
  if (!canIssue()) {
    setGauges();
    return 0;
  }
  issueDuplicates(now, io);
  size_t n = issueRetries(now, max_groups, io);
  if (w.kind == WorkloadKind::kReplay) {
    n += issueReplay(now, max_groups - n, io);
    setGauges();
    return n;
  }
  while (n < max_groups) {
    if (staged_.empty()) {
      if (generationDone()) break;
      if (open_loop && arrival_backlog_ == 0) break;
      if (!stageNewGroup(lose_next_last_)) break;  // every PASID stopped
      if (open_loop) --arrival_backlog_;
    }
    if (!sendGroup(staged_, staged_has_pasid_, staged_pasid_, now, io, false, true)) break;
    staged_.clear();
    ++n;
  }
  setGauges();
  return n;
}

bool SimDevice::generationDone() const {
  return config_.workload.max_groups != 0 && groups_generated_ >= config_.workload.max_groups;
}

// ---------------------------------------------------------------------------------------------
// responses

void SimDevice::applyOutcome(ResponseCode code, const Access& a, bool has_pasid, uint32_t pasid) {
  if (code != ResponseCode::kSuccess) {
    bump(Counter::kAbortedRequests);
    return;
  }
  const SoftIoPageTable* table = translation(has_pasid ? std::optional<uint32_t>(pasid) : std::nullopt);
  if (table != nullptr && table->allows(a.addr, a.perm)) {
    bump(Counter::kCompletedAccesses);
  } else if (!canIssue() || (has_pasid && pasidStopped(pasid))) {
    bump(Counter::kAbortedRequests);
  } else if (a.attempts < config_.max_retries) {
    // The device faults again on the same access.
    retries_.push_back(Retry{a.addr, a.perm, static_cast<uint8_t>(a.attempts + 1), has_pasid, pasid});
    bump(Counter::kRetriedRequests);
  } else {
    bump(Counter::kRetryExhausted);
  }
}

void SimDevice::disablePri(int64_t now) {
  if (!pri_enabled_) return;
  pri_enabled_ = false;
  bump(Counter::kPriDisabled);
  reenable_at_ = config_.pri_reenable_after_ns > 0 ? now + config_.pri_reenable_after_ns : INT64_MAX;
  dropPending();
}

void SimDevice::dropPending() {
  // Accesses that waited to fault again can no longer be served: they fail.
  bump(Counter::kAbortedRequests, retries_.size() - retry_head_);
  retries_.clear();
  retry_head_ = 0;
  staged_.clear();
  if (arrival_backlog_ != 0) bump(Counter::kArrivalsDropped, arrival_backlog_);
  arrival_backlog_ = 0;
}

void SimDevice::countResponse(const Response& r) {
  bump(Counter::kResponses);
  switch (r.code) {
    case ResponseCode::kSuccess:
      bump(Counter::kResponsesSuccess);
      break;
    case ResponseCode::kInvalid:
      bump(Counter::kResponsesInvalid);
      break;
    case ResponseCode::kFailure:
      bump(Counter::kResponsesFailure);
      break;
  }
  if (unplugged_) bump(Counter::kResponsesAfterUnplug);
}

void SimDevice::onResponse(const Response& r, int64_t received_ns, DeviceIo& io) {
  if (!duplicates_.empty() && r.cookie) {
    for (size_t i = 0; i < duplicates_.size(); ++i) {
      const Duplicate& d = duplicates_[i];
      if (d.cookie != *r.cookie || d.grpid != r.grpid) continue;
      countResponse(r);
      bump(Counter::kDuplicateResponses);
      io.recordLatency(received_ns - d.issue_ns);
      --credits_in_use_;
      applyOutcome(r.code, d.access, d.has_pasid, d.pasid);
      duplicates_[i] = duplicates_.back();
      duplicates_.pop_back();
      if (r.code == ResponseCode::kFailure) disablePri(received_ns);
      setGauges();
      return;
    }
  }
  if (r.grpid >= kPrgiSpace) {
    bump(Counter::kBogusResponses);
    io.reportBogus(*this, r, "PRG index outside the 512-entry space");
    return;
  }
  Slot& s = slots_[r.grpid];
  if (s.state != SlotState::kOpen) {
    bump(Counter::kBogusResponses);
    io.reportBogus(*this, r,
                   s.state == SlotState::kFree
                       ? "no open group has this PRG index (unknown or already answered)"
                   : s.state == SlotState::kLost ? "the group's LAST_PAGE never reached the router"
                                                 : "the group is still being sent");
    return;
  }
  if (!r.cookie || *r.cookie != s.cookie) {
    bump(Counter::kBogusResponses);
    io.reportBogus(*this, r,
                   "cookie of another (earlier) group on this PRG index: stale or duplicate response");
    return;
  }
  if (config_.needs_pasid && s.has_pasid && (!r.pasid || *r.pasid != s.pasid)) {
    bump(Counter::kPasidMismatches);
    io.reportBogus(*this, r, "PRG response needs the request's PASID and carries another one");
  }
  if (r.request_count != s.count) {
    bump(Counter::kCountMismatches);
    io.reportBogus(*this, r, "response returns a different number of credits than the group holds");
  }
  countResponse(r);
  io.recordLatency(received_ns - s.issue_ns);
  credits_in_use_ -= s.count;
  forEachAccess(s, [&](const Access& a) { applyOutcome(r.code, a, s.has_pasid, s.pasid); });
  releaseAccesses(s);
  freePrgi(r.grpid);
  if (r.code == ResponseCode::kFailure) disablePri(received_ns);
  setGauges();
}

void SimDevice::onOverflow(uint64_t epoch, int64_t now) {
  (void)now;
  if (lost_count_ == 0) return;
  for (uint32_t p = 0; p < kPrgiSpace && lost_count_ > 0; ++p) {
    Slot& s = slots_[p];
    if (s.state != SlotState::kLost || s.lost_epoch >= epoch) continue;
    // VT-d: a LAST_PAGE request that meets a full queue is answered SUCCESS by the IOMMU itself;
    // the device retries the accesses.
    bump(Counter::kIommuAutoResponses);
    credits_in_use_ -= s.count;
    forEachAccess(s, [&](const Access& a) { applyOutcome(ResponseCode::kSuccess, a, s.has_pasid, s.pasid); });
    releaseAccesses(s);
    freePrgi(p);
    --lost_count_;
  }
  setGauges();
}

// ---------------------------------------------------------------------------------------------
// injections

void SimDevice::inject(const Injection& injection) {
  std::lock_guard lk(queued_mu_);
  queued_.push_back(injection);
  queued_flag_.store(true, std::memory_order_release);
}

size_t SimDevice::runInjections(int64_t now, DeviceIo& io) {
  size_t n = 0;
  if (queued_flag_.load(std::memory_order_acquire)) {
    {
      std::lock_guard lk(queued_mu_);
      queued_local_.swap(queued_);
      queued_flag_.store(false, std::memory_order_relaxed);
    }
    for (const Injection& inj : queued_local_) runInjection(inj, now, io);
    n += queued_local_.size();
    queued_local_.clear();
  }
  if (!started_) return n;
  for (Scheduled& s : scheduled_) {
    if (s.next_ns > now) continue;
    runInjection(s.spec.injection, now, io);
    ++s.fired;
    ++n;
    if (s.spec.every_ns > 0 && (s.spec.repeat == 0 || s.fired < s.spec.repeat)) {
      s.next_ns = std::max(s.next_ns + s.spec.every_ns, now + 1);
    } else {
      s.next_ns = INT64_MAX;
    }
  }
  return n;
}

void SimDevice::runInjection(const Injection& inj, int64_t now, DeviceIo& io) {
  auto skip = [&] { bump(Counter::kInjectionsSkipped); };
  switch (inj.kind) {
    case InjectionKind::kLostLast:
      if (config_.workload.kind == WorkloadKind::kReplay || unplugged_) return skip();
      // The next group of two or more requests loses its LAST (a new group is generated with at
      // least two requests while the loss is pending).
      lose_next_last_ = true;
      return;
    case InjectionKind::kDuplicatePrgi:
      if (unplugged_) return skip();
      ++pending_duplicates_;
      if (canIssue()) issueDuplicates(now, io);
      return;
    case InjectionKind::kOverflow:
      bump(Counter::kOverflows);
      io.flush();
      io.requestOverflow();
      return;
    case InjectionKind::kUnplug: {
      if (unplugged_) return skip();
      io.flush();
      if (absl::Status st = io.removeDevice(router_id_); !st.ok()) return skip();
      unplugged_ = true;
      bump(Counter::kUnplugs);
      dropPending();
      setGauges();
      return;
    }
    case InjectionKind::kStopMarker: {
      if (!inj.pasid || unplugged_ || !pri_enabled_) return skip();
      const auto it = std::lower_bound(sorted_pasids_.begin(), sorted_pasids_.end(), *inj.pasid);
      if (it == sorted_pasids_.end() || *it != *inj.pasid) return skip();
      stopped_[static_cast<size_t>(it - sorted_pasids_.begin())] = true;
      // L=1, R=W=0: no response expected (kernel §3.2 point 8).
      io.push(makeRequest(0, true, *inj.pasid, 0, 0, true, next_cookie_++));
      bump(Counter::kStopMarkers);
      if (!staged_.empty() && staged_has_pasid_ && staged_pasid_ == *inj.pasid) staged_.clear();
      // Accesses of the stopped PASID waiting to fault again are given up.
      size_t kept = retry_head_;
      for (size_t i = retry_head_; i < retries_.size(); ++i) {
        if (retries_[i].has_pasid && retries_[i].pasid == *inj.pasid) {
          bump(Counter::kAbortedRequests);
        } else {
          retries_[kept++] = retries_[i];
        }
      }
      retries_.resize(kept);
      return;
    }
    case InjectionKind::kResumePasid: {
      if (!inj.pasid) return skip();
      const auto it = std::lower_bound(sorted_pasids_.begin(), sorted_pasids_.end(), *inj.pasid);
      if (it == sorted_pasids_.end() || *it != *inj.pasid) return skip();
      stopped_[static_cast<size_t>(it - sorted_pasids_.begin())] = false;
      return;
    }
    case InjectionKind::kBurst: {
      if (!canIssue()) return skip();
      uint32_t count = inj.count;
      if (count == 0) count = config_.pri_allocation == 0 ? 64 : 2 * config_.pri_allocation;
      for (uint32_t i = 0; i < count; ++i) {
        bool has_pasid = false;
        uint32_t pasid = 0;
        if (!nextPasid(has_pasid, pasid)) break;
        scratch_.clear();
        scratch_.push_back(Access{stream_.next(rng_), perm::kRead, 0, kNil});
        if (!sendGroup(scratch_, has_pasid, pasid, now, io, true, false)) break;
        bump(Counter::kBurstGroups);
      }
      setGauges();
      return;
    }
    case InjectionKind::kReenablePri:
      if (pri_enabled_) return skip();
      pri_enabled_ = true;
      reenable_at_ = INT64_MAX;
      bump(Counter::kPriReenabled);
      setGauges();
      return;
  }
}

// ---------------------------------------------------------------------------------------------
// observation

int64_t SimDevice::nextWakeNs() const {
  int64_t t = reenable_at_;
  for (const Scheduled& s : scheduled_) t = std::min(t, s.next_ns);
  if (started_ && canIssue()) {
    const WorkloadConfig& w = config_.workload;
    if (w.kind == WorkloadKind::kReplay) {
      t = std::min(t, replay_next_ns_);
    } else if (w.rate_groups_per_s > 0 && !generationDone()) {
      t = std::min(t, next_arrival_ns_);
    }
  }
  return t;
}

bool SimDevice::hasImmediateWork() const {
  if (!started_ || !canIssue()) return false;
  if (retry_head_ < retries_.size() && freeCredits() > 0 && free_count_ > 0) return true;
  const WorkloadConfig& w = config_.workload;
  if (w.kind == WorkloadKind::kReplay) return false;  // timed or waiting for credits
  const bool open_loop = w.rate_groups_per_s > 0;
  const bool usable = config_.pasids.empty() || std::any_of(config_.pasids.begin(), config_.pasids.end(),
                                                            [&](uint32_t p) { return !pasidStopped(p); });
  const bool want = !staged_.empty() || (usable && !generationDone() && (!open_loop || arrival_backlog_ > 0));
  return want && freeCredits() >= std::max<size_t>(1, staged_.size()) && free_count_ > 0;
}

void SimDevice::setGauges() {
  g_open_.store(open_slots_, std::memory_order_relaxed);
  g_lost_.store(lost_count_, std::memory_order_relaxed);
  g_credits_.store(credits_in_use_, std::memory_order_relaxed);
  g_pri_enabled_.store(pri_enabled_, std::memory_order_relaxed);
  g_unplugged_.store(unplugged_, std::memory_order_relaxed);
  const bool done = config_.workload.kind == WorkloadKind::kReplay
                        ? replay_done_
                        : (config_.workload.max_groups != 0 && generationDone() && staged_.empty());
  g_done_.store(done && open_slots_ == lost_count_ && retry_head_ == retries_.size() && duplicates_.empty(),
                std::memory_order_relaxed);
}

SimDeviceStatus SimDevice::status() const {
  SimDeviceStatus st;
  st.index = index_;
  st.router_id = router_id_;
  st.name = config_.name;
  st.rid = config_.rid;
  for (size_t i = 0; i < kCounterCount; ++i)
    st.counters.values[i] = counters_[i].load(std::memory_order_relaxed);
  st.open_groups = g_open_.load(std::memory_order_relaxed);
  st.lost_groups = g_lost_.load(std::memory_order_relaxed);
  st.credits_in_use = g_credits_.load(std::memory_order_relaxed);
  st.pri_enabled = g_pri_enabled_.load(std::memory_order_relaxed);
  st.unplugged = g_unplugged_.load(std::memory_order_relaxed);
  st.workload_done = g_done_.load(std::memory_order_relaxed);
  return st;
}

}  // namespace iopf::sim
