#include "assembler.h"

#include <gtest/gtest.h>

#include <vector>

namespace iopf::detail {
namespace {

PageRequest req(uint32_t grpid, uint64_t addr, bool last) {
  PageRequest r;
  r.device = 1;
  r.grpid = grpid;
  r.addr = addr;
  r.perm = perm::kRead;
  r.last = last;
  return r;
}

std::vector<uint64_t> completeAddrs(Assembler& a, const PageRequest& last) {
  std::vector<uint64_t> out;
  a.complete(last, [&](std::span<const PageRequest> g) {
    for (const auto& r : g) out.push_back(r.addr);
  });
  return out;
}

TEST(Assembler, SingleRequestGroupPassesThrough) {
  Assembler a;
  EXPECT_EQ(completeAddrs(a, req(7, 0x1000, true)), (std::vector<uint64_t>{0x1000}));
  EXPECT_EQ(a.buffered(), 0u);
}

TEST(Assembler, PartialsJoinTheirLastInArrivalOrder) {
  Assembler a;
  ASSERT_TRUE(a.addPartial(req(3, 0x1000, false), 100));
  ASSERT_TRUE(a.addPartial(req(4, 0x9000, false), 100));
  ASSERT_TRUE(a.addPartial(req(3, 0x2000, false), 100));
  EXPECT_EQ(a.buffered(), 3u);
  EXPECT_EQ(completeAddrs(a, req(3, 0x3000, true)), (std::vector<uint64_t>{0x1000, 0x2000, 0x3000}));
  EXPECT_EQ(a.buffered(), 1u);
  EXPECT_EQ(completeAddrs(a, req(4, 0xa000, true)), (std::vector<uint64_t>{0x9000, 0xa000}));
  // The PRGI is free again: a new group with it starts empty.
  EXPECT_EQ(completeAddrs(a, req(3, 0x4000, true)), (std::vector<uint64_t>{0x4000}));
}

TEST(Assembler, LargeTagsUseTheOverflowList) {
  Assembler a;
  ASSERT_TRUE(a.addPartial(req(40000, 1, false), 100));
  ASSERT_TRUE(a.addPartial(req(40001, 2, false), 100));
  EXPECT_EQ(completeAddrs(a, req(40001, 3, true)), (std::vector<uint64_t>{2, 3}));
  EXPECT_EQ(completeAddrs(a, req(40000, 4, true)), (std::vector<uint64_t>{1, 4}));
}

TEST(Assembler, BoundRefusesPartialsBeyondTheLimit) {
  Assembler a;
  EXPECT_TRUE(a.addPartial(req(1, 1, false), 2));
  EXPECT_TRUE(a.addPartial(req(2, 2, false), 2));
  EXPECT_FALSE(a.addPartial(req(3, 3, false), 2));
  EXPECT_EQ(a.buffered(), 2u);
}

TEST(Assembler, DiscardAllDropsEveryPartial) {
  Assembler a;
  a.addPartial(req(1, 1, false), 100);
  a.addPartial(req(1, 2, false), 100);
  a.addPartial(req(600, 3, false), 100);
  EXPECT_EQ(a.discardAll(), 3u);
  EXPECT_EQ(a.buffered(), 0u);
  EXPECT_EQ(completeAddrs(a, req(1, 9, true)), (std::vector<uint64_t>{9}));
  EXPECT_EQ(completeAddrs(a, req(600, 8, true)), (std::vector<uint64_t>{8}));
}

}  // namespace
}  // namespace iopf::detail
