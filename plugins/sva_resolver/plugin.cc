// Registration of sva_resolver: one SvaResolverHandler per domain; counters summed over them.
#include <memory>
#include <mutex>
#include <vector>

#include "iopf/plugin_sdk.h"
#include "sva_resolver.h"

namespace iopf::plugins::sva_resolver {
namespace {

class SvaResolverPlugin final : public sdk::Plugin<sdk::NoConfig, v1::SvaResolverConfig> {
 public:
  std::unique_ptr<sdk::Handler> createHandler(const sdk::InstanceInfo& info,
                                              const v1::SvaResolverConfig& config) override {
    auto stats = std::make_unique<ResolverStats>();
    auto handler = std::make_unique<SvaResolverHandler>(
        config, info.config_source.empty() ? "domain " + info.domain_name : info.config_source, host(),
        *stats);
    std::lock_guard lk(mu_);
    stats_.push_back(std::move(stats));  // kept after the handler is gone: totals never go back
    return handler;
  }

  void counters(sdk::Counters& out) const override {
    ResolverStatsTotals t;
    {
      std::lock_guard lk(mu_);
      for (const auto& s : stats_) t.add(*s);
    }
    out.add("groups", t.groups);
    out.add("requests", t.requests);
    out.add("resolved_groups", t.resolved);
    out.add("invalid_groups", t.invalid_groups);
    out.add("pages_mapped", t.pages_mapped);
    out.add("fault_around_pages", t.fault_around);
    out.add("coalesced", t.coalesced);
    out.add("maps_refreshes", t.refreshes);
    out.add("maps_bad_lines", t.bad_lines);
    for (size_t i = 0; i < t.invalid.size(); ++i) out.add(counterName(static_cast<Cause>(i)), t.invalid[i]);
  }

 private:
  struct ResolverStatsTotals {
    uint64_t groups = 0, requests = 0, resolved = 0, invalid_groups = 0, pages_mapped = 0, fault_around = 0,
             coalesced = 0, refreshes = 0, bad_lines = 0;
    std::array<uint64_t, static_cast<size_t>(Cause::kCount)> invalid{};
    void add(const ResolverStats& s) {
      constexpr auto r = std::memory_order_relaxed;
      groups += s.groups.load(r);
      requests += s.requests.load(r);
      resolved += s.resolved_groups.load(r);
      invalid_groups += s.invalid_groups.load(r);
      pages_mapped += s.pages_mapped.load(r);
      fault_around += s.fault_around_pages.load(r);
      coalesced += s.coalesced.load(r);
      refreshes += s.maps_refreshes.load(r);
      bad_lines += s.maps_bad_lines.load(r);
      for (size_t i = 0; i < invalid.size(); ++i) invalid[i] += s.invalid[i].load(r);
    }
  };

  mutable std::mutex mu_;
  // Owned here and kept after their handler is gone (handlers never outlive the plugin).
  std::vector<std::unique_ptr<ResolverStats>> stats_;  // guarded by mu_
};

}  // namespace
}  // namespace iopf::plugins::sva_resolver

IOPF_PLUGIN(iopf::plugins::sva_resolver::SvaResolverPlugin)
