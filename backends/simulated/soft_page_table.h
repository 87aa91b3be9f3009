// The software I/O page table of one simulated IOMMU domain: what resolvers fill through
// Backend::map() and what a simulated device's retry checks after a SUCCESS response.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "iopf/types.h"

namespace iopf::sim {

// A 4-level radix table of 4 KiB pages over a 48-bit IOVA space, as an x86 or Arm IOMMU walks it.
// Each leaf entry holds the page's permission bits (perm::kRead/kWrite/kExec/kPriv) and a present
// bit.
//
// Threading: map()/unmap() MAY be called from any number of threads (resolvers on shard threads);
// lookup()/allows() MAY run concurrently with them from any thread and never block (the walk is a
// chain of acquire loads). Interior nodes are created under a mutex and never freed before the
// table is destroyed, so a concurrent walk never sees a dangling node.
class SoftIoPageTable {
 public:
  static constexpr uint64_t kPageSize = 4096;
  static constexpr int kIovaBits = 48;
  static constexpr uint8_t kPresent = 0x80;

  SoftIoPageTable(DomainId domain, DomainKind kind) : domain_(domain), kind_(kind) {}
  SoftIoPageTable(const SoftIoPageTable&) = delete;
  SoftIoPageTable& operator=(const SoftIoPageTable&) = delete;

  DomainId domain() const { return domain_; }
  DomainKind kind() const { return kind_; }

  // Maps every page touching [iova, iova + length) with `perm` (replacing earlier perms).
  // INVALID_ARGUMENT for an empty range or one that leaves the 48-bit IOVA space.
  absl::Status map(uint64_t iova, uint64_t length, uint8_t perm);
  // Unmaps every page touching [iova, iova + length). Out-of-range parts are ignored.
  void unmap(uint64_t iova, uint64_t length);

  // The entry of the page holding `iova`: kPresent | perm bits, or 0 if unmapped.
  uint8_t lookup(uint64_t iova) const;
  // True if the page holding `iova` is mapped with every R/W/X bit of `perm` (PRIV is ignored).
  bool allows(uint64_t iova, uint8_t perm) const {
    const uint8_t need = perm & (perm::kRead | perm::kWrite | perm::kExec);
    const uint8_t e = lookup(iova);
    return (e & kPresent) != 0 && (e & need) == need;
  }

  uint64_t mappedPages() const { return mapped_pages_.load(std::memory_order_relaxed); }

 private:
  struct Leaf {
    std::array<std::atomic<uint8_t>, 512> entries{};
  };
  struct Level2 {
    std::array<std::atomic<Leaf*>, 512> next{};
  };
  struct Level1 {
    std::array<std::atomic<Level2*>, 512> next{};
  };
  struct Level0 {
    std::array<std::atomic<Level1*>, 512> next{};
  };
  Leaf* leafFor(uint64_t page, bool create);

  const DomainId domain_;
  const DomainKind kind_;
  Level0 root_;
  std::mutex grow_mu_;
  std::vector<std::unique_ptr<Level1>> level1_;  // guarded by grow_mu_
  std::vector<std::unique_ptr<Level2>> level2_;  // guarded by grow_mu_
  std::vector<std::unique_ptr<Leaf>> leaves_;    // guarded by grow_mu_
  std::atomic<uint64_t> mapped_pages_{0};
};

}  // namespace iopf::sim
