// The guest forwarder's vhost-iotlb transport against REAL QEMU (Debian qemu-system-x86 7.2, TCG):
// iopfd's plugin is the vhost-user back-end of a virtio-net device behind QEMU's emulated
// intel-iommu (device-iotlb=on); host groups become IOTLB MISSes that QEMU resolves by walking the
// guest's IOMMU page tables (vmm-protocols.md §8.2-8.3, with the QEMU 7.2 workarounds: TCG,
// vectors=0, romfile=, disable-legacy=on).
//   1. no guest (-S): QEMU refuses every MISS while the device is stopped -> INVALID, promptly;
//   2. a Linux guest (Debian kernel, busybox initramfs built by make_guest_initramfs.sh, cached
//      in the build tree): MISSes for the guest's mapped ring IOVAs -> SUCCESS, unmapped -> INVALID;
//      the guest removes virtio_net and its unmaps arrive as IOTLB INVALIDATEs the plugin applies.
// QEMU missing: the test fails when CI is set (scripts install qemu-system-x86), else it skips
// with the reason.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "forwarder_rig.h"
#include "iopf/plugin_host.h"
#include "plugin_test_util.h"
#include "qemu_launcher.h"

namespace iopf {
namespace {

using guest_forwarder::findQemu;
using testing::RouterRig;
using testing::TempDir;
using testing::waitFor;
using Qemu = guest_forwarder::QemuProcess;

#define REQUIRE_QEMU(qemu)                                                                        \
  do {                                                                                            \
    if ((qemu).empty()) {                                                                         \
      if (std::getenv("CI") != nullptr)                                                           \
        FAIL() << "qemu-system-x86_64 not found: install qemu-system-x86 (scripts/deps.txt)";     \
      GTEST_SKIP() << "qemu-system-x86_64 not found: install qemu-system-x86 (scripts/deps.txt)"; \
    }                                                                                             \
  } while (0)

// Router + plugin: host device "nic0" (handle 42, RID 03:00.0) given to vm "qemu0", whose
// transport is vhost-iotlb on `socket`.
struct Rig {
  Rig() : rig(/*threaded=*/true) {
    socket = dir.file("vhost.sock");
    const std::string config = absl::StrFormat(
        R"({"vms": [{"name": "qemu0", "transport": "vhost-iotlb", "vhost_socket": "%s"}],
            "devices": [{"backend_handle": 42, "vm": "qemu0", "viommu_id": 0, "virt_id": 24, "guest_rid": 24}]})",
        socket);
    host = testing::startForwarder(rig, config, [](const PluginReport& report) {
      std::fprintf(stderr, "[%s] %s\n", report.plugin.c_str(), report.message.c_str());  // the plugin's log
    });
  }
  ~Rig() {
    rig.router->shutdown();
    host->shutdown();
  }
  uint64_t counter(const std::string& name) const {
    return host->counter("guest_forwarder", "vhost.qemu0." + name).value_or(0);
  }
  uint64_t plain(const std::string& name) const { return host->counter("guest_forwarder", name).value_or(0); }
  // One group of single-page READ (or RW) requests; returns its response code.
  ResponseCode ask(std::vector<uint64_t> pages, uint8_t perm = perm::kRead) {
    std::vector<PageRequest> v;
    for (size_t i = 0; i < pages.size(); ++i)
      v.push_back(rig.request(next_grpid, pages[i], i + 1 == pages.size(), perm));
    next_grpid = (next_grpid + 1) & 0x1ff;
    const size_t before = rig.backend.responseCount();
    rig.backend.sink().deliver(v);
    EXPECT_EQ(rig.backend.waitForResponses(before + 1, std::chrono::seconds(30)), before + 1);
    return rig.backend.responses().back().code;
  }
  std::vector<std::string> qemuArgs(const std::string& qemu, const std::string& mem) const {
    return guest_forwarder::vhostIommuQemuArgs(qemu, socket, mem);
  }

  TempDir dir;
  std::string socket;
  RouterRig rig;
  std::unique_ptr<PluginHost> host;
  uint32_t next_grpid = 1;
};

TEST(GuestForwarderRealQemu, qemu_no_guest_device_stopped_answers_invalid_promptly) {
  const std::string qemu = findQemu();
  REQUIRE_QEMU(qemu);
  Rig r;
  // Before QEMU is there: no transport, INVALID at once.
  EXPECT_EQ(r.ask({0x100000}), ResponseCode::kInvalid);
  EXPECT_EQ(r.plain("vm_unavailable"), 1u);
  Qemu q;
  std::vector<std::string> args = r.qemuArgs(qemu, "256M");
  args.insert(args.end(), {"-S", "-serial", "none"});
  ASSERT_TRUE(q.start(args, r.dir.file("qemu.log")));
  ASSERT_TRUE(waitFor([&] { return r.counter("channel_ready") == 1; }, std::chrono::seconds(60)))
      << q.console();
  // The device is stopped (no driver): QEMU refuses each MISS ("Unexpected IOTLB message when
  // virtio device is stopped") and the forwarder answers INVALID.
  for (uint64_t page : {0x100000ull, 0x200000ull, 0x7ffff000ull})
    EXPECT_EQ(r.ask({page}), ResponseCode::kInvalid);
  EXPECT_EQ(r.ask({0x100000, 0x101000}, perm::kRead | perm::kWrite), ResponseCode::kInvalid);
  EXPECT_EQ(r.counter("misses"), 4u);  // a group stops at its first refused page
  EXPECT_EQ(r.counter("miss_refused"), 4u);
  EXPECT_EQ(r.counter("groups_invalid"), 4u);
  EXPECT_EQ(r.plain("answers_invalid"), 4u);
  q.stop();
  ASSERT_TRUE(waitFor([&] { return r.counter("channel_ready") == 0; }, std::chrono::seconds(20)));
  EXPECT_EQ(r.ask({0x100000}), ResponseCode::kInvalid);
  EXPECT_EQ(r.plain("vm_unavailable"), 2u);
}

TEST(GuestForwarderRealQemu, qemu_linux_guest_mapped_success_unmapped_invalid_and_invalidations) {
  const std::string qemu = findQemu();
  REQUIRE_QEMU(qemu);
  const std::string cache = IOPF_GUEST_CACHE;
  const int rc = std::system(absl::StrCat("sh ", IOPF_GUEST_SCRIPT, " ", cache).c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 77) {
    if (std::getenv("CI") != nullptr)
      FAIL() << "guest kernel/busybox missing (see stderr); scripts/deps.txt lists them";
    GTEST_SKIP() << "guest kernel/busybox missing: apt-get install linux-image-amd64 busybox-static";
  }
  ASSERT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << "make_guest_initramfs.sh failed: " << rc;
  Rig r;
  Qemu q;
  std::vector<std::string> args = r.qemuArgs(qemu, "512M");
  args.insert(args.end(), {"-kernel", cache + "/vmlinuz", "-initrd", cache + "/initrd.cpio.gz", "-append",
                           "console=ttyS0 intel_iommu=on iommu.strict=1 panic=-1 quiet", "-serial", "stdio"});
  ASSERT_TRUE(q.start(args, r.dir.file("console.log")));
  ASSERT_TRUE(waitFor([&] { return q.consoleHas("IOPF-GUEST-READY") || q.consoleHas("Kernel panic"); },
                      std::chrono::seconds(240)))
      << "the guest did not come up within 240 s; console:\n"
      << q.console();
  ASSERT_FALSE(q.consoleHas("IOPF-GUEST-ERROR")) << q.console();
  ASSERT_FALSE(q.consoleHas("Kernel panic")) << q.console();
  // The driver started the device: QEMU sent the rings' IOVAs (guest IOMMU addresses).
  ASSERT_TRUE(waitFor([&] { return r.counter("ring0_desc") != 0 && r.counter("ring1_desc") != 0; },
                      std::chrono::seconds(30)))
      << q.console();
  const uint64_t desc0 = r.counter("ring0_desc");
  const uint64_t desc1 = r.counter("ring1_desc");
  // Mapped in the guest's IOMMU page tables: SUCCESS (an UPDATE arrived for each page).
  EXPECT_EQ(r.ask({desc0}), ResponseCode::kSuccess);
  EXPECT_EQ(r.ask({desc1}), ResponseCode::kSuccess);
  EXPECT_EQ(r.ask({desc0}, perm::kRead | perm::kWrite), ResponseCode::kSuccess);
  EXPECT_EQ(r.ask({desc0, desc1}), ResponseCode::kSuccess);
  // Not mapped: INVALID (alone, and as one page of an otherwise mapped group).
  constexpr uint64_t kUnmapped =
      0x4000000000;  // 256 GiB: inside the 39-bit guest address width, never mapped
  EXPECT_EQ(r.ask({kUnmapped}), ResponseCode::kInvalid);
  EXPECT_EQ(r.ask({desc0, kUnmapped}), ResponseCode::kInvalid);
  EXPECT_EQ(r.plain("answers_success"), 4u);
  EXPECT_EQ(r.plain("answers_invalid"), 2u);
  EXPECT_GE(r.counter("updates"), 5u);
  EXPECT_EQ(r.counter("miss_no_update"), 0u);
  EXPECT_GT(r.counter("iotlb_entries"), 0u);
  // Guest traffic: the driver maps and unmaps buffers while the device runs; with
  // iommu.strict=1 and device-iotlb every unmap is a device-IOTLB invalidation that QEMU forwards
  // as IOTLB_MSG INVALIDATE, which the plugin applies to its IOTLB and acks.
  ASSERT_TRUE(q.command("up", std::chrono::seconds(120))) << q.console();
  ASSERT_TRUE(q.command("traffic", std::chrono::seconds(120))) << q.console();
  ASSERT_TRUE(waitFor([&] { return r.counter("invalidations") > 0; }, std::chrono::seconds(30)));
  EXPECT_EQ(r.counter("protocol_errors"), 0u);
  // QEMU kept going (every INVALIDATE was acked): the rings are still mapped.
  EXPECT_EQ(r.ask({desc0}), ResponseCode::kSuccess);
  EXPECT_EQ(r.counter("miss_no_update"), 0u);
  // The guest removes virtio_net: device reset, then the rings are freed. INVALID from now on.
  ASSERT_TRUE(q.command("unmap", std::chrono::seconds(120))) << q.console();
  EXPECT_EQ(r.ask({desc0}), ResponseCode::kInvalid);
  EXPECT_EQ(r.ask({desc1}), ResponseCode::kInvalid);
  std::fprintf(stderr, "misses %lu (ok %lu, refused %lu), updates %lu, invalidations %lu\n",
               (unsigned long)r.counter("misses"), (unsigned long)r.counter("miss_ok"),
               (unsigned long)r.counter("miss_refused"), (unsigned long)r.counter("updates"),
               (unsigned long)r.counter("invalidations"));
  q.type("poweroff");  // no answer: the guest powers off
  EXPECT_TRUE(q.waitExit(std::chrono::seconds(60))) << q.console();
  ASSERT_TRUE(waitFor([&] { return r.counter("channel_ready") == 0; }, std::chrono::seconds(20)));
}

}  // namespace
}  // namespace iopf
