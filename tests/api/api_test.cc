// The gRPC API against a real in-process daemon on a temporary Unix socket.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <iostream>
#include <thread>

#include "config_loader.h"
#include "daemon.h"
#include "iopf/api/health_client.h"
#include "iopf/api/packed_events.h"
#include "iopf/in_memory_backend.h"
#include "iopf/v1/router.grpc.pb.h"

namespace iopf {
namespace {

namespace fs = std::filesystem;

class ApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/iopf-api-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    socket_ = dir_ + "/run/iopfd.sock";
  }
  void TearDown() override {
    // Client first: a channel that outlives its server can take seconds to tear down.
    stub_.reset();
    channel_.reset();
    daemon_.reset();
    fs::remove_all(dir_);
  }

  void start(const std::string& extra = "", uint64_t event_capacity = 0) {
    std::string cfg = "listen: [\"unix:" + socket_ + "\"]\n";
    if (event_capacity) cfg += "event_capacity: " + std::to_string(event_capacity) + "\n";
    cfg += R"(backends:
  - name: mem
    type: memory
    devices:
      - {name: nic0, handle: 7, rid: 0x0300, pri_allocation: 20000, pasid_bits: 8}
      - {name: gpu0, handle: 9, rid: 0x0400, pasid_bits: 8}
domains:
  - name: host
    deadline_ms: 60000
    chain: [{name: observe}, {name: hold}]
  - name: fast
    chain: [{name: success}]
attachments:
  - {device: nic0, domain: host}
  - {device: gpu0, domain: fast}
)" + extra;
    const std::string path = dir_ + "/iopfd.yaml";
    std::ofstream(path) << cfg;
    daemon_ = std::make_unique<daemon::Daemon>();
    daemon::DaemonOptions o;
    o.config_path = path;
    ASSERT_TRUE(daemon_->start(o).ok());
    channel_ = grpc::CreateChannel("unix:" + socket_, grpc::experimental::LocalCredentials(UDS));
    stub_ = v1::Router::NewStub(channel_);
  }

  // Delivers single-request groups for device `dev` through the daemon's memory backend.
  void deliver(DeviceId dev, uint32_t count, uint32_t first_grpid = 0, std::optional<uint32_t> pasid = {}) {
    std::vector<PageRequest> reqs;
    for (uint32_t i = 0; i < count; ++i) {
      PageRequest r;
      r.device = dev;
      r.grpid = (first_grpid + i) % 512;
      r.addr = 0x1000ull * (i + 1);
      r.perm = perm::kRead;
      r.last = true;
      r.pasid = pasid;
      r.cookie = i;
      reqs.push_back(r);
    }
    sink().deliver(reqs);
  }
  RouterSink& sink() { return *sink_; }

  std::unique_ptr<grpc::ClientContext> ctx() {
    auto c = std::make_unique<grpc::ClientContext>();
    c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return c;
  }
  uint64_t openGroups() {
    v1::Stats s;
    EXPECT_TRUE(stub_->GetStats(ctx().get(), {}, &s).ok());
    return s.open_groups();
  }
  // Waits until n groups are open and every one went through its chain (state deferred).
  void waitDeferred(int n) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    for (;;) {
      v1::ListOutstandingRequest req;
      req.set_page_size(10000);
      v1::ListOutstandingResponse r;
      ASSERT_TRUE(stub_->ListOutstanding(ctx().get(), req, &r).ok());
      const bool all = std::all_of(r.groups().begin(), r.groups().end(),
                                   [](const v1::Group& g) { return g.state() == v1::GROUP_STATE_DEFERRED; });
      if ((r.groups_size() == n && all) || std::chrono::steady_clock::now() > until) {
        ASSERT_EQ(r.groups_size(), n);
        ASSERT_TRUE(all);
        return;
      }
      std::this_thread::yield();
    }
  }
  void waitOpen(uint64_t n) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (openGroups() < n && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    ASSERT_EQ(openGroups(), n);
  }

  std::string dir_, socket_;
  std::unique_ptr<daemon::Daemon> daemon_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Router::Stub> stub_;
  RouterSink* sink_ = nullptr;
};

TEST_F(ApiTest, InfoListsAndSocketPermissions) {
  start();
  v1::Info info;
  ASSERT_TRUE(stub_->GetInfo(ctx().get(), {}, &info).ok());
  EXPECT_EQ(info.api_version(), "iopf.v1");
  EXPECT_EQ(info.config_generation(), 1u);
  ASSERT_EQ(info.backends_size(), 1);
  EXPECT_EQ(info.backends(0), "memory");
  v1::ListDevicesResponse devs;
  ASSERT_TRUE(stub_->ListDevices(ctx().get(), {}, &devs).ok());
  ASSERT_EQ(devs.devices_size(), 2);
  EXPECT_EQ(devs.devices(0).name(), "nic0");
  EXPECT_EQ(devs.devices(0).rid(), 0x300u);
  EXPECT_EQ(devs.devices(0).backend_handle(), 7u);
  v1::ListDomainsResponse doms;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &doms).ok());
  ASSERT_EQ(doms.domains_size(), 2);
  EXPECT_EQ(doms.domains(0).chain_size(), 2);
  EXPECT_EQ(doms.domains(0).chain(1), "hold");
  v1::ListAttachmentsResponse atts;
  ASSERT_TRUE(stub_->ListAttachments(ctx().get(), {}, &atts).ok());
  ASSERT_EQ(atts.attachments_size(), 2);
  struct stat st;
  ASSERT_EQ(::stat(socket_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  ASSERT_EQ(::stat((dir_ + "/run").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0750u);
}

TEST_F(ApiTest, OutstandingPagingGroupAndRespond) {
  start();
  sink_ = daemon_->testSink();
  ASSERT_NE(sink_, nullptr);
  deliver(1, 25);
  waitDeferred(25);
  v1::ListOutstandingRequest req;
  req.set_page_size(10);
  std::vector<uint64_t> ids;
  for (;;) {
    v1::ListOutstandingResponse page;
    ASSERT_TRUE(stub_->ListOutstanding(ctx().get(), req, &page).ok());
    for (const auto& g : page.groups()) ids.push_back(g.id());
    if (page.next_page_token() == 0) break;
    req.set_page_token(page.next_page_token());
  }
  ASSERT_EQ(ids.size(), 25u);
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));
  v1::ListOutstandingRequest big;
  big.set_page_size(1'000'000);
  v1::ListOutstandingResponse none;
  EXPECT_EQ(stub_->ListOutstanding(ctx().get(), big, &none).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ListOutstandingRequest by_domain;
  by_domain.set_domain(2);
  v1::ListOutstandingResponse empty;
  ASSERT_TRUE(stub_->ListOutstanding(ctx().get(), by_domain, &empty).ok());
  EXPECT_EQ(empty.groups_size(), 0);

  v1::GetGroupRequest gr;
  gr.set_id(ids[3]);
  v1::Group g;
  ASSERT_TRUE(stub_->GetGroup(ctx().get(), gr, &g).ok());
  EXPECT_EQ(g.state(), v1::GROUP_STATE_DEFERRED);
  ASSERT_EQ(g.requests_size(), 1);
  EXPECT_EQ(g.rid(), 0x300u);
  ASSERT_EQ(g.trace_size(), 2);
  EXPECT_EQ(g.trace(1).handler_name(), "hold");
  EXPECT_EQ(g.trace(1).verdict(), v1::VERDICT_DEFER);

  v1::RespondRequest rr;
  rr.set_group(ids[3]);
  rr.set_code(v1::RESPONSE_CODE_SUCCESS);
  rr.set_reason("test");
  v1::RespondResponse rresp;
  ASSERT_TRUE(stub_->Respond(ctx().get(), rr, &rresp).ok());
  EXPECT_EQ(stub_->Respond(ctx().get(), rr, &rresp).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  rr.set_group(999999);
  EXPECT_EQ(stub_->Respond(ctx().get(), rr, &rresp).error_code(), grpc::StatusCode::NOT_FOUND);
  rr.set_group(ids[4]);
  rr.set_code(static_cast<v1::ResponseCode>(7));
  EXPECT_EQ(stub_->Respond(ctx().get(), rr, &rresp).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  waitOpen(24);
  // The completed group is still described, from the recent history.
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  v1::Group done;
  do {
    done.Clear();
    ASSERT_TRUE(stub_->GetGroup(ctx().get(), gr, &done).ok());
  } while (!done.has_origin() && std::chrono::steady_clock::now() < until);
  EXPECT_EQ(done.state(), v1::GROUP_STATE_COMPLETED);
  EXPECT_EQ(done.origin(), v1::ORIGIN_OPERATOR);
  EXPECT_EQ(done.code(), v1::RESPONSE_CODE_SUCCESS);
  EXPECT_GE(done.transitions_size(), 4);
  gr.set_id(123456789);
  EXPECT_EQ(stub_->GetGroup(ctx().get(), gr, &g).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiTest, AttachDetachAndChainErrors) {
  start();
  v1::AttachRequest a;
  a.set_device(1);
  a.set_domain(99);
  v1::AttachResponse ar;
  EXPECT_EQ(stub_->Attach(ctx().get(), a, &ar).error_code(), grpc::StatusCode::NOT_FOUND);
  a.set_domain(2);
  a.set_pasid(1u << 9);
  EXPECT_EQ(stub_->Attach(ctx().get(), a, &ar).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  a.set_pasid(5);
  ASSERT_TRUE(stub_->Attach(ctx().get(), a, &ar).ok());
  EXPECT_GT(ar.epoch(), 0u);
  v1::DetachRequest d;
  d.set_device(1);
  d.set_pasid(5);
  v1::DetachResponse dr;
  ASSERT_TRUE(stub_->Detach(ctx().get(), d, &dr).ok());
  EXPECT_EQ(stub_->Detach(ctx().get(), d, &dr).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::SetDomainChainRequest sc;
  sc.set_domain(2);
  sc.add_handlers("nonexistent");
  v1::SetDomainChainResponse scr;
  EXPECT_EQ(stub_->SetDomainChain(ctx().get(), sc, &scr).error_code(), grpc::StatusCode::NOT_FOUND);
  sc.clear_handlers();
  sc.add_handlers("observe");
  sc.add_handlers("invalid");
  ASSERT_TRUE(stub_->SetDomainChain(ctx().get(), sc, &scr).ok());
  v1::ListDomainsResponse doms;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &doms).ok());
  EXPECT_EQ(doms.domains(1).chain(1), "invalid");
  v1::InjectFaultRequest inj;
  v1::InjectFaultResponse injr;
  EXPECT_EQ(stub_->InjectFault(ctx().get(), inj, &injr).error_code(), grpc::StatusCode::UNIMPLEMENTED);
}

std::vector<v1::Event> readEvents(grpc::ClientReader<v1::WatchBatch>& reader, size_t n, v1::WatchBatch* first = nullptr) {
  std::vector<v1::Event> out;
  v1::WatchBatch b;
  bool seen_first = false;
  while (out.size() < n && reader.Read(&b)) {
    if (!seen_first && first != nullptr) *first = b;
    seen_first = true;
    for (const auto& e : b.events()) {
      if (out.size() < n) out.push_back(e);
    }
    google::protobuf::RepeatedPtrField<v1::Event> unpacked;
    EXPECT_TRUE(api::packed::appendAsMessages(b.packed_events(), unpacked).ok());
    for (const auto& e : unpacked) {
      if (out.size() < n) out.push_back(e);
    }
  }
  return out;
}

TEST_F(ApiTest, WatchSnapshotDeltasAndExactResume) {
  start();
  sink_ = daemon_->testSink();
  deliver(1, 5);
  waitOpen(5);
  grpc::ClientContext c1;
  v1::WatchRequest wr;
  auto reader = stub_->Watch(&c1, wr);
  v1::WatchBatch first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(first.has_snapshot());
  EXPECT_EQ(first.snapshot().devices_size(), 2);
  EXPECT_EQ(first.snapshot().open_groups_size(), 5);
  v1::ListOutstandingResponse listed;
  ASSERT_TRUE(stub_->ListOutstanding(ctx().get(), {}, &listed).ok());
  ASSERT_EQ(listed.groups_size(), 5);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(first.snapshot().open_groups(i).id(), listed.groups(i).id());

  // Deltas: 10 more groups on the success domain: each yields request, group_queued, dispatched,
  // handler_verdict, responded.
  deliver(2, 10, 100);
  std::vector<v1::Event> events = readEvents(*reader, 50);
  ASSERT_EQ(events.size(), 50u);
  for (size_t i = 1; i < events.size(); ++i) EXPECT_EQ(events[i].seq(), events[i - 1].seq() + 1);
  EXPECT_EQ(events.front().seq(), first.snapshot().next_seq());
  size_t responded = 0;
  for (const auto& e : events) responded += e.type() == v1::EVENT_RESPONDED;
  EXPECT_EQ(responded, 10u);
  c1.TryCancel();
  (void)reader->Finish();

  // Resume exactly after the 20th event: the next event is the 21st, identical.
  grpc::ClientContext c2;
  v1::WatchRequest resume;
  resume.set_since_seq(events[19].seq() + 1);
  auto r2 = stub_->Watch(&c2, resume);
  std::vector<v1::Event> again = readEvents(*r2, 30);
  ASSERT_EQ(again.size(), 30u);
  for (size_t i = 0; i < 30; ++i) {
    EXPECT_EQ(again[i].SerializeAsString(), events[20 + i].SerializeAsString()) << i;
  }
  c2.TryCancel();
  (void)r2->Finish();
}

// The packed encoding carries exactly what the message encoding carries: the same events, decoded
// by the client library, serialise to the same bytes (PASID and cookie present and absent).
TEST_F(ApiTest, PackedEventsCarryTheSameEventsAsMessages) {
  start();
  sink_ = daemon_->testSink();
  const uint64_t since = [&] {
    v1::Info info;
    EXPECT_TRUE(stub_->GetInfo(ctx().get(), {}, &info).ok());
    return info.event_head_seq();
  }();
  deliver(2, 6, 40, /*pasid=*/7);  // gpu0 on "fast": answered at once, 5 events per group
  deliver(2, 4, 60);
  grpc::ClientContext c1, c2;
  for (grpc::ClientContext* c : {&c1, &c2}) c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  v1::WatchRequest messages;
  messages.set_since_seq(since);
  v1::WatchRequest packed = messages;
  packed.set_encoding(v1::EVENT_ENCODING_PACKED);
  auto r1 = stub_->Watch(&c1, messages);
  auto r2 = stub_->Watch(&c2, packed);
  // The message stream up to the tenth answer, then as many events of the packed stream.
  std::vector<v1::Event> a;
  auto answered = [&] {
    return std::count_if(a.begin(), a.end(), [](const v1::Event& e) { return e.type() == v1::EVENT_RESPONDED; });
  };
  for (v1::WatchBatch batch; answered() < 10;) {
    ASSERT_TRUE(r1->Read(&batch)) << "the message stream ended after " << a.size() << " events";
    a.insert(a.end(), batch.events().begin(), batch.events().end());
  }
  while (a.back().type() != v1::EVENT_RESPONDED) a.pop_back();  // the tenth answer is the last event
  ASSERT_EQ(answered(), 10);
  v1::WatchBatch first_packed;
  const std::vector<v1::Event> b = readEvents(*r2, a.size(), &first_packed);
  ASSERT_EQ(b.size(), a.size());
  EXPECT_EQ(first_packed.events_size(), 0);  // packed: nothing in `events`
  EXPECT_GT(first_packed.packed_events().size(), 0u);
  size_t with_pasid = 0, with_cookie = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].SerializeAsString(), b[i].SerializeAsString()) << i << ": " << a[i].ShortDebugString()
                                                                  << " vs " << b[i].ShortDebugString();
    with_pasid += a[i].has_pasid();
    with_cookie += a[i].has_cookie();
  }
  EXPECT_GT(with_pasid, 0u);
  EXPECT_LT(with_pasid, a.size());
  EXPECT_GT(with_cookie, 0u);
  c1.TryCancel();
  c2.TryCancel();
  (void)r1->Finish();
  (void)r2->Finish();

  // An encoding this daemon does not know is refused, not guessed.
  grpc::ClientContext c3;
  v1::WatchRequest unknown;
  unknown.set_encoding(static_cast<v1::EventEncoding>(9));
  auto r3 = stub_->Watch(&c3, unknown);
  v1::WatchBatch ignored;
  EXPECT_FALSE(r3->Read(&ignored));
  const grpc::Status st = r3->Finish();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("encoding"), std::string::npos) << st.error_message();

  // A client that receives a torn record says so.
  google::protobuf::RepeatedPtrField<v1::Event> out;
  const absl::Status torn = api::packed::appendAsMessages(std::string(api::packed::kRecordSize + 3, '\0'), out);
  EXPECT_FALSE(torn.ok());
  EXPECT_EQ(out.size(), 0);
}

TEST(ConfigLimits, WatchCpuCoresIsANumberOfCores) {
  EXPECT_TRUE(daemon::parseConfig("limits: {watch_cpu_cores: 0.5}\n", "a.yaml").ok());
  EXPECT_TRUE(daemon::parseConfig("limits: {max_watchers: 4}\n", "b.yaml").ok());  // unset: the default
  for (const char* bad : {"-1", "65", ".nan"}) {
    const auto st = daemon::parseConfig(std::string("limits:\n  watch_cpu_cores: ") + bad + "\n", "c.yaml");
    ASSERT_FALSE(st.ok()) << bad;
    EXPECT_NE(st.status().message().find("c.yaml:2: limits.watch_cpu_cores"), std::string::npos)
        << st.status().message();
  }
}

TEST_F(ApiTest, ResumePointGoneIsOutOfRangeOrAGap) {
  start("", 64);
  sink_ = daemon_->testSink();
  deliver(2, 100);  // 500 events through a 64-event ring
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  v1::Info info;
  do {
    ASSERT_TRUE(stub_->GetInfo(ctx().get(), {}, &info).ok());
  } while (info.event_head_seq() < 400 && std::chrono::steady_clock::now() < until);
  ASSERT_GT(info.event_oldest_seq(), 2u);
  {
    grpc::ClientContext c;
    v1::WatchRequest w;
    w.set_since_seq(2);
    auto r = stub_->Watch(&c, w);
    v1::WatchBatch b;
    EXPECT_FALSE(r->Read(&b));
    const grpc::Status st = r->Finish();
    EXPECT_EQ(st.error_code(), grpc::StatusCode::OUT_OF_RANGE);
    EXPECT_NE(st.error_message().find("no longer held"), std::string::npos) << st.error_message();
  }
  {
    grpc::ClientContext c;
    v1::WatchRequest w;
    w.set_since_seq(2);
    w.set_allow_gap(true);
    auto r = stub_->Watch(&c, w);
    v1::WatchBatch b;
    ASSERT_TRUE(r->Read(&b));
    ASSERT_GT(b.events_size(), 0);
    EXPECT_EQ(b.events(0).type(), v1::EVENT_GAP);
    EXPECT_EQ(b.events(0).seq(), 2u);
    EXPECT_GT(b.lost(), 0u);
    EXPECT_EQ(b.oldest_available_seq(), 2u + b.lost());
    if (b.events_size() > 1) {
      EXPECT_EQ(b.events(1).seq(), b.oldest_available_seq());
    }
    c.TryCancel();
    (void)r->Finish();
  }
  grpc::ClientContext c;
  v1::WatchRequest w;
  w.set_since_seq(1u << 30);
  auto r = stub_->Watch(&c, w);
  v1::WatchBatch b;
  EXPECT_FALSE(r->Read(&b));
  EXPECT_EQ(r->Finish().error_code(), grpc::StatusCode::OUT_OF_RANGE);
}

TEST_F(ApiTest, DrainAnswersTenThousandOpenGroupsAndEndsWatchers) {
  start();
  sink_ = daemon_->testSink();
  for (int i = 0; i < 20; ++i) deliver(1, 500, static_cast<uint32_t>(i * 500 % 512));
  waitOpen(10000);
  grpc::ClientContext wc;
  auto watcher = stub_->Watch(&wc, {});
  v1::WatchBatch b;
  ASSERT_TRUE(watcher->Read(&b));
  daemon_->drain();
  while (watcher->Read(&b)) {
  }
  EXPECT_TRUE(watcher->Finish().ok());  // the stream ended cleanly
  const auto stats = daemon_->router().stats();
  EXPECT_EQ(stats.open_groups, 0u);
  EXPECT_EQ(stats.responses_by_origin[static_cast<int>(Origin::kShutdown)], 10000u);
  EXPECT_EQ(daemon_->testMemory()->responseCount(), 10000u);
}

TEST_F(ApiTest, AWatcherThatNeverReadsDoesNotHoldRoutingBack) {
  start("", 1024);
  sink_ = daemon_->testSink();
  // A watcher that takes the snapshot and then stops reading: its stream fills HTTP/2 flow control
  // and the daemon's Write for it blocks in its own thread.
  grpc::ClientContext stuck_ctx;
  v1::WatchRequest wr;
  wr.set_max_batch(16);
  auto stuck = stub_->Watch(&stuck_ctx, wr);
  v1::WatchBatch first;
  ASSERT_TRUE(stuck->Read(&first));
  // 50,000 groups on the success domain: 250,000 events through a 1,024-event ring.
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100; ++i) deliver(2, 500, static_cast<uint32_t>(i * 500));
  ASSERT_EQ(daemon_->testMemory()->waitForResponses(50000, std::chrono::seconds(60)), 50000u);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "routed 50000 groups with a stalled watcher in " << secs << " s\n";
  // When it reads again, it is told what it lost instead of having slowed anyone down.
  uint64_t lost = 0;
  v1::WatchBatch b;
  while (lost == 0 && stuck->Read(&b)) lost += b.lost();
  EXPECT_GT(lost, 0u);
  stuck_ctx.TryCancel();
  (void)stuck->Finish();
  const auto stats = daemon_->router().stats();
  EXPECT_EQ(stats.responses, 50000u);
}

TEST_F(ApiTest, PluginsFromPluginDirsServeChainsAndEvents) {
  const std::string events = dir_ + "/events.jsonl";
  std::string cfg = "listen: [\"unix:" + socket_ + "\"]\n";
  cfg += "plugin_dirs: [\"" IOPF_PLUGIN_DIR "\"]\n";
  cfg += "plugins:\n  - {id: logger, config: {json_path: \"" + events + "\", max_events_per_second: 0}}\n";
  cfg += R"(backends:
  - name: mem
    type: memory
    devices:
      - {name: nic0, handle: 7, rid: 0x0300, pasid_bits: 8}
domains:
  - name: host
    chain:
      - {name: deny_writes, config: {ranges: [{start: 4096, length: 4096}]}}
      - {name: success}
attachments:
  - {device: nic0, domain: host}
)";
  std::ofstream(dir_ + "/iopfd.yaml") << cfg;
  daemon_ = std::make_unique<daemon::Daemon>();
  daemon::DaemonOptions o;
  o.config_path = dir_ + "/iopfd.yaml";
  const absl::Status st = daemon_->start(o);
  ASSERT_TRUE(st.ok()) << st;
  channel_ = grpc::CreateChannel("unix:" + socket_, grpc::experimental::LocalCredentials(UDS));
  stub_ = v1::Router::NewStub(channel_);
  v1::ListPluginsResponse plugins;
  ASSERT_TRUE(stub_->ListPlugins(ctx().get(), {}, &plugins).ok());
  std::map<std::string, std::string> state;
  for (const auto& p : plugins.plugins()) state[p.name()] = p.state();
  EXPECT_EQ(state["logger"], "running");
  EXPECT_EQ(state["deny_writes"], "running");

  std::vector<PageRequest> reqs(2);
  reqs[0].device = reqs[1].device = 1;
  reqs[0].grpid = 1;
  reqs[0].addr = 0x1800;  // inside the denied range
  reqs[0].perm = perm::kWrite;
  reqs[1].grpid = 2;
  reqs[1].addr = 0x1800;
  reqs[1].perm = perm::kRead;  // reads are not denied
  reqs[0].last = reqs[1].last = true;
  daemon_->testSink()->deliver(reqs);
  ASSERT_EQ(daemon_->testMemory()->waitForResponses(2, std::chrono::seconds(20)), 2u);
  auto rs = daemon_->testMemory()->responses();
  std::sort(rs.begin(), rs.end(), [](const Response& a, const Response& b) { return a.grpid < b.grpid; });
  EXPECT_EQ(rs[0].code, ResponseCode::kInvalid);
  EXPECT_EQ(rs[0].origin, Origin::kHandler);
  EXPECT_EQ(rs[1].code, ResponseCode::kSuccess);
  stub_.reset();
  channel_.reset();
  daemon_->drain();  // the logger flushes on shutdown
  std::ifstream in(events);
  std::string line;
  int responded = 0;
  while (std::getline(in, line)) responded += line.find("\"responded\"") != std::string::npos;
  EXPECT_EQ(responded, 2);
}

// Waits (polling, bounded) until the Router service's health is `want`.
void expectHealth(const std::shared_ptr<grpc::Channel>& channel, api::HealthStatus want) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  absl::StatusOr<api::HealthStatus> st;
  do {
    st = api::checkHealth(channel);
    if (st.ok() && *st == want) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < until);
  FAIL() << "health never became " << api::toString(want) << ": "
         << (st.ok() ? api::toString(*st) : std::string(st.status().message()));
}

TEST_F(ApiTest, HealthIsNotServingWhileABackendIsDown) {
  start();
  expectHealth(channel_, api::HealthStatus::kServing);
  daemon_->testMemory()->setHealth(absl::UnavailableError("link lost"));
  expectHealth(channel_, api::HealthStatus::kNotServing);
  v1::Info info;
  ASSERT_TRUE(stub_->GetInfo(ctx().get(), {}, &info).ok());
  ASSERT_EQ(info.backend_status_size(), 1);
  EXPECT_EQ(info.backend_status(0).name(), "mem");
  EXPECT_EQ(info.backend_status(0).type(), "memory");
  EXPECT_FALSE(info.backend_status(0).up());
  EXPECT_EQ(info.backend_status(0).message(), "link lost");
  // The API itself keeps answering while a backend is down.
  v1::ListDomainsResponse domains;
  EXPECT_TRUE(stub_->ListDomains(ctx().get(), {}, &domains).ok());

  daemon_->testMemory()->setHealth(absl::OkStatus());
  expectHealth(channel_, api::HealthStatus::kServing);
  daemon_->drain();  // the server is gone afterwards; while it drained, health was NOT_SERVING
  const auto after = api::checkHealth(channel_);
  EXPECT_TRUE(!after.ok() || *after == api::HealthStatus::kNotServing);
}

TEST_F(ApiTest, PauseDomainHoldsGroupsAndResumeReleasesThem) {
  start();
  sink_ = daemon_->testSink();
  v1::ListDomainsResponse domains;
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &domains).ok());
  uint32_t fast = 0;
  for (const auto& d : domains.domains()) {
    if (d.name() == "fast") fast = d.id();
  }
  ASSERT_NE(fast, 0u);
  v1::PauseDomainRequest pause;
  pause.set_domain(fast);
  pause.set_paused(true);
  v1::PauseDomainResponse r;
  ASSERT_TRUE(stub_->PauseDomain(ctx().get(), pause, &r).ok());
  EXPECT_FALSE(r.was_paused());
  deliver(2, 5);  // gpu0 → "fast" (chain: success), held by the pause
  waitOpen(5);
  v1::ListOutstandingResponse open;
  ASSERT_TRUE(stub_->ListOutstanding(ctx().get(), {}, &open).ok());
  ASSERT_EQ(open.groups_size(), 5);
  for (const auto& g : open.groups()) EXPECT_EQ(g.state(), v1::GROUP_STATE_QUEUED);
  ASSERT_TRUE(stub_->ListDomains(ctx().get(), {}, &domains).ok());
  for (const auto& d : domains.domains()) EXPECT_EQ(d.paused(), d.id() == fast);

  pause.set_paused(false);
  ASSERT_TRUE(stub_->PauseDomain(ctx().get(), pause, &r).ok());
  EXPECT_TRUE(r.was_paused());
  EXPECT_EQ(r.waiting_groups(), 5u);
  // The shard releases the held groups on its next pass: wait for their five responses.
  ASSERT_EQ(daemon_->testMemory()->waitForResponses(5, std::chrono::seconds(20)), 5u);
  EXPECT_EQ(openGroups(), 0u);
  const auto responses = daemon_->testMemory()->responses();
  ASSERT_EQ(responses.size(), 5u);
  for (const Response& resp : responses) {
    EXPECT_EQ(resp.code, ResponseCode::kSuccess);
    EXPECT_EQ(resp.origin, Origin::kHandler);
  }
  pause.set_domain(4242);
  EXPECT_EQ(stub_->PauseDomain(ctx().get(), pause, &r).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ApiTest, MutationsOverTcpNeedTheToken) {
  // TCP without TLS is refused at start-up.
  const std::string path = dir_ + "/tcp.yaml";
  std::ofstream(path) << "listen: [\"127.0.0.1:0\"]\n";
  daemon::Daemon d;
  daemon::DaemonOptions o;
  o.config_path = path;
  const absl::Status st = d.start(o);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("requires tls.cert_file and tls.key_file"), std::string::npos) << st;
}

}  // namespace
}  // namespace iopf
