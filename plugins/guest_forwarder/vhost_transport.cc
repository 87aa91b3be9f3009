#include "vhost_transport.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "socket_io.h"
#include "vhost_iotlb_protocol.h"

namespace iopf::guest_forwarder {

using qemu_socket::EventLoop;
using qemu_socket::Frame;
using qemu_socket::FrameDecoder;
using qemu_socket::FrameError;
using qemu_socket::StreamSocket;
using qemu_socket::UniqueFd;
namespace vu = qemu_socket::vu;

namespace {

constexpr uint32_t kMaxPayload = 4096;
constexpr uint32_t kGetConfig = 24;
constexpr uint32_t kGetMaxMemSlots = 36;
constexpr uint64_t kOfferedFeatures =
    vu::kFeatureVersion1 | vu::kFeatureIommuPlatform | vu::kFeatureProtocolFeatures;
constexpr uint64_t kOfferedProtocolFeatures = vu::kProtocolReplyAck | vu::kProtocolBackendReq;

// Groups handed over by shard threads.
struct Queue {
  std::mutex mu;
  std::deque<ForwardedGroup> groups;
  EventLoop* loop = nullptr;  // null: closed
};

class QueueTransport final : public VmTransport {
 public:
  explicit QueueTransport(std::shared_ptr<Queue> q) : q_(std::move(q)) {}
  bool forward(const ForwardedGroup& g) override {
    std::lock_guard lk(q_->mu);
    if (q_->loop == nullptr) return false;
    q_->groups.push_back(g);
    q_->loop->wake();
    return true;
  }

 private:
  std::shared_ptr<Queue> q_;
};

// Reads until EAGAIN. false: end of stream or an error. The sockets read frame by frame
// (StreamSocket::ReadMode::kFrameBounded), so the fds of a frame are never attributed to the frame
// before it: QEMU sends SET_PROTOCOL_FEATURES (no fd, no reply) and then SET_BACKEND_REQ_FD (one fd)
// back to back.
bool readAll(StreamSocket& socket) {
  for (;;) {
    const ssize_t n = socket.readSome();
    if (n > 0) continue;
    return n == -EAGAIN || n == -EWOULDBLOCK;
  }
}

uint8_t vhostPerm(uint8_t perm) {
  const bool r = (perm & IOPF_PERM_READ) != 0;
  const bool w = (perm & IOPF_PERM_WRITE) != 0;
  if (r && w) return vu::kPermRw;
  if (w) return vu::kPermWo;
  return vu::kPermRo;
}

}  // namespace

class VhostForwardTransport::Impl {
 public:
  Impl(Forwarder* forwarder, Options options) : forwarder_(forwarder), options_(std::move(options)) {}

  absl::Status start() {
    if (absl::Status st = loop_.init(); !st.ok()) return st;
    auto listener = qemu_socket::listenUnix(options_.socket_path);
    if (!listener.ok()) {
      return absl::Status(
          listener.status().code(),
          absl::StrCat("guest forwarder vm '", options_.vm, "': vhost-user socket '", options_.socket_path,
                       "': ", std::string(listener.status().message())));
    }
    listener_ = std::move(*listener);
    loop_.setWakeCallback([this] { onWake(); });
    if (absl::Status st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { onAccept(); }); !st.ok())
      return st;
    thread_ = std::thread([this] { loop_.run(); });
    return absl::OkStatus();
  }

  void stop() {
    if (!thread_.joinable()) return;
    loop_.stop();
    loop_.wake();
    thread_.join();
    disconnect("the guest forwarder stops", DrainReason::kShutdown);
  }

  std::vector<IotlbEntry> iotlb() const {
    std::lock_guard lk(snap_mu_);
    return iotlb_;
  }
  std::vector<VringAddresses> vrings() const {
    std::lock_guard lk(snap_mu_);
    return vrings_;
  }
  bool connected() const { return connected_.load(); }
  bool channelReady() const { return channel_ready_.load(); }

  Stats stats_;
  const Options& options() const { return options_; }

 private:
  struct InFlight {
    ForwardedGroup group;
    size_t next = 0;  // request whose MISS is outstanding
  };

  void log(sdk::LogLevel level, const std::string& text) {
    if (options_.log) options_.log(level, absl::StrCat("vm '", options_.vm, "' (vhost-iotlb): ", text));
  }
  static void bump(std::atomic<uint64_t>& a, uint64_t n = 1) { a.fetch_add(n, std::memory_order_relaxed); }

  void onAccept() {
    for (;;) {
      const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      UniqueFd owned(fd);
      if (main_) {
        log(sdk::LogLevel::kWarning, "a second front-end connected while one is served: refused");
        continue;
      }
      main_ = std::make_unique<StreamSocket>(std::move(owned), kMaxPayload, StreamSocket::ReadMode::kFrameBounded);
      if (!loop_.add(main_->fd(), EPOLLIN | EPOLLRDHUP, [this](uint32_t ev) { onMain(ev); }).ok()) {
        main_.reset();
        continue;
      }
      connected_ = true;
      bump(stats_.connections);
      log(sdk::LogLevel::kInfo, "front-end connected");
    }
  }

  void onMain(uint32_t events) {
    if (!main_) return;
    const bool alive = readAll(*main_);
    Frame frame;
    FrameError error;
    while (main_) {
      const FrameDecoder::Result r = main_->decoder().next(frame, error);
      if (r == FrameDecoder::Result::kNeedMore) break;
      if (r == FrameDecoder::Result::kError) {
        bump(stats_.protocol_errors);
        disconnect(absl::StrCat("main socket: ", error.message), DrainReason::kDisconnect);
        return;
      }
      handleMain(frame);
    }
    if (!main_) return;
    if (!alive || (events & (EPOLLHUP | EPOLLERR)) != 0) {
      disconnect("front-end closed the main socket", DrainReason::kDisconnect);
      return;
    }
    flushAll();
  }

  void replyU64(uint32_t request, uint64_t value) {
    const auto f = vu::u64Frame(request, qemu_socket::kFlagReply, value);
    main_->outBytes().insert(main_->outBytes().end(), f.begin(), f.end());
  }

  void handleMain(const Frame& f) {
    const uint32_t id = f.header.request;
    const uint8_t* p = f.payload.data();
    const size_t size = f.payload.size();
    bump(stats_.setup_messages);
    switch (id) {
      case vu::kGetFeatures:
        replyU64(id, kOfferedFeatures);
        return;
      case vu::kGetProtocolFeatures:
        replyU64(id, kOfferedProtocolFeatures);
        return;
      case vu::kGetQueueNum:
        replyU64(id, 1);
        return;
      case kGetMaxMemSlots:
        replyU64(id, vu::kMaxMemoryRegions);
        return;
      case kGetConfig: {
        const auto out = qemu_socket::encodeFrame(id, qemu_socket::kFlagReply, f.payload);
        main_->outBytes().insert(main_->outBytes().end(), out.begin(), out.end());
        return;
      }
      case vu::kGetVringBase: {
        // The device stops (QEMU reads the ring state back).
        const uint32_t index = size >= 4 ? qemu_socket::getU32(p) : 0;
        if (index == 0) bump(stats_.device_stops);
        const auto out = vu::vringStateFrame(id, index, 0, qemu_socket::kFlagReply);
        main_->outBytes().insert(main_->outBytes().end(), out.begin(), out.end());
        return;
      }
      case vu::kSetBackendReqFd: {
        if (f.fds.empty()) {
          bump(stats_.protocol_errors);
          log(sdk::LogLevel::kError, "SET_BACKEND_REQ_FD without a file descriptor");
          break;
        }
        const int dup = ::fcntl(f.fds[0].get(), F_DUPFD_CLOEXEC, 0);
        if (dup < 0) break;
        openChannel(UniqueFd(dup));
        break;
      }
      case vu::kSetVringAddr:
        if (size >= 40) {
          VringAddresses a;
          a.index = qemu_socket::getU32(p);
          a.desc = qemu_socket::getU64(p + 8);
          a.used = qemu_socket::getU64(p + 16);
          a.avail = qemu_socket::getU64(p + 24);
          std::lock_guard lk(snap_mu_);
          std::erase_if(vrings_, [&](const VringAddresses& v) { return v.index == a.index; });
          vrings_.push_back(a);
          log(sdk::LogLevel::kDebug,
              absl::StrFormat("vring %u: desc 0x%x avail 0x%x used 0x%x", a.index, a.desc, a.avail, a.used));
        }
        break;
      case vu::kSetVringKick:
        if (size >= 8 && (qemu_socket::getU64(p) & 0xff) == 0) bump(stats_.device_starts);
        break;
      case vu::kIotlbMsg:
        if (size >= vu::kIotlbMsgSize) applyIotlb(vu::decodeIotlb(p));
        break;
      default:
        break;
    }
    if (f.header.needsReply()) replyU64(id, 0);
  }

  void applyIotlb(const vu::IotlbMsg& m) {
    std::lock_guard lk(snap_mu_);
    if (m.type == vu::kIotlbUpdate) {
      bump(stats_.updates);
      std::erase_if(iotlb_, [&](const IotlbEntry& e) { return e.iova == m.iova; });  // a refresh replaces
      iotlb_.push_back(IotlbEntry{m.iova, m.size, m.uaddr, m.perm});
    } else if (m.type == vu::kIotlbInvalidate) {
      bump(stats_.invalidations);
      const uint64_t end = m.iova + m.size;
      const size_t before = iotlb_.size();
      std::erase_if(iotlb_, [&](const IotlbEntry& e) { return e.iova < end && m.iova < e.iova + e.size; });
      bump(stats_.iotlb_removed, before - iotlb_.size());
    } else {
      bump(stats_.protocol_errors);
    }
  }

  bool covered(uint64_t iova, uint8_t perm) const {
    std::lock_guard lk(snap_mu_);
    for (const IotlbEntry& e : iotlb_) {
      if (iova >= e.iova && iova - e.iova < e.size && (e.perm & perm) == perm) return true;
    }
    return false;
  }

  void openChannel(UniqueFd fd) {
    closeChannel();
    if (!qemu_socket::setNonBlocking(fd.get()).ok()) return;
    channel_ = std::make_unique<StreamSocket>(std::move(fd), kMaxPayload, StreamSocket::ReadMode::kFrameBounded);
    if (!loop_.add(channel_->fd(), EPOLLIN | EPOLLRDHUP, [this](uint32_t ev) { onChannel(ev); }).ok()) {
      channel_.reset();
      return;
    }
    {
      std::lock_guard lk(queue_->mu);
      queue_->loop = &loop_;
    }
    forwarder_->attachVm(options_.vm, std::make_shared<QueueTransport>(queue_));
    channel_ready_ = true;
    log(sdk::LogLevel::kInfo, "back-end channel ready: forwarding");
  }

  void closeChannel() {
    if (!channel_) return;
    {
      std::lock_guard lk(queue_->mu);
      queue_->loop = nullptr;
      queue_->groups.clear();
    }
    channel_ready_ = false;
    loop_.remove(channel_->fd());
    channel_.reset();
    in_flight_.reset();
    pending_.clear();
  }

  void onChannel(uint32_t events) {
    if (!channel_) return;
    const bool alive = readAll(*channel_);
    Frame frame;
    FrameError error;
    while (channel_) {
      const FrameDecoder::Result r = channel_->decoder().next(frame, error);
      if (r == FrameDecoder::Result::kNeedMore) break;
      if (r == FrameDecoder::Result::kError) {
        bump(stats_.protocol_errors);
        disconnect(absl::StrCat("back-end channel: ", error.message), DrainReason::kDisconnect);
        return;
      }
      if (!frame.header.isReply() || frame.header.request != vu::kBackendIotlbMsg ||
          frame.payload.size() != 8 || !in_flight_) {
        bump(stats_.protocol_errors);
        continue;
      }
      missAcked(qemu_socket::getU64(frame.payload.data()));
    }
    if (!channel_) return;
    if (!alive || (events & (EPOLLHUP | EPOLLERR)) != 0) {
      disconnect("front-end closed the back-end channel", DrainReason::kDisconnect);
      return;
    }
    pump();
    flushAll();
  }

  void missAcked(uint64_t value) {
    InFlight& f = *in_flight_;
    const GuestRequest& q = f.group.requests[f.next];
    bool granted = value == 0;
    if (granted && !covered(q.addr & ~uint64_t{0xfff}, vhostPerm(q.perm))) {
      bump(stats_.miss_no_update);
      granted = false;
    }
    bump(granted ? stats_.miss_ok : stats_.miss_refused);
    ++f.next;
    if (!granted || f.next == f.group.requests.size()) {
      bump(granted ? stats_.groups_success : stats_.groups_invalid);
      const GuestKey key = f.group.key;
      in_flight_.reset();
      forwarder_->answer(key, granted ? 0 : 1);
    } else {
      sendMiss();
    }
  }

  void onWake() {
    {
      std::lock_guard lk(queue_->mu);
      while (!queue_->groups.empty()) {
        pending_.push_back(std::move(queue_->groups.front()));
        queue_->groups.pop_front();
      }
    }
    pump();
    flushAll();
  }

  void pump() {
    if (!channel_ || in_flight_ || pending_.empty()) return;
    in_flight_ = InFlight{std::move(pending_.front()), 0};
    pending_.pop_front();
    sendMiss();
  }

  void sendMiss() {
    const GuestRequest& q = in_flight_->group.requests[in_flight_->next];
    vu::IotlbMsg m;
    m.iova = q.addr & ~uint64_t{0xfff};
    m.perm = vhostPerm(q.perm);
    m.type = vu::kIotlbMiss;
    const auto frame = vu::iotlbFrame(vu::kBackendIotlbMsg, m, qemu_socket::kFlagNeedReply);
    channel_->outBytes().insert(channel_->outBytes().end(), frame.begin(), frame.end());
    bump(stats_.misses);
  }

  void flushAll() {
    if (main_ && !main_->flush().ok()) {
      disconnect("write to the main socket failed", DrainReason::kDisconnect);
      return;
    }
    if (channel_ && !channel_->flush().ok()) {
      disconnect("write to the back-end channel failed", DrainReason::kDisconnect);
    }
    // Frames are small and the peer reads synchronously: a short write is retried on the next
    // event (both sockets stay registered for input; QEMU answers every frame we send).
    if (main_ && main_->wantsWrite()) (void)main_->flush();
    if (channel_ && channel_->wantsWrite()) (void)channel_->flush();
  }

  void disconnect(const std::string& why, DrainReason reason) {
    const bool had = main_ != nullptr || channel_ != nullptr;
    closeChannel();
    if (main_) {
      loop_.remove(main_->fd());
      main_.reset();
    }
    connected_ = false;
    {
      std::lock_guard lk(snap_mu_);
      iotlb_.clear();
      vrings_.clear();
    }
    const size_t drained = forwarder_->detachVm(options_.vm, reason);
    if (had) log(sdk::LogLevel::kInfo, absl::StrFormat("%s; %u open groups answered INVALID", why, drained));
  }

  Forwarder* forwarder_;
  Options options_;
  EventLoop loop_;
  UniqueFd listener_;
  std::thread thread_;
  std::unique_ptr<StreamSocket> main_;
  std::unique_ptr<StreamSocket> channel_;
  std::shared_ptr<Queue> queue_ = std::make_shared<Queue>();
  std::deque<ForwardedGroup> pending_;
  std::optional<InFlight> in_flight_;
  std::atomic<bool> connected_{false}, channel_ready_{false};
  mutable std::mutex snap_mu_;
  std::vector<IotlbEntry> iotlb_;
  std::vector<VringAddresses> vrings_;
};

VhostForwardTransport::VhostForwardTransport(Forwarder* forwarder, Options options)
    : impl_(std::make_unique<Impl>(forwarder, std::move(options))) {}
VhostForwardTransport::~VhostForwardTransport() {
  stop();
}
absl::Status VhostForwardTransport::start() {
  return impl_->start();
}
void VhostForwardTransport::stop() {
  impl_->stop();
}
const VhostForwardTransport::Stats& VhostForwardTransport::stats() const {
  return impl_->stats_;
}
std::vector<IotlbEntry> VhostForwardTransport::iotlb() const {
  return impl_->iotlb();
}
std::vector<VringAddresses> VhostForwardTransport::vrings() const {
  return impl_->vrings();
}
bool VhostForwardTransport::connected() const {
  return impl_->connected();
}
bool VhostForwardTransport::channelReady() const {
  return impl_->channelReady();
}

void VhostForwardTransport::addCounters(sdk::Counters& out) const {
  const Stats& s = impl_->stats_;
  const std::string prefix = absl::StrCat("vhost.", impl_->options().vm, ".");
  const auto add = [&](const char* name, uint64_t v) { out.add(prefix + name, v); };
  const auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  add("connections", v(s.connections));
  add("misses", v(s.misses));
  add("miss_ok", v(s.miss_ok));
  add("miss_refused", v(s.miss_refused));
  add("miss_no_update", v(s.miss_no_update));
  add("updates", v(s.updates));
  add("invalidations", v(s.invalidations));
  add("iotlb_removed", v(s.iotlb_removed));
  add("iotlb_entries", impl_->iotlb().size());
  add("groups_success", v(s.groups_success));
  add("groups_invalid", v(s.groups_invalid));
  add("protocol_errors", v(s.protocol_errors));
  add("channel_ready", impl_->channelReady() ? 1 : 0);
  for (const VringAddresses& r : impl_->vrings()) {
    if (r.index < 4) add(absl::StrCat("ring", r.index, "_desc").c_str(), r.desc);
  }
}

}  // namespace iopf::guest_forwarder
