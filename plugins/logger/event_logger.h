// The logger's logic: router events in, JSON lines and a binary capture out.
//
// It runs on the host's event reader thread, off the routing path: the router publishes to its
// event bus without waiting for anyone, so however slow the disk, routing never waits for the
// logger; a logger that falls behind loses events and counts them (gap markers). On top of that a
// token-bucket rate limit (on the router's clock) bounds what it writes; what it does not write is
// counted as dropped.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "iopf/capture_file.h"
#include "iopf/plugin_sdk.h"
#include "plugins/logger/logger.pb.h"

namespace iopf::plugins::logger {

class EventLogger {
 public:
  // `host` MUST outlive the logger.
  EventLogger(const v1::LoggerConfig& config, const sdk::Host& host, std::string producer);
  ~EventLogger();
  EventLogger(const EventLogger&) = delete;
  EventLogger& operator=(const EventLogger&) = delete;

  // Opens (truncates) the outputs. Throws sdk::Error naming the path and the field on failure.
  void open();
  // One batch in sequence order (reader thread).
  void consume(std::span<const sdk::Event> events);
  // Writes the final drop marker, flushes and closes (shutdown). Idempotent.
  void close();
  // Any thread.
  void counters(sdk::Counters& out) const;

 private:
  struct Device {
    bool known = false;
    uint64_t backend_handle = 0;
    uint16_t rid = 0;
    uint32_t pci_segment = 0;
  };

  bool selected(uint8_t type) const;
  bool takeToken(int64_t now);
  void writeEvent(const sdk::Event& e);
  void writeMarker(const std::string& line);
  void writeJsonLine(const std::string& line);
  void writeCapture(const sdk::Event& e);
  const Device& device(uint32_t id);
  const std::string& handlerName(uint16_t id);
  void openJson();
  void openCapture();
  void rotate(const std::string& path);
  void flushIfDue(bool force);
  static void bump(std::atomic<uint64_t>& a, uint64_t by = 1) {
    a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
  }

  v1::LoggerConfig config_;
  const sdk::Host& host_;
  std::string producer_;
  uint32_t max_files_;
  double burst_;
  int64_t flush_interval_ns_;
  uint32_t type_mask_ = 0;  // bit per IOPF_EVENT_* selected

  FILE* json_ = nullptr;
  uint64_t json_bytes_ = 0;
  std::unique_ptr<capture::Writer> capture_;
  double tokens_ = 0;
  int64_t last_refill_ns_ = 0;
  bool refill_started_ = false;
  int64_t last_flush_ns_ = 0;
  uint64_t pending_dropped_ = 0;  // rate-limited since the last marker
  bool closed_ = false;
  std::vector<Device> devices_;
  std::vector<std::optional<std::string>> handler_names_;
  std::string line_;

  std::atomic<uint64_t> events_seen_{0};          // real events received (no gap markers)
  std::atomic<uint64_t> events_written_{0};
  std::atomic<uint64_t> events_filtered_{0};      // not selected by `types`
  std::atomic<uint64_t> dropped_rate_limited_{0};
  std::atomic<uint64_t> dropped_lost_{0};         // lost before reaching the logger (bus gaps)
  std::atomic<uint64_t> json_lines_{0};
  std::atomic<uint64_t> capture_records_{0};
  std::atomic<uint64_t> rotations_{0};
  std::atomic<uint64_t> write_errors_{0};
};

}  // namespace iopf::plugins::logger
