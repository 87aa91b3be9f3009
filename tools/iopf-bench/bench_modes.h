// The modes of iopf-bench. Each lives in its own source file; main.cc lists them.
#pragma once

#include "bench_common.h"

namespace iopf::bench {

int runCore(const Args& args);
#ifdef IOPF_BENCH_SOCKET
int runSocket(const Args& args);
#endif
#ifdef IOPF_BENCH_FORWARDER
int runForwarder(const Args& args);
#endif
#ifdef IOPF_BENCH_SIM
int runSim(const Args& args);
#endif
#ifdef IOPF_BENCH_GRPC
int runGrpc(const Args& args);
#endif

}  // namespace iopf::bench
