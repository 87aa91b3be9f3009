// Capture files: the logger plugin writes them, the simulated backend replays them.
// Format: proto/iopf/v1/capture.proto (header comment). Target: iopf_capture.
#pragma once

#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "iopf/event_bus.h"
#include "iopf/v1/capture.pb.h"

namespace iopf::capture {

inline constexpr std::string_view kMagic{"IOPFCAP\0", 8};
inline constexpr uint32_t kFormatVersion = 1;
// Largest header or record accepted by the reader (a corrupt length is reported, not allocated).
inline constexpr uint32_t kMaxMessageBytes = 16u << 20;

v1::CaptureRecord toRecord(const Event& event);
Event fromRecord(const v1::CaptureRecord& record);

// Appends records to a new file. Not thread-safe: one writer thread.
class Writer {
 public:
  // Creates (truncates) `path` and writes the magic, version and header.
  static absl::StatusOr<std::unique_ptr<Writer>> create(const std::string& path,
                                                        const v1::CaptureHeader& header);
  ~Writer();
  absl::Status append(const v1::CaptureRecord& record);
  absl::Status flush();
  absl::Status close();
  uint64_t bytes() const { return bytes_; }
  uint64_t records() const { return records_; }
  const std::string& path() const { return path_; }

 private:
  Writer(std::string path, FILE* file) : path_(std::move(path)), file_(file) {}
  absl::Status writeRaw(const void* data, size_t size);
  std::string path_;
  FILE* file_;
  std::string scratch_;
  uint64_t bytes_ = 0;
  uint64_t records_ = 0;
};

// Reads a capture file record by record. Errors name the file, the byte offset and what is wrong.
class Reader {
 public:
  static absl::StatusOr<std::unique_ptr<Reader>> open(const std::string& path);
  ~Reader();
  const v1::CaptureHeader& header() const { return header_; }
  // true: `out` holds the next record; false: clean end of file.
  absl::StatusOr<bool> next(v1::CaptureRecord& out);
  uint64_t offset() const { return offset_; }

 private:
  Reader(std::string path, FILE* file) : path_(std::move(path)), file_(file) {}
  absl::Status error(std::string_view what) const;
  std::string path_;
  FILE* file_;
  v1::CaptureHeader header_;
  std::string scratch_;
  uint64_t offset_ = 0;
};

}  // namespace iopf::capture
