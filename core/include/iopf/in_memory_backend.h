// An in-memory backend for tests, benchmarks and embedding: the caller feeds requests through
// sink() and observes responses, either collected or through a callback.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <vector>

#include "iopf/backend.h"

namespace iopf {

class InMemoryBackend final : public Backend {
 public:
  using ResponseCallback = std::function<void(std::span<const Response>)>;

  explicit InMemoryBackend(Capabilities caps = {}) : caps_(caps) {}

  std::string_view name() const override { return "memory"; }
  Capabilities capabilities() const override { return caps_; }
  absl::Status start(RouterSink& sink) override;
  void stop() override;
  void respond(std::span<const Response> responses) override;
  absl::Status map(const MapRequest& request) override;
  absl::Status health() const override;
  // Tests: what health() reports from now on.
  void setHealth(absl::Status status);

  // Valid after start(). The caller becomes the backend's I/O thread (RouterSink contract).
  RouterSink& sink() { return *sink_; }

  // With a callback, responses go to it (from shard threads, possibly concurrently) instead of
  // being collected. Set before traffic starts.
  void setResponseCallback(ResponseCallback callback) { callback_ = std::move(callback); }

  std::vector<Response> responses() const;
  size_t responseCount() const;
  // Waits until at least `n` responses were collected or `timeout` passed; returns the count.
  size_t waitForResponses(size_t n, std::chrono::milliseconds timeout) const;
  std::vector<MapRequest> maps() const;
  bool started() const { return sink_ != nullptr; }
  bool stopped() const;

 private:
  Capabilities caps_;
  RouterSink* sink_ = nullptr;
  ResponseCallback callback_;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<Response> responses_;
  std::vector<MapRequest> maps_;
  bool stopped_ = false;
  absl::Status health_;  // guarded by mu_
};

}  // namespace iopf
