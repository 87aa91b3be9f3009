// Helpers of the guest forwarder unit tests: host groups and completions built by hand (the C ABI
// structs), a recording completion sink, and a fake VM transport.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "forwarder.h"
#include "iopf/plugin_abi.h"
#include "iopf/plugin_sdk.h"

namespace iopf::guest_forwarder::testing {

// Records completions per group id; refuses a second one like the router does.
class Completions {
 public:
  sdk::Completion make(uint64_t group) {
    iopf_plugin_completion raw{};
    raw.struct_size = sizeof raw;
    raw.group_id = group;
    raw.complete = &Completions::complete;
    raw.opaque[0] = reinterpret_cast<uint64_t>(this);
    return sdk::Completion(raw);
  }
  std::optional<uint32_t> code(uint64_t group) const {
    std::lock_guard lk(mu_);
    const auto it = codes_.find(group);
    if (it == codes_.end()) return std::nullopt;
    return it->second;
  }
  size_t count() const {
    std::lock_guard lk(mu_);
    return codes_.size();
  }
  uint64_t refused() const {
    std::lock_guard lk(mu_);
    return refused_;
  }
  // The router timed the group out (a later completion is refused).
  void closeByRouter(uint64_t group) {
    std::lock_guard lk(mu_);
    codes_.emplace(group, IOPF_CODE_INVALID);
  }

 private:
  static int32_t complete(const iopf_plugin_completion* self, uint32_t code) {
    auto* c = reinterpret_cast<Completions*>(self->opaque[0]);
    std::lock_guard lk(c->mu_);
    if (!c->codes_.emplace(self->group_id, code).second) {
      ++c->refused_;
      return 0;
    }
    return 1;
  }
  mutable std::mutex mu_;
  std::map<uint64_t, uint32_t> codes_;
  uint64_t refused_ = 0;
};

// One host group as the plugin host hands it over.
struct HostGroup {
  HostGroup(uint64_t id, uint64_t handle, uint16_t rid, std::optional<uint32_t> pasid, uint32_t prgi,
            std::vector<std::pair<uint64_t, uint8_t>> pages, int64_t arrival_ns = 0) {
    for (size_t i = 0; i < pages.size(); ++i) {
      iopf_plugin_request r{};
      r.addr = pages[i].first;
      r.perm = pages[i].second;
      r.grpid = prgi;
      r.arrival_ns = arrival_ns;
      if (pasid) {
        r.pasid = *pasid;
        r.flags |= IOPF_REQUEST_PASID_VALID;
      }
      if (i + 1 == pages.size()) r.flags |= IOPF_REQUEST_LAST;
      requests.push_back(r);
    }
    raw.struct_size = sizeof raw;
    raw.request_size = sizeof(iopf_plugin_request);
    raw.group_id = id;
    raw.backend_handle = handle;
    raw.requests = requests.data();
    raw.request_count = static_cast<uint32_t>(requests.size());
    raw.domain = 1;
    raw.device = 1;
    raw.grpid = prgi;
    raw.rid = rid;
    if (pasid) {
      raw.pasid = *pasid;
      raw.flags |= IOPF_GROUP_PASID_VALID;
    }
  }
  sdk::Group view() const { return sdk::Group(raw); }
  std::vector<iopf_plugin_request> requests;
  iopf_plugin_group raw{};
};

class FakeTransport final : public VmTransport {
 public:
  bool forward(const ForwardedGroup& g) override {
    std::lock_guard lk(mu_);
    if (!up) return false;
    sent.push_back(g);
    return true;
  }
  std::vector<ForwardedGroup> take() {
    std::lock_guard lk(mu_);
    return std::move(sent);
  }
  bool up = true;

 private:
  std::mutex mu_;
  std::vector<ForwardedGroup> sent;
};

}  // namespace iopf::guest_forwarder::testing
