// Registration of deny_writes: one DenyWritesHandler per domain, counters for the host.
#include <atomic>
#include <memory>

#include "deny_writes.h"
#include "iopf/plugin_sdk.h"

namespace iopf::plugins::deny_writes {
namespace {

class DenyWritesPlugin final : public sdk::Plugin<sdk::NoConfig, v1::DenyWritesConfig> {
 public:
  std::unique_ptr<sdk::Handler> createHandler(const sdk::InstanceInfo& info,
                                              const v1::DenyWritesConfig& config) override {
    return std::make_unique<DenyWritesHandler>(config, info.config_source, groups_, denied_);
  }
  void counters(sdk::Counters& out) const override {
    out.add("groups", groups_.load(std::memory_order_relaxed));
    out.add("denied", denied_.load(std::memory_order_relaxed));
  }

 private:
  std::atomic<uint64_t> groups_{0};
  std::atomic<uint64_t> denied_{0};
};

}  // namespace
}  // namespace iopf::plugins::deny_writes

IOPF_PLUGIN(iopf::plugins::deny_writes::DenyWritesPlugin)
