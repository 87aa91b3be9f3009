#include "iopf/capture_file.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"

namespace iopf::capture {

namespace {

void putLe32(char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xff);
}
uint32_t getLe32(const unsigned char* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

}  // namespace

v1::CaptureRecord toRecord(const Event& e) {
  v1::CaptureRecord r;
  r.set_seq(e.seq);
  r.set_time_ns(e.time_ns);
  r.set_type(static_cast<uint32_t>(e.type));
  r.set_group_id(e.group);
  r.set_device_id(e.device);
  r.set_domain_id(e.domain);
  if (e.flags & event_flag::kPasidValid) r.set_pasid(e.pasid);
  r.set_grpid(e.grpid);
  r.set_addr(e.addr);
  r.set_perm(e.perm);
  r.set_last((e.flags & event_flag::kLast) != 0);
  if (e.flags & event_flag::kCookieValid) r.set_cookie(e.cookie);
  r.set_code(e.code);
  r.set_origin(e.origin);
  r.set_value(e.value);
  r.set_handler(e.handler);
  r.set_verdict(e.verdict);
  return r;
}

Event fromRecord(const v1::CaptureRecord& r) {
  Event e;
  e.seq = r.seq();
  e.time_ns = r.time_ns();
  e.type = static_cast<EventType>(r.type());
  e.group = r.group_id();
  e.device = r.device_id();
  e.domain = r.domain_id();
  if (r.has_pasid()) {
    e.pasid = r.pasid();
    e.flags |= event_flag::kPasidValid;
  }
  e.grpid = r.grpid();
  e.addr = r.addr();
  e.perm = static_cast<uint8_t>(r.perm());
  if (r.last()) e.flags |= event_flag::kLast;
  if (r.has_cookie()) {
    e.cookie = r.cookie();
    e.flags |= event_flag::kCookieValid;
  }
  e.code = static_cast<uint8_t>(r.code());
  e.origin = static_cast<uint8_t>(r.origin());
  e.value = r.value();
  e.handler = static_cast<uint16_t>(r.handler());
  e.verdict = static_cast<uint8_t>(r.verdict());
  return e;
}

// ---------------------------------------------------------------------------------------------
// Writer

absl::StatusOr<std::unique_ptr<Writer>> Writer::create(const std::string& path,
                                                       const v1::CaptureHeader& header) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) {
    return absl::Status(absl::ErrnoToStatusCode(errno),
                        absl::StrCat("capture '", path, "': cannot create: ", std::strerror(errno)));
  }
  std::unique_ptr<Writer> w(new Writer(path, f));
  v1::CaptureHeader h = header;
  h.set_format_version(kFormatVersion);
  std::string body;
  if (!h.SerializeToString(&body)) {
    return absl::InternalError(absl::StrCat("capture '", path, "': header does not serialize"));
  }
  char preamble[16];
  std::memcpy(preamble, kMagic.data(), 8);
  putLe32(preamble + 8, kFormatVersion);
  putLe32(preamble + 12, static_cast<uint32_t>(body.size()));
  if (absl::Status st = w->writeRaw(preamble, sizeof preamble); !st.ok()) return st;
  if (absl::Status st = w->writeRaw(body.data(), body.size()); !st.ok()) return st;
  return w;
}

Writer::~Writer() { (void)close(); }

absl::Status Writer::writeRaw(const void* data, size_t size) {
  if (file_ == nullptr) return absl::FailedPreconditionError(absl::StrCat("capture '", path_, "' is closed"));
  if (size != 0 && std::fwrite(data, 1, size, file_) != size) {
    return absl::Status(absl::ErrnoToStatusCode(errno),
                        absl::StrCat("capture '", path_, "': write failed: ", std::strerror(errno)));
  }
  bytes_ += size;
  return absl::OkStatus();
}

absl::Status Writer::append(const v1::CaptureRecord& record) {
  scratch_.clear();
  const size_t size = record.ByteSizeLong();
  uint8_t prefix[10];
  uint8_t* end = google::protobuf::io::CodedOutputStream::WriteVarint32ToArray(
      static_cast<uint32_t>(size), prefix);
  scratch_.append(reinterpret_cast<const char*>(prefix), static_cast<size_t>(end - prefix));
  if (!record.AppendToString(&scratch_)) {
    return absl::InternalError(absl::StrCat("capture '", path_, "': record does not serialize"));
  }
  if (absl::Status st = writeRaw(scratch_.data(), scratch_.size()); !st.ok()) return st;
  ++records_;
  return absl::OkStatus();
}

absl::Status Writer::flush() {
  if (file_ != nullptr && std::fflush(file_) != 0) {
    return absl::Status(absl::ErrnoToStatusCode(errno),
                        absl::StrCat("capture '", path_, "': flush failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status Writer::close() {
  if (file_ == nullptr) return absl::OkStatus();
  const int rc = std::fclose(file_);
  file_ = nullptr;
  if (rc != 0) {
    return absl::Status(absl::ErrnoToStatusCode(errno),
                        absl::StrCat("capture '", path_, "': close failed: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Reader

absl::Status Reader::error(std::string_view what) const {
  return absl::DataLossError(absl::StrCat("capture '", path_, "' at byte ", offset_, ": ", std::string(what)));
}

absl::StatusOr<std::unique_ptr<Reader>> Reader::open(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) {
    return absl::Status(absl::ErrnoToStatusCode(errno),
                        absl::StrCat("capture '", path, "': cannot open: ", std::strerror(errno)));
  }
  std::unique_ptr<Reader> r(new Reader(path, f));
  unsigned char preamble[16];
  if (std::fread(preamble, 1, sizeof preamble, f) != sizeof preamble) {
    return r->error("file is shorter than the 16-byte preamble");
  }
  if (std::memcmp(preamble, kMagic.data(), 8) != 0) return r->error("not a capture file (bad magic)");
  const uint32_t version = getLe32(preamble + 8);
  if (version != kFormatVersion) {
    return r->error(absl::StrCat("format version ", version, ", this reader supports ", kFormatVersion));
  }
  const uint32_t header_len = getLe32(preamble + 12);
  r->offset_ = sizeof preamble;
  if (header_len > kMaxMessageBytes) return r->error(absl::StrCat("header length ", header_len, " is too large"));
  r->scratch_.resize(header_len);
  if (std::fread(r->scratch_.data(), 1, header_len, f) != header_len) return r->error("truncated header");
  if (!r->header_.ParseFromString(r->scratch_)) return r->error("header does not parse");
  r->offset_ += header_len;
  return r;
}

Reader::~Reader() {
  if (file_ != nullptr) std::fclose(file_);
}

absl::StatusOr<bool> Reader::next(v1::CaptureRecord& out) {
  // Varint length, byte by byte (at most 5 bytes for 32 bits).
  uint32_t len = 0;
  int shift = 0;
  for (int i = 0;; ++i) {
    const int c = std::fgetc(file_);
    if (c == EOF) {
      if (i == 0) return false;  // clean end
      return error("truncated record length");
    }
    if (i == 4 && (c & 0xf0) != 0) return error("record length varint overflows 32 bits");
    len |= static_cast<uint32_t>(c & 0x7f) << shift;
    shift += 7;
    if ((c & 0x80) == 0) {
      offset_ += static_cast<uint64_t>(i + 1);
      break;
    }
  }
  if (len > kMaxMessageBytes) return error(absl::StrCat("record length ", len, " is too large"));
  scratch_.resize(len);
  if (len != 0 && std::fread(scratch_.data(), 1, len, file_) != len) {
    return error(absl::StrCat("truncated record (", len, " bytes expected)"));
  }
  if (!out.ParseFromString(scratch_)) return error("record does not parse");
  offset_ += len;
  return true;
}

}  // namespace iopf::capture
