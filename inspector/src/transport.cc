#include "transport.h"

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <fstream>
#include <sstream>

#include "iopf/api/health_client.h"
#include "iopf/api/packed_events.h"
#include "iopf/capture_file.h"

namespace iopf::inspector {
namespace {

int64_t steadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// grpc.health.v1.Health/Check for iopf.v1.Router (iopf_api_client).
Health checkHealth(const std::shared_ptr<grpc::Channel>& channel, int timeout_ms) {
  auto st = api::checkHealth(channel, "iopf.v1.Router", std::chrono::milliseconds(timeout_ms));
  if (!st.ok()) return Health::kUnreachable;
  switch (*st) {
    case api::HealthStatus::kServing: return Health::kServing;
    case api::HealthStatus::kNotServing: return Health::kNotServing;
    default: return Health::kUnknown;
  }
}

}  // namespace

const char* connStateName(ConnState s) {
  switch (s) {
    case ConnState::kConnecting: return "connecting";
    case ConnState::kStreaming: return "streaming";
    case ConnState::kBackoff: return "reconnecting";
    case ConnState::kStopped: return "stopped";
    case ConnState::kOffline: return "capture file";
    case ConnState::kFinished: return "capture loaded";
  }
  return "?";
}

const char* healthName(Health h) {
  switch (h) {
    case Health::kUnknown: return "unknown";
    case Health::kServing: return "SERVING";
    case Health::kNotServing: return "NOT_SERVING";
    case Health::kUnreachable: return "unreachable";
  }
  return "?";
}

Event fromPacked(api::packed::EventView p) {
  namespace pk = api::packed;
  Event e;
  e.seq = p.seq();
  e.time_ns = p.timeNs();
  e.type = static_cast<EventType>(p.type());
  e.group = p.group();
  e.device = p.device();
  e.domain = p.domain();
  if (p.flags() & pk::kFlagPasidValid) {
    e.pasid = p.pasid();
    e.flags |= event_flag::kPasidValid;
  }
  e.grpid = p.grpid();
  e.addr = p.addr();
  e.perm = p.perm();
  if (p.flags() & pk::kFlagLast) e.flags |= event_flag::kLast;
  if (p.flags() & pk::kFlagCookieValid) {
    e.cookie = p.cookie();
    e.flags |= event_flag::kCookieValid;
  }
  e.code = p.code();
  e.origin = p.origin();
  e.verdict = p.verdict();
  e.handler = p.handler();
  e.value = p.value();
  return e;
}

Event fromProto(const v1::Event& p) {
  Event e;
  e.seq = p.seq();
  e.time_ns = p.time_ns();
  e.type = static_cast<EventType>(p.type());
  e.group = p.group();
  e.device = p.device();
  e.domain = p.domain();
  if (p.has_pasid()) {
    e.pasid = p.pasid();
    e.flags |= event_flag::kPasidValid;
  }
  e.grpid = p.grpid();
  e.addr = p.addr();
  e.perm = static_cast<uint8_t>(p.perm());
  if (p.last()) e.flags |= event_flag::kLast;
  if (p.has_cookie()) {
    e.cookie = p.cookie();
    e.flags |= event_flag::kCookieValid;
  }
  e.code = static_cast<uint8_t>(p.code());
  e.origin = static_cast<uint8_t>(p.origin());
  e.verdict = static_cast<uint8_t>(p.verdict());
  e.handler = static_cast<uint16_t>(p.handler());
  e.value = p.value();
  return e;
}

void toProto(const Event& e, v1::Event& out) {
  out.set_seq(e.seq);
  out.set_time_ns(e.time_ns);
  out.set_type(static_cast<v1::EventType>(e.type));
  out.set_group(e.group);
  out.set_device(e.device);
  out.set_domain(e.domain);
  if (e.flags & event_flag::kPasidValid) out.set_pasid(e.pasid);
  out.set_grpid(e.grpid);
  out.set_addr(e.addr);
  out.set_perm(e.perm);
  out.set_last((e.flags & event_flag::kLast) != 0);
  if (e.flags & event_flag::kCookieValid) out.set_cookie(e.cookie);
  out.set_code(static_cast<v1::ResponseCode>(e.code));
  out.set_origin(static_cast<v1::Origin>(e.origin));
  out.set_verdict(static_cast<v1::Verdict>(e.verdict));
  out.set_handler(e.handler);
  out.set_value(e.value);
}

// ---- Transport ----

size_t Transport::take(std::vector<Chunk>& out, ConnStatus& status) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t n = queued_;
  if (dropped_ > 0) {
    // The GUI fell behind by more than kMaxQueued events: tell it with a gap row.
    if (inbox_.empty()) inbox_.emplace_back();
    inbox_.back().events.push_back(gapEvent(dropped_first_seq_, static_cast<int64_t>(dropped_)));
    status_.gaps++;
    dropped_ = 0;
  }
  for (auto& c : inbox_) out.push_back(std::move(c));
  inbox_.clear();
  queued_ = 0;
  status = status_;
  return n;
}

void Transport::pushSnapshot(std::shared_ptr<const v1::Snapshot> s) {
  std::lock_guard<std::mutex> lock(mu_);
  Chunk c;
  c.snapshot = std::move(s);
  inbox_.push_back(std::move(c));
}

void Transport::pushEvents(const Event* events, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  if (inbox_.empty()) inbox_.emplace_back();
  auto& v = inbox_.back().events;
  for (size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    status_.last_seq = e.seq;
    status_.events++;
    if (e.type == EventType::kGap) status_.gaps++;
    if (queued_ >= kMaxQueued) {
      if (dropped_ == 0) dropped_first_seq_ = e.seq;
      ++dropped_;
      continue;
    }
    v.push_back(e);
    ++queued_;
  }
}

// ---- GrpcTransport ----

std::string normalizeTarget(const std::string& target) {
  if (!target.empty() && (target[0] == '/' || target[0] == '.')) return "unix:" + target;
  return target;
}

GrpcTransport::GrpcTransport(ConnectOptions options) : options_(std::move(options)) {
  options_.target = normalizeTarget(options_.target);
  filter_ = options_.filter;
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options_.target.rfind("unix:", 0) == 0) {
    creds = grpc::experimental::LocalCredentials(UDS);
  } else {
    grpc::SslCredentialsOptions ssl;
    if (!options_.tls_ca_file.empty()) ssl.pem_root_certs = readFile(options_.tls_ca_file);
    creds = grpc::SslCredentials(ssl);
  }
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, 64 << 20);
  // Reconnect quickly after a daemon restart; the reader has its own backoff on top.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, options_.backoff_max_ms);
  channel_ = grpc::CreateCustomChannel(options_.target, creds, args);
  stub_ = std::shared_ptr<v1::Router::Stub>(v1::Router::NewStub(channel_));
}

GrpcTransport::~GrpcTransport() { stop(); }

void GrpcTransport::start() {
  if (reader_.joinable()) return;
  reader_ = std::thread([this] { readerLoop(); });
  poller_ = std::thread([this] { pollerLoop(); });
}

void GrpcTransport::stop() {
  {
    std::lock_guard<std::mutex> lock(ctx_mu_);
    stopping_ = true;
    if (current_) current_->TryCancel();
  }
  cv_.notify_all();
  if (reader_.joinable()) reader_.join();
  if (poller_.joinable()) poller_.join();
  updateStatus([](ConnStatus& s) { s.state = ConnState::kStopped; });
}

void GrpcTransport::setFilter(const v1::EventFilter& filter) {
  std::lock_guard<std::mutex> lock(ctx_mu_);
  filter_ = filter;
  restart_snapshot_ = true;
  if (current_) current_->TryCancel();
  cv_.notify_all();
}

void GrpcTransport::dropStreamForTest() {
  std::lock_guard<std::mutex> lock(ctx_mu_);
  if (current_) current_->TryCancel();
}

std::vector<std::pair<std::string, std::string>> GrpcTransport::metadata() const {
  if (options_.token.empty()) return {};
  return {{"authorization", "Bearer " + options_.token}};
}

bool GrpcTransport::sleepFor(int ms) {
  std::unique_lock<std::mutex> lock(ctx_mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(ms), [&] { return stopping_ || restart_snapshot_; });
  return !stopping_;
}

void GrpcTransport::readerLoop() {
  bool have_seq = false;  // resume at last_seq + 1 instead of asking for a snapshot
  uint64_t last_seq = 0;
  int backoff = options_.backoff_min_ms;
  bool first = true;
  std::vector<Event> converted;
  for (;;) {
    grpc::ClientContext ctx;
    v1::WatchRequest req;
    {
      std::lock_guard<std::mutex> lock(ctx_mu_);
      if (stopping_) break;
      if (restart_snapshot_) {
        have_seq = false;
        restart_snapshot_ = false;
      }
      *req.mutable_filter() = filter_;
      current_ = &ctx;
    }
    if (have_seq && !checkSameDaemon()) {
      // The daemon restarted: its sequence numbers start over, a resume would mix two streams.
      const Event gap = gapEvent(last_seq + 1, -1);
      pushEvents(&gap, 1);
      have_seq = false;
      updateStatus([&](ConnStatus& s) { s.message = "daemon restarted: new snapshot"; });
    }
    req.set_since_seq(have_seq ? last_seq + 1 : 0);
    req.set_allow_gap(true);
    req.set_max_batch(options_.max_batch);
    req.set_encoding(v1::EVENT_ENCODING_PACKED);
    req.set_progress_interval_ms(500);
    prepare(ctx);
    const bool resuming = have_seq;
    updateStatus([&](ConnStatus& s) {
      s.state = ConnState::kConnecting;
      if (!first) {
        s.reconnects++;
        if (resuming) s.resumes++;
      }
    });
    first = false;
    auto reader = stub_->Watch(&ctx, req);
    v1::WatchBatch batch;
    bool got_any = false;
    while (reader->Read(&batch)) {
      if (!got_any) {
        got_any = true;
        backoff = options_.backoff_min_ms;
        updateStatus([&](ConnStatus& s) {
          s.state = ConnState::kStreaming;
          s.message = resuming ? "resumed at #" + std::to_string(last_seq + 1) : "snapshot";
        });
      }
      if (batch.has_snapshot() && daemon_started_ms_ == 0) (void)checkSameDaemon();
      if (batch.has_snapshot()) {
        auto snap = std::make_shared<v1::Snapshot>(std::move(*batch.mutable_snapshot()));
        last_seq = snap->next_seq() == 0 ? 0 : snap->next_seq() - 1;
        have_seq = true;
        pushSnapshot(std::move(snap));
      }
      // Packed (what this reader asks for) or messages (a daemon that predates the packed encoding
      // ignores the field and sends messages).
      converted.clear();
      const std::string& packed = batch.packed_events();
      const size_t records = packed.size() / api::packed::kRecordSize;
      converted.reserve(records + static_cast<size_t>(batch.events_size()));
      for (size_t i = 0; i < records; ++i) {
        converted.push_back(fromPacked(api::packed::EventView(
            reinterpret_cast<const uint8_t*>(packed.data()) + i * api::packed::kRecordSize)));
      }
      for (const auto& e : batch.events()) converted.push_back(fromProto(e));
      if (!converted.empty()) {
        last_seq = converted.back().seq;
        have_seq = true;
        pushEvents(converted.data(), converted.size());
      } else if (batch.next_seq() > 0 && have_seq) {
        last_seq = batch.next_seq() - 1;  // progress: the resume point of an idle watcher
        updateStatus([&](ConnStatus& s) { s.last_seq = last_seq; });
      }
    }
    grpc::Status st = reader->Finish();
    bool restart = false;
    {
      std::lock_guard<std::mutex> lock(ctx_mu_);
      current_ = nullptr;
      if (stopping_) break;
      restart = restart_snapshot_;
    }
    if (restart) continue;  // a new filter: straight back with a fresh snapshot
    if (st.error_code() == grpc::StatusCode::OUT_OF_RANGE) {
      // The resume point is gone (or in the future: the daemon restarted). Mark the break with a gap
      // row (value -1: unknown loss) and start over from a snapshot.
      const Event gap = gapEvent(last_seq + 1, -1);
      pushEvents(&gap, 1);
      have_seq = false;
      updateStatus([&](ConnStatus& s) { s.message = "resume point lost (" + st.error_message() + "): new snapshot"; });
      continue;
    }
    const std::string why = st.ok() ? std::string("stream ended (daemon draining?)")
                                    : "Watch failed: " + st.error_message() + " (code " +
                                          std::to_string(static_cast<int>(st.error_code())) + ")";
    updateStatus([&](ConnStatus& s) {
      s.state = ConnState::kBackoff;
      s.message = why;
      s.retry_at_ms = steadyMs() + backoff;
    });
    if (!sleepFor(backoff)) break;
    backoff = std::min(backoff * 2, options_.backoff_max_ms);
  }
  std::lock_guard<std::mutex> lock(ctx_mu_);
  current_ = nullptr;
}

bool GrpcTransport::checkSameDaemon() {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  prepare(ctx);
  v1::Info info;
  if (!stub_->GetInfo(&ctx, {}, &info).ok()) return true;  // unknown: let Watch decide (OUT_OF_RANGE)
  const int64_t started_ms = steadyMs() - info.uptime_ns() / 1'000'000;
  const bool same = daemon_started_ms_ == 0 || std::llabs(started_ms - daemon_started_ms_) < 1000;
  daemon_started_ms_ = started_ms;
  return same;
}

void GrpcTransport::pollerLoop() {
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(ctx_mu_);
      if (stopping_) return;
    }
    const Health h = checkHealth(channel_, 1000);
    std::shared_ptr<v1::Info> info;
    std::shared_ptr<v1::Stats> stats;
    std::shared_ptr<v1::ListPluginsResponse> plugins;
    if (h != Health::kUnreachable) {
      auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(2);
      {
        grpc::ClientContext ctx;
        ctx.set_deadline(deadline);
        auto i = std::make_shared<v1::Info>();
        if (stub_->GetInfo(&ctx, {}, i.get()).ok()) info = i;
      }
      {
        grpc::ClientContext ctx;
        ctx.set_deadline(deadline);
        auto s = std::make_shared<v1::Stats>();
        if (stub_->GetStats(&ctx, {}, s.get()).ok()) stats = s;
      }
      {
        grpc::ClientContext ctx;
        ctx.set_deadline(deadline);
        auto p = std::make_shared<v1::ListPluginsResponse>();
        if (stub_->ListPlugins(&ctx, {}, p.get()).ok()) plugins = p;
      }
    }
    updateStatus([&](ConnStatus& s) {
      s.health = h;
      if (info) s.info = info;
      if (stats) s.stats = stats;
      if (plugins) s.plugins = plugins;
    });
    std::unique_lock<std::mutex> lock(ctx_mu_);
    cv_.wait_for(lock, std::chrono::milliseconds(options_.poll_interval_ms), [&] { return stopping_; });
    if (stopping_) return;
  }
}

// ---- CaptureTransport ----

CaptureTransport::CaptureTransport(std::string path) : path_(std::move(path)) {
  updateStatus([](ConnStatus& s) { s.state = ConnState::kOffline; });
}

CaptureTransport::~CaptureTransport() { stop(); }

void CaptureTransport::start() {
  if (!reader_.joinable()) reader_ = std::thread([this] { readerLoop(); });
}

void CaptureTransport::stop() {
  stopping_ = true;
  if (reader_.joinable()) reader_.join();
}

void CaptureTransport::readerLoop() {
  auto reader = capture::Reader::open(path_);
  if (!reader.ok()) {
    updateStatus([&](ConnStatus& s) {
      s.state = ConnState::kFinished;
      s.message = std::string(reader.status().message());
    });
    return;
  }
  const auto& h = (*reader)->header();
  auto snap = std::make_shared<v1::Snapshot>();
  for (const auto& d : h.devices()) {
    auto* o = snap->add_devices();
    o->set_id(d.device_id());
    o->set_name(d.name());
    o->set_backend(d.backend());
    o->set_backend_handle(d.backend_handle());
    o->set_pci_segment(d.pci_segment());
    o->set_rid(d.rid());
    o->set_pri_allocation(d.pri_allocation());
    o->set_pasid_bits(d.pasid_bits());
    o->set_needs_pasid(d.needs_pasid());
    o->set_stall_model(d.stall_model());
  }
  for (const auto& d : h.domains()) {
    auto* o = snap->add_domains();
    o->set_id(d.domain_id());
    o->set_name(d.name());
    o->set_kind(d.kind());
    o->set_deadline_ns(d.deadline_ns());
  }
  pushSnapshot(snap);
  updateStatus([&](ConnStatus& s) { s.message = "producer: " + h.producer(); });
  v1::CaptureRecord rec;
  std::vector<Event> buf;
  buf.reserve(4096);
  uint64_t n = 0;
  for (;;) {
    if (stopping_) return;
    auto more = (*reader)->next(rec);
    if (!more.ok()) {
      updateStatus([&](ConnStatus& s) { s.message = std::string(more.status().message()); });
      break;
    }
    if (!*more) break;
    buf.push_back(capture::fromRecord(rec));
    ++n;
    if (buf.size() == buf.capacity()) {
      pushEvents(buf.data(), buf.size());
      buf.clear();
    }
  }
  pushEvents(buf.data(), buf.size());
  updateStatus([&](ConnStatus& s) {
    s.state = ConnState::kFinished;
    if (s.message.rfind("producer", 0) == 0) s.message += ", " + std::to_string(n) + " records";
  });
}

}  // namespace iopf::inspector
