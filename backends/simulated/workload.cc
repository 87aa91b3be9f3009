#include "workload.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "iopf/capture_file.h"
#include "iopf/event_bus.h"
#include "iopf/types.h"

namespace iopf::sim {

std::string_view toString(WorkloadKind kind) {
  switch (kind) {
    case WorkloadKind::kSequential:
      return "sequential";
    case WorkloadKind::kUniform:
      return "uniform";
    case WorkloadKind::kZipf:
      return "zipf";
    case WorkloadKind::kReplay:
      return "replay";
  }
  return "unknown";
}

std::shared_ptr<const ZipfTable> ZipfTable::build(uint32_t n, double s) {
  auto t = std::make_shared<ZipfTable>();
  t->s_ = s;
  t->cdf_.resize(std::max<uint32_t>(n, 1));
  double sum = 0;
  for (uint32_t k = 0; k < t->cdf_.size(); ++k) {
    sum += std::pow(static_cast<double>(k + 1), -s);
    t->cdf_[k] = sum;
  }
  for (double& c : t->cdf_) c /= sum;
  t->cdf_.back() = 1.0;
  return t;
}

uint32_t ZipfTable::sample(double u) const {
  const auto it = std::upper_bound(cdf_.begin(), cdf_.end(), u);
  return static_cast<uint32_t>(std::min<size_t>(static_cast<size_t>(it - cdf_.begin()), cdf_.size() - 1));
}

AddressStream::AddressStream(const WorkloadConfig& config)
    : kind_(config.kind),
      base_(config.base & ~uint64_t{4095}),
      pages_(std::max<uint64_t>(1, config.size / 4096)),
      zipf_(config.zipf.get()) {}

uint64_t AddressStream::next(Rng& rng) {
  uint64_t page = 0;
  switch (kind_) {
    case WorkloadKind::kSequential:
      page = cursor_++;
      if (cursor_ == pages_) cursor_ = 0;
      break;
    case WorkloadKind::kZipf:
      // Rank r is page (r · 2654435761) mod pages: hot pages spread over the range instead of
      // clustering at its start, deterministically.
      page = zipf_ != nullptr ? (uint64_t{zipf_->sample(rng.unit())} * 2654435761u) % pages_ : 0;
      break;
    case WorkloadKind::kUniform:
    case WorkloadKind::kReplay:
      page = rng.below(pages_);
      break;
  }
  return base_ + page * 4096 + (rng.next() & 0xFC0);
}

absl::StatusOr<std::vector<CapturedDevice>> loadCapture(const std::string& path) {
  auto reader = capture::Reader::open(path);
  if (!reader.ok()) return reader.status();
  const v1::CaptureHeader& header = (*reader)->header();
  std::vector<CapturedDevice> devices;
  std::vector<std::shared_ptr<ReplayTrace>> traces;
  absl::flat_hash_map<uint32_t, size_t> by_id;
  for (const v1::CaptureDevice& d : header.devices()) {
    if (by_id.contains(d.device_id())) {
      return absl::InvalidArgumentError(
          absl::StrCat("capture '", path, "': device id ", d.device_id(), " appears twice in the header"));
    }
    if (d.rid() > 0xFFFF || d.pasid_bits() > 20) {
      return absl::InvalidArgumentError(
          absl::StrCat("capture '", path, "': device '", d.name(), "' has an invalid RID or PASID width"));
    }
    by_id[d.device_id()] = devices.size();
    CapturedDevice cd;
    cd.capture_id = d.device_id();
    cd.name = d.name().empty() ? absl::StrCat("dev", d.device_id()) : d.name();
    cd.segment = d.pci_segment();
    cd.rid = static_cast<uint16_t>(d.rid());
    cd.pri_allocation = d.pri_allocation();
    cd.pasid_bits = static_cast<uint8_t>(d.pasid_bits());
    cd.needs_pasid = d.needs_pasid();
    cd.stall_model = d.stall_model();
    devices.push_back(std::move(cd));
    traces.push_back(std::make_shared<ReplayTrace>());
  }
  // Per device and captured PRGI: indices (into the device's trace) of the open group's requests.
  std::vector<absl::flat_hash_map<uint32_t, std::vector<size_t>>> open(devices.size());
  std::vector<std::vector<bool>> keep(devices.size());
  std::vector<std::map<uint32_t, bool>> pasids(devices.size());
  v1::CaptureRecord record;
  bool have_first = false;
  int64_t first_ns = 0;
  for (;;) {
    const uint64_t offset = (*reader)->offset();
    auto more = (*reader)->next(record);
    if (!more.ok()) return more.status();
    if (!*more) break;
    if (record.type() != static_cast<uint32_t>(EventType::kRequest)) continue;
    auto it = by_id.find(record.device_id());
    if (it == by_id.end()) {
      return absl::InvalidArgumentError(absl::StrCat("capture '", path, "' offset ", offset,
                                                     ": request of device id ", record.device_id(),
                                                     " which the header does not list"));
    }
    const size_t dev = it->second;
    if (!have_first) {
      have_first = true;
      first_ns = record.time_ns();
    }
    ReplayTrace& trace = *traces[dev];
    ReplayRequest r;
    r.offset_ns = std::max<int64_t>(0, record.time_ns() - first_ns);
    r.addr = record.addr();
    r.grpid = record.grpid();
    r.has_pasid = record.has_pasid();
    r.pasid = record.pasid();
    r.perm = static_cast<uint8_t>(record.perm());
    r.last = record.last();
    r.stop_marker = r.last && (r.perm & (perm::kRead | perm::kWrite)) == 0;
    const size_t index = trace.requests.size();
    trace.requests.push_back(r);
    keep[dev].push_back(false);
    if (r.stop_marker) {
      trace.requests.back().group_size = 1;
      keep[dev].back() = true;
      continue;
    }
    if (r.has_pasid) pasids[dev][r.pasid] = true;
    auto& members = open[dev][r.grpid];
    members.push_back(index);
    if (!r.last) continue;
    // LAST_PAGE: the group is complete (grpid only, per device, as the kernel assembles).
    for (size_t m : members) {
      trace.requests[m].group_size = static_cast<uint32_t>(members.size());
      keep[dev][m] = true;
    }
    open[dev].erase(r.grpid);
  }
  for (size_t dev = 0; dev < devices.size(); ++dev) {
    ReplayTrace& trace = *traces[dev];
    std::vector<ReplayRequest> kept;
    kept.reserve(trace.requests.size());
    for (size_t i = 0; i < trace.requests.size(); ++i) {
      if (keep[dev][i]) {
        kept.push_back(trace.requests[i]);
      } else {
        ++trace.incomplete_skipped;
      }
    }
    trace.requests = std::move(kept);
    trace.span_ns = trace.requests.empty() ? 0 : trace.requests.back().offset_ns;
    for (const auto& [pasid, unused] : pasids[dev]) devices[dev].pasids.push_back(pasid);
    devices[dev].trace = std::move(traces[dev]);
  }
  return devices;
}

}  // namespace iopf::sim
