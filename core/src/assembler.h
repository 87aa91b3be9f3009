// Page request group assembly for one device (kernel §3.2 points 3–6, rule R1).
//
// Non-last requests are buffered per PRGI until the LAST_PAGE request of the same PRGI arrives; the
// group is then the buffered requests in arrival order followed by the last one. Buffers are reused,
// so steady-state assembly allocates nothing. Owned by the thread that feeds the device.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <vector>

#include "iopf/types.h"

namespace iopf::detail {

class Assembler {
 public:
  Assembler() { index_.fill(-1); }

  // Buffers a non-last request. Returns false (nothing buffered) if `limit` requests are already
  // buffered for the device.
  bool addPartial(const PageRequest& request, uint32_t limit);

  // Completes the group of `last`: calls fn(span of the group's requests), then forgets the group.
  template <typename Fn>
  void complete(const PageRequest& last, Fn&& fn);

  // Drops every buffered request (overflow, removal). Returns how many were dropped.
  size_t discardAll();

  size_t buffered() const { return buffered_; }

 private:
  static constexpr uint32_t kDirect = 512;
  struct Partial {
    uint32_t grpid = 0;
    bool active = false;
    std::vector<PageRequest> requests;
  };
  int32_t find(uint32_t grpid) const;
  void release(int32_t idx);

  std::array<int32_t, kDirect> index_;
  std::vector<Partial> partials_;
  std::vector<int32_t> free_;
  size_t buffered_ = 0;
  size_t active_ = 0;
};

template <typename Fn>
void Assembler::complete(const PageRequest& last, Fn&& fn) {
  const int32_t idx = active_ == 0 ? -1 : find(last.grpid);
  if (idx < 0) {
    fn(std::span<const PageRequest>(&last, 1));
    return;
  }
  Partial& p = partials_[idx];
  p.requests.push_back(last);
  fn(std::span<const PageRequest>(p.requests));
  buffered_ -= p.requests.size() - 1;
  release(idx);
}

}  // namespace iopf::detail
