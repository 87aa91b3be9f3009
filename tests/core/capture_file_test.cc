#include "iopf/capture_file.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace iopf::capture {
namespace {

class CaptureFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/iopf-capture-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/c.iopfcap";
  }
  void TearDown() override {
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  std::string readAll() {
    std::ifstream in(path_, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  void writeAll(const std::string& data) {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out << data;
  }
  std::string dir_, path_;
};

Event sampleEvent(uint64_t seq) {
  Event e;
  e.seq = seq;
  e.time_ns = 1000 + static_cast<int64_t>(seq);
  e.type = EventType::kRequest;
  e.device = 3;
  e.domain = 2;
  e.group = seq * 10;
  e.pasid = 7;
  e.cookie = 0;
  e.flags = event_flag::kPasidValid | event_flag::kCookieValid | (seq % 2 ? event_flag::kLast : 0);
  e.grpid = 511;
  e.addr = 0xdeadbeaf;
  e.perm = 3;
  e.value = -5;
  return e;
}

TEST_F(CaptureFileTest, RoundTripsHeaderAndRecords) {
  v1::CaptureHeader h;
  h.set_producer("test");
  auto* d = h.add_devices();
  d->set_device_id(3);
  d->set_name("nic0");
  d->set_rid(0x300);
  {
    auto w = Writer::create(path_, h);
    ASSERT_TRUE(w.ok()) << w.status();
    for (uint64_t i = 1; i <= 100; ++i) ASSERT_TRUE((*w)->append(toRecord(sampleEvent(i))).ok());
    EXPECT_EQ((*w)->records(), 100u);
    ASSERT_TRUE((*w)->close().ok());
  }
  auto r = Reader::open(path_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ((*r)->header().format_version(), kFormatVersion);
  EXPECT_EQ((*r)->header().producer(), "test");
  ASSERT_EQ((*r)->header().devices_size(), 1);
  EXPECT_EQ((*r)->header().devices(0).rid(), 0x300u);
  v1::CaptureRecord rec;
  for (uint64_t i = 1; i <= 100; ++i) {
    auto more = (*r)->next(rec);
    ASSERT_TRUE(more.ok()) << more.status();
    ASSERT_TRUE(*more);
    const Event back = fromRecord(rec);
    const Event want = sampleEvent(i);
    EXPECT_EQ(0, std::memcmp(static_cast<const void*>(&back), static_cast<const void*>(&want), sizeof(Event)))
        << "record " << i;
  }
  auto end = (*r)->next(rec);
  ASSERT_TRUE(end.ok());
  EXPECT_FALSE(*end);
}

TEST_F(CaptureFileTest, TruncatedRecordIsReportedWithItsOffset) {
  {
    auto w = Writer::create(path_, {});
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->append(toRecord(sampleEvent(1))).ok());
    ASSERT_TRUE((*w)->append(toRecord(sampleEvent(2))).ok());
  }
  std::string data = readAll();
  writeAll(data.substr(0, data.size() - 3));
  auto r = Reader::open(path_);
  ASSERT_TRUE(r.ok());
  v1::CaptureRecord rec;
  ASSERT_TRUE(*(*r)->next(rec));
  auto bad = (*r)->next(rec);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(bad.status().message().find("truncated record"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("at byte"), std::string::npos);
}

TEST_F(CaptureFileTest, BadMagicVersionAndHugeLengthsAreRefused) {
  writeAll("NOTACAPTURE-FILE-AT-ALL");
  auto r = Reader::open(path_);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("bad magic"), std::string::npos) << r.status();

  std::string v2("IOPFCAP\0", 8);
  v2 += std::string("\x02\0\0\0\0\0\0\0", 8);
  writeAll(v2);
  r = Reader::open(path_);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("format version 2"), std::string::npos) << r.status();

  std::string huge("IOPFCAP\0", 8);
  huge += std::string("\x01\0\0\0\0\0\0\0", 8);
  huge += "\xff\xff\xff\xff\x0f";
  writeAll(huge);
  r = Reader::open(path_);
  ASSERT_TRUE(r.ok()) << r.status();
  v1::CaptureRecord rec;
  auto bad = (*r)->next(rec);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("too large"), std::string::npos) << bad.status();

  writeAll("short");
  EXPECT_FALSE(Reader::open(path_).ok());
  EXPECT_EQ(Reader::open(dir_ + "/missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace iopf::capture
