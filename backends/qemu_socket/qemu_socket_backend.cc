#include "qemu_socket_backend.h"

#include <errno.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "iopf_protocol.h"
#include "socket_io.h"

namespace iopf::qemu_socket {

namespace {

struct Counters {
  std::atomic<uint64_t> connections_accepted{0}, connections_open{0}, connections_refused{0}, fatal_closes{0},
      frames_in{0}, records_in{0}, records_rejected{0}, errors_sent{0}, responses_sent{0}, detach_responses{0},
      responses_dropped{0}, devices_open{0};
};

void bump(std::atomic<uint64_t>& c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }

struct VmmDevice {
  DeviceId router_id = 0;
  uint8_t pasid_bits = 0;
  bool stall = false;
};

struct Connection {
  uint32_t serial = 0;
  StreamSocket io;
  bool hello_done = false;
  uint64_t features = 0;
  bool closing = false;
  bool epollout = false;  // EPOLLOUT registered (output pending)
  absl::flat_hash_map<uint32_t, VmmDevice> devices;          // by the VMM's dev_id
  absl::flat_hash_map<uint32_t, uint32_t> open;              // cookie → dev_id, complete groups awaiting PAGE_RESP
  std::vector<PageResponseRecord> resp_batch;                // PAGE_RESP records not yet framed

  Connection(uint32_t s, UniqueFd fd) : serial(s), io(std::move(fd), p2::kMaxPayload) {}
  uint32_t batchLimit() const { return (features & p2::kFeatureBatch) != 0 ? p2::kMaxBatch : 1; }
};

uint64_t handleOf(uint32_t serial, uint32_t dev_id) { return (uint64_t{serial} << 32) | dev_id; }

}  // namespace

class QemuSocketBackend::Loop {
 public:
  Loop(const Options& options) : options_(options) {}

  absl::Status init(RouterSink& sink) {
    sink_ = &sink;
    if (absl::Status st = loop_.init(); !st.ok()) return st;
    auto listener = listenUnix(options_.socket_path);
    if (!listener.ok()) return listener.status();
    listener_ = std::move(*listener);
    loop_.setWakeCallback([this] { onWake(); });
    return loop_.add(listener_.get(), EPOLLIN, [this](uint32_t) { onAccept(); });
  }

  void run() { loop_.run(); }

  void requestStop() {
    stop_requested_.store(true, std::memory_order_release);
    loop_.wake();
  }

  void enqueue(std::span<const Response> responses) {
    {
      std::lock_guard lk(outbox_mu_);
      outbox_.insert(outbox_.end(), responses.begin(), responses.end());
    }
    loop_.wake();
  }

  // After the loop thread has ended (Router shutdown: every group is answered already): closes
  // what is left without calling the router again.
  void teardown() {
    for (auto& [serial, conn] : conns_) (void)conn->io.flush();
    conns_.clear();
    listener_.reset();
    ::unlink(options_.socket_path.c_str());
  }

  QemuSocketStats stats() const {
    QemuSocketStats s;
    auto r = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
    s.connections_accepted = r(c_.connections_accepted);
    s.connections_open = r(c_.connections_open);
    s.connections_refused = r(c_.connections_refused);
    s.fatal_closes = r(c_.fatal_closes);
    s.frames_in = r(c_.frames_in);
    s.records_in = r(c_.records_in);
    s.records_rejected = r(c_.records_rejected);
    s.errors_sent = r(c_.errors_sent);
    s.responses_sent = r(c_.responses_sent);
    s.detach_responses = r(c_.detach_responses);
    s.responses_dropped = r(c_.responses_dropped);
    s.devices_open = r(c_.devices_open);
    return s;
  }

 private:
  void log(const std::string& text) {
    if (options_.log) options_.log(text);
  }

  void onAccept() {
    for (;;) {
      const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;  // EAGAIN, or a transient error: wait for the next readiness
      UniqueFd owned(fd);
      if (conns_.size() >= options_.max_connections) {
        bump(c_.connections_refused);
        std::vector<uint8_t> e = p2::errorFrame(
            {static_cast<uint32_t>(WireError::kPayloadTooLarge), 0,
             absl::StrFormat("iopfd: %u connections open, the limit is %u", conns_.size(),
                             options_.max_connections)});
        [[maybe_unused]] ssize_t n = ::send(fd, e.data(), e.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        continue;
      }
      const uint32_t serial = next_serial_++;
      auto conn = std::make_unique<Connection>(serial, std::move(owned));
      Connection* c = conn.get();
      if (!loop_.add(c->io.fd(), EPOLLIN | EPOLLRDHUP, [this, serial](uint32_t ev) { onEvents(serial, ev); }).ok()) {
        continue;
      }
      conns_.emplace(serial, std::move(conn));
      bump(c_.connections_accepted);
      bump(c_.connections_open);
    }
  }

  void onEvents(uint32_t serial, uint32_t events) {
    auto it = conns_.find(serial);
    if (it == conns_.end()) return;
    Connection& c = *it->second;
    if ((events & EPOLLOUT) != 0 && !flushConnection(c)) return;
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) == 0) return;
    // Bounded reads per readiness: fairness between VMMs on the one loop thread.
    for (int round = 0; round < 16 && !c.closing; ++round) {
      const ssize_t n = c.io.readSome();
      if (n == -EAGAIN || n == -EWOULDBLOCK) break;
      if (n <= 0) {
        if (n == 0) {
          if (auto err = c.io.decoder().finish()) sendError(c, *err);
        }
        closeConnection(c, n == 0 ? "peer closed the connection" : absl::StrCat("read error ", -n));
        break;
      }
      processFrames(c);
      deliverBatch();
    }
    if (c.closing) {
      finishClose(serial);
    } else {
      flushConnection(c);
    }
  }

  void processFrames(Connection& c) {
    Frame frame;
    FrameError error;
    for (;;) {
      const FrameDecoder::Result r = c.io.decoder().next(frame, error);
      if (r == FrameDecoder::Result::kNeedMore) return;
      if (r == FrameDecoder::Result::kError) {
        bump(c_.fatal_closes);
        sendError(c, error);
        closeConnection(c, error.message);
        return;
      }
      bump(c_.frames_in);
      if (auto bad = p2::serverInboundTable().check(frame)) {
        sendError(c, *bad);
        continue;
      }
      handleFrame(c, frame);
      if (c.closing) return;
    }
  }

  void handleFrame(Connection& c, const Frame& f) {
    const FrameHeader& h = f.header;
    if (h.isReply()) {
      sendError(c, {WireError::kUnexpectedReply, false, h.request,
                    absl::StrFormat("message %s has the REPLY flag; the server expects requests only",
                                    p2::serverInboundTable().describe(h.request))});
      return;
    }
    if (!c.hello_done && h.request != p2::kHello) {
      fatal(c, {WireError::kExpectedHello, true, h.request,
                absl::StrFormat("first message is %s, expects HELLO (0x%x)",
                                p2::serverInboundTable().describe(h.request), p2::kHello)});
      return;
    }
    switch (h.request) {
      case p2::kHello: return handleHello(c, f);
      case p2::kDeviceAdd: deliverBatch(); return handleDeviceAdd(c, f);
      case p2::kDeviceDel: deliverBatch(); return handleDeviceDel(c, f);
      case p2::kPageReq: return handlePageReq(c, f);
      case p2::kError: {
        const p2::ErrorMessage e = p2::decodeError(f.payload);
        log(absl::StrFormat("connection %u: peer ERROR %u (%s) about 0x%x: %s", c.serial, e.code,
                            std::string(toString(static_cast<WireError>(e.code))), e.request, e.text));
        return;
      }
      default: return;  // the table admits nothing else
    }
  }

  void handleHello(Connection& c, const Frame& f) {
    const p2::Hello hello = p2::decodeHello(f.payload.data());
    if (c.hello_done) {
      sendError(c, {WireError::kDuplicateHello, false, p2::kHello,
                    absl::StrFormat("HELLO again on connection %u: features already negotiated (0x%x)",
                                    c.serial, c.features)});
      return;
    }
    if (hello.magic != p2::kMagic) {
      fatal(c, {WireError::kBadMagic, true, p2::kHello,
                absl::StrFormat("HELLO magic 0x%08x, expects 0x%08x ('IOPF')", hello.magic, p2::kMagic)});
      return;
    }
    if (hello.major != p2::kMajor) {
      fatal(c, {WireError::kUnsupportedMajor, true, p2::kHello,
                absl::StrFormat("HELLO version %u.%u, server speaks %u.%u", hello.major, hello.minor,
                                p2::kMajor, p2::kMinor)});
      return;
    }
    c.hello_done = true;
    c.features = hello.features & p2::kServerFeatures;
    const std::vector<uint8_t> reply =
        p2::helloFrame({p2::kMagic, p2::kMajor, p2::kMinor, c.features}, /*reply=*/true);
    appendOut(c, reply);
  }

  void handleDeviceAdd(Connection& c, const Frame& f) {
    const p2::DeviceAdd a = p2::decodeDeviceAdd(f.payload.data());
    auto reply = [&](p2::Status s, std::string why) {
      if (s != p2::Status::kOk) log(absl::StrFormat("connection %u: DEVICE_ADD %u: %s: %s", c.serial, a.dev_id, std::string(p2::toString(s)), why));
      appendOut(c, p2::statusReplyFrame(p2::kDeviceAdd, s));
    };
    if (c.devices.contains(a.dev_id)) return reply(p2::Status::kAlreadyExists, "dev_id already declared");
    if (a.pasid_bits > p2::kMaxPasidBits || (a.flags & ~p2::kDeviceKnownFlags) != 0 || a.reserved0 != 0 ||
        a.reserved1 != 0) {
      return reply(p2::Status::kInvalidArgument,
                   absl::StrFormat("pasid_bits %u (max %u), flags 0x%x (known 0x%x), reserved %u/%u (must be 0)",
                                   a.pasid_bits, p2::kMaxPasidBits, a.flags, p2::kDeviceKnownFlags, a.reserved0,
                                   a.reserved1));
    }
    if (c.devices.size() >= options_.max_devices_per_connection) {
      return reply(p2::Status::kResourceExhausted,
                   absl::StrFormat("%u devices declared, limit %u", c.devices.size(),
                                   options_.max_devices_per_connection));
    }
    DeviceSpec spec;
    spec.name = absl::StrFormat("qemu_socket/%u/%u", c.serial, a.dev_id);
    spec.backend_handle = handleOf(c.serial, a.dev_id);
    spec.pci_segment = a.segment;
    spec.rid = a.rid;
    spec.pri_allocation = a.pri_outstanding_alloc;
    spec.pasid_bits = a.pasid_bits;
    spec.needs_pasid = (a.flags & p2::kDeviceNeedsPasid) != 0;
    spec.stall_model = (a.flags & p2::kDeviceStallModel) != 0;
    absl::StatusOr<DeviceId> id = sink_->addDevice(spec);
    if (!id.ok()) return reply(p2::Status::kInternal, std::string(id.status().message()));
    c.devices.emplace(a.dev_id, VmmDevice{*id, a.pasid_bits, spec.stall_model});
    bump(c_.devices_open);
    if (options_.on_device) {
      options_.on_device(VmmDeviceEvent{true, *id, c.serial, a.dev_id, a.viommu_id, a.virt_id, spec});
    }
    reply(p2::Status::kOk, {});
  }

  void handleDeviceDel(Connection& c, const Frame& f) {
    const uint32_t dev_id = getU32(f.payload.data());
    if (!c.devices.contains(dev_id)) {
      log(absl::StrFormat("connection %u: DEVICE_DEL %u: not declared", c.serial, dev_id));
      appendOut(c, p2::statusReplyFrame(p2::kDeviceDel, p2::Status::kNotFound));
      return;
    }
    removeDevice(c, dev_id, /*answer_open=*/true);
    appendOut(c, p2::statusReplyFrame(p2::kDeviceDel, p2::Status::kOk));
  }

  // Removes one device from the router. With answer_open (DEVICE_DEL), responses the router has
  // already handed over are written first, then every group still open gets INVALID (origin
  // detach) on the wire before anything else is sent on this connection.
  void removeDevice(Connection& c, uint32_t dev_id, bool answer_open) {
    auto it = c.devices.find(dev_id);
    const VmmDevice dev = it->second;
    c.devices.erase(it);
    (void)sink_->removeDevice(dev.router_id);
    if (c_.devices_open.load(std::memory_order_relaxed) > 0) c_.devices_open.fetch_sub(1, std::memory_order_relaxed);
    if (options_.on_device) {
      VmmDeviceEvent e;
      e.device = dev.router_id;
      e.connection = c.serial;
      e.vmm_dev_id = dev_id;
      options_.on_device(e);
    }
    if (!answer_open) return;
    // The device is no longer in c.devices: drainOutbox would drop its responses. Answer decided
    // ones first by draining with a temporary re-entry.
    c.devices.emplace(dev_id, dev);
    drainOutbox(/*flush=*/false);
    c.devices.erase(dev_id);
    for (auto g = c.open.begin(); g != c.open.end();) {
      if (g->second != dev_id) {
        ++g;
        continue;
      }
      queueResponse(c, {g->first, static_cast<uint32_t>(ResponseCode::kInvalid)});
      bump(c_.detach_responses);
      c.open.erase(g++);
    }
    frameResponses(c);
  }

  void removeAllDevices(Connection& c) {
    while (!c.devices.empty()) removeDevice(c, c.devices.begin()->first, /*answer_open=*/false);
    c.open.clear();
  }

  void handlePageReq(Connection& c, const Frame& f) {
    const size_t n = f.payload.size() / kPgfaultSize;
    if (n > 1 && (c.features & p2::kFeatureBatch) == 0) {
      bump(c_.records_rejected, n);
      sendError(c, {WireError::kNotNegotiated, false, p2::kPageReq,
                    absl::StrFormat("PAGE_REQ with %u records, but BATCH was not negotiated (1 record per frame)", n)});
      return;
    }
    bool reported = false;
    for (size_t i = 0; i < n; ++i) {
      const PgfaultRecord rec = decodePgfault(f.payload.data() + i * kPgfaultSize);
      std::optional<FrameError> bad = checkRecord(c, rec, i, n);
      if (bad) {
        bump(c_.records_rejected);
        if (!reported) sendError(c, *bad);  // one ERROR per frame; every rejection is counted
        reported = true;
        continue;
      }
      const VmmDevice& dev = c.devices.find(rec.dev_id)->second;
      PageRequest req = toPageRequest(rec, dev.router_id);
      if (req.last && !isStopMarker(req)) c.open.emplace(rec.cookie, rec.dev_id);
      batch_.push_back(req);
    }
    if (batch_.size() >= 4 * p2::kMaxBatch) deliverBatch();
  }

  std::optional<FrameError> checkRecord(const Connection& c, const PgfaultRecord& r, size_t i, size_t n) const {
    auto it = c.devices.find(r.dev_id);
    if (it == c.devices.end()) {
      return FrameError{WireError::kUnknownDevice, false, p2::kPageReq,
                        absl::StrFormat("PAGE_REQ record %u of %u: dev_id %u is not declared on connection %u",
                                        i, n, r.dev_id, c.serial)};
    }
    const VmmDevice& d = it->second;
    auto bad = [&](std::string what) {
      return FrameError{WireError::kBadRecord, false, p2::kPageReq,
                        absl::StrFormat("PAGE_REQ record %u of %u (dev_id %u): %s", i, n, r.dev_id, what)};
    };
    const bool last = (r.flags & kPgfaultLastPage) != 0;
    if ((r.flags & kPgfaultPasidValid) != 0) {
      if (d.pasid_bits == 0) return bad(absl::StrFormat("PASID %u, but the device declared pasid_bits 0", r.pasid));
      if (d.pasid_bits < 32 && r.pasid >= (1u << d.pasid_bits)) {
        return bad(absl::StrFormat("PASID %u does not fit the declared pasid_bits %u", r.pasid, d.pasid_bits));
      }
    }
    if (d.stall) {
      if (!last) return bad("not LAST, but a stall-model device sends single-request groups");
      if (r.grpid > 0xFFFF) return bad(absl::StrFormat("grpid 0x%x, a stall tag has 16 bits", r.grpid));
    } else if (r.grpid > 0x1FF) {
      return bad(absl::StrFormat("grpid 0x%x, a PCIe PRGI has 9 bits", r.grpid));
    }
    if (last && c.open.contains(r.cookie)) {
      return FrameError{WireError::kDuplicateGroup, false, p2::kPageReq,
                        absl::StrFormat("PAGE_REQ record %u of %u (dev_id %u): cookie %u is still open (group "
                                        "awaiting its PAGE_RESP)",
                                        i, n, r.dev_id, r.cookie)};
    }
    return std::nullopt;
  }

  void deliverBatch() {
    if (batch_.empty()) return;
    sink_->deliver(batch_);
    bump(c_.records_in, batch_.size());  // after deliver: tests wait on it, then run the router
    batch_.clear();
  }

  void onWake() {
    drainOutbox();
    for (size_t i = 0; i < pending_flush_.size(); ++i) {
      auto cit = conns_.find(pending_flush_[i]);
      if (cit != conns_.end()) flushConnection(*cit->second);
    }
    pending_flush_.clear();
    if (stop_requested_.load(std::memory_order_acquire)) {
      for (auto& [serial, conn] : conns_) (void)conn->io.flush();
      loop_.stop();
    }
  }

  // Writes the responses handed over by respond(). With flush=false nothing is written to the
  // sockets yet (callers in the middle of handling a frame keep their Connection reference valid).
  void drainOutbox(bool flush = true) {
    {
      std::lock_guard lk(outbox_mu_);
      draining_.swap(outbox_);
    }
    if (draining_.empty()) return;
    touched_.clear();
    for (const Response& r : draining_) {
      const uint32_t serial = static_cast<uint32_t>(r.backend_handle >> 32);
      const uint32_t dev_id = static_cast<uint32_t>(r.backend_handle);
      auto cit = conns_.find(serial);
      if (cit == conns_.end() || cit->second->closing || !r.cookie) {
        bump(c_.responses_dropped);
        continue;
      }
      Connection& c = *cit->second;
      auto dit = c.devices.find(dev_id);
      auto git = c.open.find(*r.cookie);
      if (dit == c.devices.end() || dit->second.router_id != r.device || git == c.open.end() ||
          git->second != dev_id) {
        bump(c_.responses_dropped);
        continue;
      }
      c.open.erase(git);
      if (r.delivery == Delivery::kKernelAnswered) continue;
      if (c.resp_batch.empty()) touched_.push_back(serial);
      queueResponse(c, {*r.cookie, static_cast<uint32_t>(r.code)});
    }
    draining_.clear();
    for (uint32_t serial : touched_) {
      auto cit = conns_.find(serial);
      if (cit == conns_.end()) continue;
      frameResponses(*cit->second);
      if (flush) {
        flushConnection(*cit->second);
      } else {
        pending_flush_.push_back(serial);
      }
    }
  }

  void queueResponse(Connection& c, PageResponseRecord rec) {
    c.resp_batch.push_back(rec);
    if (c.resp_batch.size() >= c.batchLimit()) frameResponses(c);
  }

  void frameResponses(Connection& c) {
    if (c.resp_batch.empty()) return;
    const size_t n = c.resp_batch.size();
    std::vector<uint8_t>& out = c.io.outBytes();
    const size_t at = out.size();
    out.resize(at + kHeaderSize + n * kPageResponseSize);
    encodeHeader({p2::kPageResp, kVersion, static_cast<uint32_t>(n * kPageResponseSize)}, out.data() + at);
    for (size_t i = 0; i < n; ++i) encodePageResponse(c.resp_batch[i], out.data() + at + kHeaderSize + i * kPageResponseSize);
    bump(c_.responses_sent, n);
    c.resp_batch.clear();
  }

  void appendOut(Connection& c, std::span<const uint8_t> frame) {
    frameResponses(c);  // keep PAGE_RESP order relative to other frames
    std::vector<uint8_t>& out = c.io.outBytes();
    out.insert(out.end(), frame.begin(), frame.end());
  }

  void sendError(Connection& c, const FrameError& e) {
    bump(c_.errors_sent);
    log(absl::StrFormat("connection %u: %s", c.serial, e.toStatus().ToString()));
    frameResponses(c);
    p2::appendErrorFrame(c.io.outBytes(), {static_cast<uint32_t>(e.code), e.request, e.message});
  }

  void fatal(Connection& c, const FrameError& e) {
    bump(c_.fatal_closes);
    sendError(c, e);
    closeConnection(c, e.message);
  }

  // Writes what the socket takes. Returns false if the connection is gone (freed): the caller
  // MUST NOT touch `c` afterwards.
  bool flushConnection(Connection& c) {
    if (c.closing) return true;
    absl::Status st = c.io.flush();
    if (!st.ok()) {
      closeConnection(c, std::string(st.message()));
      finishClose(c.serial);
      return false;
    }
    const bool want = c.io.wantsWrite();
    if (want != c.epollout) {
      c.epollout = want;
      (void)loop_.modify(c.io.fd(), EPOLLIN | EPOLLRDHUP | (want ? uint32_t{EPOLLOUT} : 0u));
    }
    return true;
  }

  // Marks a connection closing: its devices leave the router now (their open groups are answered
  // INVALID, origin detach, by the router; nothing more is written to this peer except what is
  // already queued). finishClose() frees it once no frame of it is being processed.
  void closeConnection(Connection& c, const std::string& why) {
    if (c.closing) return;
    c.closing = true;
    deliverBatch();
    log(absl::StrFormat("connection %u closed: %s", c.serial, why));
    (void)c.io.flush();  // best effort: the ERROR that explains a fatal close
    removeAllDevices(c);
  }

  void finishClose(uint32_t serial) {
    auto it = conns_.find(serial);
    if (it == conns_.end()) return;
    loop_.remove(it->second->io.fd());
    conns_.erase(it);
    c_.connections_open.fetch_sub(1, std::memory_order_relaxed);
  }

  const Options& options_;
  RouterSink* sink_ = nullptr;
  EventLoop loop_;
  UniqueFd listener_;
  uint32_t next_serial_ = 1;
  absl::flat_hash_map<uint32_t, std::unique_ptr<Connection>> conns_;
  std::vector<PageRequest> batch_;
  std::mutex outbox_mu_;
  std::vector<Response> outbox_;
  std::vector<Response> draining_;
  std::vector<uint32_t> touched_;
  std::vector<uint32_t> pending_flush_;
  std::atomic<bool> stop_requested_{false};
  Counters c_;
};

QemuSocketBackend::QemuSocketBackend(Options options) : options_(std::move(options)) {}

QemuSocketBackend::~QemuSocketBackend() { stop(); }

absl::Status QemuSocketBackend::start(RouterSink& sink) {
  return loop_.start(options_, sink, absl::StrCat("qemu_socket backend '", options_.socket_path, "'"));
}

void QemuSocketBackend::stop() { loop_.stop(); }

void QemuSocketBackend::respond(std::span<const Response> responses) {
  if (loop_) loop_->enqueue(responses);
}

QemuSocketStats QemuSocketBackend::stats() const { return loop_ ? loop_->stats() : QemuSocketStats{}; }

}  // namespace iopf::qemu_socket
