// Helpers of the plugin tests: a thread-safe report collector, temporary directories, a small
// router rig in manual mode, and the paths of the fixture plugins (compile definitions).
#pragma once

#include <sys/stat.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "iopf/in_memory_backend.h"
#include "iopf/plugin_host.h"
#include "iopf/router.h"

namespace iopf::testing {

// A per-call budget no scheduling delay reaches (tests that are not about budgets).
inline constexpr int64_t kGenerousBudgetNs = 10'000'000'000;

// Every report, in order.
class Reports {
 public:
  std::function<void(const PluginReport&)> sink() {
    return [this](const PluginReport& r) {
      std::lock_guard lk(mu_);
      reports_.push_back(r);
    };
  }
  std::vector<PluginReport> all() const {
    std::lock_guard lk(mu_);
    return reports_;
  }
  std::vector<std::string> messages(PluginReportKind kind, const std::string& plugin = "") const {
    std::lock_guard lk(mu_);
    std::vector<std::string> out;
    for (const auto& r : reports_) {
      if (r.kind == kind && (plugin.empty() || r.plugin == plugin)) out.push_back(r.message);
    }
    return out;
  }

 private:
  mutable std::mutex mu_;
  std::vector<PluginReport> reports_;
};

// A fresh directory (mode 0755) removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "iopf-plugin-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
    ::chmod(path_.c_str(), 0755);
  }
  ~TempDir() {
    ::chmod(path_.c_str(), 0755);
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

inline std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline void writeFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Copies a fixture's library and sidecar into `dir` (optionally renaming the id in the files'
// names only) and returns the library path.
inline std::string copyPlugin(const std::string& library, const std::string& dir) {
  namespace fs = std::filesystem;
  const fs::path lib(library);
  const fs::path json = lib.parent_path() / (lib.stem().string() + ".json");
  fs::copy_file(lib, fs::path(dir) / lib.filename(), fs::copy_options::overwrite_existing);
  fs::copy_file(json, fs::path(dir) / json.filename(), fs::copy_options::overwrite_existing);
  ::chmod((fs::path(dir) / lib.filename()).c_str(), 0755);
  ::chmod((fs::path(dir) / json.filename()).c_str(), 0644);
  return (fs::path(dir) / lib.filename()).string();
}

// Polls `done` until it holds or `timeout` passes (for state another thread changes).
inline bool waitFor(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// A router with one device ("nic0", backend handle 42, RID 03:00.0) and one domain ("host").
struct RouterRig {
  // The cheapest in-process handler: SUCCESS for everything.
  class Success final : public Handler {
   public:
    std::string_view name() const override { return "success"; }
    Verdict handle(const GroupView&, const CompletionHandle&) override {
      return Verdict::respond(ResponseCode::kSuccess);
    }
  };

  explicit RouterRig(bool threaded = false, unsigned shards = 1, size_t event_capacity = 1 << 14)
      : threaded(threaded) {
    RouterOptions o;
    o.shards = shards;
    o.threaded = threaded;
    if (!threaded) o.clock = &clock;
    o.event_capacity = event_capacity;
    router = std::make_unique<Router>(o);
    if (!router->addBackend(backend).ok()) std::abort();
    DeviceSpec spec;
    spec.name = "nic0";
    spec.backend_handle = 42;
    spec.rid = 0x0300;
    spec.pci_segment = 1;
    spec.pri_allocation = 4096;
    spec.pasid_bits = 8;
    spec.needs_pasid = true;
    device = *backend.sink().addDevice(spec);
    DomainSpec d;
    d.name = "host";
    d.deadline_ns = 10'000'000'000;
    domain = *router->addDomain(d);
    if (!router->attach(device, std::nullopt, domain).ok()) std::abort();
  }

  PageRequest request(uint32_t grpid, uint64_t addr, bool last, uint8_t perm = perm::kRead,
                      std::optional<uint32_t> pasid = {}, std::optional<uint32_t> cookie = {}) const {
    PageRequest r;
    r.device = device;
    r.grpid = grpid;
    r.addr = addr;
    r.perm = perm;
    r.last = last;
    r.pasid = pasid;
    r.cookie = cookie;
    return r;
  }
  // One single-request group; in manual mode also routes it.
  void group(uint32_t grpid, uint64_t addr, uint8_t perm = perm::kRead) {
    std::vector<PageRequest> v{request(grpid, addr, true, perm)};
    backend.sink().deliver(v);
    if (!threaded) router->runUntilIdle();
  }

  bool threaded;
  ManualClock clock;
  InMemoryBackend backend;
  std::unique_ptr<Router> router;
  DeviceId device = 0;
  DomainId domain = 0;
};

}  // namespace iopf::testing
