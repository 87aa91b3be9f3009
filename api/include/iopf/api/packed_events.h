// The packed event encoding of iopf.v1.Router/Watch (EVENT_ENCODING_PACKED): every event a fixed
// 72-byte little-endian record in WatchBatch.packed_events. The layout is part of the API
// (docs/api.md "Packed events"); this header is its one definition, for the daemon and for clients.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "iopf/v1/router.pb.h"

namespace iopf::api::packed {

inline constexpr size_t kRecordSize = 72;

// Byte offsets of the fields in a record.
inline constexpr size_t kSeq = 0;       // u64
inline constexpr size_t kTimeNs = 8;    // i64
inline constexpr size_t kGroup = 16;    // u64
inline constexpr size_t kAddr = 24;     // u64
inline constexpr size_t kValue = 32;    // i64
inline constexpr size_t kDevice = 40;   // u32
inline constexpr size_t kDomain = 44;   // u32
inline constexpr size_t kPasid = 48;    // u32, meaningful if kFlagPasidValid
inline constexpr size_t kCookie = 52;   // u32, meaningful if kFlagCookieValid
inline constexpr size_t kGrpid = 56;    // u32
inline constexpr size_t kHandler = 60;  // u16
inline constexpr size_t kType = 62;     // u8, EventType
inline constexpr size_t kFlags = 63;    // u8, kFlag*
inline constexpr size_t kPerm = 64;     // u8
inline constexpr size_t kCode = 65;     // u8, ResponseCode
inline constexpr size_t kOrigin = 66;   // u8, Origin
inline constexpr size_t kVerdict = 67;  // u8, Verdict
// Bytes 68..71 are reserved: written as zero, ignored when read.

inline constexpr uint8_t kFlagPasidValid = 1u << 0;
inline constexpr uint8_t kFlagLast = 1u << 1;
inline constexpr uint8_t kFlagCookieValid = 1u << 2;

template <typename T>
inline void put(uint8_t* record, size_t offset, T value) {
  if constexpr (std::endian::native == std::endian::little) {
    std::memcpy(record + offset, &value, sizeof(T));
  } else {
    for (size_t i = 0; i < sizeof(T); ++i) record[offset + i] = static_cast<uint8_t>(static_cast<uint64_t>(value) >> (8 * i));
  }
}

template <typename T>
inline T get(const uint8_t* record, size_t offset) {
  if constexpr (std::endian::native == std::endian::little) {
    T v;
    std::memcpy(&v, record + offset, sizeof(T));
    return v;
  } else {
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t{record[offset + i]} << (8 * i);
    return static_cast<T>(v);
  }
}

// One record, read in place.
class EventView {
 public:
  explicit EventView(const uint8_t* record) : r_(record) {}
  uint64_t seq() const { return get<uint64_t>(r_, kSeq); }
  int64_t timeNs() const { return get<int64_t>(r_, kTimeNs); }
  uint64_t group() const { return get<uint64_t>(r_, kGroup); }
  uint64_t addr() const { return get<uint64_t>(r_, kAddr); }
  int64_t value() const { return get<int64_t>(r_, kValue); }
  uint32_t device() const { return get<uint32_t>(r_, kDevice); }
  uint32_t domain() const { return get<uint32_t>(r_, kDomain); }
  uint32_t pasid() const { return get<uint32_t>(r_, kPasid); }
  uint32_t cookie() const { return get<uint32_t>(r_, kCookie); }
  uint32_t grpid() const { return get<uint32_t>(r_, kGrpid); }
  uint16_t handler() const { return get<uint16_t>(r_, kHandler); }
  uint8_t type() const { return r_[kType]; }
  uint8_t flags() const { return r_[kFlags]; }
  uint8_t perm() const { return r_[kPerm]; }
  uint8_t code() const { return r_[kCode]; }
  uint8_t origin() const { return r_[kOrigin]; }
  uint8_t verdict() const { return r_[kVerdict]; }

 private:
  const uint8_t* r_;
};

// The number of records in `bytes`; an error if it is not a whole number of records.
absl::StatusOr<size_t> count(const std::string& bytes);

// The same event as EVENT_ENCODING_MESSAGES would have sent it.
void toProto(EventView event, v1::Event& out);

// Every record of `bytes` appended to `out` as messages. Error: not a whole number of records.
absl::Status appendAsMessages(const std::string& bytes, google::protobuf::RepeatedPtrField<v1::Event>& out);

}  // namespace iopf::api::packed
