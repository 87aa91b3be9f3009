// Profile "vhost-iotlb": golden vectors of every message the front-end sends or answers, and the
// front-end against a scripted back-end (negotiation, MISS → router → UPDATE → ack, coalescing,
// refusals) with a manual router.
#include <sys/eventfd.h>

#include "gtest/gtest.h"
#include "test_router.h"
#include "vhost_iotlb_frontend.h"
#include "vhost_iotlb_protocol.h"

namespace iopf::qemu_socket {
namespace {

using namespace testing;

TEST(VhostIotlbGolden, FrontEndMessages) {
  EXPECT_EQ(vu::getFrame(vu::kGetFeatures), bytes({0x01, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(vu::getFrame(vu::kGetProtocolFeatures), bytes({0x0f, 0, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(vu::u64Frame(vu::kSetProtocolFeatures, 0, vu::kProtocolReplyAck | vu::kProtocolBackendReq),
            bytes({0x10, 0, 0, 0, 0x01, 0, 0, 0, 0x08, 0, 0, 0, 0x28, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(encodeFrame(vu::kSetOwner, kFlagNeedReply, {}), bytes({0x03, 0, 0, 0, 0x09, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(encodeFrame(vu::kSetBackendReqFd, kFlagNeedReply, {}), bytes({0x15, 0, 0, 0, 0x09, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(vu::u64Frame(vu::kSetFeatures, kFlagNeedReply,
                         vu::kFeatureVersion1 | vu::kFeatureIommuPlatform | vu::kFeatureProtocolFeatures),
            bytes({0x02, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0x40, 0x03, 0, 0, 0}));
  const vu::MemoryRegion region{0x100000, 0x400000, 0x7f0000000000, 0};
  EXPECT_EQ(vu::memTableFrame(std::span<const vu::MemoryRegion>(&region, 1), kFlagNeedReply),
            bytes({0x05, 0, 0, 0, 0x09, 0, 0, 0, 0x28, 0, 0, 0,  //
                   0x01, 0, 0, 0, 0, 0, 0, 0,                     // nregions, padding
                   0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0, 0,  // guest_phys_addr, memory_size
                   0, 0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));  // userspace_addr, mmap_offset
  EXPECT_EQ(vu::vringStateFrame(vu::kSetVringNum, 1, 256, kFlagNeedReply),
            bytes({0x08, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0}));
  EXPECT_EQ(vu::vringStateFrame(vu::kSetVringBase, 0, 0, kFlagNeedReply),
            bytes({0x0a, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(vu::vringStateFrame(vu::kSetVringEnable, 1, 1, kFlagNeedReply),
            bytes({0x12, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0}));
  EXPECT_EQ(vu::vringAddrFrame(1, 0x103000, 0x105000, 0x104000, kFlagNeedReply),
            bytes({0x09, 0, 0, 0, 0x09, 0, 0, 0, 0x28, 0, 0, 0,  //
                   1, 0, 0, 0, 0, 0, 0, 0,                        // index, flags
                   0, 0x30, 0x10, 0, 0, 0, 0, 0,                  // desc
                   0, 0x50, 0x10, 0, 0, 0, 0, 0,                  // used
                   0, 0x40, 0x10, 0, 0, 0, 0, 0,                  // avail
                   0, 0, 0, 0, 0, 0, 0, 0}));                     // log
  EXPECT_EQ(vu::u64Frame(vu::kSetVringKick, kFlagNeedReply, 1),
            bytes({0x0c, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(vu::u64Frame(vu::kSetVringCall, kFlagNeedReply, 0),
            bytes({0x0d, 0, 0, 0, 0x09, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  // IOTLB UPDATE (front-end → back-end, main socket) and its ack.
  EXPECT_EQ(vu::iotlbFrame(vu::kIotlbMsg, {0x103000, 0x1000, 0x7f0000003000, vu::kPermRw, vu::kIotlbUpdate},
                           kFlagNeedReply),
            bytes({0x16, 0, 0, 0, 0x09, 0, 0, 0, 0x20, 0, 0, 0,  //
                   0, 0x30, 0x10, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0,
                   0, 0x30, 0, 0, 0, 0x7f, 0, 0, 0x03, 0x02, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(vu::u64Frame(vu::kIotlbMsg, kFlagReply, 0),
            bytes({0x16, 0, 0, 0, 0x05, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(VhostIotlbGolden, BackendChannelMessages) {
  // BACKEND_IOTLB_MSG MISS as DPDK sends it (no NEED_REPLY), and the front-end's acks.
  const std::vector<uint8_t> miss = bytes({0x01, 0, 0, 0, 0x01, 0, 0, 0, 0x20, 0, 0, 0,  //
                                           0x10, 0x30, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                           0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x01, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(vu::iotlbFrame(vu::kBackendIotlbMsg, {0x103010, 0, 0, vu::kPermRo, vu::kIotlbMiss}, 0), miss);
  EXPECT_EQ(vu::decodeIotlb(miss.data() + kHeaderSize), (vu::IotlbMsg{0x103010, 0, 0, vu::kPermRo, vu::kIotlbMiss}));
  EXPECT_EQ(vu::u64Frame(vu::kBackendIotlbMsg, kFlagReply, 0),
            bytes({0x01, 0, 0, 0, 0x05, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(vu::u64Frame(vu::kBackendIotlbMsg, kFlagReply, 1),
            bytes({0x01, 0, 0, 0, 0x05, 0, 0, 0, 0x08, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}));
}

// A scripted vhost-user back-end: answers the front-end's set-up like DPDK would.
struct ScriptedBackend {
  explicit ScriptedBackend(const std::string& path, uint32_t queues) : main(path, 4096) {
    for (;;) {
      auto f = main.next();
      if (!f) {
        ADD_FAILURE() << "set-up stalled";
        return;
      }
      seen.push_back({f->header.request, f->header.flags});
      switch (f->header.request) {
        case vu::kGetFeatures:
          main.send(vu::u64Frame(vu::kGetFeatures, kFlagReply, features));
          continue;
        case vu::kGetProtocolFeatures:
          main.send(vu::u64Frame(vu::kGetProtocolFeatures, kFlagReply, protocol));
          continue;
        case vu::kSetBackendReqFd:
          channel = std::make_unique<RawPeer>(std::move(main.receivedFds().back()));
          break;
        default:
          break;
      }
      if (f->header.needsReply()) main.send(vu::u64Frame(f->header.request, kFlagReply, 0));
      if (f->header.request == vu::kSetVringEnable && getU32(f->payload.data()) == queues - 1) return;
    }
  }
  void miss(uint64_t iova, uint8_t perm, bool need_reply) {
    channel->send(vu::iotlbFrame(vu::kBackendIotlbMsg, {iova, 0, 0, perm, vu::kIotlbMiss}, need_reply ? kFlagNeedReply : 0));
  }

  uint64_t features = vu::kFeatureVersion1 | vu::kFeatureIommuPlatform | vu::kFeatureProtocolFeatures | (1ull << 15);
  uint64_t protocol = vu::kProtocolReplyAck | vu::kProtocolBackendReq | 1;
  RawPeer main;
  std::unique_ptr<RawPeer> channel;
  std::vector<std::pair<uint32_t, uint32_t>> seen;  // (request, flags)
};

struct FrontendHarness {
  explicit FrontendHarness(const std::string& tag) {
    RouterOptions o;
    o.threaded = false;
    o.shards = 1;
    o.clock = &clock;
    router = std::make_unique<Router>(o);
    DomainSpec d;
    d.name = "viommu";
    domain = *router->addDomain(d);
    handler = std::make_shared<TestHandler>();
    EXPECT_TRUE(router->setChain(domain, {handler}).ok());
    VhostIotlbFrontend::Options fo;
    fo.socket_path = tempSocketPath(tag);
    fo.on_device = [this](DeviceId device, uint32_t, bool added) {
      if (added) {
        EXPECT_TRUE(router->attach(device, std::nullopt, domain).ok());
      }
    };
    frontend = std::make_unique<VhostIotlbFrontend>(fo);
    EXPECT_TRUE(router->addBackend(*frontend).ok());
  }
  ~FrontendHarness() { router->shutdown(); }
  void pump(uint64_t groups) {
    EXPECT_TRUE(waitUntil([&] { return frontend->stats().groups >= groups; }));
    router->runUntilIdle();
  }
  ManualClock clock;
  std::unique_ptr<VhostIotlbFrontend> frontend;
  std::unique_ptr<Router> router;
  DomainId domain = 0;
  std::shared_ptr<TestHandler> handler;
};

TEST(VhostIotlbFrontend, NegotiatesLikeQemu) {
  FrontendHarness h("vu_setup");
  ScriptedBackend be(h.frontend->socketPath(), 2);
  ASSERT_TRUE(be.channel);
  std::vector<std::pair<uint32_t, uint32_t>> expect = {
      {vu::kGetFeatures, 0x1}, {vu::kGetProtocolFeatures, 0x1}, {vu::kSetProtocolFeatures, 0x1},
      {vu::kSetOwner, 0x9},    {vu::kSetBackendReqFd, 0x9},     {vu::kSetFeatures, 0x9},
      {vu::kSetMemTable, 0x9}};
  for (uint32_t q = 0; q < 2; ++q) {
    for (uint32_t id : {vu::kSetVringNum, vu::kSetVringBase, vu::kSetVringAddr, vu::kSetVringKick, vu::kSetVringCall}) {
      expect.push_back({id, 0x9});
    }
  }
  expect.push_back({vu::kSetVringEnable, 0x9});
  expect.push_back({vu::kSetVringEnable, 0x9});
  EXPECT_EQ(be.seen, expect);
  ASSERT_TRUE(waitUntil([&] { return h.frontend->stats().connections_ready == 1; }));
  EXPECT_EQ(h.frontend->stats().setup_failures, 0u);
  // fds: back-end channel, memfd, and a kick and call eventfd per vring.
  EXPECT_EQ(be.main.receivedFds().size(), 6u);
}

TEST(VhostIotlbFrontend, RefusesBackEndsWithoutIommuSupport) {
  FrontendHarness h("vu_noiommu");
  RawPeer be(h.frontend->socketPath(), 4096);
  auto f = be.next();
  ASSERT_TRUE(f && f->header.request == vu::kGetFeatures);
  be.send(vu::u64Frame(vu::kGetFeatures, kFlagReply, vu::kFeatureVersion1 | vu::kFeatureProtocolFeatures));
  EXPECT_TRUE(be.waitEof());
  EXPECT_EQ(h.frontend->stats().protocol_errors, 1u);
  EXPECT_TRUE(h.router->devices()[0].removed);
}

TEST(VhostIotlbFrontend, MissUpdateAckWithCoalescingAndRefusal) {
  FrontendHarness h("vu_miss");
  ScriptedBackend be(h.frontend->socketPath(), 2);
  ASSERT_TRUE(be.channel);
  const uint64_t base = h.frontend->options().iova_base;
  be.miss(base + 0x10, vu::kPermRo, true);
  be.miss(base + 0x20, vu::kPermRo, true);         // same page and perm: coalesced
  be.miss(base + 0x2010, vu::kPermRw, false);      // DPDK style: no ack wanted
  be.miss(kInvalidBit | 0x5000, vu::kPermRo, true);  // refused by the handler
  ASSERT_TRUE(waitUntil([&] { return h.frontend->stats().misses == 4; }));
  h.pump(3);
  EXPECT_EQ(h.frontend->stats().misses_coalesced, 1u);
  EXPECT_EQ(h.router->stats().groups, 3u);
  // Two UPDATEs, one at a time: the front-end waits for each ack (the deadlock rule: the MISSes
  // stay outstanding on the back-end channel while the main socket is served).
  auto memory = h.frontend->memory(1);
  ASSERT_TRUE(memory);
  std::vector<vu::IotlbMsg> updates;
  for (int i = 0; i < 2; ++i) {
    auto f = be.main.next();
    ASSERT_TRUE(f.has_value());
    ASSERT_EQ(f->header.request, vu::kIotlbMsg);
    EXPECT_EQ(f->header.flags, kVersion | kFlagNeedReply);
    updates.push_back(vu::decodeIotlb(f->payload.data()));
    be.main.send(vu::u64Frame(vu::kIotlbMsg, kFlagReply, 0));
  }
  std::sort(updates.begin(), updates.end(), [](const auto& a, const auto& b) { return a.iova < b.iova; });
  EXPECT_EQ(updates[0], (vu::IotlbMsg{base, 0x1000, reinterpret_cast<uint64_t>(memory->base), vu::kPermRw, vu::kIotlbUpdate}));
  EXPECT_EQ(updates[1].iova, base + 0x2000);
  EXPECT_EQ(updates[1].uaddr, reinterpret_cast<uint64_t>(memory->base) + 0x2000);
  // Acks on the back-end channel: 0 twice (the coalesced pair), 1 for the refused MISS.
  std::vector<uint64_t> acks;
  while (acks.size() < 3) {
    auto f = be.channel->next();
    ASSERT_TRUE(f.has_value());
    EXPECT_EQ(f->header.request, vu::kBackendIotlbMsg);
    EXPECT_TRUE(f->header.isReply());
    acks.push_back(getU64(f->payload.data()));
  }
  std::sort(acks.begin(), acks.end());
  EXPECT_EQ(acks, (std::vector<uint64_t>{0, 0, 1}));
  // The second UPDATE's ack (the MISS that wanted none) is counted when the front-end reads it,
  // which may be after the three channel acks above arrived.
  ASSERT_TRUE(waitUntil([&] { return h.frontend->stats().updates_acked == 2; }));
  const VhostIotlbStats s = h.frontend->stats();
  EXPECT_EQ(s.miss_acks_ok, 2u);
  EXPECT_EQ(s.miss_acks_failed, 1u);
  EXPECT_EQ(s.misses_refused, 1u);
  // After resolution the same page misses again (e.g. after an INVALIDATE): a new group.
  be.miss(base + 0x10, vu::kPermRo, true);
  h.pump(4);
  auto f = be.main.next();
  ASSERT_TRUE(f && f->header.request == vu::kIotlbMsg);
  be.main.send(vu::u64Frame(vu::kIotlbMsg, kFlagReply, 0));
  auto ack = be.channel->next();
  ASSERT_TRUE(ack.has_value());
  EXPECT_EQ(getU64(ack->payload.data()), 0u);
}

TEST(VhostIotlbFrontend, MalformedBackendChannelTrafficIsRefused) {
  FrontendHarness h("vu_bad");
  ScriptedBackend be(h.frontend->socketPath(), 2);
  ASSERT_TRUE(be.channel);
  // ACCESS_FAIL is not served: failure ack.
  be.channel->send(vu::iotlbFrame(vu::kBackendIotlbMsg, {0x1000, 0, 0, 1, vu::kIotlbAccessFail}, kFlagNeedReply));
  auto f = be.channel->next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(getU64(f->payload.data()), 1u);
  // Unknown back-end request id with NEED_REPLY: failure ack, the channel stays up.
  be.channel->send(encodeFrame(0x77, kFlagNeedReply, {}));
  f = be.channel->next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->header.request, 0x77u);
  EXPECT_EQ(getU64(f->payload.data()), 1u);
  // A wrong-size MISS: failure ack.
  be.channel->send(encodeFrame(vu::kBackendIotlbMsg, kFlagNeedReply, std::vector<uint8_t>(31)));
  f = be.channel->next();
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(getU64(f->payload.data()), 1u);
  EXPECT_EQ(h.frontend->stats().protocol_errors, 3u);
  // A bad version on the main socket is fatal for this connection.
  be.main.send(bytes({0x16, 0, 0, 0, 0x06, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_TRUE(be.main.waitEof());
}

}  // namespace
}  // namespace iopf::qemu_socket
