#include "kernel_io.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>

namespace iopf::iommufd {

ssize_t SystemKernelIo::read(int fd, void* buf, size_t count) {
  for (;;) {
    const ssize_t n = ::read(fd, buf, count);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

ssize_t SystemKernelIo::write(int fd, const void* buf, size_t count) {
  for (;;) {
    const ssize_t n = ::write(fd, buf, count);
    if (n >= 0) return n;
    if (errno != EINTR) return -errno;
  }
}

int SystemKernelIo::ioctl(int fd, unsigned long request, void* arg) {
  for (;;) {
    if (::ioctl(fd, request, arg) == 0) return 0;
    if (errno != EINTR) return -errno;
  }
}

int SystemKernelIo::close(int fd) {
  // close(2) must not be retried on EINTR on Linux: the fd is gone either way.
  return ::close(fd) == 0 ? 0 : -errno;
}

SystemKernelIo& SystemKernelIo::instance() {
  static SystemKernelIo io;  // stateless; lives for the process
  return io;
}

}  // namespace iopf::iommufd
