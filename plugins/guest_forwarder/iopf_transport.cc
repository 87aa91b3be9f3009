#include "iopf_transport.h"

#include <sys/epoll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "iopf_forward_protocol.h"
#include "iopf_protocol.h"
#include "socket_io.h"

namespace iopf::guest_forwarder {

using qemu_socket::EventLoop;
using qemu_socket::Frame;
using qemu_socket::FrameDecoder;
using qemu_socket::FrameError;
using qemu_socket::FrameHeader;
using qemu_socket::StreamSocket;
using qemu_socket::UniqueFd;
using qemu_socket::WireError;
namespace p2 = qemu_socket::p2;
namespace fwd = qemu_socket::fwd;

namespace {

// Frames for open connections, filled by shard threads, emptied by the loop. Shared with the
// transports (which may outlive the server for the length of one forward() call).
struct Outbox {
  std::mutex mu;
  absl::flat_hash_map<uint32_t, std::vector<uint8_t>> pending;  // connection serial -> frames
  EventLoop* loop = nullptr;                                    // null once stopped
};

class ConnTransport final : public VmTransport {
 public:
  ConnTransport(std::shared_ptr<Outbox> outbox, uint32_t serial, std::atomic<uint64_t>* sent)
      : outbox_(std::move(outbox)), serial_(serial), sent_(sent) {}
  bool forward(const ForwardedGroup& g) override {
    fwd::GuestPageRequest r;
    r.virt_id = g.key.virt_id;
    r.viommu_id = g.key.viommu_id;
    r.rid = g.guest_rid;
    r.pasid = g.key.pasid == kNoPasid ? 0 : g.key.pasid;
    r.prgi = g.key.prgi;
    std::lock_guard lk(outbox_->mu);
    if (!open_ || outbox_->loop == nullptr) return false;
    std::vector<uint8_t>& out = outbox_->pending[serial_];
    fwd::GuestPageRequest chunk[p2::kMaxBatch];
    size_t n = 0;
    for (size_t i = 0; i < g.requests.size(); ++i) {
      const GuestRequest& q = g.requests[i];
      r.flags = 0;
      if (g.key.pasid != kNoPasid) r.flags |= fwd::kReqPasidValid;
      if (g.needs_pasid) r.flags |= fwd::kReqRespNeedsPasid;
      if (i + 1 == g.requests.size()) r.flags |= fwd::kReqLast;
      r.perm = q.perm & 0xf;
      r.addr = q.addr;
      chunk[n++] = r;
      if (n == p2::kMaxBatch || i + 1 == g.requests.size()) {
        fwd::appendGuestPageReqFrame(out, std::span<const fwd::GuestPageRequest>(chunk, n));
        n = 0;
      }
    }
    outbox_->loop->wake();
    sent_->fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  void close() {
    std::lock_guard lk(outbox_->mu);
    open_ = false;
    outbox_->pending.erase(serial_);
  }

 private:
  std::shared_ptr<Outbox> outbox_;
  uint32_t serial_;
  std::atomic<uint64_t>* sent_;
  bool open_ = true;  // guarded by outbox_->mu
};

bool validVmName(std::string_view name) {
  if (name.empty() || name.size() > fwd::kMaxVmName) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
  });
}

std::vector<uint8_t> u64Reply(uint32_t request, uint64_t value) {
  uint8_t p[8];
  qemu_socket::putU64(p, value);
  return qemu_socket::encodeFrame(request, qemu_socket::kFlagReply, p);
}

}  // namespace

class IopfForwardServer::Impl {
 public:
  Impl(Forwarder* forwarder, Options options) : forwarder_(forwarder), options_(std::move(options)) {}

  absl::Status start() {
    if (absl::Status st = loop_.init(); !st.ok()) return st;
    auto listener = qemu_socket::listenUnix(options_.socket_path);
    if (!listener.ok()) {
      return absl::Status(listener.status().code(),
                          absl::StrCat("guest forwarder iopf socket '", options_.socket_path,
                                       "': ", std::string(listener.status().message())));
    }
    listener_ = std::move(*listener);
    loop_.setWakeCallback([this] { onWake(); });
    if (absl::Status st = loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { onAccept(); }); !st.ok())
      return st;
    {
      std::lock_guard lk(outbox_->mu);
      outbox_->loop = &loop_;
    }
    thread_ = std::thread([this] { loop_.run(); });
    return absl::OkStatus();
  }

  void stop() {
    if (!thread_.joinable()) return;
    stopping_ = true;
    loop_.wake();
    loop_.stop();
    thread_.join();
    {
      std::lock_guard lk(outbox_->mu);
      outbox_->loop = nullptr;
    }
    std::vector<uint32_t> serials;
    for (auto& [serial, c] : conns_) serials.push_back(serial);
    for (uint32_t s : serials) {
      auto it = conns_.find(s);
      closeConnection(*it->second, "the guest forwarder stops");
    }
    conns_.clear();
  }

  Stats stats_;

 private:
  struct Conn {
    Conn(uint32_t s, UniqueFd fd) : serial(s), io(std::move(fd), p2::kMaxPayload) {}
    uint32_t serial;
    StreamSocket io;
    bool hello_done = false;
    bool closing = false;
    bool epollout = false;
    uint32_t devices = 0;
    std::string vm;
    std::shared_ptr<ConnTransport> transport;
  };

  void log(sdk::LogLevel level, const std::string& text) {
    if (options_.log) options_.log(level, text);
  }

  void onAccept() {
    for (;;) {
      const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      UniqueFd owned(fd);
      if (conns_.size() >= options_.max_connections) continue;  // closed at once
      const uint32_t serial = next_serial_++;
      auto conn = std::make_unique<Conn>(serial, std::move(owned));
      if (!loop_
               .add(conn->io.fd(), EPOLLIN | EPOLLRDHUP,
                    [this, serial](uint32_t ev) { onEvents(serial, ev); })
               .ok()) {
        continue;
      }
      conns_.emplace(serial, std::move(conn));
      stats_.connections.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void onEvents(uint32_t serial, uint32_t events) {
    auto it = conns_.find(serial);
    if (it == conns_.end()) return;
    Conn& c = *it->second;
    if ((events & EPOLLOUT) != 0 && !flush(c)) return;
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0) return;
    for (int round = 0; round < 16 && !c.closing; ++round) {
      const ssize_t n = c.io.readSome();
      if (n == -EAGAIN || n == -EWOULDBLOCK) break;
      if (n <= 0) {
        closeConnection(c, n == 0 ? "peer closed the connection" : absl::StrCat("read error ", -n));
        break;
      }
      processFrames(c);
    }
    if (c.closing) {
      finishClose(serial);
    } else {
      flush(c);
    }
  }

  void processFrames(Conn& c) {
    Frame frame;
    FrameError error;
    for (;;) {
      const FrameDecoder::Result r = c.io.decoder().next(frame, error);
      if (r == FrameDecoder::Result::kNeedMore) return;
      if (r == FrameDecoder::Result::kError) {
        sendError(c, error);
        closeConnection(c, error.message);
        return;
      }
      stats_.frames_in.fetch_add(1, std::memory_order_relaxed);
      if (auto bad = fwd::forwarderInboundTable().check(frame)) {
        sendError(c, *bad);
        continue;
      }
      handleFrame(c, frame);
      if (c.closing) return;
    }
  }

  void sendError(Conn& c, const FrameError& e) {
    stats_.protocol_errors.fetch_add(1, std::memory_order_relaxed);
    p2::appendErrorFrame(c.io.outBytes(), {static_cast<uint32_t>(e.code), e.request, e.message});
  }

  void fatal(Conn& c, const FrameError& e) {
    sendError(c, e);
    closeConnection(c, e.message);
  }

  void reply(Conn& c, const std::vector<uint8_t>& frame) {
    c.io.outBytes().insert(c.io.outBytes().end(), frame.begin(), frame.end());
  }

  void handleFrame(Conn& c, const Frame& f) {
    const FrameHeader& h = f.header;
    const auto& table = fwd::forwarderInboundTable();
    if (h.isReply()) {
      sendError(c,
                {WireError::kUnexpectedReply, false, h.request,
                 absl::StrFormat("message %s has the REPLY flag; the guest forwarder expects requests only",
                                 table.describe(h.request))});
      return;
    }
    if (!c.hello_done && h.request != p2::kHello) {
      fatal(c, {WireError::kExpectedHello, true, h.request,
                absl::StrFormat("first message is %s, expects HELLO (0x%x)", table.describe(h.request),
                                p2::kHello)});
      return;
    }
    const uint8_t* p = f.payload.data();
    switch (h.request) {
      case p2::kHello: {
        if (c.hello_done) {
          sendError(c, {WireError::kDuplicateHello, false, h.request, "HELLO was already exchanged"});
          return;
        }
        const p2::Hello hello = p2::decodeHello(p);
        if (hello.magic != p2::kMagic) {
          fatal(c,
                {WireError::kBadMagic, true, h.request,
                 absl::StrFormat("HELLO magic is 0x%08x, expects 0x%08x ('IOPF')", hello.magic, p2::kMagic)});
          return;
        }
        if (hello.major != p2::kMajor) {
          fatal(c, {WireError::kUnsupportedMajor, true, h.request,
                    absl::StrFormat("HELLO asks for major %u, this server implements %u", hello.major,
                                    p2::kMajor)});
          return;
        }
        if ((hello.features & fwd::kFeatureForward) == 0) {
          fatal(c, {WireError::kNotNegotiated, true, h.request,
                    "this socket serves the guest forwarder: HELLO must ask for feature FORWARD (bit 2)"});
          return;
        }
        c.hello_done = true;
        p2::Hello out;
        out.features = hello.features & (p2::kFeatureBatch | fwd::kFeatureForward);
        reply(c, p2::helloFrame(out, true));
        c.vm = absl::StrCat("iopf-", c.serial);
        c.transport = std::make_shared<ConnTransport>(outbox_, c.serial, &stats_.groups_sent);
        forwarder_->attachVm(c.vm, c.transport);
        return;
      }
      case fwd::kVmName: {
        const std::string name(reinterpret_cast<const char*>(p), f.payload.size());
        p2::Status st = p2::Status::kOk;
        if (!validVmName(name) || c.devices > 0) {
          st = p2::Status::kInvalidArgument;
        } else if (name != c.vm && forwarder_->vmAttached(name)) {
          st = p2::Status::kAlreadyExists;
        } else {
          forwarder_->detachVm(c.vm);
          c.vm = name;
          forwarder_->attachVm(c.vm, c.transport);
          log(sdk::LogLevel::kInfo, absl::StrFormat("iopf connection %u is vm '%s'", c.serial, name));
        }
        reply(c, p2::statusReplyFrame(fwd::kVmName, st));
        return;
      }
      case p2::kDeviceAdd: {
        const p2::DeviceAdd a = p2::decodeDeviceAdd(p);
        p2::Status st = p2::Status::kOk;
        if (a.pasid_bits > p2::kMaxPasidBits || (a.flags & ~p2::kDeviceKnownFlags) != 0 || a.reserved0 != 0 ||
            a.reserved1 != 0) {
          st = p2::Status::kInvalidArgument;
        } else if (c.devices >= options_.max_devices_per_connection) {
          st = p2::Status::kResourceExhausted;
        } else {
          GuestDevice d;
          d.backend_handle = a.dev_id;
          d.vm = c.vm;
          d.viommu_id = a.viommu_id;
          d.virt_id = a.virt_id;
          d.guest_rid = a.rid;
          d.pri_allocation = a.pri_outstanding_alloc;
          d.needs_pasid = (a.flags & p2::kDeviceNeedsPasid) != 0;
          d.source = Source::kVmm;
          d.owner = c.serial;
          const std::string what = describe(d);
          absl::Status added = forwarder_->registry().add(std::move(d));
          if (added.ok()) {
            ++c.devices;
            stats_.devices_added.fetch_add(1, std::memory_order_relaxed);
            log(sdk::LogLevel::kInfo, absl::StrCat("DEVICE_ADD ", what));
          } else {
            st = absl::IsAlreadyExists(added) ? p2::Status::kAlreadyExists : p2::Status::kInvalidArgument;
            stats_.devices_refused.fetch_add(1, std::memory_order_relaxed);
            log(sdk::LogLevel::kWarning, std::string(added.message()));
          }
        }
        reply(c, p2::statusReplyFrame(p2::kDeviceAdd, st));
        return;
      }
      case p2::kDeviceDel: {
        const uint32_t dev_id = qemu_socket::getU32(p);
        p2::Status st = p2::Status::kNotFound;
        for (const GuestDevice& d : forwarder_->registry().list()) {
          if (d.source != Source::kVmm || d.owner != c.serial || d.backend_handle != dev_id) continue;
          forwarder_->drain(d.vm, d.viommu_id, d.virt_id, DrainReason::kDeviceDel);
          forwarder_->registry().removeGuest(d.vm, d.viommu_id, d.virt_id);
          --c.devices;
          st = p2::Status::kOk;
          break;
        }
        reply(c, p2::statusReplyFrame(p2::kDeviceDel, st));
        return;
      }
      case fwd::kGuestPageResp: {
        bool reported = false;
        for (size_t off = 0; off < f.payload.size(); off += fwd::kGuestPageResponseSize) {
          const fwd::GuestPageResponse r = fwd::decodeGuestPageResponse(p + off);
          GuestKey key{c.vm, r.viommu_id, r.virt_id,
                       (r.flags & fwd::kRespPasidValid) != 0 ? (r.pasid & 0xfffff) : kNoPasid,
                       static_cast<uint16_t>(r.prgi)};
          stats_.responses_in.fetch_add(1, std::memory_order_relaxed);
          const AnswerResult res = forwarder_->answer(key, r.code);
          if (res == AnswerResult::kCompleted) continue;
          stats_.responses_refused.fetch_add(1, std::memory_order_relaxed);
          if (!reported) {
            reported = true;
            const std::string pasid = key.pasid == kNoPasid ? std::string("none") : absl::StrCat(key.pasid);
            sendError(
                c, {res == AnswerResult::kUnknown ? WireError::kBadRecord : WireError::kDuplicateGroup, false,
                    h.request,
                    absl::StrFormat("GUEST_PAGE_RESP for viommu %u virt_id 0x%x pasid %s prgi %u refused: %s",
                                    key.viommu_id, key.virt_id, pasid, key.prgi, toString(res))});
          }
        }
        return;
      }
      case fwd::kGuestReset: {
        const fwd::GuestReset r = fwd::decodeGuestReset(p);
        const bool whole = (r.flags & fwd::kResetWholeVm) != 0;
        stats_.resets.fetch_add(1, std::memory_order_relaxed);
        const size_t n =
            forwarder_->drain(c.vm, whole ? std::nullopt : std::optional<uint32_t>(r.viommu_id), std::nullopt,
                              whole ? DrainReason::kGuestReset : DrainReason::kViommuReset);
        reply(c, u64Reply(fwd::kGuestReset, n));
        return;
      }
      case p2::kError: {
        const p2::ErrorMessage e = p2::decodeError(f.payload);
        log(sdk::LogLevel::kWarning, absl::StrFormat("vm '%s' sent ERROR %u: %s", c.vm, e.code, e.text));
        return;
      }
      default:
        return;
    }
  }

  void onWake() {
    std::vector<std::pair<uint32_t, std::vector<uint8_t>>> batch;
    {
      std::lock_guard lk(outbox_->mu);
      for (auto& [serial, bytes] : outbox_->pending) {
        if (!bytes.empty()) batch.emplace_back(serial, std::move(bytes));
      }
      outbox_->pending.clear();
    }
    for (auto& [serial, bytes] : batch) {
      auto it = conns_.find(serial);
      if (it == conns_.end() || it->second->closing) continue;
      auto& out = it->second->io.outBytes();
      out.insert(out.end(), bytes.begin(), bytes.end());
      flush(*it->second);
    }
  }

  bool flush(Conn& c) {
    if (c.closing) return true;
    absl::Status st = c.io.flush();
    if (!st.ok()) {
      const uint32_t serial = c.serial;
      closeConnection(c, std::string(st.message()));
      finishClose(serial);
      return false;
    }
    const bool want = c.io.wantsWrite();
    if (want != c.epollout) {
      c.epollout = want;
      (void)loop_.modify(c.io.fd(), EPOLLIN | EPOLLRDHUP | (want ? uint32_t{EPOLLOUT} : 0u));
    }
    return true;
  }

  void closeConnection(Conn& c, const std::string& why) {
    if (c.closing) return;
    c.closing = true;
    (void)c.io.flush();
    if (c.transport) {
      c.transport->close();
      const size_t drained =
          forwarder_->detachVm(c.vm, stopping_ ? DrainReason::kShutdown : DrainReason::kDisconnect);
      const size_t removed = forwarder_->registry().removeOwner(c.serial);
      log(sdk::LogLevel::kInfo,
          absl::StrFormat("vm '%s' (iopf connection %u) closed: %s; %u open groups answered "
                          "INVALID, %u devices removed",
                          c.vm, c.serial, why, drained, removed));
    }
  }

  void finishClose(uint32_t serial) {
    auto it = conns_.find(serial);
    if (it == conns_.end()) return;
    loop_.remove(it->second->io.fd());
    conns_.erase(it);
  }

  Forwarder* forwarder_;
  Options options_;
  EventLoop loop_;
  UniqueFd listener_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::shared_ptr<Outbox> outbox_ = std::make_shared<Outbox>();
  uint32_t next_serial_ = 1;
  absl::flat_hash_map<uint32_t, std::unique_ptr<Conn>> conns_;
};

IopfForwardServer::IopfForwardServer(Forwarder* forwarder, Options options)
    : impl_(std::make_unique<Impl>(forwarder, std::move(options))) {}
IopfForwardServer::~IopfForwardServer() {
  stop();
}
absl::Status IopfForwardServer::start() {
  return impl_->start();
}
void IopfForwardServer::stop() {
  impl_->stop();
}
const IopfForwardServer::Stats& IopfForwardServer::stats() const {
  return impl_->stats_;
}

void IopfForwardServer::addCounters(sdk::Counters& out) const {
  const Stats& s = impl_->stats_;
  const auto v = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  out.add("iopf_connections", v(s.connections));
  out.add("iopf_groups_sent", v(s.groups_sent));
  out.add("iopf_responses_in", v(s.responses_in));
  out.add("iopf_responses_refused", v(s.responses_refused));
  out.add("iopf_resets", v(s.resets));
  out.add("iopf_devices_added", v(s.devices_added));
  out.add("iopf_devices_refused", v(s.devices_refused));
  out.add("iopf_protocol_errors", v(s.protocol_errors));
}

}  // namespace iopf::guest_forwarder
