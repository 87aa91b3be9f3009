#include "simulation.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "string_view_bridge.h"

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
  if (options_.max_devices) bo.max_devices = *options_.max_devices;
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
    auto id = addScenarioDomain(d);
    if (!id.ok()) return id.status();
    domain_ids_.push_back(*id);
  }
  for (const ScenarioAttachment& a : scenario_.attachments) {
    const DomainId dom = domain_ids_.at(a.domain);
    if (auto st = router_->attach(backend_->routerId(a.device), a.pasid, dom); !st.ok()) return st.status();
    if (absl::Status st = backend_->attach(a.device, a.pasid, dom); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::StatusOr<DomainId> Simulation::addScenarioDomain(const ScenarioDomain& d) {
  auto id = router_->addDomain(d.spec);
  if (!id.ok()) return id.status();
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
  return *id;
}

absl::StatusOr<ScenarioAddition> Simulation::addScenario(const Scenario& scenario) {
  std::lock_guard lk(add_mu_);
  if (stopped_) return absl::FailedPreconditionError("the simulation is stopped");
  if (!started_) return absl::FailedPreconditionError("the simulation has not started its traffic yet");

  // 1. Check everything before anything changes.
  std::vector<std::optional<DomainId>> domains;  // per scenario domain: the running one, or create
  for (const ScenarioDomain& d : scenario.domains) {
    std::optional<DomainId> running;
    for (const DomainInfo& info : router_->domains()) {
      if (info.removed || info.spec.name != d.spec.name) continue;
      if (info.spec.kind != d.spec.kind) {
        return absl::FailedPreconditionError(
            absl::StrCat("domain '", d.spec.name, "' runs as a ", toAbsl(toString(info.spec.kind)),
                         " domain; the scenario declares it ", toAbsl(toString(d.spec.kind))));
      }
      running = info.id;
    }
    if (!running) {
      for (const HandlerSpec& h : d.chain) {
        if (h.kind == HandlerSpec::Kind::kPlugin && !options_.plugin_handler) {
          return absl::FailedPreconditionError(absl::StrCat(
              h.config_source, ": domain '", d.spec.name, "' does not run yet and its plugin handler '",
              h.plugin, "' needs a plugin host, which this tool does not provide"));
        }
      }
      if (d.spec.shard >= 0 && static_cast<size_t>(d.spec.shard) >= router_->shardCount()) {
        return absl::InvalidArgumentError(absl::StrCat("domain '", d.spec.name, "': shard ", d.spec.shard,
                                                       " but the running router has ",
                                                       router_->shardCount()));
      }
    }
    domains.push_back(running);
  }
  for (size_t i = 0; i < scenario.devices.size(); ++i) {
    if (backend_->deviceIndex(scenario.devices[i].name)) {
      return absl::AlreadyExistsError(
          absl::StrCat("device '", scenario.devices[i].name, "' exists already in the running simulation"));
    }
  }
  const size_t running = backend_->deviceCount();
  const uint32_t limit = backend_->options().max_devices;
  if (running + scenario.devices.size() > limit) {
    return absl::ResourceExhaustedError(absl::StrCat(scenario.devices.size(),
                                                     " more devices exceed the limit of ", limit,
                                                     " simulated devices (", running, " run already)"));
  }

  // 2. Domains: create the missing ones; a running one gets a page table for the devices' retries
  //    if it has none (a domain of the daemon's config).
  ScenarioAddition out;
  std::vector<DomainId> ids;
  for (size_t i = 0; i < scenario.domains.size(); ++i) {
    const ScenarioDomain& d = scenario.domains[i];
    if (domains[i]) {
      ids.push_back(*domains[i]);
      if (backend_->pageTable(*domains[i]) == nullptr) {
        if (absl::Status st = backend_->addDomain(*domains[i], d.spec.kind); !st.ok()) return st;
      }
      continue;
    }
    auto id = addScenarioDomain(d);
    if (!id.ok()) return id.status();
    ids.push_back(*id);
    added_domains_.emplace_back(d.spec.name, *id);
    out.created_domains.emplace_back(d.spec.name, *id);
  }

  // 3. Devices: added (registered with the router, idle), attached, then started together.
  std::vector<uint32_t> indices;
  uint64_t groups = 0;
  bool bounded = true;
  for (const SimDeviceConfig& c : scenario.devices) {
    auto index = backend_->addDevice(c);
    if (!index.ok()) return index.status();
    indices.push_back(*index);
    out.devices.push_back({*index, backend_->routerId(*index), c.name});
    const WorkloadConfig& w = c.workload;
    uint64_t n = w.max_groups;
    if (w.kind == WorkloadKind::kReplay && !w.replay_loop && w.replay) {
      uint64_t captured = 0;
      for (const ReplayRequest& r : w.replay->requests) captured += r.last && !r.stop_marker ? 1 : 0;
      n = n == 0 ? captured : std::min(n, captured);
    } else if (n == 0) {
      bounded = false;
    }
    groups += n;
  }
  if (bounded) out.groups = groups;
  for (const ScenarioAttachment& a : scenario.attachments) {
    const uint32_t index = indices.at(a.device);
    if (auto st = router_->attach(backend_->routerId(index), a.pasid, ids.at(a.domain)); !st.ok()) {
      return st.status();
    }
    if (absl::Status st = backend_->attach(index, a.pasid, ids.at(a.domain)); !st.ok()) return st;
  }
  if (absl::Status st = backend_->startDevices(indices); !st.ok()) return st;
  return out;
}

std::optional<DomainId> Simulation::domainId(std::string_view name) const {
  for (size_t i = 0; i < scenario_.domains.size(); ++i) {
    if (scenario_.domains[i].spec.name == name) return domain_ids_[i];
  }
  std::lock_guard lk(add_mu_);
  for (const auto& [added, id] : added_domains_) {
    if (added == name) return id;
  }
  return std::nullopt;
}

absl::Status Simulation::start() {
  std::lock_guard lk(add_mu_);
  absl::Status st = backend_->startTraffic();
  started_ = st.ok();
  return st;
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
  std::lock_guard lk(add_mu_);
  if (stopped_) return;
  stopped_ = true;
  if (router_) router_->shutdown();
  for (auto& g : guests_) g->stop();
}

}  // namespace iopf::sim
