#include "socket_io.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace iopf::qemu_socket {
namespace {

absl::Status errnoStatus(const std::string& what, int err) {
  return absl::Status(absl::ErrnoToStatusCode(err), absl::StrCat(what, ": ", std::strerror(err)));
}

absl::StatusOr<sockaddr_un> unixAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("socket path '", path, "': length ", path.size(),
                                                   ", must be 1..", sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

absl::Status setNonBlocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return errnoStatus("fcntl(O_NONBLOCK)", errno);
  return absl::OkStatus();
}

absl::StatusOr<UniqueFd> listenUnix(const std::string& path, int backlog) {
  auto addr = unixAddress(path);
  if (!addr.ok()) return addr.status();
  struct stat st{};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::AlreadyExistsError(absl::StrCat("socket path '", path, "' exists and is not a socket"));
    }
    ::unlink(path.c_str());
  }
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) return errnoStatus("socket(AF_UNIX)", errno);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return errnoStatus(absl::StrCat("bind('", path, "')"), errno);
  }
  if (::listen(fd.get(), backlog) != 0) return errnoStatus(absl::StrCat("listen('", path, "')"), errno);
  return fd;
}

absl::StatusOr<UniqueFd> connectUnix(const std::string& path) {
  auto addr = unixAddress(path);
  if (!addr.ok()) return addr.status();
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return errnoStatus("socket(AF_UNIX)", errno);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return errnoStatus(absl::StrCat("connect('", path, "')"), errno);
  }
  return fd;
}

// --- StreamSocket ----------------------------------------------------------------------------

StreamSocket::StreamSocket(UniqueFd fd, uint32_t max_payload, ReadMode mode)
    : fd_(std::move(fd)), decoder_(max_payload), mode_(mode) {}

ssize_t StreamSocket::readSome() {
  constexpr size_t kChunk = 65536;
  const size_t want = mode_ == ReadMode::kFrameBounded ? std::min(kChunk, decoder_.bytesToFrameEnd()) : kChunk;
  std::span<uint8_t> w = decoder_.writable(want);
  iovec iov{w.data(), std::min(w.size(), want)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerFrame)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  std::vector<UniqueFd> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(fd);
    }
  }
  // MSG_CTRUNC: more fds than we take were sent; the kernel closed the excess. Count them as one
  // over the limit so the frame is refused as too-many-fds.
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    while (fds.size() <= kMaxFdsPerFrame) fds.emplace_back(-1);
  }
  if (n == 0 && fds.empty()) return 0;
  decoder_.commit(static_cast<size_t>(n), std::move(fds));
  return n == 0 ? -EAGAIN : n;
}

absl::Status StreamSocket::queueFrameWithFds(std::span<const uint8_t> frame, std::span<const int> fds) {
  FdMark mark{out_.size(), {}};
  for (int fd : fds) {
    UniqueFd dup(::fcntl(fd, F_DUPFD_CLOEXEC, 0));
    if (!dup) return errnoStatus("dup(fd to send)", errno);
    mark.fds.push_back(std::move(dup));
  }
  out_.insert(out_.end(), frame.begin(), frame.end());
  if (!mark.fds.empty()) fd_marks_.push_back(std::move(mark));
  return absl::OkStatus();
}

absl::Status StreamSocket::flush() {
  while (sent_ < out_.size()) {
    // Send up to the next fd mark; a mark at sent_ goes with the bytes up to the mark after it.
    size_t limit = out_.size();
    std::vector<UniqueFd>* fds = nullptr;
    if (!fd_marks_.empty()) {
      if (fd_marks_.front().offset == sent_) {
        fds = &fd_marks_.front().fds;
        limit = fd_marks_.size() > 1 ? fd_marks_[1].offset : out_.size();
      } else {
        limit = fd_marks_.front().offset;
      }
    }
    iovec iov{out_.data() + sent_, limit - sent_};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerFrame)];
    if (fds != nullptr && !fds->empty()) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds->size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds->size());
      for (size_t i = 0; i < fds->size(); ++i) {
        const int fd = (*fds)[i].get();
        std::memcpy(CMSG_DATA(c) + i * sizeof(int), &fd, sizeof(int));
      }
    }
    ssize_t n;
    do {
      n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return absl::OkStatus();
      return errnoStatus("sendmsg", errno);
    }
    if (fds != nullptr) fd_marks_.erase(fd_marks_.begin());  // the fds went with the first byte
    sent_ += static_cast<size_t>(n);
  }
  out_.clear();
  sent_ = 0;
  fd_marks_.clear();
  return absl::OkStatus();
}

// --- EventLoop --------------------------------------------------------------------------------

EventLoop::EventLoop() = default;
EventLoop::~EventLoop() = default;

absl::Status EventLoop::init() {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return errnoStatus("epoll_create1", errno);
  wake_fd_.reset(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!wake_fd_) return errnoStatus("eventfd", errno);
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // token 0 = wake-up
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wake_fd_.get(), &ev) != 0) return errnoStatus("epoll_ctl(eventfd)", errno);
  return absl::OkStatus();
}

absl::Status EventLoop::add(int fd, uint32_t events, Callback callback) {
  const uint64_t token = next_token_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = token;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) return errnoStatus("epoll_ctl(ADD)", errno);
  token_of_fd_[fd] = token;
  entries_[token] = std::make_unique<Entry>(Entry{fd, std::move(callback)});
  return absl::OkStatus();
}

absl::Status EventLoop::modify(int fd, uint32_t events) {
  auto it = token_of_fd_.find(fd);
  if (it == token_of_fd_.end()) return absl::NotFoundError(absl::StrCat("event loop: fd ", fd, " not registered"));
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = it->second;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, fd, &ev) != 0) return errnoStatus("epoll_ctl(MOD)", errno);
  return absl::OkStatus();
}

void EventLoop::remove(int fd) {
  auto it = token_of_fd_.find(fd);
  if (it == token_of_fd_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  auto e = entries_.find(it->second);
  if (e != entries_.end()) {
    graveyard_.push_back(std::move(e->second));
    entries_.erase(e);
  }
  token_of_fd_.erase(it);
}

void EventLoop::runOnce(int timeout_ms) {
  epoll_event events[64];
  const int n = ::epoll_wait(epoll_.get(), events, 64, timeout_ms);
  for (int i = 0; i < n; ++i) {
    const uint64_t token = events[i].data.u64;
    if (token == 0) {
      uint64_t v;
      while (::read(wake_fd_.get(), &v, sizeof(v)) > 0) {
      }
      continue;
    }
    auto it = entries_.find(token);
    if (it == entries_.end()) continue;  // removed earlier in this pass
    Entry* e = it->second.get();
    e->callback(events[i].events);
  }
  if (on_wake_) on_wake_();
  graveyard_.clear();
}

void EventLoop::run() {
  while (!stop_.load(std::memory_order_acquire)) runOnce(-1);
}

void EventLoop::wake() {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd_.get(), &one, sizeof(one));
}

void EventLoop::stop() {
  stop_.store(true, std::memory_order_release);
  wake();
}

}  // namespace iopf::qemu_socket
