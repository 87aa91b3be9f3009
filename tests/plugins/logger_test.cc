// The logger plugin, loaded by path through the plugin host: its JSON lines and its capture file
// are parsed back and compared with the events the router published and the responses it sent;
// the rate limit counts exactly what it dropped; a logger that cannot write at all does not slow
// routing down; files rotate by size.
#include <fcntl.h>
#include <signal.h>
#include <gtest/gtest.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "iopf/capture_file.h"
#include "iopf/plugin_host.h"
#include "plugin_test_util.h"

namespace iopf {
namespace {

using google::protobuf::Struct;
using google::protobuf::Value;
using testing::readFile;
using testing::Reports;
using testing::RouterRig;
using testing::TempDir;
using testing::waitFor;

const std::string kLogger = IOPF_PLUGIN_LOGGER;
const std::string kGood = IOPF_FIXTURE_GOOD;

const char* typeName(EventType t) {
  static const char* const names[] = {
      "gap",          "request",        "group_queued", "dispatched",          "handler_verdict",
      "responded",    "timed_out",      "completion_refused", "attach",        "detach",
      "device_added", "device_removed", "domain_added", "stop_marker_dropped", "partial_discarded",
      "protocol_error", "request_dropped", "domain_removed", "chain_changed"};
  return names[static_cast<int>(t)];
}
const char* codeName(uint8_t c) { return c == 0 ? "success" : c == 1 ? "invalid" : "failure"; }
const char* originName(uint8_t o) {
  static const char* const names[] = {"handler",  "default",  "timeout",   "detach",       "operator",
                                      "shutdown", "overload", "no_domain", "handler_error"};
  return names[o];
}

std::vector<Struct> parseLines(const std::string& text) {
  std::vector<Struct> out;
  size_t pos = 0;
  while (pos < text.size()) {
    const size_t nl = text.find('\n', pos);
    EXPECT_NE(nl, std::string::npos) << "unterminated last line";
    if (nl == std::string::npos) break;
    Struct s;
    const auto st = google::protobuf::util::JsonStringToMessage(text.substr(pos, nl - pos), &s);
    EXPECT_TRUE(st.ok()) << text.substr(pos, nl - pos);
    out.push_back(s);
    pos = nl + 1;
  }
  return out;
}
const Value& field(const Struct& s, const std::string& k) {
  static const Value missing;
  auto it = s.fields().find(k);
  return it == s.fields().end() ? missing : it->second;
}
bool has(const Struct& s, const std::string& k) { return s.fields().count(k) != 0; }
uint64_t num(const Struct& s, const std::string& k) {
  return static_cast<uint64_t>(field(s, k).number_value());
}
std::string text(const Struct& s, const std::string& k) { return field(s, k).string_value(); }
std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

std::vector<Event> busEvents(Router& router) {
  std::vector<Event> out(router.events().capacity());
  uint64_t cursor = 1;
  out.resize(router.events().read(cursor, out));
  return out;
}

// Every field of one JSON line against the event it logs.
void expectLineMatches(const Struct& line, const Event& e, const RouterRig& rig, Router& router) {
  SCOPED_TRACE("seq " + std::to_string(e.seq));
  EXPECT_EQ(num(line, "seq"), e.seq);
  EXPECT_EQ(num(line, "time_ns"), static_cast<uint64_t>(e.time_ns));
  EXPECT_EQ(text(line, "type"), typeName(e.type));
  EXPECT_EQ(num(line, "group"), e.group);
  EXPECT_EQ(num(line, "domain"), e.domain);
  if (e.device != 0) {
    const Struct& d = field(line, "device").struct_value();
    EXPECT_EQ(num(d, "id"), e.device);
    EXPECT_EQ(num(d, "backend_handle"), 42u);
    EXPECT_EQ(num(d, "rid"), 0x0300u);
    EXPECT_EQ(num(d, "pci_segment"), 1u);
    EXPECT_EQ(e.device, rig.device);
  } else {
    EXPECT_FALSE(has(line, "device"));
  }
  if (e.type == EventType::kRequest || e.type == EventType::kResponded || e.type == EventType::kDispatched ||
      e.type == EventType::kGroupQueued || e.type == EventType::kHandlerVerdict) {
    if (e.flags & event_flag::kPasidValid) {
      EXPECT_EQ(num(line, "pasid"), e.pasid);
    } else {
      EXPECT_EQ(field(line, "pasid").kind_case(), Value::kNullValue);
    }
    EXPECT_EQ(num(line, "prgi"), e.grpid);
    EXPECT_EQ(text(line, "addr"), hex(e.addr));
    EXPECT_EQ(text(line, "perm"), std::string(e.perm & perm::kRead ? "r" : "") + (e.perm & perm::kWrite ? "w" : ""));
    EXPECT_EQ(field(line, "last").bool_value(), (e.flags & event_flag::kLast) != 0);
  }
  if (e.type == EventType::kResponded) {
    EXPECT_EQ(text(line, "code"), codeName(e.code));
    EXPECT_EQ(text(line, "origin"), originName(e.origin));
    EXPECT_EQ(num(line, "latency_ns"), static_cast<uint64_t>(e.value));
  }
  if (e.type == EventType::kHandlerVerdict) {
    EXPECT_EQ(text(line, "handler"), router.handlerName(e.handler));
    EXPECT_EQ(text(line, "verdict"), e.verdict == 1 ? "respond" : e.verdict == 2 ? "defer" : "continue");
    EXPECT_EQ(num(line, "duration_ns"), static_cast<uint64_t>(e.value));
  }
}

void expectSameEvent(const Event& a, const Event& b) {
  EXPECT_EQ(a.seq, b.seq);
  EXPECT_EQ(a.time_ns, b.time_ns);
  EXPECT_EQ(a.type, b.type);
  EXPECT_EQ(a.group, b.group);
  EXPECT_EQ(a.addr, b.addr);
  EXPECT_EQ(a.value, b.value);
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.domain, b.domain);
  EXPECT_EQ(a.pasid, b.pasid);
  EXPECT_EQ(a.grpid, b.grpid);
  EXPECT_EQ(a.cookie, b.cookie);
  EXPECT_EQ(a.flags, b.flags);
  EXPECT_EQ(a.perm, b.perm);
  EXPECT_EQ(a.code, b.code);
  EXPECT_EQ(a.origin, b.origin);
  EXPECT_EQ(a.verdict, b.verdict);
  EXPECT_EQ(a.handler, b.handler);
}

std::string loggerConfig(const std::string& json, const std::string& capture, const std::string& extra = "") {
  std::string c = "{\"json_path\": \"" + json + "\"";
  if (!capture.empty()) c += ", \"capture_path\": \"" + capture + "\"";
  if (!extra.empty()) c += ", " + extra;
  return c + "}";
}

// A fixed mix of groups: PASID and cookie, multi-request, writes, an unattached PASID (no domain).
void routeMix(RouterRig& rig) {
  ASSERT_TRUE(rig.router->attach(rig.device, 7u, rig.domain).ok());
  auto deliver = [&](std::vector<PageRequest> v) {
    rig.backend.sink().deliver(v);
    rig.clock.advance(750);
    rig.router->runUntilIdle();
  };
  deliver({rig.request(1, 0x1000, true)});
  deliver({rig.request(2, 0x7000'1234, true, perm::kRead | perm::kWrite, 7u, 99u)});
  deliver({rig.request(3, 0x2000, false, perm::kRead, 7u), rig.request(3, 0x3000, true, perm::kRead, 7u)});
  deliver({rig.request(4, 0x4000, true, perm::kRead, 9u)});  // PASID 9 is not attached
  deliver({rig.request(5, 0x5000, true, perm::kWrite)});
}

TEST(LoggerPlugin, JsonLinesAndCaptureMatchTheRoutedEvents) {
  TempDir dir;
  const std::string json = dir.file("events.jsonl");
  const std::string cap = dir.file("events.iopfcap");
  Reports reports;
  RouterRig rig;
  PluginHostOptions o;
  o.call_budget_ns = testing::kGenerousBudgetNs;
  o.report = reports.sink();
  PluginHost host(rig.router.get(), o);
  ASSERT_TRUE(host.loadFile(kLogger, loggerConfig(json, cap)).ok());
  ASSERT_TRUE(host.loadFile(kGood).ok());
  auto good = host.createHandler("good", rig.domain);
  ASSERT_TRUE(good.ok());
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*good}).ok());
  ASSERT_TRUE(host.start().ok());
  routeMix(rig);
  ASSERT_EQ(rig.backend.responseCount(), 5u);
  host.shutdown();  // the reader delivers everything published, the logger flushes and closes

  const std::vector<Event> events = busEvents(*rig.router);
  ASSERT_GT(events.size(), 25u);
  ASSERT_EQ(events.front().seq, 1u);
  EXPECT_EQ(host.counter("logger", "events_seen"), events.size());
  EXPECT_EQ(host.counter("logger", "events_written"), events.size());
  EXPECT_EQ(host.counter("logger", "dropped"), 0u);
  EXPECT_EQ(host.status("logger")->events_delivered, events.size());

  // JSON: one line per event, in order, every field as published.
  const std::vector<Struct> lines = parseLines(readFile(json));
  ASSERT_EQ(lines.size(), events.size());
  for (size_t i = 0; i < events.size(); ++i) expectLineMatches(lines[i], events[i], rig, *rig.router);
  // ... and each response the backend got is there with its device identity, code, origin, latency.
  std::map<uint64_t, Struct> responded;
  for (const Struct& l : lines) {
    if (text(l, "type") == "responded") responded[num(l, "group")] = l;
  }
  for (const Response& r : rig.backend.responses()) {
    ASSERT_EQ(responded.count(r.group), 1u) << r.group;
    const Struct& l = responded[r.group];
    EXPECT_EQ(text(l, "code"), codeName(static_cast<uint8_t>(r.code)));
    EXPECT_EQ(text(l, "origin"), originName(static_cast<uint8_t>(r.origin)));
    EXPECT_EQ(num(l, "latency_ns"), static_cast<uint64_t>(r.latency_ns));
    EXPECT_EQ(num(field(l, "device").struct_value(), "backend_handle"), r.backend_handle);
    EXPECT_EQ(num(l, "prgi"), r.grpid);
    if (r.pasid) {
      EXPECT_EQ(num(l, "pasid"), *r.pasid);
    } else {
      EXPECT_EQ(field(l, "pasid").kind_case(), Value::kNullValue);
    }
    if (r.cookie) {
      EXPECT_EQ(num(l, "cookie"), *r.cookie);
    }
  }
  EXPECT_EQ(num(responded[rig.backend.responses()[1].group], "latency_ns"), 750u);
  EXPECT_EQ(text(responded[rig.backend.responses()[3].group], "origin"), "no_domain");

  // Capture: header with magic/version and the device table, then one record per event.
  auto reader = capture::Reader::open(cap);
  ASSERT_TRUE(reader.ok()) << reader.status();
  const auto& header = (*reader)->header();
  EXPECT_EQ(header.format_version(), capture::kFormatVersion);
  EXPECT_EQ(header.producer(), "iopf logger 0.1.0");
  ASSERT_EQ(header.devices_size(), 1);
  EXPECT_EQ(header.devices(0).device_id(), rig.device);
  EXPECT_EQ(header.devices(0).name(), "nic0");
  EXPECT_EQ(header.devices(0).backend(), "memory");
  EXPECT_EQ(header.devices(0).backend_handle(), 42u);
  EXPECT_EQ(header.devices(0).rid(), 0x0300u);
  EXPECT_TRUE(header.devices(0).needs_pasid());
  ASSERT_EQ(header.domains_size(), 1);
  EXPECT_EQ(header.domains(0).name(), "host");
  EXPECT_EQ(header.domains(0).kind(), "paging");
  size_t i = 0;
  v1::CaptureRecord record;
  for (;;) {
    absl::StatusOr<bool> more = (*reader)->next(record);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    ASSERT_LT(i, events.size());
    expectSameEvent(capture::fromRecord(record), events[i]);
    ++i;
  }
  EXPECT_EQ(i, events.size());
  rig.router->shutdown();
}

TEST(LoggerPlugin, RateLimitDropsExactlyWhatItDoesNotWriteAndRoutingIsUnchanged) {
  // The bucket runs on the router's clock: with a manual clock that does not move, exactly
  // `burst` events are written and every other one is counted as dropped.
  auto run = [](bool with_logger, const std::string& json, uint64_t* total_events, PluginStatus* status) {
    RouterRig rig;
    PluginHostOptions o;
    o.call_budget_ns = testing::kGenerousBudgetNs;
    o.report = [](const PluginReport&) {};
    PluginHost host(rig.router.get(), o);
    if (with_logger) {
      EXPECT_TRUE(host.loadFile(kLogger, loggerConfig(json, "", R"("max_events_per_second": 1000, "burst": 50)")).ok());
      EXPECT_TRUE(host.start().ok());
    }
    std::vector<std::shared_ptr<Handler>> chain{std::make_shared<testing::RouterRig::Success>()};
    EXPECT_TRUE(rig.router->setChain(rig.domain, chain).ok());
    for (uint32_t i = 0; i < 300; ++i) {
      std::vector<PageRequest> v{rig.request(i % 512, 0x1000ull * i, true)};
      rig.backend.sink().deliver(v);
      if (i % 10 == 9) rig.router->runUntilIdle();
    }
    rig.router->runUntilIdle();
    host.shutdown();
    *total_events = rig.router->events().head() - 1;
    if (with_logger) *status = *host.status("logger");
    std::vector<std::tuple<GroupId, ResponseCode, Origin, int64_t>> out;
    for (const Response& r : rig.backend.responses()) out.emplace_back(r.group, r.code, r.origin, r.latency_ns);
    rig.router->shutdown();
    return out;
  };
  TempDir dir;
  const std::string json = dir.file("events.jsonl");
  uint64_t baseline_events = 0, events = 0;
  PluginStatus status;
  const auto baseline = run(false, "", &baseline_events, &status);
  const auto logged = run(true, json, &events, &status);
  ASSERT_EQ(baseline.size(), 300u);
  EXPECT_EQ(logged, baseline);  // same groups, codes, origins and latencies with the logger
  EXPECT_EQ(events, baseline_events);

  std::map<std::string, uint64_t> c(status.counters.begin(), status.counters.end());
  EXPECT_EQ(c["events_seen"], events);
  EXPECT_EQ(c["events_written"], 50u);
  EXPECT_EQ(c["dropped_rate_limited"], events - 50);
  EXPECT_EQ(c["dropped_lost"], 0u);
  EXPECT_EQ(c["dropped"], events - 50);
  const std::vector<Struct> lines = parseLines(readFile(json));
  ASSERT_EQ(lines.size(), 51u);
  for (size_t i = 0; i < 50; ++i) EXPECT_EQ(num(lines[i], "seq"), i + 1);  // the first 50, in order
  EXPECT_EQ(text(lines[50], "type"), "dropped");
  EXPECT_EQ(text(lines[50], "reason"), "rate_limit");
  EXPECT_EQ(num(lines[50], "count"), events - 50);
}

TEST(LoggerPlugin, ALoggerThatCannotWriteDoesNotBlockRoutingAndCountsWhatItLost) {
  ::signal(SIGPIPE, SIG_IGN);
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_GT(::fcntl(fds[1], F_SETPIPE_SZ, 4096), 0);
  RouterRig rig(/*threaded=*/true, /*shards=*/1, /*event_capacity=*/1024);
  PluginHostOptions o;
  o.call_budget_ns = testing::kGenerousBudgetNs;
  o.report = [](const PluginReport&) {};
  PluginHost host(rig.router.get(), o);
  // If an assertion ends the test early, closing the read end unblocks the logger (EPIPE) so the
  // host's shutdown can finish.
  struct ReadEnd {
    int fd;
    ~ReadEnd() {
      if (fd >= 0) ::close(fd);
    }
  } read_end{fds[0]};
  const std::string json = "/proc/self/fd/" + std::to_string(fds[1]);
  ASSERT_TRUE(host.loadFile(kLogger, loggerConfig(json, "", R"("flush_interval_ms": 0)")).ok());
  ::close(fds[1]);  // the logger holds its own descriptor of the pipe
  ASSERT_TRUE(host.start().ok());
  std::vector<std::shared_ptr<Handler>> chain{std::make_shared<testing::RouterRig::Success>()};
  ASSERT_TRUE(rig.router->setChain(rig.domain, chain).ok());

  // Fill the pipe until the logger is stuck in a write nobody reads.
  uint32_t grpid = 0;
  auto route = [&](uint32_t n) {
    for (uint32_t i = 0; i < n; ++i) {
      std::vector<PageRequest> v{rig.request(grpid++ % 512, 0x1000ull * grpid, true)};
      rig.backend.sink().deliver(v);
      while (rig.router->openGroups() > 256) std::this_thread::yield();
    }
  };
  // The pipe holds 4 KiB, ~16 lines: once the logger has written into it, it is blocked for the
  // rest of the run (the burst below makes ~25,000 events).
  route(20);
  ASSERT_TRUE(waitFor(
      [&] {
        int queued = 0;
        ::ioctl(fds[0], FIONREAD, &queued);
        return queued > 0;
      },
      std::chrono::seconds(20)));
  // A burst far beyond what the bus holds: every group is answered while the logger is blocked.
  constexpr uint32_t kBurst = 5000;
  route(kBurst);
  ASSERT_EQ(rig.backend.waitForResponses(20 + kBurst, std::chrono::seconds(60)), 20u + kBurst);
  const LatencyHistogram::Snapshot latency = rig.router->stats().latency;
  ::testing::Test::RecordProperty("routing_p99_ns_with_blocked_logger", std::to_string(latency.percentile(0.99)));
  rig.router->shutdown();

  std::string out;
  std::thread drain([&] {
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(fds[0], buf, sizeof buf);
      if (n <= 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
  });
  host.shutdown();  // the logger catches up with what the bus still holds, then closes the pipe
  drain.join();

  const uint64_t published = rig.router->events().head() - 1;
  const PluginStatus logger_status = *host.status("logger");
  std::map<std::string, uint64_t> c(logger_status.counters.begin(), logger_status.counters.end());
  EXPECT_GT(c["dropped_lost"], 0u);
  EXPECT_EQ(c["events_seen"] + c["dropped_lost"], published);  // every event seen or counted lost
  EXPECT_EQ(c["events_written"], c["events_seen"]);
  EXPECT_EQ(c["dropped"], c["dropped_lost"]);
  EXPECT_EQ(host.status("logger")->events_lost, c["dropped_lost"]);
  const std::vector<Struct> lines = parseLines(out);
  uint64_t event_lines = 0, lost_in_markers = 0, prev_seq = 0, missing = 0;
  for (const Struct& l : lines) {
    if (text(l, "type") == "gap") {
      lost_in_markers += num(l, "lost");
      continue;
    }
    ++event_lines;
    const uint64_t seq = num(l, "seq");
    EXPECT_GT(seq, prev_seq);
    missing += seq - prev_seq - 1;
    prev_seq = seq;
  }
  missing += published - prev_seq;
  EXPECT_EQ(event_lines, c["events_written"]);
  EXPECT_EQ(lost_in_markers, c["dropped_lost"]);
  EXPECT_EQ(missing, c["dropped_lost"]);  // the sequence numbers not in the file are exactly those
}

TEST(LoggerPlugin, FilesRotateBySize) {
  TempDir dir;
  const std::string json = dir.file("events.jsonl");
  const std::string cap = dir.file("events.iopfcap");
  RouterRig rig;
  PluginHostOptions o;
  o.call_budget_ns = testing::kGenerousBudgetNs;
  o.report = [](const PluginReport&) {};
  PluginHost host(rig.router.get(), o);
  ASSERT_TRUE(host.loadFile(kLogger, loggerConfig(json, cap, R"("max_file_bytes": 4000, "max_files": 2)")).ok());
  ASSERT_TRUE(host.start().ok());
  std::vector<std::shared_ptr<Handler>> chain{std::make_shared<testing::RouterRig::Success>()};
  ASSERT_TRUE(rig.router->setChain(rig.domain, chain).ok());
  for (uint32_t i = 0; i < 100; ++i) rig.group(i, 0x1000ull * i);
  host.shutdown();
  const uint64_t published = rig.router->events().head() - 1;
  EXPECT_GT(host.counter("logger", "rotations").value_or(0), 4u);
  for (const std::string& base : {json, cap}) {
    EXPECT_TRUE(std::filesystem::exists(base));
    EXPECT_TRUE(std::filesystem::exists(base + ".1"));
    EXPECT_TRUE(std::filesystem::exists(base + ".2"));
    EXPECT_FALSE(std::filesystem::exists(base + ".3"));
  }
  // JSON files stay under the limit, parse, and together end with the last event.
  uint64_t newest_first = 0, newest_last = 0, older_last = 0;
  for (const std::string& f : {json + ".2", json + ".1", json}) {
    EXPECT_LE(std::filesystem::file_size(f), 4000u);
    const auto lines = parseLines(readFile(f));
    ASSERT_FALSE(lines.empty());
    if (f == json) {
      newest_first = num(lines.front(), "seq");
      newest_last = num(lines.back(), "seq");
    } else if (f == json + ".1") {
      older_last = num(lines.back(), "seq");
    }
  }
  EXPECT_EQ(newest_last, published);
  EXPECT_EQ(newest_first, older_last + 1);  // nothing lost at a rotation
  // Every capture file is a complete capture of its own.
  uint64_t last_seq = 0;
  for (const std::string& f : {cap + ".2", cap + ".1", cap}) {
    auto reader = capture::Reader::open(f);
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_EQ((*reader)->header().devices_size(), 1);
    v1::CaptureRecord r;
    size_t n = 0;
    while (*(*reader)->next(r)) {
      if (last_seq != 0) {
        EXPECT_EQ(r.seq(), last_seq + 1) << f;
      }
      last_seq = r.seq();
      ++n;
    }
    EXPECT_GT(n, 0u) << f;
  }
  EXPECT_EQ(last_seq, published);
  rig.router->shutdown();
}

TEST(LoggerPlugin, ConfigErrorsAndNoHandler) {
  TempDir dir;
  RouterRig rig;
  PluginHostOptions o;
  o.call_budget_ns = testing::kGenerousBudgetNs;
  o.report = [](const PluginReport&) {};
  {
    PluginHost host(rig.router.get(), o);
    absl::Status s = host.loadFile(kLogger, loggerConfig(dir.file("e.jsonl"), "", R"("types": ["responded", "bogus"])"));
    EXPECT_EQ(s.message(), "plugin 'logger' (" + kLogger +
                               "): init failed: plugin config: field 'types' has an unknown event type 'bogus'");
  }
  {
    PluginHost host(rig.router.get(), o);
    absl::Status s = host.loadFile(kLogger, loggerConfig("/nonexistent/dir/e.jsonl", ""));
    EXPECT_EQ(s.message(), "plugin 'logger' (" + kLogger +
                               "): init failed: plugin config: field 'json_path': cannot open "
                               "'/nonexistent/dir/e.jsonl': No such file or directory");
  }
  {
    PluginHost host(rig.router.get(), o);
    ASSERT_TRUE(host.loadFile(kLogger, loggerConfig(dir.file("e.jsonl"), "", R"("types": ["responded"])")).ok());
    auto h = host.createHandler("logger", rig.domain);
    EXPECT_EQ(h.status().message(), "plugin 'logger' provides no handler (it only consumes events)");
    ASSERT_TRUE(host.start().ok());
    std::vector<std::shared_ptr<Handler>> chain{std::make_shared<testing::RouterRig::Success>()};
    ASSERT_TRUE(rig.router->setChain(rig.domain, chain).ok());
    for (uint32_t i = 0; i < 3; ++i) rig.group(i, 0x1000ull * i);
    host.shutdown();
    const auto lines = parseLines(readFile(dir.file("e.jsonl")));
    ASSERT_EQ(lines.size(), 3u);  // only the selected type
    for (const Struct& l : lines) EXPECT_EQ(text(l, "type"), "responded");
    EXPECT_EQ(host.counter("logger", "events_filtered").value_or(0) + 3, rig.router->events().head() - 1);
  }
  rig.router->shutdown();
}

}  // namespace
}  // namespace iopf
