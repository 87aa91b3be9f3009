// Micro-benchmarks of the router's building blocks. Run: build/bin/iopf-microbench
#include <benchmark/benchmark.h>

#include <vector>

#include "assembler.h"
#include "deadline_wheel.h"
#include "iopf/event_bus.h"
#include "iopf/handler.h"
#include "iopf/in_memory_backend.h"
#include "iopf/router.h"
#include "iopf/stats.h"

namespace iopf {
namespace {

void BM_EventBusPublish(benchmark::State& state) {
  EventBus bus(1 << 16);
  Event e;
  e.type = EventType::kRequest;
  for (auto _ : state) benchmark::DoNotOptimize(bus.publish(e));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EventBusPublish);

void BM_EventBusReserveBatch(benchmark::State& state) {
  EventBus bus(1 << 16);
  Event e;
  const auto n = static_cast<uint32_t>(state.range(0));
  for (auto _ : state) {
    const uint64_t seq = bus.reserve(n);
    for (uint32_t i = 0; i < n; ++i) bus.write(seq + i, e);
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_EventBusReserveBatch)->Arg(8)->Arg(64);

void BM_HistogramRecord(benchmark::State& state) {
  LatencyHistogram h;
  uint64_t v = 1;
  for (auto _ : state) {
    h.record(v);
    v = v * 2862933555777941757ull + 3037000493ull;
    v &= 0xfffff;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_HistogramRecord);

void BM_WheelScheduleCancel(benchmark::State& state) {
  detail::DeadlineWheel w(1'000'000, 4096, 0);
  uint32_t id = 0;
  for (auto _ : state) {
    w.schedule(id, 1'000'000'000);
    w.cancel(id);
    id = (id + 1) & 4095;
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WheelScheduleCancel);

void BM_AssemblerFourRequestGroup(benchmark::State& state) {
  detail::Assembler a;
  PageRequest r;
  r.perm = perm::kRead;
  uint32_t grpid = 0;
  size_t sink = 0;
  for (auto _ : state) {
    r.grpid = grpid;
    r.last = false;
    for (int i = 0; i < 3; ++i) a.addPartial(r, 4096);
    r.last = true;
    a.complete(r, [&](std::span<const PageRequest> g) { sink += g.size(); });
    grpid = (grpid + 1) & 511;
  }
  benchmark::DoNotOptimize(sink);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_AssemblerFourRequestGroup);

class Success final : public Handler {
 public:
  std::string_view name() const override { return "success"; }
  Verdict handle(const GroupView&, const CompletionHandle&) override {
    return Verdict::respond(ResponseCode::kSuccess);
  }
};

// The whole ingest → route → chain → respond path in one thread (manual mode), per group.
void BM_RouterManualSingleRequestGroups(benchmark::State& state) {
  InMemoryBackend backend;
  uint64_t responses = 0;
  backend.setResponseCallback([&](std::span<const Response> rs) { responses += rs.size(); });
  RouterOptions o;
  o.shards = 1;
  o.threaded = false;
  Router router(o);
  (void)router.addBackend(backend);
  DeviceSpec spec;
  spec.name = "d";
  const DeviceId dev = *backend.sink().addDevice(spec);
  DomainSpec d;
  d.name = "d";
  const DomainId dom = *router.addDomain(d);
  (void)router.setChain(dom, {std::make_shared<Success>()});
  (void)router.attach(dev, std::nullopt, dom);
  const auto batch = static_cast<uint32_t>(state.range(0));
  std::vector<PageRequest> reqs(batch);
  uint32_t prgi = 0;
  for (auto _ : state) {
    for (auto& r : reqs) {
      r.device = dev;
      r.grpid = prgi++ & 511;
      r.perm = perm::kRead;
      r.last = true;
    }
    backend.sink().deliver(reqs);
    router.runOnce();
  }
  state.SetItemsProcessed(state.iterations() * batch);
  benchmark::DoNotOptimize(responses);
}
BENCHMARK(BM_RouterManualSingleRequestGroups)->Arg(1)->Arg(64)->Arg(256);

}  // namespace
}  // namespace iopf
