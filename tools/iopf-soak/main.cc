// iopf-soak — runs iopfd with the simulated backend for a long time under fault injection and
// checks that nothing is lost, answered twice or leaks (issue 11, "Soak"). scripts/soak.sh runs it.
//
//   iopf-soak --iopfd PATH --minutes M [--workdir DIR] [--rate GROUPS_PER_S] [--seed N]
//
// 1. Calibration (unless --rate): iopfd runs the soak scenario closed-loop (devices fault as fast as
//    their PRI credits allow) for 5 s with an unfiltered watcher attached. The measured maximum is
//    the router's groups/s, or, if the watcher fell behind, the rate whose events it can follow
//    (its events/s / events per group). The soak then runs open-loop at half of it.
// 2. Soak: a watcher that never disconnects (checks every event seq is the previous + 1, and tracks
//    each group from GROUP_QUEUED to RESPONDED), a watcher that disconnects every 1-4 s and resumes at
//    last seq + 1 (checks the resume is exact), an injector (lost LAST followed by an overflow, PASID
//    stop marker + resume, bursts beyond the PRI allocation, hot-unplugs of the "hot" devices, guest
//    resets = detach + attach of a VF through the API), and a sampler (iopfd's RSS, open groups).
// 3. End: every device unplugged (open groups answered, origin detach; nothing new comes), the
//    watcher catches up with the head, GetStats, SIGTERM (drain, exit 0), then the checks:
//    - every group answered exactly once: no RESPONDED for a group answered before or never queued
//      (except in the first second: a group queued before the stream began and answered while the
//      snapshot was built is in neither), none left open; daemon counters groups == responses + open groups, and 0 open;
//    - event seqs contiguous for the watcher that never fell behind (a gap marker fails the run);
//    - RSS flat: least-squares slope over the run after warm-up, in KB/min;
//    - open groups do not grow: mean of the last third <= 1.5 x mean of the first third + 64.
// Exit 0 when every check passes, 1 when one fails, 2 on usage or set-up errors. The last line of
// stdout is a JSON summary. IOPF_SOAK_DEBUG=1 prints every watch session that ended before its first
// batch.
#include <fcntl.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_set>
#include <vector>

#include "iopf/api/packed_events.h"
#include "iopf/v1/router.grpc.pb.h"

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;
namespace v1 = iopf::v1;

struct Options {
  std::string iopfd;
  double minutes = 2;
  std::string workdir;
  uint64_t rate = 0;  // groups/s for the whole system; 0: calibrate
  uint64_t seed = 1;
};

[[noreturn]] void usage(int rc) {
  std::fprintf(
      rc == 0 ? stdout : stderr,
      "usage: iopf-soak --iopfd PATH --minutes M [--workdir DIR] [--rate GROUPS_PER_S] [--seed N]\n");
  std::exit(rc);
}

constexpr int kDevicesNic = 2, kDevicesVf = 2, kDevicesHot = 6, kDevicesSva = 1;
constexpr int kRatedDevices = kDevicesNic + kDevicesVf + kDevicesHot + kDevicesSva;

// The soak scenario: three kinds of domain, devices of each; per-device rate (0: closed loop).
std::string scenarioJson(uint64_t per_device_rate) {
  const std::string rate = std::to_string(per_device_rate);
  std::ostringstream s;
  s << R"({
  "name": "soak", "description": "iopf-soak: every domain kind, hot-pluggable devices, injections at run time",
  "seed": 11, "duration_ms": 0,
  "router": { "shards": 2 }, "backend": { "feeders": 1 },
  "domains": [
    { "name": "host", "kind": "paging", "deadline_ms": 100,
      "address_space": [ { "base": "0x10000000", "size": "256MiB", "perm": "rw" } ],
      "chain": [ { "name": "sim_resolver" } ] },
    { "name": "vm", "kind": "nested", "deadline_ms": 50,
      "address_space": [ { "base": "0x10000000", "size": "256MiB", "perm": "rw" } ],
      "chain": [ { "name": "sim_guest", "delay_us": 200 } ] },
    { "name": "sva", "kind": "sva", "deadline_ms": 100,
      "address_space": [ { "base": "0x10000000", "size": "128MiB", "perm": "rw" } ],
      "chain": [ { "name": "sim_resolver" } ] }
  ],
  "devices": [
    { "name": "nic", "count": )"
    << kDevicesNic << R"(, "pri_allocation": 32,
      "workload": { "base": "0x10000000", "size": "256MiB", "group_size": { "min": 1, "max": 4 }, "rate_groups_per_s": )"
    << rate << R"( } },
    { "name": "vf", "count": )"
    << kDevicesVf << R"(, "pri_allocation": 32, "rid": "06:00.0",
      "workload": { "base": "0x10000000", "size": "256MiB", "group_size": { "min": 1, "max": 3 }, "rate_groups_per_s": )"
    << rate << R"( } },
    { "name": "hot", "count": )"
    << kDevicesHot << R"(, "pri_allocation": 16, "rid": "07:00.0",
      "workload": { "base": "0x10000000", "size": "256MiB", "rate_groups_per_s": )"
    << rate << R"( } },
    { "name": "acc", "pri_allocation": 32, "pasid_bits": 8, "needs_pasid": true, "pasids": [ 1, 2 ], "rid": "08:00.0",
      "workload": { "kind": "zipf", "base": "0x10000000", "size": "128MiB", "hot_pages": 1024,
                    "group_size": { "min": 1, "max": 3 }, "rate_groups_per_s": )"
    << rate << R"( } }
  ],
  "attachments": [
    { "device": "nic*", "domain": "host" },
    { "device": "hot*", "domain": "host" },
    { "device": "vf*", "domain": "vm" },
    { "device": "acc", "pasid": 1, "domain": "sva" },
    { "device": "acc", "pasid": 2, "domain": "sva" }
  ]
}
)";
  return s.str();
}

// --- the daemon as a child process -------------------------------------------------------------------

class Daemon {
 public:
  Daemon(const Options& o, const std::string& tag, uint64_t per_device_rate) {
    namespace fs = std::filesystem;
    const std::string scenario = o.workdir + "/soak-" + tag + ".json";
    std::ofstream(scenario) << scenarioJson(per_device_rate);
    socket_ = o.workdir + "/iopfd.sock";
    config_ = o.workdir + "/iopfd-" + tag + ".yaml";
    // Half a core for the watchers (the daemon's default is 0.08, shared by every watcher): the soak
    // checks the router, and its faithful watcher must see every event while the resuming watcher
    // takes its share of the budget too.
    std::ofstream(config_) << "listen: [\"unix:" << socket_ << "\"]\n"
                           << "event_capacity: 1048576\n"
                           << "limits: {watch_cpu_cores: 0.5}\n"
                           << "backends:\n  - name: sim\n    type: simulated\n    scenario: \"" << scenario
                           << "\"\n";
    log_ = o.workdir + "/iopfd-" + tag + ".log";
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 2, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    std::vector<std::string> args = {o.iopfd, "--config", config_};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, o.iopfd.c_str(), &fa, nullptr, argv.data(), environ) != 0) {
      std::fprintf(stderr, "iopf-soak: cannot start %s\n", o.iopfd.c_str());
      std::exit(2);
    }
    posix_spawn_file_actions_destroy(&fa);
    channel_ = grpc::CreateChannel("unix:" + socket_, grpc::experimental::LocalCredentials(UDS));
    stub_ = v1::Router::NewStub(channel_);
    const auto deadline = Clock::now() + std::chrono::seconds(30);
    for (;;) {
      v1::Info info;
      if (call([&](grpc::ClientContext* c) { return stub_->GetInfo(c, {}, &info); }).ok()) break;
      if (Clock::now() > deadline || exited()) {
        std::fprintf(stderr, "iopf-soak: iopfd did not come up (log: %s)\n", log_.c_str());
        std::exit(2);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~Daemon() {
    if (pid_ > 0 && !exited()) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  template <typename F>
  grpc::Status call(F f) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return f(&ctx);
  }
  v1::Router::Stub& stub() { return *stub_; }
  pid_t pid() const { return pid_; }
  bool exited() {
    if (status_) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
    return status_.has_value();
  }
  // SIGTERM, then wait (up to 60 s); the exit status.
  int terminate() {
    ::kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + std::chrono::seconds(60);
    while (!exited()) {
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return WIFEXITED(*status_) ? WEXITSTATUS(*status_) : 128 + WTERMSIG(*status_);
  }
  uint64_t rssKb() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::strtoull(line.c_str() + 6, nullptr, 10);
    }
    return 0;
  }
  const std::string& log() const { return log_; }

 private:
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::string socket_, config_, log_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Router::Stub> stub_;
};

// --- watchers -----------------------------------------------------------------------------------------

// Never disconnects: every seq must follow the previous one; tracks every group's answer.
struct FaithfulWatcher {
  std::mutex mu;
  std::unordered_set<uint64_t> open;             // queued, not yet answered
  std::unordered_set<uint64_t> answered_recent;  // bounded: recent answers, to tell duplicates apart
  std::deque<uint64_t> answered_order;
  uint64_t queued = 0, responded = 0, duplicates = 0, unknown = 0, events = 0, batches = 0;
  uint64_t holes = 0, gaps = 0, first_seq = 0, last_seq = 0, torn = 0, before_snapshot = 0;
  int64_t first_time_ns = 0;
  static constexpr int64_t kSnapshotWindowNs = 1'000'000'000;  // far longer than a snapshot takes
  uint64_t expect = 0;  // the next seq
  bool ended = false;
  grpc::Status status;

  // One event, from either encoding.
  void onEvent(uint64_t seq, int type, uint64_t group, int64_t time_ns) {
    ++events;
    if (first_time_ns == 0) first_time_ns = time_ns;
    if (type == v1::EVENT_GAP) {
      ++gaps;
      expect = seq + 1;
      return;
    }
    if (expect != 0 && seq != expect) {
      // Events before next_seq may repeat what the snapshot showed (docs/api.md): skip those.
      if (seq < expect) return;
      ++holes;
    }
    expect = seq + 1;
    last_seq = seq;
    if (type == v1::EVENT_GROUP_QUEUED) {
      ++queued;
      open.insert(group);
    } else if (type == v1::EVENT_RESPONDED) {
      ++responded;
      if (open.erase(group) == 0) {
        if (answered_recent.count(group)) {
          ++duplicates;
        } else if (time_ns - first_time_ns < kSnapshotWindowNs) {
          // Queued before the stream's first event and answered while the snapshot was being
          // built: in neither (the snapshot lists the groups still open when it is built).
          ++before_snapshot;
        } else {
          ++unknown;
        }
      } else {
        answered_recent.insert(group);
        answered_order.push_back(group);
        if (answered_order.size() > (1u << 20)) {
          answered_recent.erase(answered_order.front());
          answered_order.pop_front();
        }
      }
    }
  }

  // The packed encoding (what a high-rate client such as the inspector uses); the flaky watcher
  // below reads messages, so the soak covers both.
  void run(v1::Router::Stub& stub, grpc::ClientContext* ctx) {
    v1::WatchRequest req;
    req.set_since_seq(0);
    req.set_max_batch(4096);
    req.set_allow_gap(true);
    req.set_encoding(v1::EVENT_ENCODING_PACKED);
    auto reader = stub.Watch(ctx, req);
    v1::WatchBatch b;
    while (reader->Read(&b)) {
      std::lock_guard lk(mu);
      ++batches;
      if (b.has_snapshot()) {
        for (const auto& g : b.snapshot().open_groups()) open.insert(g.id());
        expect = b.snapshot().next_seq();
        first_seq = expect;
      }
      if (b.lost() > 0) ++gaps;
      namespace pk = iopf::api::packed;
      const std::string& packed = b.packed_events();
      if (packed.size() % pk::kRecordSize != 0) ++torn;
      for (size_t at = 0; at + pk::kRecordSize <= packed.size(); at += pk::kRecordSize) {
        const pk::EventView e(reinterpret_cast<const uint8_t*>(packed.data()) + at);
        onEvent(e.seq(), e.type(), e.group(), e.timeNs());
      }
      for (const v1::Event& e : b.events()) onEvent(e.seq(), e.type(), e.group(), e.time_ns());
    }
    std::lock_guard lk(mu);
    status = reader->Finish();
    ended = true;
  }
};

// Disconnects every 1-4 s and resumes at last + 1: the first event after a resume must be exactly it.
struct FlakyWatcher {
  uint64_t reconnects = 0, exact_resumes = 0, inexact = 0, out_of_range = 0, events = 0;
  std::map<int, uint64_t> errors;  // gRPC code → count (CANCELLED, our own disconnects, not counted)
  std::string last_error;

  void run(v1::Router::Stub& stub, const std::atomic<bool>& stop, uint64_t seed) {
    std::mt19937_64 rng(seed);
    uint64_t next = 0;  // 0: snapshot first
    while (!stop.load()) {
      grpc::ClientContext ctx;
      v1::WatchRequest req;
      req.set_since_seq(next);
      req.set_max_batch(1024);
      req.set_progress_interval_ms(200);
      auto reader = stub.Watch(&ctx, req);
      const auto until = Clock::now() + std::chrono::milliseconds(1000 + rng() % 3000);
      const uint64_t resumed_at = next;
      bool first = true;
      uint64_t batches = 0;
      v1::WatchBatch b;
      while (Clock::now() < until && !stop.load() && reader->Read(&b)) {
        ++batches;
        if (b.has_snapshot()) next = b.snapshot().next_seq();
        for (const v1::Event& e : b.events()) {
          ++events;
          if (first && resumed_at != 0) (e.seq() == resumed_at ? exact_resumes : inexact) += 1;
          first = false;
          next = e.seq() + 1;
        }
        if (b.events_size() == 0 && b.next_seq() != 0 && first && resumed_at != 0) {
          // Only progress so far: the resume point must not have moved backwards.
          if (b.next_seq() < resumed_at) ++inexact;
        }
      }
      ctx.TryCancel();
      while (reader->Read(&b)) {
      }
      const grpc::Status st = reader->Finish();
      if (batches == 0 && std::getenv("IOPF_SOAK_DEBUG")) {
        std::fprintf(stderr, "flaky: empty session since %llu: code %d %s\n", (unsigned long long)resumed_at,
                     st.error_code(), st.error_message().c_str());
      }
      if (st.error_code() == grpc::StatusCode::OUT_OF_RANGE) {
        ++out_of_range;  // fell behind the ring while away: start over with a snapshot
        next = 0;
      }
      if (!st.ok() && st.error_code() != grpc::StatusCode::CANCELLED) {
        ++errors[st.error_code()];
        last_error = st.error_message();
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      ++reconnects;
    }
  }
};

double slope(const std::vector<std::pair<double, double>>& pts) {  // least squares, y per x
  if (pts.size() < 2) return 0;
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (auto [x, y] : pts) {
    sx += x;
    sy += y;
    sxx += x * x;
    sxy += x * y;
  }
  const double n = static_cast<double>(pts.size());
  const double d = n * sxx - sx * sx;
  return d == 0 ? 0 : (n * sxy - sx * sy) / d;
}

struct Calibration {
  double groups_per_s = 0;          // routing, closed loop
  double events_per_group = 0;      // events the router publishes per group
  double watcher_events_per_s = 0;  // what the unfiltered watcher received
  bool watcher_fell_behind = false;
  uint64_t sustainable() const {
    double r = groups_per_s;
    if (watcher_fell_behind && events_per_group > 0) r = std::min(r, watcher_events_per_s / events_per_group);
    return static_cast<uint64_t>(r);
  }
};

// Closed loop for `seconds`: how fast the router routes, and how fast one unfiltered watcher follows.
Calibration measure(Daemon& d, FaithfulWatcher& w, double seconds) {
  auto sample = [&] {
    v1::Stats s;
    v1::Info info;
    (void)d.call([&](grpc::ClientContext* c) { return d.stub().GetStats(c, {}, &s); });
    (void)d.call([&](grpc::ClientContext* c) { return d.stub().GetInfo(c, {}, &info); });
    std::lock_guard lk(w.mu);
    return std::tuple<uint64_t, uint64_t, uint64_t, uint64_t>(s.groups(), info.event_head_seq(), w.events,
                                                              w.gaps);
  };
  std::this_thread::sleep_for(std::chrono::seconds(1));  // warm-up
  const auto [g0, e0, w0, gaps0] = sample();
  const auto t0 = Clock::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  const auto [g1, e1, w1, gaps1] = sample();
  const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
  Calibration c;
  c.groups_per_s = static_cast<double>(g1 - g0) / dt;
  c.events_per_group = g1 > g0 ? static_cast<double>(e1 - e0) / static_cast<double>(g1 - g0) : 0;
  c.watcher_events_per_s = static_cast<double>(w1 - w0) / dt;
  c.watcher_fell_behind = gaps1 > gaps0;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(2);
      return argv[++i];
    };
    if (a == "--iopfd")
      o.iopfd = value();
    else if (a == "--minutes")
      o.minutes = std::atof(value().c_str());
    else if (a == "--workdir")
      o.workdir = value();
    else if (a == "--rate")
      o.rate = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "--seed")
      o.seed = std::strtoull(value().c_str(), nullptr, 10);
    else if (a == "-h" || a == "--help")
      usage(0);
    else
      usage(2);
  }
  if (o.iopfd.empty() || o.minutes <= 0) usage(2);
  if (o.workdir.empty()) {
    char tmpl[] = "/tmp/iopf-soak-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) return 2;
    o.workdir = tmpl;
  }
  std::filesystem::create_directories(o.workdir);
  std::printf("iopf-soak: workdir %s\n", o.workdir.c_str());

  uint64_t max_rate = 0;
  if (o.rate == 0) {
    Daemon cal(o, "calibrate", 0);
    FaithfulWatcher w;  // the watcher is part of the measured system
    grpc::ClientContext wctx;
    std::thread wt([&] { w.run(cal.stub(), &wctx); });
    const Calibration c = measure(cal, w, 5);
    wctx.TryCancel();
    wt.join();
    max_rate = c.sustainable();
    std::printf(
        "iopf-soak: closed loop: router %.0f groups/s, %.1f events/group, one unfiltered watcher %.0f "
        "events/s%s\n",
        c.groups_per_s, c.events_per_group, c.watcher_events_per_s,
        c.watcher_fell_behind ? " (fell behind: the watcher is the limit)" : " (kept up)");
    if (cal.terminate() != 0) {
      std::fprintf(stderr, "iopf-soak: the calibration daemon did not exit cleanly (log: %s)\n",
                   cal.log().c_str());
      return 2;
    }
    o.rate = std::max<uint64_t>(max_rate / 2, kRatedDevices);
    std::printf("iopf-soak: measured maximum %" PRIu64
                " groups/s (router with a watcher that keeps up); soaking at %" PRIu64 " groups/s\n",
                max_rate, o.rate);
  }
  std::fflush(stdout);

  Daemon d(o, "soak", o.rate / kRatedDevices);
  std::atomic<bool> stop{false};
  FaithfulWatcher faithful;
  grpc::ClientContext fctx;
  std::thread ft([&] { faithful.run(d.stub(), &fctx); });
  FlakyWatcher flaky;
  std::thread flt([&] { flaky.run(d.stub(), stop, o.seed); });

  // Devices and domains by name.
  v1::ListDevicesResponse devs;
  v1::ListDomainsResponse doms;
  (void)d.call([&](grpc::ClientContext* c) { return d.stub().ListDevices(c, {}, &devs); });
  (void)d.call([&](grpc::ClientContext* c) { return d.stub().ListDomains(c, {}, &doms); });
  auto devicesNamed = [&](const std::string& prefix) {
    std::vector<uint32_t> out;
    for (const auto& dv : devs.devices()) {
      if (dv.name().rfind(prefix, 0) == 0) out.push_back(dv.id());
    }
    return out;
  };
  uint32_t vm_domain = 0;
  for (const auto& dm : doms.domains()) {
    if (dm.name() == "vm") vm_domain = dm.id();
  }
  const auto nics = devicesNamed("nic"), vfs = devicesNamed("vf"), acc = devicesNamed("acc");
  auto hots = devicesNamed("hot");

  // Injector.
  std::map<std::string, uint64_t> injected;
  std::map<std::string, uint64_t> injection_errors;
  std::mutex inj_mu;
  std::thread injector([&] {
    std::mt19937_64 rng(o.seed * 7919);
    const auto start = Clock::now();
    const double total_s = o.minutes * 60;
    size_t unplugged = 0;
    while (!stop.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(300 + rng() % 900));
      if (stop.load()) break;
      auto inject = [&](uint32_t dev, const std::string& kind, std::map<std::string, std::string> args = {}) {
        v1::InjectFaultRequest r;
        r.set_device(dev);
        r.set_kind(kind);
        for (auto& [k, v] : args) (*r.mutable_args())[k] = v;
        v1::InjectFaultResponse resp;
        const grpc::Status st =
            d.call([&](grpc::ClientContext* c) { return d.stub().InjectFault(c, r, &resp); });
        std::lock_guard lk(inj_mu);
        (st.ok() ? injected : injection_errors)[kind] += 1;
      };
      const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
      switch (rng() % 6) {
        case 0:
        case 1: {  // lost LAST, then the queue overflow that frees the device again
          const uint32_t dev = nics[rng() % nics.size()];
          inject(dev, "lost_last");
          std::this_thread::sleep_for(std::chrono::milliseconds(20 + rng() % 100));
          inject(dev, "overflow");
          break;
        }
        case 2:  // PASID stop marker, then resume (a guest process exits and comes back)
          if (!acc.empty()) {
            const std::string pasid = std::to_string(1 + rng() % 2);
            inject(acc[0], "stop_marker", {{"pasid", pasid}});
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
            inject(acc[0], "resume_pasid", {{"pasid", pasid}});
          }
          break;
        case 3:  // burst beyond the PRI allocation
          inject(nics[rng() % nics.size()], "burst");
          break;
        case 4: {  // guest reset: the VF's attachment goes away (open groups answered) and comes back
          const uint32_t vf = vfs[rng() % vfs.size()];
          v1::DetachRequest dr;
          dr.set_device(vf);
          v1::DetachResponse dresp;
          const grpc::Status a =
              d.call([&](grpc::ClientContext* c) { return d.stub().Detach(c, dr, &dresp); });
          std::this_thread::sleep_for(std::chrono::milliseconds(10 + rng() % 50));
          v1::AttachRequest ar;
          ar.set_device(vf);
          ar.set_domain(vm_domain);
          v1::AttachResponse aresp;
          const grpc::Status b =
              d.call([&](grpc::ClientContext* c) { return d.stub().Attach(c, ar, &aresp); });
          std::lock_guard lk(inj_mu);
          (a.ok() && b.ok() ? injected : injection_errors)["guest_reset"] += 1;
          break;
        }
        case 5:  // hot-unplug: spread over the run, the "hot" devices one by one
          if (unplugged < hots.size() &&
              elapsed > total_s * static_cast<double>(unplugged + 1) / (hots.size() + 1)) {
            inject(hots[unplugged++], "unplug");
          }
          break;
      }
    }
  });

  // Sampler.
  struct Sample {
    double t_min;
    uint64_t rss_kb, open_groups, groups;
  };
  std::vector<Sample> samples;
  const auto t0 = Clock::now();
  const auto end =
      t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.minutes * 60));
  const Clock::duration period = std::chrono::milliseconds(o.minutes < 5 ? 2000 : 5000);
  while (Clock::now() < end) {
    std::this_thread::sleep_for(std::min(period, Clock::duration(end - Clock::now())));
    if (d.exited()) {
      std::fprintf(stderr, "iopf-soak: iopfd died (log: %s)\n", d.log().c_str());
      return 1;
    }
    v1::Stats s;
    (void)d.call([&](grpc::ClientContext* c) { return d.stub().GetStats(c, {}, &s); });
    samples.push_back({std::chrono::duration<double>(Clock::now() - t0).count() / 60, d.rssKb(),
                       s.open_groups(), s.groups()});
  }
  stop = true;
  injector.join();
  flt.join();
  // A quiescent end: every device unplugged (its open groups answered, origin detach; it issues
  // nothing more), then the watcher catches up with the head of the event stream.
  for (const auto& dv : devs.devices()) {
    v1::InjectFaultRequest r;
    r.set_device(dv.id());
    r.set_kind("unplug");
    v1::InjectFaultResponse resp;
    (void)d.call([&](grpc::ClientContext* c) { return d.stub().InjectFault(c, r, &resp); });
  }
  v1::Stats final_stats;
  bool quiet = false;
  for (const auto until = Clock::now() + std::chrono::seconds(60); Clock::now() < until;) {
    final_stats.Clear();
    (void)d.call([&](grpc::ClientContext* c) { return d.stub().GetStats(c, {}, &final_stats); });
    if (final_stats.open_groups() == 0) {
      quiet = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  v1::Info head_info;
  (void)d.call([&](grpc::ClientContext* c) { return d.stub().GetInfo(c, {}, &head_info); });
  bool caught_up = false;
  for (const auto until = Clock::now() + std::chrono::seconds(60); Clock::now() < until;) {
    {
      std::lock_guard lk(faithful.mu);
      if (faithful.last_seq + 1 >= head_info.event_head_seq() || faithful.ended) {
        caught_up = faithful.last_seq + 1 >= head_info.event_head_seq();
        break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  final_stats.Clear();
  (void)d.call([&](grpc::ClientContext* c) { return d.stub().GetStats(c, {}, &final_stats); });
  size_t open_at_end = 0;
  {
    std::lock_guard lk(faithful.mu);
    open_at_end = faithful.open.size();
  }
  const int exit_code = d.terminate();
  // The drain answers every open group and ends the stream; wait for the watcher to see it.
  const auto wdeadline = Clock::now() + std::chrono::seconds(30);
  while (Clock::now() < wdeadline) {
    {
      std::lock_guard lk(faithful.mu);
      if (faithful.ended) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  {
    std::lock_guard lk(faithful.mu);
    if (!faithful.ended) fctx.TryCancel();
  }
  ft.join();

  // --- checks -------------------------------------------------------------------------------------------
  bool ok = true;
  auto check = [&](bool cond, const std::string& what) {
    std::printf("  [%s] %s\n", cond ? "ok" : "FAIL", what.c_str());
    ok = ok && cond;
  };
  std::vector<std::pair<double, double>> rss_pts, open_pts;
  const size_t skip = samples.size() / 5;  // warm-up: the event ring and the group history fill
  for (size_t i = skip; i < samples.size(); ++i) rss_pts.emplace_back(samples[i].t_min, samples[i].rss_kb);
  const double rss_slope = slope(rss_pts);
  const double minutes_measured = rss_pts.size() > 1 ? rss_pts.back().first - rss_pts.front().first : 0;
  const uint64_t rss_end = samples.empty() ? 0 : samples.back().rss_kb;
  const uint64_t rss_first = rss_pts.empty() ? 0 : static_cast<uint64_t>(rss_pts.front().second);
  auto meanOpen = [&](size_t from, size_t to) {
    double s = 0;
    for (size_t i = from; i < to; ++i) s += static_cast<double>(samples[i].open_groups);
    return to > from ? s / static_cast<double>(to - from) : 0.0;
  };
  const size_t third = samples.size() / 3;
  const double open_first = meanOpen(0, third), open_last = meanOpen(samples.size() - third, samples.size());
  const double run_min = std::chrono::duration<double>(Clock::now() - t0).count() / 60;

  std::printf("iopf-soak: %.1f min at %" PRIu64 " groups/s offered; %" PRIu64 " groups routed\n", run_min,
              o.rate, final_stats.groups());
  std::lock_guard lk(faithful.mu);
  check(exit_code == 0, "iopfd drained and exited 0 on SIGTERM (exit " + std::to_string(exit_code) + ")");
  check(final_stats.groups() == final_stats.responses() + final_stats.open_groups(),
        "daemon counters: groups " + std::to_string(final_stats.groups()) + " = responses " +
            std::to_string(final_stats.responses()) + " + open " + std::to_string(final_stats.open_groups()));
  check(faithful.gaps == 0,
        "the faithful watcher never fell behind (gaps " + std::to_string(faithful.gaps) + ")");
  check(faithful.torn == 0, "every packed batch is whole records (torn " + std::to_string(faithful.torn) + ")");
  check(faithful.holes == 0, "event seqs contiguous " + std::to_string(faithful.first_seq) + ".." +
                                 std::to_string(faithful.last_seq) + " (" + std::to_string(faithful.events) +
                                 " events, holes " + std::to_string(faithful.holes) + ")");
  check(faithful.duplicates == 0 && faithful.unknown == 0,
        "every answer is for a queued, unanswered group (" + std::to_string(faithful.responded) +
            " answers; twice " + std::to_string(faithful.duplicates) + ", never queued " +
            std::to_string(faithful.unknown) + ", queued before the snapshot " +
            std::to_string(faithful.before_snapshot) + ")");
  check(quiet && final_stats.open_groups() == 0, "no open group once every device is unplugged");
  check(caught_up, "the faithful watcher reached the head of the stream (seq " +
                       std::to_string(head_info.event_head_seq() - 1) + ")");
  check(open_at_end == 0, "every queued group seen answered (" + std::to_string(faithful.queued) +
                              " queued, left open " + std::to_string(open_at_end) + ")");
  check(faithful.status.ok(), "the watch stream ended OK on drain (" + faithful.status.error_message() + ")");
  {
    std::string errs;
    for (auto [code, n] : flaky.errors) errs += " code " + std::to_string(code) + " x" + std::to_string(n);
    if (!errs.empty())
      std::printf("  flaky watcher errors:%s (last: %s)\n", errs.c_str(), flaky.last_error.c_str());
  }
  check(flaky.inexact == 0, "resumes exact: " + std::to_string(flaky.exact_resumes) + " of " +
                                std::to_string(flaky.reconnects) + " reconnects (inexact " +
                                std::to_string(flaky.inexact) + ", out of range " +
                                std::to_string(flaky.out_of_range) + ")");
  // Flat: growth over the measured window under 5% of the RSS (+ 4 MiB for allocator noise).
  const double growth_kb = rss_slope * minutes_measured;
  char rss_line[256];
  std::snprintf(rss_line, sizeof rss_line,
                "RSS flat: slope %.1f KB/min over %.1f min (%" PRIu64 " -> %" PRIu64 " KB)", rss_slope,
                minutes_measured, rss_first, rss_end);
  check(growth_kb <= 4096 + 0.05 * static_cast<double>(rss_first), rss_line);
  char open_line[160];
  std::snprintf(open_line, sizeof open_line,
                "open groups do not grow: mean %.0f (first third) -> %.0f (last third)", open_first,
                open_last);
  check(open_last <= 1.5 * open_first + 64, open_line);
  {
    std::lock_guard il(inj_mu);
    std::printf("  injections:");
    for (auto& [k, v] : injected) std::printf(" %s=%" PRIu64, k.c_str(), v);
    for (auto& [k, v] : injection_errors) std::printf(" %s(refused)=%" PRIu64, k.c_str(), v);
    std::printf("\n");
  }
  std::printf("{\"ok\": %s, \"minutes\": %.2f, \"max_rate\": %" PRIu64 ", \"rate\": %" PRIu64
              ", \"groups\": %" PRIu64 ", \"responses\": %" PRIu64 ", \"watched_groups\": %" PRIu64
              ", \"events\": %" PRIu64 ", \"gaps\": %" PRIu64 ", \"holes\": %" PRIu64
              ", \"duplicates\": %" PRIu64 ", \"rss_start_kb\": %" PRIu64 ", \"rss_end_kb\": %" PRIu64
              ", \"rss_slope_kb_per_min\": %.1f, \"open_first\": %.0f, \"open_last\": %.0f"
              ", \"reconnects\": %" PRIu64 ", \"exact_resumes\": %" PRIu64 "}\n",
              ok ? "true" : "false", run_min, max_rate, o.rate, final_stats.groups(), final_stats.responses(),
              faithful.queued, faithful.events, faithful.gaps, faithful.holes, faithful.duplicates, rss_first,
              rss_end, rss_slope, open_first, open_last, flaky.reconnects, flaky.exact_resumes);
  return ok ? 0 : 1;
}
