#include "recorder.h"

namespace iopf::inspector {

absl::StatusOr<std::unique_ptr<Recorder>> Recorder::start(const std::string& path, const v1::CaptureHeader& header) {
  auto w = capture::Writer::create(path, header);
  if (!w.ok()) return w.status();
  return std::unique_ptr<Recorder>(new Recorder(std::move(*w), path));
}

Recorder::Recorder(std::unique_ptr<capture::Writer> w, std::string path)
    : writer_(std::move(w)), path_(std::move(path)) {
  thread_ = std::thread([this] { loop(); });
}

Recorder::~Recorder() { (void)finish(); }

void Recorder::add(const Event* events, size_t n) {
  if (n == 0) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.insert(queue_.end(), events, events + n);
  }
  cv_.notify_one();
}

void Recorder::loop() {
  std::vector<Event> batch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return done_ || !queue_.empty(); });
      if (queue_.empty() && done_) break;
      batch.swap(queue_);
    }
    for (const Event& e : batch) {
      if (!error_.ok()) break;
      error_ = writer_->append(capture::toRecord(e));
      if (error_.ok()) records_.fetch_add(1, std::memory_order_relaxed);
    }
    batch.clear();
  }
}

absl::Status Recorder::finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (done_ && !thread_.joinable()) return error_;
    done_ = true;
  }
  cv_.notify_one();
  if (thread_.joinable()) thread_.join();
  if (writer_) {
    absl::Status st = writer_->close();
    writer_.reset();
    if (error_.ok()) error_ = st;
  }
  return error_;
}

}  // namespace iopf::inspector
