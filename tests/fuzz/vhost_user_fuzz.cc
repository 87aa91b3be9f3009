// Fuzz target: the "vhost-iotlb" profile of the QEMU socket backend (docs/protocols/qemu-socket.md
// §4): what a vhost-user back-end (a device process such as DPDK's vhost PMD) sends to iopfd's
// front-end — replies on the main socket and BACKEND_IOTLB_MSG requests on the back-end channel.
//
// Input: u16 n, then n bytes for the main socket, then the rest for the back-end channel.
// 1. Codec: both parts through FrameDecoder in random chunks, checked against the front-end's reply
//    table and the back-end channel table; IOTLB payloads decoded.
// 2. Live: a peer connects to a running VhostIotlbFrontend, writes the main part, and once the
//    front-end hands it the back-end channel (SET_BACKEND_REQ_FD), writes the rest there; then it
//    half-closes and reads until the front-end closes. 10 s without progress aborts (a finding).
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>

#include "iopf/handler.h"
#include "iopf/router.h"
#include "socket_fuzz_util.h"
#include "socket_io.h"
#include "vhost_iotlb_frontend.h"
#include "vhost_iotlb_protocol.h"

namespace qs = iopf::qemu_socket;

namespace {

void decodePart(std::span<const uint8_t> bytes, const qs::MessageTable& table, uint32_t seed) {
  qs::FrameDecoder decoder(4096);
  qs::fuzz::decodeChunked(
      decoder, bytes, seed,
      [&](const qs::Frame& f) {
        if (table.check(f)) return;
        if (f.header.request == qs::vu::kBackendIotlbMsg && f.payload.size() == qs::vu::kIotlbMsgSize &&
            &table == &qs::vu::backendChannelTable()) {
          const qs::vu::IotlbMsg m = qs::vu::decodeIotlb(f.payload.data());
          uint8_t out[qs::vu::kIotlbMsgSize] = {};
          qs::vu::encodeIotlb(m, out);
          if (std::memcmp(out, f.payload.data(), 26) != 0) std::abort();  // the fields round-trip
        }
      },
      [](const qs::FrameError& e) { (void)e.toStatus(); });
}

struct Live {
  Live() {
    router = qs::fuzz::fuzzRouter(iopf::DomainKind::kPaging, 0x1000, domain);
    qs::VhostIotlbFrontend::Options fo;
    fo.socket_path = "/tmp/iopf_fuzz_vhost_" + std::to_string(::getpid()) + ".sock";
    fo.memory_bytes = 1 << 20;
    fo.on_device = [this](iopf::DeviceId device, uint32_t, bool added) {
      if (added) (void)router->attach(device, std::nullopt, domain);
    };
    fo.log = [this](std::string_view text) {
      std::lock_guard lk(log_mu);
      last_log = std::string(text);
    };
    frontend = std::make_unique<qs::VhostIotlbFrontend>(fo);
    if (!router->addBackend(*frontend).ok()) {
      std::fprintf(stderr, "vhost_user_fuzz: the front-end did not start on %s\n", fo.socket_path.c_str());
      std::abort();
    }
  }
  ~Live() {
    router->shutdown();
    frontend->stop();
    ::unlink(frontend->socketPath().c_str());
  }
  std::mutex log_mu;
  std::string last_log;  // the front-end's last diagnostic, shown when a run makes no progress
  std::unique_ptr<qs::VhostIotlbFrontend> frontend;
  std::unique_ptr<iopf::Router> router;
  iopf::DomainId domain = 0;
};

// Reads what is there; keeps the first fd that arrives (the back-end channel).
bool drain(int s, qs::UniqueFd& channel) {
  char buf[65536];
  iovec iov{buf, sizeof(buf)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = ::recvmsg(s, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); n > 0 && c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (!channel.valid()) {
        channel = qs::UniqueFd(fd);
      } else {
        ::close(fd);  // kick/call eventfds or memory: not ours to keep
      }
    }
  }
  return n != 0 && !(n < 0 && errno != EAGAIN);
}

void driveLive(std::span<const uint8_t> main_part, std::span<const uint8_t> channel_part) {
  static Live live;
  auto fd = qs::connectUnix(live.frontend->socketPath());
  if (!fd.ok()) std::abort();
  const int s = fd->get();
  qs::UniqueFd channel;
  size_t sent = 0, channel_sent = 0;
  bool open = true;
  auto deadline = [&] {
    const qs::VhostIotlbStats st = live.frontend->stats();
    std::fprintf(stderr,
                 "vhost_user_fuzz: no progress for 10 s (sent %zu of %zu main bytes, channel %s %zu of %zu; "
                 "front-end: %llu connections open, %llu misses, %llu groups, %llu protocol errors)\n",
                 sent, main_part.size(), channel.valid() ? "open" : "not yet", channel_sent,
                 channel_part.size(), static_cast<unsigned long long>(st.connections_open),
                 static_cast<unsigned long long>(st.misses), static_cast<unsigned long long>(st.groups),
                 static_cast<unsigned long long>(st.protocol_errors));
    {
      std::lock_guard lk(live.log_mu);
      std::fprintf(stderr, "vhost_user_fuzz: %llu accepted; last front-end log: %s\n",
                   static_cast<unsigned long long>(st.connections_accepted), live.last_log.c_str());
    }
    // Which threads run (R) and which sleep, and where.
    std::system(("for t in /proc/" + std::to_string(::getpid()) +
                 "/task/*; do echo \"$(cut -d' ' -f2,3 $t/stat) $(cat $t/wchan)\"; done >&2")
                    .c_str());
    // The fds and the epoll set: a connection the front-end still counts must have its fds here.
    std::system(("for f in /proc/" + std::to_string(::getpid()) + "/fd/*; do echo \"$f $(readlink $f)\"; "
                 "case $(readlink $f) in *eventpoll*) cat /proc/" + std::to_string(::getpid()) +
                 "/fdinfo/$(basename $f);; esac; done >&2").c_str());
    std::abort();
  };
  while (open && (sent < main_part.size() || (channel.valid() && channel_sent < channel_part.size()))) {
    pollfd p[2] = {{s, static_cast<short>(POLLIN | (sent < main_part.size() ? POLLOUT : 0)), 0},
                   {channel.get(), POLLOUT, 0}};
    const bool use_channel = channel.valid() && channel_sent < channel_part.size();
    const int rc = qs::fuzz::pollFor(p, use_channel ? 2 : 1, 10000);
    if (rc <= 0) {
      if (sent >= main_part.size()) break;  // the front-end waits for a reply it never gets: fine
      deadline();
    }
    if (p[0].revents & POLLIN) open = drain(s, channel);
    if (p[0].revents & POLLOUT) {
      const ssize_t n =
          ::send(s, main_part.data() + sent, main_part.size() - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN) open = false;
      if (n > 0) sent += static_cast<size_t>(n);
    }
    if (use_channel && (p[1].revents & POLLOUT)) {
      const ssize_t n = ::send(channel.get(), channel_part.data() + channel_sent,
                               channel_part.size() - channel_sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN) channel_sent = channel_part.size();
      if (n > 0) channel_sent += static_cast<size_t>(n);
    }
    if (p[0].revents & (POLLERR | POLLHUP)) open = false;
  }
  ::shutdown(s, SHUT_WR);
  if (channel.valid()) ::shutdown(channel.get(), SHUT_WR);
  while (open) {
    pollfd p{s, POLLIN, 0};
    if (qs::fuzz::pollFor(&p, 1, 10000) <= 0) deadline();
    open = drain(s, channel);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t n = std::min<size_t>(size - 2, size_t{data[0]} | (size_t{data[1]} << 8));
  const std::span<const uint8_t> main_part(data + 2, n);
  const std::span<const uint8_t> channel_part(data + 2 + n, size - 2 - n);
  decodePart(main_part, qs::vu::frontEndReplyTable(), data[0]);
  decodePart(channel_part, qs::vu::backendChannelTable(), data[1]);
  driveLive(main_part, channel_part);
  return 0;
}
