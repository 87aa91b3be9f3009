// Unix stream sockets with SCM_RIGHTS, and the epoll event loop that serves every socket of one
// backend instance from one thread (the vhost-user deadlock rule: a MISS outstanding on the
// back-end channel never stops the main socket from being read).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "unique_fd.h"
#include "vhost_user_codec.h"

namespace iopf::qemu_socket {

// Creates a listening AF_UNIX SOCK_STREAM socket (non-blocking, close-on-exec). A stale socket
// file at `path` is replaced; any other file there is an error.
absl::StatusOr<UniqueFd> listenUnix(const std::string& path, int backlog = 64);
// Connects (blocking, close-on-exec); the caller may switch it to non-blocking.
absl::StatusOr<UniqueFd> connectUnix(const std::string& path);
absl::Status setNonBlocking(int fd);

// One connected stream socket: reads into a FrameDecoder, queues frames for writing.
//
// Contract: one owner thread (the event loop's). Frames queued with fds are sent with their first
// byte in their own sendmsg(), as vhost-user requires.
//
// Reads and fds: a stream recvmsg() goes on past data without fds into the next message that
// carries fds and returns those fds with the whole chunk, so the fds' frame is not the chunk's
// first. With ReadMode::kFrameBounded no read crosses a frame boundary, and the fds of a read belong
// to the frame it is in (a sender attaches fds to a frame's first byte). kFree reads up to 64 KiB
// at once: for peers that send no fds (any that arrive are refused with the frame they land on).
class StreamSocket {
 public:
  enum class ReadMode { kFree, kFrameBounded };
  StreamSocket(UniqueFd fd, uint32_t max_payload, ReadMode mode = ReadMode::kFree);

  int fd() const { return fd_.get(); }
  FrameDecoder& decoder() { return decoder_; }

  // One non-blocking recvmsg into the decoder. Returns bytes read (> 0), 0 at end of stream, or
  // -errno (-EAGAIN when nothing is there).
  ssize_t readSome();

  // Appends bytes that form whole frames without fds (hot path: append then flush once).
  std::vector<uint8_t>& outBytes() { return out_; }
  // Queues one frame whose first byte carries `fds` (duplicated; the caller keeps its own).
  absl::Status queueFrameWithFds(std::span<const uint8_t> frame, std::span<const int> fds);
  // Writes what it can without blocking. Error: the peer is gone (EPIPE, ECONNRESET, ...).
  absl::Status flush();
  bool wantsWrite() const { return sent_ < out_.size(); }

 private:
  struct FdMark {
    size_t offset;  // offset in out_ of the frame's first byte
    std::vector<UniqueFd> fds;
  };
  UniqueFd fd_;
  FrameDecoder decoder_;
  ReadMode mode_;
  std::vector<uint8_t> out_;
  size_t sent_ = 0;
  std::vector<FdMark> fd_marks_;
};

// An epoll loop with an eventfd for cross-thread wake-ups.
//
// Contract: run() on exactly one thread; add/modify/remove only on that thread (or before run());
// wake() and stop() from any thread. A callback MAY remove any fd, including its own: events of a
// removed fd that are still pending in the same pass are skipped.
class EventLoop {
 public:
  using Callback = std::function<void(uint32_t events)>;

  EventLoop();
  ~EventLoop();
  absl::Status init();

  absl::Status add(int fd, uint32_t events, Callback callback);
  absl::Status modify(int fd, uint32_t events);
  void remove(int fd);

  // Called on the loop thread after wake().
  void setWakeCallback(std::function<void()> callback) { on_wake_ = std::move(callback); }
  // Serves events until stop(). The wake callback also runs after every pass.
  void run();
  // One pass: waits at most timeout_ms (-1: forever) and dispatches.
  void runOnce(int timeout_ms);
  void wake();
  void stop();

 private:
  struct Entry {
    int fd;
    Callback callback;
  };
  UniqueFd epoll_;
  UniqueFd wake_fd_;
  uint64_t next_token_ = 1;
  absl::flat_hash_map<int, uint64_t> token_of_fd_;
  absl::flat_hash_map<uint64_t, std::unique_ptr<Entry>> entries_;
  std::vector<std::unique_ptr<Entry>> graveyard_;
  std::function<void()> on_wake_;
  std::atomic<bool> stop_{false};
};

}  // namespace iopf::qemu_socket
