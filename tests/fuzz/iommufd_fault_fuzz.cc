// Fuzz target: what the iommufd backend makes of the bytes read(2) returns from a FAULT fd
// (struct iommu_hwpt_pgfault records, iopf-kernel.md §1.4). The kernel is the outside party here: a
// record run, its grouping by cookie, LAST_PAGE fix-ups, unknown dev_ids, reissued cookies, short
// or odd-sized reads, EINVAL growth and errors all come from the input; every delivered group is
// then answered (sometimes twice, sometimes with a stale token) through the backend's write path.
//
// Input: a sequence of read results. Each starts with a control byte c:
//   c % 8 == 0: read returns -EINVAL      c % 8 == 1: read returns 0      c % 8 == 2: -EIO
//   otherwise: the next byte n, then min(n * 8 + c / 8, remaining) bytes are what read returns.
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "iommufd_backend.h"
#include "kernel_io.h"

namespace {

using iopf::iommufd::KernelIo;

class FuzzKernelIo final : public KernelIo {
 public:
  FuzzKernelIo(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  ssize_t read(int, void* buf, size_t count) override {
    if (pos_ >= size_) return 0;
    const uint8_t c = data_[pos_++];
    switch (c % 8) {
      case 0:
        return -EINVAL;
      case 1:
        return 0;
      case 2:
        return -EIO;
      default:
        break;
    }
    if (pos_ >= size_) return 0;
    size_t n = size_t{data_[pos_++]} * 8 + c / 8;
    n = std::min({n, size_ - pos_, count});
    std::memcpy(buf, data_ + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(int, const void*, size_t count) override {
    // Every other write is short by one response (the kernel refused an entry).
    ++writes_;
    if ((writes_ & 1) == 0 && count >= 16) return static_cast<ssize_t>(count - 8);
    return static_cast<ssize_t>(count);
  }
  // Every ioctl is "known" (EINVAL, as for a bad size) so the probe finds a usable FAULT-capable kernel.
  int ioctl(int, unsigned long, void*) override { return -EINVAL; }
  int close(int) override { return 0; }  // the fuzz target owns and closes its fds
  bool exhausted() const { return pos_ >= size_; }
  uint8_t nextByte() { return pos_ < size_ ? data_[pos_] : 0; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t writes_ = 0;
};

class CollectingSink final : public iopf::RouterSink {
 public:
  iopf::BackendId backendId() const override { return 1; }
  absl::StatusOr<iopf::DeviceId> addDevice(const iopf::DeviceSpec&) override {
    // Refuse every fourth device: the backend must answer those groups itself.
    if (++devices_ % 4 == 0) return absl::ResourceExhaustedError("fuzz: device refused");
    return static_cast<iopf::DeviceId>(devices_);
  }
  absl::Status removeDevice(iopf::DeviceId) override { return absl::OkStatus(); }
  void deliver(std::span<const iopf::PageRequest> requests) override {
    delivered.insert(delivered.end(), requests.begin(), requests.end());
  }
  void discardPartial() override {}
  std::vector<iopf::PageRequest> delivered;

 private:
  uint32_t devices_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  int fault[2];
  int iommu[2];
  if (::pipe(fault) != 0) return 0;
  if (::pipe(iommu) != 0) {
    ::close(fault[0]);
    ::close(fault[1]);
    return 0;
  }
  const char one = 1;
  (void)!::write(fault[1], &one, 1);  // level-triggered EPOLLIN for the whole run
  {
    FuzzKernelIo io(data, size);
    CollectingSink sink;
    iopf::iommufd::IommufdBackendOptions options;
    options.io = &io;
    options.iommufd = iommu[0];
    options.own_iommufd = false;
    options.reader_thread = false;
    options.max_read_bytes = iopf::iommufd::abi::kDefaultReadBytes * 4;
    auto backend = iopf::iommufd::IommufdBackend::create(options);
    if (backend.ok() && (*backend)->start(sink).ok() && (*backend)->adoptFaultQueue(1, fault[0]).ok()) {
      for (int round = 0; round < 256 && !io.exhausted(); ++round) {
        (*backend)->pollOnce(0);
        std::vector<iopf::Response> responses;
        for (const iopf::PageRequest& r : sink.delivered) {
          if (!r.last) continue;
          iopf::Response resp;
          resp.device = r.device;
          resp.grpid = r.grpid;
          resp.pasid = r.pasid;
          resp.cookie = r.cookie;
          const uint8_t pick = io.nextByte();
          resp.code = static_cast<iopf::ResponseCode>(pick % 3);
          responses.push_back(resp);
          if (pick & 0x80) responses.push_back(resp);  // a duplicate answer
          if (pick & 0x40) {
            resp.cookie = resp.cookie.value_or(0) ^ 0x5a5a;  // a stale or unknown token
            responses.push_back(resp);
          }
        }
        sink.delivered.clear();
        if (!responses.empty()) (*backend)->respond(responses);
      }
    }
  }
  ::close(fault[0]);
  ::close(fault[1]);
  ::close(iommu[0]);
  ::close(iommu[1]);
  return 0;
}
