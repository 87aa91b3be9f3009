// The system-call seam of the iommufd backend: everything it does to a file descriptor goes through
// a KernelIo, so the unit tests drive the backend against a fake FAULT fd (tests/backends/iommufd)
// and the real backend uses SystemKernelIo.
#pragma once

#include <sys/types.h>

#include <cstddef>

namespace iopf::iommufd {

// Every method returns >= 0 on success and -errno on failure (never sets errno for the caller).
// Thread-safety: MUST be callable from several threads at once (the backend serialises per fault
// fd itself).
class KernelIo {
 public:
  virtual ~KernelIo() = default;
  virtual ssize_t read(int fd, void* buf, size_t count) = 0;
  virtual ssize_t write(int fd, const void* buf, size_t count) = 0;
  // `request` is one of abi::k*; `arg` the matching argument struct.
  virtual int ioctl(int fd, unsigned long request, void* arg) = 0;
  virtual int close(int fd) = 0;
};

// The real thing: read(2), write(2), ioctl(2), close(2); EINTR is retried.
class SystemKernelIo final : public KernelIo {
 public:
  ssize_t read(int fd, void* buf, size_t count) override;
  ssize_t write(int fd, const void* buf, size_t count) override;
  int ioctl(int fd, unsigned long request, void* arg) override;
  int close(int fd) override;

  // The process-wide instance (stateless).
  static SystemKernelIo& instance();
};

}  // namespace iopf::iommufd
