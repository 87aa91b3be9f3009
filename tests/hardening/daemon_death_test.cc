// Daemon death, QEMU socket backend (issue 11, docs/security.md "Daemon death"): when the process
// that serves the socket is killed with SIGKILL, the kernel closes every connection, so a VMM sees
// end-of-stream at once and knows its open groups will never be answered (it answers them itself, as
// a VMM does for a vIOMMU whose back-end is gone). A new server on the same path replaces the stale
// socket file and serves again.
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gtest/gtest.h"
#include "iopf/handler.h"
#include "iopf/router.h"
#include "iopf_protocol.h"
#include "qemu_socket_backend.h"
#include "raw_peer.h"
#include "test_router.h"

namespace iopf::qemu_socket {
namespace {

using namespace testing;

class Hold final : public Handler {
 public:
  std::string_view name() const override { return "hold"; }
  Verdict handle(const GroupView&, const CompletionHandle&) override { return Verdict::defer(); }
};

// The child: a threaded router whose only domain holds every group, behind a QemuSocketBackend.
// Tells the parent on `ready` once it listens, then waits to be killed.
[[noreturn]] void serveUntilKilled(const std::string& path, int ready) {
  RouterOptions ro;
  ro.shards = 1;
  Router router(ro);
  DomainSpec d;
  d.name = "vm";
  d.kind = DomainKind::kNested;
  const DomainId domain = *router.addDomain(d);
  (void)router.setChain(domain, {std::make_shared<Hold>()});
  QemuSocketBackend::Options bo;
  bo.socket_path = path;
  bo.on_device = [&](const VmmDeviceEvent& e) {
    if (e.added) (void)router.attach(e.device, std::nullopt, domain);
  };
  QemuSocketBackend backend(bo);
  const char ok = router.addBackend(backend).ok() ? 1 : 0;
  (void)!::write(ready, &ok, 1);
  for (;;) ::pause();
}

TEST(DaemonDeath, SocketPeerSeesTheDisconnectAndARestartServes) {
  const std::string path = tempSocketPath("death");
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(p[0]);
    serveUntilKilled(path, p[1]);
  }
  ::close(p[1]);
  char ok = 0;
  ASSERT_EQ(::read(p[0], &ok, 1), 1);
  ::close(p[0]);
  ASSERT_EQ(ok, 1) << "the child's backend did not start";

  RawPeer vmm(path);
  vmm.hello(p2::kFeatureBatch);
  ASSERT_EQ(vmm.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  vmm.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 1, true), record(1, 2, 2, true)}));
  // A round trip after the records: the server has read them (groups open, held by the handler).
  EXPECT_EQ(vmm.request(p2::deviceDelFrame(99), p2::kDeviceDel), uint64_t(p2::Status::kNotFound));
  EXPECT_TRUE(vmm.responses(0).empty());

  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_TRUE(vmm.waitEof(std::chrono::seconds(5))) << "the VMM must see the daemon's death as end-of-stream";
  EXPECT_TRUE(vmm.responses(0).empty()) << "nobody answered the open groups: the VMM must";

  // The socket file of the dead server is still there; a new server replaces it and serves.
  struct stat st {};
  ASSERT_EQ(::lstat(path.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  RouterHarness restarted("death");  // same tag → same path
  ASSERT_EQ(restarted.backend->socketPath(), path);
  RawPeer again(path);
  EXPECT_EQ(again.hello(0), 0u);
  ASSERT_EQ(again.request(p2::deviceAddFrame(device(1)), p2::kDeviceAdd), 0u);
  again.send(p2::pageReqFrame(std::vector<PgfaultRecord>{record(1, 1, 7, true)}));
  restarted.pump(1);
  EXPECT_EQ(again.responses(1).size(), 1u);
}

}  // namespace
}  // namespace iopf::qemu_socket
