#include "iopf/in_memory_backend.h"

namespace iopf {

absl::Status InMemoryBackend::start(RouterSink& sink) {
  if (sink_ != nullptr) return absl::FailedPreconditionError("memory backend started twice");
  sink_ = &sink;
  return absl::OkStatus();
}

void InMemoryBackend::stop() {
  std::lock_guard lk(mu_);
  stopped_ = true;
}

absl::Status InMemoryBackend::health() const {
  std::lock_guard lk(mu_);
  return health_;
}

void InMemoryBackend::setHealth(absl::Status status) {
  std::lock_guard lk(mu_);
  health_ = std::move(status);
}

bool InMemoryBackend::stopped() const {
  std::lock_guard lk(mu_);
  return stopped_;
}

void InMemoryBackend::respond(std::span<const Response> responses) {
  if (callback_) {
    callback_(responses);
    return;
  }
  {
    std::lock_guard lk(mu_);
    responses_.insert(responses_.end(), responses.begin(), responses.end());
  }
  cv_.notify_all();
}

absl::Status InMemoryBackend::map(const MapRequest& request) {
  if (!caps_.can_map) return Backend::map(request);
  std::lock_guard lk(mu_);
  maps_.push_back(request);
  return absl::OkStatus();
}

std::vector<Response> InMemoryBackend::responses() const {
  std::lock_guard lk(mu_);
  return responses_;
}

size_t InMemoryBackend::responseCount() const {
  std::lock_guard lk(mu_);
  return responses_.size();
}

size_t InMemoryBackend::waitForResponses(size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock lk(mu_);
  cv_.wait_for(lk, timeout, [&] { return responses_.size() >= n; });
  return responses_.size();
}

std::vector<MapRequest> InMemoryBackend::maps() const {
  std::lock_guard lk(mu_);
  return maps_;
}

}  // namespace iopf
