// An in-process iopfd (memory backend) on a temporary Unix socket, for the hardening tests.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "daemon.h"
#include "iopf/in_memory_backend.h"
#include "iopf/v1/router.grpc.pb.h"

namespace iopf::hardening {

inline std::string makeTempDir(const std::string& tag) {
  std::string tmpl = "/tmp/iopf-" + tag + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) return {};
  return tmpl;
}

inline std::unique_ptr<grpc::ClientContext> deadlineContext(
    std::chrono::seconds s = std::chrono::seconds(10)) {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + s);
  return c;
}

// Domains (nested: PASID faults route through the RID attachment): "hold" (groups stay open until their
// 10-minute deadline) and "fast" (answered SUCCESS). Devices: nic0 → hold (no PRI credit bound), gpu0 → fast.
inline std::string memoryConfig(const std::string& listen, const std::string& extra = "") {
  return "listen: [\"" + listen + "\"]\n" + R"(backends:
  - name: mem
    type: memory
    devices:
      - {name: nic0, handle: 7, rid: 0x0300, pasid_bits: 20}
      - {name: gpu0, handle: 9, rid: 0x0400, pasid_bits: 20}
domains:
  - name: hold
    kind: nested
    deadline_ms: 600000
    chain: [{name: hold}]
  - name: fast
    kind: nested
    chain: [{name: success}]
attachments:
  - {device: nic0, domain: hold}
  - {device: gpu0, domain: fast}
)" + extra;
}

class DaemonFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = makeTempDir("hardening");
    ASSERT_FALSE(dir_.empty());
    socket_ = dir_ + "/run/iopfd.sock";
  }
  void TearDown() override {
    stub_.reset();
    channel_.reset();
    daemon_.reset();
    std::filesystem::remove_all(dir_);
  }
  absl::Status startDaemon(const std::string& config) {
    const std::string path = dir_ + "/iopfd.yaml";
    std::ofstream(path) << config;
    daemon_ = std::make_unique<daemon::Daemon>();
    daemon::DaemonOptions o;
    o.config_path = path;
    return daemon_->start(o);
  }
  void start(const std::string& extra = "") {
    ASSERT_TRUE(startDaemon(memoryConfig("unix:" + socket_, extra)).ok());
    channel_ = grpc::CreateChannel("unix:" + socket_, grpc::experimental::LocalCredentials(UDS));
    stub_ = v1::Router::NewStub(channel_);
  }
  DeviceId deviceNamed(const std::string& name) {
    for (const DeviceInfo& d : daemon_->router().devices()) {
      if (d.spec.name == name) return d.id;
    }
    ADD_FAILURE() << "no device " << name;
    return 0;
  }
  // `count` single-request groups for `dev`, spread over PASIDs so no PRG index repeats.
  void deliver(DeviceId dev, uint32_t count, uint32_t first = 0) {
    std::vector<PageRequest> reqs;
    reqs.reserve(std::min<uint32_t>(count, 8192));
    for (uint32_t i = first; i < first + count; ++i) {
      PageRequest r;
      r.device = dev;
      r.grpid = i % 512;
      r.pasid = i / 512;
      r.addr = 0x1000ull * (i + 1);
      r.perm = perm::kRead;
      r.last = true;
      r.cookie = i;
      reqs.push_back(r);
      if (reqs.size() == 8192) {
        daemon_->testSink()->deliver(reqs);
        reqs.clear();
      }
    }
    if (!reqs.empty()) daemon_->testSink()->deliver(reqs);
  }
  uint64_t routerGroups() { return daemon_->router().stats().groups; }

  std::string dir_, socket_;
  std::unique_ptr<daemon::Daemon> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Router::Stub> stub_;
};

// Polls `cond` until true or the deadline.
template <typename F>
bool eventually(F cond, std::chrono::seconds timeout = std::chrono::seconds(60)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return true;
}

}  // namespace iopf::hardening
