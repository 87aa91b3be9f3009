#include "address_space.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "iopf/plugin_abi.h"

namespace iopf::plugins::sva_resolver {
namespace {

int64_t steadyNow() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Reads a whole /proc file into `out` (its capacity reused). False with errno set on failure.
bool readProcFile(const std::string& path, std::string& out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  out.clear();
  char buf[16384];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int saved = errno;
      ::close(fd);
      errno = saved;
      return false;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return true;
}

std::string mapsPath(pid_t pid) {
  return "/proc/" + std::to_string(pid) + "/maps";
}

}  // namespace

Lookup SimulatedAddressSpace::find(uint64_t addr, Mapping& out) {
  const Mapping* m = findMapping(regions_, addr);
  if (m == nullptr) return Lookup::kNoMapping;
  out = *m;
  return Lookup::kFound;
}

std::unique_ptr<ProcessAddressSpace> ProcessAddressSpace::open(pid_t pid, int64_t refresh_interval_ns,
                                                               uint32_t max_populate_pages,
                                                               std::string* error) {
  if (pid <= 0) {
    if (error) *error = "pid must be > 0";
    return nullptr;
  }
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0 && errno != ENOSYS) {
    if (error) *error = "process " + std::to_string(pid) + ": " + std::strerror(errno);
    return nullptr;
  }
  auto p = std::make_unique<ProcessAddressSpace>(Key(), pid, pidfd, refresh_interval_ns, max_populate_pages);
  if (!p->refresh()) {
    if (error) {
      *error = "process " + std::to_string(pid) + ": cannot read " + mapsPath(pid) + ": " +
               (p->gone_ ? std::string("the process exited") : std::string(std::strerror(errno)));
    }
    return nullptr;
  }
  // process_vm_readv needs more than the maps file (ptrace access mode ATTACH): find out now.
  for (const Mapping& m : p->mappings_) {
    if ((m.perm & IOPF_PERM_READ) == 0) continue;
    char byte = 0;
    iovec local{&byte, 1};
    iovec remote{reinterpret_cast<void*>(static_cast<uintptr_t>(m.start)), 1};
    if (::process_vm_readv(pid, &local, 1, &remote, 1, 0) == 1) break;
    if (errno == EPERM) {
      if (error) {
        *error = "process " + std::to_string(pid) + ": process_vm_readv is not permitted (" +
                 std::strerror(EPERM) +
                 "): the resolver needs ptrace access to it (same user and dumpable, or CAP_SYS_PTRACE; "
                 "see Yama's ptrace_scope)";
      }
      return nullptr;
    }
  }
  return p;
}

ProcessAddressSpace::ProcessAddressSpace(Key, pid_t pid, int pidfd, int64_t refresh_interval_ns,
                                         uint32_t max_populate_pages)
    : pid_(pid),
      pidfd_(pidfd),
      refresh_interval_ns_(refresh_interval_ns),
      scratch_(static_cast<size_t>(max_populate_pages) * kPageSize) {}

ProcessAddressSpace::~ProcessAddressSpace() {
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool ProcessAddressSpace::exited() {
  if (gone_) return true;
  if (pidfd_ >= 0) {
    pollfd p{pidfd_, POLLIN, 0};
    if (::poll(&p, 1, 0) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR)) != 0) gone_ = true;
  } else if (::kill(pid_, 0) != 0 && errno == ESRCH) {
    gone_ = true;
  }
  return gone_;
}

bool ProcessAddressSpace::refresh() {
  if (exited()) return false;
  const int64_t now = steadyNow();
  if (!readProcFile(mapsPath(pid_), text_)) {
    const int saved = errno;
    if (saved == ENOENT || saved == ESRCH || exited()) gone_ = true;
    errno = saved;
    return false;
  }
  ParsedMaps parsed = parseProcMaps(text_);
  // A zombie (exited, not reaped) has an empty maps file; so has a kernel thread.
  if (parsed.mappings.empty() && exited()) return false;
  // Read before the exit check: if the process exited meanwhile, the PID may name another one.
  if (exited()) return false;
  mappings_ = std::move(parsed.mappings);
  read_at_ns_ = now;
  if (bad_lines_ != nullptr) bad_lines_->fetch_add(parsed.bad_lines, std::memory_order_relaxed);
  if (refreshes_ != nullptr) refreshes_->fetch_add(1, std::memory_order_relaxed);
  return true;
}

Lookup ProcessAddressSpace::find(uint64_t addr, Mapping& out) {
  if (gone_) return Lookup::kGone;
  if (steadyNow() - read_at_ns_ >= refresh_interval_ns_ && !refresh()) {
    return gone_ ? Lookup::kGone : Lookup::kNoMapping;
  }
  const Mapping* m = findMapping(mappings_, addr);
  if (m == nullptr) {
    // A miss: the process may have mapped it since the last read.
    if (!refresh()) return gone_ ? Lookup::kGone : Lookup::kNoMapping;
    m = findMapping(mappings_, addr);
    if (m == nullptr) return Lookup::kNoMapping;
  }
  out = *m;
  return Lookup::kFound;
}

uint64_t ProcessAddressSpace::populate(uint64_t start, uint64_t length, bool& gone) {
  if (exited()) {
    gone = true;
    return 0;
  }
  if (length > scratch_.size()) length = scratch_.size();
  iovec local{scratch_.data(), static_cast<size_t>(length)};
  iovec remote{reinterpret_cast<void*>(static_cast<uintptr_t>(start)), static_cast<size_t>(length)};
  const ssize_t n = ::process_vm_readv(pid_, &local, 1, &remote, 1, 0);
  // The read went to whatever process has this PID now: only trust it if ours is still alive
  // (a PID is not reused before its process is reaped, and the pidfd sees the exit first).
  if (exited() || (n < 0 && errno == ESRCH)) {
    gone_ = true;
    gone = true;
    return 0;
  }
  if (n <= 0) return 0;
  return static_cast<uint64_t>(n) & ~(kPageSize - 1);
}

}  // namespace iopf::plugins::sva_resolver
