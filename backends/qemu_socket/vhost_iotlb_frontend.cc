#include "vhost_iotlb_frontend.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "socket_io.h"
#include "vhost_iotlb_protocol.h"

namespace iopf::qemu_socket {

namespace {

constexpr uint64_t kPage = 4096;
constexpr uint32_t kMaxPayload = 4096;  // every message of this profile is far smaller

struct MappedMemory : GuestMemory {
  UniqueFd fd;
  ~MappedMemory() {
    if (base != nullptr) ::munmap(base, size);
  }
};

// One request on the main socket; the next is sent only when this one is answered (if it
// expects an answer): vhost-user's main channel is strictly request → reply.
struct Op {
  std::vector<uint8_t> frame;
  std::vector<UniqueFd> fds;
  bool expects_reply = false;
  std::function<void(uint64_t)> on_reply;
};

struct PendingMiss {
  uint64_t page = 0;
  uint8_t vhost_perm = 0;
  uint64_t key = 0;
  uint32_t acks_owed = 0;  // MISSes with NEED_REPLY waiting for this group
};

struct FeConn {
  uint32_t serial = 0;
  StreamSocket main;
  std::unique_ptr<StreamSocket> channel;
  std::shared_ptr<MappedMemory> memory;
  std::vector<UniqueFd> kick;
  std::vector<UniqueFd> call;
  std::deque<Op> ops;
  std::optional<uint32_t> in_flight;  // request id awaiting its reply
  std::function<void(uint64_t)> in_flight_reply;
  uint64_t features = 0;
  uint64_t protocol = 0;
  DeviceId device = 0;
  bool device_added = false;
  bool closing = false;
  bool main_epollout = false;
  uint32_t next_cookie = 0;
  absl::flat_hash_map<uint64_t, uint32_t> miss_by_key;  // (page | perm) → cookie
  absl::flat_hash_map<uint32_t, PendingMiss> misses;    // cookie → outstanding MISS group

  // QEMU sends fds on the main socket (memory table, kick/call, the back-end channel): bounded reads.
  FeConn(uint32_t s, UniqueFd fd)
      : serial(s), main(std::move(fd), kMaxPayload, StreamSocket::ReadMode::kFrameBounded) {}
};

struct Counters {
  std::atomic<uint64_t> connections_accepted{0}, connections_open{0}, connections_ready{0}, misses{0},
      misses_coalesced{0}, groups{0}, updates_sent{0}, updates_acked{0}, miss_acks_ok{0}, miss_acks_failed{0},
      misses_refused{0}, protocol_errors{0}, setup_failures{0};
};

void bump(std::atomic<uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); }

uint8_t routerPerm(uint8_t vhost_perm) {
  // vhost perm bits RO=1, WO=2 are iommu_hwpt_pgfault READ/WRITE; a MISS with no permission asks
  // for read (a request without R/W would be a PRI stop marker).
  const uint8_t p = vhost_perm & (perm::kRead | perm::kWrite);
  return p == 0 ? perm::kRead : p;
}

}  // namespace

class VhostIotlbFrontend::Loop {
 public:
  explicit Loop(const Options& options) : options_(options) {}

  absl::Status init(RouterSink& sink) {
    sink_ = &sink;
    if (options_.queues == 0 || options_.queue_size == 0 || (options_.queue_size & (options_.queue_size - 1)) != 0 ||
        options_.queue_size > 256 || options_.memory_bytes < kDataOffset + kPage ||
        options_.queues * kRingStride > kDataOffset) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "vhost-iotlb: queues %u (1..%u), queue_size %u (power of two ≤ 256), memory %u bytes (≥ %u)",
          options_.queues, kDataOffset / kRingStride, options_.queue_size, options_.memory_bytes, kDataOffset + kPage));
    }
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
  void teardown() {
    std::lock_guard lk(shared_mu_);
    conns_.clear();
    shared_.clear();
    listener_.reset();
    ::unlink(options_.socket_path.c_str());
  }

  void enqueue(std::span<const Response> responses) {
    {
      std::lock_guard lk(outbox_mu_);
      outbox_.insert(outbox_.end(), responses.begin(), responses.end());
    }
    loop_.wake();
  }

  VhostIotlbStats stats() const {
    auto r = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
    VhostIotlbStats s;
    s.connections_accepted = r(c_.connections_accepted);
    s.connections_open = r(c_.connections_open);
    s.connections_ready = r(c_.connections_ready);
    s.misses = r(c_.misses);
    s.misses_coalesced = r(c_.misses_coalesced);
    s.groups = r(c_.groups);
    s.updates_sent = r(c_.updates_sent);
    s.updates_acked = r(c_.updates_acked);
    s.miss_acks_ok = r(c_.miss_acks_ok);
    s.miss_acks_failed = r(c_.miss_acks_failed);
    s.misses_refused = r(c_.misses_refused);
    s.protocol_errors = r(c_.protocol_errors);
    s.setup_failures = r(c_.setup_failures);
    return s;
  }

  // --- shared with other threads (memory, kick fds) -------------------------------------------
  struct Shared {
    std::shared_ptr<MappedMemory> memory;
    std::vector<int> kick;  // owned by the FeConn; valid while the entry exists
  };
  std::vector<uint32_t> connections() const {
    std::lock_guard lk(shared_mu_);
    std::vector<uint32_t> out;
    for (const auto& [serial, s] : shared_) out.push_back(serial);
    std::sort(out.begin(), out.end());
    return out;
  }
  std::shared_ptr<const GuestMemory> memory(uint32_t serial) const {
    std::lock_guard lk(shared_mu_);
    auto it = shared_.find(serial);
    if (it == shared_.end()) return nullptr;
    return it->second.memory;
  }
  absl::Status kick(uint32_t serial, uint32_t vring) const {
    std::lock_guard lk(shared_mu_);
    auto it = shared_.find(serial);
    if (it == shared_.end()) return absl::NotFoundError(absl::StrCat("vhost-iotlb: no connection ", serial));
    if (vring >= it->second.kick.size()) {
      return absl::OutOfRangeError(absl::StrCat("vhost-iotlb: vring ", vring, ", connection has ", it->second.kick.size()));
    }
    const uint64_t one = 1;
    if (::write(it->second.kick[vring], &one, sizeof(one)) != sizeof(one)) {
      return absl::InternalError(absl::StrCat("vhost-iotlb: kick write: ", std::strerror(errno)));
    }
    return absl::OkStatus();
  }

 private:
  void log(const std::string& text) {
    if (options_.log) options_.log(text);
  }

  void onAccept() {
    for (;;) {
      const int fd = ::accept4(listener_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      const uint32_t serial = next_serial_++;
      auto conn = std::make_unique<FeConn>(serial, UniqueFd(fd));
      absl::Status st = setUpConnection(*conn);
      if (!st.ok()) {
        log(absl::StrCat("vhost-iotlb connection ", serial, ": ", st.ToString()));
        continue;
      }
      if (!loop_.add(conn->main.fd(), EPOLLIN | EPOLLRDHUP, [this, serial](uint32_t ev) { onMain(serial, ev); }).ok()) continue;
      FeConn& c = *conn;
      conns_.emplace(serial, std::move(conn));
      bump(c_.connections_accepted);
      bump(c_.connections_open);
      if (options_.on_device) options_.on_device(c.device, serial, true);
      startNext(c);
    }
  }

  absl::Status setUpConnection(FeConn& c) {
    auto mem = std::make_shared<MappedMemory>();
    mem->fd.reset(::memfd_create("iopf-vhost-guest", MFD_CLOEXEC));
    if (!mem->fd) return absl::InternalError(absl::StrCat("memfd_create: ", std::strerror(errno)));
    if (::ftruncate(mem->fd.get(), static_cast<off_t>(options_.memory_bytes)) != 0) {
      return absl::InternalError(absl::StrCat("ftruncate(memfd): ", std::strerror(errno)));
    }
    void* p = ::mmap(nullptr, options_.memory_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, mem->fd.get(), 0);
    if (p == MAP_FAILED) return absl::InternalError(absl::StrCat("mmap(memfd): ", std::strerror(errno)));
    mem->base = static_cast<uint8_t*>(p);
    mem->size = options_.memory_bytes;
    mem->iova_base = options_.iova_base;
    c.memory = mem;
    for (uint32_t i = 0; i < options_.queues; ++i) {
      c.kick.emplace_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
      c.call.emplace_back(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
      if (!c.kick.back() || !c.call.back()) return absl::InternalError("eventfd for a vring");
    }
    DeviceSpec spec;
    spec.name = absl::StrFormat("vhost_iotlb/%u", c.serial);
    spec.backend_handle = c.serial;
    spec.stall_model = true;  // one MISS = one single-request group
    absl::StatusOr<DeviceId> id = sink_->addDevice(spec);
    if (!id.ok()) return id.status();
    c.device = *id;
    c.device_added = true;
    {
      std::lock_guard lk(shared_mu_);
      Shared& s = shared_[c.serial];
      s.memory = mem;
      for (const UniqueFd& k : c.kick) s.kick.push_back(k.get());
    }
    // The first two steps; the rest is queued once the back-end's protocol features are known.
    push(c, vu::getFrame(vu::kGetFeatures), {}, true, [this, &c](uint64_t f) { onFeatures(c, f); });
    return absl::OkStatus();
  }

  void push(FeConn& c, std::vector<uint8_t> frame, std::vector<UniqueFd> fds, bool expects_reply,
            std::function<void(uint64_t)> on_reply = {}) {
    c.ops.push_back(Op{std::move(frame), std::move(fds), expects_reply, std::move(on_reply)});
  }

  // Adds a message sent with NEED_REPLY: its ack is checked.
  void pushAcked(FeConn& c, std::vector<uint8_t> frame, std::vector<UniqueFd> fds, const char* what) {
    push(c, std::move(frame), std::move(fds), true, [this, what, serial = c.serial](uint64_t ack) {
      if (ack != 0) {
        bump(c_.setup_failures);
        log(absl::StrFormat("vhost-iotlb connection %u: %s acked %u (failure)", serial, what, ack));
      }
    });
  }

  void onFeatures(FeConn& c, uint64_t features) {
    const uint64_t need = vu::kFeatureIommuPlatform | vu::kFeatureProtocolFeatures | vu::kFeatureVersion1;
    if ((features & need) != need) {
      return failConnection(c, absl::StrFormat("back-end features 0x%x lack 0x%x (IOMMU_PLATFORM, PROTOCOL_FEATURES, "
                                               "VERSION_1 are required)",
                                               features, need & ~features));
    }
    c.features = features & need;
    push(c, vu::getFrame(vu::kGetProtocolFeatures), {}, true, [this, &c](uint64_t p) { onProtocolFeatures(c, p); });
  }

  void onProtocolFeatures(FeConn& c, uint64_t protocol) {
    const uint64_t need = vu::kProtocolReplyAck | vu::kProtocolBackendReq;
    if ((protocol & need) != need) {
      return failConnection(c, absl::StrFormat("back-end protocol features 0x%x lack 0x%x: IOMMU support requires "
                                               "REPLY_ACK and BACKEND_REQ",
                                               protocol, need & ~protocol));
    }
    c.protocol = need;
    push(c, vu::u64Frame(vu::kSetProtocolFeatures, 0, c.protocol), {}, false);
    pushAcked(c, encodeFrame(vu::kSetOwner, kFlagNeedReply, {}), {}, "SET_OWNER");
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
      return failConnection(c, absl::StrCat("socketpair for the back-end channel: ", std::strerror(errno)));
    }
    UniqueFd mine(pair[0]);
    UniqueFd theirs(pair[1]);
    (void)setNonBlocking(mine.get());
    c.channel = std::make_unique<StreamSocket>(std::move(mine), kMaxPayload);
    const uint32_t serial = c.serial;
    (void)loop_.add(c.channel->fd(), EPOLLIN | EPOLLRDHUP, [this, serial](uint32_t ev) { onChannel(serial, ev); });
    std::vector<UniqueFd> fds;
    fds.push_back(std::move(theirs));
    pushAcked(c, encodeFrame(vu::kSetBackendReqFd, kFlagNeedReply, {}), std::move(fds), "SET_BACKEND_REQ_FD");
    pushAcked(c, vu::u64Frame(vu::kSetFeatures, kFlagNeedReply, c.features), {}, "SET_FEATURES");
    vu::MemoryRegion region{options_.iova_base, options_.memory_bytes, reinterpret_cast<uint64_t>(c.memory->base), 0};
    std::vector<UniqueFd> memfd;
    memfd.emplace_back(::fcntl(c.memory->fd.get(), F_DUPFD_CLOEXEC, 0));
    pushAcked(c, vu::memTableFrame(std::span<const vu::MemoryRegion>(&region, 1), kFlagNeedReply), std::move(memfd),
              "SET_MEM_TABLE");
    for (uint32_t i = 0; i < options_.queues; ++i) {
      const uint64_t ring = options_.iova_base + i * kRingStride;
      pushAcked(c, vu::vringStateFrame(vu::kSetVringNum, i, options_.queue_size, kFlagNeedReply), {}, "SET_VRING_NUM");
      pushAcked(c, vu::vringStateFrame(vu::kSetVringBase, i, 0, kFlagNeedReply), {}, "SET_VRING_BASE");
      pushAcked(c, vu::vringAddrFrame(i, ring, ring + 0x2000, ring + 0x1000, kFlagNeedReply), {}, "SET_VRING_ADDR");
      std::vector<UniqueFd> kick;
      kick.emplace_back(::fcntl(c.kick[i].get(), F_DUPFD_CLOEXEC, 0));
      pushAcked(c, vu::u64Frame(vu::kSetVringKick, kFlagNeedReply, i), std::move(kick), "SET_VRING_KICK");
      std::vector<UniqueFd> call;
      call.emplace_back(::fcntl(c.call[i].get(), F_DUPFD_CLOEXEC, 0));
      pushAcked(c, vu::u64Frame(vu::kSetVringCall, kFlagNeedReply, i), std::move(call), "SET_VRING_CALL");
    }
    for (uint32_t i = 0; i < options_.queues; ++i) {
      const bool last = i + 1 == options_.queues;
      push(c, vu::vringStateFrame(vu::kSetVringEnable, i, 1, kFlagNeedReply), {}, true, [this, &c, last](uint64_t ack) {
        if (ack != 0) {
          bump(c_.setup_failures);
          log(absl::StrFormat("vhost-iotlb connection %u: SET_VRING_ENABLE acked %u", c.serial, ack));
        }
        if (last) bump(c_.connections_ready);
      });
    }
  }

  // Sends queued main-socket requests until one awaits its reply.
  void startNext(FeConn& c) {
    while (!c.closing && !c.in_flight && !c.ops.empty()) {
      Op op = std::move(c.ops.front());
      c.ops.pop_front();
      std::vector<int> raw;
      for (const UniqueFd& f : op.fds) raw.push_back(f.get());
      if (!c.main.queueFrameWithFds(op.frame, raw).ok()) return failConnection(c, "dup of an fd to send failed");
      if (op.expects_reply) {
        c.in_flight = decodeHeader(op.frame.data()).request;
        c.in_flight_reply = std::move(op.on_reply);
      }
    }
    flushMain(c);
  }

  void flushMain(FeConn& c) {
    if (c.closing) return;
    if (absl::Status st = c.main.flush(); !st.ok()) return failConnection(c, std::string(st.message()));
    const bool want = c.main.wantsWrite();
    if (want != c.main_epollout) {
      c.main_epollout = want;
      (void)loop_.modify(c.main.fd(), EPOLLIN | EPOLLRDHUP | (want ? uint32_t{EPOLLOUT} : 0u));
    }
  }

  void onMain(uint32_t serial, uint32_t events) {
    auto it = conns_.find(serial);
    if (it == conns_.end()) return;
    FeConn& c = *it->second;
    if ((events & EPOLLOUT) != 0) flushMain(c);
    for (int round = 0; round < 16 && !c.closing && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0; ++round) {
      const ssize_t n = c.main.readSome();
      if (n == -EAGAIN) break;
      if (n <= 0) {
        std::string why = n == 0 ? "back-end closed the main socket" : absl::StrCat("read error ", -n);
        if (n == 0) {
          if (auto e = c.main.decoder().finish()) why = e->message;
        }
        failConnection(c, why);
        break;
      }
      Frame f;
      FrameError e;
      for (;;) {
        const auto r = c.main.decoder().next(f, e);
        if (r == FrameDecoder::Result::kNeedMore) break;
        if (r == FrameDecoder::Result::kError) {
          failConnection(c, e.message);
          break;
        }
        if (auto bad = vu::frontEndReplyTable().check(f)) {
          bump(c_.protocol_errors);
          log(absl::StrCat("vhost-iotlb connection ", serial, ": ", bad->message));
          continue;
        }
        if (!f.header.isReply() || !c.in_flight || *c.in_flight != f.header.request) {
          failConnection(c, absl::StrFormat("unexpected %s %s on the main socket (awaiting a reply to %s)",
                                            f.header.isReply() ? "reply" : "request",
                                            vu::frontEndReplyTable().describe(f.header.request),
                                            c.in_flight ? vu::frontEndReplyTable().describe(*c.in_flight) : "nothing"));
          break;
        }
        auto reply = std::move(c.in_flight_reply);
        c.in_flight.reset();
        if (reply) reply(getU64(f.payload.data()));
        if (c.closing) break;
      }
      deliverBatch();
      startNext(c);
    }
    if (c.closing) finishClose(serial);
  }

  void onChannel(uint32_t serial, uint32_t events) {
    auto it = conns_.find(serial);
    if (it == conns_.end() || !it->second->channel) return;
    FeConn& c = *it->second;
    StreamSocket& ch = *c.channel;
    if ((events & EPOLLOUT) != 0) flushChannel(c);
    for (int round = 0; round < 16 && c.channel; ++round) {
      const ssize_t n = ch.readSome();
      if (n == -EAGAIN) break;
      if (n <= 0) {
        log(absl::StrCat("vhost-iotlb connection ", serial, ": back-end channel closed"));
        loop_.remove(ch.fd());
        c.channel.reset();
        break;
      }
      Frame f;
      FrameError e;
      for (;;) {
        const auto r = ch.decoder().next(f, e);
        if (r == FrameDecoder::Result::kNeedMore) break;
        if (r == FrameDecoder::Result::kError) {
          bump(c_.protocol_errors);
          log(absl::StrCat("vhost-iotlb connection ", serial, ": back-end channel: ", e.message));
          loop_.remove(ch.fd());
          c.channel.reset();
          break;
        }
        handleChannelFrame(c, f);
      }
    }
    deliverBatch();
    if (c.channel) flushChannel(c);
  }

  void handleChannelFrame(FeConn& c, const Frame& f) {
    const bool need_reply = f.header.needsReply();
    if (auto bad = vu::backendChannelTable().check(f)) {
      bump(c_.protocol_errors);
      log(absl::StrCat("vhost-iotlb connection ", c.serial, ": back-end channel: ", bad->message));
      if (need_reply) ackChannel(c, f.header.request, 1);
      return;
    }
    const vu::IotlbMsg m = vu::decodeIotlb(f.payload.data());
    if (m.type != vu::kIotlbMiss) {
      bump(c_.protocol_errors);
      log(absl::StrFormat("vhost-iotlb connection %u: BACKEND_IOTLB_MSG type %u at iova 0x%x, only MISS (1) is "
                          "served (ACCESS_FAIL is not supported)",
                          c.serial, m.type, m.iova));
      if (need_reply) ackChannel(c, vu::kBackendIotlbMsg, 1);
      return;
    }
    bump(c_.misses);
    const uint64_t page = m.iova & ~(kPage - 1);
    const uint64_t key = page | (m.perm & 3);
    if (auto it = c.miss_by_key.find(key); it != c.miss_by_key.end()) {
      bump(c_.misses_coalesced);
      if (need_reply) ++c.misses[it->second].acks_owed;
      return;
    }
    const uint32_t cookie = c.next_cookie++;
    c.miss_by_key.emplace(key, cookie);
    c.misses.emplace(cookie, PendingMiss{page, m.perm, key, need_reply ? 1u : 0u});
    PageRequest q;
    q.device = c.device;
    q.grpid = cookie & 0xFFFF;
    q.addr = m.iova;
    q.perm = routerPerm(m.perm);
    q.last = true;
    q.cookie = cookie;
    batch_.push_back(q);
  }

  void ackChannel(FeConn& c, uint32_t request, uint64_t value) {
    if (!c.channel) return;
    const std::vector<uint8_t> f = vu::u64Frame(request, kFlagReply, value);
    std::vector<uint8_t>& out = c.channel->outBytes();
    out.insert(out.end(), f.begin(), f.end());
  }

  void flushChannel(FeConn& c) {
    if (!c.channel) return;
    if (!c.channel->flush().ok()) {
      loop_.remove(c.channel->fd());
      c.channel.reset();
      return;
    }
    (void)loop_.modify(c.channel->fd(), EPOLLIN | EPOLLRDHUP | (c.channel->wantsWrite() ? uint32_t{EPOLLOUT} : 0u));
  }

  // Acks every MISS of a group (the first and the coalesced ones that asked) and forgets it.
  void finishMiss(FeConn& c, uint32_t cookie, uint64_t ack) {
    auto it = c.misses.find(cookie);
    if (it == c.misses.end()) return;
    for (uint32_t i = 0; i < it->second.acks_owed; ++i) {
      ackChannel(c, vu::kBackendIotlbMsg, ack);
      bump(ack == 0 ? c_.miss_acks_ok : c_.miss_acks_failed);
    }
    c.miss_by_key.erase(it->second.key);
    c.misses.erase(it);
    flushChannel(c);
  }

  void deliverBatch() {
    if (batch_.empty()) return;
    sink_->deliver(batch_);
    c_.groups.fetch_add(batch_.size(), std::memory_order_relaxed);  // after deliver: tests wait on it
    batch_.clear();
  }

  void onWake() {
    {
      std::lock_guard lk(outbox_mu_);
      draining_.swap(outbox_);
    }
    for (const Response& r : draining_) {
      auto it = conns_.find(static_cast<uint32_t>(r.backend_handle));
      if (it == conns_.end() || it->second->closing || !r.cookie) continue;
      FeConn& c = *it->second;
      auto m = c.misses.find(*r.cookie);
      if (m == c.misses.end() || r.device != c.device) continue;
      if (r.code != ResponseCode::kSuccess) {
        bump(c_.misses_refused);
        if (m->second.acks_owed == 0) {
          log(absl::StrFormat("vhost-iotlb connection %u: MISS at 0x%x refused (%s); the back-end asked for no ack",
                              c.serial, m->second.page, std::string(toString(r.code))));
        }
        finishMiss(c, *r.cookie, 1);
        continue;
      }
      const uint64_t page = m->second.page;
      if (page < options_.iova_base || page + kPage > options_.iova_base + options_.memory_bytes) {
        bump(c_.misses_refused);
        log(absl::StrFormat("vhost-iotlb connection %u: MISS at 0x%x granted, but the page is outside the memory "
                            "[0x%x, 0x%x)",
                            c.serial, page, options_.iova_base, options_.iova_base + options_.memory_bytes));
        finishMiss(c, *r.cookie, 1);
        continue;
      }
      vu::IotlbMsg update{page, kPage, reinterpret_cast<uint64_t>(c.memory->at(page)), vu::kPermRw, vu::kIotlbUpdate};
      const uint32_t cookie = *r.cookie;
      const uint32_t serial = c.serial;
      bump(c_.updates_sent);
      push(c, vu::iotlbFrame(vu::kIotlbMsg, update, kFlagNeedReply), {}, true, [this, serial, cookie](uint64_t ack) {
        auto cit = conns_.find(serial);
        if (cit == conns_.end()) return;
        if (ack == 0) bump(c_.updates_acked);
        finishMiss(*cit->second, cookie, ack == 0 ? 0 : 1);
      });
      startNext(c);
    }
    draining_.clear();
    if (stop_requested_.load(std::memory_order_acquire)) loop_.stop();
  }

  void failConnection(FeConn& c, const std::string& why) {
    if (c.closing) return;
    c.closing = true;
    bump(c_.protocol_errors);
    log(absl::StrCat("vhost-iotlb connection ", c.serial, " closed: ", why));
    deliverBatch();
    if (c.device_added) {
      (void)sink_->removeDevice(c.device);
      if (options_.on_device) options_.on_device(c.device, c.serial, false);
      c.device_added = false;
    }
  }

  void finishClose(uint32_t serial) {
    auto it = conns_.find(serial);
    if (it == conns_.end()) return;
    FeConn& c = *it->second;
    loop_.remove(c.main.fd());
    if (c.channel) loop_.remove(c.channel->fd());
    {
      std::lock_guard lk(shared_mu_);
      shared_.erase(serial);
    }
    conns_.erase(it);
    c_.connections_open.fetch_sub(1, std::memory_order_relaxed);
  }

  const Options& options_;
  RouterSink* sink_ = nullptr;
  EventLoop loop_;
  UniqueFd listener_;
  uint32_t next_serial_ = 1;
  absl::flat_hash_map<uint32_t, std::unique_ptr<FeConn>> conns_;
  std::vector<PageRequest> batch_;
  std::mutex outbox_mu_;
  std::vector<Response> outbox_;
  std::vector<Response> draining_;
  mutable std::mutex shared_mu_;
  absl::flat_hash_map<uint32_t, Shared> shared_;
  std::atomic<bool> stop_requested_{false};
  Counters c_;
};

VhostIotlbFrontend::VhostIotlbFrontend(Options options) : options_(std::move(options)) {}
VhostIotlbFrontend::~VhostIotlbFrontend() { stop(); }

absl::Status VhostIotlbFrontend::start(RouterSink& sink) {
  return loop_.start(options_, sink, absl::StrCat("vhost-iotlb front-end '", options_.socket_path, "'"));
}

void VhostIotlbFrontend::stop() { loop_.stop(); }

void VhostIotlbFrontend::respond(std::span<const Response> responses) {
  if (loop_) loop_->enqueue(responses);
}

VhostIotlbStats VhostIotlbFrontend::stats() const { return loop_ ? loop_->stats() : VhostIotlbStats{}; }
std::vector<uint32_t> VhostIotlbFrontend::connections() const { return loop_ ? loop_->connections() : std::vector<uint32_t>{}; }
std::shared_ptr<const GuestMemory> VhostIotlbFrontend::memory(uint32_t connection) const {
  return loop_ ? loop_->memory(connection) : nullptr;
}
absl::Status VhostIotlbFrontend::kick(uint32_t connection, uint32_t vring) const {
  return loop_ ? loop_->kick(connection, vring) : absl::FailedPreconditionError("vhost-iotlb front-end not started");
}

}  // namespace iopf::qemu_socket
