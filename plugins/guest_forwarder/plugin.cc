// Registration of the guest forwarder plugin: config -> registry, transports, handlers.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "device_registry.h"
#include "forwarder.h"
#include "iopf/plugin_sdk.h"
#include "iopf_transport.h"
#include "plugins/guest_forwarder/guest_forwarder.pb.h"
#include "vhost_transport.h"

namespace iopf::plugins::guest_forwarder {
namespace {

namespace gf = iopf::guest_forwarder;

class ForwardingHandler final : public sdk::Handler {
 public:
  ForwardingHandler(gf::Forwarder* forwarder, const sdk::Host* host, int64_t deadline_ns, bool names_backends)
      : forwarder_(forwarder), host_(host), deadline_ns_(deadline_ns), names_backends_(names_backends) {}

  sdk::Verdict handle(const sdk::Group& group, const sdk::Completion& completion) override {
    std::string backend;
    if (names_backends_) {
      if (auto d = host_->device(group.device())) backend = std::move(d->backend_name);
    }
    return forwarder_->handle(group, completion, backend, deadline_ns_);
  }

 private:
  gf::Forwarder* forwarder_;
  const sdk::Host* host_;
  int64_t deadline_ns_;
  bool names_backends_;
};

class GuestForwarderPlugin final : public sdk::Plugin<v1::GuestForwarderConfig, sdk::NoConfig> {
 public:
  void init(const v1::GuestForwarderConfig& config) override {
    config_ = config;
    std::vector<std::string> vm_names;
    for (int i = 0; i < config.vms_size(); ++i) {
      const v1::Vm& vm = config.vms(i);
      const std::string field = absl::StrCat("vms[", i, "]");
      if (vm.name().empty())
        throw sdk::Error(absl::StrCat("plugin config: field '", field, ".name' is empty"));
      if (std::find(vm_names.begin(), vm_names.end(), vm.name()) != vm_names.end()) {
        throw sdk::Error(
            absl::StrCat("plugin config: field '", field, ".name': vm '", vm.name(), "' is declared twice"));
      }
      vm_names.push_back(vm.name());
      if (vm.transport() == "vhost-iotlb") {
        if (vm.vhost_socket().empty()) {
          throw sdk::Error(absl::StrCat("plugin config: field '", field,
                                        ".vhost_socket' is required for transport "
                                        "'vhost-iotlb' (vm '",
                                        vm.name(), "')"));
        }
      } else if (vm.transport() == "iopf") {
        if (config.iopf_socket().empty()) {
          throw sdk::Error(absl::StrCat("plugin config: field '", field,
                                        ".transport' is 'iopf' but 'iopf_socket' "
                                        "is empty (vm '",
                                        vm.name(), "')"));
        }
      } else {
        throw sdk::Error(absl::StrCat("plugin config: field '", field,
                                      ".transport' must be 'iopf' or 'vhost-iotlb', got '", vm.transport(),
                                      "'"));
      }
    }
    gf::ForwarderOptions fo;
    if (config.max_open_groups_per_vm() > 0) fo.max_open_per_vm = config.max_open_groups_per_vm();
    fo.answer_timeout_ns = static_cast<int64_t>(config.answer_timeout_ms()) * 1'000'000;
    fo.now = [this] { return host().now(); };
    fo.log = [this](sdk::LogLevel level, const std::string& text) { host().log(level, text); };
    forwarder_ = std::make_unique<gf::Forwarder>(&registry_, std::move(fo));
    for (const v1::Vm& vm : config.vms()) {
      if (vm.max_open_groups() > 0) forwarder_->setVmBound(vm.name(), vm.max_open_groups());
    }
    for (int i = 0; i < config.devices_size(); ++i) {
      const v1::DeviceBinding& b = config.devices(i);
      const std::string field = absl::StrCat("devices[", i, "]");
      if (std::find(vm_names.begin(), vm_names.end(), b.vm()) == vm_names.end()) {
        throw sdk::Error(
            absl::StrCat("plugin config: field '", field, ".vm': no vm named '", b.vm(), "' in 'vms'"));
      }
      if (b.guest_rid() > 0xffff || (b.has_host_rid() && b.host_rid() > 0xffff)) {
        throw sdk::Error(
            absl::StrCat("plugin config: field '", field, ".guest_rid'/'host_rid' must fit 16 bits"));
      }
      gf::GuestDevice d;
      d.backend = b.backend();
      d.backend_handle = b.backend_handle();
      if (b.has_host_rid()) d.host_rid = static_cast<uint16_t>(b.host_rid());
      d.vm = b.vm();
      d.viommu_id = b.viommu_id();
      d.virt_id = b.virt_id();
      d.guest_rid = static_cast<uint16_t>(b.guest_rid());
      for (const v1::PasidMapping& m : b.pasids()) d.pasids.push_back({m.host(), m.guest()});
      d.pri_allocation = b.pri_allocation();
      d.needs_pasid = b.needs_pasid();
      if (absl::Status st = registry_.add(std::move(d)); !st.ok()) {
        throw sdk::Error(absl::StrCat("plugin config: field '", field, "': ", std::string(st.message())));
      }
    }
  }

  void postInit() override {
    auto log = [this](sdk::LogLevel level, const std::string& text) { host().log(level, text); };
    if (!config_.iopf_socket().empty()) {
      iopf_ = std::make_unique<gf::IopfForwardServer>(
          forwarder_.get(), gf::IopfForwardServer::Options{config_.iopf_socket(), 64, 256, log});
      if (absl::Status st = iopf_->start(); !st.ok()) throw sdk::Error(std::string(st.message()));
    }
    for (const v1::Vm& vm : config_.vms()) {
      if (vm.transport() != "vhost-iotlb") continue;
      auto t = std::make_unique<gf::VhostForwardTransport>(
          forwarder_.get(), gf::VhostForwardTransport::Options{vm.name(), vm.vhost_socket(), log});
      if (absl::Status st = t->start(); !st.ok()) throw sdk::Error(std::string(st.message()));
      vhost_.push_back(std::move(t));
    }
    const int64_t interval_ms = config_.sweep_interval_ms() > 0 ? config_.sweep_interval_ms() : 10;
    sweeper_ = std::thread([this, interval_ms] {
      std::unique_lock lk(sweep_mu_);
      while (!sweep_stop_) {
        sweep_cv_.wait_for(lk, std::chrono::milliseconds(interval_ms));
        if (sweep_stop_) break;
        lk.unlock();
        forwarder_->expire();
        lk.lock();
      }
    });
  }

  void shutdown() override {
    {
      std::lock_guard lk(sweep_mu_);
      sweep_stop_ = true;
    }
    sweep_cv_.notify_all();
    if (sweeper_.joinable()) sweeper_.join();
    if (iopf_) iopf_->stop();
    for (auto& t : vhost_) t->stop();
    if (forwarder_) forwarder_->drainAll(gf::DrainReason::kShutdown);
  }

  std::unique_ptr<sdk::Handler> createHandler(const sdk::InstanceInfo& info, const sdk::NoConfig&) override {
    int64_t deadline = 0;
    if (auto d = host().domain(info.domain)) deadline = d->deadline_ns;
    return std::make_unique<ForwardingHandler>(forwarder_.get(), &host(), deadline,
                                               registry_.namesBackends());
  }

  void counters(sdk::Counters& out) const override {
    if (!forwarder_) return;
    forwarder_->addCounters(out);
    out.add("registry_devices", registry_.size());
    if (iopf_) iopf_->addCounters(out);
    for (const auto& t : vhost_) t->addCounters(out);
  }

 private:
  v1::GuestForwarderConfig config_;
  gf::DeviceRegistry registry_;
  std::unique_ptr<gf::Forwarder> forwarder_;
  std::unique_ptr<gf::IopfForwardServer> iopf_;
  std::vector<std::unique_ptr<gf::VhostForwardTransport>> vhost_;
  std::thread sweeper_;
  std::mutex sweep_mu_;
  std::condition_variable sweep_cv_;
  bool sweep_stop_ = false;
};

}  // namespace
}  // namespace iopf::plugins::guest_forwarder

IOPF_PLUGIN(iopf::plugins::guest_forwarder::GuestForwarderPlugin)
