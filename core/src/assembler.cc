#include "assembler.h"

namespace iopf::detail {

int32_t Assembler::find(uint32_t grpid) const {
  if (grpid < kDirect) return index_[grpid];
  for (size_t i = 0; i < partials_.size(); ++i) {
    if (partials_[i].active && partials_[i].grpid == grpid) return static_cast<int32_t>(i);
  }
  return -1;
}

bool Assembler::addPartial(const PageRequest& request, uint32_t limit) {
  if (buffered_ >= limit) return false;
  int32_t idx = active_ == 0 ? -1 : find(request.grpid);
  if (idx < 0) {
    if (!free_.empty()) {
      idx = free_.back();
      free_.pop_back();
    } else {
      idx = static_cast<int32_t>(partials_.size());
      partials_.emplace_back();
    }
    Partial& p = partials_[idx];
    p.grpid = request.grpid;
    p.active = true;
    p.requests.clear();
    if (request.grpid < kDirect) index_[request.grpid] = idx;
    ++active_;
  }
  partials_[idx].requests.push_back(request);
  ++buffered_;
  return true;
}

void Assembler::release(int32_t idx) {
  Partial& p = partials_[idx];
  if (p.grpid < kDirect) index_[p.grpid] = -1;
  p.active = false;
  p.requests.clear();
  free_.push_back(idx);
  --active_;
}

size_t Assembler::discardAll() {
  const size_t dropped = buffered_;
  for (size_t i = 0; i < partials_.size(); ++i) {
    if (partials_[i].active) release(static_cast<int32_t>(i));
  }
  buffered_ = 0;
  return dropped;
}

}  // namespace iopf::detail
