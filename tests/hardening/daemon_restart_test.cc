// iopfd killed with SIGKILL and started again on the same socket path (issue 11, "Daemon death"): the
// stale socket file is replaced and the new daemon reports SERVING. The open groups of the killed
// daemon died with it (memory backend: nobody outside held them; for the simulated backend the
// device model died too; iommufd and socket peers: see docs/security.md).
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "daemon_fixture.h"
#include "iopf/api/health_client.h"

extern char** environ;

namespace iopf::hardening {
namespace {

namespace fs = std::filesystem;

pid_t spawnIopfd(const std::string& config, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  std::string bin = IOPFD_BIN, flag = "--config", cfg = config;
  char* argv[] = {bin.data(), flag.data(), cfg.data(), nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, bin.c_str(), &fa, nullptr, argv, environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

bool serving(const std::string& socket) {
  auto channel = grpc::CreateChannel("unix:" + socket, grpc::experimental::LocalCredentials(UDS));
  auto h = api::checkHealth(channel, "iopf.v1.Router", std::chrono::milliseconds(500));
  return h.ok() && *h == api::HealthStatus::kServing;
}

TEST(DaemonRestart, SigkillThenRestartOnTheSameSocketServes) {
  const std::string dir = makeTempDir("restart");
  const std::string socket = dir + "/run/iopfd.sock";
  const std::string config = dir + "/iopfd.yaml";
  std::ofstream(config) << memoryConfig("unix:" + socket);
  const std::string log = dir + "/iopfd.log";

  const pid_t first = spawnIopfd(config, log);
  ASSERT_GT(first, 0);
  ASSERT_TRUE(eventually([&] { return serving(socket); })) << "first iopfd never served (" << log << ")";
  ASSERT_EQ(::kill(first, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(first, &status, 0), first);
  struct stat st {};
  ASSERT_EQ(::lstat(socket.c_str(), &st), 0) << "SIGKILL leaves the socket file behind";
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_FALSE(serving(socket));

  const pid_t second = spawnIopfd(config, log);
  ASSERT_GT(second, 0);
  EXPECT_TRUE(eventually([&] { return serving(socket); }))
      << "the restarted iopfd never served (" << log << ")";
  auto channel = grpc::CreateChannel("unix:" + socket, grpc::experimental::LocalCredentials(UDS));
  auto stub = v1::Router::NewStub(channel);
  v1::Info info;
  EXPECT_TRUE(stub->GetInfo(deadlineContext().get(), {}, &info).ok());
  EXPECT_EQ(info.config_generation(), 1u);
  ::kill(second, SIGTERM);
  ASSERT_EQ(::waitpid(second, &status, 0), second);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
  EXPECT_FALSE(fs::exists(socket)) << "a drained iopfd removes its socket";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace iopf::hardening
