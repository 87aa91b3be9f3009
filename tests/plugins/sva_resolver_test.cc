// The sva_resolver plugin, loaded by path: the kernel SVA handler's semantics (every INVALID cause,
// the sticky rule), config validation, the `process` provider against real forked children (RW,
// RO, PROT_NONE, file-backed and stack mappings; a mapping added later; the child exiting), the
// `simulated` provider end to end through the simulated backend, coalescing and fault-around.
// Everything runs the router in manual mode with a ManualClock: nothing sleeps.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <set>

#include "iopf/in_memory_backend.h"
#include "iopf/plugin_abi.h"
#include "iopf/plugin_host.h"
#include "iopf/router.h"
#include "plugin_test_util.h"
#include "proc_maps.h"
#include "scenario.h"
#include "simulation.h"

namespace iopf {
namespace {

using plugins::sva_resolver::findMapping;
using plugins::sva_resolver::parseProcMaps;
using testing::Reports;

const std::string kResolver = IOPF_PLUGIN_SVA_RESOLVER;
constexpr uint64_t kPage = 4096;

// --- a router with one PASID-capable device on an in-memory backend ---------------------------

class SvaRig {
 public:
  explicit SvaRig(bool can_map = true) : backend_(caps(can_map)) {
    RouterOptions o;
    o.shards = 1;
    o.threaded = false;
    o.clock = &clock;
    router = std::make_unique<Router>(o);
    if (!router->addBackend(backend_).ok()) std::abort();
    device = addDevice(backend_, "accel0");
    DomainSpec d;
    d.name = "proc";
    d.kind = DomainKind::kSva;
    d.deadline_ns = 10'000'000'000;
    domain = *router->addDomain(d);
    attachAll(device);
  }
  ~SvaRig() { shutdown(); }

  static Backend::Capabilities caps(bool can_map) {
    Backend::Capabilities c;
    c.can_map = can_map;
    return c;
  }
  DeviceId addDevice(InMemoryBackend& b, const std::string& name) {
    DeviceSpec spec;
    spec.name = name;
    spec.backend_handle = 7;
    spec.rid = 0x0300;
    spec.pri_allocation = 4096;
    spec.pasid_bits = 20;
    spec.needs_pasid = true;
    return *b.sink().addDevice(spec);
  }
  void attachAll(DeviceId dev) {
    for (uint32_t pasid : {1u, 2u}) {
      if (!router->attach(dev, pasid, domain).ok()) std::abort();
    }
    if (!router->attach(dev, std::nullopt, domain).ok()) std::abort();  // requests without PASID
  }

  // Loads the plugin and makes it the domain's whole chain. Returns the createHandler status.
  absl::Status useResolver(const std::string& json) {
    PluginHostOptions o;
    o.call_budget_ns = testing::kGenerousBudgetNs;
    o.report = reports.sink();
    host = std::make_unique<PluginHost>(router.get(), o);
    if (absl::Status st = host->loadFile(kResolver); !st.ok()) return st;
    auto h = host->createHandler("sva_resolver", domain, {.json = json, .source = "test.json"});
    if (!h.ok()) return h.status();
    if (absl::Status st = host->start(); !st.ok()) return st;
    return router->setChain(domain, {*h});
  }

  struct Req {
    uint64_t addr;
    uint8_t perm = perm::kRead;
    std::optional<uint32_t> pasid = 1;
  };
  // One group of `reqs` (LAST on the last one), routed; returns its response code.
  ResponseCode group(const std::vector<Req>& reqs, InMemoryBackend* via = nullptr, DeviceId dev = 0) {
    InMemoryBackend& b = via != nullptr ? *via : backend_;
    std::vector<PageRequest> v;
    for (size_t i = 0; i < reqs.size(); ++i) {
      PageRequest r;
      r.device = dev != 0 ? dev : device;
      r.grpid = next_grpid_;
      r.addr = reqs[i].addr;
      r.perm = reqs[i].perm;
      r.pasid = reqs[i].pasid;
      r.last = i + 1 == reqs.size();
      v.push_back(r);
    }
    next_grpid_ = (next_grpid_ + 1) % 512;
    const size_t before = b.responseCount();
    b.sink().deliver(v);
    router->runUntilIdle();
    // A resolver with a process binding answers from its worker thread: the completion reaches
    // the response once the (manual-mode) router runs again.
    testing::waitFor(
        [&] {
          router->runUntilIdle();
          return b.responseCount() > before;
        },
        std::chrono::seconds(20));
    const auto all = b.responses();
    if (all.size() != before + 1) {
      ADD_FAILURE() << "expected one response, got " << all.size() - before;
      return ResponseCode::kFailure;
    }
    EXPECT_EQ(all.back().origin, Origin::kHandler);
    return all.back().code;
  }
  ResponseCode one(uint64_t addr, uint8_t p = perm::kRead, std::optional<uint32_t> pasid = 1) {
    return group({{addr, p, pasid}});
  }

  uint64_t counter(const std::string& name) const {
    return host->counter("sva_resolver", name).value_or(~0ull);
  }
  std::vector<MapRequest> maps() const { return backend_.maps(); }
  InMemoryBackend& backend() { return backend_; }

  void shutdown() {
    if (router) router->shutdown();
    if (host) host->shutdown();
  }

  ManualClock clock;
  Reports reports;
  std::unique_ptr<Router> router;
  std::unique_ptr<PluginHost> host;
  DeviceId device = 0;
  DomainId domain = 0;

 private:
  InMemoryBackend backend_;
  uint32_t next_grpid_ = 1;
};

std::string simulatedConfig(const std::string& extra = "") {
  return R"({"bindings": [{"pasid": 1, "simulated": {"regions": [
              {"base": "0x10000", "size": "64KiB", "perm": "rw"},
              {"base": "0x100000", "size": "0x4000", "perm": "r"},
              {"base": "0x200000", "size": "4096", "perm": "rx"}]}}])" +
         extra + "}";
}

// --- /proc/PID/maps parsing ----------------------------------------------------------------------

TEST(SvaResolverProcMaps, ParsesEveryLineShapeAndSkipsGarbage) {
  const std::string text =
      "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/a program with spaces\n"
      "00651000-00652000 rw-p 00051000 08:02 173521      /tmp/gone (deleted)\n"
      "7ffd6e4f0000-7ffd6e511000 rw-p 00000000 00:00 0                          [stack]\n"
      "7f0000000000-7f0000001000 ---p 00000000 00:00 0 \n"
      "not a line at all\n"
      "7f0000002000-7f0000001000 rw-p 00000000 00:00 0\n"  // end before start
      "7f0000003000-7f0000004000 rwzp 00000000 00:00 0\n"  // bad perms
      "\n"
      "01000000-01001000 rw-s 00000000 00:05 42 /dev/zero\n"  // out of order, shared
      "ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]";  // no newline
  const auto parsed = parseProcMaps(text);
  EXPECT_EQ(parsed.bad_lines, 3u);
  ASSERT_EQ(parsed.mappings.size(), 6u);
  EXPECT_EQ(parsed.mappings[0].start, 0x400000u);
  EXPECT_EQ(parsed.mappings[0].perm, IOPF_PERM_READ | IOPF_PERM_EXEC);
  EXPECT_EQ(parsed.mappings[2].start, 0x1000000u);  // sorted
  EXPECT_TRUE(parsed.mappings[2].shared);
  EXPECT_EQ(parsed.mappings[3].perm, 0);                                 // ---p
  EXPECT_EQ(parsed.mappings[4].perm, IOPF_PERM_READ | IOPF_PERM_WRITE);  // [stack]
  EXPECT_EQ(parsed.mappings[5].start, 0xffffffffff600000u);
  EXPECT_EQ(parsed.mappings[5].perm, IOPF_PERM_EXEC);
  EXPECT_EQ(findMapping(parsed.mappings, 0x451fff), &parsed.mappings[0]);
  EXPECT_EQ(findMapping(parsed.mappings, 0x452000), nullptr);
  EXPECT_EQ(findMapping(parsed.mappings, 0x3fffff), nullptr);
  EXPECT_EQ(findMapping(parsed.mappings, 0x7ffd6e510fff)->start, 0x7ffd6e4f0000u);
  EXPECT_EQ(parseProcMaps("").mappings.size(), 0u);
  EXPECT_EQ(parseProcMaps("12345678901234567-1 rw-p 0 0:0 0\n").bad_lines, 1u);  // > 64 bits
}

// --- config validation -------------------------------------------------------------------------

TEST(SvaResolverPlugin, ConfigErrorsNameTheFieldAndTheFile) {
  SvaRig rig;
  const std::string prefix = "plugin 'sva_resolver', domain 1 'proc': config 'test.json': ";
  auto refused = [&](const std::string& json) {
    SvaRig fresh;
    const absl::Status st = fresh.useResolver(json);
    EXPECT_FALSE(st.ok()) << json;
    return std::string(st.message());
  };
  EXPECT_EQ(refused("{}"), prefix + "field 'bindings' needs at least one binding");
  EXPECT_EQ(refused(R"({"bindings": [{"pasid": 1}]})"),
            prefix + "field 'bindings[0]': set one provider, 'process' or 'simulated'");
  EXPECT_EQ(refused(R"({"bindings": [{"pasid": 1, "simulated": {"regions": [{"base": "0", "size": "4K"}]}},
                                     {"pasid": 1, "simulated": {"regions": [{"base": "0", "size": "4K"}]}}]})"),
            prefix + "field 'bindings[1].pasid': PASID 1 is already bound by bindings[0]");
  EXPECT_EQ(refused(R"({"bindings": [{"pasid": 1048576, "process": {"pid": 1}}]})"),
            prefix + "field 'bindings[0].pasid' must be below 2^20, got 1048576");
  EXPECT_EQ(refused(R"({"bindings": [{"pasid": 1, "process": {}}]})"),
            prefix + "field 'bindings[0].process.pid' must be > 0");
  EXPECT_NE(refused(R"({"bindings": [{"pasid": 1, "process": {"pid": 2147483647}}]})")
                .find(prefix + "field 'bindings[0].process': process 2147483647: "),
            std::string::npos);
  EXPECT_EQ(refused(R"({"bindings": [{"pasid": 1, "simulated": {}}]})"),
            prefix + "field 'bindings[0].simulated.regions' needs at least one region");
  EXPECT_EQ(
      refused(
          R"({"bindings": [{"pasid": 1, "simulated": {"regions": [{"base": "0x1001", "size": "4K"}]}}]})"),
      prefix + "field 'bindings[0].simulated.regions[0].base' must be 4 KiB aligned, got 0x1001");
  EXPECT_EQ(
      refused(R"({"bindings": [{"pasid": 1, "simulated": {"regions": [{"base": "0", "size": "12"}]}}]})"),
      prefix + "field 'bindings[0].simulated.regions[0].size' must be a multiple of 4 KiB, got 12");
  EXPECT_EQ(
      refused(R"({"bindings": [{"pasid": 1, "simulated": {"regions": [{"base": "0", "size": "lots"}]}}]})"),
      prefix +
          "field 'bindings[0].simulated.regions[0].size' must be a size > 0 (\"4096\", \"64MiB\"), got "
          "'lots'");
  EXPECT_EQ(
      refused(
          R"({"bindings": [{"pasid": 1, "simulated": {"regions": [{"base": "0", "size": "4K", "perm": "rq"}]}}]})"),
      prefix + "field 'bindings[0].simulated.regions[0].perm' has 'q': use letters of \"rwx\"");
  EXPECT_EQ(refused(R"({"bindings": [{"pasid": 1, "simulated": {"regions": [{"base": "0x2000", "size": "8K"},
                                                                           {"base": "0x1000", "size": "8K"}]}}]})"),
            prefix + "field 'bindings[0].simulated.regions': regions overlap at 8192");
  EXPECT_EQ(refused(simulatedConfig(R"(, "fault_around": 512)")),
            prefix + "field 'fault_around' must be at most 511 pages, got 512");
  EXPECT_EQ(refused(simulatedConfig(R"(, "privileged": "maybe")")),
            prefix + "field 'privileged' must be 'deny' or 'allow', got 'maybe'");
  EXPECT_EQ(refused(simulatedConfig(R"(, "backends": ["iommufd"])")),
            prefix + "field 'backends[0]': the router has no backend 'iommufd'");
  EXPECT_NE(refused(simulatedConfig(R"(, "bogus": 1)")).find("bogus"), std::string::npos);
  EXPECT_TRUE(rig.useResolver(simulatedConfig()).ok());
}

TEST(SvaResolverPlugin, ABackendWithoutMapIsRefusedAtConfigTimeNotAtFaultTime) {
  SvaRig rig(/*can_map=*/false);
  const absl::Status st = rig.useResolver(simulatedConfig());
  EXPECT_EQ(
      st.message(),
      "plugin 'sva_resolver', domain 1 'proc': config 'test.json': backend 'memory' has no map(): the "
      "resolver could not populate its I/O page tables (list the backends of this domain in 'backends')");
  SvaRig named(/*can_map=*/false);
  EXPECT_EQ(
      named.useResolver(simulatedConfig(R"(, "backends": ["memory"])")).message(),
      "plugin 'sva_resolver', domain 1 'proc': config 'test.json': field 'backends[0]': backend 'memory' "
      "has no map(): the resolver could not populate its I/O page tables");
}

// --- the kernel SVA handler's semantics (simulated provider) -----------------------------------

TEST(SvaResolverPlugin, EveryInvalidCauseAndSuccessWithThePopulatedPage) {
  SvaRig rig;
  ASSERT_TRUE(rig.useResolver(simulatedConfig()).ok());
  EXPECT_EQ(rig.one(0x10000, perm::kRead, std::nullopt), ResponseCode::kInvalid);  // no PASID
  EXPECT_EQ(rig.one(0x10000, perm::kRead, 2), ResponseCode::kInvalid);             // PASID 2 unbound
  EXPECT_EQ(rig.one(0x30000), ResponseCode::kInvalid);                             // no mapping
  EXPECT_EQ(rig.one(0x20000), ResponseCode::kInvalid);                             // just past region 0
  EXPECT_EQ(rig.one(0x100000, perm::kWrite), ResponseCode::kInvalid);              // write to r
  // PCIe has no exec-only request (R=W=0 with LAST is a stop marker): exec comes with read.
  EXPECT_EQ(rig.one(0x10000, perm::kRead | perm::kExec), ResponseCode::kInvalid);  // exec from rw
  EXPECT_EQ(rig.one(0x10000, perm::kRead | perm::kPriv), ResponseCode::kInvalid);  // privileged: deny
  EXPECT_EQ(rig.maps().size(), 0u);
  EXPECT_EQ(rig.counter("invalid_no_pasid"), 1u);
  EXPECT_EQ(rig.counter("invalid_no_binding"), 1u);
  EXPECT_EQ(rig.counter("invalid_no_mapping"), 2u);
  EXPECT_EQ(rig.counter("invalid_permission"), 2u);
  EXPECT_EQ(rig.counter("invalid_privileged"), 1u);
  EXPECT_EQ(rig.counter("invalid_groups"), 7u);

  EXPECT_EQ(rig.one(0x10abc, perm::kRead | perm::kWrite), ResponseCode::kSuccess);  // unaligned
  EXPECT_EQ(rig.one(0x200010, perm::kRead | perm::kExec), ResponseCode::kSuccess);
  EXPECT_EQ(rig.one(0x103fff), ResponseCode::kSuccess);  // last byte of the r region
  const auto maps = rig.maps();
  ASSERT_EQ(maps.size(), 3u);
  EXPECT_EQ(maps[0].iova, 0x10000u);
  EXPECT_EQ(maps[0].length, kPage);
  EXPECT_EQ(maps[0].perm, perm::kRead | perm::kWrite);  // the mapping's perms
  EXPECT_EQ(maps[0].domain, rig.domain);
  EXPECT_EQ(maps[0].device, rig.device);
  EXPECT_EQ(maps[0].pasid, std::optional<uint32_t>(1));
  EXPECT_EQ(maps[1].perm, perm::kRead | perm::kExec);
  EXPECT_EQ(maps[2].iova, 0x103000u);
  EXPECT_EQ(maps[2].perm, perm::kRead);
  EXPECT_EQ(rig.counter("resolved_groups"), 3u);
  EXPECT_EQ(rig.counter("pages_mapped"), 3u);
}

TEST(SvaResolverPlugin, TheFirstNonSuccessIsStickyAndLaterRequestsAreNotResolved) {
  SvaRig rig;
  ASSERT_TRUE(rig.useResolver(simulatedConfig()).ok());
  // ok, no mapping, ok: INVALID, only the first page was populated (as the kernel: in order).
  EXPECT_EQ(rig.group({{0x10000}, {0x30000}, {0x11000}}), ResponseCode::kInvalid);
  ASSERT_EQ(rig.maps().size(), 1u);
  EXPECT_EQ(rig.maps()[0].iova, 0x10000u);
  // The failure first: nothing is populated.
  EXPECT_EQ(rig.group({{0x100000, perm::kWrite}, {0x12000}}), ResponseCode::kInvalid);
  EXPECT_EQ(rig.maps().size(), 1u);
  // A request without PASID in the middle of a PASID group.
  EXPECT_EQ(rig.group({{0x13000}, {0x14000, perm::kRead, std::nullopt}, {0x15000}}), ResponseCode::kInvalid);
  EXPECT_EQ(rig.maps().size(), 2u);
  EXPECT_EQ(rig.counter("invalid_no_mapping"), 1u);
  EXPECT_EQ(rig.counter("invalid_permission"), 1u);
  EXPECT_EQ(rig.counter("invalid_no_pasid"), 1u);
  // Every request fine: SUCCESS.
  EXPECT_EQ(rig.group({{0x16000}, {0x17000, perm::kWrite}, {0x200000, perm::kRead | perm::kExec}}),
            ResponseCode::kSuccess);
  EXPECT_EQ(rig.maps().size(), 5u);
}

TEST(SvaResolverPlugin, PrivilegedRequestsFollowThePolicy) {
  SvaRig rig;
  ASSERT_TRUE(rig.useResolver(simulatedConfig(R"(, "privileged": "allow")")).ok());
  EXPECT_EQ(rig.one(0x10000, perm::kRead | perm::kPriv), ResponseCode::kSuccess);
  EXPECT_EQ(rig.one(0x100000, perm::kWrite | perm::kPriv), ResponseCode::kInvalid);  // still checked
  EXPECT_EQ(rig.counter("invalid_privileged"), 0u);
}

TEST(SvaResolverPlugin, AMapFailureAtFaultTimeIsInvalidCountedAndLogged) {
  // A device of a second backend without map() attached after the config was accepted (the
  // config named only the mapping backend): the safety net at fault time.
  InMemoryBackend no_map;  // outlives the router (declared first, destroyed last)
  SvaRig rig;
  ASSERT_TRUE(rig.router->addBackend(no_map).ok());
  ASSERT_TRUE(rig.useResolver(simulatedConfig(R"(, "backends": ["memory"])")).ok());
  const DeviceId other = rig.addDevice(no_map, "legacy0");
  rig.attachAll(other);
  EXPECT_EQ(rig.group({{0x10000}}, &no_map, other), ResponseCode::kInvalid);
  EXPECT_EQ(rig.counter("invalid_map_failed"), 1u);
  const auto logs = rig.reports.messages(PluginReportKind::kLog, "sva_resolver");
  ASSERT_EQ(logs.size(), 1u);
  EXPECT_NE(logs[0].find("has no map()"), std::string::npos) << logs[0];
  EXPECT_EQ(rig.one(0x10000), ResponseCode::kSuccess);  // the mapping backend's device is unaffected
}

TEST(SvaResolverPlugin, DuplicateRequestsForAPageBeingResolvedAreCoalesced) {
  SvaRig rig;
  ASSERT_TRUE(rig.useResolver(simulatedConfig()).ok());
  // Inside one group: read then write of one page: resolved and mapped once.
  EXPECT_EQ(rig.group({{0x10000}, {0x10008, perm::kWrite}}), ResponseCode::kSuccess);
  EXPECT_EQ(rig.maps().size(), 1u);
  EXPECT_EQ(rig.counter("coalesced"), 1u);
  // Two groups for one page in flight together: the second arrived before the first was
  // resolved (the clock moves on between arrival and handling), so it is coalesced.
  PageRequest a;
  a.device = rig.device;
  a.grpid = 100;
  a.addr = 0x12000;
  a.perm = perm::kRead;
  a.pasid = 1;
  a.last = true;
  PageRequest b = a;
  b.grpid = 101;
  b.addr = 0x12800;
  rig.backend().sink().deliver(std::vector<PageRequest>{a, b});
  rig.clock.advance(1000);
  rig.router->runUntilIdle();
  const auto responses = rig.backend().responses();
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(responses[1].code, ResponseCode::kSuccess);
  EXPECT_EQ(responses[2].code, ResponseCode::kSuccess);
  EXPECT_EQ(rig.maps().size(), 2u);
  EXPECT_EQ(rig.counter("coalesced"), 2u);
  // A fault on that page arriving after it was mapped is resolved again: the device faulted
  // anyway, so the page may have been unmapped since.
  EXPECT_EQ(rig.one(0x12000), ResponseCode::kSuccess);
  EXPECT_EQ(rig.maps().size(), 3u);
  // A coalesced request still needs the perms: a write to the r region is INVALID.
  EXPECT_EQ(rig.group({{0x100000}, {0x100000, perm::kWrite}}), ResponseCode::kInvalid);
}

// A device that translates first and faults only on unmapped pages walks `pages` pages in order;
// returns the faults it took.
uint64_t sequentialFaults(uint32_t fault_around, uint64_t base, uint64_t pages, SvaRig& rig) {
  const std::string config = R"({"fault_around": )" + std::to_string(fault_around) +
                             R"(, "bindings": [{"pasid": 1, "simulated": {"regions": [{"base": ")" +
                             std::to_string(base) + R"(", "size": ")" + std::to_string(pages * kPage) +
                             R"(", "perm": "rw"}]}}]})";
  if (!rig.useResolver(config).ok()) return 0;
  std::set<uint64_t> mapped;
  uint64_t faults = 0;
  for (uint64_t p = 0; p < pages; ++p) {
    const uint64_t addr = base + p * kPage;
    if (mapped.count(addr) != 0) continue;
    ++faults;
    EXPECT_EQ(rig.one(addr, perm::kWrite), ResponseCode::kSuccess);
    for (const MapRequest& m : rig.maps()) {
      EXPECT_EQ(m.perm, perm::kRead | perm::kWrite);
      EXPECT_LE(m.iova + m.length, base + pages * kPage);  // never past the mapping
      for (uint64_t a = m.iova; a < m.iova + m.length; a += kPage) mapped.insert(a);
    }
  }
  EXPECT_EQ(mapped.size(), pages);
  return faults;
}

TEST(SvaResolverPlugin, FaultAroundCutsFaultsOfASequentialWalk) {
  SvaRig off_rig, on_rig;
  const uint64_t off = sequentialFaults(0, 0x40000000, 250, off_rig);
  const uint64_t on = sequentialFaults(15, 0x40000000, 250, on_rig);
  std::printf("sequential walk of 250 pages: %llu faults with fault-around off, %llu with 15 pages\n",
              static_cast<unsigned long long>(off), static_cast<unsigned long long>(on));
  EXPECT_EQ(off, 250u);
  EXPECT_EQ(on, 16u);  // ceil(250 / 16): the last window stops at the end of the mapping
  EXPECT_EQ(on_rig.counter("fault_around_pages"), 250u - 16u);
}

// --- the simulated backend end to end --------------------------------------------------------------

// A Simulation (manual mode, ManualClock) whose "plugin:<id>" handlers come from a plugin host.
class PluginSimulation {
 public:
  explicit PluginSimulation(const std::string& json) {
    auto scenario = sim::parseScenario(json, "test-scenario.json");
    if (!scenario.ok()) {
      ADD_FAILURE() << scenario.status();
      return;
    }
    sim::SimulationOptions o;
    o.threaded = false;
    o.clock = &clock_;
    o.report_to_stderr = true;
    o.plugin_handler = [this](Router& router, DomainId domain,
                              const sim::HandlerSpec& h) -> absl::StatusOr<std::shared_ptr<Handler>> {
      if (!host_) {
        PluginHostOptions ho;
        ho.call_budget_ns = testing::kGenerousBudgetNs;
        host_ = std::make_unique<PluginHost>(&router, ho);
        if (absl::Status st = host_->loadFile(kResolver); !st.ok()) return st;
      }
      return host_->createHandler(h.plugin, domain, {.json = h.config_json, .source = h.config_source});
    };
    auto created = sim::Simulation::create(*scenario, o);
    if (!created.ok()) {
      ADD_FAILURE() << created.status();
      return;
    }
    sim_ = std::move(*created);
    EXPECT_TRUE(host_->start().ok());
    EXPECT_TRUE(sim_->start().ok());
  }
  ~PluginSimulation() {
    if (sim_) sim_->stop();
    if (host_) host_->shutdown();
  }
  bool ok() const { return sim_ != nullptr; }
  sim::Simulation& sim() { return *sim_; }
  uint64_t counter(const std::string& name) const {
    return host_->counter("sva_resolver", name).value_or(~0ull);
  }

 private:
  ManualClock clock_;
  std::unique_ptr<PluginHost> host_;  // destroyed after the simulation (and its router)
  std::unique_ptr<sim::Simulation> sim_;
};

TEST(SvaResolverPlugin, SimulatedDevicesRetrySuccessfullyAfterTheResolverMappedThePage) {
  PluginSimulation s(R"({
    "name": "sva-retries",
    "domains": [{"name": "proc", "kind": "sva", "deadline_ms": 1000,
                 "chain": [{"name": "plugin:sva_resolver", "config": {"bindings": [{"pasid": 1, "simulated": {
                   "regions": [{"base": "0x100000", "size": "1MiB", "perm": "rw"},
                               {"base": "0x200000", "size": "1MiB", "perm": "r"}]}}]}}]}],
    "devices": [{"name": "acc", "count": 2, "pri_allocation": 16, "pasid_bits": 8, "needs_pasid": true,
                 "pasids": [1],
                 "workload": {"kind": "uniform", "base": "0x100000", "size": "2MiB", "write_ratio": 0.3,
                              "group_size": {"min": 1, "max": 4}, "max_groups": 300}}],
    "attachments": [{"device": "acc*", "pasid": 1, "domain": "proc"}]
  })");
  ASSERT_TRUE(s.ok());
  s.sim().runUntilIdle(100000);
  const sim::SimTotals t = s.sim().backend().totals();
  using sim::Counter;
  EXPECT_EQ(t.counters[Counter::kGroupsIssued], 600u);
  EXPECT_EQ(s.sim().backend().bogusReportCount(), 0u);
  EXPECT_EQ(t.counters[Counter::kRetriedRequests], 0u);  // every SUCCESS left a usable mapping
  EXPECT_GT(t.counters[Counter::kCompletedAccesses], 0u);
  EXPECT_GT(t.counters[Counter::kAbortedRequests], 0u);  // writes into the read-only region
  EXPECT_EQ(t.counters[Counter::kCompletedAccesses] + t.counters[Counter::kAbortedRequests],
            t.counters[Counter::kRequestsIssued]);
  EXPECT_EQ(t.counters[Counter::kResponsesSuccess], s.counter("resolved_groups"));
  EXPECT_EQ(t.counters[Counter::kResponsesInvalid], s.counter("invalid_groups"));
  EXPECT_EQ(s.counter("invalid_groups"), s.counter("invalid_permission"));
  EXPECT_GT(s.sim().backend().pageTable(s.sim().domainId(0))->mappedPages(), 0u);
}

uint64_t simulatedSequentialFaults(uint32_t fault_around) {
  PluginSimulation s(R"({
    "name": "sva-sequential",
    "domains": [{"name": "proc", "kind": "sva", "deadline_ms": 1000,
                 "chain": [{"name": "plugin:sva_resolver", "config": {"fault_around": )" +
                     std::to_string(fault_around) + R"(, "bindings": [{"pasid": 1, "simulated": {
                   "regions": [{"base": "0x100000", "size": "4MiB", "perm": "rw"}]}}]}}]}],
    "devices": [{"name": "acc", "pri_allocation": 8, "pasid_bits": 8, "needs_pasid": true, "pasids": [1],
                 "workload": {"kind": "sequential", "base": "0x100000", "size": "4MiB", "skip_mapped": true}}],
    "attachments": [{"device": "acc", "pasid": 1, "domain": "proc"}]
  })");
  if (!s.ok()) return 0;
  s.sim().runUntilIdle(100000);  // ends when every page is mapped and the device has nothing to fault
  const sim::SimTotals t = s.sim().backend().totals();
  EXPECT_EQ(s.sim().backend().pageTable(s.sim().domainId(0))->mappedPages(), 1024u);
  EXPECT_EQ(t.counters[sim::Counter::kRetriedRequests], 0u);
  EXPECT_EQ(s.sim().backend().bogusReportCount(), 0u);
  return s.sim().router().stats().groups;
}

TEST(SvaResolverPlugin, FaultAroundCutsFaultsOfSimulatedSequentialDevices) {
  const uint64_t off = simulatedSequentialFaults(0);
  const uint64_t on = simulatedSequentialFaults(15);
  std::printf(
      "simulated device, sequential over 1024 pages, 8 credits in flight: %llu faults with "
      "fault-around off, %llu with 15 pages\n",
      static_cast<unsigned long long>(off), static_cast<unsigned long long>(on));
  // Every page faults once; a few in flight when the stream wraps fault once more.
  EXPECT_GE(off, 1024u);
  EXPECT_LE(off, 1024u + 8u);
  EXPECT_LT(on, off / 2);
}

// --- the process provider against real children -------------------------------------------------

struct ChildAddresses {
  uint64_t rw = 0;       // 4 pages, anonymous, never touched
  uint64_t ro = 0;       // PROT_READ
  uint64_t none = 0;     // PROT_NONE
  uint64_t file = 0;     // 2 pages of a 1-page file, PROT_READ, MAP_PRIVATE
  uint64_t pattern = 0;  // RW, filled with 0xAB by the child
  uint64_t stack = 0;    // a local of the child's main thread
};

// A forked child that sets up mappings, reports their addresses, then serves commands:
// 'm' maps a new RW page and reports it; anything else (or EOF) exits.
class Child {
 public:
  explicit Child(const std::string& file_path) {
    int to[2], from[2];
    if (::pipe(to) != 0 || ::pipe(from) != 0) std::abort();
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(to[1]);
      ::close(from[0]);
      run(to[0], from[1], file_path.c_str());
    }
    ::close(to[0]);
    ::close(from[1]);
    to_ = to[1];
    from_ = from[0];
    if (!readAll(&addresses_, sizeof addresses_)) ADD_FAILURE() << "child did not report";
  }
  ~Child() {
    if (to_ >= 0) ::close(to_);
    if (from_ >= 0) ::close(from_);
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  const ChildAddresses& addresses() const { return addresses_; }
  uint64_t mapNewPage() {
    uint64_t addr = 0;
    const char c = 'm';
    if (::write(to_, &c, 1) != 1 || !readAll(&addr, sizeof addr)) ADD_FAILURE() << "child did not map";
    return addr;
  }
  // Killed; waits until it is a zombie (not reaped).
  void killAndWaitForExit() {
    ::kill(pid_, SIGKILL);
    siginfo_t info{};
    ::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOWAIT);
  }
  void reap() {
    ::waitpid(pid_, nullptr, 0);
    reaped_ = true;
  }
  // The child's memory, read from outside.
  std::vector<unsigned char> read(uint64_t addr, size_t length) const {
    std::vector<unsigned char> out(length);
    iovec local{out.data(), length};
    iovec remote{reinterpret_cast<void*>(addr), length};
    if (::process_vm_readv(pid_, &local, 1, &remote, 1, 0) != static_cast<ssize_t>(length)) out.clear();
    return out;
  }
  // Bit 63 of /proc/PID/pagemap: the page is present in the child's page table.
  bool present(uint64_t addr) const {
    const int fd = ::open(("/proc/" + std::to_string(pid_) + "/pagemap").c_str(), O_RDONLY);
    uint64_t entry = 0;
    const bool ok = fd >= 0 && ::pread(fd, &entry, sizeof entry, static_cast<off_t>(addr / kPage * 8)) == 8;
    if (fd >= 0) ::close(fd);
    return ok && (entry >> 63) != 0;
  }

 private:
  [[noreturn]] static void run(int in, int out, const char* file_path) {
    // Only async-signal-safe calls: the parent may have threads.
    ChildAddresses a;
    volatile char on_stack[64] = {1};
    auto anon = [](size_t len, int prot) {
      return reinterpret_cast<uint64_t>(::mmap(nullptr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    };
    // RW ranges between PROT_NONE guards, so the kernel cannot merge them with a neighbour.
    auto guarded = [&](size_t pages) {
      const uint64_t base = anon((pages + 2) * kPage, PROT_NONE);
      ::mprotect(reinterpret_cast<void*>(base + kPage), pages * kPage, PROT_READ | PROT_WRITE);
      return base + kPage;
    };
    a.rw = guarded(4);
    a.ro = anon(kPage, PROT_READ);
    a.none = anon(kPage, PROT_NONE);
    const int fd = ::open(file_path, O_RDONLY);
    a.file = reinterpret_cast<uint64_t>(::mmap(nullptr, 2 * kPage, PROT_READ, MAP_PRIVATE, fd, 0));
    a.pattern = guarded(1);
    std::memset(reinterpret_cast<void*>(a.pattern), 0xAB, kPage);
    a.stack = reinterpret_cast<uint64_t>(&on_stack[0]);
    if (::write(out, &a, sizeof a) != sizeof a) ::_exit(2);
    for (;;) {
      char c = 0;
      if (::read(in, &c, 1) != 1 || c != 'm') ::_exit(on_stack[0] == 1 ? 0 : 3);
      const uint64_t page = guarded(1);
      if (::write(out, &page, sizeof page) != sizeof page) ::_exit(2);
    }
  }
  bool readAll(void* buf, size_t n) {
    auto* p = static_cast<char*>(buf);
    while (n > 0) {
      const ssize_t r = ::read(from_, p, n);
      if (r <= 0) return false;
      p += r;
      n -= static_cast<size_t>(r);
    }
    return true;
  }

  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  bool reaped_ = false;
  ChildAddresses addresses_;
};

std::string processConfig(pid_t pid, const std::string& extra = "") {
  return R"({"bindings": [{"pasid": 1, "process": {"pid": )" + std::to_string(pid) + "}}]" + extra + "}";
}

TEST(SvaResolverProcess, ResolvesRealMappingsOfAChildWithoutWritingIntoIt) {
  testing::TempDir dir;
  const std::string file = dir.file("one-page");
  testing::writeFile(file, std::string(kPage, 'f'));
  Child child(file);
  const ChildAddresses& a = child.addresses();
  SvaRig rig;
  ASSERT_TRUE(rig.useResolver(processConfig(child.pid())).ok());

  // RW anonymous, never touched: reads and writes resolve; the page becomes present.
  EXPECT_FALSE(child.present(a.rw));
  EXPECT_EQ(rig.one(a.rw + 100, perm::kRead), ResponseCode::kSuccess);
  EXPECT_TRUE(child.present(a.rw));
  EXPECT_EQ(rig.one(a.rw + kPage, perm::kWrite), ResponseCode::kSuccess);
  EXPECT_EQ(rig.one(a.rw, perm::kRead | perm::kExec), ResponseCode::kInvalid);
  // Read-only: reads only.
  EXPECT_EQ(rig.one(a.ro, perm::kRead), ResponseCode::kSuccess);
  EXPECT_EQ(rig.one(a.ro, perm::kWrite), ResponseCode::kInvalid);
  // PROT_NONE: nothing (the kernel requires VM_READ for every access).
  EXPECT_EQ(rig.one(a.none, perm::kRead), ResponseCode::kInvalid);
  EXPECT_EQ(rig.one(a.none, perm::kWrite), ResponseCode::kInvalid);
  // File-backed: the page inside the file resolves; the page past EOF cannot be made present.
  EXPECT_EQ(rig.one(a.file + 12, perm::kRead), ResponseCode::kSuccess);
  EXPECT_EQ(rig.one(a.file + kPage, perm::kRead), ResponseCode::kInvalid);
  EXPECT_EQ(rig.counter("invalid_populate_failed"), 1u);
  EXPECT_EQ(rig.one(a.file, perm::kWrite), ResponseCode::kInvalid);
  // Stack.
  EXPECT_EQ(rig.one(a.stack, perm::kRead | perm::kWrite), ResponseCode::kSuccess);
  // Unmapped addresses.
  EXPECT_EQ(rig.one(0x1000, perm::kRead), ResponseCode::kInvalid);
  EXPECT_EQ(rig.counter("invalid_permission"), 5u);
  EXPECT_EQ(rig.counter("invalid_no_mapping"), 1u);

  // Writes are resolved without writing: the pattern and the zero page are unchanged.
  EXPECT_EQ(rig.one(a.pattern + 8, perm::kWrite), ResponseCode::kSuccess);
  EXPECT_EQ(child.read(a.pattern, kPage), std::vector<unsigned char>(kPage, 0xAB));
  EXPECT_EQ(child.read(a.rw, 2 * kPage), std::vector<unsigned char>(2 * kPage, 0));

  // The maps: SVA, so iova == source VA == the child's page, with the mapping's perms.
  const auto maps = rig.maps();
  ASSERT_EQ(maps.size(), 6u);
  EXPECT_EQ(maps[0].iova, a.rw);
  EXPECT_EQ(maps[0].source_va, a.rw);
  EXPECT_EQ(maps[0].perm, perm::kRead | perm::kWrite);
  EXPECT_EQ(maps[2].iova, a.ro);
  EXPECT_EQ(maps[2].perm, perm::kRead);

  // A mapping made after the config was loaded: found by re-reading the maps on the miss.
  const uint64_t refreshes = rig.counter("maps_refreshes");
  const uint64_t fresh = child.mapNewPage();
  EXPECT_EQ(rig.one(fresh, perm::kWrite), ResponseCode::kSuccess);
  EXPECT_GT(rig.counter("maps_refreshes"), refreshes);
}

TEST(SvaResolverProcess, FaultAroundStaysInsideTheMapping) {
  testing::TempDir dir;
  const std::string file = dir.file("one-page");
  testing::writeFile(file, std::string(kPage, 'f'));
  Child child(file);
  SvaRig rig;
  ASSERT_TRUE(rig.useResolver(processConfig(child.pid(), R"(, "fault_around": 8)")).ok());
  EXPECT_EQ(rig.one(child.addresses().rw + kPage, perm::kRead), ResponseCode::kSuccess);
  const auto maps = rig.maps();
  ASSERT_EQ(maps.size(), 1u);
  EXPECT_EQ(maps[0].iova, child.addresses().rw + kPage);
  EXPECT_EQ(maps[0].length, 3 * kPage);  // the 4-page mapping ends there
  EXPECT_TRUE(child.present(child.addresses().rw + 3 * kPage));
  EXPECT_EQ(rig.counter("fault_around_pages"), 2u);
}

TEST(SvaResolverProcess, AProcessThatExitsMidRunMakesEveryLaterRequestInvalid) {
  testing::TempDir dir;
  const std::string file = dir.file("one-page");
  testing::writeFile(file, std::string(kPage, 'f'));
  Child child(file);
  const ChildAddresses a = child.addresses();
  SvaRig rig;
  ASSERT_TRUE(rig.useResolver(processConfig(child.pid())).ok());
  EXPECT_EQ(rig.one(a.rw, perm::kRead), ResponseCode::kSuccess);
  EXPECT_EQ(rig.one(a.ro, perm::kRead), ResponseCode::kSuccess);

  child.killAndWaitForExit();  // a zombie: its PID is still taken
  EXPECT_EQ(rig.one(a.rw + kPage, perm::kRead), ResponseCode::kInvalid);
  EXPECT_EQ(rig.one(a.ro, perm::kRead), ResponseCode::kInvalid);  // was resolved before: still INVALID
  EXPECT_EQ(rig.group({{a.rw}, {a.rw}}), ResponseCode::kInvalid);
  child.reap();  // the PID may now name another process: still this one's answer
  EXPECT_EQ(rig.one(a.stack, perm::kRead), ResponseCode::kInvalid);
  EXPECT_EQ(rig.one(0x1000, perm::kRead), ResponseCode::kInvalid);
  EXPECT_EQ(rig.counter("invalid_process_gone"), 5u);
  EXPECT_EQ(rig.counter("resolved_groups"), 2u);
  EXPECT_EQ(rig.maps().size(), 2u);
}

}  // namespace
}  // namespace iopf
