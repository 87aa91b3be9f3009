// bench_trivial: the cheapest handler plugin (SUCCESS for every group), the C-ABI counterpart of
// bench_common's in-process trivialHandler() for the plugin_chain comparison.
#include "iopf/plugin_sdk.h"

namespace {

class Success final : public iopf::sdk::Handler {
 public:
  iopf::sdk::Verdict handle(const iopf::sdk::Group&, const iopf::sdk::Completion&) override {
    return iopf::sdk::Verdict::respond(iopf::sdk::Code::kSuccess);
  }
};

class BenchTrivialPlugin final : public iopf::sdk::Plugin<> {
 public:
  std::unique_ptr<iopf::sdk::Handler> createHandler(const iopf::sdk::InstanceInfo&,
                                                    const iopf::sdk::NoConfig&) override {
    return std::make_unique<Success>();
  }
};

}  // namespace

IOPF_PLUGIN(BenchTrivialPlugin)
