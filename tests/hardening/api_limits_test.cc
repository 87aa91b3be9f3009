// The gRPC API against clients that misbehave or ask for a lot (issue 11): a watcher that never
// reads, requests over the size limit, a million open groups listed page by page.
#include <cstdlib>

#include "daemon_fixture.h"

namespace iopf::hardening {
namespace {

using ApiLimits = DaemonFixture;

// A Watch call whose client never reads: the server's write for it stalls on HTTP/2 flow control.
// Routing goes on at full speed and a second watcher keeps receiving events to the end.
TEST_F(ApiLimits, WatcherThatNeverReadsStallsNothing) {
  start("event_capacity: 4096\n");
  grpc::ClientContext stuck_ctx;
  v1::WatchRequest req;
  req.set_max_batch(4096);
  auto stuck = stub_->Watch(&stuck_ctx, req);  // never Read()

  std::atomic<uint64_t> seen_max{0};
  std::atomic<uint64_t> gaps{0};
  grpc::ClientContext live_ctx;
  v1::WatchRequest live_req;
  live_req.set_allow_gap(true);
  live_req.set_max_batch(4096);
  auto live = stub_->Watch(&live_ctx, live_req);
  std::thread reader([&] {
    v1::WatchBatch b;
    while (live->Read(&b)) {
      if (b.lost() > 0) ++gaps;
      for (const auto& e : b.events()) seen_max = std::max<uint64_t>(seen_max, e.seq());
    }
  });

  const DeviceId gpu = deviceNamed("gpu0");
  constexpr uint32_t kGroups = 100000;  // ~6 events each: the 4096-event ring wraps many times
  deliver(gpu, kGroups);
  InMemoryBackend* mem = daemon_->testMemory();
  ASSERT_EQ(mem->waitForResponses(kGroups, std::chrono::seconds(120)), kGroups)
      << "routing waited for the watcher that never reads";
  const uint64_t head = daemon_->router().stats().groups;
  EXPECT_EQ(head, kGroups);
  v1::Info info;
  ASSERT_TRUE(stub_->GetInfo(deadlineContext().get(), {}, &info).ok());
  const uint64_t last_seq = info.event_head_seq() - 1;
  EXPECT_TRUE(eventually([&] { return seen_max.load() >= last_seq; }))
      << "the reading watcher stopped at " << seen_max.load() << " of " << last_seq;
  // Other calls are served while the stuck stream is open.
  v1::Stats stats;
  EXPECT_TRUE(stub_->GetStats(deadlineContext().get(), {}, &stats).ok());
  EXPECT_EQ(stats.responses(), kGroups);

  stuck_ctx.TryCancel();
  live_ctx.TryCancel();
  reader.join();
  (void)stuck->Finish();
  (void)live->Finish();
}

// gRPC's receive limit (limits.max_message_bytes, 4 MiB by default) answers RESOURCE_EXHAUSTED
// before any handler sees the request; the daemon keeps serving.
TEST_F(ApiLimits, RequestOverTheSizeLimitIsResourceExhausted) {
  start("limits: {max_message_bytes: 65536}\n");
  v1::RespondRequest big;
  big.set_group(1);
  big.set_reason(std::string(100000, 'x'));
  v1::RespondResponse resp;
  const grpc::Status st = stub_->Respond(deadlineContext().get(), big, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();

  v1::InjectFaultRequest inj;
  for (int i = 0; i < 10000; ++i) (*inj.mutable_args())["k" + std::to_string(i)] = std::string(16, 'v');
  v1::InjectFaultResponse iresp;
  EXPECT_EQ(stub_->InjectFault(deadlineContext().get(), inj, &iresp).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);

  v1::Info info;
  EXPECT_TRUE(stub_->GetInfo(deadlineContext().get(), {}, &info).ok());
  // Just under the limit is handled normally (the group does not exist).
  big.set_reason(std::string(1000, 'x'));
  EXPECT_EQ(stub_->Respond(deadlineContext().get(), big, &resp).error_code(), grpc::StatusCode::NOT_FOUND);
}

// A million open groups: ListOutstanding pages through them, every page within its deadline and
// the message limit; a page above limits.max_list_page is refused, not served.
TEST_F(ApiLimits, MillionGroupListOutstanding) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  uint32_t groups = 250000;  // the plain run lists the full million; a sanitizer run is ~30x slower
#else
  uint32_t groups = 1000000;
#endif
  if (const char* env = std::getenv("IOPF_HARDENING_GROUPS")) groups = static_cast<uint32_t>(std::atoi(env));
  start();
  const DeviceId nic = deviceNamed("nic0");
  deliver(nic, groups);
  ASSERT_TRUE(
      eventually([&] { return daemon_->router().stats().open_groups == groups; }, std::chrono::seconds(300)))
      << daemon_->router().stats().open_groups << " of " << groups << " open";

  v1::ListOutstandingRequest too_big;
  too_big.set_page_size(10001);
  v1::ListOutstandingResponse r;
  EXPECT_EQ(stub_->ListOutstanding(deadlineContext().get(), too_big, &r).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  uint64_t token = 0, listed = 0, last_id = 0, pages = 0;
  size_t largest_page = 0;
  for (;;) {
    v1::ListOutstandingRequest req;
    req.set_page_size(10000);
    req.set_page_token(token);
    v1::ListOutstandingResponse page;
    const grpc::Status st =
        stub_->ListOutstanding(deadlineContext(std::chrono::seconds(30)).get(), req, &page);
    ASSERT_TRUE(st.ok()) << "page " << pages << ": " << st.error_message();
    ++pages;
    largest_page = std::max(largest_page, page.ByteSizeLong());
    for (const auto& g : page.groups()) {
      ASSERT_GT(g.id(), last_id) << "pages must be in id order without repeats";
      last_id = g.id();
    }
    listed += static_cast<uint64_t>(page.groups_size());
    ASSERT_LE(page.groups_size(), 10000);
    token = page.next_page_token();
    if (token == 0) break;
    ASSERT_LE(pages, groups / 10000 + 2) << "paging does not end";
  }
  EXPECT_EQ(listed, groups);
  EXPECT_LT(largest_page, size_t{4} << 20) << "a page must fit the 4 MiB message limit";
  // Filters page too: PASID 3 has 512 groups.
  v1::ListOutstandingRequest by_pasid;
  by_pasid.set_pasid(3);
  by_pasid.set_page_size(100);
  v1::ListOutstandingResponse first;
  ASSERT_TRUE(stub_->ListOutstanding(deadlineContext(std::chrono::seconds(30)).get(), by_pasid, &first).ok());
  EXPECT_EQ(first.groups_size(), 100);
  EXPECT_NE(first.next_page_token(), 0u);
  // The daemon's other calls still answer within their deadline.
  v1::Stats stats;
  ASSERT_TRUE(stub_->GetStats(deadlineContext().get(), {}, &stats).ok());
  EXPECT_EQ(stats.open_groups(), groups);
}

}  // namespace
}  // namespace iopf::hardening
