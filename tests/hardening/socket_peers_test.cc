// Hostile peers of the QEMU socket backend, profile "iopf" (issue 11): a VMM that sends oversize
// frames, truncated frames, wrong versions, floods of fds, holds a frame half-sent forever or
// disconnects mid-group. In every case the backend stays up, a well-behaved VMM on the same backend
// keeps getting its answers, every open group of the hostile VMM is answered (origin detach) and no
// file descriptor leaks.
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <map>

#include "gtest/gtest.h"
#include "iopf_protocol.h"
#include "raw_peer.h"
#include "test_router.h"

namespace iopf::qemu_socket {
namespace {

using namespace testing;

size_t openFds() {
  size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d) != nullptr) ++n;
    ::closedir(d);
  }
  return n;
}

std::vector<uint8_t> rawFrame(uint32_t request, uint32_t flags, uint32_t size,
                              std::vector<uint8_t> payload = {}) {
  std::vector<uint8_t> out(kHeaderSize + payload.size());
  putU32(out.data(), request);
  putU32(out.data() + 4, flags);
  putU32(out.data() + 8, size);
  std::copy(payload.begin(), payload.end(), out.begin() + kHeaderSize);
  return out;
}

// One backend, a good VMM and a hostile one. The hostile VMM has two complete groups open in the
// router (not yet dispatched: manual router) and one partial group when the hostile act starts.
struct Scene {
  RouterHarness h;
  RawPeer good;
  RawPeer bad;
  size_t fds_before = 0;

  explicit Scene(const std::string& tag)
      : h(tag), good(h.backend->socketPath()), bad(h.backend->socketPath()) {
    good.hello(p2::kFeatureBatch);
    bad.hello(p2::kFeatureBatch);
    EXPECT_EQ(good.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
    EXPECT_EQ(bad.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
    bad.send(p2::pageReqFrame(
        std::vector<PgfaultRecord>{record(1, 1, 1, true), record(1, 2, 2, true), record(1, 3, 3, false)}));
    EXPECT_TRUE(waitUntil([&] { return h.backend->stats().records_in == 3; }));
    fds_before = openFds();
  }

  // After the hostile connection is gone: the backend serves the good VMM, the hostile VMM's open
  // groups were answered, nothing leaked.
  void expectContained(uint64_t partial_requests = 1, uint64_t good_groups = 20) {
    ASSERT_TRUE(waitUntil([&] { return h.backend->stats().connections_open == 1; }))
        << "the hostile connection is still open";
    std::vector<PgfaultRecord> recs;
    for (uint32_t i = 0; i < good_groups; ++i) recs.push_back(record(1, i % 512, 100 + i, true));
    good.send(p2::pageReqFrame(recs));
    h.pump(3 + good_groups);
    const auto resp = good.responses(good_groups);
    std::map<uint32_t, uint32_t> by_cookie;
    for (const auto& r : resp)
      EXPECT_TRUE(by_cookie.emplace(r.cookie, r.code).second) << "cookie " << r.cookie;
    EXPECT_EQ(by_cookie.size(), good_groups);
    const StatsSnapshot s = h.router->stats();
    EXPECT_EQ(s.open_groups, 0u) << "an open group of the hostile VMM was never answered";
    EXPECT_EQ(s.responses_by_origin[static_cast<int>(Origin::kDetach)], 2u);
    EXPECT_EQ(s.partial_discarded, partial_requests) << "partial requests discarded";
    // The backend's own fds (the hostile socket, fds it was sent) are all closed again.
    EXPECT_TRUE(waitUntil([&] { return openFds() <= fds_before - 2; }))
        << "fds before " << fds_before << ", now " << openFds();
    // A new VMM still gets in.
    RawPeer late(h.backend->socketPath());
    EXPECT_EQ(late.hello(0), 0u);
  }
};

TEST(HostileSocketPeer, OversizeFrameHeader) {
  Scene s("oversize");
  s.bad.send(rawFrame(p2::kPageReq, kVersion, 0xFFFFFFFFu));
  EXPECT_TRUE(s.bad.waitEof()) << "a frame above the payload limit must close the connection";
  s.bad.close();
  s.expectContained();
  EXPECT_EQ(s.h.backend->stats().fatal_closes, 1u);
}

TEST(HostileSocketPeer, PageReqJustAboveTheLimitAndHugeErrorText) {
  Scene s("oversize2");
  // ERROR longer than the profile allows is refused without taking the connection down…
  s.bad.send(rawFrame(p2::kError, kVersion, 8 + p2::kMaxErrorText + 8,
                      std::vector<uint8_t>(8 + p2::kMaxErrorText + 8, 'x')));
  // …a PAGE_REQ one record beyond the batch limit is fatal.
  s.bad.send(rawFrame(p2::kPageReq, kVersion, p2::kMaxPayload + kPgfaultSize,
                      std::vector<uint8_t>(p2::kMaxPayload + kPgfaultSize, 0)));
  EXPECT_TRUE(s.bad.waitEof());
  s.bad.close();
  s.expectContained();
}

TEST(HostileSocketPeer, TruncatedFrameThenClose) {
  Scene s("truncated");
  const auto frame = p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 9, 9, true)});
  s.bad.send(std::vector<uint8_t>(frame.begin(), frame.begin() + static_cast<long>(frame.size() / 2)));
  s.bad.shutdownWrite();
  EXPECT_TRUE(s.bad.waitEof());
  s.bad.close();
  s.expectContained();
  EXPECT_EQ(s.h.router->stats().groups, 2u + 20u) << "the truncated record must not become a group";
}

TEST(HostileSocketPeer, WrongVersions) {
  for (uint32_t flags : {0x0u, 0x2u, 0x3u}) {
    SCOPED_TRACE(flags);
    Scene s("version");
    s.bad.send(rawFrame(p2::kDeviceDel, flags, 4, {1, 0, 0, 0}));
    EXPECT_TRUE(s.bad.waitEof());
    s.bad.close();
    s.expectContained();
  }
}

TEST(HostileSocketPeer, FloodOfFileDescriptors) {
  Scene s("fdflood");
  // 200 frames, each carrying 8 eventfds on a message that takes none (refused, not fatal), then
  // one frame with more fds than any message may carry (fatal).
  std::vector<int> fds;
  for (int i = 0; i < 8; ++i) fds.push_back(::eventfd(0, EFD_CLOEXEC));
  const auto del = rawFrame(p2::kDeviceDel, kVersion, 4, {42, 0, 0, 0});
  for (int i = 0; i < 200; ++i) s.bad.send(del, fds);
  // The connection survives the refusals: DEVICE_DEL of an unknown device still gets its reply.
  EXPECT_EQ(s.bad.request(p2::deviceDelFrame(43), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
  std::vector<int> many;
  for (int i = 0; i < 2 * static_cast<int>(kMaxFdsPerFrame); ++i) many.push_back(::eventfd(0, EFD_CLOEXEC));
  s.bad.send(del, many);
  EXPECT_TRUE(s.bad.waitEof()) << "more than kMaxFdsPerFrame fds with one frame is fatal";
  s.bad.close();
  for (int fd : fds) ::close(fd);
  for (int fd : many) ::close(fd);
  s.expectContained();
}

TEST(HostileSocketPeer, HalfSentFrameForeverDoesNotStallOthers) {
  Scene s("halfsent");
  const auto frame = p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 9, 9, true)});
  s.bad.send(std::vector<uint8_t>(frame.begin(), frame.begin() + 7));  // inside the header
  // While the hostile VMM sits on its half frame, the good one does 500 round trips.
  for (uint32_t round = 0; round < 5; ++round) {
    std::vector<PgfaultRecord> recs;
    for (uint32_t i = 0; i < 100; ++i) recs.push_back(record(1, i, 1000 + round * 100 + i, true));
    s.good.send(p2::pageReqFrame(recs));
    s.h.pump(3 + (round + 1) * 100);
    EXPECT_EQ(s.good.responses((round + 1) * 100).size(), (round + 1) * 100);
  }
  EXPECT_EQ(s.h.backend->stats().connections_open, 2u) << "a slow peer is not a protocol error";
  // Its two complete groups were routed meanwhile; their answers went out.
  EXPECT_EQ(s.bad.responses(2).size(), 2u);
  s.bad.close();
  ASSERT_TRUE(waitUntil([&] { return s.h.backend->stats().connections_open == 1; }));
  s.h.router->runUntilIdle();
  const StatsSnapshot st = s.h.router->stats();
  EXPECT_EQ(st.open_groups, 0u);
  EXPECT_EQ(st.partial_discarded, 1u);
}

TEST(HostileSocketPeer, DisconnectMidGroup) {
  Scene s("midgroup");
  // Two more partial records of group 3, then gone.
  s.bad.send(p2::pageReqFrame(
      std::vector<PgfaultRecord>{record(1, 3, 3, false, 0x2000), record(1, 3, 3, false, 0x3000)}));
  ASSERT_TRUE(waitUntil([&] { return s.h.backend->stats().records_in == 5; }));
  s.bad.close();
  s.expectContained(3);
}

TEST(HostileSocketPeer, ConnectionFloodIsBounded) {
  RouterHarness h("connflood");
  std::vector<std::unique_ptr<RawPeer>> peers;
  for (int i = 0; i < 80; ++i) peers.push_back(std::make_unique<RawPeer>(h.backend->socketPath()));
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().connections_refused >= 80 - 64; }));
  EXPECT_LE(h.backend->stats().connections_open, 64u);
  peers.clear();
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().connections_open == 0; }));
  RawPeer ok(h.backend->socketPath());
  EXPECT_EQ(ok.hello(0), 0u);
  ASSERT_EQ(ok.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  ok.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 5, true)}));
  h.pump(1);
  EXPECT_EQ(ok.responses(1).size(), 1u);
}

}  // namespace
}  // namespace iopf::qemu_socket
