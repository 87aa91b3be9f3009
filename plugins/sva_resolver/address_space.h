// Address-space providers of the SVA resolver: where a PASID's mappings come from and how a page
// is made present before it is mapped for the device (docs/plugins/sva_resolver.md).
//
// Threading: a provider belongs to one handler instance and is only called from its handle(),
// one group at a time (the plugin ABI's contract): no locking.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proc_maps.h"

namespace iopf::plugins::sva_resolver {

inline constexpr uint64_t kPageSize = 4096;

enum class Lookup : uint8_t {
  kFound = 0,
  kNoMapping = 1,  // no mapping holds the address
  kGone = 2,       // the address space is gone (the process exited): sticky
};

class AddressSpaceProvider {
 public:
  virtual ~AddressSpaceProvider() = default;
  virtual std::string_view kind() const = 0;
  // Finds the mapping holding addr.
  virtual Lookup find(uint64_t addr, Mapping& out) = 0;
  // Makes [start, start + length) present; start and length are page aligned and inside one
  // mapping that find() returned. Returns the bytes made present from `start` (whole pages; 0 if
  // not even the first page could be). Sets `gone` if the address space disappeared.
  virtual uint64_t populate(uint64_t start, uint64_t length, bool& gone) = 0;
  // False once the address space is gone (checked before a request is coalesced).
  virtual bool alive() { return true; }
};

// A declared set of regions (tests, the demo, the benchmark): nothing to populate.
class SimulatedAddressSpace final : public AddressSpaceProvider {
 public:
  // `regions`: sorted, non-overlapping, non-empty (the config validation checks).
  explicit SimulatedAddressSpace(std::vector<Mapping> regions) : regions_(std::move(regions)) {}
  std::string_view kind() const override { return "simulated"; }
  Lookup find(uint64_t addr, Mapping& out) override;
  uint64_t populate(uint64_t, uint64_t length, bool&) override { return length; }

 private:
  std::vector<Mapping> regions_;
};

// A live process by PID.
// - Mappings come from /proc/PID/maps, cached; re-read when an address misses the cache and when
//   the cache is older than the refresh interval.
// - Pages are made present by reading them with process_vm_readv into a private buffer (the kernel
//   faults them in as it would for ptrace access: anonymous memory is allocated or swapped in,
//   file pages are read). The process's memory is never written.
// - The process is tracked by a pidfd taken at config time: once it exits, every later lookup is
//   kGone, even if its PID is reused by another process.
class ProcessAddressSpace final : public AddressSpaceProvider {
 public:
  // Opens the process. Returns nullptr and sets *error if it does not exist or its maps cannot
  // be read (permissions: the caller needs ptrace access, PTRACE_MODE_READ, to the process).
  static std::unique_ptr<ProcessAddressSpace> open(pid_t pid, int64_t refresh_interval_ns,
                                                   uint32_t max_populate_pages, std::string* error);
  // Only open() can make the key.
  class Key {
    friend class ProcessAddressSpace;
    Key() = default;
  };
  ProcessAddressSpace(Key, pid_t pid, int pidfd, int64_t refresh_interval_ns, uint32_t max_populate_pages);
  ~ProcessAddressSpace() override;
  ProcessAddressSpace(const ProcessAddressSpace&) = delete;
  ProcessAddressSpace& operator=(const ProcessAddressSpace&) = delete;

  std::string_view kind() const override { return "process"; }
  Lookup find(uint64_t addr, Mapping& out) override;
  uint64_t populate(uint64_t start, uint64_t length, bool& gone) override;
  bool alive() override { return !exited(); }
  // Counters bumped on every maps read and every skipped line (owned by the caller, who keeps them
  // alive as long as this provider).
  void setCounters(std::atomic<uint64_t>* refreshes, std::atomic<uint64_t>* bad_lines) {
    refreshes_ = refreshes;
    bad_lines_ = bad_lines;
  }

  pid_t pid() const { return pid_; }

 private:
  // Re-reads the maps. False if the process is gone (or its maps became unreadable).
  bool refresh();
  // True once the process has exited (pidfd readable); sticky.
  bool exited();

  const pid_t pid_;
  const int pidfd_;  // -1 if pidfd_open is unavailable: then kill(pid, 0) (PID reuse undetected)
  const int64_t refresh_interval_ns_;
  std::vector<Mapping> mappings_;
  int64_t read_at_ns_ = 0;
  bool gone_ = false;
  std::string text_;           // maps file text, capacity reused
  std::vector<char> scratch_;  // process_vm_readv destination
  std::atomic<uint64_t>* refreshes_ = nullptr;
  std::atomic<uint64_t>* bad_lines_ = nullptr;
};

}  // namespace iopf::plugins::sva_resolver
