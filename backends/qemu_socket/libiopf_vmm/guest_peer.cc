#include "guest_peer.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "iopf_forward_protocol.h"
#include "iopf_protocol.h"
#include "socket_io.h"
#include "vtd_prq.h"

namespace iopf::qemu_socket {
namespace {

using Clock = std::chrono::steady_clock;

bool sendAll(int fd, const std::vector<uint8_t>& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

// Reads what is there (waiting up to timeout_ms). false: closed or error.
bool readInto(int fd, FrameDecoder& decoder, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  const int r = ::poll(&p, 1, timeout_ms);
  if (r <= 0) return r == 0 || errno == EINTR;
  auto buf = decoder.writable();
  const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
  if (n <= 0) return n < 0 && (errno == EINTR || errno == EAGAIN);
  decoder.commit(static_cast<size_t>(n));
  return true;
}

}  // namespace

absl::StatusOr<std::vector<GuestAnswer>> parseGuestScript(const std::string& text) {
  std::vector<GuestAnswer> out;
  std::stringstream in(text);
  std::string word;
  while (std::getline(in, word, ',')) {
    if (word == "success")
      out.push_back(GuestAnswer::kSuccess);
    else if (word == "invalid")
      out.push_back(GuestAnswer::kInvalid);
    else if (word == "failure")
      out.push_back(GuestAnswer::kFailure);
    else if (word == "late")
      out.push_back(GuestAnswer::kLate);
    else if (word == "twice")
      out.push_back(GuestAnswer::kTwice);
    else if (word == "never")
      out.push_back(GuestAnswer::kNever);
    else if (word == "reset")
      out.push_back(GuestAnswer::kReset);
    else {
      return absl::InvalidArgumentError(absl::StrCat(
          "guest script: '", word, "' is not one of success, invalid, failure, late, twice, never, reset"));
    }
  }
  if (out.empty()) return absl::InvalidArgumentError("guest script is empty");
  return out;
}

GuestPeerResult runGuestPeer(const GuestPeerOptions& o) {
  GuestPeerResult res;
  auto conn = connectUnix(o.socket_path);
  if (!conn.ok()) {
    res.error = std::string(conn.status().message());
    return res;
  }
  const int fd = conn->get();
  FrameDecoder decoder(p2::kMaxPayload);
  const auto start = Clock::now();
  const auto deadlineFor = [&](int ms) { return Clock::now() + std::chrono::milliseconds(ms); };

  // Waits for the reply to `request`; ERROR frames are counted on the way.
  auto waitReply = [&](uint32_t request, std::vector<uint8_t>& payload) -> bool {
    const auto until = deadlineFor(o.timeout_ms);
    while (Clock::now() < until) {
      Frame f;
      FrameError e;
      const auto r = decoder.next(f, e);
      if (r == FrameDecoder::Result::kError) {
        res.error = e.message;
        return false;
      }
      if (r == FrameDecoder::Result::kFrame) {
        if (f.header.request == p2::kError) {
          ++res.errors_received;
          res.last_error = p2::decodeError(f.payload).text;
          if (request == p2::kHello) {
            res.error = absl::StrCat("server refused HELLO: ", res.last_error);
            return false;
          }
          continue;
        }
        if (f.header.request == request && f.header.isReply()) {
          payload.assign(f.payload.begin(), f.payload.end());
          return true;
        }
        continue;
      }
      if (!readInto(fd, decoder, 50)) {
        res.error = "the forwarder closed the connection";
        return false;
      }
    }
    res.error = absl::StrFormat("no reply to 0x%x within %d ms", request, o.timeout_ms);
    return false;
  };

  p2::Hello hello;
  hello.features = p2::kFeatureBatch | fwd::kFeatureForward;
  std::vector<uint8_t> payload;
  if (!sendAll(fd, p2::helloFrame(hello, false)) || !waitReply(p2::kHello, payload)) return res;
  if (!o.vm_name.empty()) {
    if (!sendAll(fd, fwd::vmNameFrame(o.vm_name)) || !waitReply(fwd::kVmName, payload)) return res;
    if (getU64(payload.data()) != 0) {
      res.error = absl::StrFormat("VM_NAME '%s' refused: %s", o.vm_name,
                                  p2::toString(static_cast<p2::Status>(getU64(payload.data()))));
      return res;
    }
  }
  for (const GuestDeviceDecl& d : o.devices) {
    p2::DeviceAdd a;
    a.dev_id = d.dev_id;
    a.rid = d.rid;
    a.viommu_id = d.viommu_id;
    a.virt_id = d.virt_id;
    a.pasid_bits = d.pasid_bits;
    a.flags = d.needs_pasid ? p2::kDeviceNeedsPasid : 0;
    if (!sendAll(fd, p2::deviceAddFrame(a)) || !waitReply(p2::kDeviceAdd, payload)) return res;
    if (getU64(payload.data()) != 0) {
      res.error = absl::StrFormat("DEVICE_ADD dev_id %u refused: %s", d.dev_id,
                                  p2::toString(static_cast<p2::Status>(getU64(payload.data()))));
      return res;
    }
  }
  if (o.ready != nullptr) o.ready->store(true);

  // The VMM's emulated VT-d: a PRQ ring in "guest memory".
  std::vector<uint8_t> guest_memory((size_t{1} << (o.pqs + 7)) * IOPF_VTD_PRD_SIZE);
  iopf_vtd_prq prq;
  iopf_vtd_prq_init(&prq, guest_memory.data(), guest_memory.size(), o.pqs);

  struct Pending {
    Clock::time_point at;
    fwd::GuestPageResponse response;
  };
  std::deque<Pending> late;
  std::vector<fwd::GuestPageRequest> group;  // records of the group being received
  size_t script_at = 0;

  // The guest: pops the group's descriptors, answers with a page group response descriptor; the
  // VMM decodes it and maps RID -> guest device.
  auto guestAnswers = [&](GuestAnswer a) -> std::optional<fwd::GuestPageResponse> {
    iopf_vtd_page_request last{};
    while (iopf_vtd_prq_pending(&prq) > 0) {
      if (iopf_vtd_prq_pop(&prq, &last) != 0) return std::nullopt;
    }
    iopf_vtd_page_group_response g{};
    g.rid = last.rid;
    g.pasid = last.pasid;
    g.pasid_present = last.pasid_present;
    g.prgi = last.prgi;
    g.lpig = 1;
    g.response_code = a == GuestAnswer::kInvalid   ? IOPF_VTD_RC_INVALID_REQUEST
                      : a == GuestAnswer::kFailure ? IOPF_VTD_RC_RESPONSE_FAILURE
                                                   : IOPF_VTD_RC_SUCCESS;
    uint8_t desc[IOPF_VTD_PGRESP_SIZE];
    iopf_vtd_encode_page_group_response(&g, desc);
    iopf_vtd_page_group_response back{};
    if (iopf_vtd_decode_page_group_response(desc, sizeof desc, &back) != 0) return std::nullopt;
    const GuestDeviceDecl* dev = nullptr;
    for (const GuestDeviceDecl& d : o.devices) {
      if (d.rid == back.rid) dev = &d;
    }
    fwd::GuestPageResponse r;
    // A device the VMM did not declare (config-only binding): the request carried its ids.
    r.virt_id = dev != nullptr ? dev->virt_id : group.back().virt_id;
    r.viommu_id = dev != nullptr ? dev->viommu_id : group.back().viommu_id;
    r.pasid = back.pasid;
    r.flags = back.pasid_present ? fwd::kRespPasidValid : 0;
    r.prgi = back.prgi;
    r.code = back.response_code == IOPF_VTD_RC_SUCCESS           ? fwd::kGuestSuccess
             : back.response_code == IOPF_VTD_RC_INVALID_REQUEST ? fwd::kGuestInvalid
                                                                 : fwd::kGuestFailure;
    return r;
  };

  for (;;) {
    if (o.stop != nullptr && o.stop->load()) break;
    if (o.groups > 0 && res.groups >= o.groups && late.empty()) break;
    if (o.seconds > 0 && std::chrono::duration<double>(Clock::now() - start).count() >= o.seconds) break;
    while (!late.empty() && late.front().at <= Clock::now()) {
      if (!sendAll(fd, fwd::guestPageRespFrame(std::span(&late.front().response, 1)))) {
        res.error = "the forwarder closed the connection";
        return res;
      }
      late.pop_front();
    }
    Frame f;
    FrameError e;
    const auto r = decoder.next(f, e);
    if (r == FrameDecoder::Result::kError) {
      res.error = e.message;
      return res;
    }
    if (r == FrameDecoder::Result::kNeedMore) {
      if (!readInto(fd, decoder, late.empty() ? 20 : 5)) {
        res.error = "the forwarder closed the connection";
        return res;
      }
      continue;
    }
    const uint32_t id = f.header.request;
    if (id == p2::kError) {
      ++res.errors_received;
      res.last_error = p2::decodeError(f.payload).text;
      continue;
    }
    if (id == fwd::kGuestReset && f.header.isReply()) {
      res.reset_drained += getU64(f.payload.data());
      continue;
    }
    if (id != fwd::kGuestPageReq) continue;
    bool group_done = false;
    for (size_t off = 0; off + fwd::kGuestPageRequestSize <= f.payload.size();
         off += fwd::kGuestPageRequestSize) {
      const fwd::GuestPageRequest q = fwd::decodeGuestPageRequest(f.payload.data() + off);
      group.push_back(q);
      ++res.requests;
      iopf_vtd_page_request d{};
      d.rid = q.rid;
      d.pasid = q.pasid;
      d.pasid_present = (q.flags & fwd::kReqPasidValid) != 0;
      d.read = (q.perm & 1) != 0;
      d.write = (q.perm & 2) != 0;
      d.exec_req = (q.perm & 4) != 0;
      d.priv_req = (q.perm & 8) != 0;
      d.lpig = (q.flags & fwd::kReqLast) != 0;
      d.prgi = q.prgi;
      d.addr = q.addr;
      if (iopf_vtd_prq_push(&prq, &d) != 0) {
        // Overflow: a real guest would see PRO; the group is answered as the guest would after
        // clearing it (no response for lost requests, the VMM answers INVALID).
        prq.status &= ~IOPF_VTD_PRS_PRO;
      }
      if ((q.flags & fwd::kReqLast) != 0) group_done = true;
    }
    if (!group_done) continue;
    ++res.groups;
    if (res.prgis.size() < 4096) res.prgis.push_back(group.back().prgi);
    const GuestAnswer a = o.script[script_at++ % o.script.size()];
    if (a == GuestAnswer::kReset) {
      ++res.resets;
      while (iopf_vtd_prq_pending(&prq) > 0) {
        iopf_vtd_page_request drop;
        iopf_vtd_prq_pop(&prq, &drop);
      }
      fwd::GuestReset reset;
      reset.flags = fwd::kResetWholeVm;
      if (!sendAll(fd, fwd::guestResetFrame(reset))) break;
      group.clear();
      continue;
    }
    auto resp = guestAnswers(a);
    group.clear();
    if (!resp) {
      res.error = "VT-d descriptor round trip failed";
      return res;
    }
    switch (a) {
      case GuestAnswer::kSuccess:
        ++res.success;
        break;
      case GuestAnswer::kInvalid:
        ++res.invalid;
        break;
      case GuestAnswer::kFailure:
        ++res.failure;
        break;
      case GuestAnswer::kLate:
        ++res.late;
        break;
      case GuestAnswer::kTwice:
        ++res.twice;
        break;
      case GuestAnswer::kNever:
        ++res.never;
        break;
      case GuestAnswer::kReset:
        break;
    }
    if (a == GuestAnswer::kNever) continue;
    if (a == GuestAnswer::kLate) {
      late.push_back({Clock::now() + std::chrono::milliseconds(o.late_ms), *resp});
      continue;
    }
    const fwd::GuestPageResponse two[2] = {*resp, *resp};
    if (!sendAll(fd, fwd::guestPageRespFrame(std::span(two, a == GuestAnswer::kTwice ? 2 : 1)))) {
      res.error = "the forwarder closed the connection";
      return res;
    }
  }
  // Collect what is still in flight (ERRORs for refused answers, reset replies) briefly.
  const auto until = deadlineFor(200);
  while (Clock::now() < until) {
    Frame f;
    FrameError e;
    const auto r = decoder.next(f, e);
    if (r == FrameDecoder::Result::kFrame) {
      if (f.header.request == p2::kError) {
        ++res.errors_received;
        res.last_error = p2::decodeError(f.payload).text;
      } else if (f.header.request == fwd::kGuestReset && f.header.isReply()) {
        res.reset_drained += getU64(f.payload.data());
      }
      continue;
    }
    if (r == FrameDecoder::Result::kError || !readInto(fd, decoder, 20)) break;
  }
  res.prq_overflows = prq.overflows;
  res.ok = true;
  return res;
}

}  // namespace iopf::qemu_socket
