#include "deny_writes.h"

namespace iopf::plugins::deny_writes {

DenyWritesHandler::DenyWritesHandler(const v1::DenyWritesConfig& config, const std::string& source,
                                     std::atomic<uint64_t>& groups, std::atomic<uint64_t>& denied)
    : groups_(groups), denied_(denied) {
  for (int i = 0; i < config.ranges_size(); ++i) {
    const v1::Range& r = config.ranges(i);
    const std::string field = "config '" + source + "': field 'ranges[" + std::to_string(i) + "]";
    if (r.length() == 0) throw sdk::Error(field + ".length' must be > 0");
    if (r.start() + r.length() < r.start()) throw sdk::Error(field + "' wraps around the address space");
    ranges_.push_back({r.start(), r.start() + r.length()});
  }
  if (config.answer() == "failure") {
    answer_ = sdk::Code::kFailure;
  } else if (!config.answer().empty() && config.answer() != "invalid") {
    throw sdk::Error("config '" + source + "': field 'answer' must be 'invalid' or 'failure', got '" +
                     config.answer() + "'");
  }
}

bool DenyWritesHandler::denies(uint64_t addr) const {
  for (const Range& r : ranges_) {
    if (addr >= r.start && addr < r.end) return true;
  }
  return false;
}

sdk::Verdict DenyWritesHandler::handle(const sdk::Group& group, const sdk::Completion&) {
  groups_.fetch_add(1, std::memory_order_relaxed);
  for (const sdk::Request r : group) {
    if (r.writes() && denies(r.addr)) {
      denied_.fetch_add(1, std::memory_order_relaxed);
      return sdk::Verdict::respond(answer_);
    }
  }
  return sdk::Verdict::proceed();
}

}  // namespace iopf::plugins::deny_writes
