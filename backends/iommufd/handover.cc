#include "handover.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "iommufd_backend.h"

namespace iopf::iommufd {
namespace {

absl::Status ackWith(int socket_fd, const absl::Status& status, uint32_t extra = 0) {
  HandoverMessage ack;
  ack.type = static_cast<uint16_t>(HandoverType::kAck);
  ack.dev_id = extra;
  ack.status = status.ok() ? 0 : (absl::IsNotFound(status) ? -ENOENT
                                  : absl::IsAlreadyExists(status) ? -EEXIST
                                                                  : -EINVAL);
  absl::Status sent = sendHandover(socket_fd, ack);
  return sent.ok() ? status : sent;
}

}  // namespace

absl::Status sendHandover(int socket_fd, const HandoverMessage& message, int fd) {
  iovec iov{const_cast<HandoverMessage*>(&message), sizeof message};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    const ssize_t n = ::sendmsg(socket_fd, &msg, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(sizeof message)) return absl::OkStatus();
    if (n < 0 && errno == EINTR) continue;
    return absl::UnavailableError(absl::StrCat("hand-over socket ", socket_fd, ": sendmsg: ",
                                               n < 0 ? std::strerror(errno) : "short send"));
  }
}

absl::StatusOr<ReceivedHandover> receiveHandover(int socket_fd) {
  ReceivedHandover out;
  iovec iov{&out.message, sizeof out.message};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(socket_fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    return absl::UnavailableError(
        absl::StrCat("hand-over socket ", socket_fd, ": recvmsg: ", std::strerror(errno)));
  }
  std::vector<int> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      fds.push_back(fd);
    }
  }
  auto closeAll = [&] {
    for (int fd : fds) ::close(fd);
  };
  if (n == 0) {
    closeAll();
    return absl::UnavailableError(absl::StrCat("hand-over socket ", socket_fd, ": peer closed"));
  }
  if (n != static_cast<ssize_t>(sizeof out.message) || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) {
    closeAll();
    return absl::InvalidArgumentError(absl::StrCat("hand-over message: ", n, " bytes, expected ",
                                                   sizeof out.message, " (or truncated fds)"));
  }
  if (out.message.magic != kHandoverMagic || out.message.version != kHandoverVersion) {
    closeAll();
    return absl::InvalidArgumentError(absl::StrCat(
        "hand-over message: magic 0x", absl::Hex(out.message.magic), " version ",
        out.message.version, ", expected 0x", absl::Hex(kHandoverMagic), " version ",
        kHandoverVersion));
  }
  if (fds.size() > 1) {
    closeAll();
    return absl::InvalidArgumentError(
        absl::StrCat("hand-over message: ", fds.size(), " fds attached, at most 1 allowed"));
  }
  if (!fds.empty()) out.fd = fds[0];
  return out;
}

absl::StatusOr<int> receiveIommufd(int socket_fd) {
  absl::StatusOr<ReceivedHandover> got = receiveHandover(socket_fd);
  if (!got.ok()) return got.status();
  if (got->message.type != static_cast<uint16_t>(HandoverType::kAdoptIommufd) || got->fd < 0) {
    if (got->fd >= 0) ::close(got->fd);
    absl::Status err = absl::InvalidArgumentError(absl::StrCat(
        "hand-over: expected ADOPT_IOMMUFD with an fd, got type ", got->message.type));
    (void)ackWith(socket_fd, err);
    return err;
  }
  absl::Status acked = ackWith(socket_fd, absl::OkStatus());
  if (!acked.ok()) {
    ::close(got->fd);
    return acked;
  }
  return got->fd;
}

absl::Status serveHandoverMessage(IommufdBackend& backend, int socket_fd) {
  absl::StatusOr<ReceivedHandover> got = receiveHandover(socket_fd);
  if (!got.ok()) return got.status();
  const HandoverMessage& m = got->message;
  const std::optional<uint32_t> dev =
      m.dev_id == kHandoverAllDevices ? std::nullopt : std::optional<uint32_t>(m.dev_id);
  switch (static_cast<HandoverType>(m.type)) {
    case HandoverType::kAdoptFault: {
      if (got->fd < 0) {
        return ackWith(socket_fd, absl::InvalidArgumentError(absl::StrCat(
                                      "hand-over: ADOPT_FAULT ", m.fault_id, " without an fd")));
      }
      return ackWith(socket_fd, backend.adoptFaultQueue(m.fault_id, got->fd));
    }
    case HandoverType::kQuiesceBegin: {
      absl::StatusOr<uint64_t> epoch = backend.quiesceBegin(m.fault_id, dev);
      return ackWith(socket_fd, epoch.status(), epoch.ok() ? static_cast<uint32_t>(*epoch) : 0);
    }
    case HandoverType::kQuiesceEnd:
      backend.quiesceEnd(m.fault_id, dev);
      return ackWith(socket_fd, absl::OkStatus());
    default:
      if (got->fd >= 0) ::close(got->fd);
      return ackWith(socket_fd, absl::InvalidArgumentError(absl::StrCat(
                                    "hand-over: unexpected message type ", m.type)));
  }
}

absl::Status requestHandover(int socket_fd, const HandoverMessage& message, int fd) {
  if (absl::Status s = sendHandover(socket_fd, message, fd); !s.ok()) return s;
  absl::StatusOr<ReceivedHandover> ack = receiveHandover(socket_fd);
  if (!ack.ok()) return ack.status();
  if (ack->fd >= 0) ::close(ack->fd);
  if (ack->message.type != static_cast<uint16_t>(HandoverType::kAck)) {
    return absl::InvalidArgumentError(
        absl::StrCat("hand-over: expected ACK, got type ", ack->message.type));
  }
  if (ack->message.status != 0) {
    return absl::InternalError(absl::StrCat("hand-over: peer refused type ", message.type,
                                            ": ", std::strerror(-ack->message.status)));
  }
  return absl::OkStatus();
}

}  // namespace iopf::iommufd
