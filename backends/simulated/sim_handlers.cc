#include "sim_handlers.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace iopf::sim {

AddressSpace::AddressSpace(std::vector<AddressRegion> regions) : regions_(std::move(regions)) {
  std::sort(regions_.begin(), regions_.end(),
            [](const AddressRegion& a, const AddressRegion& b) { return a.base < b.base; });
}

const AddressRegion* AddressSpace::find(uint64_t addr) const {
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](uint64_t a, const AddressRegion& r) { return a < r.base; });
  if (it == regions_.begin()) return nullptr;
  --it;
  return addr - it->base < it->size ? &*it : nullptr;
}

ResponseCode resolveGroup(const GroupView& group, const AddressSpace& space, Backend& backend,
                          bool require_pasid) {
  constexpr uint8_t kAccess = perm::kRead | perm::kWrite | perm::kExec;
  for (const PageRequest& r : group.requests) {
    if (require_pasid && !r.pasid) return ResponseCode::kInvalid;
    const AddressRegion* region = space.find(r.addr);
    if (region == nullptr) return ResponseCode::kInvalid;
    const uint8_t need = r.perm & kAccess;
    if ((need & region->perm) != need) return ResponseCode::kInvalid;
    MapRequest m;
    m.domain = group.domain;
    m.device = group.device;
    m.pasid = r.pasid;
    m.iova = r.addr & ~uint64_t{4095};
    m.length = 4096;
    m.perm = region->perm;
    if (!backend.map(m).ok()) return ResponseCode::kInvalid;
  }
  return ResponseCode::kSuccess;
}

Verdict SimResolver::handle(const GroupView& group, const CompletionHandle&) {
  return Verdict::respond(resolveGroup(group, *space_, backend_, require_pasid_));
}

FixedVerdict::FixedVerdict(ResponseCode code)
    : code_(code),
      name_(absl::StrCat("fixed:", code == ResponseCode::kSuccess   ? "SUCCESS"
                                   : code == ResponseCode::kInvalid ? "INVALID"
                                                                    : "FAILURE")) {}

SimGuest::SimGuest(std::shared_ptr<const AddressSpace> space, Backend& backend, Options options)
    : space_(std::move(space)),
      backend_(backend),
      options_(options),
      clock_(options.clock != nullptr ? options.clock : &steady_) {
  ring_.resize(64);
  if (options_.threaded) thread_ = std::thread([this] { threadMain(); });
}

SimGuest::~SimGuest() {
  stop();
}

Verdict SimGuest::handle(const GroupView& group, const CompletionHandle& completion) {
  // The guest resolves in its own page table (the nested domain's) right away; the answer travels
  // back through the VMM after the delay.
  const ResponseCode code = resolveGroup(group, *space_, backend_, false);
  const int64_t due = clock_->now() + options_.delay_ns;
  bool notify;
  {
    std::lock_guard lk(mu_);
    if (count_ == ring_.size()) {
      std::vector<Pending> bigger(ring_.size() * 2);
      for (size_t i = 0; i < count_; ++i) bigger[i] = ring_[(head_ + i) % ring_.size()];
      ring_.swap(bigger);
      head_ = 0;
    }
    ring_[(head_ + count_) % ring_.size()] = Pending{due, completion, code};
    ++count_;
    notify = sleeping_;
  }
  if (notify) cv_.notify_one();
  return Verdict::defer();
}

size_t SimGuest::completeDue(int64_t now) {
  {
    std::lock_guard lk(mu_);
    while (count_ > 0 && ring_[head_].due_ns <= now) {
      due_.push_back(ring_[head_]);
      head_ = (head_ + 1) % ring_.size();
      --count_;
    }
  }
  for (const Pending& p : due_) p.handle.complete(p.code);
  const size_t n = due_.size();
  due_.clear();
  return n;
}

size_t SimGuest::pending() const {
  std::lock_guard lk(mu_);
  return count_;
}

void SimGuest::stop() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
}

void SimGuest::threadMain() {
  for (;;) {
    const int64_t now = clock_->now();
    completeDue(now);
    std::unique_lock lk(mu_);
    if (stop_) return;
    if (count_ == 0) {
      sleeping_ = true;
      cv_.wait_for(lk, std::chrono::milliseconds(10));
      sleeping_ = false;
      continue;
    }
    const int64_t wait = ring_[head_].due_ns - clock_->now();
    if (wait <= 0) continue;
    if (wait < 200'000) {
      // Short guest delays: a sleep would overshoot them by a timer slack; yield instead.
      lk.unlock();
      std::this_thread::yield();
      continue;
    }
    sleeping_ = true;
    cv_.wait_for(lk, std::chrono::nanoseconds(wait));
    sleeping_ = false;
  }
}

}  // namespace iopf::sim
