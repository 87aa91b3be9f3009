// A raw peer for tests: sends arbitrary bytes (and fds) and decodes what comes back with the
// backend's own codec. Every wait has a deadline.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "iopf_protocol.h"
#include "socket_io.h"

namespace iopf::qemu_socket::testing {

inline std::string tempSocketPath(const std::string& tag) {
  return "/tmp/iopf_qs_" + tag + "_" + std::to_string(::getpid()) + ".sock";
}

// Polls `cond` until true or the deadline: no sleep-and-hope.
inline bool waitUntil(const std::function<bool()>& cond, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

struct ReceivedFrame {
  FrameHeader header;
  std::vector<uint8_t> payload;
};

class RawPeer {
 public:
  explicit RawPeer(const std::string& path, uint32_t max_payload = p2::kMaxPayload) : decoder_(max_payload) {
    auto fd = connectUnix(path);
    EXPECT_TRUE(fd.ok()) << fd.status();
    if (fd.ok()) fd_ = std::move(*fd);
  }
  explicit RawPeer(UniqueFd fd, uint32_t max_payload = 65536) : fd_(std::move(fd)), decoder_(max_payload) {}

  int fd() const { return fd_.get(); }

  void send(const std::vector<uint8_t>& bytes, const std::vector<int>& fds = {}) {
    iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    if (!fds.empty()) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ASSERT_EQ(::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  }
  void shutdownWrite() { ::shutdown(fd_.get(), SHUT_WR); }
  void close() { fd_.reset(); }

  // Next frame within the timeout; nullopt on timeout or end of stream (eof() tells which).
  std::optional<ReceivedFrame> next(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      Frame f;
      FrameError e;
      const auto r = decoder_.next(f, e);
      if (r == FrameDecoder::Result::kFrame) {
        ReceivedFrame out{f.header, std::vector<uint8_t>(f.payload.begin(), f.payload.end())};
        for (UniqueFd& fd : f.fds) fds_.push_back(std::move(fd));
        return out;
      }
      if (r == FrameDecoder::Result::kError) {
        ADD_FAILURE() << "undecodable frame from the other side: " << e.message;
        return std::nullopt;
      }
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return std::nullopt;
      pollfd p{fd_.get(), POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
      std::span<uint8_t> w = decoder_.writable(65536);
      iovec iov{w.data(), w.size()};
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
      msghdr msg{};
      msg.msg_iov = &iov;
      msg.msg_iovlen = 1;
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      const ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
      if (n <= 0) {
        eof_ = true;
        return std::nullopt;
      }
      std::vector<UniqueFd> fds;
      for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
        const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
          fds.emplace_back(fd);
        }
      }
      decoder_.commit(static_cast<size_t>(n), std::move(fds));
    }
  }

  // True if the other side closed within the timeout (frames before the close are skipped).
  bool waitEof(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!eof_ && std::chrono::steady_clock::now() < deadline) {
      (void)next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()));
    }
    return eof_;
  }
  bool eof() const { return eof_; }
  std::vector<UniqueFd>& receivedFds() { return fds_; }

  // HELLO exchange; returns the server's accepted features.
  uint64_t hello(uint64_t features) {
    send(p2::helloFrame({p2::kMagic, p2::kMajor, p2::kMinor, features}, false));
    auto f = next();
    EXPECT_TRUE(f.has_value());
    if (!f) return 0;
    EXPECT_EQ(f->header.request, p2::kHello);
    EXPECT_EQ(f->header.flags, kVersion | kFlagReply);
    return p2::decodeHello(f->payload.data()).features;
  }

  // Sends a message with a u64 reply and returns the status.
  uint64_t request(const std::vector<uint8_t>& frame, uint32_t request_id) {
    send(frame);
    for (;;) {
      auto f = next();
      if (!f) {
        ADD_FAILURE() << "no reply to 0x" << std::hex << request_id;
        return UINT64_MAX;
      }
      if (f->header.request == request_id && f->header.isReply()) return getU64(f->payload.data());
      pending_.push_back(std::move(*f));
    }
  }

  // PAGE_RESP records received so far (including ones seen while waiting for replies), waiting up
  // to the timeout until at least `n` arrived.
  std::vector<PageResponseRecord> responses(size_t n, std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    auto take = [&](const ReceivedFrame& f) {
      if (f.header.request == p2::kPageResp) {
        for (size_t i = 0; i < f.payload.size(); i += kPageResponseSize) resp_.push_back(decodePageResponse(&f.payload[i]));
      } else {
        others_.push_back(f);
      }
    };
    for (auto& f : pending_) take(f);
    pending_.clear();
    while (resp_.size() < n) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      auto f = next(left);
      if (!f) break;
      take(*f);
    }
    return resp_;
  }
  // Frames other than PAGE_RESP seen by responses().
  const std::vector<ReceivedFrame>& others() const { return others_; }
  std::vector<ReceivedFrame>& pending() { return pending_; }

 private:
  UniqueFd fd_;
  FrameDecoder decoder_;
  bool eof_ = false;
  std::vector<UniqueFd> fds_;
  std::vector<ReceivedFrame> pending_;
  std::vector<ReceivedFrame> others_;
  std::vector<PageResponseRecord> resp_;
};

inline std::vector<uint8_t> bytes(std::initializer_list<int> list) {
  std::vector<uint8_t> out;
  for (int b : list) out.push_back(static_cast<uint8_t>(b));
  return out;
}

}  // namespace iopf::qemu_socket::testing
