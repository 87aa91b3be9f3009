// deny_writes: an example handler plugin for authors (docs/plugins.md walks through it).
//
// Policy: a group that contains a write request into one of the configured ranges is answered
// INVALID (or FAILURE); any other group is passed on (Continue) to the rest of the chain.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "iopf/plugin_sdk.h"
#include "plugins/examples/deny_writes/deny_writes.pb.h"

namespace iopf::plugins::deny_writes {

// One domain's policy. Immutable after construction: handle() needs no lock.
class DenyWritesHandler final : public sdk::Handler {
 public:
  // Validates the config; throws sdk::Error naming the field and `source`.
  DenyWritesHandler(const v1::DenyWritesConfig& config, const std::string& source,
                    std::atomic<uint64_t>& groups, std::atomic<uint64_t>& denied);

  sdk::Verdict handle(const sdk::Group& group, const sdk::Completion& completion) override;

 private:
  struct Range {
    uint64_t start;
    uint64_t end;  // exclusive
  };
  bool denies(uint64_t addr) const;

  std::vector<Range> ranges_;
  sdk::Code answer_ = sdk::Code::kInvalid;
  std::atomic<uint64_t>& groups_;
  std::atomic<uint64_t>& denied_;
};

}  // namespace iopf::plugins::deny_writes
