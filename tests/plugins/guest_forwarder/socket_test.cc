// The guest forwarder plugin loaded by path into a threaded router, forwarding over its iopf
// socket to scripted guests (libiopf_vmm/guest_peer.h: VT-d PRQ descriptors in, page group
// response descriptors out): translation, exactly once, every refusal, drains, the peer tool.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "forwarder_rig.h"
#include "guest_peer.h"
#include "iopf/plugin_host.h"
#include "plugin_test_util.h"
#include "socket_io.h"
#include "vhost_iotlb_protocol.h"

namespace iopf {
namespace {

using qemu_socket::GuestAnswer;
using qemu_socket::GuestPeerOptions;
using qemu_socket::GuestPeerResult;
using testing::RouterRig;
using testing::TempDir;
using testing::waitFor;

const std::string kPlugin = IOPF_PLUGIN_GUEST_FORWARDER;
constexpr auto kWait = std::chrono::seconds(20);

struct Rig {
  // `extra` is spliced into the plugin config object.
  explicit Rig(const std::string& extra = "", bool config_device = true) : rig(/*threaded=*/true) {
    socket = dir.file("iopf.sock");
    std::string devices;
    if (config_device) {
      devices = R"(, "devices": [{"backend_handle": 42, "host_rid": 768, "vm": "vm1", "viommu_id": 1,
                    "virt_id": 16, "guest_rid": 16, "pasids": [{"host": 5, "guest": 1}], "needs_pasid": true}])";
    }
    config = absl::StrFormat(R"({"iopf_socket": "%s", "vms": [{"name": "vm1", "transport": "iopf"}]%s%s})",
                             socket, devices, extra);
    host = testing::startForwarder(rig, config);
    // Requests carry host PASID 5: route (device, PASID 5) to the same guest-owned domain.
    EXPECT_TRUE(rig.router->attach(rig.device, 5, rig.domain).ok());
  }
  ~Rig() {
    stop = true;
    if (peer.joinable()) peer.join();
    rig.router->shutdown();
    host->shutdown();
  }
  void startPeer(GuestPeerOptions o) {
    o.socket_path = socket;
    o.stop = &stop;
    o.ready = &ready;
    peer = std::thread([this, o] { result = qemu_socket::runGuestPeer(o); });
    ASSERT_TRUE(waitFor([&] { return ready.load() || peer_done(); }, kWait));
    ASSERT_TRUE(ready.load()) << result.error;
  }
  bool peer_done() const { return !result.error.empty(); }
  GuestPeerResult finishPeer() {
    stop = true;
    peer.join();
    return result;
  }
  // One host group of `pages` requests on RouterRig's device (handle 42, RID 03:00.0).
  void group(uint32_t grpid, uint32_t pages = 1, uint32_t pasid = 5) {
    std::vector<PageRequest> v;
    for (uint32_t i = 0; i < pages; ++i) {
      v.push_back(rig.request(grpid, 0x10000 + 0x1000 * i, i + 1 == pages, perm::kRead, pasid));
    }
    rig.backend.sink().deliver(v);
  }
  uint64_t counter(const std::string& name) const {
    return host->counter("guest_forwarder", name).value_or(~0ull);
  }
  std::vector<ResponseCode> codes() const {
    std::vector<ResponseCode> out;
    for (const Response& r : rig.backend.responses()) out.push_back(r.code);
    return out;
  }

  TempDir dir;
  std::string socket;
  std::string config;
  RouterRig rig;
  std::unique_ptr<PluginHost> host;
  std::atomic<bool> stop{false}, ready{false};
  std::thread peer;
  GuestPeerResult result;
};

TEST(GuestForwarderSocket, ScriptedGuestAnswersSuccessInvalidFailureThroughVtdDescriptors) {
  Rig r;
  GuestPeerOptions o;
  o.vm_name = "vm1";
  o.script = {GuestAnswer::kSuccess, GuestAnswer::kInvalid, GuestAnswer::kFailure};
  r.startPeer(o);
  r.group(1, /*pages=*/3);
  ASSERT_EQ(r.rig.backend.waitForResponses(1, kWait), 1u);
  r.group(2);
  ASSERT_EQ(r.rig.backend.waitForResponses(2, kWait), 2u);
  r.group(0x1ff);
  ASSERT_EQ(r.rig.backend.waitForResponses(3, kWait), 3u);
  EXPECT_EQ(r.codes(), (std::vector<ResponseCode>{ResponseCode::kSuccess, ResponseCode::kInvalid,
                                                  ResponseCode::kInvalid}));
  EXPECT_EQ(r.counter("answers_success"), 1u);
  EXPECT_EQ(r.counter("answers_invalid"), 1u);
  EXPECT_EQ(r.counter("answers_failure_mapped"), 1u);  // guest FAILURE -> INVALID on the device
  const GuestPeerResult g = r.finishPeer();
  ASSERT_TRUE(g.ok) << g.error;
  EXPECT_EQ(g.groups, 3u);
  EXPECT_EQ(g.requests, 5u);
  EXPECT_EQ(g.prgis, (std::vector<uint32_t>{1, 2, 0x1ff}));
  EXPECT_EQ(g.errors_received, 0u);  // every answer was keyed by guest ids the forwarder knew
}

TEST(GuestForwarderSocket, DeviceAddFromTheVmmFillsTheRegistryAndLeavesWithIt) {
  Rig r("", /*config_device=*/false);
  EXPECT_EQ(r.counter("registry_devices"), 0u);
  GuestPeerOptions o;
  o.vm_name = "vm1";
  o.devices = {{42, 0x0018, 3, 0x18, 8, false}};  // host handle 42 -> guest 00:03.0, viommu 3
  r.startPeer(o);
  EXPECT_EQ(r.counter("registry_devices"), 1u);
  r.group(4);
  ASSERT_EQ(r.rig.backend.waitForResponses(1, kWait), 1u);
  EXPECT_EQ(r.codes()[0], ResponseCode::kSuccess);
  const GuestPeerResult g = r.finishPeer();
  ASSERT_TRUE(g.ok) << g.error;
  ASSERT_TRUE(waitFor([&] { return r.counter("registry_devices") == 0; }, kWait));
  // No guest device any more: not ours, the chain ends, the domain's default (INVALID) applies.
  r.group(5);
  ASSERT_EQ(r.rig.backend.waitForResponses(2, kWait), 2u);
  EXPECT_EQ(r.codes()[1], ResponseCode::kInvalid);
  EXPECT_EQ(r.counter("not_registered"), 1u);
}

TEST(GuestForwarderSocket, TwiceLateAndNeverAreRefusedCountedAndAnsweredOnce) {
  Rig r(R"(, "answer_timeout_ms": 300, "sweep_interval_ms": 5)");
  GuestPeerOptions o;
  o.vm_name = "vm1";
  o.script = {GuestAnswer::kTwice, GuestAnswer::kLate, GuestAnswer::kNever};
  o.late_ms = 900;
  r.startPeer(o);
  r.group(1);
  ASSERT_EQ(r.rig.backend.waitForResponses(1, kWait), 1u);
  EXPECT_EQ(r.codes()[0], ResponseCode::kSuccess);
  ASSERT_TRUE(waitFor([&] { return r.counter("answers_duplicate") == 1; }, kWait));
  r.group(2);
  r.group(3);
  ASSERT_EQ(r.rig.backend.waitForResponses(3, kWait), 3u);                      // both expire at 300 ms
  ASSERT_TRUE(waitFor([&] { return r.counter("answers_late") == 1; }, kWait));  // the late one at 900 ms
  EXPECT_EQ(r.counter("expired"), 2u);
  EXPECT_TRUE(waitFor([&] { return r.counter("iopf_responses_refused") == 2; }, kWait));
  const GuestPeerResult g = r.finishPeer();
  ASSERT_TRUE(g.ok) << g.error;
  EXPECT_EQ(g.errors_received, 2u);  // the forwarder told the guest: duplicate, late
  EXPECT_EQ(r.rig.backend.responseCount(), 3u);
  EXPECT_EQ(r.codes(), (std::vector<ResponseCode>{ResponseCode::kSuccess, ResponseCode::kInvalid,
                                                  ResponseCode::kInvalid}));
}

TEST(GuestForwarderSocket, GuestResetAnswersEverythingOpenForTheVmAtOnce) {
  Rig r;
  GuestPeerOptions o;
  o.vm_name = "vm1";
  o.script = {GuestAnswer::kNever, GuestAnswer::kNever, GuestAnswer::kReset};
  r.startPeer(o);
  r.group(1);
  r.group(2);
  ASSERT_TRUE(waitFor([&] { return r.counter("open_groups") == 2; }, kWait));
  r.group(3);
  ASSERT_EQ(r.rig.backend.waitForResponses(3, kWait), 3u);
  EXPECT_EQ(r.codes(), std::vector<ResponseCode>(3, ResponseCode::kInvalid));
  EXPECT_EQ(r.counter("drained_guest_reset"), 3u);
  const GuestPeerResult g = r.finishPeer();
  ASSERT_TRUE(g.ok) << g.error;
  EXPECT_EQ(g.reset_drained, 3u);
}

TEST(GuestForwarderSocket, VmmDisconnectAnswersEverythingOpenAtOnce) {
  Rig r;
  GuestPeerOptions o;
  o.vm_name = "vm1";
  o.script = {GuestAnswer::kNever};
  r.startPeer(o);
  for (uint32_t g = 1; g <= 4; ++g) r.group(g);
  ASSERT_TRUE(waitFor([&] { return r.counter("open_groups") == 4; }, kWait));
  EXPECT_EQ(r.rig.backend.responseCount(), 0u);
  r.finishPeer();
  ASSERT_EQ(r.rig.backend.waitForResponses(4, kWait), 4u);
  EXPECT_EQ(r.codes(), std::vector<ResponseCode>(4, ResponseCode::kInvalid));
  EXPECT_EQ(r.counter("drained_disconnect"), 4u);
  // The VM is gone: the next group is answered INVALID at once.
  r.group(5);
  ASSERT_EQ(r.rig.backend.waitForResponses(5, kWait), 5u);
  EXPECT_EQ(r.counter("vm_unavailable"), 1u);
}

TEST(GuestForwarderSocket, NoVmmAndPerVmBoundAnswerInvalidAtOnce) {
  Rig r(R"(, "max_open_groups_per_vm": 2)");
  r.group(1);  // nobody connected yet
  ASSERT_EQ(r.rig.backend.waitForResponses(1, kWait), 1u);
  EXPECT_EQ(r.counter("vm_unavailable"), 1u);
  GuestPeerOptions o;
  o.vm_name = "vm1";
  o.script = {GuestAnswer::kNever};
  r.startPeer(o);
  for (uint32_t g = 2; g <= 5; ++g) r.group(g);
  ASSERT_EQ(r.rig.backend.waitForResponses(3, kWait), 3u);
  ASSERT_TRUE(waitFor([&] { return r.counter("overload") == 2; }, kWait));
  EXPECT_EQ(r.counter("open_groups"), 2u);
  r.finishPeer();
  ASSERT_EQ(r.rig.backend.waitForResponses(5, kWait), 5u);
  EXPECT_EQ(r.codes(), std::vector<ResponseCode>(5, ResponseCode::kInvalid));
}

TEST(GuestForwarderSocket, ConfigErrorsNameTheField) {
  RouterRig rig;
  PluginHostOptions o;
  o.report = [](const PluginReport&) {};
  PluginHost host(rig.router.get(), o);
  const absl::Status st = host.loadFile(kPlugin, R"({"vms": [{"name": "vm1", "transport": "vhost-iotlb"}]})");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("field 'vms[0].vhost_socket' is required"), absl::string_view::npos) << st;
  rig.router->shutdown();
}

TEST(GuestForwarderSocket, VmmPeerToolIsAScriptedGuest) {
  Rig r("", /*config_device=*/false);
  const std::string cmd =
      absl::StrCat(IOPF_VMM_PEER_BIN, " --guest --socket ", r.socket,
                   " --vm vm1 --device 42:0x18:1:0x18:8 --script success,invalid --groups 4 --json");
  std::string out;
  int status = -1;
  std::thread tool([&] {
    FILE* p = ::popen(cmd.c_str(), "r");
    char buf[512];
    while (p != nullptr && std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
    status = p != nullptr ? ::pclose(p) : -1;
  });
  ASSERT_TRUE(waitFor([&] { return r.counter("iopf_devices_added") == 1; }, kWait));
  for (uint32_t g = 1; g <= 4; ++g) {
    r.group(g);
    ASSERT_EQ(r.rig.backend.waitForResponses(g, kWait), g);
  }
  tool.join();
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("\"ok\":true,\"groups\":4,\"requests\":4,\"success\":2,\"invalid\":2"),
            std::string::npos)
      << out;
  EXPECT_EQ(r.codes(), (std::vector<ResponseCode>{ResponseCode::kSuccess, ResponseCode::kInvalid,
                                                  ResponseCode::kSuccess, ResponseCode::kInvalid}));
}

// --- vhost-iotlb transport against a scripted front-end (what QEMU does, byte for byte) --------

namespace vu = qemu_socket::vu;

// Blocking frame I/O for the scripted front-end.
std::vector<uint8_t> readFrame(int fd, qemu_socket::FrameHeader& h) {
  uint8_t head[qemu_socket::kHeaderSize];
  if (::recv(fd, head, sizeof head, MSG_WAITALL) != static_cast<ssize_t>(sizeof head)) return {};
  h = qemu_socket::decodeHeader(head);
  std::vector<uint8_t> payload(h.size);
  if (h.size > 0 && ::recv(fd, payload.data(), h.size, MSG_WAITALL) != static_cast<ssize_t>(h.size))
    return {};
  return payload;
}
void sendBytes(int fd, const std::vector<uint8_t>& b) {
  ASSERT_EQ(::send(fd, b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
}
// Sends `frame` with `fd` attached (SCM_RIGHTS).
void sendWithFd(int sock, const std::vector<uint8_t>& frame, int fd) {
  iovec iov{const_cast<uint8_t*>(frame.data()), frame.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  ASSERT_EQ(::sendmsg(sock, &msg, MSG_NOSIGNAL), static_cast<ssize_t>(frame.size()));
}

TEST(GuestForwarderVhost, ScriptedFrontEndMissUpdateInvalidateAndRefusals) {
  TempDir dir;
  RouterRig rig(/*threaded=*/true);
  const std::string sock = dir.file("vhost.sock");
  auto hostp =
      testing::startForwarder(rig, absl::StrFormat(R"({"vms": [{"name": "qemu0", "transport": "vhost-iotlb",
      "vhost_socket": "%s"}], "devices": [{"backend_handle": 42, "vm": "qemu0", "virt_id": 24, "guest_rid": 24}]})",
                                                   sock));
  PluginHost& host = *hostp;
  const auto counter = [&](const std::string& n) {
    return host.counter("guest_forwarder", "vhost.qemu0." + n).value_or(~0ull);
  };
  const auto group = [&](uint32_t grpid, uint64_t addr) {
    std::vector<PageRequest> v{rig.request(grpid, addr, true, perm::kRead)};
    rig.backend.sink().deliver(v);
  };

  auto main = qemu_socket::connectUnix(sock);
  ASSERT_TRUE(main.ok()) << main.status();
  const int m = main->get();
  // Set-up as QEMU does it: SET_PROTOCOL_FEATURES (no reply) directly followed by
  // SET_BACKEND_REQ_FD with the channel's fd: the fd must land on the right frame.
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  sendBytes(m, vu::u64Frame(vu::kSetProtocolFeatures, 0, vu::kProtocolReplyAck | vu::kProtocolBackendReq));
  sendWithFd(m, qemu_socket::encodeFrame(vu::kSetBackendReqFd, qemu_socket::kFlagNeedReply, {}), sv[1]);
  ::close(sv[1]);
  const int ch = sv[0];
  qemu_socket::FrameHeader hdr;
  std::vector<uint8_t> p = readFrame(m, hdr);
  ASSERT_EQ(hdr.request, vu::kSetBackendReqFd);
  ASSERT_TRUE(hdr.isReply());
  ASSERT_EQ(qemu_socket::getU64(p.data()), 0u);
  ASSERT_TRUE(waitFor([&] { return counter("channel_ready") == 1; }, kWait));

  // MISS -> UPDATE on the main socket (acked while the MISS is outstanding) -> MISS ack 0: SUCCESS.
  group(1, 0x5123);
  p = readFrame(ch, hdr);
  ASSERT_EQ(hdr.request, vu::kBackendIotlbMsg);
  ASSERT_EQ(hdr.flags, qemu_socket::kVersion | qemu_socket::kFlagNeedReply);
  vu::IotlbMsg miss = vu::decodeIotlb(p.data());
  EXPECT_EQ(miss, (vu::IotlbMsg{0x5000, 0, 0, vu::kPermRo, vu::kIotlbMiss}));
  sendBytes(m, vu::iotlbFrame(vu::kIotlbMsg, {0x5000, 0x1000, 0x7f0000005000, vu::kPermRw, vu::kIotlbUpdate},
                              qemu_socket::kFlagNeedReply));
  p = readFrame(m, hdr);
  ASSERT_EQ(hdr.request, vu::kIotlbMsg);
  ASSERT_EQ(qemu_socket::getU64(p.data()), 0u);
  sendBytes(ch, vu::u64Frame(vu::kBackendIotlbMsg, qemu_socket::kFlagReply, 0));
  ASSERT_EQ(rig.backend.waitForResponses(1, kWait), 1u);
  EXPECT_EQ(rig.backend.responses()[0].code, ResponseCode::kSuccess);
  EXPECT_EQ(counter("iotlb_entries"), 1u);

  // The guest unmaps: INVALIDATE is applied (the entry leaves the IOTLB) and acked.
  sendBytes(m, vu::iotlbFrame(vu::kIotlbMsg, {0x5000, 0x1000, 0, 0, vu::kIotlbInvalidate},
                              qemu_socket::kFlagNeedReply));
  p = readFrame(m, hdr);
  ASSERT_EQ(qemu_socket::getU64(p.data()), 0u);
  EXPECT_EQ(counter("invalidations"), 1u);
  EXPECT_EQ(counter("iotlb_removed"), 1u);
  EXPECT_EQ(counter("iotlb_entries"), 0u);

  // Now unmapped: QEMU acks the MISS with 1 -> INVALID.
  group(2, 0x5000);
  p = readFrame(ch, hdr);
  ASSERT_EQ(vu::decodeIotlb(p.data()).iova, 0x5000u);
  sendBytes(ch, vu::u64Frame(vu::kBackendIotlbMsg, qemu_socket::kFlagReply, 1));
  ASSERT_EQ(rig.backend.waitForResponses(2, kWait), 2u);
  EXPECT_EQ(rig.backend.responses()[1].code, ResponseCode::kInvalid);
  // Ack 0 without an UPDATE covering the page: not granted.
  group(3, 0x6000);
  p = readFrame(ch, hdr);
  sendBytes(ch, vu::u64Frame(vu::kBackendIotlbMsg, qemu_socket::kFlagReply, 0));
  ASSERT_EQ(rig.backend.waitForResponses(3, kWait), 3u);
  EXPECT_EQ(rig.backend.responses()[2].code, ResponseCode::kInvalid);
  EXPECT_EQ(counter("miss_no_update"), 1u);
  EXPECT_EQ(counter("miss_refused"), 2u);

  // QEMU goes away with a MISS outstanding: the open group is answered INVALID at once.
  group(4, 0x7000);
  p = readFrame(ch, hdr);
  ::close(ch);
  main->reset();
  ASSERT_EQ(rig.backend.waitForResponses(4, kWait), 4u);
  EXPECT_EQ(rig.backend.responses()[3].code, ResponseCode::kInvalid);
  EXPECT_EQ(host.counter("guest_forwarder", "drained_disconnect"), 1u);
  rig.router->shutdown();
  host.shutdown();
}

}  // namespace
}  // namespace iopf
