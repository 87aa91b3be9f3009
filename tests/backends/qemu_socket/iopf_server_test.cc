// The "iopf" profile server against raw peers, with a manual router: negotiation, device
// declarations, grouping, the malformed-input table, DEVICE_DEL and disconnect with open groups,
// two VMMs interleaved, exactly-once under duplicate and late traffic.
#include <sys/eventfd.h>

#include <algorithm>
#include <map>

#include "gtest/gtest.h"
#include "test_router.h"

namespace iopf::qemu_socket {
namespace {

using namespace testing;

std::map<uint32_t, uint32_t> byCookie(const std::vector<PageResponseRecord>& rs) {
  std::map<uint32_t, uint32_t> m;
  for (const auto& r : rs) {
    EXPECT_TRUE(m.emplace(r.cookie, r.code).second) << "two responses for cookie " << r.cookie;
  }
  return m;
}

TEST(IopfServer, HelloNegotiatesTheIntersectionOfFeatures) {
  RouterHarness h("hello");
  RawPeer peer(h.backend->socketPath());
  EXPECT_EQ(peer.hello(p2::kFeatureBatch | p2::kFeatureInvalidate | (1ull << 63)), p2::kFeatureBatch);
  RawPeer plain(h.backend->socketPath());
  EXPECT_EQ(plain.hello(0), 0u);
}

TEST(IopfServer, DeviceAddAndDelReplies) {
  RouterHarness h("devices");
  RawPeer peer(h.backend->socketPath());
  peer.hello(0);
  p2::DeviceAdd a = device(7, 20, p2::kDeviceNeedsPasid);
  a.segment = 1;
  a.pri_outstanding_alloc = 32;
  a.viommu_id = 3;
  EXPECT_EQ(peer.request(p2::deviceAddFrame(a), p2::kDeviceAdd), 0u);
  EXPECT_EQ(peer.request(p2::deviceAddFrame(a), p2::kDeviceAdd), uint64_t(p2::Status::kAlreadyExists));
  EXPECT_EQ(peer.request(p2::deviceAddFrame(device(8, 21)), p2::kDeviceAdd), uint64_t(p2::Status::kInvalidArgument));
  EXPECT_EQ(peer.request(p2::deviceAddFrame(device(8, 0, 0x4)), p2::kDeviceAdd), uint64_t(p2::Status::kInvalidArgument));
  p2::DeviceAdd reserved = device(8);
  reserved.reserved1 = 1;
  EXPECT_EQ(peer.request(p2::deviceAddFrame(reserved), p2::kDeviceAdd), uint64_t(p2::Status::kInvalidArgument));
  EXPECT_EQ(peer.request(p2::deviceDelFrame(9), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
  EXPECT_EQ(peer.request(p2::deviceAddFrame(device(9, 0, p2::kDeviceStallModel)), p2::kDeviceAdd), 0u);

  const auto devices = h.router->devices();
  ASSERT_EQ(devices.size(), 2u);
  const DeviceInfo& d7 = devices[0];
  EXPECT_EQ(d7.backend_name, "qemu_socket");
  EXPECT_EQ(d7.spec.name, "qemu_socket/1/7");
  EXPECT_EQ(d7.spec.rid, 0x107);
  EXPECT_EQ(d7.spec.pci_segment, 1u);
  EXPECT_EQ(d7.spec.pasid_bits, 20);
  EXPECT_TRUE(d7.spec.needs_pasid);
  EXPECT_FALSE(d7.spec.stall_model);
  EXPECT_EQ(d7.spec.pri_allocation, 32u);
  EXPECT_TRUE(devices[1].spec.stall_model);
  const auto events = h.deviceEvents();
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].virt_id, 0x1007u);
  EXPECT_EQ(events[0].viommu_id, 3u);
  EXPECT_EQ(events[0].vmm_dev_id, 7u);

  EXPECT_EQ(peer.request(p2::deviceDelFrame(7), p2::kDeviceDel), 0u);
  EXPECT_TRUE(h.router->devices()[0].removed);
  EXPECT_EQ(peer.request(p2::deviceDelFrame(7), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
}

TEST(IopfServer, OneResponsePerGroupWithTheLastCookie) {
  RouterHarness h("groups");
  RawPeer peer(h.backend->socketPath());
  ASSERT_EQ(peer.hello(p2::kFeatureBatch), p2::kFeatureBatch);
  ASSERT_EQ(peer.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  std::vector<PgfaultRecord> recs = {
      record(1, 5, 50, false, 0x1000), record(1, 6, 60, true, 0x9000 | kInvalidBit),
      record(1, 5, 50, false, 0x2000, 3), record(1, 5, 50, true, 0x3000, 3),
      record(1, 7, 0, true, 0x4000),  // cookie 0 is a legal cookie
  };
  peer.send(p2::pageReqFrame(recs));
  h.pump(recs.size());
  const auto resp = byCookie(peer.responses(3));
  EXPECT_EQ(resp, (std::map<uint32_t, uint32_t>{{50, 0}, {60, 1}, {0, 0}}));
  // A barrier: everything before the reply has been seen, and nothing else came.
  EXPECT_EQ(peer.request(p2::deviceDelFrame(42), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
  EXPECT_EQ(peer.responses(0).size(), 3u);
  const StatsSnapshot s = h.router->stats();
  EXPECT_EQ(s.groups, 3u);
  EXPECT_EQ(s.requests, 5u);
}

TEST(IopfServer, StopMarkersGetNoResponse) {
  RouterHarness h("stop");
  RawPeer peer(h.backend->socketPath());
  peer.hello(0);
  ASSERT_EQ(peer.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  PgfaultRecord stop = record(1, 4, 77, true);
  stop.perm = 0;
  peer.send(p2::pageReqFrame(std::vector<PgfaultRecord>{stop}));
  peer.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 5, 78, true)}));
  h.pump(2);
  EXPECT_EQ(byCookie(peer.responses(1)), (std::map<uint32_t, uint32_t>{{78, 0}}));
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().responses_sent >= 1; }));
  EXPECT_EQ(peer.request(p2::deviceDelFrame(42), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
  EXPECT_EQ(peer.responses(0).size(), 1u);
  EXPECT_EQ(h.router->stats().stop_markers, 1u);
}

// --- the malformed-input table -------------------------------------------------------------------

enum class Setup { kNone, kHello, kHelloAndDevices };

struct MalformedCase {
  const char* name;
  Setup setup;
  std::vector<uint8_t> stream;
  int fds = 0;
  bool shutdown_write = false;  // end the stream after `stream` (truncation)
  WireError code;
  uint32_t request;
  const char* message;  // the exact ERROR text
  bool fatal;
};

std::vector<uint8_t> withPayload(uint32_t request, uint32_t flags, std::vector<uint8_t> payload) {
  std::vector<uint8_t> out(kHeaderSize);
  encodeHeader({request, flags, static_cast<uint32_t>(payload.size())}, out.data());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

std::vector<uint8_t> helloWith(uint32_t magic, uint16_t major) {
  return p2::helloFrame({magic, major, 0, 0}, false);
}

std::vector<MalformedCase> malformedCases() {
  auto rec = [](PgfaultRecord r) { return p2::pageReqFrame(std::vector<PgfaultRecord>{r}); };
  PgfaultRecord pasid_on_plain = record(2, 1, 1, true, 0x1000, 4);
  PgfaultRecord pasid_too_big = record(1, 1, 1, true, 0x1000, 1u << 20);
  PgfaultRecord prgi_too_big = record(1, 0x200, 1, true);
  PgfaultRecord stall_partial = record(3, 1, 1, false);
  PgfaultRecord stall_tag_too_big = record(3, 0x10000, 1, true);
  std::vector<uint8_t> truncated = p2::deviceAddFrame(device(5));
  truncated.resize(kHeaderSize + 10);
  std::vector<uint8_t> two_records = p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 1, false), record(1, 1, 1, true)});
  std::vector<uint8_t> duplicate = rec(record(1, 1, 9, true));
  std::vector<uint8_t> dup2 = rec(record(1, 2, 9, true));
  duplicate.insert(duplicate.end(), dup2.begin(), dup2.end());
  return {
      // header: version
      {"version 0", Setup::kHello, withPayload(p2::kDeviceDel, 0x0, {1, 0, 0, 0}), 0, false, WireError::kBadVersion,
       p2::kDeviceDel, "frame 0x1002: header version 0, expects 1 (flags 0x0)", true},
      {"version 2", Setup::kNone, withPayload(p2::kHello, 0x2, std::vector<uint8_t>(16)), 0, false,
       WireError::kBadVersion, p2::kHello, "frame 0x1000: header version 2, expects 1 (flags 0x2)", true},
      // header: flags
      {"reserved flag bit 4", Setup::kHello, withPayload(p2::kDeviceDel, 0x11, {1, 0, 0, 0}), 0, false,
       WireError::kReservedFlags, p2::kDeviceDel,
       "profile 'iopf': message DEVICE_DEL (0x1002) has flags 0x11, reserved bits 0x10 set (only 0xf are defined)",
       false},
      {"REPLY flag on a request", Setup::kHello, withPayload(p2::kDeviceDel, 0x5, {1, 0, 0, 0}), 0, false,
       WireError::kUnexpectedReply, p2::kDeviceDel,
       "message DEVICE_DEL (0x1002) has the REPLY flag; the server expects requests only", false},
      // header: request id
      {"unknown id", Setup::kHello, withPayload(0x2000, 0x1, {1, 2, 3}), 0, false, WireError::kUnknownRequest, 0x2000,
       "profile 'iopf': unknown request id 0x2000 (3 payload bytes skipped)", false},
      {"server-only id from a peer", Setup::kHello, p2::pageRespFrame(std::vector<PageResponseRecord>{{1, 0}}), 0,
       false, WireError::kUnknownRequest, p2::kPageResp, "profile 'iopf': unknown request id 0x1011 (8 payload bytes skipped)",
       false},
      // header: size
      {"size above the limit", Setup::kHello, bytes({0x10, 0x10, 0, 0, 0x01, 0, 0, 0, 0x28, 0x28, 0, 0}), 0, false,
       WireError::kPayloadTooLarge, p2::kPageReq, "frame 0x1010: payload of 10280 bytes exceeds the limit of 10240 bytes",
       true},
      {"HELLO 15 bytes", Setup::kNone, withPayload(p2::kHello, 0x1, std::vector<uint8_t>(15)), 0, false,
       WireError::kBadPayloadSize, p2::kHello, "profile 'iopf': message HELLO (0x1000) has a 15-byte payload, expects 16",
       false},
      {"DEVICE_ADD 31 bytes", Setup::kHello, withPayload(p2::kDeviceAdd, 0x1, std::vector<uint8_t>(31)), 0, false,
       WireError::kBadPayloadSize, p2::kDeviceAdd,
       "profile 'iopf': message DEVICE_ADD (0x1001) has a 31-byte payload, expects 32", false},
      {"DEVICE_DEL 8 bytes", Setup::kHello, withPayload(p2::kDeviceDel, 0x1, std::vector<uint8_t>(8)), 0, false,
       WireError::kBadPayloadSize, p2::kDeviceDel,
       "profile 'iopf': message DEVICE_DEL (0x1002) has a 8-byte payload, expects 4", false},
      {"PAGE_REQ 41 bytes", Setup::kHello, withPayload(p2::kPageReq, 0x1, std::vector<uint8_t>(41)), 0, false,
       WireError::kBadPayloadSize, p2::kPageReq,
       "profile 'iopf': message PAGE_REQ (0x1010) has a 41-byte payload, expects 40 + k*40, at most 10240", false},
      {"PAGE_REQ empty", Setup::kHello, withPayload(p2::kPageReq, 0x1, {}), 0, false, WireError::kBadPayloadSize,
       p2::kPageReq, "profile 'iopf': message PAGE_REQ (0x1010) has a 0-byte payload, expects 40 + k*40, at most 10240",
       false},
      {"ERROR 7 bytes", Setup::kHello, withPayload(p2::kError, 0x1, std::vector<uint8_t>(7)), 0, false,
       WireError::kBadPayloadSize, p2::kError, "profile 'iopf': message ERROR (0x10ff) has a 7-byte payload, expects 8..264",
       false},
      // fds
      {"fd on DEVICE_DEL", Setup::kHello, p2::deviceDelFrame(1), 1, false, WireError::kUnexpectedFds, p2::kDeviceDel,
       "profile 'iopf': message DEVICE_DEL (0x1002) carried 1 fd(s), expects at most 0 (the fds were closed)", false},
      {"fd on HELLO", Setup::kNone, p2::helloFrame({}, false), 2, false, WireError::kUnexpectedFds, p2::kHello,
       "profile 'iopf': message HELLO (0x1000) carried 2 fd(s), expects at most 0 (the fds were closed)", false},
      // truncation
      {"truncated header", Setup::kHello, bytes({0x01, 0x10, 0, 0, 0x01}), 0, true, WireError::kTruncatedFrame, 0,
       "stream ended inside a frame header: 5 of 12 bytes", true},
      {"truncated payload", Setup::kHello, truncated, 0, true, WireError::kTruncatedFrame, p2::kDeviceAdd,
       "stream ended inside frame 0x1001: 10 of 32 payload bytes", true},
      // HELLO fields and ordering
      {"HELLO magic", Setup::kNone, helloWith(0x46504F48, 1), 0, false, WireError::kBadMagic, p2::kHello,
       "HELLO magic 0x46504f48, expects 0x46504f49 ('IOPF')", true},
      {"HELLO major 2", Setup::kNone, helloWith(p2::kMagic, 2), 0, false, WireError::kUnsupportedMajor, p2::kHello,
       "HELLO version 2.0, server speaks 1.0", true},
      {"HELLO major 0", Setup::kNone, helloWith(p2::kMagic, 0), 0, false, WireError::kUnsupportedMajor, p2::kHello,
       "HELLO version 0.0, server speaks 1.0", true},
      {"DEVICE_ADD before HELLO", Setup::kNone, p2::deviceAddFrame(device(1)), 0, false, WireError::kExpectedHello,
       p2::kDeviceAdd, "first message is DEVICE_ADD (0x1001), expects HELLO (0x1000)", true},
      {"PAGE_REQ before HELLO", Setup::kNone, rec(record(1, 1, 1, true)), 0, false, WireError::kExpectedHello,
       p2::kPageReq, "first message is PAGE_REQ (0x1010), expects HELLO (0x1000)", true},
      {"second HELLO", Setup::kHello, p2::helloFrame({}, false), 0, false, WireError::kDuplicateHello, p2::kHello,
       "HELLO again on connection 1: features already negotiated (0x0)", false},
      // records: each field wrong in turn
      {"record dev_id undeclared", Setup::kHelloAndDevices, rec(record(9, 1, 1, true)), 0, false,
       WireError::kUnknownDevice, p2::kPageReq, "PAGE_REQ record 0 of 1: dev_id 9 is not declared on connection 1", false},
      {"record PASID on a device without PASID", Setup::kHelloAndDevices, rec(pasid_on_plain), 0, false,
       WireError::kBadRecord, p2::kPageReq,
       "PAGE_REQ record 0 of 1 (dev_id 2): PASID 4, but the device declared pasid_bits 0", false},
      {"record PASID too wide", Setup::kHelloAndDevices, rec(pasid_too_big), 0, false, WireError::kBadRecord,
       p2::kPageReq, "PAGE_REQ record 0 of 1 (dev_id 1): PASID 1048576 does not fit the declared pasid_bits 20", false},
      {"record grpid above 9 bits", Setup::kHelloAndDevices, rec(prgi_too_big), 0, false, WireError::kBadRecord,
       p2::kPageReq, "PAGE_REQ record 0 of 1 (dev_id 1): grpid 0x200, a PCIe PRGI has 9 bits", false},
      {"record stall device not LAST", Setup::kHelloAndDevices, rec(stall_partial), 0, false, WireError::kBadRecord,
       p2::kPageReq,
       "PAGE_REQ record 0 of 1 (dev_id 3): not LAST, but a stall-model device sends single-request groups", false},
      {"record stall tag above 16 bits", Setup::kHelloAndDevices, rec(stall_tag_too_big), 0, false,
       WireError::kBadRecord, p2::kPageReq, "PAGE_REQ record 0 of 1 (dev_id 3): grpid 0x10000, a stall tag has 16 bits",
       false},
      {"record cookie of an open group", Setup::kHelloAndDevices, duplicate, 0, false, WireError::kDuplicateGroup,
       p2::kPageReq,
       "PAGE_REQ record 0 of 1 (dev_id 1): cookie 9 is still open (group awaiting its PAGE_RESP)", false},
      {"batch without BATCH", Setup::kHelloAndDevices, two_records, 0, false, WireError::kNotNegotiated, p2::kPageReq,
       "PAGE_REQ with 2 records, but BATCH was not negotiated (1 record per frame)", false},
  };
}

TEST(IopfServer, MalformedInputTable) {
  for (const MalformedCase& c : malformedCases()) {
    SCOPED_TRACE(c.name);
    RouterHarness h(std::string("malformed"));
    RawPeer peer(h.backend->socketPath());
    if (c.setup != Setup::kNone) {
      ASSERT_EQ(peer.hello(0), 0u);
    }
    if (c.setup == Setup::kHelloAndDevices) {
      ASSERT_EQ(peer.request(p2::deviceAddFrame(device(1, 20)), p2::kDeviceAdd), 0u);
      ASSERT_EQ(peer.request(p2::deviceAddFrame(device(2, 0)), p2::kDeviceAdd), 0u);
      ASSERT_EQ(peer.request(p2::deviceAddFrame(device(3, 0, p2::kDeviceStallModel)), p2::kDeviceAdd), 0u);
    }
    std::vector<int> fds;
    for (int i = 0; i < c.fds; ++i) fds.push_back(::eventfd(0, EFD_CLOEXEC));
    peer.send(c.stream, fds);
    for (int fd : fds) ::close(fd);
    if (c.shutdown_write) peer.shutdownWrite();
    std::optional<ReceivedFrame> f = peer.next();
    ASSERT_TRUE(f.has_value()) << "no ERROR";
    ASSERT_EQ(f->header.request, p2::kError);
    const p2::ErrorMessage e = p2::decodeError(f->payload);
    EXPECT_EQ(static_cast<WireError>(e.code), c.code) << e.text;
    EXPECT_EQ(e.request, c.request);
    EXPECT_EQ(e.text, c.message);
    if (c.fatal) {
      EXPECT_TRUE(peer.waitEof()) << "a fatal error must close the connection";
    } else {
      // The connection still works.
      if (c.setup == Setup::kNone) {
        ASSERT_EQ(peer.hello(0), 0u);
      }
      EXPECT_EQ(peer.request(p2::deviceDelFrame(42), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
    }
    EXPECT_EQ(h.backend->stats().errors_sent, 1u);
    // The one rejected record never reached the router; a fatal close removed the devices.
    EXPECT_EQ(h.router->stats().groups, c.name == std::string("record cookie of an open group") ? 1u : 0u);
  }
}

TEST(IopfServer, FatalErrorClosesOnlyThatConnection) {
  RouterHarness h("fatal");
  RawPeer good(h.backend->socketPath());
  good.hello(0);
  ASSERT_EQ(good.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  RawPeer bad(h.backend->socketPath());
  bad.hello(0);
  ASSERT_EQ(bad.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  bad.send(withPayload(p2::kDeviceDel, 0x2, {1, 0, 0, 0}));
  EXPECT_TRUE(bad.waitEof());
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().connections_open == 1; }));
  good.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 11, true)}));
  h.pump(1);
  EXPECT_EQ(byCookie(good.responses(1)), (std::map<uint32_t, uint32_t>{{11, 0}}));
  EXPECT_EQ(h.backend->stats().fatal_closes, 1u);
}

// --- DEVICE_DEL and disconnect with open groups ----------------------------------------------

TEST(IopfServer, DeviceDelAnswersOpenGroupsInvalidBeforeTheReply) {
  RouterHarness h("devdel");
  RawPeer peer(h.backend->socketPath());
  peer.hello(p2::kFeatureBatch);
  ASSERT_EQ(peer.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  ASSERT_EQ(peer.request(p2::deviceAddFrame(device(2)), p2::kDeviceAdd), 0u);
  peer.send(p2::pageReqFrame(std::vector<PgfaultRecord>{
      record(1, 1, 101, true), record(1, 2, 102, true), record(1, 3, 103, false),  // 103 stays partial
      record(1, 4, 104, true), record(2, 1, 201, true)}));
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().records_in == 5; }));
  // No router pass yet: every complete group is open.
  peer.send(p2::deviceDelFrame(1));
  std::vector<ReceivedFrame> before_reply;
  for (;;) {
    auto f = peer.next();
    ASSERT_TRUE(f.has_value());
    if (f->header.request == p2::kDeviceDel) {
      EXPECT_EQ(getU64(f->payload.data()), 0u);
      break;
    }
    before_reply.push_back(*f);
  }
  std::map<uint32_t, uint32_t> detached;
  for (const auto& f : before_reply) {
    ASSERT_EQ(f.header.request, p2::kPageResp);
    for (size_t i = 0; i < f.payload.size(); i += kPageResponseSize) {
      const auto r = decodePageResponse(&f.payload[i]);
      EXPECT_TRUE(detached.emplace(r.cookie, r.code).second);
    }
  }
  EXPECT_EQ(detached, (std::map<uint32_t, uint32_t>{{101, 1}, {102, 1}, {104, 1}}));  // not the partial 103
  EXPECT_EQ(h.backend->stats().detach_responses, 3u);
  // The router answers its own copies (origin detach); they are dropped, not written again.
  h.router->runUntilIdle();
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().responses_dropped == 3; }));
  EXPECT_EQ(byCookie(peer.responses(1)), (std::map<uint32_t, uint32_t>{{201, 0}}));
  EXPECT_EQ(peer.request(p2::deviceDelFrame(42), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
  EXPECT_EQ(peer.responses(0).size(), 1u);
  const StatsSnapshot s = h.router->stats();
  EXPECT_EQ(s.responses_by_origin[static_cast<int>(Origin::kDetach)], 3u);
  EXPECT_EQ(s.partial_discarded, 1u);
  EXPECT_EQ(s.open_groups, 0u);
}

TEST(IopfServer, DisconnectWithOpenGroupsDetachesOnlyThatVmm) {
  RouterHarness h("disconnect");
  RawPeer a(h.backend->socketPath());
  RawPeer b(h.backend->socketPath());
  a.hello(p2::kFeatureBatch);
  b.hello(p2::kFeatureBatch);
  ASSERT_EQ(a.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  ASSERT_EQ(b.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  a.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 1, true), record(1, 2, 2, true), record(1, 3, 3, false)}));
  b.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 1, true)}));
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().records_in == 4; }));
  a.close();
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().connections_open == 1; }));
  EXPECT_TRUE(h.router->devices()[0].removed);
  EXPECT_FALSE(h.router->devices()[1].removed);
  h.router->runUntilIdle();
  EXPECT_EQ(byCookie(b.responses(1)), (std::map<uint32_t, uint32_t>{{1, 0}}));
  const StatsSnapshot s = h.router->stats();
  EXPECT_EQ(s.responses_by_origin[static_cast<int>(Origin::kDetach)], 2u);
  EXPECT_EQ(s.open_groups, 0u);
  EXPECT_EQ(s.partial_discarded, 1u);
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().responses_dropped == 2; }));
}

// --- two VMMs, exactly-once ----------------------------------------------------------------------

TEST(IopfServer, TwoVmmsInterleavedAreIsolated) {
  RouterHarness h("two");
  RawPeer a(h.backend->socketPath());
  RawPeer b(h.backend->socketPath());
  a.hello(p2::kFeatureBatch);
  b.hello(0);
  // Both use dev_id 1 and the same cookies; A's pages are granted, B's are not.
  ASSERT_EQ(a.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  ASSERT_EQ(b.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  constexpr uint32_t kGroups = 64;
  for (uint32_t i = 0; i < kGroups; ++i) {
    a.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, i % 512, i, false, 0x10000 + i * 0x1000),
                                                       record(1, i % 512, i, true, 0x20000 + i * 0x1000)}));
    b.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, i % 512, i, false, kInvalidBit | (i * 0x1000))}));
    b.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, i % 512, i, true, kInvalidBit | (i * 0x1000))}));
    if (i % 16 == 15) h.pump(4 * (i + 1));
  }
  const auto ra = byCookie(a.responses(kGroups));
  const auto rb = byCookie(b.responses(kGroups));
  ASSERT_EQ(ra.size(), kGroups);
  ASSERT_EQ(rb.size(), kGroups);
  for (uint32_t i = 0; i < kGroups; ++i) {
    EXPECT_EQ(ra.at(i), 0u);
    EXPECT_EQ(rb.at(i), 1u);
  }
  // B without BATCH got one response per frame.
  EXPECT_EQ(h.router->stats().groups, 2 * kGroups);
}

TEST(IopfServer, ExactlyOnceUnderDuplicateAndLateTraffic) {
  RouterHarness h("once");
  h.handler->setDefer(true);
  RawPeer peer(h.backend->socketPath());
  peer.hello(p2::kFeatureBatch);
  ASSERT_EQ(peer.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  peer.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 7, true), record(1, 2, 8, true)}));
  h.pump(2);
  auto handles = h.handler->deferred();
  ASSERT_EQ(handles.size(), 2u);
  // Duplicate traffic: the same cookie again while the group is open is refused, not routed.
  peer.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 3, 7, true)}));
  auto err = peer.next();
  ASSERT_TRUE(err && err->header.request == p2::kError);
  EXPECT_EQ(static_cast<WireError>(p2::decodeError(err->payload).code), WireError::kDuplicateGroup);
  // Duplicate completions: only the first wins.
  EXPECT_TRUE(handles[0].complete(ResponseCode::kSuccess));
  EXPECT_FALSE(handles[0].complete(ResponseCode::kInvalid));
  h.router->runUntilIdle();
  EXPECT_EQ(byCookie(peer.responses(1)), (std::map<uint32_t, uint32_t>{{7, 0}}));
  // Cookie 7 is free again after its response: a new group may use it.
  peer.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 3, 7, true, kInvalidBit)}));
  h.pump(3);
  ASSERT_EQ(h.handler->deferred().size(), 3u);
  EXPECT_TRUE(h.handler->deferred()[2].complete(ResponseCode::kInvalid));
  h.router->runUntilIdle();
  auto all = peer.responses(2);
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[1].cookie, 7u);
  EXPECT_EQ(all[1].code, 1u);
  // Late traffic: the device goes away with group 8 open; a completion after that writes nothing.
  EXPECT_EQ(peer.request(p2::deviceDelFrame(1), p2::kDeviceDel), 0u);
  all = peer.responses(3);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[2].cookie, 8u);
  EXPECT_EQ(all[2].code, 1u);  // INVALID, origin detach
  EXPECT_FALSE(handles[1].complete(ResponseCode::kSuccess));
  h.router->runUntilIdle();
  // Records for the removed device are refused.
  peer.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 4, 9, true)}));
  err = peer.next();
  ASSERT_TRUE(err && err->header.request == p2::kError);
  EXPECT_EQ(static_cast<WireError>(p2::decodeError(err->payload).code), WireError::kUnknownDevice);
  EXPECT_EQ(peer.request(p2::deviceDelFrame(42), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
  EXPECT_EQ(peer.responses(0).size(), 3u);
  EXPECT_EQ(h.router->stats().refused_completions, 2u);
}

}  // namespace
}  // namespace iopf::qemu_socket
