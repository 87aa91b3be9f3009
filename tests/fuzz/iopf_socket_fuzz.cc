// Fuzz target: the "iopf" profile of the QEMU socket backend (docs/protocols/qemu-socket.md §3), as a
// VMM on the other end of the socket would drive it.
//
// 1. Codec: the input as a byte stream cut into random chunks through FrameDecoder, each frame
//    checked against both profile tables and its payload decoded (HELLO, DEVICE_ADD, PAGE_REQ
//    records → router requests, PAGE_RESP, ERROR).
// 2. Live: the same bytes written by a real peer to a running QemuSocketBackend (a threaded router
//    answers every group); the peer half-closes and reads until the backend closes the connection.
//    A hang there (the backend never closing) aborts with a message: that is a finding too.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>

#include "iopf/handler.h"
#include "iopf/router.h"
#include "iopf_protocol.h"
#include "qemu_socket_backend.h"
#include "socket_fuzz_util.h"
#include "socket_io.h"

namespace qs = iopf::qemu_socket;

namespace {

void decodeOnly(const uint8_t* data, size_t size) {
  qs::FrameDecoder decoder(qs::p2::kMaxPayload);
  const uint32_t seed = size > 0 ? data[0] : 0;
  qs::fuzz::decodeChunked(
      decoder, std::span<const uint8_t>(data, size), seed,
      [](const qs::Frame& f) {
        const bool server_ok = !qs::p2::serverInboundTable().check(f).has_value();
        const bool peer_ok = !qs::p2::peerInboundTable().check(f).has_value();
        const uint8_t* p = f.payload.data();
        const size_t n = f.payload.size();
        switch (f.header.request) {
          case qs::p2::kHello:
            if (server_ok || peer_ok) {
              uint8_t out[qs::p2::kHelloSize];
              qs::p2::encodeHello(qs::p2::decodeHello(p), out);
              if (std::memcmp(out, p, sizeof(out)) != 0) std::abort();  // HELLO round-trips exactly
            }
            break;
          case qs::p2::kDeviceAdd:
            if (server_ok) (void)qs::p2::decodeDeviceAdd(p);
            break;
          case qs::p2::kPageReq:
            if (server_ok) {
              for (size_t i = 0; i + qs::kPgfaultSize <= n; i += qs::kPgfaultSize) {
                const qs::PgfaultRecord rec = qs::decodePgfault(p + i);
                const iopf::PageRequest req = qs::toPageRequest(rec, 1);
                if (req.perm > 0xF) std::abort();  // perm is masked
              }
            }
            break;
          case qs::p2::kPageResp:
            if (peer_ok) {
              for (size_t i = 0; i + qs::kPageResponseSize <= n; i += qs::kPageResponseSize) {
                (void)qs::decodePageResponse(p + i);
              }
            }
            break;
          case qs::p2::kError:
            if (server_ok) {
              const qs::p2::ErrorMessage e = qs::p2::decodeError(f.payload);
              if (e.text.size() > qs::p2::kMaxErrorText) std::abort();
            }
            break;
          default:
            break;
        }
      },
      [](const qs::FrameError& e) { (void)e.toStatus(); });
}

// One backend and router for the whole run (a campaign makes millions of connections).
struct Live {
  Live() {
    router = qs::fuzz::fuzzRouter(iopf::DomainKind::kNested, 1, domain);
    qs::QemuSocketBackend::Options bo;
    bo.socket_path = "/tmp/iopf_fuzz_iopf_" + std::to_string(::getpid()) + ".sock";
    bo.on_device = [this](const qs::VmmDeviceEvent& e) {
      if (e.added) (void)router->attach(e.device, std::nullopt, domain);
    };
    backend = std::make_unique<qs::QemuSocketBackend>(bo);
    if (!router->addBackend(*backend).ok()) {
      std::fprintf(stderr, "iopf_socket_fuzz: the backend did not start on %s\n", bo.socket_path.c_str());
      std::abort();
    }
  }
  ~Live() {
    router->shutdown();
    backend->stop();
    ::unlink(backend->socketPath().c_str());
  }
  std::unique_ptr<qs::QemuSocketBackend> backend;  // outlives the router
  std::unique_ptr<iopf::Router> router;
  iopf::DomainId domain = 0;
};

// A stall is a finding: say what state the backend was in.
[[noreturn]] void stalled(const Live& live, const char* what) {
  const qs::QemuSocketStats st = live.backend->stats();
  std::fprintf(stderr,
               "iopf_socket_fuzz: %s (backend: %llu accepted, %llu open, %llu refused, %llu fatal closes, "
               "%llu frames in)\n",
               what, static_cast<unsigned long long>(st.connections_accepted),
               static_cast<unsigned long long>(st.connections_open),
               static_cast<unsigned long long>(st.connections_refused),
               static_cast<unsigned long long>(st.fatal_closes), static_cast<unsigned long long>(st.frames_in));
  std::abort();
}

void driveLive(const uint8_t* data, size_t size) {
  static Live live;
  auto fd = qs::connectUnix(live.backend->socketPath());
  if (!fd.ok()) {
    std::fprintf(stderr, "iopf_socket_fuzz: connect: %s\n", std::string(fd.status().message()).c_str());
    std::abort();
  }
  const int s = fd->get();
  size_t sent = 0;
  char sink[65536];
  while (sent < size) {
    // Write what fits, read what came back (the backend answers while we write).
    pollfd p{s, POLLOUT | POLLIN, 0};
    if (qs::fuzz::pollFor(&p, 1, 10000) <= 0) {
      stalled(live, "the backend stopped reading and writing for 10 s");
    }
    if (p.revents & POLLIN) {
      if (::recv(s, sink, sizeof(sink), MSG_DONTWAIT) == 0) return;  // closed on us: fine
    }
    if (p.revents & POLLOUT) {
      const ssize_t n = ::send(s, data + sent, size - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n < 0 && errno != EAGAIN) return;  // reset by the backend (fatal protocol error)
      if (n > 0) sent += static_cast<size_t>(n);
    }
    if (p.revents & (POLLERR | POLLHUP)) return;
  }
  ::shutdown(s, SHUT_WR);
  for (;;) {
    pollfd p{s, POLLIN, 0};
    if (qs::fuzz::pollFor(&p, 1, 10000) <= 0) {
      stalled(live, "the backend kept the connection open 10 s after end of input");
    }
    const ssize_t n = ::recv(s, sink, sizeof(sink), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  decodeOnly(data, size);
  driveLive(data, size);
  return 0;
}
