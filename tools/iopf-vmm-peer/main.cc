// iopf-vmm-peer: a VMM stand-in for the QEMU socket backend's "iopf" profile, over libiopf-vmm.
// Test peer and load generator: declares devices, keeps a window of page-request groups in flight,
// checks exactly one response per group, prints a summary (or JSON).
//
//   iopf-vmm-peer --socket PATH [--devices N] [--groups N | --seconds S] [--group-size G]
//                 [--window W] [--no-batch] [--invalid-every K] [--pasid] [--keep-devices]
//                 [--disconnect-after N] [--json]
// Exit code: 0 if every group got exactly one response and no ERROR came back, 1 otherwise,
// 2 for a usage error.
//
// Scripted guest for the guest forwarder (iopf profile, feature FORWARD):
//   iopf-vmm-peer --guest --socket PATH [--vm NAME] --device DEV_ID:RID:VIOMMU:VIRT_ID[:PASID_BITS[:needs-pasid]]...
//                 [--script success,invalid,failure,late,twice,never,reset] [--late-ms N] [--pqs N]
//                 [--groups N | --seconds S] [--json]
// Every forwarded group goes through a VT-d PRQ ring and a page group response descriptor; the
// answer follows the script (cycled). Exit code 0 if the session ran to its end.
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "guest_peer.h"
#include "vmm_load.h"

namespace {

void usage() {
  std::fprintf(stderr,
               "usage: iopf-vmm-peer --socket PATH [--devices N] [--groups N | --seconds S] [--group-size G]\n"
               "                     [--window W] [--no-batch] [--invalid-every K] [--pasid] [--keep-devices]\n"
               "                     [--disconnect-after N] [--json]\n"
               "       iopf-vmm-peer --guest --socket PATH [--vm NAME] --device DEV_ID:RID:VIOMMU:VIRT_ID[:PASID_BITS[:needs-pasid]]...\n"
               "                     [--script success,invalid,failure,late,twice,never,reset] [--late-ms N] [--pqs N]\n"
               "                     [--groups N | --seconds S] [--json]\n");
}

int guestMain(int argc, char** argv) {
  iopf::qemu_socket::GuestPeerOptions o;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "iopf-vmm-peer: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--guest") continue;
    if (a == "--socket") o.socket_path = value();
    else if (a == "--vm") o.vm_name = value();
    else if (a == "--device") {
      const std::string spec = value();
      unsigned long long f[6] = {0, 0, 0, 0, 0, 0};
      char needs[32] = {0};
      const int n = std::sscanf(spec.c_str(), "%lli:%lli:%lli:%lli:%lli:%31s", &f[0], &f[1], &f[2], &f[3], &f[4], needs);
      if (n < 4) {
        std::fprintf(stderr, "iopf-vmm-peer: --device '%s': expects DEV_ID:RID:VIOMMU:VIRT_ID[:PASID_BITS[:needs-pasid]]\n",
                     spec.c_str());
        return 2;
      }
      iopf::qemu_socket::GuestDeviceDecl d;
      d.dev_id = static_cast<uint32_t>(f[0]);
      d.rid = static_cast<uint16_t>(f[1]);
      d.viommu_id = static_cast<uint32_t>(f[2]);
      d.virt_id = f[3];
      d.pasid_bits = static_cast<uint8_t>(f[4]);
      d.needs_pasid = std::strcmp(needs, "needs-pasid") == 0;
      o.devices.push_back(d);
    } else if (a == "--script") {
      auto script = iopf::qemu_socket::parseGuestScript(value());
      if (!script.ok()) {
        std::fprintf(stderr, "iopf-vmm-peer: %s\n", std::string(script.status().message()).c_str());
        return 2;
      }
      o.script = *script;
    } else if (a == "--late-ms") o.late_ms = std::atoi(value());
    else if (a == "--pqs") o.pqs = static_cast<unsigned>(std::strtoul(value(), nullptr, 0));
    else if (a == "--groups") o.groups = std::strtoull(value(), nullptr, 0);
    else if (a == "--seconds") o.seconds = std::strtod(value(), nullptr);
    else if (a == "--json") json = true;
    else {
      std::fprintf(stderr, "iopf-vmm-peer: unknown option %s\n", a.c_str());
      usage();
      return 2;
    }
  }
  if (o.socket_path.empty()) {
    usage();
    return 2;
  }
  const iopf::qemu_socket::GuestPeerResult r = iopf::qemu_socket::runGuestPeer(o);
  if (json) {
    std::printf("{\"ok\":%s,\"groups\":%" PRIu64 ",\"requests\":%" PRIu64 ",\"success\":%" PRIu64
                ",\"invalid\":%" PRIu64 ",\"failure\":%" PRIu64 ",\"late\":%" PRIu64 ",\"twice\":%" PRIu64
                ",\"never\":%" PRIu64 ",\"resets\":%" PRIu64 ",\"reset_drained\":%" PRIu64
                ",\"errors_received\":%" PRIu64 ",\"error\":\"%s\"}\n",
                r.ok ? "true" : "false", r.groups, r.requests, r.success, r.invalid, r.failure, r.late, r.twice,
                r.never, r.resets, r.reset_drained, r.errors_received, r.error.c_str());
  } else {
    std::printf("%s: %" PRIu64 " groups (%" PRIu64 " requests): %" PRIu64 " success, %" PRIu64 " invalid, %" PRIu64
                " failure, %" PRIu64 " late, %" PRIu64 " twice, %" PRIu64 " never, %" PRIu64 " resets (%" PRIu64
                " drained); %" PRIu64 " ERROR frames%s%s\n",
                r.ok ? "ok" : "FAILED", r.groups, r.requests, r.success, r.invalid, r.failure, r.late, r.twice,
                r.never, r.resets, r.reset_drained, r.errors_received, r.error.empty() ? "" : ": ", r.error.c_str());
  }
  return r.ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--guest") == 0) return guestMain(argc, argv);
  }
  iopf::qemu_socket::VmmLoadOptions o;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "iopf-vmm-peer: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--socket") o.socket_path = value();
    else if (a == "--devices") o.devices = static_cast<uint32_t>(std::strtoul(value(), nullptr, 0));
    else if (a == "--groups") o.groups = std::strtoull(value(), nullptr, 0);
    else if (a == "--seconds") o.seconds = std::strtod(value(), nullptr);
    else if (a == "--group-size") o.group_size = static_cast<uint32_t>(std::strtoul(value(), nullptr, 0));
    else if (a == "--window") o.window = static_cast<uint32_t>(std::strtoul(value(), nullptr, 0));
    else if (a == "--no-batch") o.batch = false;
    else if (a == "--invalid-every") o.invalid_every = static_cast<uint32_t>(std::strtoul(value(), nullptr, 0));
    else if (a == "--pasid") o.use_pasid = true;
    else if (a == "--keep-devices") o.delete_devices = false;
    else if (a == "--disconnect-after") o.disconnect_after = std::strtoull(value(), nullptr, 0);
    else if (a == "--json") json = true;
    else if (a == "--help" || a == "-h") {
      usage();
      return 0;
    } else {
      std::fprintf(stderr, "iopf-vmm-peer: unknown option %s\n", a.c_str());
      usage();
      return 2;
    }
  }
  if (o.socket_path.empty()) {
    usage();
    return 2;
  }
  const iopf::qemu_socket::VmmLoadResult r = iopf::qemu_socket::runVmmLoad(o);
  if (json) {
    std::printf("{\"ok\":%s,\"groups_sent\":%" PRIu64 ",\"responses\":%" PRIu64 ",\"success\":%" PRIu64
                ",\"invalid\":%" PRIu64 ",\"failure\":%" PRIu64 ",\"unknown_cookies\":%" PRIu64
                ",\"detach_invalid\":%" PRIu64 ",\"errors_received\":%" PRIu64
                ",\"seconds\":%.6f,\"groups_per_s\":%.1f,\"requests_per_s\":%.1f,"
                "\"latency_ns\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 ",\"max\":%" PRIu64 "},\"error\":\"%s\"}\n",
                r.ok ? "true" : "false", r.groups_sent, r.total_responses, r.success, r.invalid, r.failure,
                r.unknown_cookies, r.detach_invalid, r.errors_received, r.seconds, r.groups_per_s, r.requests_per_s,
                r.latency.percentile(0.5), r.latency.percentile(0.99), r.latency.max, r.error.c_str());
  } else {
    std::printf("%s: %" PRIu64 " groups sent, %" PRIu64 " answered (%" PRIu64 " success, %" PRIu64 " invalid, %" PRIu64
                " failure), %" PRIu64 " INVALID on DEVICE_DEL, %.0f groups/s, p50 %" PRIu64 " ns, p99 %" PRIu64
                " ns%s%s\n",
                r.ok ? "ok" : "FAILED", r.groups_sent, r.total_responses, r.success, r.invalid, r.failure,
                r.detach_invalid, r.groups_per_s, r.latency.percentile(0.5), r.latency.percentile(0.99),
                r.error.empty() ? "" : ": ", r.error.c_str());
  }
  return r.ok ? 0 : 1;
}
