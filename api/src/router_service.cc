#include "iopf/api/router_service.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "group_history.h"
#include "iopf/api/convert.h"
#include "iopf/api/packed_events.h"

namespace iopf::api {

namespace {

bool isTcpPeer(const grpc::ServerContext* ctx) {
  const std::string peer = ctx->peer();
  return peer.rfind("ipv4:", 0) == 0 || peer.rfind("ipv6:", 0) == 0;
}

bool matches(const v1::EventFilter& f, const Event& e) {
  if (e.type == EventType::kGap) return true;  // gaps always reach the watcher
  if (f.types_size() > 0 &&
      std::find(f.types().begin(), f.types().end(), static_cast<int>(e.type)) == f.types().end()) {
    return false;
  }
  if (f.has_domain() && e.domain != f.domain()) return false;
  if (f.has_device() && e.device != f.device()) return false;
  if (f.has_pasid() && (!(e.flags & event_flag::kPasidValid) || e.pasid != f.pasid())) return false;
  if (f.has_group() && e.group != f.group()) return false;
  return true;
}

int64_t threadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

int64_t wallNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// A token bucket of CPU time: credit accrues at `share` ns per wall ns (capped at 20 ms of CPU),
// the thread's CPU time is charged against it, and a negative balance is slept off.
class RouterService::WatchPacer {
 public:
  WatchPacer(double cores, const std::atomic<uint32_t>& watchers)
      : cores_(cores), watchers_(watchers), cpu_(threadCpuNs()), wall_(wallNs()) {}

  void pace() {
    if (cores_ <= 0) return;
    const double share = cores_ / std::max<uint32_t>(1, watchers_.load(std::memory_order_relaxed));
    const int64_t cpu = threadCpuNs(), wall = wallNs();
    credit_ += share * static_cast<double>(wall - wall_) - static_cast<double>(cpu - cpu_);
    credit_ = std::min(credit_, kMaxCreditNs);
    cpu_ = cpu;
    wall_ = wall;
    if (credit_ >= 0) return;
    const auto debt = std::chrono::nanoseconds(static_cast<int64_t>(-credit_ / share));
    std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(debt, std::chrono::milliseconds(200)));
  }

 private:
  static constexpr double kMaxCreditNs = 20e6;
  const double cores_;
  const std::atomic<uint32_t>& watchers_;
  int64_t cpu_, wall_;
  double credit_ = 0;
};

RouterService::RouterService(Router& router, DaemonControl& control, ServiceOptions options)
    : router_(router),
      control_(control),
      options_(std::move(options)),
      started_ns_(router.clock().now()),
      history_(std::make_unique<GroupHistory>(router.events(), options_.recent_groups)) {}

RouterService::~RouterService() = default;

void RouterService::beginDrain() { draining_ = true; }

grpc::Status RouterService::authorizeMutation(grpc::ServerContext* ctx) const {
  if (!isTcpPeer(ctx)) return grpc::Status::OK;  // Unix socket: its file mode is the access control
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                        "mutating calls over TCP need 'authorization: Bearer <token>'");
  }
  const std::string value(it->second.data(), it->second.size());
  if (options_.token.empty() || value != "Bearer " + options_.token) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED, "bearer token not accepted");
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::GetInfo(grpc::ServerContext*, const v1::GetInfoRequest*, v1::Info* out) {
  out->set_daemon_version(options_.daemon_version);
  out->set_api_version("iopf.v1");
  out->set_uptime_ns(router_.clock().now() - started_ns_);
  out->set_shards(router_.shardCount());
  out->set_event_head_seq(router_.events().head());
  out->set_event_oldest_seq(router_.events().oldest());
  out->set_draining(draining_.load());
  control_.fillInfo(*out);
  return grpc::Status::OK;
}

grpc::Status RouterService::ListDevices(grpc::ServerContext*, const v1::ListDevicesRequest*,
                                        v1::ListDevicesResponse* out) {
  for (const DeviceInfo& d : router_.devices()) toProto(d, *out->add_devices());
  return grpc::Status::OK;
}

grpc::Status RouterService::ListDomains(grpc::ServerContext*, const v1::ListDomainsRequest*,
                                        v1::ListDomainsResponse* out) {
  for (const DomainInfo& d : router_.domains()) toProto(d, *out->add_domains());
  return grpc::Status::OK;
}

grpc::Status RouterService::ListAttachments(grpc::ServerContext*, const v1::ListAttachmentsRequest*,
                                            v1::ListAttachmentsResponse* out) {
  for (const AttachmentInfo& a : router_.attachments()) toProto(a, *out->add_attachments());
  return grpc::Status::OK;
}

grpc::Status RouterService::ListOutstanding(grpc::ServerContext*, const v1::ListOutstandingRequest* req,
                                            v1::ListOutstandingResponse* out) {
  if (req->page_size() > options_.max_list_page) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "page_size " + std::to_string(req->page_size()) + " exceeds the limit " +
                            std::to_string(options_.max_list_page));
  }
  if (req->min_age_ns() < 0) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "min_age_ns < 0");
  OutstandingFilter f;
  if (req->has_domain()) f.domain = req->domain();
  if (req->has_device()) f.device = req->device();
  if (req->has_pasid()) f.pasid = req->pasid();
  f.min_age_ns = req->min_age_ns();
  f.after = req->page_token();
  const size_t page = req->page_size() == 0 ? std::min<size_t>(1000, options_.max_list_page) : req->page_size();
  f.limit = page + 1;  // one more tells whether a next page exists
  std::vector<GroupInfo> groups = router_.outstanding(f);
  const int64_t now = router_.clock().now();
  const bool more = groups.size() > page;
  if (more) groups.resize(page);
  for (const GroupInfo& g : groups) toProto(g, now, *out->add_groups());
  out->set_next_page_token(more ? groups.back().id : 0);
  return grpc::Status::OK;
}

grpc::Status RouterService::GetGroup(grpc::ServerContext*, const v1::GetGroupRequest* req, v1::Group* out) {
  if (auto g = router_.group(req->id())) {
    toProto(*g, router_.clock().now(), *out);
    history_->catchUp();
    history_->fill(req->id(), *out);
    return grpc::Status::OK;
  }
  if (history_->fill(req->id(), *out)) return grpc::Status::OK;
  // The history reader may be a few milliseconds behind: catch up with everything published.
  history_->catchUp();
  if (history_->fill(req->id(), *out)) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::NOT_FOUND,
                      "group " + std::to_string(req->id()) + " is neither open nor in the recent history");
}

void RouterService::buildSnapshot(v1::Snapshot& s) const {
  for (const DeviceInfo& d : router_.devices()) toProto(d, *s.add_devices());
  for (const DomainInfo& d : router_.domains()) toProto(d, *s.add_domains());
  for (const AttachmentInfo& a : router_.attachments()) toProto(a, *s.add_attachments());
  const int64_t now = router_.clock().now();
  OutstandingFilter f;
  f.limit = options_.max_list_page;
  for (const GroupInfo& g : router_.outstanding(f)) toProto(g, now, *s.add_open_groups());
  s.set_open_groups_total(router_.openGroups());
  s.set_open_groups_truncated(s.open_groups_total() > static_cast<uint64_t>(s.open_groups_size()));
}

grpc::Status RouterService::Watch(grpc::ServerContext* ctx, const v1::WatchRequest* req,
                                  grpc::ServerWriter<v1::WatchBatch>* writer) {
  const uint32_t max_batch = req->max_batch() == 0 ? 256 : req->max_batch();
  if (max_batch > 4096) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "max_batch " + std::to_string(max_batch) + " > 4096");
  }
  if (!v1::EventEncoding_IsValid(req->encoding())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "unknown event encoding " + std::to_string(req->encoding()) +
                            " (0 = EVENT_ENCODING_MESSAGES, 1 = EVENT_ENCODING_PACKED)");
  }
  if (watchers_.fetch_add(1) >= options_.max_watchers) {
    watchers_.fetch_sub(1);
    return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                        "too many watchers (" + std::to_string(options_.max_watchers) + ")");
  }
  struct Release {
    std::atomic<uint32_t>& n;
    ~Release() { n.fetch_sub(1); }
  } release{watchers_};

  EventBus& bus = router_.events();
  uint64_t cursor;
  if (req->since_seq() == 0) {
    // Events from `cursor` on follow the snapshot; some may repeat what the snapshot shows.
    cursor = bus.head();
    v1::WatchBatch first;
    buildSnapshot(*first.mutable_snapshot());
    first.mutable_snapshot()->set_next_seq(cursor);
    if (!writer->Write(first)) return grpc::Status::OK;
  } else {
    cursor = req->since_seq();
    const uint64_t oldest = bus.oldest(), head = bus.head();
    if (cursor > head) {
      return grpc::Status(grpc::StatusCode::OUT_OF_RANGE, "since_seq " + std::to_string(cursor) +
                                                              " is in the future (next is " +
                                                              std::to_string(head) + ")");
    }
    if (cursor < oldest) {
      if (!req->allow_gap()) {
        return grpc::Status(grpc::StatusCode::OUT_OF_RANGE,
                            "since_seq " + std::to_string(cursor) + " is no longer held; oldest is " +
                                std::to_string(oldest));
      }
      // read() reports the gap as its first event.
    }
  }

  const auto progress = std::chrono::milliseconds(req->progress_interval_ms() == 0 ? 1000 : req->progress_interval_ms());
  std::vector<Event> buf(max_batch);
  v1::WatchBatch batch;
  auto last_write = std::chrono::steady_clock::now();
  WatchPacer pacer(options_.watch_cpu_cores, watchers_);
  const bool packed = req->encoding() == v1::EVENT_ENCODING_PACKED;
  bool streaming = false;  // the resume point was served: later gaps are this watcher falling behind
  while (!ctx->IsCancelled() && !draining_.load(std::memory_order_relaxed)) {
    size_t n = 0;
    if (streaming && cursor < bus.oldest()) {
      // Lapped: the writers overwrote what this watcher had not read. Resuming at the oldest event
      // would put it where they write next (lapped again at once, and its reads pulling the lines
      // they are about to write); resume half a ring behind the head instead, one gap for both.
      const uint64_t resume = std::max(bus.oldest(), bus.head() - bus.capacity() / 2);
      buf[n++] = gapEvent(cursor, static_cast<int64_t>(resume - cursor));
      cursor = resume;
    }
    n += bus.read(cursor, std::span<Event>(buf).subspan(n));
    streaming = true;
    batch.Clear();
    size_t kept = 0;
    std::string* packed_out = packed ? batch.mutable_packed_events() : nullptr;
    if (packed_out != nullptr) packed_out->resize(n * packed::kRecordSize);  // trimmed to `kept` below
    for (size_t i = 0; i < n; ++i) {
      const Event& e = buf[i];
      if (e.type == EventType::kGap) {
        batch.set_lost(batch.lost() + static_cast<uint64_t>(e.value));
        batch.set_oldest_available_seq(e.seq + static_cast<uint64_t>(e.value));
      }
      if (!matches(req->filter(), e)) continue;
      if (packed_out != nullptr) {
        writePacked(e, reinterpret_cast<uint8_t*>(packed_out->data()) + kept * packed::kRecordSize);
      } else {
        toProto(e, *batch.add_events());
      }
      ++kept;
    }
    if (packed_out != nullptr) packed_out->resize(kept * packed::kRecordSize);
    if (kept > 0 || batch.lost() > 0) {
      batch.set_next_seq(cursor);
      if (!writer->Write(batch)) return grpc::Status::OK;  // client went away
      last_write = std::chrono::steady_clock::now();
      pacer.pace();
      continue;
    }
    if (n > 0) {  // everything was filtered out: keep reading
      pacer.pace();
      continue;
    }
    const auto now = std::chrono::steady_clock::now();
    if (now - last_write >= progress) {
      batch.Clear();
      batch.set_next_seq(cursor);
      if (!writer->Write(batch)) return grpc::Status::OK;
      last_write = now;
    }
    // Idle: poll the ring (the hot path never signals watchers).
    std::this_thread::sleep_for(std::chrono::microseconds(500));
  }
  return grpc::Status::OK;
}

grpc::Status RouterService::GetStats(grpc::ServerContext*, const v1::GetStatsRequest*, v1::Stats* out) {
  toProto(router_.stats(), *out);
  return grpc::Status::OK;
}

grpc::Status RouterService::Respond(grpc::ServerContext* ctx, const v1::RespondRequest* req,
                                    v1::RespondResponse*) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  if (!v1::ResponseCode_IsValid(req->code())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "unknown response code " + std::to_string(req->code()));
  }
  return toGrpc(router_.respond(req->group(), static_cast<ResponseCode>(req->code()), req->reason()));
}

grpc::Status RouterService::Attach(grpc::ServerContext* ctx, const v1::AttachRequest* req, v1::AttachResponse* out) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  std::optional<uint32_t> pasid;
  if (req->has_pasid()) pasid = req->pasid();
  auto epoch = router_.attach(req->device(), pasid, req->domain());
  if (!epoch.ok()) return toGrpc(epoch.status());
  out->set_epoch(*epoch);
  return grpc::Status::OK;
}

grpc::Status RouterService::Detach(grpc::ServerContext* ctx, const v1::DetachRequest* req, v1::DetachResponse*) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  std::optional<uint32_t> pasid;
  if (req->has_pasid()) pasid = req->pasid();
  return toGrpc(router_.detach(req->device(), pasid));
}

grpc::Status RouterService::SetDomainChain(grpc::ServerContext* ctx, const v1::SetDomainChainRequest* req,
                                           v1::SetDomainChainResponse*) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  std::vector<std::string> names(req->handlers().begin(), req->handlers().end());
  auto chain = control_.resolveChain(req->domain(), names);
  if (!chain.ok()) return toGrpc(chain.status());
  return toGrpc(router_.setChain(req->domain(), std::move(*chain)));
}

grpc::Status RouterService::ListPlugins(grpc::ServerContext*, const v1::ListPluginsRequest*,
                                        v1::ListPluginsResponse* out) {
  for (v1::Plugin& p : control_.plugins()) *out->add_plugins() = std::move(p);
  return grpc::Status::OK;
}

grpc::Status RouterService::ReloadConfig(grpc::ServerContext* ctx, const v1::ReloadConfigRequest*,
                                         v1::ReloadConfigResponse* out) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  auto gen = control_.reloadConfig();
  if (!gen.ok()) return toGrpc(gen.status());
  out->set_config_generation(*gen);
  return grpc::Status::OK;
}

grpc::Status RouterService::InjectFault(grpc::ServerContext* ctx, const v1::InjectFaultRequest* req,
                                        v1::InjectFaultResponse*) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  return toGrpc(control_.injectFault(*req));
}

grpc::Status RouterService::RunScenario(grpc::ServerContext* ctx, const v1::RunScenarioRequest* req,
                                        v1::RunScenarioResponse* out) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  return toGrpc(control_.runScenario(req->path(), *out));
}

grpc::Status RouterService::PauseDomain(grpc::ServerContext* ctx, const v1::PauseDomainRequest* req,
                                        v1::PauseDomainResponse* out) {
  if (auto st = authorizeMutation(ctx); !st.ok()) return st;
  auto result = router_.setDomainPaused(req->domain(), req->paused());
  if (!result.ok()) return toGrpc(result.status());
  out->set_was_paused(result->was_paused);
  out->set_waiting_groups(result->waiting_groups);
  return grpc::Status::OK;
}

}  // namespace iopf::api
