// iopf-bench MODE [options]: end-to-end load generator and benchmark of iopf-router.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>

#include "bench_modes.h"

namespace {

struct Mode {
  const char* name;
  int (*run)(const iopf::bench::Args&);
  const char* help;
};

// One line per mode.
const Mode kModes[] = {
    {"core", iopf::bench::runCore,
     "router in-process, in-memory backend, trivial handler; compares raw_echo, raw_echo_threaded, naive\n"
     "      [--seconds S] [--warmup S] [--devices N] [--window W] [--batch B] [--group-size G]\n"
     "      [--shards N] [--only router] [--json]"},
#ifdef IOPF_BENCH_SIM
    {"sim", iopf::bench::runSim,
     "simulated devices -> router -> chain -> devices, with device-side figures; compares raw_echo, naive\n"
     "      [--scenario FILE] [--seconds S] [--devices N] [--credits C] [--max-batch B] [--latency-rate R]\n"
     "      [--no-latency] [--no-memory] [--no-compare] [--no-run-to-completion] [--json]\n"
     "      scenarios with plugin handlers (\"plugin:<id>\"): [--plugin-dir DIR]; with sva_resolver also\n"
     "      fault-around off and on: [--fault-around N] (default 15)"},
#endif
#ifdef IOPF_BENCH_SOCKET
    {"socket", iopf::bench::runSocket,
     "page requests over the QEMU socket backend's iopf profile, 1 and 16 peers, vs the in-memory backend\n"
     "      [--seconds S] [--warmup S] [--peers N] [--window W] [--group-size G] [--no-batch] [--json]"},
#endif
#ifdef IOPF_BENCH_FORWARDER
    {"forwarder", iopf::bench::runForwarder,
     "round trips (one group in flight) through the guest forwarder plugin: in-process resolver, iopf socket\n"
     "      peer (scripted guest, VT-d descriptors), real QEMU without guest, real QEMU with a Linux guest\n"
     "      [--seconds S] [--warmup S] [--guest-dir DIR] [--no-qemu] [--json]"},
#endif
#ifdef IOPF_BENCH_GRPC
    {"grpc", iopf::bench::runGrpc,
     "events/s through iopf.v1.Router/Watch to 1 and 4 watchers during the core load, and routing\n"
     "      throughput with 0, 1 and 4 watchers (paced to --watch-cpu-cores, default 0.15), one unpaced,\n"
     "      and 1 and 4 with the packed encoding; each configuration once per round, medians over rounds\n"
     "      [--seconds S] [--rounds N] [--max-batch N] [--packed-max-batch N] [--watch-cpu-cores C]\n"
     "      [--only CONFIG] [--json]"},
#endif
};

void usage(FILE* out) {
  std::fprintf(out, "usage: iopf-bench MODE [options]\nmodes:\n");
  for (const Mode& m : kModes) std::fprintf(out, "  %s  %s\n", m.name, m.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const Mode& m : kModes) {
    if (std::strcmp(argv[1], m.name) != 0) continue;
    try {
      iopf::bench::Args args(argc - 2, argv + 2);
      const int rc = m.run(args);
      for (const std::string& name : args.unused()) {
        std::fprintf(stderr, "iopf-bench %s: unknown option --%s\n", m.name, name.c_str());
        return 2;
      }
      return rc;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "iopf-bench %s: %s\n", m.name, e.what());
      return 2;
    }
  }
  std::fprintf(stderr, "iopf-bench: unknown mode '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
