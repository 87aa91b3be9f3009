// Codec tests: golden byte vectors for every message of the "iopf" profile and for the shared
// records, and the framing decoder's own error cases (docs/protocols/qemu-socket.md §2-§3).
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "gtest/gtest.h"
#include "iopf_protocol.h"
#include "pgfault_record.h"
#include "raw_peer.h"
#include "socket_io.h"
#include "vhost_user_codec.h"

namespace iopf::qemu_socket {
namespace {

using testing::bytes;

TEST(FrameCodec, HeaderGolden) {
  uint8_t out[kHeaderSize];
  encodeHeader({0x15, kVersion | kFlagNeedReply, 0}, out);
  EXPECT_EQ(std::vector<uint8_t>(out, out + kHeaderSize), bytes({0x15, 0, 0, 0, 0x09, 0, 0, 0, 0, 0, 0, 0}));
  const FrameHeader h = decodeHeader(bytes({1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0}).data());
  EXPECT_EQ(h.request, 1u);
  EXPECT_TRUE(h.isReply());
  EXPECT_FALSE(h.needsReply());
  EXPECT_EQ(h.size, 8u);
}

TEST(FrameCodec, PgfaultRecordGoldenAndLayout) {
  PgfaultRecord r;
  r.flags = kPgfaultPasidValid | kPgfaultLastPage;
  r.dev_id = 7;
  r.pasid = 5;
  r.grpid = 0x1a;
  r.perm = perm::kRead | perm::kWrite;
  r.addr = 0x7f0000001000;
  r.cookie = 0x2a;
  uint8_t out[kPgfaultSize];
  encodePgfault(r, out);
  const std::vector<uint8_t> golden = bytes({0x03, 0, 0, 0, 0x07, 0, 0, 0, 0x05, 0, 0, 0, 0x1a, 0, 0, 0,
                                             0x03, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0x7f, 0, 0,
                                             0, 0, 0, 0, 0x2a, 0, 0, 0});
  EXPECT_EQ(std::vector<uint8_t>(out, out + kPgfaultSize), golden);
  EXPECT_EQ(decodePgfault(golden.data()), r);
  // Unknown flag bits (bit 2 leaks from the kernel) and perm bits above PRIV are ignored (R8).
  PgfaultRecord noisy = r;
  noisy.flags |= 1u << 2;
  noisy.perm |= 0xF0;
  noisy.reserved = 0xdeadbeef;
  const PageRequest q = toPageRequest(noisy, 99);
  EXPECT_EQ(q.device, 99u);
  EXPECT_EQ(q.pasid, std::optional<uint32_t>(5));
  EXPECT_TRUE(q.last);
  EXPECT_EQ(q.perm, perm::kRead | perm::kWrite);
  EXPECT_EQ(q.cookie, std::optional<uint32_t>(0x2a));
  EXPECT_EQ(fromPageRequest(q, 7), r);
  // Cookie 0 is a legal cookie (R4), and no PASID_VALID means no PASID.
  PgfaultRecord zero;
  const PageRequest z = toPageRequest(zero, 1);
  EXPECT_EQ(z.cookie, std::optional<uint32_t>(0));
  EXPECT_FALSE(z.pasid.has_value());
}

TEST(FrameCodec, PageResponseGolden) {
  uint8_t out[kPageResponseSize];
  encodePageResponse({0x2a, 1}, out);
  EXPECT_EQ(std::vector<uint8_t>(out, out + 8), bytes({0x2a, 0, 0, 0, 1, 0, 0, 0}));
  EXPECT_EQ(decodePageResponse(out), (PageResponseRecord{0x2a, 1}));
}

// Every message of the iopf profile, byte for byte.
TEST(IopfProfileGolden, Hello) {
  EXPECT_EQ(p2::helloFrame({p2::kMagic, 1, 0, p2::kFeatureBatch}, false),
            bytes({0x00, 0x10, 0, 0, 0x01, 0, 0, 0, 0x10, 0, 0, 0,  //
                   'I', 'O', 'P', 'F', 0x01, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(p2::helloFrame({p2::kMagic, 1, 0, 0}, true),
            bytes({0x00, 0x10, 0, 0, 0x05, 0, 0, 0, 0x10, 0, 0, 0,  //
                   'I', 'O', 'P', 'F', 0x01, 0x00, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(IopfProfileGolden, DeviceAdd) {
  p2::DeviceAdd a;
  a.dev_id = 7;
  a.rid = 0x0310;
  a.pasid_bits = 20;
  a.flags = p2::kDeviceNeedsPasid;
  a.pri_outstanding_alloc = 32;
  a.viommu_id = 2;
  a.virt_id = 0x108;
  const std::vector<uint8_t> golden =
      bytes({0x01, 0x10, 0, 0, 0x01, 0, 0, 0, 0x20, 0, 0, 0,  //
             0x07, 0, 0, 0, 0x10, 0x03, 0x00, 0x00, 0x14, 0x01, 0x00, 0x00, 0x20, 0, 0, 0,
             0x02, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x01, 0, 0, 0, 0, 0, 0});
  EXPECT_EQ(p2::deviceAddFrame(a), golden);
  EXPECT_EQ(p2::decodeDeviceAdd(golden.data() + kHeaderSize), a);
  EXPECT_EQ(p2::statusReplyFrame(p2::kDeviceAdd, p2::Status::kOk),
            bytes({0x01, 0x10, 0, 0, 0x05, 0, 0, 0, 0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(p2::statusReplyFrame(p2::kDeviceAdd, p2::Status::kAlreadyExists),
            bytes({0x01, 0x10, 0, 0, 0x05, 0, 0, 0, 0x08, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(IopfProfileGolden, DeviceDel) {
  EXPECT_EQ(p2::deviceDelFrame(7), bytes({0x02, 0x10, 0, 0, 0x01, 0, 0, 0, 0x04, 0, 0, 0, 0x07, 0, 0, 0}));
  EXPECT_EQ(p2::statusReplyFrame(p2::kDeviceDel, p2::Status::kNotFound),
            bytes({0x02, 0x10, 0, 0, 0x05, 0, 0, 0, 0x08, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0}));
}

TEST(IopfProfileGolden, PageReqAndResp) {
  PgfaultRecord r;
  r.flags = kPgfaultLastPage;
  r.dev_id = 7;
  r.grpid = 3;
  r.perm = perm::kRead;
  r.addr = 0x1000;
  r.cookie = 9;
  const std::vector<uint8_t> req = p2::pageReqFrame(std::vector<PgfaultRecord>{r});
  EXPECT_EQ(req, bytes({0x10, 0x10, 0, 0, 0x01, 0, 0, 0, 0x28, 0, 0, 0,  //
                        0x02, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0, 0, 0x03, 0, 0, 0,
                        0x01, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x10, 0, 0, 0, 0, 0, 0,
                        0, 0, 0, 0, 0x09, 0, 0, 0}));
  EXPECT_EQ(p2::pageRespFrame(std::vector<PageResponseRecord>{{9, 0}, {10, 1}}),
            bytes({0x11, 0x10, 0, 0, 0x01, 0, 0, 0, 0x10, 0, 0, 0,  //
                   0x09, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0, 0, 1, 0, 0, 0}));
}

TEST(IopfProfileGolden, Error) {
  const std::vector<uint8_t> golden = bytes({0xff, 0x10, 0, 0, 0x01, 0, 0, 0, 0x09, 0, 0, 0,  //
                                             0x04, 0, 0, 0, 0x00, 0x20, 0, 0, 'x'});
  EXPECT_EQ(p2::errorFrame({4, 0x2000, "x"}), golden);
  const p2::ErrorMessage e = p2::decodeError(std::span<const uint8_t>(golden).subspan(kHeaderSize));
  EXPECT_EQ(e, (p2::ErrorMessage{4, 0x2000, "x"}));
  // Text is cut at kMaxErrorText bytes.
  EXPECT_EQ(p2::errorFrame({1, 0, std::string(1000, 'a')}).size(), kHeaderSize + 8 + p2::kMaxErrorText);
}

// --- the decoder on its own ------------------------------------------------------------------

TEST(FrameDecoder, SplitAcrossChunksAndBackToBack) {
  FrameDecoder d(1024);
  std::vector<uint8_t> stream = p2::deviceDelFrame(1);
  const std::vector<uint8_t> second = p2::deviceDelFrame(2);
  stream.insert(stream.end(), second.begin(), second.end());
  Frame f;
  FrameError e;
  for (size_t i = 0; i < stream.size(); ++i) {
    d.feed(std::span<const uint8_t>(&stream[i], 1));
    if (i == 15) {
      ASSERT_EQ(d.next(f, e), FrameDecoder::Result::kFrame);
      EXPECT_EQ(getU32(f.payload.data()), 1u);
    } else if (i < 15) {
      ASSERT_EQ(d.next(f, e), FrameDecoder::Result::kNeedMore);
    }
  }
  ASSERT_EQ(d.next(f, e), FrameDecoder::Result::kFrame);
  EXPECT_EQ(getU32(f.payload.data()), 2u);
  EXPECT_EQ(d.next(f, e), FrameDecoder::Result::kNeedMore);
  EXPECT_FALSE(d.finish().has_value());
}

TEST(FrameDecoder, FdsBelongToTheFrameOfTheirFirstByte) {
  FrameDecoder d(1024);
  std::vector<uint8_t> a = p2::deviceDelFrame(1);
  std::vector<uint8_t> b = p2::deviceDelFrame(2);
  std::vector<UniqueFd> fds;
  fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
  d.feed(a);
  d.feed(b, std::move(fds));
  Frame f;
  FrameError e;
  ASSERT_EQ(d.next(f, e), FrameDecoder::Result::kFrame);
  EXPECT_TRUE(f.fds.empty());
  ASSERT_EQ(d.next(f, e), FrameDecoder::Result::kFrame);
  ASSERT_EQ(f.fds.size(), 1u);
  EXPECT_TRUE(f.fds[0].valid());
}

TEST(FrameDecoder, BytesToFrameEndWalksBufferedFrames) {
  FrameDecoder d(1024);
  EXPECT_EQ(d.bytesToFrameEnd(), kHeaderSize);
  const std::vector<uint8_t> a = p2::deviceDelFrame(1);  // 12-byte header + 4-byte payload
  d.feed(std::span<const uint8_t>(a.data(), 5));
  EXPECT_EQ(d.bytesToFrameEnd(), kHeaderSize - 5);
  d.feed(std::span<const uint8_t>(a.data() + 5, kHeaderSize - 5));
  EXPECT_EQ(d.bytesToFrameEnd(), 4u);
  d.feed(std::span<const uint8_t>(a.data() + kHeaderSize, 4));
  EXPECT_EQ(d.bytesToFrameEnd(), kHeaderSize);  // one whole frame buffered: the next one's header
  std::vector<uint8_t> huge(kHeaderSize);
  encodeHeader({p2::kDeviceDel, kVersion, 4096}, huge.data());
  d.feed(huge);
  EXPECT_EQ(d.bytesToFrameEnd(), 1u);  // over the limit: next() refuses it, no payload to wait for
}

// A real socket: the kernel returns a message's fds with a read that began in the message before
// (recvmsg glues skbs of one writer). Frame A (no fds) and frame B (one fd) are both queued before
// the first read; frame-bounded reads hand the fd to B, as vhost-user means.
TEST(StreamSocket, FrameBoundedReadsGiveFdsToTheirOwnFrame) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd writer(sv[0]);
  StreamSocket reader(UniqueFd(sv[1]), 1024, StreamSocket::ReadMode::kFrameBounded);
  const std::vector<uint8_t> a = p2::deviceDelFrame(1);
  const std::vector<uint8_t> b = p2::deviceDelFrame(2);
  ASSERT_EQ(::send(writer.get(), a.data(), a.size(), 0), static_cast<ssize_t>(a.size()));
  UniqueFd event(::eventfd(0, EFD_CLOEXEC));
  StreamSocket sender(std::move(writer), 1024);
  const int fd = event.get();
  ASSERT_TRUE(sender.queueFrameWithFds(b, std::span<const int>(&fd, 1)).ok());
  ASSERT_TRUE(sender.flush().ok());
  ASSERT_FALSE(sender.wantsWrite());

  struct Seen {
    uint32_t dev_id;
    size_t fds;
  };
  std::vector<Seen> seen;  // a Frame's payload points into the decoder: read it before the next read
  for (int reads = 0; seen.size() < 2 && reads < 16; ++reads) {
    ASSERT_GT(reader.readSome(), 0);
    Frame f;
    FrameError e;
    while (reader.decoder().next(f, e) == FrameDecoder::Result::kFrame) {
      seen.push_back({getU32(f.payload.data()), f.fds.size()});
    }
  }
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].dev_id, 1u);
  EXPECT_EQ(seen[0].fds, 0u);
  EXPECT_EQ(seen[1].dev_id, 2u);
  EXPECT_EQ(seen[1].fds, 1u);
}

struct DecoderCase {
  const char* name;
  std::vector<uint8_t> stream;
  WireError code;
  bool fatal;
  const char* message;
};

TEST(FrameDecoder, MalformedStreams) {
  const std::vector<DecoderCase> cases = {
      {"version 0", bytes({0x02, 0x10, 0, 0, 0x00, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0}), WireError::kBadVersion, true,
       "frame 0x1002: header version 0, expects 1 (flags 0x0)"},
      {"version 2", bytes({0x02, 0x10, 0, 0, 0x02, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0}), WireError::kBadVersion, true,
       "frame 0x1002: header version 2, expects 1 (flags 0x2)"},
      {"version 3 with reply", bytes({0x02, 0x10, 0, 0, 0x07, 0, 0, 0, 4, 0, 0, 0}), WireError::kBadVersion, true,
       "frame 0x1002: header version 3, expects 1 (flags 0x7)"},
      {"size above limit", bytes({0x10, 0x10, 0, 0, 0x01, 0, 0, 0, 0x01, 0x04, 0, 0}), WireError::kPayloadTooLarge,
       true, "frame 0x1010: payload of 1025 bytes exceeds the limit of 1024 bytes"},
      {"size 4 GiB", bytes({0x10, 0x10, 0, 0, 0x01, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}), WireError::kPayloadTooLarge,
       true, "frame 0x1010: payload of 4294967295 bytes exceeds the limit of 1024 bytes"},
  };
  for (const DecoderCase& c : cases) {
    SCOPED_TRACE(c.name);
    FrameDecoder d(1024);
    d.feed(c.stream);
    Frame f;
    FrameError e;
    ASSERT_EQ(d.next(f, e), FrameDecoder::Result::kError);
    EXPECT_EQ(e.code, c.code);
    EXPECT_EQ(e.fatal, c.fatal);
    EXPECT_EQ(e.message, c.message);
    // Poisoned: the same error again.
    FrameError again;
    EXPECT_EQ(d.next(f, again), FrameDecoder::Result::kError);
    EXPECT_EQ(again.message, c.message);
  }
}

TEST(FrameDecoder, TruncatedAtEndOfStream) {
  {
    FrameDecoder d(1024);
    d.feed(bytes({0x01, 0x10, 0, 0, 0x01}));
    auto e = d.finish();
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->code, WireError::kTruncatedFrame);
    EXPECT_TRUE(e->fatal);
    EXPECT_EQ(e->message, "stream ended inside a frame header: 5 of 12 bytes");
  }
  {
    FrameDecoder d(1024);
    std::vector<uint8_t> f = p2::deviceAddFrame({});
    f.resize(kHeaderSize + 10);
    d.feed(f);
    Frame fr;
    FrameError err;
    EXPECT_EQ(d.next(fr, err), FrameDecoder::Result::kNeedMore);
    auto e = d.finish();
    ASSERT_TRUE(e.has_value());
    EXPECT_EQ(e->message, "stream ended inside frame 0x1001: 10 of 32 payload bytes");
    EXPECT_EQ(e->toStatus().code(), absl::StatusCode::kDataLoss);
  }
}

TEST(MessageTable, ChecksEachRule) {
  const MessageTable& t = p2::serverInboundTable();
  auto check = [&](std::vector<uint8_t> frame_bytes, size_t nfds) -> std::optional<FrameError> {
    FrameDecoder d(p2::kMaxPayload);
    std::vector<UniqueFd> fds;
    for (size_t i = 0; i < nfds; ++i) fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
    d.feed(frame_bytes, std::move(fds));
    Frame f;
    FrameError e;
    EXPECT_EQ(d.next(f, e), FrameDecoder::Result::kFrame);
    return t.check(f);
  };
  EXPECT_FALSE(check(p2::deviceDelFrame(1), 0).has_value());
  auto reserved = check(bytes({0x02, 0x10, 0, 0, 0x11, 0, 0, 0, 4, 0, 0, 0, 1, 0, 0, 0}), 0);
  ASSERT_TRUE(reserved);
  EXPECT_EQ(reserved->code, WireError::kReservedFlags);
  EXPECT_EQ(reserved->message,
            "profile 'iopf': message DEVICE_DEL (0x1002) has flags 0x11, reserved bits 0x10 set (only 0xf are defined)");
  auto unknown = check(bytes({0x00, 0x20, 0, 0, 0x01, 0, 0, 0, 0, 0, 0, 0}), 0);
  ASSERT_TRUE(unknown);
  EXPECT_EQ(unknown->code, WireError::kUnknownRequest);
  EXPECT_EQ(unknown->message, "profile 'iopf': unknown request id 0x2000 (0 payload bytes skipped)");
  auto size = check(bytes({0x10, 0x10, 0, 0, 0x01, 0, 0, 0, 41, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                           0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}),
                    0);
  ASSERT_TRUE(size);
  EXPECT_EQ(size->code, WireError::kBadPayloadSize);
  EXPECT_EQ(size->message, "profile 'iopf': message PAGE_REQ (0x1010) has a 41-byte payload, expects 40 + k*40, at most 10240");
  auto fds = check(p2::deviceDelFrame(1), 2);
  ASSERT_TRUE(fds);
  EXPECT_EQ(fds->code, WireError::kUnexpectedFds);
  EXPECT_EQ(fds->message, "profile 'iopf': message DEVICE_DEL (0x1002) carried 2 fd(s), expects at most 0 (the fds were closed)");
}

}  // namespace
}  // namespace iopf::qemu_socket
