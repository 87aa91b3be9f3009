#include "qemu_launcher.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>

extern char** environ;

namespace iopf::guest_forwarder {
namespace {

bool waitUntil(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

std::string findQemu() {
  const char* path = std::getenv("PATH");
  const std::string p = path != nullptr ? path : "/usr/bin:/bin";
  size_t at = 0;
  for (;;) {
    const size_t end = p.find(':', at);
    const std::string dir = p.substr(at, end == std::string::npos ? std::string::npos : end - at);
    const std::string candidate = dir + "/qemu-system-x86_64";
    if (!dir.empty() && ::access(candidate.c_str(), X_OK) == 0) return candidate;
    if (end == std::string::npos) return "";
    at = end + 1;
  }
}

std::vector<std::string> vhostIommuQemuArgs(const std::string& qemu, const std::string& vhost_socket,
                                            const std::string& memory) {
  return {qemu,
          "-machine",
          "q35,accel=tcg",
          "-m",
          memory,
          "-smp",
          "1",
          "-object",
          "memory-backend-memfd,id=mem,size=" + memory + ",share=on",
          "-numa",
          "node,memdev=mem",
          "-device",
          "intel-iommu,intremap=off,device-iotlb=on",
          "-chardev",
          "socket,id=c0,path=" + vhost_socket,
          "-netdev",
          "vhost-user,id=n0,chardev=c0",
          "-device",
          "virtio-net-pci,netdev=n0,disable-legacy=on,iommu_platform=on,ats=on,romfile=,vectors=0",
          "-display",
          "none",
          "-monitor",
          "none",
          "-nodefaults",
          "-no-reboot"};
}

bool QemuProcess::start(const std::vector<std::string>& args, const std::string& log_path) {
  int in[2], out[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return false;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, out[1], 2);
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const int rc = ::posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(in[0]);
  ::close(out[1]);
  in_ = in[1];
  out_ = out[0];
  if (rc != 0) {
    pid_ = -1;
    return false;
  }
  log_ = log_path.empty() ? nullptr : std::fopen(log_path.c_str(), "w");
  reader_ = std::thread([this] {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::read(out_, buf, sizeof buf);
      if (n <= 0) break;
      std::lock_guard lk(mu_);
      console_.append(buf, static_cast<size_t>(n));
      if (log_ != nullptr) {
        std::fwrite(buf, 1, static_cast<size_t>(n), log_);
        std::fflush(log_);
      }
    }
  });
  return true;
}

QemuProcess::~QemuProcess() {
  stop();
}

void QemuProcess::stop() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    if (!waitExit(std::chrono::seconds(10))) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }
  if (in_ >= 0) ::close(in_);
  in_ = -1;
  if (reader_.joinable()) reader_.join();
  if (out_ >= 0) ::close(out_);
  out_ = -1;
  if (log_ != nullptr) std::fclose(log_);
  log_ = nullptr;
}

bool QemuProcess::waitExit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return true;
  const bool gone = waitUntil([&] { return ::waitpid(pid_, nullptr, WNOHANG) == pid_; }, timeout);
  if (gone) pid_ = -1;
  return gone;
}

bool QemuProcess::consoleHas(const std::string& text) const {
  std::lock_guard lk(mu_);
  return console_.find(text) != std::string::npos;
}

std::string QemuProcess::console() const {
  std::lock_guard lk(mu_);
  return console_;
}

size_t QemuProcess::count(const std::string& text) const {
  std::lock_guard lk(mu_);
  size_t n = 0;
  for (size_t at = console_.find(text); at != std::string::npos; at = console_.find(text, at + 1)) ++n;
  return n;
}

bool QemuProcess::command(const std::string& cmd, std::chrono::milliseconds timeout) {
  const std::string done = "IOPF-GUEST-OK " + cmd;
  const size_t before = count(done);
  type(cmd);
  return waitUntil([&] { return count(done) > before; }, timeout);
}

void QemuProcess::type(const std::string& line) {
  const std::string s = line + "\n";
  [[maybe_unused]] ssize_t n = ::write(in_, s.data(), s.size());
}

}  // namespace iopf::guest_forwarder
