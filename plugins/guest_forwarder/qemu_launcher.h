// Starts qemu-system-x86_64 with the recipe of vmm-protocols.md §8.2-8.3 (Debian QEMU 7.2, TCG,
// intel-iommu with device-iotlb, a vhost-user virtio-net on a given socket, and the 7.2
// workarounds vectors=0, romfile=, disable-legacy=on) and talks to the guest's serial console over
// pipes. For the guest forwarder's real-QEMU tests and `iopf-bench forwarder`; not used by the
// plugin itself.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdio>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace iopf::guest_forwarder {

// The first qemu-system-x86_64 on PATH, or "".
std::string findQemu();

// The command line for a VM whose virtio-net is the vhost-user device on `vhost_socket`.
std::vector<std::string> vhostIommuQemuArgs(const std::string& qemu, const std::string& vhost_socket,
                                            const std::string& memory);

// One QEMU process; stdin and stdout+stderr are pipes (the serial console with -serial stdio).
class QemuProcess {
 public:
  QemuProcess() = default;
  QemuProcess(const QemuProcess&) = delete;
  QemuProcess& operator=(const QemuProcess&) = delete;
  ~QemuProcess();
  // Spawns args[0]; everything QEMU prints is kept and copied to `log_path` ("" = none).
  bool start(const std::vector<std::string>& args, const std::string& log_path);
  // SIGTERM, then SIGKILL after 10 s. Only this process is signalled.
  void stop();
  bool waitExit(std::chrono::milliseconds timeout);
  bool consoleHas(const std::string& text) const;
  size_t count(const std::string& text) const;
  std::string console() const;
  void type(const std::string& line);
  // Types `cmd` and waits for the guest init's "IOPF-GUEST-OK <cmd>".
  bool command(const std::string& cmd, std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  int in_ = -1, out_ = -1;
  std::thread reader_;
  mutable std::mutex mu_;
  std::string console_;
  FILE* log_ = nullptr;
};

}  // namespace iopf::guest_forwarder
