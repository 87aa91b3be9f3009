// The one vhost-user framing codec of the QEMU socket backend (docs/protocols/qemu-socket.md §2).
//
// A frame is a 12-byte header {u32 request, u32 flags, u32 size} followed by `size` payload bytes;
// flags bits 0-1 are the version (1), bit 2 REPLY, bit 3 NEED_REPLY; file descriptors travel as
// SCM_RIGHTS ancillary data with the frame's bytes. Both profiles ("iopf" and "vhost-iotlb") and
// the C client library use this codec; profile rules (ids, payload sizes, fds) are MessageTables.
//
// Integers are little-endian on the wire (vhost-user says "native"; every supported host is
// little-endian, checked below). Nothing here does I/O or owns threads.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "unique_fd.h"

namespace iopf::qemu_socket {

static_assert(std::endian::native == std::endian::little, "the wire codec assumes a little-endian host");

inline constexpr size_t kHeaderSize = 12;
inline constexpr uint32_t kFlagVersionMask = 0x3;
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagReply = 1u << 2;
inline constexpr uint32_t kFlagNeedReply = 1u << 3;
inline constexpr uint32_t kKnownFlagBits = kFlagVersionMask | kFlagReply | kFlagNeedReply;
// At most this many fds per frame (VHOST_MEMORY_BASELINE_NREGIONS); more is a fatal error.
inline constexpr size_t kMaxFdsPerFrame = 8;

// --- little-endian field access --------------------------------------------------------------
inline void putU16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline void putU32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }
inline void putU64(uint8_t* p, uint64_t v) { std::memcpy(p, &v, 8); }
inline uint16_t getU16(const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return v; }
inline uint32_t getU32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline uint64_t getU64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

struct FrameHeader {
  uint32_t request = 0;
  uint32_t flags = kVersion;
  uint32_t size = 0;

  bool isReply() const { return (flags & kFlagReply) != 0; }
  bool needsReply() const { return (flags & kFlagNeedReply) != 0; }
};

void encodeHeader(const FrameHeader& header, uint8_t* out);  // writes kHeaderSize bytes
FrameHeader decodeHeader(const uint8_t* in);                 // reads kHeaderSize bytes

// Appends one frame (version 1 is always set in `flags`) to `out`.
void appendFrame(std::vector<uint8_t>& out, uint32_t request, uint32_t flags,
                 std::span<const uint8_t> payload);
std::vector<uint8_t> encodeFrame(uint32_t request, uint32_t flags, std::span<const uint8_t> payload);

// Why a frame was refused. The numeric values are the `code` of the iopf profile's ERROR message
// (docs/protocols/qemu-socket.md §3.7) and never change.
enum class WireError : uint32_t {
  kNone = 0,
  // framing (codec)
  kBadVersion = 1,         // fatal: header version is not 1
  kReservedFlags = 2,      // flags bits 4-31 set
  kPayloadTooLarge = 3,    // fatal: size above the connection's limit
  kUnknownRequest = 4,     // id not in the profile's table
  kUnexpectedFds = 5,      // fds on a message that takes none, or more than it takes
  kTruncatedFrame = 6,     // fatal: the stream ended inside a frame
  kBadPayloadSize = 7,     // size wrong for the message
  kMissingFds = 8,         // fewer fds than the message needs
  kTooManyFds = 9,         // fatal: more than kMaxFdsPerFrame fds with one frame
  // iopf profile
  kBadMagic = 16,          // fatal: HELLO magic is not 'IOPF'
  kUnsupportedMajor = 17,  // fatal: HELLO major not served
  kExpectedHello = 18,     // fatal: first message is not HELLO
  kDuplicateHello = 19,
  kUnexpectedReply = 20,   // REPLY flag on a message that is not a reply here
  kUnknownDevice = 21,     // a record names a dev_id not declared on this connection
  kBadRecord = 22,         // a page-request record violates the device's declaration
  kDuplicateGroup = 23,    // a record reuses the cookie of a group still awaiting its PAGE_RESP
  kNotNegotiated = 24,     // uses a feature HELLO did not accept (e.g. batches without BATCH)
  kPeerError = 25,         // the peer sent ERROR (counted, logged)
};
std::string_view toString(WireError error);

struct FrameError {
  WireError code = WireError::kNone;
  bool fatal = false;
  uint32_t request = 0;  // id of the offending frame (0 if unknown)
  std::string message;   // names the message and both sides of a mismatch

  absl::Status toStatus() const;
};

// One decoded frame. `payload` points into the decoder's buffer: valid until the next
// FrameDecoder::writable()/feed() call. The frame owns its fds.
struct Frame {
  FrameHeader header;
  std::span<const uint8_t> payload;
  std::vector<UniqueFd> fds;
};

// What one message id of a profile accepts.
struct MessageSpec {
  uint32_t request = 0;
  const char* name = "";
  uint32_t min_size = 0;  // payload bytes
  uint32_t max_size = 0;
  uint32_t unit = 0;      // if non-zero: (size - min_size) must be a multiple of unit
  uint8_t min_fds = 0;
  uint8_t max_fds = 0;
};

// The messages one side of a profile accepts (requests, or replies to its own requests).
class MessageTable {
 public:
  MessageTable(std::string profile, std::vector<MessageSpec> specs);
  const MessageSpec* find(uint32_t request) const;
  // "NAME (0x....)" or "0x.... (unknown)".
  std::string describe(uint32_t request) const;
  // Checks one decoded frame: reserved flag bits, unknown id, payload size, fds. Frames that fail
  // MUST NOT be processed; none of these errors is fatal (the frame boundary is intact).
  std::optional<FrameError> check(const Frame& frame) const;
  const std::string& profile() const { return profile_; }

 private:
  std::string profile_;
  std::vector<MessageSpec> specs_;
};

// Incremental stream decoder: bytes (and the fds that came with them) in, frames out.
//
// Contract: one owner thread. The fds handed to commit() with a chunk belong to the frame that
// contains the chunk's first byte (vhost-user sends fds with a message's first byte). After a
// fatal error the decoder is poisoned: every next() repeats that error and the caller MUST close
// the connection.
class FrameDecoder {
 public:
  explicit FrameDecoder(uint32_t max_payload);

  // A writable region of at least `min_bytes` at the buffer's tail; then commit() what was read.
  std::span<uint8_t> writable(size_t min_bytes = 65536);
  void commit(size_t bytes, std::vector<UniqueFd> fds = {});
  // writable + copy + commit (tests, the C library).
  void feed(std::span<const uint8_t> bytes, std::vector<UniqueFd> fds = {});

  enum class Result { kFrame, kNeedMore, kError };
  // Decodes the next buffered frame. kError: `error` says what; if error.fatal, stop reading.
  Result next(Frame& out, FrameError& error);
  // The stream ended: an error if a partial frame is buffered (truncated), nullopt otherwise.
  std::optional<FrameError> finish() const;
  size_t buffered() const { return end_ - begin_; }
  uint32_t maxPayload() const { return max_payload_; }
  // Bytes still missing from the first incomplete buffered frame (its header first, then its
  // payload); at least 1. A reader that never reads past this cannot mix two frames in one read.
  size_t bytesToFrameEnd() const;

 private:
  struct PendingFds {
    uint64_t offset;  // stream offset of the first byte of the chunk that carried them
    std::vector<UniqueFd> fds;
  };
  uint32_t max_payload_;
  std::vector<uint8_t> buf_;
  size_t begin_ = 0;
  size_t end_ = 0;
  uint64_t consumed_ = 0;  // stream offset of buf_[begin_]
  std::vector<PendingFds> pending_fds_;
  std::optional<FrameError> poisoned_;
};

}  // namespace iopf::qemu_socket
