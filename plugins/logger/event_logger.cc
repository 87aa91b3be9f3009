#include "event_logger.h"

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <ctime>

namespace iopf::plugins::logger {

namespace {

constexpr const char* kTypeNames[] = {
    "gap",          "request",  "group_queued",        "dispatched",          "handler_verdict",
    "responded",    "timed_out", "completion_refused", "attach",              "detach",
    "device_added", "device_removed", "domain_added",  "stop_marker_dropped", "partial_discarded",
    "protocol_error", "request_dropped", "domain_removed", "chain_changed", "domain_paused",
    "domain_resumed",
};
constexpr uint32_t kTypeCount = sizeof(kTypeNames) / sizeof(kTypeNames[0]);
static_assert(kTypeCount == IOPF_EVENT_DOMAIN_RESUMED + 1);

constexpr const char* kCodeNames[] = {"success", "invalid", "failure"};
constexpr const char* kOriginNames[] = {"handler",  "default",  "timeout", "detach",       "operator",
                                        "shutdown", "overload", "no_domain", "handler_error"};
constexpr const char* kVerdictNames[] = {"continue", "respond", "defer", "error"};

template <size_t N>
const char* nameOf(const char* const (&names)[N], uint32_t v) {
  return v < N ? names[v] : "unknown";
}

int64_t steadyNow() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

void appendInt(std::string& s, uint64_t v) {
  char buf[24];
  const int n = std::snprintf(buf, sizeof buf, "%" PRIu64, v);
  s.append(buf, static_cast<size_t>(n));
}
void appendInt(std::string& s, int64_t v) {
  char buf[24];
  const int n = std::snprintf(buf, sizeof buf, "%" PRId64, v);
  s.append(buf, static_cast<size_t>(n));
}
void appendHex(std::string& s, uint64_t v) {
  char buf[24];
  const int n = std::snprintf(buf, sizeof buf, "\"0x%" PRIx64 "\"", v);
  s.append(buf, static_cast<size_t>(n));
}
void appendString(std::string& s, const std::string& v) {
  s.push_back('"');
  for (char c : v) {
    switch (c) {
      case '"': s += "\\\""; break;
      case '\\': s += "\\\\"; break;
      case '\n': s += "\\n"; break;
      case '\t': s += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          s += buf;
        } else {
          s.push_back(c);
        }
    }
  }
  s.push_back('"');
}
void key(std::string& s, const char* k) {
  s.push_back(',');
  s.push_back('"');
  s += k;
  s += "\":";
}
std::string permString(uint8_t perm) {
  std::string p;
  if (perm & IOPF_PERM_READ) p.push_back('r');
  if (perm & IOPF_PERM_WRITE) p.push_back('w');
  if (perm & IOPF_PERM_EXEC) p.push_back('x');
  if (perm & IOPF_PERM_PRIV) p.push_back('p');
  return p;
}
bool carriesRequest(uint8_t type) {
  switch (type) {
    case IOPF_EVENT_REQUEST:
    case IOPF_EVENT_GROUP_QUEUED:
    case IOPF_EVENT_DISPATCHED:
    case IOPF_EVENT_HANDLER_VERDICT:
    case IOPF_EVENT_RESPONDED:
    case IOPF_EVENT_TIMED_OUT:
    case IOPF_EVENT_COMPLETION_REFUSED:
    case IOPF_EVENT_STOP_MARKER_DROPPED:
    case IOPF_EVENT_PROTOCOL_ERROR:
    case IOPF_EVENT_REQUEST_DROPPED:
      return true;
    default:
      return false;
  }
}
const char* kindName(uint32_t kind) {
  switch (kind) {
    case 0: return "paging";
    case 1: return "nested";
    case 2: return "sva";
  }
  return "unknown";
}

}  // namespace

EventLogger::EventLogger(const v1::LoggerConfig& config, const sdk::Host& host, std::string producer)
    : config_(config),
      host_(host),
      producer_(std::move(producer)),
      max_files_(config.has_max_files() ? config.max_files() : 3),
      burst_(config.has_burst() ? config.burst() : std::max(1.0, config.max_events_per_second())),
      flush_interval_ns_(int64_t{config.has_flush_interval_ms() ? config.flush_interval_ms() : 200} * 1'000'000) {
  if (config_.max_events_per_second() < 0) {
    throw sdk::Error("plugin config: field 'max_events_per_second' must be >= 0");
  }
  if (config_.has_burst() && config_.burst() == 0) throw sdk::Error("plugin config: field 'burst' must be >= 1");
  if (config_.types().empty()) {
    type_mask_ = ~0u;
  } else {
    for (const std::string& t : config_.types()) {
      const auto* it = std::find_if(std::begin(kTypeNames), std::end(kTypeNames),
                                    [&](const char* n) { return t == n; });
      if (it == std::end(kTypeNames)) {
        throw sdk::Error("plugin config: field 'types' has an unknown event type '" + t + "'");
      }
      type_mask_ |= 1u << (it - std::begin(kTypeNames));
    }
  }
  tokens_ = burst_;
}

EventLogger::~EventLogger() { close(); }

void EventLogger::open() {
  if (config_.json_path().empty() && config_.capture_path().empty()) {
    throw sdk::Error("plugin config: neither 'json_path' nor 'capture_path' is set: nothing to log to");
  }
  if (!config_.json_path().empty()) openJson();
  if (!config_.capture_path().empty()) openCapture();
  last_flush_ns_ = steadyNow();
}

void EventLogger::openJson() {
  json_ = std::fopen(config_.json_path().c_str(), "w");
  if (json_ == nullptr) {
    throw sdk::Error("plugin config: field 'json_path': cannot open '" + config_.json_path() +
                     "': " + std::strerror(errno));
  }
  std::setvbuf(json_, nullptr, _IOFBF, 1 << 20);
  json_bytes_ = 0;
}

void EventLogger::openCapture() {
  iopf::v1::CaptureHeader header;
  header.set_format_version(capture::kFormatVersion);
  header.set_producer(producer_);
  header.set_start_time_ns(host_.now());
  timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  header.set_wall_time_unix_ns(int64_t{wall.tv_sec} * 1'000'000'000 + wall.tv_nsec);
  for (uint32_t id : host_.devices()) {
    const std::optional<sdk::DeviceInfo> d = host_.device(id);
    if (!d) continue;
    iopf::v1::CaptureDevice* out = header.add_devices();
    out->set_device_id(d->device);
    out->set_name(d->name);
    out->set_backend(d->backend_name);
    out->set_backend_handle(d->backend_handle);
    out->set_pci_segment(d->pci_segment);
    out->set_rid(d->rid);
    out->set_pri_allocation(d->pri_allocation);
    out->set_pasid_bits(d->pasid_bits);
    out->set_needs_pasid(d->needs_pasid);
    out->set_stall_model(d->stall_model);
  }
  for (uint32_t id : host_.domains()) {
    const std::optional<sdk::DomainInfo> d = host_.domain(id);
    if (!d) continue;
    iopf::v1::CaptureDomain* out = header.add_domains();
    out->set_domain_id(d->domain);
    out->set_name(d->name);
    out->set_kind(kindName(d->kind));
    out->set_deadline_ns(d->deadline_ns);
  }
  auto writer = capture::Writer::create(config_.capture_path(), header);
  if (!writer.ok()) {
    throw sdk::Error("plugin config: field 'capture_path': " + std::string(writer.status().message()));
  }
  capture_ = *std::move(writer);
}

void EventLogger::rotate(const std::string& path) {
  bump(rotations_);
  if (max_files_ == 0) {
    std::remove(path.c_str());
    return;
  }
  std::remove((path + "." + std::to_string(max_files_)).c_str());
  for (uint32_t k = max_files_ - 1; k >= 1; --k) {
    std::rename((path + "." + std::to_string(k)).c_str(), (path + "." + std::to_string(k + 1)).c_str());
  }
  std::rename(path.c_str(), (path + ".1").c_str());
}

bool EventLogger::selected(uint8_t type) const { return type < 32 && (type_mask_ & (1u << type)) != 0; }

bool EventLogger::takeToken(int64_t now) {
  const double rate = config_.max_events_per_second();
  if (rate <= 0) return true;
  if (!refill_started_) {
    refill_started_ = true;
    last_refill_ns_ = now;
  } else if (now > last_refill_ns_) {
    tokens_ = std::min(burst_, tokens_ + static_cast<double>(now - last_refill_ns_) * rate / 1e9);
    last_refill_ns_ = now;
  }
  if (tokens_ < 1.0) return false;
  tokens_ -= 1.0;
  return true;
}

void EventLogger::consume(std::span<const sdk::Event> events) {
  if (closed_) return;
  const int64_t now = host_.now();
  for (const sdk::Event& e : events) {
    if (e.type == IOPF_EVENT_GAP) {
      bump(dropped_lost_, static_cast<uint64_t>(e.value));
      std::string m = "{\"type\":\"gap\",\"seq\":";
      appendInt(m, e.seq);
      m += ",\"lost\":";
      appendInt(m, e.value);
      m += "}";
      writeMarker(m);
      continue;
    }
    bump(events_seen_);
    if (!selected(e.type)) {
      bump(events_filtered_);
      continue;
    }
    if (!takeToken(now)) {
      bump(dropped_rate_limited_);
      ++pending_dropped_;
      continue;
    }
    if (pending_dropped_ != 0) {
      std::string m = "{\"type\":\"dropped\",\"reason\":\"rate_limit\",\"count\":";
      appendInt(m, pending_dropped_);
      m += "}";
      writeMarker(m);
      pending_dropped_ = 0;
    }
    writeEvent(e);
  }
  flushIfDue(false);
}

const EventLogger::Device& EventLogger::device(uint32_t id) {
  if (id >= devices_.size()) devices_.resize(id + 1);
  Device& d = devices_[id];
  if (!d.known) {
    if (const std::optional<sdk::DeviceInfo> info = host_.device(id)) {
      d.known = true;
      d.backend_handle = info->backend_handle;
      d.rid = info->rid;
      d.pci_segment = info->pci_segment;
    }
  }
  return d;
}

const std::string& EventLogger::handlerName(uint16_t id) {
  if (id >= handler_names_.size()) handler_names_.resize(id + 1);
  std::optional<std::string>& n = handler_names_[id];
  if (!n || n->empty()) n = host_.handlerName(id);
  return *n;
}

void EventLogger::writeEvent(const sdk::Event& e) {
  if (json_ != nullptr) {
    std::string& s = line_;
    s.clear();
    s += "{\"seq\":";
    appendInt(s, e.seq);
    key(s, "time_ns");
    appendInt(s, e.time_ns);
    key(s, "type");
    s.push_back('"');
    s += nameOf(kTypeNames, e.type);
    s.push_back('"');
    if (e.group != 0) {
      key(s, "group");
      appendInt(s, e.group);
    }
    if (e.device != 0) {
      const Device& d = device(e.device);
      key(s, "device");
      s += "{\"id\":";
      appendInt(s, uint64_t{e.device});
      if (d.known) {
        s += ",\"backend_handle\":";
        appendInt(s, d.backend_handle);
        s += ",\"rid\":";
        appendInt(s, uint64_t{d.rid});
        s += ",\"pci_segment\":";
        appendInt(s, uint64_t{d.pci_segment});
      }
      s.push_back('}');
    }
    if (e.domain != 0) {
      key(s, "domain");
      appendInt(s, uint64_t{e.domain});
    }
    if (carriesRequest(e.type)) {
      key(s, "pasid");
      if (e.flags & IOPF_EVENT_PASID_VALID) {
        appendInt(s, uint64_t{e.pasid});
      } else {
        s += "null";
      }
      key(s, "prgi");
      appendInt(s, uint64_t{e.grpid});
      key(s, "addr");
      appendHex(s, e.addr);
      key(s, "perm");
      appendString(s, permString(e.perm));
      key(s, "last");
      s += (e.flags & IOPF_EVENT_LAST) ? "true" : "false";
      key(s, "cookie");
      if (e.flags & IOPF_EVENT_COOKIE_VALID) {
        appendInt(s, uint64_t{e.cookie});
      } else {
        s += "null";
      }
    }
    switch (e.type) {
      case IOPF_EVENT_RESPONDED:
        key(s, "code");
        appendString(s, nameOf(kCodeNames, e.code));
        key(s, "origin");
        appendString(s, nameOf(kOriginNames, e.origin));
        key(s, "latency_ns");
        appendInt(s, e.value);
        break;
      case IOPF_EVENT_HANDLER_VERDICT:
        key(s, "handler");
        appendString(s, handlerName(e.handler));
        key(s, "verdict");
        appendString(s, nameOf(kVerdictNames, e.verdict));
        key(s, "code");
        appendString(s, nameOf(kCodeNames, e.code));
        key(s, "origin");
        appendString(s, nameOf(kOriginNames, e.origin));
        key(s, "duration_ns");
        appendInt(s, e.value);
        break;
      case IOPF_EVENT_COMPLETION_REFUSED:
        key(s, "handler");
        appendString(s, e.handler == 0xffff ? std::string() : handlerName(e.handler));
        key(s, "code");
        appendString(s, nameOf(kCodeNames, e.code));
        key(s, "origin");
        appendString(s, nameOf(kOriginNames, e.origin));
        break;
      case IOPF_EVENT_TIMED_OUT:
        key(s, "age_ns");
        appendInt(s, e.value);
        break;
      case IOPF_EVENT_ATTACH:
      case IOPF_EVENT_DETACH:
        key(s, "epoch");
        appendInt(s, e.value);
        break;
      default:
        if (e.value != 0) {
          key(s, "value");
          appendInt(s, e.value);
        }
    }
    s += "}\n";
    writeJsonLine(s);
  }
  if (capture_) writeCapture(e);
  bump(events_written_);
}

void EventLogger::writeMarker(const std::string& line) {
  if (json_ == nullptr) return;
  writeJsonLine(line + "\n");
}

void EventLogger::writeJsonLine(const std::string& line) {
  if (config_.max_file_bytes() != 0 && json_bytes_ > 0 && json_bytes_ + line.size() > config_.max_file_bytes()) {
    std::fclose(json_);
    json_ = nullptr;
    rotate(config_.json_path());
    json_ = std::fopen(config_.json_path().c_str(), "w");
    if (json_ == nullptr) {
      bump(write_errors_);
      return;
    }
    std::setvbuf(json_, nullptr, _IOFBF, 1 << 20);
    json_bytes_ = 0;
  }
  if (std::fwrite(line.data(), 1, line.size(), json_) != line.size()) {
    bump(write_errors_);
    return;
  }
  json_bytes_ += line.size();
  bump(json_lines_);
}

void EventLogger::writeCapture(const sdk::Event& e) {
  Event event;
  static_assert(sizeof(Event) == sizeof(sdk::Event));
  std::memcpy(static_cast<void*>(&event), &e, sizeof event);
  if (!capture_->append(capture::toRecord(event)).ok()) {
    bump(write_errors_);
    return;
  }
  bump(capture_records_);
  if (config_.max_file_bytes() != 0 && capture_->bytes() >= config_.max_file_bytes()) {
    if (!capture_->close().ok()) bump(write_errors_);
    capture_.reset();
    rotate(config_.capture_path());
    try {
      openCapture();
    } catch (const std::exception&) {
      bump(write_errors_);
    }
  }
}

void EventLogger::flushIfDue(bool force) {
  const int64_t now = steadyNow();
  if (!force && now - last_flush_ns_ < flush_interval_ns_) return;
  last_flush_ns_ = now;
  if (json_ != nullptr && std::fflush(json_) != 0) bump(write_errors_);
  if (capture_ && !capture_->flush().ok()) bump(write_errors_);
}

void EventLogger::close() {
  if (closed_) return;
  closed_ = true;
  if (pending_dropped_ != 0) {
    std::string m = "{\"type\":\"dropped\",\"reason\":\"rate_limit\",\"count\":";
    appendInt(m, pending_dropped_);
    m += "}";
    writeMarker(m);
    pending_dropped_ = 0;
  }
  flushIfDue(true);
  if (json_ != nullptr) {
    if (std::fclose(json_) != 0) bump(write_errors_);
    json_ = nullptr;
  }
  if (capture_) {
    if (!capture_->close().ok()) bump(write_errors_);
    capture_.reset();
  }
}

void EventLogger::counters(sdk::Counters& out) const {
  out.add("events_seen", events_seen_.load(std::memory_order_relaxed));
  out.add("events_written", events_written_.load(std::memory_order_relaxed));
  out.add("events_filtered", events_filtered_.load(std::memory_order_relaxed));
  out.add("dropped_rate_limited", dropped_rate_limited_.load(std::memory_order_relaxed));
  out.add("dropped_lost", dropped_lost_.load(std::memory_order_relaxed));
  out.add("dropped", dropped_rate_limited_.load(std::memory_order_relaxed) +
                         dropped_lost_.load(std::memory_order_relaxed));
  out.add("json_lines", json_lines_.load(std::memory_order_relaxed));
  out.add("capture_records", capture_records_.load(std::memory_order_relaxed));
  out.add("rotations", rotations_.load(std::memory_order_relaxed));
  out.add("write_errors", write_errors_.load(std::memory_order_relaxed));
}

}  // namespace iopf::plugins::logger
