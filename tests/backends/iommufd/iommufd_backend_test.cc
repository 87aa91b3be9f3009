// Unit tests of the iommufd backend against FakeFaultKernel (no kernel needed): record decoding,
// grouping, the per-cookie state machine with epochs, short writes, quiesce, R9 buffer growth,
// map(), teardown with EBUSY, probing and the SCM_RIGHTS hand-over.
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "fake_fault_kernel.h"
#include "gtest/gtest.h"
#include "handover.h"
#include "iommufd_backend.h"
#include "iopf/router.h"

namespace iopf::iommufd {
namespace {

using testing::FakeFaultKernel;

class RecordingSink final : public RouterSink {
 public:
  BackendId backendId() const override { return 1; }
  absl::StatusOr<DeviceId> addDevice(const DeviceSpec& spec) override {
    specs.push_back(spec);
    return static_cast<DeviceId>(100 + specs.size());
  }
  absl::Status removeDevice(DeviceId) override { return absl::OkStatus(); }
  void deliver(std::span<const PageRequest> requests) override {
    delivered.insert(delivered.end(), requests.begin(), requests.end());
  }
  void discardPartial() override {}
  std::vector<DeviceSpec> specs;
  std::vector<PageRequest> delivered;
};

abi::IommuHwptPgfault rec(uint32_t grpid, uint32_t flags = abi::kPgfaultLastPage, uint32_t pasid = 0,
                          uint64_t addr = 0x1000, uint32_t perm = abi::kPgfaultPermRead) {
  abi::IommuHwptPgfault r;
  r.flags = flags;
  r.pasid = pasid;
  r.grpid = grpid;
  r.perm = perm;
  r.addr = addr;
  return r;
}

Response answer(const PageRequest& last, ResponseCode code,
                Delivery delivery = Delivery::kSend) {
  Response r;
  r.device = last.device;
  r.grpid = last.grpid;
  r.pasid = last.pasid;
  r.cookie = last.cookie;
  r.code = code;
  r.delivery = delivery;
  return r;
}

struct Fixture {
  FakeFaultKernel kernel;
  RecordingSink sink;
  std::unique_ptr<IommufdBackend> backend;
  uint32_t fault = 0;

  explicit Fixture(IommufdBackendOptions options = {}) {
    options.io = &kernel;
    options.iommufd = kernel.iommufd();
    options.own_iommufd = false;
    options.reader_thread = false;
    auto b = IommufdBackend::create(options);
    EXPECT_TRUE(b.ok()) << b.status();
    backend = std::move(*b);
    EXPECT_TRUE(backend->start(sink).ok());
    auto f = backend->allocFaultQueue();
    EXPECT_TRUE(f.ok()) << f.status();
    fault = *f;
  }
  size_t poll() { return backend->pollOnce(0); }
};

TEST(IommufdBackendTest, DecodesRecordsIntoOneGroupPerCookie) {
  Fixture fx;
  // A 3-record group: unknown flag bit 2, PASID, unaligned address, perms incl. EXEC|PRIV.
  fx.kernel.trigger(fx.fault, 7,
                    {rec(5, abi::kPgfaultPasidValid | 4, 9, 0x1234567, abi::kPgfaultPermRead),
                     rec(5, abi::kPgfaultPasidValid | 4, 9, 0x2000, abi::kPgfaultPermWrite | 0x30),
                     rec(5, abi::kPgfaultPasidValid | abi::kPgfaultLastPage | 4, 9, 0x3001,
                         abi::kPgfaultPermExec | abi::kPgfaultPermPriv)});
  fx.kernel.trigger(fx.fault, 8, {rec(6)});  // no PASID: pasid must stay empty
  EXPECT_EQ(fx.poll(), 2u);
  ASSERT_EQ(fx.sink.delivered.size(), 4u);
  ASSERT_EQ(fx.sink.specs.size(), 2u);
  EXPECT_EQ(fx.sink.specs[0].backend_handle, 7u);
  const auto& d = fx.sink.delivered;
  EXPECT_EQ(d[0].device, d[2].device);
  EXPECT_NE(d[0].device, d[3].device);
  EXPECT_EQ(d[0].pasid, std::optional<uint32_t>(9));
  EXPECT_EQ(d[0].addr, 0x1234567u);
  EXPECT_EQ(d[1].perm, perm::kWrite);  // unknown perm bits masked
  EXPECT_EQ(d[2].perm, perm::kExec | perm::kPriv);
  EXPECT_FALSE(d[0].last);
  EXPECT_FALSE(d[1].last);
  EXPECT_TRUE(d[2].last);
  EXPECT_EQ(d[0].cookie, d[2].cookie);
  EXPECT_NE(d[2].cookie, d[3].cookie);
  EXPECT_FALSE(d[3].pasid.has_value());
  EXPECT_EQ(fx.backend->kernelCookie(*d[2].cookie), std::optional<uint32_t>(1));
  EXPECT_EQ(fx.backend->kernelCookie(*d[3].cookie), std::optional<uint32_t>(2));
  EXPECT_EQ(fx.backend->stats().group_fixups, 0u);
  EXPECT_EQ(fx.poll(), 0u);
}

TEST(IommufdBackendTest, AnswersOnceAndRefusesDuplicates) {
  Fixture fx;
  fx.kernel.trigger(fx.fault, 7, {rec(1)});
  fx.poll();
  const PageRequest req = fx.sink.delivered.back();
  const Response r = answer(req, ResponseCode::kSuccess);
  fx.backend->respond(std::span(&r, 1));
  EXPECT_EQ(fx.backend->cookieState(*req.cookie), std::nullopt);  // retired
  // The kernel reissues cookie 1 to a new group; a duplicate of the old response must not hit it.
  fx.kernel.trigger(fx.fault, 7, {rec(2)});
  fx.poll();
  const PageRequest second = fx.sink.delivered.back();
  EXPECT_EQ(fx.backend->kernelCookie(*second.cookie), std::optional<uint32_t>(1));
  EXPECT_NE(second.cookie, req.cookie);
  fx.backend->respond(std::span(&r, 1));  // duplicate
  auto answers = fx.kernel.answers();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(fx.backend->stats().stale_tokens, 1u);
  EXPECT_EQ(fx.kernel.awaitingResponse(fx.fault), 1u);
  const Response r2 = answer(second, ResponseCode::kInvalid);
  fx.backend->respond(std::span(&r2, 1));
  answers = fx.kernel.answers();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(answers[1].serial, 2u);
  EXPECT_EQ(answers[1].code, abi::kPageRespInvalid);
}

TEST(IommufdBackendTest, FailureIsWrittenAsInvalidAndKernelAnsweredIsNeverWritten) {
  Fixture fx;
  fx.kernel.trigger(fx.fault, 7, {rec(1)});
  fx.kernel.trigger(fx.fault, 7, {rec(2)});
  fx.poll();
  Response rs[2] = {answer(fx.sink.delivered[0], ResponseCode::kFailure),
                    answer(fx.sink.delivered[1], ResponseCode::kInvalid, Delivery::kKernelAnswered)};
  fx.backend->respond(rs);
  const auto answers = fx.kernel.answers();
  ASSERT_EQ(answers.size(), 1u);
  EXPECT_EQ(answers[0].code, abi::kPageRespInvalid);
  const IommufdStats s = fx.backend->stats();
  EXPECT_EQ(s.failure_downgraded, 1u);
  EXPECT_EQ(s.kernel_answered, 1u);
  EXPECT_EQ(s.outstanding, 0u);
}

TEST(IommufdBackendTest, ShortWriteDropsTheRefusedEntryAndResubmitsTheTail) {
  Fixture fx;
  for (uint32_t g = 1; g <= 3; ++g) fx.kernel.trigger(fx.fault, 7 + (g == 2), {rec(g)});
  fx.poll();
  // Dev 8 (the middle group) is detached behind the backend's back: its cookie dies in the kernel.
  EXPECT_EQ(fx.kernel.autoRespond(fx.fault, 8), 1u);
  Response rs[3];
  for (int i = 0; i < 3; ++i) rs[i] = answer(fx.sink.delivered[i], ResponseCode::kSuccess);
  fx.backend->respond(rs);
  const auto calls = fx.kernel.writeCalls();
  ASSERT_EQ(calls.size(), 3u);  // [1,2,3] → 8 bytes; [2,3] → EINVAL; [3] → ok
  EXPECT_EQ(calls[0], (std::vector<uint32_t>{1, 2}));
  EXPECT_EQ(calls[1], (std::vector<uint32_t>{2}));
  EXPECT_EQ(calls[2], (std::vector<uint32_t>{3}));
  const IommufdStats s = fx.backend->stats();
  EXPECT_EQ(s.short_writes, 1u);
  EXPECT_EQ(s.write_rejected, 1u);
  EXPECT_EQ(s.responses_written, 2u);
  EXPECT_EQ(s.outstanding, 0u);
  EXPECT_EQ(fx.kernel.answers().size(), 2u);
}

TEST(IommufdBackendTest, QuiesceRetiresCookiesBeforeTheKernelOperation) {
  Fixture fx;
  abi::IommuHwptSelftest data;
  auto hwpt = fx.backend->allocHwpt({.dev_id = 7, .pt_id = 1, .fault_id = fx.fault,
                                     .data_type = abi::kHwptDataSelftest,
                                     .data = std::span(reinterpret_cast<const uint8_t*>(&data), 4)});
  ASSERT_TRUE(hwpt.ok()) << hwpt.status();
  fx.backend->noteAttached(7, *hwpt);
  fx.kernel.trigger(fx.fault, 7, {rec(1)});
  fx.kernel.trigger(fx.fault, 9, {rec(2)});  // another device on the same FAULT: unaffected
  fx.poll();
  const PageRequest old7 = fx.sink.delivered[0];
  const PageRequest dev9 = fx.sink.delivered[1];
  const uint64_t epoch_before = fx.backend->epoch(fx.fault);
  std::optional<CookieState> state_during_op;
  ASSERT_TRUE(fx.backend
                  ->changeAttachment(7, 0,
                                     [&] {
                                       state_during_op = fx.backend->cookieState(*old7.cookie);
                                       fx.kernel.autoRespond(fx.fault, 7);  // the kernel's detach
                                       return absl::OkStatus();
                                     })
                  .ok());
  EXPECT_EQ(state_during_op, CookieState::kKernelAutoResponded);
  EXPECT_GT(fx.backend->epoch(fx.fault), epoch_before);
  EXPECT_EQ(fx.backend->cookieState(*dev9.cookie), CookieState::kOutstanding);
  // The kernel reissues cookie 1 to a new group of device 7 (re-attached elsewhere on this FAULT).
  fx.kernel.trigger(fx.fault, 7, {rec(3)});
  fx.poll();
  const PageRequest new7 = fx.sink.delivered[2];
  EXPECT_EQ(fx.backend->kernelCookie(*new7.cookie), std::optional<uint32_t>(1));
  // A late handler completion of the old group: dropped, not written onto the new group.
  const Response late = answer(old7, ResponseCode::kSuccess);
  fx.backend->respond(std::span(&late, 1));
  EXPECT_TRUE(fx.kernel.answers().empty());
  EXPECT_EQ(fx.backend->stats().dropped_auto_responded, 1u);
  EXPECT_EQ(fx.backend->stats().quiesced, 1u);
  Response both[2] = {answer(new7, ResponseCode::kSuccess), answer(dev9, ResponseCode::kSuccess)};
  fx.backend->respond(both);
  const auto answers = fx.kernel.answers();
  ASSERT_EQ(answers.size(), 2u);
  EXPECT_EQ(fx.backend->stats().outstanding, 0u);
  EXPECT_EQ(fx.backend->stats().retiring, 0u);
}

TEST(IommufdBackendTest, RemoteQuiesceFencesGroupsReadInTheWindow) {
  Fixture fx;
  ASSERT_TRUE(fx.backend->quiesceBegin(fx.fault, 7).ok());
  fx.kernel.trigger(fx.fault, 7, {rec(1)});  // read before the VMM's detach ioctl
  fx.poll();
  EXPECT_EQ(fx.backend->cookieState(*fx.sink.delivered[0].cookie), CookieState::kKernelAutoResponded);
  fx.kernel.autoRespond(fx.fault, 7);
  fx.backend->quiesceEnd(fx.fault, 7);
  fx.kernel.trigger(fx.fault, 7, {rec(2)});
  fx.poll();
  EXPECT_EQ(fx.backend->cookieState(*fx.sink.delivered[1].cookie), CookieState::kOutstanding);
}

TEST(IommufdBackendTest, ReissuedOutstandingCookieIsNeverWrittenTwice) {
  Fixture fx;
  fx.kernel.trigger(fx.fault, 7, {rec(1)});
  fx.poll();
  fx.kernel.autoRespond(fx.fault, 7);        // silent detach
  fx.kernel.trigger(fx.fault, 7, {rec(2)});  // reissued cookie 1
  fx.poll();
  EXPECT_EQ(fx.backend->stats().reissued_outstanding, 1u);
  const Response stale = answer(fx.sink.delivered[0], ResponseCode::kSuccess);
  fx.backend->respond(std::span(&stale, 1));
  EXPECT_TRUE(fx.kernel.answers().empty());
}

TEST(IommufdBackendTest, GrowsTheReadBufferOnEinvalAndOnZeroWhileReadable) {
  for (bool old_kernel : {false, true}) {
    Fixture fx;
    fx.kernel.old_kernel_read = old_kernel;
    std::vector<abi::IommuHwptPgfault> big;
    for (int i = 0; i < 300; ++i) big.push_back(rec(4, i == 299 ? abi::kPgfaultLastPage : 0));
    fx.kernel.trigger(fx.fault, 7, big);
    EXPECT_EQ(fx.poll(), 1u) << "old_kernel=" << old_kernel;
    EXPECT_EQ(fx.sink.delivered.size(), 300u);
    EXPECT_TRUE(fx.sink.delivered.back().last);
    EXPECT_EQ(fx.backend->stats().read_grown, 1u);
  }
}

TEST(IommufdBackendTest, RejectsBadReadSizes) {
  FakeFaultKernel kernel;
  IommufdBackendOptions o;
  o.io = &kernel;
  o.iommufd = kernel.iommufd();
  o.own_iommufd = false;
  o.read_bytes = 10000;  // not a multiple of 40
  auto b = IommufdBackend::create(o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("multiples of 40"), std::string::npos);
}

TEST(IommufdBackendTest, ProbeReportsMissingFaultQueues) {
  FakeFaultKernel kernel;
  kernel.fault_queue_supported = false;
  IommufdBackendOptions o;
  o.io = &kernel;
  o.iommufd = kernel.iommufd();
  o.own_iommufd = false;
  auto b = IommufdBackend::create(o);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("FAULT queue alloc (6.11):             no"), std::string::npos)
      << b.status();
  EXPECT_NE(b.status().message().find("NOT usable"), std::string::npos);
}

TEST(IommufdBackendTest, MapUsesIoasMapAndNamesErrors) {
  Fixture fx;
  auto ioas = fx.backend->allocIoas();
  ASSERT_TRUE(ioas.ok());
  fx.backend->setDomainIoas(3, *ioas);
  MapRequest m{.domain = 3, .iova = 0x10000, .length = 0x1000, .source_va = 0x7000000,
               .perm = perm::kRead | perm::kWrite};
  ASSERT_TRUE(fx.backend->map(m).ok());
  const auto maps = fx.kernel.maps();
  ASSERT_EQ(maps.size(), 1u);
  EXPECT_EQ(maps[0].flags, abi::kIoasMapFixedIova | abi::kIoasMapReadable | abi::kIoasMapWriteable);
  EXPECT_EQ(maps[0].user_va, 0x7000000u);
  absl::Status again = fx.backend->map(m);
  EXPECT_TRUE(absl::IsAlreadyExists(again)) << again;
  EXPECT_NE(again.message().find("already mapped"), std::string::npos);
  m.domain = 4;
  EXPECT_TRUE(absl::IsNotFound(fx.backend->map(m)));
}

TEST(IommufdBackendTest, TeardownFollowsKernelOrderAndReportsBusyObjects) {
  Fixture fx;
  auto hwpt = fx.backend->allocHwpt({.dev_id = 7, .pt_id = 1, .fault_id = fx.fault});
  ASSERT_TRUE(hwpt.ok());
  fx.kernel.setAttached(*hwpt, true);
  // The FAULT is referenced by the HWPT and its fd is open: EBUSY.
  EXPECT_TRUE(absl::IsFailedPrecondition(fx.backend->destroyObject(fx.fault)));
  absl::Status busy = fx.backend->teardown();
  EXPECT_TRUE(absl::IsFailedPrecondition(busy)) << busy;
  EXPECT_NE(busy.message().find("HWPT"), std::string::npos);
  EXPECT_NE(busy.message().find("FAULT"), std::string::npos);
  fx.kernel.setAttached(*hwpt, false);  // the owner detached
  EXPECT_TRUE(fx.backend->teardown().ok());
  EXPECT_TRUE(fx.kernel.destroyed().count(*hwpt));
  EXPECT_TRUE(fx.kernel.destroyed().count(fx.fault));
}

TEST(IommufdBackendTest, HandoverAdoptsAFaultFdAndServesQuiesce) {
  Fixture fx;                             // fx.fault: allocated by "the VMM" through the fake
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  // A second FAULT object owned by the VMM, handed over.
  abi::IommuFaultAlloc alloc;
  ASSERT_EQ(fx.kernel.ioctl(fx.kernel.iommufd(), abi::kIommuFaultQueueAlloc, &alloc), 0);
  std::thread vmm([&] {
    HandoverMessage m;
    m.type = static_cast<uint16_t>(HandoverType::kAdoptFault);
    m.fault_id = alloc.out_fault_id;
    EXPECT_TRUE(requestHandover(sv[0], m, static_cast<int>(alloc.out_fault_fd)).ok());
    m.type = static_cast<uint16_t>(HandoverType::kQuiesceBegin);
    m.dev_id = 7;
    EXPECT_TRUE(requestHandover(sv[0], m).ok());
    m.type = 99;  // unknown: refused
    EXPECT_FALSE(requestHandover(sv[0], m).ok());
  });
  fx.kernel.noteFdReceived();
  ASSERT_TRUE(serveHandoverMessage(*fx.backend, sv[1]).ok());
  ASSERT_TRUE(serveHandoverMessage(*fx.backend, sv[1]).ok());
  EXPECT_FALSE(serveHandoverMessage(*fx.backend, sv[1]).ok());
  vmm.join();
  ::close(static_cast<int>(alloc.out_fault_fd));  // the VMM's copy
  const int adopted = fx.backend->faultFd(alloc.out_fault_id);
  ASSERT_GE(adopted, 0);
  fx.kernel.trigger(alloc.out_fault_id, 7, {rec(1)});
  fx.kernel.trigger(alloc.out_fault_id, 8, {rec(2)});
  EXPECT_EQ(fx.poll(), 2u);
  // dev 7 is fenced by the VMM's QUIESCE_BEGIN, dev 8 is not.
  EXPECT_EQ(fx.backend->cookieState(*fx.sink.delivered[0].cookie), CookieState::kKernelAutoResponded);
  EXPECT_EQ(fx.backend->cookieState(*fx.sink.delivered[1].cookie), CookieState::kOutstanding);
  Response r = answer(fx.sink.delivered[1], ResponseCode::kSuccess);
  fx.backend->respond(std::span(&r, 1));
  ASSERT_EQ(fx.kernel.answers().size(), 1u);
  EXPECT_EQ(fx.kernel.answers()[0].cookie, 2u);
  ::close(sv[0]);
  ::close(sv[1]);
}

TEST(IommufdBackendTest, HandoverRejectsBadMagic) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  HandoverMessage m;
  m.magic = 0x1234;
  ASSERT_TRUE(sendHandover(sv[0], m).ok());
  auto got = receiveHandover(sv[1]);
  ASSERT_FALSE(got.ok());
  EXPECT_NE(got.status().message().find("magic 0x1234"), std::string::npos) << got.status();
  ::close(sv[0]);
  ::close(sv[1]);
}

// With the real router (manual mode): every group answered once, replace drains with
// kKernelAnswered and nothing is written for the drained groups.
class DeferringHandler final : public Handler {
 public:
  std::string_view name() const override { return "defer"; }
  Verdict handle(const GroupView&, const CompletionHandle& completion) override {
    handles.push_back(completion);
    return Verdict::defer();
  }
  std::vector<CompletionHandle> handles;
};

TEST(IommufdBackendTest, RouterReplaceDrainsWithoutWriting) {
  FakeFaultKernel kernel;
  IommufdBackendOptions o;
  o.io = &kernel;
  o.iommufd = kernel.iommufd();
  o.own_iommufd = false;
  o.reader_thread = false;
  auto created = IommufdBackend::create(o);
  ASSERT_TRUE(created.ok());
  IommufdBackend& backend = **created;
  RouterOptions ro;
  ro.threaded = false;
  ro.shards = 1;
  Router router(ro);
  ASSERT_TRUE(router.addBackend(backend).ok());
  auto fault = backend.allocFaultQueue();
  ASSERT_TRUE(fault.ok());
  auto hwpt = backend.allocHwpt({.dev_id = 7, .pt_id = 1, .fault_id = *fault});
  ASSERT_TRUE(hwpt.ok());
  auto dev = backend.addDevice(7, {.name = "mock"});
  ASSERT_TRUE(dev.ok());
  auto domain = router.addDomain({.name = "d1"});
  auto other = router.addDomain({.name = "d2"});
  ASSERT_TRUE(domain.ok() && other.ok());
  auto handler = std::make_shared<DeferringHandler>();
  ASSERT_TRUE(router.setChain(*domain, {handler}).ok());
  ASSERT_TRUE(router.attach(*dev, std::nullopt, *domain).ok());
  backend.noteAttached(7, *hwpt);
  for (uint32_t g = 0; g < 4; ++g) kernel.trigger(*fault, 7, {rec(g)});
  backend.pollOnce(0);
  router.runUntilIdle();
  ASSERT_EQ(handler->handles.size(), 4u);
  EXPECT_TRUE(handler->handles[0].complete(ResponseCode::kSuccess));
  router.runUntilIdle();
  ASSERT_EQ(kernel.answers().size(), 1u);
  // Replace with three groups outstanding.
  ASSERT_TRUE(backend
                  .changeAttachment(7, 999,
                                    [&] {
                                      kernel.autoRespond(*fault, 7);
                                      return absl::OkStatus();
                                    },
                                    {.router = &router, .device = *dev, .new_domain = *other})
                  .ok());
  router.runUntilIdle();
  for (size_t i = 1; i < 4; ++i) EXPECT_FALSE(handler->handles[i].complete(ResponseCode::kSuccess));
  router.runUntilIdle();
  EXPECT_EQ(kernel.answers().size(), 1u);
  EXPECT_EQ(kernel.autoAnswered().size(), 3u);
  const IommufdStats s = backend.stats();
  EXPECT_EQ(s.quiesced, 3u);
  EXPECT_EQ(s.outstanding, 0u);
  EXPECT_EQ(s.retiring, 0u);
  router.shutdown();
}

}  // namespace
}  // namespace iopf::iommufd
