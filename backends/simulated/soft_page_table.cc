#include "soft_page_table.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace iopf::sim {

namespace {
constexpr uint64_t kIndexMask = 511;
inline uint32_t index0(uint64_t page) {
  return static_cast<uint32_t>((page >> 27) & kIndexMask);
}
inline uint32_t index1(uint64_t page) {
  return static_cast<uint32_t>((page >> 18) & kIndexMask);
}
inline uint32_t index2(uint64_t page) {
  return static_cast<uint32_t>((page >> 9) & kIndexMask);
}
inline uint32_t index3(uint64_t page) {
  return static_cast<uint32_t>(page & kIndexMask);
}
constexpr uint64_t kPageCount = uint64_t{1} << (SoftIoPageTable::kIovaBits - 12);
}  // namespace

SoftIoPageTable::Leaf* SoftIoPageTable::leafFor(uint64_t page, bool create) {
  // Fast path: the whole walk exists (the common case once a region is warm).
  Level1* l1 = root_.next[index0(page)].load(std::memory_order_acquire);
  Level2* l2 = l1 != nullptr ? l1->next[index1(page)].load(std::memory_order_acquire) : nullptr;
  Leaf* leaf = l2 != nullptr ? l2->next[index2(page)].load(std::memory_order_acquire) : nullptr;
  if (leaf != nullptr || !create) return leaf;
  std::lock_guard lk(grow_mu_);
  auto& s1 = root_.next[index0(page)];
  if ((l1 = s1.load(std::memory_order_relaxed)) == nullptr) {
    level1_.push_back(std::make_unique<Level1>());
    l1 = level1_.back().get();
    s1.store(l1, std::memory_order_release);
  }
  auto& s2 = l1->next[index1(page)];
  if ((l2 = s2.load(std::memory_order_relaxed)) == nullptr) {
    level2_.push_back(std::make_unique<Level2>());
    l2 = level2_.back().get();
    s2.store(l2, std::memory_order_release);
  }
  auto& s3 = l2->next[index2(page)];
  if ((leaf = s3.load(std::memory_order_relaxed)) == nullptr) {
    leaves_.push_back(std::make_unique<Leaf>());
    leaf = leaves_.back().get();
    s3.store(leaf, std::memory_order_release);
  }
  return leaf;
}

absl::Status SoftIoPageTable::map(uint64_t iova, uint64_t length, uint8_t perm) {
  if (length == 0) return absl::InvalidArgumentError(absl::StrCat("domain ", domain_, ": empty map"));
  const uint64_t first = iova / kPageSize;
  const uint64_t last_byte = iova + (length - 1);
  if (last_byte < iova || last_byte / kPageSize >= kPageCount) {
    return absl::InvalidArgumentError(absl::StrCat("domain ", domain_, ": map of 0x", absl::Hex(iova), "+0x",
                                                   absl::Hex(length), " leaves the ", kIovaBits,
                                                   "-bit IOVA space"));
  }
  const uint8_t entry = kPresent | (perm & (perm::kRead | perm::kWrite | perm::kExec | perm::kPriv));
  uint64_t fresh = 0;
  for (uint64_t page = first; page <= last_byte / kPageSize;) {
    Leaf* leaf = leafFor(page, true);
    // The rest of this leaf in one go.
    const uint64_t leaf_end = (page | kIndexMask) + 1;
    const uint64_t stop = std::min(leaf_end, last_byte / kPageSize + 1);
    for (; page < stop; ++page) {
      std::atomic<uint8_t>& e = leaf->entries[index3(page)];
      uint8_t old = e.load(std::memory_order_relaxed);
      // Already mapped this way (the common case of a warm domain): no write, so the cache line
      // the devices' retries read stays shared.
      if (old == entry) continue;
      if (old == 0 && e.compare_exchange_strong(old, entry, std::memory_order_release)) {
        ++fresh;
      } else {
        e.store(entry, std::memory_order_release);
      }
    }
  }
  if (fresh != 0) mapped_pages_.fetch_add(fresh, std::memory_order_relaxed);
  return absl::OkStatus();
}

void SoftIoPageTable::unmap(uint64_t iova, uint64_t length) {
  if (length == 0) return;
  const uint64_t first = iova / kPageSize;
  uint64_t last_byte = iova + (length - 1);
  if (last_byte < iova) last_byte = UINT64_MAX;
  const uint64_t end = std::min(last_byte / kPageSize + 1, kPageCount);
  uint64_t gone = 0;
  for (uint64_t page = first; page < end; ++page) {
    Leaf* leaf = leafFor(page, false);
    if (leaf == nullptr) {
      page |= kIndexMask;  // skip the whole absent leaf
      continue;
    }
    if (leaf->entries[index3(page)].exchange(0, std::memory_order_release) != 0) ++gone;
  }
  if (gone != 0) mapped_pages_.fetch_sub(gone, std::memory_order_relaxed);
}

uint8_t SoftIoPageTable::lookup(uint64_t iova) const {
  const uint64_t page = iova / kPageSize;
  if (page >= kPageCount) return 0;
  const Level1* l1 = root_.next[index0(page)].load(std::memory_order_acquire);
  if (l1 == nullptr) return 0;
  const Level2* l2 = l1->next[index1(page)].load(std::memory_order_acquire);
  if (l2 == nullptr) return 0;
  const Leaf* leaf = l2->next[index2(page)].load(std::memory_order_acquire);
  if (leaf == nullptr) return 0;
  return leaf->entries[index3(page)].load(std::memory_order_acquire);
}

}  // namespace iopf::sim
