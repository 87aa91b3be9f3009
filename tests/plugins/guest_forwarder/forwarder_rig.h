// The guest forwarder plugin loaded by path (IOPF_PLUGIN_GUEST_FORWARDER) into a RouterRig: the
// one set-up of the socket, vhost and real-QEMU tests.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>

#include "iopf/plugin_host.h"
#include "plugin_test_util.h"

namespace iopf::testing {

// Loads the plugin with `config` (plugin-wide JSON), creates its handler for rig's domain, starts
// the host and makes the handler the domain's chain. Failures are test failures.
inline std::unique_ptr<PluginHost> startForwarder(
    RouterRig& rig, const std::string& config,
    std::function<void(const PluginReport&)> report = [](const PluginReport&) {}) {
  PluginHostOptions o;
  o.call_budget_ns = kGenerousBudgetNs;
  o.report = std::move(report);
  auto host = std::make_unique<PluginHost>(rig.router.get(), o);
  const absl::Status loaded = host->loadFile(IOPF_PLUGIN_GUEST_FORWARDER, config);
  EXPECT_TRUE(loaded.ok()) << loaded;
  auto h = host->createHandler("guest_forwarder", rig.domain, {});
  EXPECT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(host->start().ok());
  if (h.ok()) {
    EXPECT_TRUE(rig.router->setChain(rig.domain, {*h}).ok());
  }
  return host;
}

}  // namespace iopf::testing
