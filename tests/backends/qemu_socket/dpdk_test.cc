// Real peer: Debian's DPDK dpdk-testpmd with the vhost PMD (iommu-support=1, no hugepages)
// connects to iopfd's vhost-iotlb front-end. Its real IOTLB MISS messages go through the router;
// the test asserts they were answered (UPDATE acked) and that the device made progress: it
// consumed a packet from the TX virtqueue (buffer address = an IOVA it had to translate) and
// testpmd's io forwarding put it into the RX virtqueue.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <atomic>
#include <fstream>
#include <sstream>

#include "gtest/gtest.h"
#include "test_router.h"
#include "vhost_iotlb_frontend.h"

extern char** environ;

namespace iopf::qemu_socket {
namespace {

using namespace testing;

std::string findTestpmd() {
  for (const char* p : {"/usr/bin/dpdk-testpmd", "/usr/local/bin/dpdk-testpmd"}) {
    if (::access(p, X_OK) == 0) return p;
  }
  return {};
}

std::string tail(const std::string& path, size_t bytes = 4000) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  return s.size() > bytes ? s.substr(s.size() - bytes) : s;
}

// Split virtqueue views over the front-end's memory (virtio 1.x layout).
struct VringView {
  uint8_t* desc;
  uint8_t* avail;
  uint8_t* used;
  void setDesc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags) {
    uint8_t* d = desc + 16 * i;
    putU64(d, addr);
    putU32(d + 8, len);
    putU16(d + 12, flags);
    putU16(d + 14, 0);
  }
  void publish(uint16_t slot, uint16_t head, uint16_t new_idx) {
    putU16(avail + 4 + 2 * slot, head);
    // The release store orders the ring entry before the index (no fence: TSan models none).
    __atomic_store_n(reinterpret_cast<uint16_t*>(avail + 2), new_idx, __ATOMIC_RELEASE);
  }
  uint16_t usedIdx() const { return __atomic_load_n(reinterpret_cast<const uint16_t*>(used + 2), __ATOMIC_ACQUIRE); }
};

VringView vring(const GuestMemory& m, uint32_t index) {
  uint8_t* base = m.at(m.iova_base + index * VhostIotlbFrontend::kRingStride);
  return VringView{base, base + 0x1000, base + 0x2000};
}

class Testpmd {
 public:
  ~Testpmd() { stop(); }
  bool start(const std::string& bin, const std::string& socket, const std::string& log) {
    const std::string vdev = "net_vhost0,iface=" + socket + ",client=1,iommu-support=1,queues=1";
    std::vector<std::string> args = {bin, "-l", "0,1", "--no-huge", "-m", "256", "--no-pci", "--no-shconf",
                                     "--log-level", "lib.vhost.config:debug", "--vdev", vdev, "--",
                                     "--forward-mode=io", "--auto-start", "--stats-period", "1", "--nb-cores=1",
                                     "--total-num-mbufs=2048"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const int rc = posix_spawn(&pid_, bin.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    return rc == 0;
  }
  bool running() {
    if (pid_ <= 0) return false;
    int status;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      exit_status_ = status;
      return false;
    }
    return true;
  }
  int exitStatus() const { return exit_status_; }
  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGINT);
    const bool gone = waitUntil([&] { return !running(); }, std::chrono::seconds(10));
    if (!gone && pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }

 private:
  pid_t pid_ = -1;
  int exit_status_ = 0;
};

TEST(DpdkRealPeer, dpdk_testpmd_iotlb_misses_answered_and_device_forwards) {
  const std::string bin = findTestpmd();
  if (bin.empty()) {
    GTEST_SKIP() << "dpdk-testpmd is not installed: Debian ships it in package 'dpdk-dev' "
                    "(scripts/deps.txt lists it; run scripts/lib.sh or apt-get install dpdk-dev)";
  }
  RouterHarness unused("dpdk_unused");  // keeps the helper's socket namespace distinct
  RouterOptions o;
  o.threaded = true;
  o.shards = 1;
  Router router(o);
  // The handler: a vIOMMU that maps every page of the front-end's memory.
  DomainSpec d;
  d.name = "viommu";
  const DomainId domain = *router.addDomain(d);
  auto handler = std::make_shared<TestHandler>();
  ASSERT_TRUE(router.setChain(domain, {handler}).ok());
  VhostIotlbFrontend::Options fo;
  fo.socket_path = tempSocketPath("dpdk");
  fo.on_device = [&](DeviceId device, uint32_t, bool added) {
    if (added) {
      EXPECT_TRUE(router.attach(device, std::nullopt, domain).ok());
    }
  };
  std::mutex log_mu;
  std::vector<std::string> log;
  fo.log = [&](std::string_view s) {
    std::lock_guard lk(log_mu);
    log.emplace_back(s);
  };
  VhostIotlbFrontend frontend(fo);
  ASSERT_TRUE(router.addBackend(frontend).ok());

  const std::string log_path = "/tmp/iopf_dpdk_testpmd_" + std::to_string(::getpid()) + ".log";
  Testpmd pmd;
  ASSERT_TRUE(pmd.start(bin, fo.socket_path, log_path)) << "posix_spawn " << bin;
  const bool connected = waitUntil([&] { return frontend.stats().connections_ready >= 1 || !pmd.running(); },
                                   std::chrono::seconds(60));
  if (!pmd.running()) {
    const std::string out = tail(log_path);
    if (out.find("Usage:") == std::string::npos && (out.find("Cannot init") != std::string::npos || out.find("EAL: FATAL") != std::string::npos)) {
      GTEST_SKIP() << "dpdk-testpmd cannot run on this machine (EAL start-up failed), exit status "
                   << pmd.exitStatus() << ":\n" << out;
    }
    FAIL() << "dpdk-testpmd exited (status " << pmd.exitStatus() << "):\n" << out;
  }
  ASSERT_TRUE(connected) << "no set-up within 60 s:\n" << tail(log_path);
  // Ring translation: DPDK asks for the descriptor, avail and used pages of its rings.
  ASSERT_TRUE(waitUntil([&] { return frontend.stats().updates_acked >= 3; }, std::chrono::seconds(30)))
      << "misses " << frontend.stats().misses << ", updates acked " << frontend.stats().updates_acked << "\n"
      << tail(log_path);

  const uint32_t conn = frontend.connections().at(0);
  auto mem = frontend.memory(conn);
  ASSERT_TRUE(mem);
  const uint64_t data = mem->iova_base + VhostIotlbFrontend::kDataOffset;
  // RX buffers (device-writable) for the forwarded packet.
  VringView rx = vring(*mem, 0);
  for (uint16_t i = 0; i < 8; ++i) {
    rx.setDesc(i, data + 0x1000 * (i + 1), 2048, /*VRING_DESC_F_WRITE*/ 2);
    rx.publish(i, i, static_cast<uint16_t>(i + 1));
  }
  // One packet on TX: virtio-net header (12 bytes, VERSION_1) + a 60-byte broadcast frame.
  uint8_t* pkt = mem->at(data);
  std::memset(pkt, 0, 12 + 60);
  std::memset(pkt + 12, 0xff, 6);
  const uint8_t src[6] = {0x02, 0, 0, 0, 0, 1};
  std::memcpy(pkt + 18, src, 6);
  pkt[24] = 0x08;
  VringView tx = vring(*mem, 1);
  tx.setDesc(0, data, 12 + 60, 0);
  const uint64_t misses_before = frontend.stats().misses;
  tx.publish(0, 0, 1);
  ASSERT_TRUE(frontend.kick(conn, 1).ok());
  ASSERT_TRUE(waitUntil([&] { return tx.usedIdx() >= 1; }, std::chrono::seconds(30)))
      << "the device did not consume the TX packet; misses " << frontend.stats().misses << "\n" << tail(log_path);
  // The first forwarded packet may be dropped while the RX buffer pages miss (vhost enqueue does
  // not wait for translations): send more packets, each after the previous one was consumed.
  bool forwarded = false;
  for (uint16_t k = 1; k < 8 && !forwarded; ++k) {
    forwarded = waitUntil([&] { return rx.usedIdx() >= 1; }, std::chrono::seconds(2));
    if (forwarded) break;
    tx.setDesc(k, data, 12 + 60, 0);
    tx.publish(k, k, static_cast<uint16_t>(k + 1));
    ASSERT_TRUE(frontend.kick(conn, 1).ok());
    ASSERT_TRUE(waitUntil([&] { return tx.usedIdx() >= k + 1; }, std::chrono::seconds(30)));
  }
  const VhostIotlbStats s = frontend.stats();
  pmd.stop();
  EXPECT_GT(s.misses, misses_before) << "the packet buffer page should have missed too";
  EXPECT_GE(s.updates_acked, 4u);
  EXPECT_EQ(s.misses_refused, 0u);
  EXPECT_EQ(s.setup_failures, 0u);
  EXPECT_TRUE(forwarded) << "testpmd did not forward the packet into the RX ring\n" << tail(log_path);
  const StatsSnapshot rs = router.stats();
  EXPECT_EQ(rs.responses_by_code[0], s.groups);  // every MISS group answered SUCCESS by the router
  std::printf("dpdk: %lu MISS (%lu coalesced), %lu groups, %lu UPDATEs acked; TX used idx %u, RX used idx %u\n",
              (unsigned long)s.misses, (unsigned long)s.misses_coalesced, (unsigned long)s.groups,
              (unsigned long)s.updates_acked, tx.usedIdx(), rx.usedIdx());
  router.shutdown();
}

}  // namespace
}  // namespace iopf::qemu_socket
