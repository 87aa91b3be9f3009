// Built-in in-process handlers for simulator scenarios, until the plugin chain (sva_resolver,
// guest_forwarder) replaces them. Each follows the Handler contract of iopf/handler.h.
//
//   sim_resolver    SVA-like resolver against the domain's declared address space: requests in
//                   order, errors sticky; a page inside a region whose perms cover the request is
//                   mapped through Backend::map() into the domain's software I/O page table;
//                   SUCCESS if every request resolved, INVALID otherwise.
//   fixed:<CODE>    answers CODE at once (SUCCESS, INVALID or FAILURE).
//   sim_guest       a guest behind a vIOMMU: resolves like sim_resolver at once, defers, and
//                   completes from its own thread `delay` later (guest-like latency).
//   sim_hold        defers and never completes: the deadline, a detach or shutdown answers.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "iopf/backend.h"
#include "iopf/clock.h"
#include "iopf/handler.h"

namespace iopf::sim {

struct AddressRegion {
  uint64_t base = 0;
  uint64_t size = 0;
  uint8_t perm = perm::kRead | perm::kWrite;  // perm::k* bits
};

// The address space bound to a domain (what the resolver may map). Immutable; regions sorted and
// non-overlapping (the scenario loader checks).
class AddressSpace {
 public:
  explicit AddressSpace(std::vector<AddressRegion> regions);
  const AddressRegion* find(uint64_t addr) const;
  const std::vector<AddressRegion>& regions() const { return regions_; }

 private:
  std::vector<AddressRegion> regions_;
};

// Resolves a group the way the kernel's SVA handler does (kernel §3.2 point 10): requests in order,
// the first failure is the answer. `require_pasid`: a request without PASID is INVALID (SVA).
// Maps one page per request through backend.map(). Thread-safe if the backend's map() is.
ResponseCode resolveGroup(const GroupView& group, const AddressSpace& space, Backend& backend,
                          bool require_pasid);

class SimResolver final : public Handler {
 public:
  SimResolver(std::shared_ptr<const AddressSpace> space, Backend& backend, bool require_pasid)
      : space_(std::move(space)), backend_(backend), require_pasid_(require_pasid) {}
  std::string_view name() const override { return "sim_resolver"; }
  Verdict handle(const GroupView& group, const CompletionHandle& completion) override;

 private:
  std::shared_ptr<const AddressSpace> space_;
  Backend& backend_;
  const bool require_pasid_;
};

class FixedVerdict final : public Handler {
 public:
  explicit FixedVerdict(ResponseCode code);
  std::string_view name() const override { return name_; }
  Verdict handle(const GroupView&, const CompletionHandle&) override { return Verdict::respond(code_); }

 private:
  const ResponseCode code_;
  const std::string name_;
};

class SimHold final : public Handler {
 public:
  std::string_view name() const override { return "sim_hold"; }
  Verdict handle(const GroupView&, const CompletionHandle&) override { return Verdict::defer(); }
};

// Threading: handle() runs on a shard thread and only queues; completions run on the guest's own
// thread (threaded) or in completeDue() (manual). stop() MUST be called before the Router that
// issued the completion handles is destroyed (the destructor calls it too, but the router may be
// gone by then if the owner orders members wrongly).
class SimGuest final : public Handler {
 public:
  struct Options {
    int64_t delay_ns = 50'000;
    bool threaded = true;
    const Clock* clock = nullptr;  // default SteadyClock; MUST outlive
  };
  SimGuest(std::shared_ptr<const AddressSpace> space, Backend& backend, Options options);
  ~SimGuest() override;
  std::string_view name() const override { return "sim_guest"; }
  Verdict handle(const GroupView& group, const CompletionHandle& completion) override;

  // Manual mode: completes every group whose delay has passed by `now`. Returns how many.
  size_t completeDue(int64_t now);
  // Stops the thread; pending groups are dropped (the router answers them on shutdown).
  void stop();
  size_t pending() const;

 private:
  struct Pending {
    int64_t due_ns = 0;
    CompletionHandle handle;
    ResponseCode code = ResponseCode::kInvalid;
  };
  void threadMain();

  std::shared_ptr<const AddressSpace> space_;
  Backend& backend_;
  const Options options_;
  SteadyClock steady_;
  const Clock* clock_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  // FIFO ring (constant delay: due times are in order). Grows to the peak, then reuses.
  std::vector<Pending> ring_;  // guarded by mu_
  size_t head_ = 0;            // guarded by mu_
  size_t count_ = 0;           // guarded by mu_
  bool stop_ = false;          // guarded by mu_
  bool sleeping_ = false;      // guarded by mu_
  std::vector<Pending> due_;   // completion thread only
  std::thread thread_;
};

}  // namespace iopf::sim
