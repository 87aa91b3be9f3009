#include "simulated_backend.h"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <stdexcept>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "string_view_bridge.h"

namespace iopf::sim {

namespace {

void cpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

std::string formatRid(uint32_t segment, uint16_t rid) {
  return absl::StrFormat("%04x:%02x:%02x.%x", segment, rid >> 8, (rid >> 3) & 0x1f, rid & 7);
}

}  // namespace

// One device I/O thread: the only thread that feeds its devices. Responses reach it through an
// inbox (respond() runs on shard threads); everything else it touches is its own.
class SimulatedBackend::Feeder final : public DeviceIo {
 public:
  Feeder(SimulatedBackend& backend, uint32_t index) : backend_(backend), index_(index) {
    batch_.reserve(backend.options_.max_batch + 64);
  }

  void addDevice(SimDevice* device) { devices_.push_back(device); }
  // Hot-add (any thread): the feeder takes the device over at its next pass and starts it there,
  // so every per-device state stays the feeder's own.
  void adopt(SimDevice* device) {
    bool notify;
    {
      std::lock_guard lk(inbox_mu_);
      adopted_.push_back(device);
      has_adopted_.store(true, std::memory_order_release);
      wake_flag_ = true;
      notify = sleeping_;
    }
    if (notify) cv_.notify_one();
  }

  // --- DeviceIo ---
  void push(const PageRequest& request) override { batch_.push_back(request); }
  uint64_t flush() override {
    if (batch_.empty() || closed_ || backend_.sink_ == nullptr) {
      batch_.clear();
      return backend_.overflow_epoch_.load(std::memory_order_acquire);
    }
    uint64_t epoch;
    {
      std::shared_lock lk(backend_.sink_mu_);
      backend_.sink_->deliver(batch_);
      epoch = backend_.overflow_epoch_.load(std::memory_order_acquire);
    }
    batch_.clear();
    return epoch;
  }
  absl::Status removeDevice(DeviceId device) override {
    std::shared_lock lk(backend_.sink_mu_);
    return backend_.sink_->removeDevice(device);
  }
  void requestOverflow() override { backend_.overflow_requested_.store(true, std::memory_order_release); }
  void recordLatency(int64_t ns) override {
    latency_.record(static_cast<uint64_t>(std::max<int64_t>(0, ns)));
  }
  void reportBogus(const SimDevice& device, const Response& r, std::string_view why) override {
    const SimDeviceConfig& c = device.config();
    backend_.report(absl::StrCat("ROUTER BUG: simulated device '", c.name, "' (", formatRid(c.segment, c.rid),
                                 "): response group=", r.group, " grpid=", r.grpid,
                                 " cookie=", r.cookie ? absl::StrCat(*r.cookie) : "-",
                                 " pasid=", r.pasid ? absl::StrCat(*r.pasid) : "-",
                                 " code=", toAbsl(toString(r.code)), " origin=", toAbsl(toString(r.origin)),
                                 " requests=", r.request_count, ": ", toAbsl(why)));
  }

  // --- inbox (any thread) ---
  void receive(std::span<const Response> responses, int64_t received_ns, bool all) {
    bool notify = false;
    {
      std::lock_guard lk(inbox_mu_);
      if (closed_) {
        // The feeder is gone (shutdown drain): apply inline, serialised by the inbox lock.
        for (const Response& r : responses) {
          if (all || owns(r)) apply(r, received_ns);
        }
        return;
      }
      for (const Response& r : responses) {
        if (all || owns(r)) inbox_.push_back({r, received_ns});
      }
      has_inbox_.store(true, std::memory_order_release);
      notify = sleeping_;
    }
    if (notify) cv_.notify_one();
  }
  void wake() {
    bool notify;
    {
      std::lock_guard lk(inbox_mu_);
      wake_flag_ = true;
      notify = sleeping_;
    }
    if (notify) cv_.notify_one();
  }

  // --- the feeder's own thread (or step()) ---
  void startTraffic(int64_t now) {
    for (SimDevice* d : devices_) d->startTraffic(now);
  }

  size_t pass() {
    const int64_t now = backend_.clock_->now();
    size_t work = 0;
    if (has_adopted_.load(std::memory_order_acquire)) {
      std::vector<SimDevice*> adopted;
      {
        std::lock_guard lk(inbox_mu_);
        adopted.swap(adopted_);
        has_adopted_.store(false, std::memory_order_relaxed);
      }
      for (SimDevice* d : adopted) {
        d->startTraffic(now);
        devices_.push_back(d);
      }
      work += adopted.size();
    }
    if (has_inbox_.load(std::memory_order_acquire)) {
      {
        std::lock_guard lk(inbox_mu_);
        local_.swap(inbox_);
        has_inbox_.store(false, std::memory_order_relaxed);
      }
      for (const Inbound& in : local_) apply(in.response, in.received_ns);
      work += local_.size();
      local_.clear();
    }
    const uint64_t epoch = backend_.overflow_epoch_.load(std::memory_order_acquire);
    if (epoch != seen_epoch_) {
      for (SimDevice* d : devices_) d->onOverflow(epoch, now);
      seen_epoch_ = epoch;
      ++work;
    }
    for (SimDevice* d : devices_) work += d->runInjections(now, *this);
    const size_t n = devices_.size();
    const uint32_t cap = backend_.options_.max_groups_per_device_pass;
    int64_t issue_time = now;
    for (size_t i = 0; i < n; ++i) {
      work += devices_[(rotate_ + i) % n]->issue(issue_time, cap, *this);
      if (batch_.size() >= backend_.options_.max_batch) {
        // A full batch goes now (and, run to completion, through the router), and the devices after
        // it are stamped with a fresh issue time: a backlog after a stall is not one long batch.
        flush();
        if (backend_.options_.after_pass) work += backend_.options_.after_pass();
        issue_time = backend_.clock_->now();
      }
    }
    if (n != 0) rotate_ = (rotate_ + 1) % n;
    flush();
    if (backend_.overflow_requested_.exchange(false, std::memory_order_acq_rel)) {
      backend_.performOverflow();
      ++work;
    }
    if (backend_.options_.after_pass) work += backend_.options_.after_pass();
    return work;
  }

  void start() {
    thread_ = std::thread([this] { threadMain(); });
  }
  void stopThread() {
    {
      std::lock_guard lk(inbox_mu_);
      stop_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
  }
  // After the thread is gone: applies what is left and switches to inline application.
  void close() {
    std::lock_guard lk(inbox_mu_);
    for (const Inbound& in : inbox_) apply(in.response, in.received_ns);
    inbox_.clear();
    closed_ = true;
  }

  LatencyHistogram::Snapshot latency() const { return latency_.snapshot(); }

 private:
  struct Inbound {
    Response response;
    int64_t received_ns = 0;
  };

  bool owns(const Response& r) const {
    return r.backend_handle < backend_.deviceCount() && r.backend_handle % backend_.feeders_.size() == index_;
  }
  void apply(const Response& r, int64_t received_ns) {
    SimDevice* device =
        r.backend_handle <= UINT32_MAX ? backend_.device(static_cast<uint32_t>(r.backend_handle)) : nullptr;
    if (device == nullptr) {
      backend_.unknown_device_responses_.fetch_add(1, std::memory_order_relaxed);
      backend_.report(absl::StrCat("ROUTER BUG: response for backend handle ", r.backend_handle,
                                   " (router device ", r.device, ", grpid ", r.grpid,
                                   ") which names no simulated device"));
      return;
    }
    device->onResponse(r, received_ns, *this);
  }

  bool hasTimedWorkDue(int64_t now, int64_t& next) const {
    next = INT64_MAX;
    for (const SimDevice* d : devices_) {
      if (d->hasImmediateWork() || d->hasQueuedInjections()) return true;
      next = std::min(next, d->nextWakeNs());
    }
    return next <= now;
  }

  void threadMain() {
    const int64_t spin_ns = backend_.options_.idle_spin_ns;
    for (;;) {
      {
        std::lock_guard lk(inbox_mu_);
        if (stop_) return;
      }
      if (pass() > 0) continue;
      int64_t next = INT64_MAX;
      int64_t now = backend_.clock_->now();
      if (hasTimedWorkDue(now, next)) continue;
      const int64_t spin_until = SteadyClock::read() + spin_ns;
      bool busy = false;
      while (SteadyClock::read() < spin_until) {
        if (has_inbox_.load(std::memory_order_acquire) || has_adopted_.load(std::memory_order_acquire) ||
            backend_.overflow_epoch_.load(std::memory_order_relaxed) != seen_epoch_ ||
            backend_.clock_->now() >= next) {
          busy = true;
          break;
        }
        cpuRelax();
      }
      if (busy) continue;
      std::unique_lock lk(inbox_mu_);
      if (stop_) return;
      if (has_inbox_.load(std::memory_order_relaxed) || has_adopted_.load(std::memory_order_relaxed) ||
          wake_flag_) {
        wake_flag_ = false;
        continue;
      }
      now = backend_.clock_->now();
      const int64_t wait_ns = std::clamp<int64_t>(next == INT64_MAX ? 1'000'000 : next - now, 0, 1'000'000);
      if (wait_ns == 0) continue;
      sleeping_ = true;
      cv_.wait_for(lk, std::chrono::nanoseconds(wait_ns));
      sleeping_ = false;
      wake_flag_ = false;
    }
  }

  SimulatedBackend& backend_;
  const uint32_t index_;
  std::vector<SimDevice*> devices_;
  std::vector<PageRequest> batch_;
  size_t rotate_ = 0;
  uint64_t seen_epoch_ = 0;
  std::vector<Inbound> local_;
  LatencyHistogram latency_;  // single writer: this feeder (or the closed-inbox path, serialised)

  std::mutex inbox_mu_;
  std::condition_variable cv_;
  std::vector<Inbound> inbox_;       // guarded by inbox_mu_
  std::vector<SimDevice*> adopted_;  // guarded by inbox_mu_: hot-added, not yet started
  std::atomic<bool> has_adopted_{false};
  bool sleeping_ = false;   // guarded by inbox_mu_
  bool wake_flag_ = false;  // guarded by inbox_mu_
  bool stop_ = false;       // guarded by inbox_mu_
  bool closed_ = false;     // guarded by inbox_mu_ (read unlocked only by the owning thread)
  std::atomic<bool> has_inbox_{false};
  std::thread thread_;
};

// ---------------------------------------------------------------------------------------------

SimulatedBackend::SimulatedBackend(Options options)
    : options_(options),
      clock_(options.clock != nullptr ? options.clock : &steady_),
      devices_(std::make_unique<std::atomic<SimDevice*>[]>(options.max_devices)) {}

SimulatedBackend::~SimulatedBackend() {
  stop();
}

absl::StatusOr<uint32_t> SimulatedBackend::addDevice(SimDeviceConfig config) {
  std::lock_guard lk(devices_mu_);
  if (stopped_.load()) {
    return absl::FailedPreconditionError(
        absl::StrCat("simulated device '", config.name, "': the simulated backend is stopped"));
  }
  if (config.pasid_bits > 20) {
    return absl::InvalidArgumentError(
        absl::StrCat("simulated device '", config.name, "': pasid_bits ", int{config.pasid_bits}, " > 20"));
  }
  if (config.workload.group_min == 0 || config.workload.group_max < config.workload.group_min) {
    return absl::InvalidArgumentError(absl::StrCat("simulated device '", config.name, "': group sizes ",
                                                   config.workload.group_min, "..",
                                                   config.workload.group_max));
  }
  if (config.pri_allocation != 0 && !config.stall_model && config.workload.kind != WorkloadKind::kReplay &&
      config.workload.group_max > config.pri_allocation) {
    return absl::InvalidArgumentError(absl::StrCat("simulated device '", config.name, "': groups of up to ",
                                                   config.workload.group_max, " requests never fit its ",
                                                   config.pri_allocation, " credits"));
  }
  for (uint32_t p : config.pasids) {
    if (config.pasid_bits == 0 || (config.pasid_bits < 32 && p >= (1u << config.pasid_bits))) {
      return absl::InvalidArgumentError(absl::StrCat("simulated device '", config.name, "': PASID ", p,
                                                     " does not fit ", int{config.pasid_bits},
                                                     " PASID bits"));
    }
  }
  if (deviceIndex(config.name)) {
    return absl::AlreadyExistsError(absl::StrCat("simulated device '", config.name, "' exists already"));
  }
  const uint32_t index = device_count_.load(std::memory_order_relaxed);
  if (index >= options_.max_devices) {
    return absl::ResourceExhaustedError(absl::StrCat("simulated device '", config.name,
                                                     "': the backend holds ", index,
                                                     " devices, its limit (max_devices)"));
  }
  auto device = std::make_unique<SimDevice>(index, std::move(config));
  if (sink_ != nullptr) {
    const SimDeviceConfig& c = device->config();
    DeviceSpec spec;
    spec.name = c.name;
    spec.backend_handle = index;
    spec.pci_segment = c.segment;
    spec.rid = c.rid;
    spec.pri_allocation = c.pri_allocation;
    spec.pasid_bits = c.pasid_bits;
    spec.needs_pasid = c.needs_pasid;
    spec.stall_model = c.stall_model;
    auto id = sink_->addDevice(spec);
    if (!id.ok()) return id.status();
    device->setRouterId(*id);
  }
  devices_[index].store(device.get(), std::memory_order_release);
  device_storage_.push_back(std::move(device));
  device_started_.push_back(false);
  device_count_.store(index + 1, std::memory_order_release);
  return index;
}

absl::Status SimulatedBackend::addDomain(DomainId domain, DomainKind kind) {
  if (domain == 0 || domain >= kMaxDomains) {
    return absl::InvalidArgumentError(absl::StrCat("simulated backend: domain id ", domain, " out of range"));
  }
  std::lock_guard lk(domains_mu_);
  if (tables_[domain].load(std::memory_order_relaxed) != nullptr) {
    return absl::AlreadyExistsError(
        absl::StrCat("simulated backend: domain ", domain, " has a page table already"));
  }
  table_storage_.push_back(std::make_unique<SoftIoPageTable>(domain, kind));
  tables_[domain].store(table_storage_.back().get(), std::memory_order_release);
  return absl::OkStatus();
}

const SoftIoPageTable* SimulatedBackend::pageTable(DomainId domain) const {
  return domain < kMaxDomains ? tables_[domain].load(std::memory_order_acquire) : nullptr;
}

absl::Status SimulatedBackend::attach(uint32_t device, std::optional<uint32_t> pasid, DomainId domain) {
  SimDevice* d = this->device(device);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("simulated backend: no device ", device));
  const SoftIoPageTable* table = pageTable(domain);
  if (table == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("simulated backend: domain ", domain, " has no page table (addDomain)"));
  }
  return d->bind(pasid, table);
}

absl::Status SimulatedBackend::detach(uint32_t device, std::optional<uint32_t> pasid) {
  SimDevice* d = this->device(device);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("simulated backend: no device ", device));
  return d->bind(pasid, nullptr);
}

absl::Status SimulatedBackend::start(RouterSink& sink) {
  std::lock_guard lk(devices_mu_);
  if (sink_ != nullptr) return absl::FailedPreconditionError("simulated backend started twice");
  sink_ = &sink;
  for (auto& d : device_storage_) {
    const SimDeviceConfig& c = d->config();
    DeviceSpec spec;
    spec.name = c.name;
    spec.backend_handle = d->index();
    spec.pci_segment = c.segment;
    spec.rid = c.rid;
    spec.pri_allocation = c.pri_allocation;
    spec.pasid_bits = c.pasid_bits;
    spec.needs_pasid = c.needs_pasid;
    spec.stall_model = c.stall_model;
    auto id = sink.addDevice(spec);
    if (!id.ok()) return id.status();
    d->setRouterId(*id);
  }
  return absl::OkStatus();
}

absl::Status SimulatedBackend::startTraffic() {
  std::lock_guard lk(devices_mu_);
  if (sink_ == nullptr)
    return absl::FailedPreconditionError("simulated backend: startTraffic before start (Router::addBackend)");
  if (traffic_started_) return absl::FailedPreconditionError("simulated backend: traffic already started");
  if (stopped_.load()) return absl::FailedPreconditionError("simulated backend: stopped");
  if (options_.after_pass && options_.feeders > 1) {
    return absl::FailedPreconditionError("simulated backend: after_pass needs a single feeder");
  }
  traffic_started_ = true;
  const unsigned n =
      std::max(1u, std::min<unsigned>(options_.feeders, std::max<size_t>(1, device_storage_.size())));
  for (unsigned i = 0; i < n; ++i) feeders_.push_back(std::make_unique<Feeder>(*this, i));
  for (auto& d : device_storage_) feeders_[d->index() % n]->addDevice(d.get());
  std::fill(device_started_.begin(), device_started_.end(), true);
  const int64_t now = clock_->now();
  for (auto& f : feeders_) f->startTraffic(now);
  if (options_.threaded) {
    for (auto& f : feeders_) f->start();
  }
  return absl::OkStatus();
}

absl::Status SimulatedBackend::startDevices(std::span<const uint32_t> devices) {
  std::lock_guard lk(devices_mu_);
  if (!traffic_started_) {
    return absl::FailedPreconditionError("simulated backend: startDevices before startTraffic");
  }
  if (stopped_.load()) return absl::FailedPreconditionError("simulated backend: stopped");
  for (size_t i = 0; i < devices.size(); ++i) {
    const uint32_t d = devices[i];
    if (d >= device_storage_.size())
      return absl::NotFoundError(absl::StrCat("simulated backend: no device ", d));
    if (device_started_[d] || std::find(devices.begin(), devices.begin() + i, d) != devices.begin() + i) {
      return absl::FailedPreconditionError(
          absl::StrCat("simulated device '", device_storage_[d]->config().name, "' runs already"));
    }
  }
  for (const uint32_t d : devices) {
    device_started_[d] = true;
    feeders_[d % feeders_.size()]->adopt(device_storage_[d].get());
  }
  return absl::OkStatus();
}

size_t SimulatedBackend::step() {
  if (options_.threaded || stopped_.load(std::memory_order_relaxed)) return 0;
  size_t work = 0;
  for (auto& f : feeders_) work += f->pass();
  return work;
}

absl::Status SimulatedBackend::inject(uint32_t device, const Injection& injection) {
  SimDevice* d = this->device(device);
  if (d == nullptr) return absl::NotFoundError(absl::StrCat("simulated backend: no device ", device));
  d->inject(injection);
  if (!feeders_.empty()) feeders_[device % feeders_.size()]->wake();
  return absl::OkStatus();
}

void SimulatedBackend::stop() {
  {
    // Ordered with addDevice/startDevices: once stopped, no device is added or handed to a feeder.
    std::lock_guard lk(devices_mu_);
    if (stopped_.exchange(true)) return;
  }
  for (auto& f : feeders_) f->stopThread();
  for (auto& f : feeders_) f->close();
}

void SimulatedBackend::respond(std::span<const Response> responses) {
  if (responses.empty()) return;
  const int64_t received = clock_->now();
  if (feeders_.empty()) {
    // Before traffic: no device issued anything, so every response is a router bug.
    for (const Response& r : responses) {
      unknown_device_responses_.fetch_add(1, std::memory_order_relaxed);
      report(absl::StrCat("ROUTER BUG: response (grpid ", r.grpid, ", device handle ", r.backend_handle,
                          ") before any request was issued"));
    }
    return;
  }
  if (feeders_.size() == 1) {
    feeders_[0]->receive(responses, received, true);
    return;
  }
  for (auto& f : feeders_) f->receive(responses, received, false);
  for (const Response& r : responses) {
    if (r.backend_handle >= deviceCount()) {
      unknown_device_responses_.fetch_add(1, std::memory_order_relaxed);
      report(absl::StrCat("ROUTER BUG: response for backend handle ", r.backend_handle,
                          " which names no simulated device"));
    }
  }
}

absl::Status SimulatedBackend::map(const MapRequest& request) {
  SoftIoPageTable* table =
      request.domain < kMaxDomains ? tables_[request.domain].load(std::memory_order_acquire) : nullptr;
  if (table == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("simulated backend: domain ", request.domain, " has no page table"));
  }
  return table->map(request.iova, request.length, request.perm);
}

void SimulatedBackend::performOverflow() {
  {
    std::unique_lock lk(sink_mu_);
    sink_->discardPartial();
    overflow_epoch_.fetch_add(1, std::memory_order_acq_rel);
  }
  for (auto& f : feeders_) f->wake();
}

void SimulatedBackend::report(std::string message) {
  const uint64_t n = bogus_count_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (options_.report_to_stderr && (n <= 20 || n % 1000 == 0)) {
    std::fprintf(stderr, "iopf simulated backend: %s%s\n", message.c_str(),
                 n == 20 ? " (further reports: every 1000th)" : "");
  }
  std::lock_guard lk(reports_mu_);
  if (reports_.size() < 64) reports_.push_back(std::move(message));
}

// ---------------------------------------------------------------------------------------------
// observation

size_t SimulatedBackend::deviceCount() const {
  return device_count_.load(std::memory_order_acquire);
}
SimDevice& SimulatedBackend::deviceOrThrow(uint32_t index) const {
  SimDevice* d = device(index);
  if (d == nullptr) throw std::out_of_range(absl::StrCat("simulated backend: no device ", index));
  return *d;
}
SimDeviceStatus SimulatedBackend::deviceStatus(uint32_t device) const {
  return deviceOrThrow(device).status();
}
const SimDeviceConfig& SimulatedBackend::deviceConfig(uint32_t device) const {
  return deviceOrThrow(device).config();
}
DeviceId SimulatedBackend::routerId(uint32_t device) const {
  return deviceOrThrow(device).routerId();
}

std::optional<uint32_t> SimulatedBackend::deviceIndex(std::string_view name) const {
  const auto n = static_cast<uint32_t>(deviceCount());
  for (uint32_t i = 0; i < n; ++i) {
    if (device(i)->config().name == name) return i;
  }
  return std::nullopt;
}

SimTotals SimulatedBackend::totals() const {
  SimTotals t;
  const auto n = static_cast<uint32_t>(deviceCount());
  t.devices = n;
  for (uint32_t i = 0; i < n; ++i) {
    const SimDeviceStatus s = device(i)->status();
    t.counters += s.counters;
    t.open_groups += s.open_groups;
    t.lost_groups += s.lost_groups;
    t.credits_in_use += s.credits_in_use;
    if (!s.pri_enabled) ++t.pri_disabled_devices;
    if (s.unplugged) ++t.unplugged_devices;
  }
  t.unknown_device_responses = unknown_device_responses_.load(std::memory_order_relaxed);
  t.overflow_epoch = overflow_epoch_.load(std::memory_order_relaxed);
  return t;
}

LatencyHistogram::Snapshot SimulatedBackend::latency() const {
  LatencyHistogram::Snapshot s;
  for (const auto& f : feeders_) s.merge(f->latency());
  return s;
}

std::vector<std::string> SimulatedBackend::bogusReports() const {
  std::lock_guard lk(reports_mu_);
  return reports_;
}

}  // namespace iopf::sim
