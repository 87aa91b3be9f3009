// libiopf-vmm: the C API of iopf_vmm.h over the backend's one codec (vhost_user_codec.h,
// iopf_protocol.h). Blocking socket; waits use poll() with deadlines.
#include "iopf_vmm.h"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "iopf_protocol.h"
#include "socket_io.h"

namespace qs = iopf::qemu_socket;
namespace p2 = iopf::qemu_socket::p2;

static_assert(sizeof(iopf_vmm_page_request) == qs::kPgfaultSize);
static_assert(offsetof(iopf_vmm_page_request, addr) == 24 && offsetof(iopf_vmm_page_request, cookie) == 36);
static_assert(sizeof(iopf_vmm_page_response) == qs::kPageResponseSize);
static_assert(IOPF_VMM_MAX_BATCH == p2::kMaxBatch && IOPF_VMM_FEATURE_BATCH == p2::kFeatureBatch);

struct iopf_vmm {
  qs::UniqueFd fd;
  qs::FrameDecoder decoder{p2::kMaxPayload};
  uint64_t features = 0;
  std::vector<iopf_vmm_page_response> pending;
  size_t pending_head = 0;
  std::optional<qs::FrameHeader> reply_header;
  uint64_t reply_status = 0;
  std::optional<p2::Hello> hello;
  std::string last_error;
  uint32_t last_error_code = 0;
  uint64_t errors = 0;
  bool closed = false;
  std::vector<uint8_t> send_buf;
};

namespace {

int64_t nowMs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000 + ts.tv_nsec / 1'000'000;
}

int fail(iopf_vmm* v, int err, std::string text) {
  v->last_error = std::move(text);
  return -err;
}

int writeAll(iopf_vmm* v, const uint8_t* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::send(v->fd.get(), data, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      return fail(v, err, absl::StrFormat("send to iopfd: %s", std::strerror(err)));
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return 0;
}

// Decodes every buffered frame. Returns 0 or a negative errno (protocol error from the server).
int dispatch(iopf_vmm* v) {
  qs::Frame frame;
  qs::FrameError error;
  for (;;) {
    const auto r = v->decoder.next(frame, error);
    if (r == qs::FrameDecoder::Result::kNeedMore) return 0;
    if (r == qs::FrameDecoder::Result::kError) {
      v->closed = true;
      return fail(v, EPROTO, "from iopfd: " + error.message);
    }
    if (auto bad = p2::peerInboundTable().check(frame)) return fail(v, EPROTO, "from iopfd: " + bad->message);
    switch (frame.header.request) {
      case p2::kPageResp: {
        const size_t n = frame.payload.size() / qs::kPageResponseSize;
        for (size_t i = 0; i < n; ++i) {
          const qs::PageResponseRecord rec = qs::decodePageResponse(frame.payload.data() + i * qs::kPageResponseSize);
          v->pending.push_back({rec.cookie, rec.code});
        }
        break;
      }
      case p2::kHello:
        v->hello = p2::decodeHello(frame.payload.data());
        break;
      case p2::kDeviceAdd:
      case p2::kDeviceDel:
        v->reply_header = frame.header;
        v->reply_status = qs::getU64(frame.payload.data());
        break;
      case p2::kError: {
        const p2::ErrorMessage e = p2::decodeError(frame.payload);
        ++v->errors;
        v->last_error_code = e.code;
        v->last_error = absl::StrFormat("iopfd ERROR %u (%s): %s", e.code,
                                        std::string(qs::toString(static_cast<qs::WireError>(e.code))), e.text);
        break;
      }
      default:
        break;
    }
  }
}

// Waits up to timeout_ms (-1: forever) for readable data, reads once and dispatches. Returns 1 if
// something was read, 0 on timeout, negative errno on error or end of stream.
int readOnce(iopf_vmm* v, int timeout_ms) {
  if (v->closed) {
    return fail(v, EPIPE, std::string("iopfd closed the connection") + (v->last_error.empty() ? "" : ": " + v->last_error));
  }
  pollfd p{v->fd.get(), POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, timeout_ms);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) return fail(v, errno, "poll");
  if (rc == 0) return 0;
  std::span<uint8_t> w = v->decoder.writable(65536);
  ssize_t n;
  do {
    n = ::recv(v->fd.get(), w.data(), w.size(), 0);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return fail(v, errno, absl::StrFormat("recv from iopfd: %s", std::strerror(errno)));
  if (n == 0) {
    v->closed = true;
    if (v->last_error.empty()) v->last_error = "iopfd closed the connection";
    return -EPIPE;
  }
  v->decoder.commit(static_cast<size_t>(n));
  const int d = dispatch(v);
  return d < 0 ? d : 1;
}

// Waits for the reply to `request` until the deadline.
int awaitReply(iopf_vmm* v, uint32_t request, int timeout_ms) {
  const int64_t deadline = timeout_ms < 0 ? INT64_MAX : nowMs() + timeout_ms;
  v->reply_header.reset();
  while (!v->reply_header || v->reply_header->request != request) {
    const int64_t left = deadline == INT64_MAX ? -1 : std::max<int64_t>(0, deadline - nowMs());
    const int rc = readOnce(v, static_cast<int>(left));
    if (rc < 0) return rc;
    if (rc == 0 && left == 0) return fail(v, ETIMEDOUT, absl::StrFormat("no reply to 0x%x within %d ms", request, timeout_ms));
  }
  switch (static_cast<p2::Status>(v->reply_status)) {
    case p2::Status::kOk: return 0;
    case p2::Status::kAlreadyExists: return fail(v, EEXIST, "iopfd: dev_id already declared");
    case p2::Status::kNotFound: return fail(v, ENOENT, "iopfd: dev_id not declared");
    case p2::Status::kInvalidArgument: return fail(v, EINVAL, "iopfd: invalid device declaration");
    case p2::Status::kResourceExhausted: return fail(v, ENOSPC, "iopfd: too many devices");
    default: return fail(v, EIO, absl::StrFormat("iopfd: status %u", v->reply_status));
  }
}

}  // namespace

extern "C" {

int iopf_vmm_connect(const char* path, uint64_t features, int timeout_ms, iopf_vmm** out) {
  if (path == nullptr || out == nullptr) return -EINVAL;
  *out = nullptr;
  auto fd = qs::connectUnix(path);
  if (!fd.ok()) return -(fd.status().code() == absl::StatusCode::kNotFound ? ENOENT : ECONNREFUSED);
  auto v = std::make_unique<iopf_vmm>();
  v->fd = std::move(*fd);
  v->pending.reserve(1024);
  const std::vector<uint8_t> hello = p2::helloFrame({p2::kMagic, p2::kMajor, p2::kMinor, features}, false);
  if (int rc = writeAll(v.get(), hello.data(), hello.size()); rc < 0) return rc;
  const int64_t deadline = timeout_ms < 0 ? INT64_MAX : nowMs() + timeout_ms;
  while (!v->hello) {
    const int64_t left = deadline == INT64_MAX ? -1 : std::max<int64_t>(0, deadline - nowMs());
    const int rc = readOnce(v.get(), static_cast<int>(left));
    if (rc < 0) return rc;
    if (rc == 0 && left == 0) return -ETIMEDOUT;
  }
  v->features = v->hello->features;
  *out = v.release();
  return 0;
}

uint64_t iopf_vmm_features(const iopf_vmm* v) { return v->features; }

int iopf_vmm_device_add(iopf_vmm* v, const iopf_vmm_device* d, int timeout_ms) {
  p2::DeviceAdd a;
  a.dev_id = d->dev_id;
  a.rid = d->rid;
  a.segment = d->segment;
  a.pasid_bits = d->pasid_bits;
  a.flags = d->flags;
  a.pri_outstanding_alloc = d->pri_outstanding_alloc;
  a.viommu_id = d->viommu_id;
  a.virt_id = d->virt_id;
  const std::vector<uint8_t> f = p2::deviceAddFrame(a);
  if (int rc = writeAll(v, f.data(), f.size()); rc < 0) return rc;
  return awaitReply(v, p2::kDeviceAdd, timeout_ms);
}

int iopf_vmm_device_del(iopf_vmm* v, uint32_t dev_id, int timeout_ms) {
  const std::vector<uint8_t> f = p2::deviceDelFrame(dev_id);
  if (int rc = writeAll(v, f.data(), f.size()); rc < 0) return rc;
  return awaitReply(v, p2::kDeviceDel, timeout_ms);
}

int iopf_vmm_send(iopf_vmm* v, const iopf_vmm_page_request* records, size_t count) {
  const size_t per_frame = (v->features & p2::kFeatureBatch) != 0 ? p2::kMaxBatch : 1;
  v->send_buf.clear();
  for (size_t i = 0; i < count; i += per_frame) {
    const size_t n = std::min(per_frame, count - i);
    const size_t at = v->send_buf.size();
    v->send_buf.resize(at + qs::kHeaderSize + n * qs::kPgfaultSize);
    qs::encodeHeader({p2::kPageReq, qs::kVersion, static_cast<uint32_t>(n * qs::kPgfaultSize)}, v->send_buf.data() + at);
    // The C struct is the wire layout (static_asserts above).
    std::memcpy(v->send_buf.data() + at + qs::kHeaderSize, records + i, n * qs::kPgfaultSize);
  }
  return writeAll(v, v->send_buf.data(), v->send_buf.size());
}

int iopf_vmm_recv(iopf_vmm* v, iopf_vmm_page_response* out, size_t max, int timeout_ms) {
  if (v->pending_head == v->pending.size()) {
    v->pending.clear();
    v->pending_head = 0;
    const int rc = readOnce(v, timeout_ms);
    if (rc < 0) return rc;
    // Drain whatever else is already there without waiting.
    while (rc > 0 && v->pending.size() < max) {
      const int more = readOnce(v, 0);
      if (more <= 0) break;
    }
  }
  const size_t n = std::min(max, v->pending.size() - v->pending_head);
  std::memcpy(out, v->pending.data() + v->pending_head, n * sizeof(iopf_vmm_page_response));
  v->pending_head += n;
  return static_cast<int>(n);
}

int iopf_vmm_fd(const iopf_vmm* v) { return v->fd.get(); }
uint64_t iopf_vmm_errors_received(const iopf_vmm* v) { return v->errors; }
uint32_t iopf_vmm_last_error_code(const iopf_vmm* v) { return v->last_error_code; }
const char* iopf_vmm_last_error(const iopf_vmm* v) { return v->last_error.c_str(); }

void iopf_vmm_close(iopf_vmm* v) { std::unique_ptr<iopf_vmm> owned(v); }

}  // extern "C"
