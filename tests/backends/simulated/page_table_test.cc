#include <gtest/gtest.h>

#include "soft_page_table.h"

namespace iopf::sim {
namespace {

TEST(SoftIoPageTable, MapsWholePagesWithPermissions) {
  SoftIoPageTable t(1, DomainKind::kSva);
  EXPECT_EQ(t.lookup(0x5000), 0u);
  ASSERT_TRUE(t.map(0x5123, 10, perm::kRead).ok());  // touches one page
  EXPECT_TRUE(t.allows(0x5000, perm::kRead));
  EXPECT_TRUE(t.allows(0x5fff, perm::kRead | perm::kPriv));  // PRIV is not an access right
  EXPECT_FALSE(t.allows(0x5000, perm::kWrite));
  EXPECT_FALSE(t.allows(0x6000, perm::kRead));
  EXPECT_EQ(t.mappedPages(), 1u);
  ASSERT_TRUE(t.map(0x5ff0, 0x20, perm::kRead | perm::kWrite).ok());  // straddles 0x5000 and 0x6000
  EXPECT_TRUE(t.allows(0x5000, perm::kWrite));
  EXPECT_TRUE(t.allows(0x6000, perm::kWrite));
  EXPECT_EQ(t.mappedPages(), 2u);
}

TEST(SoftIoPageTable, SpansLeavesAndLevelsAndUnmaps) {
  SoftIoPageTable t(1, DomainKind::kPaging);
  const uint64_t base = (uint64_t{1} << 39) - 3 * 4096;  // crosses a top-level boundary
  ASSERT_TRUE(t.map(base, 6 * 4096, perm::kRead).ok());
  EXPECT_EQ(t.mappedPages(), 6u);
  for (int i = 0; i < 6; ++i) EXPECT_TRUE(t.allows(base + i * 4096, perm::kRead)) << i;
  EXPECT_FALSE(t.allows(base + 6 * 4096, perm::kRead));
  t.unmap(base + 4096, 2 * 4096);
  EXPECT_EQ(t.mappedPages(), 4u);
  EXPECT_FALSE(t.allows(base + 4096, perm::kRead));
  EXPECT_TRUE(t.allows(base + 3 * 4096, perm::kRead));
}

TEST(SoftIoPageTable, RejectsRangesOutsideThe48BitSpace) {
  SoftIoPageTable t(3, DomainKind::kPaging);
  const absl::Status st = t.map((uint64_t{1} << 48) - 4096, 8192, perm::kRead);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "domain 3: map of 0xfffffffff000+0x2000 leaves the 48-bit IOVA space");
  EXPECT_EQ(t.map(0x1000, 0, perm::kRead).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.lookup(uint64_t{1} << 50), 0u);
}

}  // namespace
}  // namespace iopf::sim
