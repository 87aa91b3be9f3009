// Scenario files: the shipped ones load; broken ones fail with messages naming file, line, field.
#include "scenario.h"

#include <dirent.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "simulation.h"

namespace iopf::sim {
namespace {

std::string errorOf(const std::string& json) {
  auto s = parseScenario(json, "t.json");
  if (s.ok()) return "(no error)";
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(s.status().message());
}

// A valid scenario, one field per line, where tests splice in mistakes.
std::string doc(const std::string& domain_extra = "", const std::string& device_extra = "",
                const std::string& attachment = R"({"device": "nic*", "domain": "host"})",
                const std::string& tail = "", const std::string& workload_extra = "") {
  return "{\n"                                                                       // 1
         "  \"name\": \"t\",\n"                                                      // 2
         "  \"domains\": [{\n"                                                       // 3
         "    \"name\": \"host\",\n"                                                 // 4
         "    \"address_space\": [{\"base\": \"0x100000\", \"size\": \"1MiB\"}],\n"  // 5
         "    \"chain\": [{\"name\": \"sim_resolver\"}]" +
         domain_extra +
         "\n"                        // 6
         "  }],\n"                   // 7
         "  \"devices\": [{\n"       // 8
         "    \"name\": \"nic\",\n"  // 9
         "    \"count\": 2,\n"       // 10
         "    \"pasid_bits\": 4,\n"  // 11
         "    \"pasids\": [1],\n"    // 12
         "    \"workload\": {\"base\": \"0x100000\", \"size\": \"1MiB\"" +
         workload_extra + "}" + device_extra +
         "\n"       // 13
         "  }],\n"  // 14
         "  \"attachments\": [" +
         attachment + "]" + tail +
         "\n"  // 15
         "}\n";
}

TEST(Scenario, TheBaseDocumentIsValid) {
  auto s = parseScenario(doc(), "t.json");
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->devices.size(), 2u);
  EXPECT_EQ(s->devices[0].name, "nic0");
  EXPECT_EQ(s->devices[1].name, "nic1");
  EXPECT_EQ(s->devices[0].rid, 0x0100);
  EXPECT_EQ(s->devices[1].rid, 0x0101);
  EXPECT_EQ(s->devices[0].pri_allocation, 32u);
  EXPECT_EQ(s->devices[0].max_retries, 3u);
  EXPECT_NE(s->devices[0].seed, s->devices[1].seed);
  ASSERT_EQ(s->attachments.size(), 2u);
  EXPECT_FALSE(s->attachments[0].pasid.has_value());
  EXPECT_EQ(s->domains[0].spec.deadline_ns, 1'000'000'000);
}

TEST(Scenario, SyntaxErrorsNameLineAndColumn) {
  EXPECT_EQ(errorOf("{\n  \"name\": \n}\n"), "t.json:3:1: unexpected character '}', expected a value");
  EXPECT_EQ(errorOf("{\"name\": \"x\",}"), "t.json:1:14: expected a member name in double quotes");
  EXPECT_EQ(errorOf("{\"a\": 1, \"a\": 2}"), "t.json:1:10: member 'a' appears twice in this object");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})", ",\n  \"devices\": 3")),
            "t.json:16:3: member 'devices' appears twice in this object");
  EXPECT_EQ(errorOf("{\"name\": \"unterminated}"), "t.json:1:24: unterminated string");
}

TEST(Scenario, SchemaErrorsNameLineAndField) {
  EXPECT_EQ(errorOf(doc("", ",\n    \"pri_alocation\": 4")),
            "t.json:14: devices[0].pri_alocation: unknown field (did you mean 'pri_allocation'?)");
  EXPECT_EQ(
      errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})", "", ", \"burstiness\": 4")),
      "t.json:13: devices[0].workload.burstiness: unknown field (known: kind, base, size, write_ratio, "
      "group_size, rate_groups_per_s, arrivals, zipf_s, hot_pages, capture, capture_device, timing, speed, "
      "loop, max_groups, skip_mapped)");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domian": "host"})")),
            "t.json:15: attachments[0].domian: unknown field (did you mean 'domain'?)");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})", "", ", \"max_groups\": \"4\"")),
            "t.json:13: devices[0].workload.max_groups: expected a number, found a string");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})", "", ", \"max_groups\": -1")),
            "t.json:13: devices[0].workload.max_groups: expected a non-negative integer, found -1");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})", "",
                        ", \"group_size\": {\"min\": 4294967296}")),
            "t.json:13: devices[0].workload.group_size.min: 4294967296 is out of range (0..4294967295)");
  EXPECT_EQ(errorOf(doc("", ",\n    \"needs_pasid\": 1")),
            "t.json:14: devices[0].needs_pasid: expected a boolean, found a number");
  EXPECT_EQ(errorOf("{\n\"domains\": 3}"), "t.json:2: domains: expected an array, found a number");
  EXPECT_EQ(errorOf("[1]"), "t.json:1: (top level): expected an object, found an array");
}

TEST(Scenario, SemanticErrorsNameLineAndField) {
  EXPECT_EQ(errorOf(doc(",\n    \"kind\": \"guest\"")),
            "t.json:7: domains[0].kind: 'guest' is not one of paging, nested, sva");
  EXPECT_EQ(
      errorOf(R"({"domains": [{"name": "d", "chain": [{"name": "resolver"}]}], "devices": [{"name": "x"}]})"),
      "t.json:1: domains[0].chain[0].name: unknown handler 'resolver' (built-in: sim_resolver, "
      "fixed:<CODE>, sim_guest, sim_hold; plugins: plugin:<id>)");
  EXPECT_EQ(
      errorOf(
          R"({"domains": [{"name": "d", "chain": [{"name": "fixed:MAYBE"}]}], "devices": [{"name": "x"}]})"),
      "t.json:1: domains[0].chain[0].code: 'MAYBE' is not one of SUCCESS, INVALID, FAILURE");
  EXPECT_EQ(
      errorOf(
          R"({"domains": [{"name": "d", "chain": [{"name": "sim_guest"}]}], "devices": [{"name": "x"}]})"),
      "t.json:1: domains[0].chain[0].name: sim_guest needs the domain's address_space");
  EXPECT_EQ(errorOf(R"({"domains": [{"name": "d", "address_space": [{"base": "0x100000", "size": "1MiB"},
                                                                 {"base": "0x1ff000", "size": "8KiB"}]}],
                        "devices": [{"name": "x"}]})"),
            "t.json:2: domains[0].address_space[1].base: overlaps domains[0].address_space[0]");
  EXPECT_EQ(errorOf(doc("", ",\n    \"pri_allocation\": 70000")),
            "t.json:14: devices[0].pri_allocation: 70000 is out of range (0..65536)");
  EXPECT_EQ(errorOf(R"({"domains": [{"name": "d"}],
      "devices": [{"name": "x", "pri_allocation": 4,
                   "workload": {"group_size": {"min": 2, "max": 8}}}]})"),
            "t.json:3: devices[0].workload.group_size.max: 8 exceeds the device's 4 PRI credits");
  EXPECT_EQ(
      errorOf(R"({"domains": [{"name": "d"}],
      "devices": [{"name": "x", "stall_model": true,
                   "workload": {"group_size": {"max": 2}}}]})"),
      "t.json:3: devices[0].workload.group_size.max: a stall-model device issues single-request groups: "
      "must be 1");
  EXPECT_EQ(errorOf(R"({"domains": [{"name": "d"}],
      "devices": [{"name": "x", "pasid_bits": 4, "pasids": [3, 16]}]})"),
            "t.json:2: devices[0].pasids[1]: PASID 16 does not fit in 4 PASID bits");
  EXPECT_EQ(errorOf(R"({"domains": [{"name": "d"}],
      "devices": [{"name": "nic", "count": 2}, {"name": "nic1"}]})"),
            "t.json:2: devices[1].name: device name 'nic1' is used twice (devices[0])");
  EXPECT_EQ(errorOf(R"({"domains": [{"name": "d"}],
      "devices": [{"name": "a", "rid": "00:03.0"}, {"name": "b", "rid": "0x18"}]})"),
            "t.json:2: devices[1].rid: RID 00:03.0 of 'b' is also the RID of 'a' (devices[0])");
  EXPECT_EQ(errorOf(R"({"domains": [{"name": "d"}], "devices": [{"name": "a", "rid": "00:20.0"}]})"),
            "t.json:1: devices[0].rid: '00:20.0' is not a RID (\"BB:DD.F\" or a number ≤ 0xffff)");
  EXPECT_EQ(
      errorOf(
          R"({"domains": [{"name": "d"}], "devices": [{"name": "a", "workload": {"kind": "zipf", "size": "1MiB", "hot_pages": 300}}]})"),
      "t.json:1: devices[0].workload.hot_pages: 300 exceeds the 256 pages of the range");
  EXPECT_EQ(
      errorOf(
          R"({"domains": [{"name": "d"}], "devices": [{"name": "a", "workload": {"write_ratio": 1.5}}]})"),
      "t.json:1: devices[0].workload.write_ratio: must be between 0 and 1 (got 1.5)");
  EXPECT_EQ(errorOf(R"({"domains": [], "devices": [{"name": "a"}]})"),
            "t.json:1: domains: at least one domain is required");
}

TEST(Scenario, ReferenceErrorsNameLineAndField) {
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domain": "guest"})")),
            "t.json:15: attachments[0].domain: 'guest' is not a domain of this scenario");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "gpu*", "domain": "host"})")),
            "t.json:15: attachments[0].device: 'gpu*' matches no device");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic1", "pasid": 2, "domain": "host"})")),
            "t.json:15: attachments[0].pasid: device 'nic1' does not use PASID 2 (its pasids: 1)");
  EXPECT_EQ(
      errorOf(doc("", "", R"({"device": "nic*", "domain": "host"}, {"device": "nic0", "domain": "host"})")),
      "t.json:15: attachments[1]: device 'nic0' RID is attached twice (also attachments[0])");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})",
                        ",\n  \"injections\": [{\"device\": \"nic0\", \"kind\": \"stop_marker\"}]")),
            "t.json:16: injections[0].pasid: is required for stop_marker");
  EXPECT_EQ(
      errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})",
                  ",\n  \"injections\": [{\"device\": \"nic0\", \"kind\": \"explode\"}]")),
      "t.json:16: injections[0].kind: 'explode' is not one of lost_last, duplicate_prgi, overflow, unplug, "
      "stop_marker, resume_pasid, burst, reenable_pri");
  EXPECT_EQ(errorOf(doc("", "", R"({"device": "nic*", "domain": "host"})",
                        ",\n  \"injections\": [{\"device\": \"nic0\", \"kind\": \"burst\", \"repeat\": 3}]")),
            "t.json:16: injections[0].repeat: needs every_ms > 0");
}

TEST(Scenario, MissingCaptureIsReportedAgainstTheField) {
  const std::string msg = errorOf(R"({"domains": [{"name": "d"}],
      "devices": [{"name": "r", "workload": {"kind": "replay", "capture": "nope.iopfcap"}}]})");
  EXPECT_EQ(msg.rfind("t.json:2: devices[0].workload.capture: capture './nope.iopfcap'", 0), 0u) << msg;
  EXPECT_EQ(
      errorOf(R"({"domains": [{"name": "d"}], "devices": [{"name": "r", "workload": {"kind": "replay"}}]})"),
      "t.json:1: devices[0].workload.capture: is required for a replay workload");
}

TEST(Scenario, ValueParsers) {
  EXPECT_EQ(parseSize("4096"), 4096u);
  EXPECT_EQ(parseSize("0x1000"), 4096u);
  EXPECT_EQ(parseSize("64MiB"), 64u << 20);
  EXPECT_EQ(parseSize("2G"), 2ull << 30);
  EXPECT_EQ(parseSize("12abc"), std::nullopt);
  EXPECT_EQ(parseSize(""), std::nullopt);
  EXPECT_EQ(parseRid("03:00.1"), 0x0301);
  EXPECT_EQ(parseRid("0x0300"), 0x0300);
  EXPECT_EQ(parseRid("00:20.0"), std::nullopt);
  EXPECT_EQ(formatRid(0x0309), "03:01.1");
  EXPECT_EQ(parseResponseCode("failure"), ResponseCode::kFailure);
}

TEST(Scenario, ShippedScenariosLoadAndBuild) {
  const std::string dir = std::string(IOPF_SOURCE_DIR) + "/scenarios";
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  std::vector<std::string> files;
  while (dirent* e = readdir(d)) {
    const std::string n = e->d_name;
    if (n.size() > 5 && n.substr(n.size() - 5) == ".json") files.push_back(dir + "/" + n);
  }
  closedir(d);
  std::sort(files.begin(), files.end());
  ASSERT_GE(files.size(), 3u);
  for (const std::string& f : files) {
    auto s = loadScenario(f);
    ASSERT_TRUE(s.ok()) << s.status();
    SimulationOptions o;
    o.threaded = false;
    o.shards = 1;
    // "plugin:<id>" handlers come from the tool's plugin host (tests/plugins load the real ones);
    // here a stand-in, so the rest of the scenario is built and checked.
    o.plugin_handler = [](Router&, DomainId, const HandlerSpec&) -> absl::StatusOr<std::shared_ptr<Handler>> {
      return std::make_shared<FixedVerdict>(ResponseCode::kSuccess);
    };
    auto sim = Simulation::create(*s, o);
    ASSERT_TRUE(sim.ok()) << f << ": " << sim.status();
  }
}

}  // namespace
}  // namespace iopf::sim
