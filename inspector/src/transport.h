// Transports: where a daemon's data comes from. A reader thread per transport pulls Watch batches
// (or capture records), converts events to compact records and appends them to an inbox; the GUI
// thread takes the inbox on its coalescing tick. Nothing here touches Qt models.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "iopf/api/packed_events.h"
#include "iopf/event_bus.h"
#include "iopf/v1/router.grpc.pb.h"

namespace iopf::inspector {

// One chunk of a transport's output, in order: an optional snapshot (the daemon's state, replacing
// what the inspector held) followed by the events after it.
struct Chunk {
  std::shared_ptr<const v1::Snapshot> snapshot;
  std::vector<Event> events;
};

enum class ConnState : uint8_t { kConnecting, kStreaming, kBackoff, kStopped, kOffline, kFinished };
const char* connStateName(ConnState s);

// Health of grpc.health.v1 for service iopf.v1.Router.
enum class Health : int8_t { kUnknown = 0, kServing = 1, kNotServing = 2, kUnreachable = 3 };
const char* healthName(Health h);

struct ConnStatus {
  ConnState state = ConnState::kConnecting;
  Health health = Health::kUnknown;
  std::string message;         // last error or note, for people
  uint64_t last_seq = 0;       // last event seq seen (resume point - 1)
  uint64_t events = 0;         // events received
  uint64_t gaps = 0;           // gap markers received
  uint64_t reconnects = 0;
  uint64_t resumes = 0;        // reconnects that resumed at last_seq + 1
  int64_t retry_at_ms = 0;     // steady-clock ms of the next attempt (kBackoff)
  std::shared_ptr<const v1::Info> info;
  std::shared_ptr<const v1::Stats> stats;                // polled every second
  std::shared_ptr<const v1::ListPluginsResponse> plugins;
};

// Converts an API event to the compact record the models keep (72 bytes).
Event fromProto(const v1::Event& e);
// One record of WatchBatch.packed_events (EVENT_ENCODING_PACKED, the encoding the reader asks for).
Event fromPacked(api::packed::EventView e);
void toProto(const Event& e, v1::Event& out);

class Transport {
 public:
  virtual ~Transport() = default;
  virtual void start() = 0;
  virtual void stop() = 0;
  virtual const std::string& target() const = 0;
  virtual bool live() const = 0;  // false: a capture file (no actions)
  // Restarts the Watch with a new daemon-side filter (a fresh snapshot follows).
  virtual void setFilter(const v1::EventFilter& filter) { (void)filter; }
  // The API stub for unary calls (actions, GetGroup); nullptr when offline. Thread-safe to use.
  virtual std::shared_ptr<v1::Router::StubInterface> stub() const { return nullptr; }
  // Metadata for unary calls (authorization); copied on the GUI thread, added to the call's context
  // in the worker, so a worker never touches the transport.
  virtual std::vector<std::pair<std::string, std::string>> metadata() const { return {}; }
  void prepare(grpc::ClientContext& ctx) const {
    for (const auto& [k, v] : metadata()) ctx.AddMetadata(k, v);
  }

  // GUI thread: moves everything queued since the last call into `out` and copies the status.
  // Returns the number of events moved.
  size_t take(std::vector<Chunk>& out, ConnStatus& status);

 protected:
  // Reader side.
  void pushSnapshot(std::shared_ptr<const v1::Snapshot> s);
  void pushEvents(const Event* events, size_t n);
  template <typename F>
  void updateStatus(F&& f) {
    std::lock_guard<std::mutex> lock(mu_);
    f(status_);
  }

 private:
  static constexpr size_t kMaxQueued = 4u << 20;  // events waiting for the GUI before we drop
  std::mutex mu_;
  std::vector<Chunk> inbox_;
  size_t queued_ = 0;
  uint64_t dropped_ = 0;
  uint64_t dropped_first_seq_ = 0;
  ConnStatus status_;
};

struct ConnectOptions {
  std::string target;          // unix:PATH, a path, or host:port
  std::string tls_ca_file;     // host:port: PEM roots (default: system roots)
  std::string token;           // host:port: bearer token for mutating calls
  v1::EventFilter filter;
  uint32_t max_batch = 4096;
  int backoff_min_ms = 100;
  int backoff_max_ms = 5000;
  int poll_interval_ms = 1000;  // health, stats and plugins
};

// "unix:PATH" for paths, as given otherwise.
std::string normalizeTarget(const std::string& target);

// A live daemon: one reader thread (Watch, reconnect with backoff, resume at last seq + 1 with
// allow_gap) and one poller thread (grpc.health, GetInfo, GetStats, ListPlugins).
class GrpcTransport : public Transport {
 public:
  explicit GrpcTransport(ConnectOptions options);
  ~GrpcTransport() override;
  void start() override;
  void stop() override;
  const std::string& target() const override { return options_.target; }
  bool live() const override { return true; }
  void setFilter(const v1::EventFilter& filter) override;
  std::shared_ptr<v1::Router::StubInterface> stub() const override { return stub_; }
  std::vector<std::pair<std::string, std::string>> metadata() const override;
  // Tests: cancel the current Watch call; the reader reconnects and resumes.
  void dropStreamForTest();

 private:
  void readerLoop();
  void pollerLoop();
  bool sleepFor(int ms);  // false when stopping
  // GetInfo: false if the daemon's start time moved (a restart since the last connection).
  bool checkSameDaemon();
  int64_t daemon_started_ms_ = 0;  // reader thread only

  ConnectOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<v1::Router::Stub> stub_;
  std::mutex ctx_mu_;
  std::condition_variable cv_;
  grpc::ClientContext* current_ = nullptr;
  bool stopping_ = false;
  bool restart_snapshot_ = false;
  v1::EventFilter filter_;
  std::thread reader_, poller_;
};

// A capture file (iopf capture format, as the logger plugin and the inspector's recorder write it):
// the header becomes a snapshot, the records the event stream.
class CaptureTransport : public Transport {
 public:
  explicit CaptureTransport(std::string path);
  ~CaptureTransport() override;
  void start() override;
  void stop() override;
  const std::string& target() const override { return path_; }
  bool live() const override { return false; }

 private:
  void readerLoop();
  std::string path_;
  std::atomic<bool> stopping_{false};
  std::thread reader_;
};

// Tests and the load test: batches pushed by hand.
class FakeTransport : public Transport {
 public:
  explicit FakeTransport(std::string target) : target_(std::move(target)) {}
  void start() override { updateStatus([](ConnStatus& s) { s.state = ConnState::kStreaming; }); }
  void stop() override { updateStatus([](ConnStatus& s) { s.state = ConnState::kStopped; }); }
  const std::string& target() const override { return target_; }
  bool live() const override { return true; }
  void snapshot(std::shared_ptr<const v1::Snapshot> s) { pushSnapshot(std::move(s)); }
  void events(const std::vector<Event>& e) { pushEvents(e.data(), e.size()); }
  void events(const Event* e, size_t n) { pushEvents(e, n); }
  void status(const std::function<void(ConnStatus&)>& f) { updateStatus(f); }

 private:
  std::string target_;
};

}  // namespace iopf::inspector
