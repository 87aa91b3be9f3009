#include "vhost_user_codec.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace iopf::qemu_socket {

void encodeHeader(const FrameHeader& header, uint8_t* out) {
  putU32(out, header.request);
  putU32(out + 4, header.flags);
  putU32(out + 8, header.size);
}

FrameHeader decodeHeader(const uint8_t* in) {
  return FrameHeader{getU32(in), getU32(in + 4), getU32(in + 8)};
}

void appendFrame(std::vector<uint8_t>& out, uint32_t request, uint32_t flags,
                 std::span<const uint8_t> payload) {
  const size_t at = out.size();
  out.resize(at + kHeaderSize + payload.size());
  encodeHeader(FrameHeader{request, (flags & ~kFlagVersionMask) | kVersion,
                           static_cast<uint32_t>(payload.size())},
               out.data() + at);
  if (!payload.empty()) std::memcpy(out.data() + at + kHeaderSize, payload.data(), payload.size());
}

std::vector<uint8_t> encodeFrame(uint32_t request, uint32_t flags, std::span<const uint8_t> payload) {
  std::vector<uint8_t> out;
  appendFrame(out, request, flags, payload);
  return out;
}

std::string_view toString(WireError error) {
  switch (error) {
    case WireError::kNone: return "none";
    case WireError::kBadVersion: return "bad-version";
    case WireError::kReservedFlags: return "reserved-flags";
    case WireError::kPayloadTooLarge: return "payload-too-large";
    case WireError::kUnknownRequest: return "unknown-request";
    case WireError::kUnexpectedFds: return "unexpected-fds";
    case WireError::kTruncatedFrame: return "truncated-frame";
    case WireError::kBadPayloadSize: return "bad-payload-size";
    case WireError::kMissingFds: return "missing-fds";
    case WireError::kTooManyFds: return "too-many-fds";
    case WireError::kBadMagic: return "bad-magic";
    case WireError::kUnsupportedMajor: return "unsupported-major";
    case WireError::kExpectedHello: return "expected-hello";
    case WireError::kDuplicateHello: return "duplicate-hello";
    case WireError::kUnexpectedReply: return "unexpected-reply";
    case WireError::kUnknownDevice: return "unknown-device";
    case WireError::kBadRecord: return "bad-record";
    case WireError::kDuplicateGroup: return "duplicate-group";
    case WireError::kNotNegotiated: return "not-negotiated";
    case WireError::kPeerError: return "peer-error";
  }
  return "unknown";
}

absl::Status FrameError::toStatus() const {
  if (code == WireError::kNone) return absl::OkStatus();
  std::string text = absl::StrCat(std::string(toString(code)), fatal ? " (fatal): " : ": ", message);
  switch (code) {
    case WireError::kTruncatedFrame: return absl::DataLossError(text);
    case WireError::kPayloadTooLarge:
    case WireError::kTooManyFds: return absl::ResourceExhaustedError(text);
    case WireError::kUnsupportedMajor:
    case WireError::kNotNegotiated: return absl::FailedPreconditionError(text);
    case WireError::kUnknownDevice: return absl::NotFoundError(text);
    case WireError::kDuplicateGroup:
    case WireError::kDuplicateHello: return absl::AlreadyExistsError(text);
    default: return absl::InvalidArgumentError(text);
  }
}

MessageTable::MessageTable(std::string profile, std::vector<MessageSpec> specs)
    : profile_(std::move(profile)), specs_(std::move(specs)) {}

const MessageSpec* MessageTable::find(uint32_t request) const {
  for (const MessageSpec& s : specs_) {
    if (s.request == request) return &s;
  }
  return nullptr;
}

std::string MessageTable::describe(uint32_t request) const {
  if (const MessageSpec* s = find(request)) return absl::StrFormat("%s (0x%x)", s->name, request);
  return absl::StrFormat("0x%x (unknown)", request);
}

std::optional<FrameError> MessageTable::check(const Frame& frame) const {
  const FrameHeader& h = frame.header;
  auto fail = [&](WireError code, std::string message) {
    return std::optional<FrameError>(FrameError{code, false, h.request, std::move(message)});
  };
  if ((h.flags & ~kKnownFlagBits) != 0) {
    return fail(WireError::kReservedFlags,
                absl::StrFormat("profile '%s': message %s has flags 0x%x, reserved bits 0x%x set "
                                "(only 0x%x are defined)",
                                profile_, describe(h.request), h.flags, h.flags & ~kKnownFlagBits,
                                kKnownFlagBits));
  }
  const MessageSpec* s = find(h.request);
  if (s == nullptr) {
    return fail(WireError::kUnknownRequest,
                absl::StrFormat("profile '%s': unknown %s id 0x%x (%u payload bytes skipped)", profile_,
                                h.isReply() ? "reply" : "request", h.request, h.size));
  }
  const bool size_ok = h.size >= s->min_size && h.size <= s->max_size &&
                       (s->unit == 0 || (h.size - s->min_size) % s->unit == 0);
  if (!size_ok) {
    std::string expect =
        s->min_size == s->max_size
            ? absl::StrCat(s->min_size)
            : s->unit != 0 ? absl::StrFormat("%u + k*%u, at most %u", s->min_size, s->unit, s->max_size)
                           : absl::StrFormat("%u..%u", s->min_size, s->max_size);
    return fail(WireError::kBadPayloadSize,
                absl::StrFormat("profile '%s': message %s has a %u-byte payload, expects %s", profile_,
                                describe(h.request), h.size, expect));
  }
  if (frame.fds.size() > s->max_fds) {
    return fail(WireError::kUnexpectedFds,
                absl::StrFormat("profile '%s': message %s carried %u fd(s), expects at most %u "
                                "(the fds were closed)",
                                profile_, describe(h.request), frame.fds.size(), s->max_fds));
  }
  if (frame.fds.size() < s->min_fds) {
    return fail(WireError::kMissingFds,
                absl::StrFormat("profile '%s': message %s carried %u fd(s), expects at least %u", profile_,
                                describe(h.request), frame.fds.size(), s->min_fds));
  }
  return std::nullopt;
}

FrameDecoder::FrameDecoder(uint32_t max_payload) : max_payload_(max_payload) {}

std::span<uint8_t> FrameDecoder::writable(size_t min_bytes) {
  if (begin_ == end_) {
    begin_ = end_ = 0;
  } else if (buf_.size() - end_ < min_bytes && begin_ > 0) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  if (buf_.size() - end_ < min_bytes) buf_.resize(end_ + min_bytes);
  return {buf_.data() + end_, buf_.size() - end_};
}

void FrameDecoder::commit(size_t bytes, std::vector<UniqueFd> fds) {
  if (!fds.empty()) pending_fds_.push_back(PendingFds{consumed_ + (end_ - begin_), std::move(fds)});
  end_ += bytes;
}

void FrameDecoder::feed(std::span<const uint8_t> bytes, std::vector<UniqueFd> fds) {
  std::span<uint8_t> w = writable(bytes.size());
  if (!bytes.empty()) std::memcpy(w.data(), bytes.data(), bytes.size());
  commit(bytes.size(), std::move(fds));
}

size_t FrameDecoder::bytesToFrameEnd() const {
  size_t at = begin_;
  for (;;) {
    const size_t have = end_ - at;
    if (have < kHeaderSize) return kHeaderSize - have;
    const FrameHeader h = decodeHeader(buf_.data() + at);
    // A payload over the limit is refused by next() once its header is in: nothing more to read.
    if (h.size > max_payload_) return 1;
    if (have < kHeaderSize + h.size) return kHeaderSize + h.size - have;
    at += kHeaderSize + h.size;
  }
}

FrameDecoder::Result FrameDecoder::next(Frame& out, FrameError& error) {
  if (poisoned_) {
    error = *poisoned_;
    return Result::kError;
  }
  const size_t have = end_ - begin_;
  if (have < kHeaderSize) return Result::kNeedMore;
  const FrameHeader h = decodeHeader(buf_.data() + begin_);
  if ((h.flags & kFlagVersionMask) != kVersion) {
    poisoned_ = FrameError{WireError::kBadVersion, true, h.request,
                           absl::StrFormat("frame 0x%x: header version %u, expects %u (flags 0x%x)",
                                           h.request, h.flags & kFlagVersionMask, kVersion, h.flags)};
    error = *poisoned_;
    return Result::kError;
  }
  if (h.size > max_payload_) {
    poisoned_ = FrameError{WireError::kPayloadTooLarge, true, h.request,
                           absl::StrFormat("frame 0x%x: payload of %u bytes exceeds the limit of %u bytes",
                                           h.request, h.size, max_payload_)};
    error = *poisoned_;
    return Result::kError;
  }
  if (have < kHeaderSize + h.size) return Result::kNeedMore;
  const uint64_t frame_end = consumed_ + kHeaderSize + h.size;
  out.header = h;
  out.payload = {buf_.data() + begin_ + kHeaderSize, h.size};
  out.fds.clear();
  size_t taken = 0;
  while (taken < pending_fds_.size() && pending_fds_[taken].offset < frame_end) ++taken;
  for (size_t i = 0; i < taken; ++i) {
    for (UniqueFd& fd : pending_fds_[i].fds) out.fds.push_back(std::move(fd));
  }
  if (taken > 0) pending_fds_.erase(pending_fds_.begin(), pending_fds_.begin() + static_cast<ptrdiff_t>(taken));
  begin_ += kHeaderSize + h.size;
  consumed_ = frame_end;
  if (out.fds.size() > kMaxFdsPerFrame) {
    poisoned_ = FrameError{WireError::kTooManyFds, true, h.request,
                           absl::StrFormat("frame 0x%x: %u fds, at most %u per frame", h.request,
                                           out.fds.size(), kMaxFdsPerFrame)};
    out.fds.clear();
    error = *poisoned_;
    return Result::kError;
  }
  return Result::kFrame;
}

std::optional<FrameError> FrameDecoder::finish() const {
  if (poisoned_) return poisoned_;
  const size_t have = end_ - begin_;
  if (have == 0) return std::nullopt;
  if (have < kHeaderSize) {
    return FrameError{WireError::kTruncatedFrame, true, 0,
                      absl::StrFormat("stream ended inside a frame header: %u of %u bytes", have, kHeaderSize)};
  }
  const FrameHeader h = decodeHeader(buf_.data() + begin_);
  return FrameError{WireError::kTruncatedFrame, true, h.request,
                    absl::StrFormat("stream ended inside frame 0x%x: %u of %u payload bytes", h.request,
                                    have - kHeaderSize, h.size)};
}

}  // namespace iopf::qemu_socket
