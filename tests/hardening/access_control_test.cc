// Who may talk to iopfd (issue 11, docs/security.md): the Unix socket's mode and directory, TCP only
// with TLS, the bearer token for mutating calls over TCP, plugin directories that anyone could write.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "daemon_fixture.h"

namespace iopf::hardening {
namespace {

namespace fs = std::filesystem;

mode_t modeOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::lstat(path.c_str(), &st), 0) << path;
  return st.st_mode & 07777;
}

using AccessControl = DaemonFixture;

TEST_F(AccessControl, UnixSocketIs0660InA0750Directory) {
  start();
  EXPECT_EQ(modeOf(socket_), 0660u);
  EXPECT_EQ(modeOf(dir_ + "/run"), 0750u);
  v1::Info info;
  EXPECT_TRUE(stub_->GetInfo(deadlineContext().get(), {}, &info).ok());
}

TEST_F(AccessControl, SocketModeFromTheConfigIsApplied) {
  start("socket_mode: 0600\n");
  EXPECT_EQ(modeOf(socket_), 0600u);
}

TEST_F(AccessControl, WorldWritableSocketDirectoryIsRefused) {
  fs::create_directories(dir_ + "/run");
  ::chmod((dir_ + "/run").c_str(), 0777);
  const absl::Status st = startDaemon(memoryConfig("unix:" + socket_));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("world-writable"), std::string::npos) << st.message();
  EXPECT_FALSE(fs::exists(socket_));
}

TEST_F(AccessControl, WorldAccessibleSocketModeIsRefused) {
  const absl::Status st = startDaemon(memoryConfig("unix:" + socket_, "socket_mode: 0666\n"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("socket_mode"), std::string::npos) << st.message();
}

TEST_F(AccessControl, NonSocketFileAtThePathIsRefusedStaleSocketReplaced) {
  fs::create_directories(dir_ + "/run");
  std::ofstream(socket_) << "not a socket";
  absl::Status st = startDaemon(memoryConfig("unix:" + socket_));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("not a socket"), std::string::npos) << st.message();
  fs::remove(socket_);
  // A socket file nobody listens on (a daemon that died): replaced.
  const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket_.c_str());
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ::close(s);
  daemon_.reset();
  start();
  v1::Info info;
  EXPECT_TRUE(stub_->GetInfo(deadlineContext().get(), {}, &info).ok());
}

TEST_F(AccessControl, TcpWithoutTlsDoesNotStart) {
  // In the config file: refused when the config is read, naming the field.
  absl::Status st = startDaemon(memoryConfig("127.0.0.1:0"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("listen[0]"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("requires tls.cert_file and tls.key_file"), std::string::npos) << st.message();
  // From the command line (--listen): refused by the server.
  daemon_ = std::make_unique<daemon::Daemon>();
  const std::string path = dir_ + "/iopfd.yaml";
  std::ofstream(path) << memoryConfig("unix:" + socket_);
  daemon::DaemonOptions o;
  o.config_path = path;
  o.listen = {"127.0.0.1:0"};
  st = daemon_->start(o);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(st.message().find("requires tls.cert_file and tls.key_file"), std::string::npos) << st.message();
}

TEST_F(AccessControl, WorldWritablePluginDirectoryIsRefused) {
  const std::string plugins = dir_ + "/plugins";
  fs::create_directories(plugins);
  ::chmod(plugins.c_str(), 0777);
  const absl::Status st = startDaemon(
      memoryConfig("unix:" + socket_, "plugin_dirs: [\"" + plugins + "\"]\nplugins: [{id: logger}]\n"));
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("plugin_dirs[0]"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("world-writable"), std::string::npos) << st.message();
}

// --- TCP + TLS + bearer token ------------------------------------------------------------------

uint16_t freeTcpPort() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(s);
    return 0;
  }
  const uint16_t port = ntohs(a.sin_port);
  ::close(s);
  return port;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TlsAccess : public DaemonFixture {
 protected:
  void SetUp() override {
    DaemonFixture::SetUp();
    // A self-signed certificate for "localhost" (the openssl CLI, scripts/deps.txt).
    const std::string cmd =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
        "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
        dir_ + "/key.pem -out " + dir_ + "/cert.pem >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << "openssl could not make a certificate";
    std::ofstream(dir_ + "/token") << "s3cret-token\n";
    port_ = freeTcpPort();
    ASSERT_NE(port_, 0);
    const std::string tcp = "127.0.0.1:" + std::to_string(port_);
    const std::string extra = "tls: {cert_file: \"" + dir_ + "/cert.pem\", key_file: \"" + dir_ +
                              "/key.pem\"}\ntoken_file: \"" + dir_ + "/token\"\n";
    std::string cfg = memoryConfig("unix:" + socket_, extra);
    cfg.replace(cfg.find("listen: [\"unix:"), 9, "listen: [\"" + tcp + "\", ");
    ASSERT_TRUE(startDaemon(cfg).ok());
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = slurp(dir_ + "/cert.pem");
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    tcp_ = grpc::CreateCustomChannel(tcp, grpc::SslCredentials(ssl), args);
    tcp_stub_ = v1::Router::NewStub(tcp_);
    channel_ = grpc::CreateChannel("unix:" + socket_, grpc::experimental::LocalCredentials(UDS));
    stub_ = v1::Router::NewStub(channel_);
  }
  void TearDown() override {
    tcp_stub_.reset();
    tcp_.reset();
    DaemonFixture::TearDown();
  }
  std::unique_ptr<grpc::ClientContext> tokenContext(const std::string& token) {
    auto c = deadlineContext();
    if (!token.empty()) c->AddMetadata("authorization", token);
    return c;
  }
  uint16_t port_ = 0;
  std::shared_ptr<grpc::Channel> tcp_;
  std::unique_ptr<v1::Router::Stub> tcp_stub_;
};

TEST_F(TlsAccess, MutatingCallsNeedTheBearerToken) {
  deliver(deviceNamed("nic0"), 3);
  ASSERT_TRUE(eventually([&] { return daemon_->router().stats().open_groups == 3; }));
  v1::ListOutstandingResponse open;
  ASSERT_TRUE(tcp_stub_->ListOutstanding(tokenContext("").get(), {}, &open).ok())
      << "read-only: no token needed";
  ASSERT_EQ(open.groups_size(), 3);
  v1::RespondRequest req;
  req.set_group(open.groups(0).id());
  req.set_code(v1::RESPONSE_CODE_SUCCESS);
  v1::RespondResponse resp;

  grpc::Status st = tcp_stub_->Respond(tokenContext("").get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  st = tcp_stub_->Respond(tokenContext("Bearer wrong-token").get(), req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  st = tcp_stub_->Respond(tokenContext("s3cret-token").get(), req, &resp);  // no "Bearer "
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(daemon_->router().stats().open_groups, 3u) << "a refused call changed something";
  st = tcp_stub_->Respond(tokenContext("Bearer s3cret-token").get(), req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(daemon_->router().stats().open_groups, 2u);

  // Every mutating call is guarded the same way.
  v1::DetachRequest detach;
  detach.set_device(deviceNamed("gpu0"));
  v1::DetachResponse dresp;
  EXPECT_EQ(tcp_stub_->Detach(tokenContext("").get(), detach, &dresp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::ReloadConfigResponse rresp;
  EXPECT_EQ(tcp_stub_->ReloadConfig(tokenContext("Bearer x").get(), {}, &rresp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  v1::InjectFaultResponse iresp;
  EXPECT_EQ(tcp_stub_->InjectFault(tokenContext("").get(), {}, &iresp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // Read-only calls need no token.
  v1::Info info;
  EXPECT_TRUE(tcp_stub_->GetInfo(tokenContext("").get(), {}, &info).ok());
  v1::Stats stats;
  EXPECT_TRUE(tcp_stub_->GetStats(tokenContext("").get(), {}, &stats).ok());
  // Over the Unix socket the file mode is the access control: no token.
  req.set_group(open.groups(1).id());
  EXPECT_TRUE(stub_->Respond(deadlineContext().get(), req, &resp).ok());
}

TEST_F(TlsAccess, PlaintextClientCannotTalkToTheTlsPort) {
  auto plain = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
  auto stub = v1::Router::NewStub(plain);
  v1::Info info;
  auto ctx = deadlineContext(std::chrono::seconds(3));
  EXPECT_EQ(stub->GetInfo(ctx.get(), {}, &info).error_code(), grpc::StatusCode::UNAVAILABLE);
}

}  // namespace
}  // namespace iopf::hardening
