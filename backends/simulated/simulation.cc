#include "simulation.h"

#include "absl/strings/str_cat.h"

namespace iopf::sim {

Simulation::Simulation(Key, const Scenario& scenario, SimulationOptions options)
    : scenario_(scenario), options_(options), clock_(options.clock != nullptr ? options.clock : &steady_) {}

absl::StatusOr<std::unique_ptr<Simulation>> Simulation::create(const Scenario& scenario,
                                                               SimulationOptions options) {
  auto sim = std::make_unique<Simulation>(Key{}, scenario, options);
  if (absl::Status st = sim->build(); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat("scenario '", scenario.path, "': ", st.message()));
  }
  return sim;
}

Simulation::~Simulation() {
  stop();
}

absl::Status Simulation::build() {
  SimulatedBackend::Options bo;
  bo.feeders = options_.feeders.value_or(scenario_.feeders);
  bo.threaded = options_.threaded;
  bo.clock = clock_;
  if (scenario_.backend_idle_spin_ns) bo.idle_spin_ns = *scenario_.backend_idle_spin_ns;
  if (scenario_.max_batch != 0) bo.max_batch = scenario_.max_batch;
  bo.report_to_stderr = options_.report_to_stderr;
  const bool rtc = options_.threaded && options_.run_to_completion;
  if (rtc) {
    bo.feeders = 1;
    bo.after_pass = [this] {
      size_t work = 0;
      while (const size_t n = router_->runOnce()) work += n;
      return work;
    };
  }
  backend_ = std::make_unique<SimulatedBackend>(bo);
  for (const SimDeviceConfig& d : scenario_.devices) {
    if (auto st = backend_->addDevice(d); !st.ok()) return st.status();
  }

  RouterOptions ro;
  ro.shards = options_.shards.value_or(scenario_.shards);
  ro.threaded = options_.threaded && !rtc;
  ro.clock = clock_;
  if (scenario_.batch_cap != 0) ro.batch_cap = scenario_.batch_cap;
  if (scenario_.router_idle_spin_ns) ro.idle_spin_ns = *scenario_.router_idle_spin_ns;
  if (options_.event_capacity) {
    ro.event_capacity = *options_.event_capacity;
  } else if (scenario_.event_capacity != 0) {
    ro.event_capacity = scenario_.event_capacity;
  }
  router_ = std::make_unique<Router>(ro);
  if (auto id = router_->addBackend(*backend_); !id.ok()) return id.status();

  for (const ScenarioDomain& d : scenario_.domains) {
    auto id = router_->addDomain(d.spec);
    if (!id.ok()) return id.status();
    domain_ids_.push_back(*id);
    if (absl::Status st = backend_->addDomain(*id, d.spec.kind); !st.ok()) return st;
    auto space = std::make_shared<const AddressSpace>(d.address_space);
    std::vector<std::shared_ptr<Handler>> chain;
    for (const HandlerSpec& h : d.chain) {
      switch (h.kind) {
        case HandlerSpec::Kind::kResolver:
          chain.push_back(std::make_shared<SimResolver>(space, *backend_, d.spec.kind == DomainKind::kSva));
          break;
        case HandlerSpec::Kind::kFixed:
          chain.push_back(std::make_shared<FixedVerdict>(h.code));
          break;
        case HandlerSpec::Kind::kGuest: {
          SimGuest::Options go;
          go.delay_ns = h.delay_ns;
          go.threaded = options_.threaded;
          go.clock = clock_;
          auto guest = std::make_shared<SimGuest>(space, *backend_, go);
          guests_.push_back(guest);
          chain.push_back(guest);
          break;
        }
        case HandlerSpec::Kind::kHold:
          chain.push_back(std::make_shared<SimHold>());
          break;
        case HandlerSpec::Kind::kPlugin: {
          if (!options_.plugin_handler) {
            return absl::FailedPreconditionError(
                absl::StrCat(h.config_source, ": domain '", d.spec.name, "': plugin handler '", h.plugin,
                             "' needs a plugin host, which this tool does not provide"));
          }
          auto handler = options_.plugin_handler(*router_, *id, h);
          if (!handler.ok()) return handler.status();
          chain.push_back(std::move(*handler));
          break;
        }
      }
      handlers_.push_back(chain.back());
    }
    if (absl::Status st = router_->setChain(*id, std::move(chain)); !st.ok()) return st;
  }
  for (const ScenarioAttachment& a : scenario_.attachments) {
    const DomainId dom = domain_ids_.at(a.domain);
    if (auto st = router_->attach(backend_->routerId(a.device), a.pasid, dom); !st.ok()) return st.status();
    if (absl::Status st = backend_->attach(a.device, a.pasid, dom); !st.ok()) return st;
  }
  return absl::OkStatus();
}

std::optional<DomainId> Simulation::domainId(std::string_view name) const {
  for (size_t i = 0; i < scenario_.domains.size(); ++i) {
    if (scenario_.domains[i].spec.name == name) return domain_ids_[i];
  }
  return std::nullopt;
}

absl::Status Simulation::start() {
  return backend_->startTraffic();
}

size_t Simulation::step() {
  if (options_.threaded || stopped_) return 0;
  size_t work = backend_->step();
  size_t routed = 0;
  while (router_->runOnce() > 0) ++routed;
  work += routed;
  size_t completed = 0;
  for (auto& g : guests_) completed += g->completeDue(clock_->now());
  if (completed > 0) {
    router_->runUntilIdle();
    work += completed;
  }
  return work;
}

size_t Simulation::runUntilIdle(size_t max_rounds) {
  size_t rounds = 0;
  while (rounds < max_rounds) {
    ++rounds;
    if (step() == 0) break;
  }
  return rounds;
}

void Simulation::stop() {
  if (stopped_) return;
  stopped_ = true;
  if (router_) router_->shutdown();
  for (auto& g : guests_) g->stop();
}

}  // namespace iopf::sim
