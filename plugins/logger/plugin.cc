// Registration of the logger plugin: an event subscriber only (no handler in any chain).
#include <memory>

#include "iopf/plugin_sdk.h"
#include "event_logger.h"

namespace iopf::plugins::logger {
namespace {

class LoggerPlugin final : public sdk::Plugin<v1::LoggerConfig, sdk::NoConfig> {
 public:
  static constexpr uint32_t kCapabilities = IOPF_PLUGIN_CAP_EVENTS;

  void init(const v1::LoggerConfig& config) override {
    logger_ = std::make_unique<EventLogger>(config, host(), "iopf logger " IOPF_PLUGIN_VERSION);
    logger_->open();
  }
  void onEvents(std::span<const sdk::Event> events) override { logger_->consume(events); }
  void shutdown() override { logger_->close(); }
  void counters(sdk::Counters& out) const override {
    if (logger_) logger_->counters(out);
  }

 private:
  std::unique_ptr<EventLogger> logger_;
};

}  // namespace
}  // namespace iopf::plugins::logger

IOPF_PLUGIN(iopf::plugins::logger::LoggerPlugin)
