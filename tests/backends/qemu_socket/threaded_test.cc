// The "iopf" profile with a threaded router and several VMMs at once (label "core": TSan runs it):
// libiopf-vmm from C, concurrent closed-loop peers, disconnects under load, the peer tool.
#include <cstdlib>
#include <thread>

#include "gtest/gtest.h"
#include "test_router.h"
#include "vmm_load.h"

extern "C" int iopf_vmm_c_client_exchange(const char* path, uint32_t* code);

namespace iopf::qemu_socket {
namespace {

using namespace testing;

TEST(IopfThreaded, CClientExchange) {
  RouterHarness h("cclient", /*threaded=*/true, 2);
  uint32_t code = 99;
  EXPECT_EQ(iopf_vmm_c_client_exchange(h.backend->socketPath().c_str(), &code), 0);
  EXPECT_EQ(code, 0u);
}

TEST(IopfThreaded, ManyVmmsConcurrentlyExactlyOnce) {
  RouterHarness h("many", /*threaded=*/true, 2);
  constexpr int kPeers = 4;
  std::vector<VmmLoadResult> results(kPeers);
  std::vector<std::thread> threads;
  for (int p = 0; p < kPeers; ++p) {
    threads.emplace_back([&, p] {
      VmmLoadOptions o;
      o.socket_path = h.backend->socketPath();
      o.devices = 2;
      o.groups = 2000;
      o.group_size = 1 + p % 3;
      o.window = 64;
      o.batch = p % 2 == 0;
      o.invalid_every = 5;
      o.use_pasid = p == 3;
      results[p] = runVmmLoad(o);
    });
  }
  for (auto& t : threads) t.join();
  for (int p = 0; p < kPeers; ++p) {
    SCOPED_TRACE(p);
    EXPECT_TRUE(results[p].ok) << results[p].error;
    EXPECT_EQ(results[p].total_responses, 2000u);
    EXPECT_EQ(results[p].invalid, 400u);
    EXPECT_EQ(results[p].success, 1600u);
    EXPECT_EQ(results[p].unknown_cookies, 0u);
  }
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().devices_open == 0; }));
  EXPECT_EQ(h.router->stats().groups, kPeers * 2000u);
  EXPECT_EQ(h.router->openGroups(), 0u);
}

TEST(IopfThreaded, DisconnectUnderLoadLeavesOthersWhole) {
  RouterHarness h("dropper", /*threaded=*/true, 2);
  h.handler->setDefer(true);  // groups stay open: the quitter leaves with a full window
  VmmLoadOptions quit;
  quit.socket_path = h.backend->socketPath();
  quit.devices = 2;
  quit.window = 128;
  quit.disconnect_after = 128;
  const VmmLoadResult q = runVmmLoad(quit);
  ASSERT_TRUE(q.ok) << q.error;
  ASSERT_TRUE(waitUntil([&] { return h.backend->stats().connections_open == 0; }));
  // Every group of the quitter is accounted for: answered INVALID/detach if the router had taken
  // it in, dropped (device removed) if it was still in flight towards its shard. None stays open.
  auto accounted = [&] {
    const StatsSnapshot s = h.router->stats();
    return s.responses_by_origin[static_cast<int>(Origin::kDetach)] + s.dropped_requests;
  };
  EXPECT_TRUE(waitUntil([&] { return accounted() == 128u; })) << accounted();
  EXPECT_EQ(h.router->openGroups(), 0u);
  EXPECT_EQ(h.backend->stats().responses_sent, 0u);
  // A well-behaved VMM afterwards is served normally.
  h.handler->setDefer(false);
  VmmLoadOptions good;
  good.socket_path = h.backend->socketPath();
  good.groups = 500;
  const VmmLoadResult g = runVmmLoad(good);
  EXPECT_TRUE(g.ok) << g.error;
  EXPECT_EQ(g.success, 500u);
}

TEST(IopfThreaded, PeerToolRunsAgainstTheServer) {
  RouterHarness h("tool", /*threaded=*/true, 1);
  const std::string cmd = std::string(IOPF_VMM_PEER_BIN) + " --socket " + h.backend->socketPath() +
                          " --devices 3 --groups 3000 --group-size 2 --window 96 --invalid-every 3 > /dev/null";
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_EQ(h.router->stats().groups, 3000u);
}

}  // namespace
}  // namespace iopf::qemu_socket
