// Shared by the socket-codec fuzz targets: split an input into chunks and run them through a
// FrameDecoder the way a socket delivers them (frames cut anywhere).
#pragma once

#include <errno.h>
#include <poll.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>

#include "iopf/handler.h"
#include "iopf/router.h"
#include "vhost_user_codec.h"

namespace iopf::qemu_socket::fuzz {

// Feeds `bytes` into `decoder` in chunks whose sizes come from `seed` and calls `on_frame` for every
// frame, `on_error` for every refused one. Stops at a fatal error (the decoder is poisoned).
template <typename OnFrame, typename OnError>
void decodeChunked(FrameDecoder& decoder, std::span<const uint8_t> bytes, uint32_t seed, OnFrame on_frame,
                   OnError on_error) {
  size_t pos = 0;
  uint32_t s = seed | 1;
  while (pos < bytes.size()) {
    s = s * 1103515245u + 12345u;
    const size_t chunk = std::min<size_t>(bytes.size() - pos, 1 + (s >> 16) % 4096);
    decoder.feed(bytes.subspan(pos, chunk));
    pos += chunk;
    for (;;) {
      Frame frame;
      FrameError error;
      const FrameDecoder::Result r = decoder.next(frame, error);
      if (r == FrameDecoder::Result::kNeedMore) break;
      if (r == FrameDecoder::Result::kError) {
        on_error(error);
        if (error.fatal) return;
        continue;
      }
      on_frame(frame);
    }
  }
  if (auto err = decoder.finish()) on_error(*err);
}

// poll() for up to timeout_ms in all, restarted after a signal: libFuzzer's -timeout watchdog sends
// SIGALRM every second, and an interrupted poll is not a peer that stopped talking. Returns what
// poll returns (0 only when the whole time passed without an event).
inline int pollFor(pollfd* fds, nfds_t n, int timeout_ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()).count();
    const int rc = ::poll(fds, n, left > 0 ? static_cast<int>(left) : 0);
    if (rc >= 0 || errno != EINTR) return rc;
  }
}

// Answers every group at once: INVALID if the last request's address has `invalid_bit` set, else
// SUCCESS (both answers reach the live peer).
class AnswerByAddress final : public Handler {
 public:
  explicit AnswerByAddress(uint64_t invalid_bit) : invalid_bit_(invalid_bit) {}
  std::string_view name() const override { return "fuzz-answer"; }
  Verdict handle(const GroupView& g, const CompletionHandle&) override {
    return Verdict::respond((g.requests.back().addr & invalid_bit_) != 0 ? ResponseCode::kInvalid
                                                                         : ResponseCode::kSuccess);
  }

 private:
  const uint64_t invalid_bit_;
};

// The router of a live fuzz target: one shard, no spinning, a small event ring, one domain "fuzz"
// of `kind` whose chain is AnswerByAddress(invalid_bit). Returns the domain in `domain`.
inline std::unique_ptr<Router> fuzzRouter(DomainKind kind, uint64_t invalid_bit, DomainId& domain) {
  RouterOptions ro;
  ro.shards = 1;
  ro.idle_spin_ns = 0;
  ro.event_capacity = 1024;
  auto router = std::make_unique<Router>(ro);
  DomainSpec d;
  d.name = "fuzz";
  d.kind = kind;
  domain = *router->addDomain(d);
  (void)router->setChain(domain, {std::make_shared<AnswerByAddress>(invalid_bit)});
  return router;
}

}  // namespace iopf::qemu_socket::fuzz
