// The example plugin, loaded by path: its policy inside a chain, its config validation.
#include <gtest/gtest.h>

#include "iopf/plugin_host.h"
#include "plugin_test_util.h"

namespace iopf {
namespace {

using testing::Reports;
using testing::RouterRig;

const std::string kDenyWrites = IOPF_PLUGIN_DENY_WRITES;

TEST(DenyWritesPlugin, WritesIntoARangeAreInvalidEverythingElsePassesOn) {
  Reports reports;
  RouterRig rig;
  PluginHostOptions o;
  o.call_budget_ns = testing::kGenerousBudgetNs;
  o.report = reports.sink();
  PluginHost host(rig.router.get(), o);
  ASSERT_TRUE(host.loadFile(kDenyWrites).ok());
  PluginHandlerConfig config;
  config.json = R"({"ranges": [{"start": 65536, "length": 4096}, {"start": "1048576", "length": 1}]})";
  config.source = "domains/host.json";
  auto h = host.createHandler("deny_writes", rig.domain, config);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(host.start().ok());
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*h, std::make_shared<RouterRig::Success>()}).ok());
  rig.group(1, 0x10000, perm::kWrite);            // write at the start of range 0
  rig.group(2, 0x10fff, perm::kRead | perm::kWrite);  // last byte of range 0
  rig.group(3, 0x11000, perm::kWrite);            // just past range 0
  rig.group(4, 0x10000, perm::kRead);             // a read inside range 0
  rig.group(5, 0x100000, perm::kWrite);           // range 1
  std::vector<std::pair<ResponseCode, Origin>> got;
  for (const Response& r : rig.backend.responses()) got.emplace_back(r.code, r.origin);
  const std::vector<std::pair<ResponseCode, Origin>> want{
      {ResponseCode::kInvalid, Origin::kHandler}, {ResponseCode::kInvalid, Origin::kHandler},
      {ResponseCode::kSuccess, Origin::kHandler}, {ResponseCode::kSuccess, Origin::kHandler},
      {ResponseCode::kInvalid, Origin::kHandler}};
  EXPECT_EQ(got, want);
  EXPECT_EQ(host.counter("deny_writes", "groups"), 5u);
  EXPECT_EQ(host.counter("deny_writes", "denied"), 3u);
  rig.router->shutdown();
}

TEST(DenyWritesPlugin, ConfigErrorsNameTheFieldAndTheFile) {
  RouterRig rig;
  PluginHostOptions o;
  o.call_budget_ns = testing::kGenerousBudgetNs;
  o.report = [](const PluginReport&) {};
  PluginHost host(rig.router.get(), o);
  ASSERT_TRUE(host.loadFile(kDenyWrites).ok());
  PluginHandlerConfig config;
  config.source = "domains/host.json";
  config.json = R"({"ranges": [{"start": 4096, "length": 0}]})";
  EXPECT_EQ(host.createHandler("deny_writes", rig.domain, config).status().message(),
            "plugin 'deny_writes', domain 1 'host': config 'domains/host.json': field 'ranges[0].length' must be > 0");
  config.json = R"({"answer": "success"})";
  EXPECT_EQ(host.createHandler("deny_writes", rig.domain, config).status().message(),
            "plugin 'deny_writes', domain 1 'host': config 'domains/host.json': field 'answer' must be "
            "'invalid' or 'failure', got 'success'");
  EXPECT_EQ(host.status("deny_writes")->version, "1.0.0");
  rig.router->shutdown();
}

}  // namespace
}  // namespace iopf
