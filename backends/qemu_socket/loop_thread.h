// The event-loop thread of a socket backend (QemuSocketBackend, VhostIotlbFrontend): owns the
// backend's Loop object and the thread that runs it. `Loop` needs init(RouterSink&) -> Status, run(),
// requestStop() (any thread) and teardown() (after the thread joined); it may be incomplete where
// LoopThread is declared, as long as it is complete where the owner's destructor is defined.
#pragma once

#include <memory>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "iopf/backend.h"

namespace iopf::qemu_socket {

template <typename Loop>
class LoopThread {
 public:
  LoopThread() = default;
  ~LoopThread() { stop(); }
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  // Builds the loop from `options`, initialises it and starts its thread. `what` names the backend
  // in errors ("qemu_socket backend '/run/x.sock'").
  template <typename Options>
  absl::Status start(const Options& options, RouterSink& sink, const std::string& what) {
    if (loop_) return absl::FailedPreconditionError(absl::StrCat(what, ": start() called twice"));
    loop_ = std::make_unique<Loop>(options);
    if (absl::Status st = loop_->init(sink); !st.ok()) {
      loop_.reset();
      return absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
    }
    thread_ = std::thread([this] { loop_->run(); });
    return absl::OkStatus();
  }

  // Stops and joins the thread, then tears the loop down (it stays readable). Idempotent.
  void stop() {
    if (!loop_ || !thread_.joinable()) return;
    loop_->requestStop();
    thread_.join();
    loop_->teardown();
  }

  explicit operator bool() const { return loop_ != nullptr; }
  Loop* operator->() const { return loop_.get(); }

 private:
  std::unique_ptr<Loop> loop_;
  std::thread thread_;
};

}  // namespace iopf::qemu_socket
