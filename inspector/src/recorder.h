// Records one daemon's event stream to a capture file (proto/iopf/v1/capture.proto, the format the
// logger plugin writes): the GUI thread hands event batches over, a writer thread serialises them.
// The state at the start (attachments, open groups) is written first as records with seq 0: an
// EVENT_ATTACH per attachment and an EVENT_REQUEST per request of every open group.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "iopf/capture_file.h"
#include "iopf/event_bus.h"

namespace iopf::inspector {

class Recorder {
 public:
  static absl::StatusOr<std::unique_ptr<Recorder>> start(const std::string& path, const v1::CaptureHeader& header);
  ~Recorder();
  void add(const Event* events, size_t n);  // GUI thread
  absl::Status finish();                    // flushes, closes, joins
  uint64_t records() const { return records_.load(); }
  const std::string& path() const { return path_; }

 private:
  Recorder(std::unique_ptr<capture::Writer> w, std::string path);
  void loop();
  std::unique_ptr<capture::Writer> writer_;
  std::string path_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Event> queue_;
  bool done_ = false;
  absl::Status error_;
  std::atomic<uint64_t> records_{0};
  std::thread thread_;
};

}  // namespace iopf::inspector
