#include "vmm_load.h"

#include <time.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "iopf/clock.h"
#include "iopf_vmm.h"

namespace iopf::qemu_socket {
namespace {

struct Slot {
  int64_t sent_ns = 0;
  uint32_t cookie = 0;
  bool open = false;
};

}  // namespace

VmmLoadResult runVmmLoad(const VmmLoadOptions& o) {
  VmmLoadResult res;
  if (o.devices == 0 || o.window == 0 || o.group_size == 0 || o.window > 512ull * o.devices) {
    res.error = "devices, window and group_size must be > 0 and window ≤ 512 × devices";
    return res;
  }
  iopf_vmm* raw = nullptr;
  if (int rc = iopf_vmm_connect(o.socket_path.c_str(), o.batch ? IOPF_VMM_FEATURE_BATCH : 0, o.reply_timeout_ms, &raw);
      rc < 0) {
    res.error = "connect to '" + o.socket_path + "': " + std::strerror(-rc);
    return res;
  }
  std::unique_ptr<iopf_vmm, void (*)(iopf_vmm*)> vmm(raw, iopf_vmm_close);
  for (uint32_t d = 0; d < o.devices; ++d) {
    iopf_vmm_device dev{};
    dev.dev_id = o.first_dev_id + d;
    dev.rid = static_cast<uint16_t>(0x100 + d);
    dev.pasid_bits = o.use_pasid ? 20 : 0;
    dev.virt_id = 0x1000 + d;
    if (int rc = iopf_vmm_device_add(vmm.get(), &dev, o.reply_timeout_ms); rc < 0) {
      res.error = std::string("DEVICE_ADD: ") + iopf_vmm_last_error(vmm.get());
      return res;
    }
  }
  // Slots indexed by cookie modulo a power of two ≥ window: at most `window` cookies are open.
  size_t ring = 1;
  while (ring < o.window) ring <<= 1;
  std::vector<Slot> slots(ring);
  std::vector<iopf_vmm_page_request> out(static_cast<size_t>(IOPF_VMM_MAX_BATCH) * 4);
  std::vector<iopf_vmm_page_response> in(4096);
  LatencyHistogram hist;
  uint64_t next_cookie = 0;   // also the group sequence number
  uint64_t answered = 0;
  uint64_t inflight = 0;
  const int64_t start = SteadyClock::read();
  const int64_t measure_from = start + static_cast<int64_t>(o.warmup * 1e9);
  const int64_t stop_at = measure_from + static_cast<int64_t>(o.seconds * 1e9);
  bool measuring = o.warmup <= 0;
  int64_t t0 = start;
  uint64_t answered0 = 0;
  const uint32_t groups_per_send = std::max<uint32_t>(1, static_cast<uint32_t>(out.size()) / o.group_size);
  auto finished = [&] {
    if (o.stop != nullptr && o.stop->load(std::memory_order_relaxed)) return true;
    if (o.groups > 0) return next_cookie >= o.groups;
    return SteadyClock::read() >= stop_at;
  };
  while (true) {
    const bool done = finished() || (o.disconnect_after > 0 && next_cookie >= o.disconnect_after);
    if (done && (inflight == 0 || o.disconnect_after > 0)) break;
    // Send as much as the window allows.
    size_t k = 0;
    const int64_t now = SteadyClock::read();
    if (!measuring && now >= measure_from) {
      measuring = true;
      t0 = now;
      answered0 = answered;
    }
    while (!done && inflight < o.window && k + o.group_size <= out.size() &&
           (o.groups == 0 || next_cookie < o.groups) && k / o.group_size < groups_per_send) {
      const uint64_t seq = next_cookie++;
      const uint32_t cookie = static_cast<uint32_t>(seq);
      const uint32_t dev = static_cast<uint32_t>(seq % o.devices);
      const uint32_t grpid = static_cast<uint32_t>((seq / o.devices) % 512);
      const bool refuse = o.invalid_every > 0 && seq % o.invalid_every == 0;
      for (uint32_t r = 0; r < o.group_size; ++r) {
        iopf_vmm_page_request& q = out[k++];
        q = {};
        q.flags = (r + 1 == o.group_size ? IOPF_VMM_PGFAULT_LAST_PAGE : 0) | (o.use_pasid ? IOPF_VMM_PGFAULT_PASID_VALID : 0);
        q.dev_id = o.first_dev_id + dev;
        q.pasid = o.use_pasid ? 1 : 0;
        q.grpid = grpid;
        q.perm = IOPF_VMM_PERM_READ;
        q.addr = ((seq << 12) + (uint64_t{r} << 12)) | (refuse ? (uint64_t{1} << 40) : 0);
        q.cookie = cookie;
      }
      Slot& s = slots[cookie & (ring - 1)];
      s = {now, cookie, true};
      ++inflight;
      ++res.groups_sent;
    }
    if (k > 0) {
      if (int rc = iopf_vmm_send(vmm.get(), out.data(), k); rc < 0) {
        res.error = std::string("send: ") + iopf_vmm_last_error(vmm.get());
        return res;
      }
    }
    if (o.disconnect_after > 0 && next_cookie >= o.disconnect_after) break;
    if (inflight == 0) continue;
    const bool window_full = inflight >= o.window || done || (o.groups > 0 && next_cookie >= o.groups);
    const int n = iopf_vmm_recv(vmm.get(), in.data(), in.size(), window_full ? o.reply_timeout_ms : 0);
    if (n < 0) {
      res.error = std::string("recv: ") + iopf_vmm_last_error(vmm.get());
      return res;
    }
    if (n == 0 && window_full) {
      res.error = "no response within the reply timeout";
      return res;
    }
    const int64_t t = SteadyClock::read();
    for (int i = 0; i < n; ++i) {
      Slot& s = slots[in[i].cookie & (ring - 1)];
      if (!s.open || s.cookie != in[i].cookie) {
        ++res.unknown_cookies;
        continue;
      }
      s.open = false;
      --inflight;
      ++answered;
      if (measuring) hist.record(static_cast<uint64_t>(t - s.sent_ns));
      if (in[i].code == IOPF_VMM_RESP_SUCCESS) ++res.success;
      else if (in[i].code == IOPF_VMM_RESP_INVALID) ++res.invalid;
      else ++res.failure;
    }
  }
  const int64_t t1 = SteadyClock::read();
  res.seconds = static_cast<double>(t1 - t0) / 1e9;
  res.responses = answered - answered0;
  res.total_responses = answered;
  res.groups_per_s = res.seconds > 0 ? static_cast<double>(res.responses) / res.seconds : 0;
  res.requests_per_s = res.groups_per_s * o.group_size;
  res.latency = hist.snapshot();
  if (o.disconnect_after > 0) {
    res.errors_received = iopf_vmm_errors_received(vmm.get());
    res.ok = true;
    return res;  // the connection closes with groups open
  }
  if (o.delete_devices) {
    for (uint32_t d = 0; d < o.devices; ++d) {
      if (iopf_vmm_device_del(vmm.get(), o.first_dev_id + d, o.reply_timeout_ms) < 0) {
        res.error = std::string("DEVICE_DEL: ") + iopf_vmm_last_error(vmm.get());
        return res;
      }
    }
    // Anything queued now is a late or duplicate response.
    int n;
    while ((n = iopf_vmm_recv(vmm.get(), in.data(), in.size(), 0)) > 0) {
      for (int i = 0; i < n; ++i) {
        Slot& s = slots[in[i].cookie & (ring - 1)];
        if (!s.open || s.cookie != in[i].cookie) {
          ++res.unknown_cookies;
        } else {
          s.open = false;
          ++res.detach_invalid;
        }
      }
    }
  }
  res.errors_received = iopf_vmm_errors_received(vmm.get());
  res.ok = res.unknown_cookies == 0 && res.errors_received == 0;
  if (!res.ok && res.error.empty()) {
    res.error = res.unknown_cookies != 0 ? "responses to groups that were not open (duplicates)"
                                         : std::string("ERROR from iopfd: ") + iopf_vmm_last_error(vmm.get());
  }
  return res;
}

}  // namespace iopf::qemu_socket
