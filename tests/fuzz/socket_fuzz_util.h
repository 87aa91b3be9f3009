// Shared by the socket-codec fuzz targets: split an input into chunks and run them through a
// FrameDecoder the way a socket delivers them (frames cut anywhere).
#pragma once

#include <cstdint>
#include <span>

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

}  // namespace iopf::qemu_socket::fuzz
