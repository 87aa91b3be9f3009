#include "device_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace iopf::guest_forwarder {
namespace {

constexpr uint32_t kMaxPasid = (1u << 20) - 1;

bool sameHost(const GuestDevice& a, const GuestDevice& b) {
  if (a.backend_handle != b.backend_handle) return false;
  if (!a.backend.empty() && !b.backend.empty() && a.backend != b.backend) return false;
  if (a.host_rid && b.host_rid && *a.host_rid != *b.host_rid) return false;
  return true;
}

bool sameGuest(const GuestDevice& a, const GuestDevice& b) {
  return a.vm == b.vm && a.viommu_id == b.viommu_id && a.virt_id == b.virt_id;
}

}  // namespace

std::string describe(const GuestDevice& d) {
  return absl::StrFormat("host %s/%u%s -> vm '%s' viommu %u virt_id 0x%x guest rid %02x:%02x.%x",
                         d.backend.empty() ? std::string("*") : d.backend, d.backend_handle,
                         d.host_rid ? absl::StrFormat(" rid 0x%04x", *d.host_rid) : std::string(), d.vm,
                         d.viommu_id, d.virt_id, d.guest_rid >> 8, (d.guest_rid >> 3) & 0x1f,
                         d.guest_rid & 7);
}

absl::Status DeviceRegistry::add(GuestDevice device) {
  if (device.vm.empty())
    return absl::InvalidArgumentError(absl::StrCat("device ", describe(device), ": empty vm name"));
  for (size_t i = 0; i < device.pasids.size(); ++i) {
    const PasidMapping& m = device.pasids[i];
    if (m.host > kMaxPasid || m.guest > kMaxPasid) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "device %s: pasids[%d] (host %u, guest %u) exceeds 20 bits", describe(device), i, m.host, m.guest));
    }
    for (size_t j = 0; j < i; ++j) {
      if (device.pasids[j].host == m.host || device.pasids[j].guest == m.guest) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "device %s: pasids[%d] (host %u, guest %u) maps a PASID already mapped by pasids[%d] (host %u, "
            "guest %u)",
            describe(device), i, m.host, m.guest, j, device.pasids[j].host, device.pasids[j].guest));
      }
    }
  }
  std::lock_guard lk(mu_);
  for (const GuestDevice& d : devices_) {
    if (sameHost(d, device)) {
      return absl::AlreadyExistsError(
          absl::StrCat("device ", describe(device), ": host device already registered as ", describe(d)));
    }
    if (sameGuest(d, device)) {
      return absl::AlreadyExistsError(
          absl::StrCat("device ", describe(device), ": guest device already registered as ", describe(d)));
    }
  }
  devices_.push_back(std::move(device));
  return absl::OkStatus();
}

bool DeviceRegistry::removeGuest(const std::string& vm, uint32_t viommu_id, uint64_t virt_id) {
  std::lock_guard lk(mu_);
  const auto it = std::find_if(devices_.begin(), devices_.end(), [&](const GuestDevice& d) {
    return d.vm == vm && d.viommu_id == viommu_id && d.virt_id == virt_id;
  });
  if (it == devices_.end()) return false;
  devices_.erase(it);
  return true;
}

size_t DeviceRegistry::removeOwner(uint64_t owner) {
  std::lock_guard lk(mu_);
  const size_t before = devices_.size();
  std::erase_if(devices_, [&](const GuestDevice& d) { return d.source == Source::kVmm && d.owner == owner; });
  return before - devices_.size();
}

absl::StatusOr<GuestView> DeviceRegistry::toGuest(const std::string& backend, uint64_t backend_handle,
                                                  uint16_t host_rid,
                                                  std::optional<uint32_t> host_pasid) const {
  std::lock_guard lk(mu_);
  for (const GuestDevice& d : devices_) {
    if (d.backend_handle != backend_handle) continue;
    if (!d.backend.empty() && d.backend != backend) continue;
    if (d.host_rid && *d.host_rid != host_rid) continue;
    GuestView v;
    v.vm = d.vm;
    v.viommu_id = d.viommu_id;
    v.virt_id = d.virt_id;
    v.guest_rid = d.guest_rid;
    v.needs_pasid = d.needs_pasid;
    if (host_pasid) {
      if (d.pasids.empty()) {
        v.guest_pasid = host_pasid;
      } else {
        const auto m = std::find_if(d.pasids.begin(), d.pasids.end(),
                                    [&](const PasidMapping& p) { return p.host == *host_pasid; });
        if (m == d.pasids.end()) {
          return absl::FailedPreconditionError(
              absl::StrFormat("device %s: host PASID %u has no guest PASID", describe(d), *host_pasid));
        }
        v.guest_pasid = m->guest;
      }
    } else if (d.needs_pasid) {
      return absl::FailedPreconditionError(
          absl::StrCat("device ", describe(d), ": the guest needs a PASID and the group has none"));
    }
    return v;
  }
  return absl::NotFoundError(
      absl::StrFormat("no guest device for host %s/%u rid 0x%04x", backend, backend_handle, host_rid));
}

absl::StatusOr<HostView> DeviceRegistry::toHost(const std::string& vm, uint32_t viommu_id, uint64_t virt_id,
                                                std::optional<uint32_t> guest_pasid) const {
  std::lock_guard lk(mu_);
  for (const GuestDevice& d : devices_) {
    if (d.vm != vm || d.viommu_id != viommu_id || d.virt_id != virt_id) continue;
    HostView h;
    h.backend = d.backend;
    h.backend_handle = d.backend_handle;
    if (guest_pasid) {
      if (d.pasids.empty()) {
        h.host_pasid = guest_pasid;
      } else {
        const auto m = std::find_if(d.pasids.begin(), d.pasids.end(),
                                    [&](const PasidMapping& p) { return p.guest == *guest_pasid; });
        if (m == d.pasids.end()) {
          return absl::NotFoundError(
              absl::StrFormat("device %s: guest PASID %u is not mapped", describe(d), *guest_pasid));
        }
        h.host_pasid = m->host;
      }
    }
    return h;
  }
  return absl::NotFoundError(
      absl::StrFormat("vm '%s' has no device viommu %u virt_id 0x%x", vm, viommu_id, virt_id));
}

std::optional<GuestDevice> DeviceRegistry::findGuest(const std::string& vm, uint32_t viommu_id,
                                                     uint64_t virt_id) const {
  std::lock_guard lk(mu_);
  for (const GuestDevice& d : devices_) {
    if (d.vm == vm && d.viommu_id == viommu_id && d.virt_id == virt_id) return d;
  }
  return std::nullopt;
}

std::vector<GuestDevice> DeviceRegistry::list() const {
  std::lock_guard lk(mu_);
  return devices_;
}

size_t DeviceRegistry::size() const {
  std::lock_guard lk(mu_);
  return devices_.size();
}

bool DeviceRegistry::namesBackends() const {
  std::lock_guard lk(mu_);
  return std::any_of(devices_.begin(), devices_.end(),
                     [](const GuestDevice& d) { return !d.backend.empty(); });
}

}  // namespace iopf::guest_forwarder
