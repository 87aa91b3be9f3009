// Replay of capture files: a capture of a run, written with the capture Writer the logger plugin
// uses, replays into the same group sequence; original timing, incomplete groups and stop markers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <tuple>

#include "iopf/capture_file.h"
#include "manual_simulation.h"
#include "workload.h"

namespace iopf::sim {
namespace {

using testing::kMs;
using testing::ManualSimulation;

class ReplayTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/iopf-replay-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const std::string& f : files_) std::remove(f.c_str());
    rmdir(dir_.c_str());
  }
  std::string file(const std::string& name) {
    files_.push_back(dir_ + "/" + name);
    return files_.back();
  }
  std::string dir_;
  std::vector<std::string> files_;
};

constexpr const char* kDomains = R"(
  "domains": [{"name": "sva", "kind": "sva", "address_space": [{"base": "0x40000000", "size": "64MiB"}],
               "chain": [{"name": "fixed:INVALID"}]}],)";

using GroupKey = std::tuple<uint32_t, uint32_t, uint32_t, int64_t>;  // device, grpid, pasid, requests
using RequestKey = std::tuple<uint32_t, uint32_t, uint32_t, uint64_t, uint8_t, uint8_t>;

std::vector<GroupKey> groups(ManualSimulation& s) {
  std::vector<GroupKey> out;
  for (const Event& e : s.events(EventType::kGroupQueued))
    out.emplace_back(e.device, e.grpid, e.pasid, e.value);
  return out;
}
std::vector<RequestKey> requests(ManualSimulation& s) {
  std::vector<RequestKey> out;
  for (const Event& e : s.events(EventType::kRequest)) {
    out.emplace_back(e.device, e.grpid, e.pasid, e.addr, e.perm,
                     e.flags & (event_flag::kLast | event_flag::kPasidValid));
  }
  return out;
}

TEST_F(ReplayTest, ACaptureOfARunReplaysIntoTheSameGroupSequence) {
  // Run A: two devices, PASIDs, groups of 1..4 requests, a stop marker in the middle.
  ManualSimulation a(std::string("{") + kDomains + R"(
    "devices": [
      {"name": "gpu", "rid": "41:00.0", "pri_allocation": 16, "pasid_bits": 8, "needs_pasid": true, "pasids": [1, 2],
       "workload": {"kind": "uniform", "base": "0x40000000", "size": "64MiB", "write_ratio": 0.5,
                    "group_size": {"min": 1, "max": 4}, "max_groups": 60}},
      {"name": "nic", "rid": "42:00.1", "pri_allocation": 8, "pasid_bits": 8, "pasids": [3],
       "workload": {"kind": "sequential", "base": "0x40000000", "size": "1MiB",
                    "group_size": {"min": 2, "max": 3}, "max_groups": 40}}],
    "attachments": [{"device": "gpu", "pasid": 1, "domain": "sva"}, {"device": "gpu", "pasid": 2, "domain": "sva"},
                    {"device": "nic", "pasid": 3, "domain": "sva"}]
  })");
  ASSERT_TRUE(a.ok());
  a.steps(2);
  Injection stop{InjectionKind::kStopMarker};
  stop.pasid = 2;
  a.inject("gpu", stop);
  a.runUntilIdle();
  ASSERT_EQ(a.router().stats().groups, 100u);
  ASSERT_EQ(a.router().stats().stop_markers, 1u);

  // The capture, as the logger writes it: header with the devices, then every router event.
  const std::string cap = file("run.iopfcap");
  {
    v1::CaptureHeader h;
    h.set_producer("replay_test");
    for (const DeviceInfo& d : a.router().devices()) {
      v1::CaptureDevice* cd = h.add_devices();
      cd->set_device_id(d.id);
      cd->set_name(d.spec.name);
      cd->set_backend(d.backend_name);
      cd->set_backend_handle(d.spec.backend_handle);
      cd->set_rid(d.spec.rid);
      cd->set_pri_allocation(d.spec.pri_allocation);
      cd->set_pasid_bits(d.spec.pasid_bits);
      cd->set_needs_pasid(d.spec.needs_pasid);
      cd->set_stall_model(d.spec.stall_model);
    }
    auto w = capture::Writer::create(cap, h);
    ASSERT_TRUE(w.ok()) << w.status();
    for (const Event& e : a.events()) ASSERT_TRUE((*w)->append(capture::toRecord(e)).ok());
    ASSERT_TRUE((*w)->close().ok());
  }

  // Run B: the capture's devices replay it as fast as credits allow.
  const std::string scenario = std::string("{") + kDomains + R"(
    "devices": [{"from_capture": "run.iopfcap", "workload": {"timing": "asap"}}],
    "attachments": [{"device": "gpu", "pasid": 1, "domain": "sva"}, {"device": "gpu", "pasid": 2, "domain": "sva"},
                    {"device": "nic", "pasid": 3, "domain": "sva"}]
  })";
  ManualSimulation b(scenario, dir_ + "/replay.json");
  ASSERT_TRUE(b.ok());
  b.runUntilIdle();
  const auto devs = b.router().devices();
  ASSERT_EQ(devs.size(), 2u);
  EXPECT_EQ(devs[0].spec.name, "gpu");
  EXPECT_EQ(devs[0].spec.rid, 0x4100);
  EXPECT_TRUE(devs[0].spec.needs_pasid);
  EXPECT_EQ(devs[1].spec.pri_allocation, 8u);
  EXPECT_EQ(groups(b), groups(a));
  EXPECT_EQ(requests(b), requests(a));
  EXPECT_EQ(b.router().stats().stop_markers, 1u);
  EXPECT_TRUE(b.status("gpu").workload_done);
  EXPECT_EQ(b.backend().bogusReportCount(), 0u);
}

TEST_F(ReplayTest, OriginalTimingIncompleteGroupsAndStopMarkers) {
  const std::string cap = file("hand.iopfcap");
  {
    v1::CaptureHeader h;
    v1::CaptureDevice* cd = h.add_devices();
    cd->set_device_id(5);
    cd->set_name("acc");
    cd->set_rid(0x0300);
    cd->set_pri_allocation(32);
    cd->set_pasid_bits(8);
    auto w = capture::Writer::create(cap, h);
    ASSERT_TRUE(w.ok()) << w.status();
    const int64_t t0 = 7'000'000'000;
    auto req = [&](int64_t t, uint32_t grpid, uint64_t addr, uint32_t perm, bool last) {
      v1::CaptureRecord r;
      r.set_time_ns(t0 + t);
      r.set_type(static_cast<uint32_t>(EventType::kRequest));
      r.set_device_id(5);
      r.set_pasid(3);
      r.set_grpid(grpid);
      r.set_addr(addr);
      r.set_perm(perm);
      r.set_last(last);
      ASSERT_TRUE((*w)->append(r).ok());
    };
    req(0, 7, 0x40001000, perm::kRead, false);
    req(0, 9, 0x40002000, perm::kWrite, true);
    req(1 * kMs, 7, 0x40003000, perm::kRead, true);
    req(2 * kMs, 4, 0x40004000, perm::kRead, false);  // its LAST never came: not replayed
    req(3 * kMs, 0, 0, 0, true);                      // stop marker
    req(5 * kMs, 7, 0x40005000, perm::kRead, true);
    v1::CaptureRecord other;
    other.set_type(static_cast<uint32_t>(EventType::kResponded));
    other.set_device_id(5);
    ASSERT_TRUE((*w)->append(other).ok());
    ASSERT_TRUE((*w)->close().ok());
  }
  ManualSimulation s(std::string("{") + kDomains + R"(
    "devices": [{"from_capture": "hand.iopfcap"}],
    "attachments": [{"device": "acc", "pasid": 3, "domain": "sva"}]
  })",
                     dir_ + "/timed.json");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s.counter("acc", Counter::kReplayIncomplete), 1u);
  s.steps(2);
  EXPECT_EQ(s.events(EventType::kRequest).size(), 2u);
  s.advance(1 * kMs);
  s.steps(2);
  EXPECT_EQ(s.events(EventType::kRequest).size(), 3u);
  s.advance(2 * kMs);
  s.steps(2);
  EXPECT_EQ(s.events(EventType::kRequest).size(), 4u);
  EXPECT_EQ(s.router().stats().stop_markers, 1u);
  s.advance(1 * kMs);
  s.steps(2);
  EXPECT_EQ(s.events(EventType::kRequest).size(), 4u);
  s.advance(1 * kMs);
  s.steps(2);
  const auto g = groups(s);
  ASSERT_EQ(g.size(), 3u);
  const uint32_t dev = s.router().devices()[0].id;
  EXPECT_EQ(g[0], GroupKey(dev, 9, 3, 1));
  EXPECT_EQ(g[1], GroupKey(dev, 7, 3, 2));
  EXPECT_EQ(g[2], GroupKey(dev, 7, 3, 1));
  EXPECT_TRUE(s.status("acc").workload_done);
}

TEST_F(ReplayTest, RecordsOfDevicesMissingFromTheHeaderAreAnError) {
  const std::string cap = file("bad.iopfcap");
  {
    v1::CaptureHeader h;
    h.add_devices()->set_device_id(1);
    auto w = capture::Writer::create(cap, h);
    ASSERT_TRUE(w.ok());
    v1::CaptureRecord r;
    r.set_type(static_cast<uint32_t>(EventType::kRequest));
    r.set_device_id(2);
    r.set_last(true);
    r.set_perm(perm::kRead);
    ASSERT_TRUE((*w)->append(r).ok());
    ASSERT_TRUE((*w)->close().ok());
  }
  auto loaded = loadCapture(cap);
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(
      std::string(loaded.status().message()).find("request of device id 2 which the header does not list"),
      std::string::npos)
      << loaded.status();
}

}  // namespace
}  // namespace iopf::sim
