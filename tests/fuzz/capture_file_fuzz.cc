// Fuzz target: capture files (core/include/iopf/capture_file.h, proto/iopf/v1/capture.proto) as the
// simulated backend's replay and any tool reads them: magic, version, length-prefixed header and
// records, each record turned back into an Event. A capture file comes from disk: anything goes.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <string>

#include "iopf/capture_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int fd = ::memfd_create("iopf-capture-fuzz", MFD_CLOEXEC);
  if (fd < 0) return 0;
  size_t off = 0;
  while (off < size) {
    const ssize_t n = ::write(fd, data + off, size - off);
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  {
    auto reader = iopf::capture::Reader::open("/proc/self/fd/" + std::to_string(fd));
    if (reader.ok()) {
      iopf::v1::CaptureRecord record;
      for (int i = 0; i < 100000; ++i) {
        auto more = (*reader)->next(record);
        if (!more.ok() || !*more) break;
        (void)iopf::capture::fromRecord(record);
      }
    }
  }
  ::close(fd);
  return 0;
}
