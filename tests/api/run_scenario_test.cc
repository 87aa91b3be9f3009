// RunScenario and InjectFault against a real in-process iopfd whose backend is the simulated one:
// a scenario's devices join the running daemon and are answered while the devices that ran before
// go on; every refusal has its status code; bad InjectFault arguments are refused, not fatal.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "daemon.h"
#include "iopf/v1/router.grpc.pb.h"

namespace iopf {
namespace {

namespace fs = std::filesystem;

// Open loop at a modest rate: the daemon runs under ASan on a shared machine.
constexpr const char* kBase = R"({
  "name": "base",
  "seed": 1,
  "domains": [{"name": "host", "address_space": [{"base": "0x100000", "size": "1MiB"}],
               "chain": [{"name": "sim_resolver"}]}],
  "devices": [{"name": "nic", "pri_allocation": 8,
               "workload": {"base": "0x100000", "size": "1MiB", "rate_groups_per_s": 2000}}],
  "attachments": [{"device": "nic", "domain": "host"}]
})";

// "host" runs already (its chain here is ignored); "extra" is created.
constexpr const char* kMore = R"({
  "name": "more",
  "seed": 2,
  "domains": [
    {"name": "host", "chain": [{"name": "fixed:FAILURE"}]},
    {"name": "extra", "kind": "sva", "address_space": [{"base": "0x400000", "size": "64KiB"}],
     "chain": [{"name": "sim_resolver"}]}
  ],
  "devices": [
    {"name": "nic2", "workload": {"base": "0x100000", "size": "1MiB", "rate_groups_per_s": 5000, "max_groups": 40}},
    {"name": "acc", "count": 2, "pasid_bits": 4, "pasids": [1],
     "workload": {"base": "0x400000", "size": "64KiB", "rate_groups_per_s": 5000, "max_groups": 30}}
  ],
  "attachments": [{"device": "nic2", "domain": "host"}, {"device": "acc*", "pasid": 1, "domain": "extra"}]
})";

class RunScenarioTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/iopf-runscenario-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_ = dir_ + "/iopfd.sock";
  }
  void TearDown() override {
    stub_.reset();
    channel_.reset();
    daemon_.reset();
    fs::remove_all(dir_);
  }

  void write(const std::string& name, const std::string& text) { std::ofstream(dir_ + "/" + name) << text; }

  absl::Status start(const std::string& backend) {
    write("iopfd.yaml", "listen: [\"unix:" + socket_ + "\"]\nbackends:\n  - " + backend + "\n");
    daemon_ = std::make_unique<daemon::Daemon>();
    daemon::DaemonOptions o;
    o.config_path = dir_ + "/iopfd.yaml";
    absl::Status st = daemon_->start(o);
    if (st.ok()) {
      channel_ = grpc::CreateChannel("unix:" + socket_, grpc::experimental::LocalCredentials(UDS));
      stub_ = v1::Router::NewStub(channel_);
    }
    return st;
  }
  void startSim(uint32_t max_devices = 0) {
    write("base.json", kBase);
    std::string backend = "{name: sim, type: simulated, scenario: base.json";
    if (max_devices != 0) backend += ", options: {max_devices: " + std::to_string(max_devices) + "}";
    ASSERT_TRUE(start(backend + "}").ok());
  }

  std::unique_ptr<grpc::ClientContext> ctx() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return c;
  }
  grpc::Status run(const std::string& path, v1::RunScenarioResponse* out = nullptr) {
    v1::RunScenarioRequest req;
    req.set_path(path);
    v1::RunScenarioResponse r;
    return stub_->RunScenario(ctx().get(), req, out != nullptr ? out : &r);
  }
  grpc::Status inject(uint32_t device, const std::string& kind,
                      const std::map<std::string, std::string>& args) {
    v1::InjectFaultRequest req;
    req.set_device(device);
    req.set_kind(kind);
    for (const auto& [k, v] : args) (*req.mutable_args())[k] = v;
    v1::InjectFaultResponse r;
    return stub_->InjectFault(ctx().get(), req, &r);
  }
  // Responses per device name (GetStats).
  std::map<std::string, uint64_t> responses() {
    v1::Stats s;
    EXPECT_TRUE(stub_->GetStats(ctx().get(), {}, &s).ok());
    std::map<std::string, uint64_t> out;
    for (const auto& d : s.devices()) {
      uint64_t n = 0;
      for (uint64_t c : d.responses_by_code()) n += c;
      out[d.name()] = n;
    }
    return out;
  }
  // Waits (bounded) until `done(responses())` holds.
  template <typename Fn>
  bool waitResponses(Fn&& done) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (!done(responses())) {
      if (std::chrono::steady_clock::now() > until) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }
  uint32_t deviceId(const std::string& name) {
    v1::ListDevicesResponse r;
    EXPECT_TRUE(stub_->ListDevices(ctx().get(), {}, &r).ok());
    for (const auto& d : r.devices()) {
      if (d.name() == name) return d.id();
    }
    ADD_FAILURE() << "no device " << name;
    return 0;
  }

  std::string dir_, socket_;
  std::unique_ptr<daemon::Daemon> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Router::Stub> stub_;
};

TEST_F(RunScenarioTest, AddsDevicesToTheRunningDaemon) {
  startSim();
  ASSERT_TRUE(waitResponses([](auto r) { return r["nic"] > 10; }));
  write("more.json", kMore);
  v1::RunScenarioResponse r;
  const grpc::Status st = run("more.json", &r);  // relative: the config file's directory
  ASSERT_TRUE(st.ok()) << st.error_message();
  const uint64_t nic_at_add = responses()["nic"];
  ASSERT_EQ(r.devices_size(), 3);
  EXPECT_EQ(r.devices(0).name(), "nic2");
  EXPECT_EQ(r.devices(1).name(), "acc0");
  EXPECT_EQ(r.devices(2).name(), "acc1");
  EXPECT_EQ(r.devices(0).backend(), "simulated");
  ASSERT_EQ(r.created_domains_size(), 1);
  EXPECT_EQ(r.created_domains(0).name(), "extra");
  EXPECT_EQ(r.created_domains(0).kind(), "sva");
  EXPECT_TRUE(r.bounded());
  EXPECT_EQ(r.groups(), 40u + 30u + 30u);

  // ListDevices and ListDomains show them under the ids RunScenario reported.
  for (const auto& d : r.devices()) EXPECT_EQ(deviceId(d.name()), d.id()) << d.name();
  v1::ListDomainsResponse doms;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &doms).ok());
  bool extra = false;
  for (const auto& d : doms.domains())
    extra = extra || (d.name() == "extra" && d.id() == r.created_domains(0).id());
  EXPECT_TRUE(extra);
  v1::ListAttachmentsResponse atts;
  ASSERT_TRUE(stub_->ListAttachments(ctx().get(), {}, &atts).ok());
  int new_attachments = 0;
  for (const auto& a : atts.attachments()) {
    for (const auto& d : r.devices()) new_attachments += a.device() == d.id() ? 1 : 0;
  }
  EXPECT_EQ(new_attachments, 3);

  // Their groups are answered, and the device that ran before keeps being answered.
  ASSERT_TRUE(waitResponses([&](auto n) {
    return n["nic2"] >= 40 && n["acc0"] >= 30 && n["acc1"] >= 30 && n["nic"] > nic_at_add + 20;
  }));
  v1::Stats s;
  ASSERT_TRUE(stub_->GetStats(ctx().get(), {}, &s).ok());
  for (const auto& d : s.devices()) {
    if (d.name() == "nic2") {
      // "host" kept its running chain (sim_resolver: SUCCESS), not the scenario's fixed:FAILURE.
      ASSERT_GE(d.responses_by_code_size(), 3);
      EXPECT_GT(d.responses_by_code(0), 0u);
      EXPECT_EQ(d.responses_by_code(2), 0u);
    }
  }
}

TEST_F(RunScenarioTest, EveryRefusalHasItsCode) {
  startSim(/*max_devices=*/4);
  // A file that does not exist.
  grpc::Status st = run("nope.json");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("nope.json"), std::string::npos) << st.error_message();
  st = run("");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  st = run(dir_);  // a directory: not a regular file
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("not a regular file"), std::string::npos) << st.error_message();
  // A bad file: the loader's file:line: field message.
  std::string bad = kMore;
  bad.replace(bad.find("\"pasid_bits\""), 12, "\"pasid_bitz\"");
  write("bad.json", bad);
  st = run("bad.json");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("bad.json:11: devices[1].pasid_bitz: unknown field"), std::string::npos)
      << st.error_message();
  // A running domain declared with another kind.
  std::string kind = kMore;
  kind.replace(kind.find("{\"name\": \"host\","), 16, "{\"name\": \"host\", \"kind\": \"nested\",");
  write("kind.json", kind);
  st = run(dir_ + "/kind.json");  // absolute
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(st.error_message().find("'host'"), std::string::npos) << st.error_message();
  // A device name the daemon runs already.
  std::string dup = kMore;
  dup.replace(dup.find("\"nic2\""), 6, "\"nic\"");
  dup.replace(dup.find("{\"device\": \"nic2\""), 17, "{\"device\": \"nic\"");
  write("dup.json", dup);
  st = run("dup.json");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_NE(st.error_message().find("'nic'"), std::string::npos) << st.error_message();
  // None of it changed anything.
  v1::ListDevicesResponse devs;
  ASSERT_TRUE(stub_->ListDevices(ctx().get(), {}, &devs).ok());
  EXPECT_EQ(devs.devices_size(), 1);
  // 1 + 3 devices fit the limit of 4; one more does not.
  write("more.json", kMore);
  ASSERT_TRUE(run("more.json").ok());
  std::string one = R"({"name": "one", "domains": [{"name": "host"}],
    "devices": [{"name": "late", "workload": {"base": "0x100000", "size": "1MiB", "max_groups": 1}}],
    "attachments": [{"device": "late", "domain": "host"}]})";
  write("one.json", one);
  st = run("one.json");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("limit of 4"), std::string::npos) << st.error_message();
  // The same scenario twice: its names are taken now.
  EXPECT_EQ(run("more.json").error_code(), grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(stub_->ListDevices(ctx().get(), {}, &devs).ok());
  EXPECT_EQ(devs.devices_size(), 4);
}

TEST_F(RunScenarioTest, UnimplementedWithoutASimulatedBackend) {
  ASSERT_TRUE(start("{name: mem, type: memory, devices: [{name: d0, handle: 1}]}").ok());
  write("more.json", kMore);
  EXPECT_EQ(run("more.json").error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

TEST_F(RunScenarioTest, BadSimulatedBackendOptionsAreRefusedAtStart) {
  write("base.json", kBase);
  absl::Status st = start("{name: sim, type: simulated, scenario: base.json, options: {max_devicez: 3}}");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find("options.max_devicez"), std::string::npos) << st;
  daemon_.reset();
  st = start("{name: sim, type: simulated, scenario: base.json, options: {max_devices: 0}}");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

TEST_F(RunScenarioTest, InjectFaultRefusesBadArgumentsAndTheDaemonLives) {
  startSim();
  const uint32_t nic = deviceId("nic");
  struct Case {
    const char* arg;
    const char* value;
  };
  for (const Case& c :
       {Case{"count", "abc"}, Case{"count", "99999999999"}, Case{"count", "-1"}, Case{"count", ""},
        Case{"pasid", "1048576"}, Case{"pasid", "0x10"}, Case{"colour", "1"}}) {
    const grpc::Status st = inject(nic, c.arg[0] == 'p' ? "stop_marker" : "burst", {{c.arg, c.value}});
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.arg << "=" << c.value;
    EXPECT_NE(st.error_message().find(std::string("'") + c.arg + "'"), std::string::npos)
        << st.error_message();
  }
  // Still serving, and good arguments work.
  v1::Info info;
  ASSERT_TRUE(stub_->GetInfo(ctx().get(), {}, &info).ok());
  EXPECT_TRUE(inject(nic, "burst", {{"count", "5"}}).ok());
  EXPECT_EQ(inject(nic, "nonsense", {}).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(inject(9999, "burst", {}).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace iopf
