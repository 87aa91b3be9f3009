#include "iommufd_backend.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "iopf/router.h"

namespace iopf::iommufd {
namespace {

// Token = generation << kSlotBits | slot index. 2^20 groups outstanding per backend at most.
constexpr uint32_t kSlotBits = 20;
constexpr uint32_t kSlotMask = (1u << kSlotBits) - 1;
constexpr uint32_t kGenerationMask = (1u << (32 - kSlotBits)) - 1;
constexpr uint64_t kWakeTag = uint64_t{1} << 32;

std::string errnoText(int negative_errno) {
  return absl::StrCat(std::strerror(-negative_errno), " (errno ", -negative_errno, ")");
}

absl::Status errnoStatus(int negative_errno, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": ", errnoText(negative_errno));
  switch (-negative_errno) {
    case ENOENT: return absl::NotFoundError(msg);
    case EBUSY: return absl::FailedPreconditionError(msg);
    case EEXIST: return absl::AlreadyExistsError(msg);
    case ENOTTY:
    case EOPNOTSUPP: return absl::UnimplementedError(msg);
    case ENOMEM:
    case ENOSPC: return absl::ResourceExhaustedError(msg);
    case EPERM:
    case EACCES: return absl::PermissionDeniedError(msg);
    case EINVAL:
    case EFAULT:
    case EOVERFLOW:
    case E2BIG: return absl::InvalidArgumentError(msg);
    default: return absl::InternalError(msg);
  }
}

uint32_t wireCode(ResponseCode code) {
  return code == ResponseCode::kSuccess ? abi::kPageRespSuccess : abi::kPageRespInvalid;
}

}  // namespace

// --- construction ---------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<IommufdBackend>> IommufdBackend::create(IommufdBackendOptions options) {
  if (options.read_bytes < abi::kDefaultReadBytes || options.read_bytes % abi::kRecordSize != 0 ||
      options.max_read_bytes < options.read_bytes || options.max_read_bytes % abi::kRecordSize != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "iommufd backend: read_bytes %u / max_read_bytes %u must be multiples of 40, read_bytes >= "
        "10240 and max_read_bytes >= read_bytes (R9)",
        options.read_bytes, options.max_read_bytes));
  }
  KernelIo& io = options.io != nullptr ? *options.io : SystemKernelIo::instance();
  int fd = options.iommufd;
  bool own = options.own_iommufd.value_or(fd < 0);
  if (fd < 0) {
    fd = ::open(options.device_path.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      return errnoStatus(-errno, absl::StrCat("iommufd backend: open ", options.device_path,
                                              " (needs CONFIG_IOMMUFD, Linux 6.2+)"));
    }
    own = true;
  }
  absl::StatusOr<FeatureReport> report = probeFeatures(io, fd);
  if (!report.ok() || !report->usable()) {
    if (own) io.close(fd);
    if (!report.ok()) return report.status();
    return absl::FailedPreconditionError(
        absl::StrCat("iommufd backend: the running kernel cannot deliver page faults to user space\n",
                     report->toString()));
  }
  std::unique_ptr<IommufdBackend> backend(new IommufdBackend(std::move(options), io, fd, own));
  backend->features_ = *std::move(report);
  backend->epoll_fd_ = ::epoll_create1(EPOLL_CLOEXEC);
  // A pipe rather than an eventfd: minimal test kernels (tinyconfig) have no CONFIG_EVENTFD.
  int wake[2] = {-1, -1};
  if (backend->epoll_fd_ < 0 || ::pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    return errnoStatus(-errno, "iommufd backend: epoll_create1/pipe2");
  }
  backend->wake_fd_ = wake[0];
  backend->wake_write_fd_ = wake[1];
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeTag;
  if (::epoll_ctl(backend->epoll_fd_, EPOLL_CTL_ADD, backend->wake_fd_, &ev) != 0) {
    return errnoStatus(-errno, "iommufd backend: epoll_ctl(wake fd)");
  }
  return backend;
}

IommufdBackend::IommufdBackend(IommufdBackendOptions options, KernelIo& io, int iommufd, bool own)
    : options_(std::move(options)), io_(io), iommufd_(iommufd), own_iommufd_(own) {}

IommufdBackend::~IommufdBackend() {
  stop();
  (void)teardown();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (wake_write_fd_ >= 0) ::close(wake_write_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

// --- Backend ----------------------------------------------------------------------------------------

absl::Status IommufdBackend::start(RouterSink& sink) {
  if (sink_ != nullptr) return absl::FailedPreconditionError("iommufd backend: started twice");
  sink_ = &sink;
  if (options_.reader_thread) reader_ = std::thread([this] { readerLoop(); });
  return absl::OkStatus();
}

void IommufdBackend::stop() {
  stopping_.store(true);
  if (wake_write_fd_ >= 0) {
    const char one = 1;
    (void)!::write(wake_write_fd_, &one, 1);  // never drained: stopping_ stays set
  }
  if (reader_.joinable()) reader_.join();
}

void IommufdBackend::readerLoop() {
  epoll_event events[16];
  while (!stopping_.load()) {
    const int n = ::epoll_wait(epoll_fd_, events, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      counters_.read_errors.fetch_add(1, std::memory_order_relaxed);
      reader_errno_.store(errno, std::memory_order_release);
      return;
    }
    std::lock_guard reader_lock(reader_mu_);
    for (int i = 0; i < n && !stopping_.load(); ++i) {
      if (events[i].data.u64 == kWakeTag) continue;
      if (FaultQueue* q = findQueue(static_cast<uint32_t>(events[i].data.u64))) {
        readQueue(*q, (events[i].events & EPOLLIN) != 0);
      }
    }
  }
}

size_t IommufdBackend::pollOnce(int timeout_ms) {
  std::lock_guard reader_lock(reader_mu_);
  epoll_event events[16];
  const int n = ::epoll_wait(epoll_fd_, events, 16, timeout_ms);
  size_t groups = 0;
  for (int i = 0; i < n; ++i) {
    if (events[i].data.u64 == kWakeTag) continue;
    if (FaultQueue* q = findQueue(static_cast<uint32_t>(events[i].data.u64))) {
      groups += readQueue(*q, (events[i].events & EPOLLIN) != 0);
    }
  }
  return groups;
}

std::optional<DeviceId> IommufdBackend::routerDevice(uint32_t dev_id) {
  std::lock_guard lock(devices_mu_);
  if (auto it = devices_.find(dev_id); it != devices_.end()) return it->second;
  if (sink_ == nullptr) return std::nullopt;
  DeviceSpec spec = options_.default_device_spec;
  if (spec.name.empty()) spec.name = absl::StrCat("iommufd-dev-", dev_id);
  spec.backend_handle = dev_id;
  absl::StatusOr<DeviceId> id = sink_->addDevice(spec);
  if (!id.ok()) return std::nullopt;
  counters_.unknown_devices.fetch_add(1, std::memory_order_relaxed);
  devices_.emplace(dev_id, *id);
  return *id;
}

// Reads until the queue is empty (R9) and delivers the groups. The reader thread or pollOnce only.
size_t IommufdBackend::readQueue(FaultQueue& queue, bool readable_hint) {
  requests_.clear();
  size_t groups = 0;
  struct Orphan {
    abi::IommuHwptPageResponse wire;
    uint32_t token;
    uint32_t grpid;
  };
  std::vector<Orphan> orphans;  // rare: the router refused the device
  {
    std::lock_guard io_lock(queue.io_mu);
    if (queue.fd < 0) return 0;
    if (queue.buffer.empty()) queue.buffer.resize(options_.read_bytes / abi::kRecordSize);
    bool first = true;
    for (int round = 0; round < 64; ++round) {
      const size_t bytes = queue.buffer.size() * abi::kRecordSize;
      const ssize_t n = io_.read(queue.fd, queue.buffer.data(), bytes);
      counters_.read_calls.fetch_add(1, std::memory_order_relaxed);
      // EINVAL (6.12.101+): the first group does not fit. 0 right after EPOLLIN: the same on
      // older kernels. Either way: grow and retry.
      const bool too_small = n == -EINVAL || (n == 0 && first && readable_hint);
      first = false;
      if (too_small && bytes < options_.max_read_bytes) {
        counters_.read_grown.fetch_add(1, std::memory_order_relaxed);
        queue.buffer.resize(std::min(bytes * 2, options_.max_read_bytes) / abi::kRecordSize);
        first = n == 0;  // old kernels: 0 again may still mean "too small"; keep growing
        continue;
      }
      if (n == 0) {
        counters_.read_empty.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      if (n < 0 || n % abi::kRecordSize != 0) {
        counters_.read_errors.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      const size_t count = static_cast<size_t>(n) / abi::kRecordSize;
      counters_.records.fetch_add(count, std::memory_order_relaxed);
      // Resolve devices first: addDevice calls into the router, never under state_mu_.
      for (size_t i = 0; i < count; ++i) (void)routerDevice(queue.buffer[i].dev_id);
      std::lock_guard state_lock(state_mu_);
      size_t i = 0;
      while (i < count) {
        const uint32_t cookie = queue.buffer[i].cookie;
        size_t j = i + 1;
        while (j < count && queue.buffer[j].cookie == cookie) ++j;  // one group: [i, j)
        const uint32_t dev_id = queue.buffer[j - 1].dev_id;
        CookieState state = CookieState::kOutstanding;
        if (queue.fenced_all || std::find(queue.fenced_devs.begin(), queue.fenced_devs.end(),
                                          dev_id) != queue.fenced_devs.end()) {
          state = CookieState::kKernelAutoResponded;  // a VMM detach is in flight (quiesceBegin)
        }
        if (auto it = queue.live.find(cookie); it != queue.live.end()) {
          // The kernel reissued a cookie we hold Outstanding: it answered that group behind our
          // back (a detach we were not told about). Never write the old one.
          Slot& old = slots_[it->second];
          old.state = CookieState::kKernelAutoResponded;
          --outstanding_;
          ++retiring_;
          queue.live.erase(it);
          counters_.reissued_outstanding.fetch_add(1, std::memory_order_relaxed);
        }
        const uint32_t token = allocSlot(queue.fault_id, cookie, dev_id, queue.epoch, state);
        if (state == CookieState::kOutstanding) queue.live[cookie] = token & kSlotMask;
        std::optional<DeviceId> device;
        {
          // devices_ only grows and was filled above; read it without re-locking state order.
          std::lock_guard dev_lock(devices_mu_);
          if (auto it = devices_.find(dev_id); it != devices_.end()) device = it->second;
        }
        if (!device) {
          orphans.push_back({{cookie, abi::kPageRespInvalid}, token, queue.buffer[j - 1].grpid});
          i = j;
          continue;
        }
        for (size_t k = i; k < j; ++k) {
          const abi::IommuHwptPgfault& rec = queue.buffer[k];
          PageRequest r;
          r.device = *device;
          r.grpid = rec.grpid;
          if (rec.flags & abi::kPgfaultPasidValid) r.pasid = rec.pasid;
          r.addr = rec.addr;
          r.perm = static_cast<uint8_t>(rec.perm & abi::kPgfaultPermMask);
          r.last = k + 1 == j;
          const bool kernel_last = (rec.flags & abi::kPgfaultLastPage) != 0;
          if (kernel_last != r.last) counters_.group_fixups.fetch_add(1, std::memory_order_relaxed);
          r.length_hint = rec.length;
          r.cookie = token;
          requests_.push_back(r);
        }
        ++groups;
        i = j;
      }
    }
    if (!orphans.empty()) {
      // The router refused the device: answer INVALID here so the device is not left waiting.
      std::vector<abi::IommuHwptPageResponse> wire;
      std::vector<uint32_t> tokens, grpids;
      for (const Orphan& o : orphans) {
        wire.push_back(o.wire);
        tokens.push_back(o.token);
        grpids.push_back(o.grpid);
      }
      writeBatch(queue, wire, tokens, grpids);
    }
  }
  counters_.groups.fetch_add(groups, std::memory_order_relaxed);
  if (!requests_.empty() && sink_ != nullptr) sink_->deliver(requests_);
  return groups;
}

// --- slots ------------------------------------------------------------------------------------------

uint32_t IommufdBackend::allocSlot(uint32_t fault_id, uint32_t cookie, uint32_t dev_id,
                                   uint64_t epoch, CookieState state) {
  uint32_t index;
  if (!free_slots_.empty()) {
    index = free_slots_.back();
    free_slots_.pop_back();
  } else {
    index = static_cast<uint32_t>(slots_.size());
    slots_.emplace_back();
  }
  Slot& s = slots_[index];
  s.fault_id = fault_id;
  s.cookie = cookie;
  s.dev_id = dev_id;
  s.epoch = epoch;
  s.state = state;
  s.used = true;
  s.generation = static_cast<uint16_t>((s.generation + 1) & kGenerationMask);
  if (state == CookieState::kOutstanding) {
    ++outstanding_;
  } else {
    ++retiring_;
  }
  return (uint32_t{s.generation} << kSlotBits) | index;
}

IommufdBackend::Slot* IommufdBackend::slotOf(uint32_t token) {
  const uint32_t index = token & kSlotMask;
  if (index >= slots_.size()) return nullptr;
  Slot& s = slots_[index];
  if (!s.used || s.generation != (token >> kSlotBits)) return nullptr;
  return &s;
}

const IommufdBackend::Slot* IommufdBackend::slotOf(uint32_t token) const {
  return const_cast<IommufdBackend*>(this)->slotOf(token);
}

// Retires a slot for good (Responded, or KernelAutoResponded and answered by the router).
void IommufdBackend::freeSlot(uint32_t token) {
  Slot* s = slotOf(token);
  if (s == nullptr) return;
  if (s->state == CookieState::kOutstanding) {
    --outstanding_;
    if (FaultQueue* q = findQueue(s->fault_id)) {
      auto it = q->live.find(s->cookie);
      if (it != q->live.end() && it->second == (token & kSlotMask)) q->live.erase(it);
    }
  } else {
    --retiring_;
  }
  s->used = false;
  free_slots_.push_back(token & kSlotMask);
}

bool IommufdBackend::slotLive(const FaultQueue& queue, const Slot& slot) const {
  if (slot.state != CookieState::kOutstanding) return false;
  uint64_t fence = queue.queue_fence;
  if (auto it = queue.dev_fence.find(slot.dev_id); it != queue.dev_fence.end()) {
    fence = std::max(fence, it->second);
  }
  return slot.epoch >= fence;
}

void IommufdBackend::fenceLocked(FaultQueue& queue, std::optional<uint32_t> dev_id) {
  const uint64_t fence = ++queue.epoch;
  if (dev_id) {
    queue.dev_fence[*dev_id] = fence;
  } else {
    queue.queue_fence = fence;
  }
  for (auto it = queue.live.begin(); it != queue.live.end();) {
    Slot& s = slots_[it->second];
    if (!dev_id || s.dev_id == *dev_id) {
      s.state = CookieState::kKernelAutoResponded;
      --outstanding_;
      ++retiring_;
      counters_.quiesced.fetch_add(1, std::memory_order_relaxed);
      queue.live.erase(it++);
    } else {
      ++it;
    }
  }
}

// --- responding ---------------------------------------------------------------------------------------

void IommufdBackend::respond(std::span<const Response> responses) {
  // Per-thread scratch: shards call concurrently; steady state allocates nothing.
  thread_local std::vector<std::pair<uint32_t, uint32_t>> order;  // (fault_id, index)
  thread_local std::vector<abi::IommuHwptPageResponse> wire;
  thread_local std::vector<uint32_t> tokens;
  thread_local std::vector<uint32_t> grpids;
  order.clear();
  {
    std::lock_guard lock(state_mu_);
    for (uint32_t i = 0; i < responses.size(); ++i) {
      const Response& r = responses[i];
      const Slot* s = r.cookie ? slotOf(*r.cookie) : nullptr;
      if (s == nullptr) {
        counters_.stale_tokens.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      order.emplace_back(s->fault_id, i);
    }
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  size_t pos = 0;
  while (pos < order.size()) {
    const uint32_t fault_id = order[pos].first;
    size_t end = pos;
    while (end < order.size() && order[end].first == fault_id) ++end;
    FaultQueue* queue = findQueue(fault_id);
    wire.clear();
    tokens.clear();
    grpids.clear();
    std::unique_lock<std::mutex> io_lock;
    if (queue != nullptr) io_lock = std::unique_lock(queue->io_mu);
    {
      std::lock_guard lock(state_mu_);
      for (size_t k = pos; k < end; ++k) {
        const Response& r = responses[order[k].second];
        const uint32_t token = *r.cookie;
        Slot* s = slotOf(token);
        if (s == nullptr) {  // a duplicate within the batch
          counters_.stale_tokens.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        if (r.delivery == Delivery::kKernelAnswered) {
          // The router says the kernel answered (detach/replace drain): never write (contract).
          counters_.kernel_answered.fetch_add(1, std::memory_order_relaxed);
          freeSlot(token);
          continue;
        }
        if (queue == nullptr || queue->fd < 0 || !slotLive(*queue, *s)) {
          counters_.dropped_auto_responded.fetch_add(1, std::memory_order_relaxed);
          freeSlot(token);
          continue;
        }
        if (r.code == ResponseCode::kFailure) {
          counters_.failure_downgraded.fetch_add(1, std::memory_order_relaxed);  // R2
        }
        wire.push_back({s->cookie, wireCode(r.code)});
        tokens.push_back(token);
        grpids.push_back(r.grpid);
      }
    }
    if (!wire.empty()) writeBatch(*queue, wire, tokens, grpids);
    pos = end;
  }
}

// Writes `wire` (under queue.io_mu): short writes resubmit the tail; the entry a write stops at is
// identified by the EINVAL of the resubmission, counted and dropped (R9, §2.4).
void IommufdBackend::writeBatch(FaultQueue& queue, std::vector<abi::IommuHwptPageResponse>& wire,
                                std::vector<uint32_t>& tokens,
                                const std::vector<uint32_t>& grpids) {
  const size_t n = wire.size();
  size_t off = 0;
  thread_local std::vector<uint8_t> verdict;  // 1 accepted, 0 refused
  verdict.assign(n, 0);
  while (off < n) {
    const ssize_t r = io_.write(queue.fd, &wire[off], (n - off) * abi::kResponseSize);
    counters_.write_calls.fetch_add(1, std::memory_order_relaxed);
    if (r > 0) {
      const size_t k = static_cast<size_t>(r) / abi::kResponseSize;
      for (size_t i = off; i < off + k; ++i) verdict[i] = 1;
      if (off + k < n) counters_.short_writes.fetch_add(1, std::memory_order_relaxed);
      off += k;
    } else if (r == -EINVAL) {
      counters_.write_rejected.fetch_add(1, std::memory_order_relaxed);
      ++off;  // the entry at `off` was refused: drop it, resubmit the rest
    } else {
      counters_.write_errors.fetch_add(n - off, std::memory_order_relaxed);
      off = n;  // ESPIPE/EFAULT/EBADF: nothing more can be written on this fd
    }
  }
  if (write_observer_) {
    for (size_t i = 0; i < n; ++i) {
      write_observer_({queue.fault_id, wire[i].cookie, wire[i].code, grpids[i], verdict[i] == 1});
    }
  }
  std::lock_guard lock(state_mu_);
  for (size_t i = 0; i < n; ++i) {
    if (verdict[i] == 1) counters_.responses_written.fetch_add(1, std::memory_order_relaxed);
    freeSlot(tokens[i]);  // Responded, or refused: the kernel no longer knows the cookie
  }
}

// --- objects ------------------------------------------------------------------------------------------

IommufdBackend::FaultQueue* IommufdBackend::findQueue(uint32_t fault_id) const {
  std::lock_guard lock(queues_mu_);
  auto it = queues_.find(fault_id);
  return it == queues_.end() ? nullptr : it->second.get();
}

absl::Status IommufdBackend::registerQueue(uint32_t fault_id, int fd, bool owned) {
  {
    std::lock_guard lock(queues_mu_);
    auto& slot = queues_[fault_id];
    if (slot && slot->fd >= 0) {
      io_.close(fd);
      return absl::AlreadyExistsError(
          absl::StrCat("iommufd backend: FAULT object ", fault_id, " is already watched (fd ",
                       slot->fd, ")"));
    }
    if (!slot) slot = std::make_unique<FaultQueue>();
    slot->fault_id = fault_id;
    slot->fd = fd;
    slot->owned = owned;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;  // level-triggered; EPOLLOUT is always set and means nothing (R9)
  ev.data.u64 = fault_id;
  if (::epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &ev) != 0) {
    return errnoStatus(-errno, absl::StrCat("iommufd backend: epoll_ctl(fault fd ", fd, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> IommufdBackend::allocIoas() {
  abi::IommuIoasAlloc cmd;
  if (int rc = io_.ioctl(iommufd_, abi::kIommuIoasAlloc, &cmd); rc != 0) {
    return errnoStatus(rc, "IOMMU_IOAS_ALLOC");
  }
  std::lock_guard lock(state_mu_);
  owned_ioas_.push_back(cmd.out_ioas_id);
  return cmd.out_ioas_id;
}

absl::StatusOr<uint32_t> IommufdBackend::allocFaultQueue() {
  abi::IommuFaultAlloc cmd;
  if (int rc = io_.ioctl(iommufd_, abi::kIommuFaultQueueAlloc, &cmd); rc != 0) {
    return errnoStatus(rc, "IOMMU_FAULT_QUEUE_ALLOC (needs Linux 6.11+)");
  }
  if (absl::Status s = registerQueue(cmd.out_fault_id, static_cast<int>(cmd.out_fault_fd), true);
      !s.ok()) {
    return s;
  }
  return cmd.out_fault_id;
}

absl::Status IommufdBackend::adoptFaultQueue(uint32_t fault_id, int fault_fd) {
  if (fault_fd < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("iommufd backend: FAULT object ", fault_id, ": invalid fd ", fault_fd));
  }
  // A fault fd is O_RDWR and not seekable; a 0-byte read is harmless and validates it somewhat.
  return registerQueue(fault_id, fault_fd, false);
}

int IommufdBackend::faultFd(uint32_t fault_id) const {
  FaultQueue* q = findQueue(fault_id);
  return q == nullptr ? -1 : q->fd;
}

absl::StatusOr<uint32_t> IommufdBackend::allocHwpt(const HwptSpec& spec) {
  abi::IommuHwptAlloc cmd;
  cmd.flags = spec.flags;
  cmd.dev_id = spec.dev_id;
  cmd.pt_id = spec.pt_id;
  cmd.data_type = spec.data_type;
  cmd.data_len = static_cast<uint32_t>(spec.data.size());
  cmd.data_uptr = reinterpret_cast<uintptr_t>(spec.data.data());
  if (spec.fault_id) {
    cmd.flags |= abi::kHwptFaultIdValid;
    cmd.fault_id = *spec.fault_id;
  }
  if (int rc = io_.ioctl(iommufd_, abi::kIommuHwptAlloc, &cmd); rc != 0) {
    return errnoStatus(rc, absl::StrFormat("IOMMU_HWPT_ALLOC(dev %u, pt %u, flags 0x%x, fault %s)",
                                           spec.dev_id, spec.pt_id, cmd.flags,
                                           spec.fault_id ? absl::StrCat(*spec.fault_id) : "none"));
  }
  std::lock_guard lock(state_mu_);
  owned_hwpts_.push_back(cmd.out_hwpt_id);
  if (spec.fault_id) hwpt_fault_[cmd.out_hwpt_id] = *spec.fault_id;
  return cmd.out_hwpt_id;
}

absl::Status IommufdBackend::destroyObject(uint32_t id) {
  abi::IommuDestroy cmd;
  cmd.id = id;
  if (int rc = io_.ioctl(iommufd_, abi::kIommuDestroy, &cmd); rc != 0) {
    return errnoStatus(rc, absl::StrCat("IOMMU_DESTROY(", id, ")",
                                        rc == -EBUSY ? " still referenced" : ""));
  }
  std::lock_guard lock(state_mu_);
  std::erase(owned_hwpts_, id);
  std::erase(owned_ioas_, id);
  hwpt_fault_.erase(id);
  return absl::OkStatus();
}

void IommufdBackend::noteAttached(uint32_t dev_id, uint32_t pt_id) {
  std::lock_guard lock(state_mu_);
  attached_[dev_id] = pt_id;
}

absl::StatusOr<DeviceId> IommufdBackend::addDevice(uint32_t dev_id, DeviceSpec spec) {
  std::lock_guard lock(devices_mu_);
  if (auto it = devices_.find(dev_id); it != devices_.end()) return it->second;
  if (sink_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat("iommufd backend: addDevice(dev_id ", dev_id, ") before start()"));
  }
  spec.backend_handle = dev_id;
  if (spec.name.empty()) spec.name = absl::StrCat("iommufd-dev-", dev_id);
  absl::StatusOr<DeviceId> id = sink_->addDevice(spec);
  if (!id.ok()) return id.status();
  devices_.emplace(dev_id, *id);
  return *id;
}

void IommufdBackend::setDomainIoas(DomainId domain, uint32_t ioas_id) {
  std::lock_guard lock(state_mu_);
  domain_ioas_[domain] = ioas_id;
}

// --- quiesce ------------------------------------------------------------------------------------------

absl::Status IommufdBackend::changeAttachment(uint32_t dev_id, uint32_t new_pt_id,
                                              const std::function<absl::Status()>& kernel_op,
                                              const RouterBinding& binding) {
  std::optional<uint32_t> old_fault;
  {
    std::lock_guard lock(state_mu_);
    if (auto a = attached_.find(dev_id); a != attached_.end()) {
      if (auto f = hwpt_fault_.find(a->second); f != hwpt_fault_.end()) old_fault = f->second;
    }
  }
  absl::Status status;
  FaultQueue* queue = old_fault ? findQueue(*old_fault) : nullptr;
  if (queue != nullptr) {
    // R5: retire the cookies and bump the epoch BEFORE the ioctl, with reads and writes of this
    // FAULT object held off until the kernel has auto-responded.
    std::lock_guard io_lock(queue->io_mu);
    {
      std::lock_guard lock(state_mu_);
      fenceLocked(*queue, dev_id);
    }
    status = kernel_op();
  } else {
    status = kernel_op();
  }
  if (status.ok()) {
    std::lock_guard lock(state_mu_);
    if (new_pt_id == 0) {
      attached_.erase(dev_id);
    } else {
      attached_[dev_id] = new_pt_id;
    }
  }
  if (binding.router != nullptr) {
    absl::Status routed =
        binding.new_domain
            ? binding.router->attach(binding.device, binding.pasid, *binding.new_domain).status()
            : binding.router->detach(binding.device, binding.pasid);
    if (status.ok()) status = routed;
  }
  return status;
}

absl::StatusOr<uint64_t> IommufdBackend::quiesceBegin(uint32_t fault_id,
                                                      std::optional<uint32_t> dev_id) {
  FaultQueue* queue = findQueue(fault_id);
  if (queue == nullptr) {
    return absl::NotFoundError(absl::StrCat("iommufd backend: quiesce of unknown FAULT object ",
                                            fault_id));
  }
  std::lock_guard io_lock(queue->io_mu);
  std::lock_guard lock(state_mu_);
  fenceLocked(*queue, dev_id);
  if (dev_id) {
    queue->fenced_devs.push_back(*dev_id);
  } else {
    queue->fenced_all = true;
  }
  return queue->epoch;
}

void IommufdBackend::quiesceEnd(uint32_t fault_id, std::optional<uint32_t> dev_id) {
  FaultQueue* queue = findQueue(fault_id);
  if (queue == nullptr) return;
  std::lock_guard io_lock(queue->io_mu);
  std::lock_guard lock(state_mu_);
  if (dev_id) {
    auto it = std::find(queue->fenced_devs.begin(), queue->fenced_devs.end(), *dev_id);
    if (it != queue->fenced_devs.end()) queue->fenced_devs.erase(it);
  } else {
    queue->fenced_all = false;
  }
}

absl::Status IommufdBackend::destroyFaultQueue(uint32_t fault_id) {
  FaultQueue* queue = findQueue(fault_id);
  if (queue == nullptr) {
    return absl::NotFoundError(absl::StrCat("iommufd backend: unknown FAULT object ", fault_id));
  }
  {
    std::lock_guard io_lock(queue->io_mu);
    {
      std::lock_guard lock(state_mu_);
      fenceLocked(*queue, std::nullopt);
    }
    if (queue->fd >= 0) {
      ::epoll_ctl(epoll_fd_, EPOLL_CTL_DEL, queue->fd, nullptr);
      io_.close(queue->fd);
      queue->fd = -1;
    }
  }
  if (!queue->owned) return absl::OkStatus();  // the VMM's object: closing our fd is all we do
  absl::Status s = destroyObject(fault_id);
  if (s.ok()) queue->owned = false;
  return s;
}

// --- map -----------------------------------------------------------------------------------------------

absl::Status IommufdBackend::map(const MapRequest& request) {
  std::optional<uint32_t> ioas;
  {
    std::lock_guard lock(state_mu_);
    if (auto it = domain_ioas_.find(request.domain); it != domain_ioas_.end()) ioas = it->second;
  }
  if (!ioas) {
    return absl::NotFoundError(absl::StrCat("iommufd map: domain ", request.domain,
                                            " has no IOAS (setDomainIoas)"));
  }
  if (request.source_va == 0 || request.length == 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "iommufd map: IOAS %u iova 0x%x: source_va 0x%x and length %u must be non-zero", *ioas,
        request.iova, request.source_va, request.length));
  }
  abi::IommuIoasMap cmd;
  cmd.ioas_id = *ioas;
  cmd.flags = abi::kIoasMapFixedIova | abi::kIoasMapReadable;
  if (request.perm & perm::kWrite) cmd.flags |= abi::kIoasMapWriteable;
  cmd.user_va = request.source_va;
  cmd.length = request.length;
  cmd.iova = request.iova;
  const int rc = io_.ioctl(iommufd_, abi::kIommuIoasMap, &cmd);
  if (rc == 0) return absl::OkStatus();
  const std::string range = absl::StrFormat("IOAS %u iova [0x%x, 0x%x) from va 0x%x", *ioas,
                                            request.iova, request.iova + request.length,
                                            request.source_va);
  std::string reason;
  switch (-rc) {
    case ENOENT: reason = "the IOAS does not exist"; break;
    case EEXIST: reason = "part of the range is already mapped"; break;
    case EINVAL: reason = "iova, length or va not aligned to the IOAS page size, or iova reserved"; break;
    case EFAULT: reason = "the source VA range is not mapped in this process"; break;
    case ENOMEM: reason = "out of memory or RLIMIT_MEMLOCK exceeded"; break;
    case EOVERFLOW: reason = "the range overflows"; break;
    case ENOSPC: reason = "no IOVA space"; break;
    default: reason = "kernel refused"; break;
  }
  return errnoStatus(rc, absl::StrCat("IOMMU_IOAS_MAP ", range, ": ", reason));
}

// --- teardown ------------------------------------------------------------------------------------------

absl::Status IommufdBackend::teardown() {
  std::vector<std::string> busy;
  std::vector<uint32_t> hwpts, ioas;
  {
    std::lock_guard lock(state_mu_);
    hwpts.assign(owned_hwpts_.rbegin(), owned_hwpts_.rend());  // nested before parents
    ioas = owned_ioas_;
  }
  std::vector<uint32_t> busy_hwpts;
  for (uint32_t id : hwpts) {
    absl::Status s = destroyObject(id);
    if (absl::IsFailedPrecondition(s)) busy_hwpts.push_back(id);
  }
  std::vector<uint32_t> faults;
  {
    std::lock_guard lock(queues_mu_);
    for (auto& [id, q] : queues_) faults.push_back(id);
  }
  std::vector<uint32_t> busy_faults;
  for (uint32_t id : faults) {
    FaultQueue* q = findQueue(id);
    if (q->fd < 0 && !q->owned) continue;
    absl::Status s = destroyFaultQueue(id);
    if (absl::IsFailedPrecondition(s)) busy_faults.push_back(id);
  }
  // Second pass: a HWPT may have held a FAULT (or a nested HWPT its parent) busy.
  for (uint32_t id : busy_hwpts) {
    if (!destroyObject(id).ok()) busy.push_back(absl::StrCat("HWPT ", id));
  }
  for (uint32_t id : busy_faults) {
    if (!destroyObject(id).ok()) {
      busy.push_back(absl::StrCat("FAULT ", id));
    } else if (FaultQueue* q = findQueue(id)) {
      q->owned = false;
    }
  }
  for (uint32_t id : ioas) {
    if (!destroyObject(id).ok()) busy.push_back(absl::StrCat("IOAS ", id));
  }
  if (own_iommufd_ && iommufd_ >= 0) {
    io_.close(iommufd_);
    iommufd_ = -1;
  }
  if (!busy.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "iommufd teardown: still referenced (detach devices first): ", absl::StrJoin(busy, ", ")));
  }
  return absl::OkStatus();
}

// --- observation ---------------------------------------------------------------------------------------

absl::Status IommufdBackend::health() const {
  if (const int err = reader_errno_.load(std::memory_order_acquire); err != 0) {
    return absl::UnavailableError(std::string("iommufd reader stopped: epoll_wait: ") + std::strerror(err));
  }
  return absl::OkStatus();
}

IommufdStats IommufdBackend::stats() const {
  IommufdStats s;
  auto ld = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  s.read_calls = ld(counters_.read_calls);
  s.read_empty = ld(counters_.read_empty);
  s.read_grown = ld(counters_.read_grown);
  s.read_errors = ld(counters_.read_errors);
  s.records = ld(counters_.records);
  s.groups = ld(counters_.groups);
  s.group_fixups = ld(counters_.group_fixups);
  s.unknown_devices = ld(counters_.unknown_devices);
  s.write_calls = ld(counters_.write_calls);
  s.responses_written = ld(counters_.responses_written);
  s.short_writes = ld(counters_.short_writes);
  s.write_rejected = ld(counters_.write_rejected);
  s.write_errors = ld(counters_.write_errors);
  s.failure_downgraded = ld(counters_.failure_downgraded);
  s.kernel_answered = ld(counters_.kernel_answered);
  s.dropped_auto_responded = ld(counters_.dropped_auto_responded);
  s.stale_tokens = ld(counters_.stale_tokens);
  s.quiesced = ld(counters_.quiesced);
  s.reissued_outstanding = ld(counters_.reissued_outstanding);
  std::lock_guard lock(state_mu_);
  s.outstanding = outstanding_;
  s.retiring = retiring_;
  return s;
}

std::optional<uint32_t> IommufdBackend::kernelCookie(uint32_t token) const {
  std::lock_guard lock(state_mu_);
  const Slot* s = slotOf(token);
  return s == nullptr ? std::nullopt : std::optional<uint32_t>(s->cookie);
}

std::optional<CookieState> IommufdBackend::cookieState(uint32_t token) const {
  std::lock_guard lock(state_mu_);
  const Slot* s = slotOf(token);
  if (s == nullptr) return std::nullopt;
  if (s->state == CookieState::kOutstanding) {
    const FaultQueue* q = findQueue(s->fault_id);
    if (q != nullptr && !slotLive(*q, *s)) return CookieState::kKernelAutoResponded;
  }
  return s->state;
}

uint64_t IommufdBackend::epoch(uint32_t fault_id) const {
  const FaultQueue* q = findQueue(fault_id);
  if (q == nullptr) return 0;
  std::lock_guard lock(state_mu_);
  return q->epoch;
}

}  // namespace iopf::iommufd
