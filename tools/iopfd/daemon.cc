#include "daemon.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/json_util.h"
#include "iopf/in_memory_backend.h"
#ifdef IOPF_HAVE_SIM
#include "sim_backend.h"
#endif
#ifdef IOPF_HAVE_QEMU_SOCKET
#include "socket_backend.h"
#endif

namespace iopf::daemon {

namespace {

// Built-in handlers, always available.
class FixedHandler final : public Handler {
 public:
  FixedHandler(std::string name, Verdict verdict) : name_(std::move(name)), verdict_(verdict) {}
  std::string_view name() const override { return name_; }
  Verdict handle(const GroupView&, const CompletionHandle&) override { return verdict_; }

 private:
  std::string name_;
  Verdict verdict_;
};

HandlerFactory fixed(const std::string& name, Verdict verdict) {
  return [name, verdict](const v1::HandlerConfig&, DomainId) -> absl::StatusOr<std::shared_ptr<Handler>> {
    return std::make_shared<FixedHandler>(name, verdict);
  };
}

// "memory": devices declared in the config; requests come from whoever holds the backend (tests).
class MemoryDaemonBackend final : public DaemonBackend {
 public:
  explicit MemoryDaemonBackend(v1::BackendConfig config) : config_(std::move(config)) {}
  Backend& backend() override { return backend_; }
  std::string type() const override { return "memory"; }
  absl::Status begin(Router&) override {
    for (const auto& d : config_.devices()) {
      DeviceSpec spec;
      spec.name = d.name();
      spec.backend_handle = d.handle();
      spec.rid = static_cast<uint16_t>(d.rid());
      spec.pri_allocation = d.pri_allocation();
      spec.pasid_bits = static_cast<uint8_t>(d.pasid_bits());
      spec.needs_pasid = d.needs_pasid();
      auto id = backend_.sink().addDevice(spec);
      if (!id.ok()) return id.status();
    }
    return absl::OkStatus();
  }
  InMemoryBackend& memory() { return backend_; }

 private:
  v1::BackendConfig config_;
  InMemoryBackend backend_;
};

}  // namespace

std::map<std::string, BackendFactory>& backendFactories() {
  static std::map<std::string, BackendFactory> factories = {
      {"memory",
       [](const v1::BackendConfig& c, const std::string&,
          const RouterOptions&) -> absl::StatusOr<std::unique_ptr<DaemonBackend>> {
         return std::make_unique<MemoryDaemonBackend>(c);
       }},
#ifdef IOPF_HAVE_SIM
      {"simulated", makeSimulatedBackend},
#endif
#ifdef IOPF_HAVE_QEMU_SOCKET
      {"qemu_socket", makeQemuSocketBackend},
#endif
  };
  return factories;
}

Daemon::Daemon() {
  handlers_["success"] = fixed("success", Verdict::respond(ResponseCode::kSuccess));
  handlers_["invalid"] = fixed("invalid", Verdict::respond(ResponseCode::kInvalid));
  handlers_["observe"] = fixed("observe", Verdict::proceed());
  handlers_["hold"] = fixed("hold", Verdict::defer());  // the deadline, a detach or shutdown answers
}

Daemon::~Daemon() { drain(); }

InMemoryBackend* Daemon::testMemory() {
  for (auto& b : backends_) {
    if (b->type() == "memory") return &static_cast<MemoryDaemonBackend&>(*b).memory();
  }
  return nullptr;
}

RouterSink* Daemon::testSink() {
  InMemoryBackend* m = testMemory();
  return m != nullptr && m->started() ? &m->sink() : nullptr;
}

bool Daemon::knownHandler(const std::string& name) const { return handlers_.count(name) != 0; }

std::optional<DeviceId> Daemon::deviceByName(const std::string& name) const {
  for (const DeviceInfo& d : router_->devices()) {
    if (!d.removed && d.spec.name == name) return d.id;
  }
  return std::nullopt;
}

absl::StatusOr<std::vector<std::shared_ptr<Handler>>> Daemon::buildChain(const LoadedConfig& lc, int di,
                                                                          DomainId domain) {
  std::vector<std::shared_ptr<Handler>> chain;
  const auto& d = lc.config.domains(di);
  for (int h = 0; h < d.chain_size(); ++h) {
    const std::string field = absl::StrCat("domains[", di, "].chain[", h, "].name");
    auto it = handlers_.find(d.chain(h).name());
    if (it == handlers_.end()) {
      return absl::InvalidArgumentError(lc.where(field) + "no handler or plugin named '" + d.chain(h).name() + "'");
    }
    auto handler = it->second(d.chain(h), domain);
    if (!handler.ok()) return absl::InvalidArgumentError(lc.where(field) + std::string(handler.status().message()));
    chain.push_back(std::move(*handler));
  }
  return chain;
}

absl::Status Daemon::applyDomainsAndAttachments(const LoadedConfig& lc, bool initial) {
  const v1::DaemonConfig& c = lc.config;
  // Validate everything first so that a bad config changes nothing.
  std::vector<DomainSpec> specs;
  for (int i = 0; i < c.domains_size(); ++i) {
    const auto& d = c.domains(i);
    DomainSpec s;
    s.name = d.name();
    s.kind = *parseKind(d.kind());
    s.deadline_ns = int64_t{d.deadline_ms() == 0 ? 1000 : d.deadline_ms()} * 1'000'000;
    s.timeout_code = *parseCode(d.timeout_code());
    s.default_code = *parseCode(d.default_code());
    s.max_open_groups = d.max_open_groups();
    s.shard = d.shard() > 0 ? d.shard() : -1;
    if (s.shard >= static_cast<int32_t>(router_->shardCount())) {
      return absl::InvalidArgumentError(lc.where(absl::StrCat("domains[", i, "].shard")) +
                                        absl::StrCat("shard ", s.shard, " but the router has ", router_->shardCount()));
    }
    for (int h = 0; h < d.chain_size(); ++h) {
      if (!knownHandler(d.chain(h).name())) {
        return absl::InvalidArgumentError(lc.where(absl::StrCat("domains[", i, "].chain[", h, "].name")) +
                                          "no handler or plugin named '" + d.chain(h).name() + "'");
      }
    }
    if (!initial) {
      if (auto it = domains_.find(s.name); it != domains_.end()) {
        for (const DomainInfo& info : router_->domains()) {
          if (info.id != it->second) continue;
          if (info.spec.kind != s.kind || info.spec.deadline_ns != s.deadline_ns ||
              info.spec.timeout_code != s.timeout_code || info.spec.default_code != s.default_code ||
              info.spec.max_open_groups != s.max_open_groups) {
            return absl::FailedPreconditionError(
                lc.where(absl::StrCat("domains[", i, "]")) +
                "only the chain of an existing domain changes on reload; restart iopfd to change its kind, "
                "deadline, codes or bounds");
          }
        }
      }
    }
    specs.push_back(s);
  }
  std::vector<std::tuple<DeviceId, std::optional<uint32_t>, std::string>> wanted;
  for (int i = 0; i < c.attachments_size(); ++i) {
    const auto& a = c.attachments(i);
    auto dev = deviceByName(a.device());
    if (!dev) {
      return absl::InvalidArgumentError(lc.where(absl::StrCat("attachments[", i, "].device")) +
                                        "no device named '" + a.device() + "'");
    }
    std::optional<uint32_t> pasid;
    if (a.has_pasid()) pasid = a.pasid();
    wanted.emplace_back(*dev, pasid, a.domain());
  }

  // Domains: add new ones, set every chain, retire the ones no longer configured.
  std::set<std::string> keep;
  for (int i = 0; i < c.domains_size(); ++i) {
    const std::string& name = specs[i].name;
    keep.insert(name);
    DomainId id;
    if (auto it = domains_.find(name); it != domains_.end()) {
      id = it->second;
    } else {
      auto added = router_->addDomain(specs[i]);
      if (!added.ok()) return added.status();
      id = *added;
      domains_[name] = id;
    }
    auto chain = buildChain(lc, i, id);
    if (!chain.ok()) return chain.status();
    if (absl::Status st = router_->setChain(id, std::move(*chain)); !st.ok()) return st;
  }
  for (auto it = domains_.begin(); it != domains_.end();) {
    if (!keep.count(it->first) && it->first.rfind("scenario:", 0) != 0) {
      (void)router_->removeDomain(it->second);
      it = domains_.erase(it);
    } else {
      ++it;
    }
  }
  // Attachments: the configured set (replacing what differs). Attachments made through the API
  // stay unless the config names the same (device, pasid|RID).
  for (const auto& [dev, pasid, domain] : wanted) {
    auto epoch = router_->attach(dev, pasid, domains_.at(domain));
    if (!epoch.ok()) return epoch.status();
  }
  return absl::OkStatus();
}

absl::Status Daemon::start(const DaemonOptions& options, std::optional<LoadedConfig> preloaded) {
  LoadedConfig lc;
  if (preloaded) {
    lc = std::move(*preloaded);
  } else {
    auto loaded = loadConfig(options.config_path);
    if (!loaded.ok()) return loaded.status();
    lc = std::move(*loaded);
  }
  const v1::DaemonConfig& c = lc.config;
  RouterOptions ro;
  ro.shards = c.shards();
  if (c.event_capacity() != 0) ro.event_capacity = c.event_capacity();

  const std::string dir = std::filesystem::path(lc.path).parent_path().string();
  for (int i = 0; i < c.backends_size(); ++i) {
    const auto& bc = c.backends(i);
    auto factory = backendFactories().find(bc.type());
    if (factory == backendFactories().end()) {
      return absl::InvalidArgumentError(lc.where(absl::StrCat("backends[", i, "].type")) + "'" + bc.type() +
                                        "' is not built into this iopfd");
    }
    auto backend = factory->second(bc, dir, ro);
    if (!backend.ok()) {
      return absl::Status(backend.status().code(),
                          lc.where(absl::StrCat("backends[", i, "]")) + std::string(backend.status().message()));
    }
    if (Router* own = (*backend)->ownRouter()) {
      if (c.backends_size() != 1) {
        return absl::InvalidArgumentError(lc.where(absl::StrCat("backends[", i, "].type")) + "a '" + bc.type() +
                                          "' backend brings its own router and runs alone");
      }
      router_ = own;
    }
    (*backend)->registerHandlers(handlers_);
    backends_.push_back(std::move(*backend));
  }
  if (router_ == nullptr) {
    owned_router_ = std::make_unique<Router>(ro);
    router_ = owned_router_.get();
    for (size_t i = 0; i < backends_.size(); ++i) {
      if (auto id = router_->addBackend(backends_[i]->backend()); !id.ok()) return id.status();
      if (absl::Status st = backends_[i]->begin(*router_); !st.ok()) {
        return absl::Status(st.code(), lc.where(absl::StrCat("backends[", i, "]")) + std::string(st.message()));
      }
    }
  }
  if (absl::Status st = loadPlugins(lc); !st.ok()) return st;
  if (absl::Status st = applyDomainsAndAttachments(lc, true); !st.ok()) return st;

  api::ServiceOptions so;
  so.daemon_version = kVersion;
  if (c.limits().max_watchers() != 0) so.max_watchers = c.limits().max_watchers();
  if (c.limits().max_list_page() != 0) so.max_list_page = c.limits().max_list_page();
  if (c.limits().recent_groups() != 0) so.recent_groups = c.limits().recent_groups();
  if (c.limits().watch_cpu_cores() != 0) so.watch_cpu_cores = c.limits().watch_cpu_cores();  // checked by the loader
  if (!c.token_file().empty()) {
    std::ifstream in(c.token_file());
    if (!in) return absl::InvalidArgumentError(lc.where("token_file") + "cannot read '" + c.token_file() + "'");
    std::getline(in, so.token);
    if (so.token.empty()) return absl::InvalidArgumentError(lc.where("token_file") + "the token file is empty");
  }
  service_ = std::make_unique<api::RouterService>(*router_, *this, so);

  api::ServerOptions sv;
  if (!options.listen.empty()) {
    sv.listen = options.listen;
  } else if (c.listen_size() > 0) {
    sv.listen.assign(c.listen().begin(), c.listen().end());
  }
  sv.tls_cert_file = c.tls().cert_file();
  sv.tls_key_file = c.tls().key_file();
  sv.tls_client_ca_file = c.tls().client_ca_file();
  if (c.socket_mode() != 0) sv.socket_mode = c.socket_mode();
  if (c.limits().max_message_bytes() != 0) sv.max_message_bytes = static_cast<int>(c.limits().max_message_bytes());
  auto server = api::ApiServer::start(*service_, sv);
  if (!server.ok()) return server.status();
  server_ = std::move(*server);
  {
    std::lock_guard lk(mu_);
    config_ = std::move(lc);
  }
  generation_ = 1;
  for (auto& b : backends_) {
    if (absl::Status st = b->startTraffic(); !st.ok()) return st;
  }
  health_thread_ = std::thread([this] { healthLoop(); });
  return absl::OkStatus();
}

void Daemon::healthLoop() {
  constexpr auto kPeriod = std::chrono::milliseconds(200);
  bool serving = true;
  std::vector<std::string> names;  // backends change only on restart
  {
    std::lock_guard lk(mu_);
    for (const auto& b : config_.config.backends()) names.push_back(b.name());
  }
  std::unique_lock lk(health_mu_);
  while (!health_stop_) {
    std::vector<v1::BackendStatus> now;
    bool all_up = true;
    lk.unlock();
    for (size_t i = 0; i < backends_.size(); ++i) {
      const absl::Status st = backends_[i]->backend().health();
      v1::BackendStatus s;
      s.set_name(i < names.size() ? names[i] : "");
      s.set_type(backends_[i]->type());
      s.set_up(st.ok());
      if (!st.ok()) s.set_message(std::string(st.message()));
      all_up = all_up && st.ok();
      now.push_back(std::move(s));
    }
    lk.lock();
    if (health_stop_) break;
    for (size_t i = 0; i < now.size(); ++i) {
      const bool was_up = i >= health_.size() || health_[i].up();
      if (was_up != now[i].up()) {
        std::fprintf(stderr, "iopfd: backend '%s' (%s) is %s%s%s\n", now[i].name().c_str(), now[i].type().c_str(),
                     now[i].up() ? "up again" : "down", now[i].up() ? "" : ": ", now[i].message().c_str());
      }
    }
    health_ = std::move(now);
    if (all_up != serving) {
      serving = all_up;
      server_->setServing(serving);
    }
    health_cv_.wait_for(lk, kPeriod);
  }
}

void Daemon::stopHealthLoop() {
  {
    std::lock_guard lk(health_mu_);
    health_stop_ = true;
  }
  health_cv_.notify_all();
  if (health_thread_.joinable()) health_thread_.join();
}

namespace {
std::string structJson(const google::protobuf::Struct& s) {
  std::string out;
  (void)google::protobuf::util::MessageToJsonString(s, &out);
  return out.empty() ? "{}" : out;
}
}  // namespace

absl::Status Daemon::loadPlugins(const LoadedConfig& lc) {
  const v1::DaemonConfig& c = lc.config;
  if (c.plugin_dirs_size() == 0) {
    if (c.plugins_size() > 0) {
      return absl::InvalidArgumentError(lc.where("plugins") + "plugins are listed but no plugin_dirs to find them in");
    }
    return absl::OkStatus();
  }
  // The plugin host skips a world-writable directory (plugin code anyone could replace); a daemon
  // told to load from one refuses to start, naming it, rather than running without its plugins.
  for (int i = 0; i < c.plugin_dirs_size(); ++i) {
    struct stat st;
    if (::stat(c.plugin_dirs(i).c_str(), &st) == 0 && (st.st_mode & S_IWOTH) != 0) {
      char mode[16];
      std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
      return absl::PermissionDeniedError(lc.where(absl::StrCat("plugin_dirs[", i, "]")) + "'" + c.plugin_dirs(i) +
                                         "' is world-writable (mode " + mode +
                                         "): refused, anyone could replace plugin code");
    }
  }
  PluginHostOptions po;
  po.search_paths.assign(c.plugin_dirs().begin(), c.plugin_dirs().end());
  plugins_ = std::make_unique<PluginHost>(router_, po);
  candidates_ = plugins_->discover();
  std::map<std::string, std::string> wanted;  // id → plugin-wide config JSON
  for (int i = 0; i < c.plugins_size(); ++i) wanted[c.plugins(i).id()] = structJson(c.plugins(i).config());
  for (const auto& d : c.domains()) {
    for (const auto& h : d.chain()) {
      for (const PluginCandidate& cand : candidates_) {
        if (cand.id == h.name() && !wanted.count(cand.id)) wanted[cand.id] = "{}";
      }
    }
  }
  for (int i = 0; i < c.plugins_size(); ++i) {
    const std::string& id = c.plugins(i).id();
    const auto it = std::find_if(candidates_.begin(), candidates_.end(),
                                 [&](const PluginCandidate& p) { return p.id == id; });
    if (it == candidates_.end()) {
      return absl::NotFoundError(lc.where(absl::StrCat("plugins[", i, "].id")) + "no plugin '" + id +
                                 "' in plugin_dirs");
    }
    if (!it->status.ok()) {
      return absl::Status(it->status.code(), lc.where(absl::StrCat("plugins[", i, "].id")) +
                                                 std::string(it->status.message()));
    }
  }
  for (const auto& entry : wanted) {
    const std::string& id = entry.first;  // not a structured binding: clang 14 cannot capture those
    const std::string& json = entry.second;
    // A plugin that fails to load is reported and left out; chains naming it fail validation with a
    // message naming the handler, and the daemon keeps running without it.
    if (absl::Status st = plugins_->load(id, json); !st.ok()) {
      std::fprintf(stderr, "iopfd: plugin '%s' not loaded: %s\n", id.c_str(), std::string(st.message()).c_str());
      continue;
    }
    const std::string source = lc.path;
    handlers_[id] = [this, id, source](const v1::HandlerConfig& hc,
                                       DomainId domain) -> absl::StatusOr<std::shared_ptr<Handler>> {
      PluginHandlerConfig cfg;
      cfg.json = structJson(hc.config());
      cfg.source = source;
      return plugins_->createHandler(id, domain, cfg);
    };
  }
  return plugins_->start();
}

void Daemon::drain() {
  if (drained_.exchange(true)) return;
  stopHealthLoop();
  if (server_) server_->setServing(false);
  if (service_) service_->beginDrain();
  if (router_) router_->shutdown();  // every open group answered INVALID, origin shutdown
  if (plugins_) plugins_->shutdown();
  if (server_) server_->shutdown(std::chrono::seconds(2));
}

void Daemon::fillInfo(v1::Info& info) const {
  for (const auto& b : backends_) info.add_backends(b->type());
  info.set_config_generation(generation_.load());
  {
    std::lock_guard hk(health_mu_);
    for (const v1::BackendStatus& s : health_) *info.add_backend_status() = s;
  }
  std::lock_guard lk(mu_);
  info.set_config_path(config_.path);
}

std::vector<v1::Plugin> Daemon::plugins() const {
  std::vector<v1::Plugin> out;
  for (const PluginCandidate& cand : candidates_) {
    v1::Plugin p;
    p.set_name(cand.id);
    p.set_version(cand.version);
    p.set_file(cand.library_path);
    p.set_abi(absl::StrCat(cand.abi.major, ".", cand.abi.minor));
    if (!cand.status.ok()) {
      p.set_state("refused");
      p.set_message(std::string(cand.status.message()));
    } else if (auto st = plugins_->status(cand.id)) {
      p.set_state(std::string(toString(st->state)));
      p.set_message(st->error);
      uint64_t quarantined = 0;
      for (const auto& h : st->handlers) quarantined += h.quarantined ? 1 : 0;
      if (quarantined > 0) p.set_message(absl::StrCat(quarantined, " handler(s) quarantined"));
    } else {
      p.set_state("available");
    }
    out.push_back(std::move(p));
  }
  return out;
}

absl::StatusOr<uint64_t> Daemon::reloadConfig() {
  std::lock_guard lk(mu_);
  if (config_.path.empty()) return absl::FailedPreconditionError("iopfd runs without a config file");
  auto fresh = loadConfig(config_.path, [this](const std::string& n) { return knownHandler(n); });
  if (!fresh.ok()) return fresh.status();
  const v1::DaemonConfig& a = config_.config;
  const v1::DaemonConfig& b = fresh->config;
  auto same = [](const auto& x, const auto& y) { return x.SerializeAsString() == y.SerializeAsString(); };
  if (a.backends_size() != b.backends_size() ||
      !std::equal(a.backends().begin(), a.backends().end(), b.backends().begin(), same) ||
      !same(a.tls(), b.tls()) || a.shards() != b.shards() ||
      !std::equal(a.listen().begin(), a.listen().end(), b.listen().begin(), b.listen().end())) {
    return absl::FailedPreconditionError(config_.path +
                                         ": backends, listen addresses, TLS and shards change only on restart");
  }
  if (absl::Status st = applyDomainsAndAttachments(*fresh, false); !st.ok()) return st;
  config_ = std::move(*fresh);
  return ++generation_;
}

absl::StatusOr<std::vector<std::shared_ptr<Handler>>> Daemon::resolveChain(DomainId domain,
                                                                           const std::vector<std::string>& names) {
  std::vector<std::shared_ptr<Handler>> chain;
  for (const std::string& n : names) {
    auto it = handlers_.find(n);
    if (it == handlers_.end()) return absl::NotFoundError("no handler or plugin named '" + n + "'");
    v1::HandlerConfig hc;
    hc.set_name(n);
    auto h = it->second(hc, domain);
    if (!h.ok()) return h.status();
    chain.push_back(std::move(*h));
  }
  return chain;
}

absl::Status Daemon::injectFault(const v1::InjectFaultRequest& request) {
  absl::Status last = absl::UnimplementedError("no backend supports fault injection");
  for (const auto& b : backends_) {
    last = b->injectFault(request);
    if (last.code() != absl::StatusCode::kUnimplemented) return last;
  }
  return last;
}

absl::Status Daemon::runScenario(const std::string& path, v1::RunScenarioResponse& out) {
  absl::Status last = absl::UnimplementedError("no backend can run scenarios");
  if (drained_.load()) return absl::UnavailableError("iopfd is draining");
  for (const auto& b : backends_) {
    last = b->runScenario(path, out);
    if (last.code() != absl::StatusCode::kUnimplemented) return last;
  }
  return last;
}

}  // namespace iopf::daemon
