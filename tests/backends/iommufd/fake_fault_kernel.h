// A fake of the kernel side of iommufd FAULT objects (reference §2), behind the backend's KernelIo
// seam: fault fds are real pipe read ends (so epoll works) keyed by inode (so fds passed with
// SCM_RIGHTS are recognised); cookies are allocated lowest-free from 1 at read time; read/write
// follow §2.2/§2.4 (whole groups, ESPIPE, EINVAL or 0 when a group does not fit, short writes on
// the first refused response); detach and destroy auto-respond silently (§2.6).
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <vector>

#include "iommufd_abi.h"
#include "kernel_io.h"

namespace iopf::iommufd::testing {

class FakeFaultKernel final : public KernelIo {
 public:
  struct Group {
    uint64_t serial = 0;  // fake-wide, to tell groups apart
    uint32_t dev_id = 0;
    std::vector<abi::IommuHwptPgfault> records;
  };
  struct Answer {
    uint64_t serial;
    uint32_t cookie;
    uint32_t code;
  };

  bool fault_queue_supported = true;
  bool old_kernel_read = false;  // first group too big: 0 instead of EINVAL

  FakeFaultKernel() {
    int p[2];
    if (::pipe(p) == 0) {
      iommufd_ = p[0];
      iommufd_peer_ = p[1];
    }
  }
  ~FakeFaultKernel() override {
    for (auto& [ino, f] : faults_) {
      if (f.write_end >= 0) ::close(f.write_end);
      if (f.drain_fd >= 0) ::close(f.drain_fd);
    }
    if (iommufd_ >= 0) ::close(iommufd_);
    if (iommufd_peer_ >= 0) ::close(iommufd_peer_);
  }
  int iommufd() const { return iommufd_; }

  // --- test controls ------------------------------------------------------------------------------
  // Queues a group (records get dev_id and, unless `raw`, LAST_PAGE on the last one).
  uint64_t trigger(uint32_t fault_id, uint32_t dev_id, std::vector<abi::IommuHwptPgfault> records) {
    std::lock_guard lock(mu_);
    Fault& f = byId(fault_id);
    Group g;
    g.serial = ++serial_;
    g.dev_id = dev_id;
    for (auto& r : records) r.dev_id = dev_id;
    g.records = std::move(records);
    f.deliver.push_back(std::move(g));
    signal(f);
    return serial_;
  }
  // Kernel auto-response for dev_id (detach/replace), or every group (dev_id nullopt: destroy).
  size_t autoRespond(uint32_t fault_id, std::optional<uint32_t> dev_id) {
    std::lock_guard lock(mu_);
    Fault& f = byId(fault_id);
    size_t n = 0;
    for (auto it = f.deliver.begin(); it != f.deliver.end();) {
      if (!dev_id || it->dev_id == *dev_id) {
        auto_answered_.push_back({it->serial, 0, abi::kPageRespInvalid});
        it = f.deliver.erase(it);
        ++n;
      } else {
        ++it;
      }
    }
    for (auto it = f.response.begin(); it != f.response.end();) {
      if (!dev_id || it->second.dev_id == *dev_id) {
        auto_answered_.push_back({it->second.serial, it->first, abi::kPageRespInvalid});
        it = f.response.erase(it);
        ++n;
      } else {
        ++it;
      }
    }
    signal(f);
    return n;
  }
  std::vector<Answer> answers() const {
    std::lock_guard lock(mu_);
    return answers_;
  }
  std::vector<Answer> autoAnswered() const {
    std::lock_guard lock(mu_);
    return auto_answered_;
  }
  size_t awaitingResponse(uint32_t fault_id) {
    std::lock_guard lock(mu_);
    return byId(fault_id).response.size();
  }
  std::vector<std::vector<uint32_t>> writeCalls() const {  // cookies per write() call
    std::lock_guard lock(mu_);
    return write_calls_;
  }
  std::vector<abi::IommuIoasMap> maps() const {
    std::lock_guard lock(mu_);
    return maps_;
  }
  std::set<uint32_t> destroyed() const {
    std::lock_guard lock(mu_);
    return destroyed_;
  }

  // --- KernelIo -----------------------------------------------------------------------------------
  ssize_t read(int fd, void* buf, size_t count) override {
    std::lock_guard lock(mu_);
    Fault* f = byFd(fd);
    if (f == nullptr) return -EBADF;
    if (count % abi::kRecordSize != 0) return -ESPIPE;
    size_t used = 0;
    auto* out = static_cast<abi::IommuHwptPgfault*>(buf);
    while (!f->deliver.empty()) {
      Group& g = f->deliver.front();
      const size_t bytes = g.records.size() * abi::kRecordSize;
      if (used + bytes > count) {
        if (used == 0) return old_kernel_read ? 0 : -EINVAL;
        break;
      }
      uint32_t cookie = 1;
      while (f->response.count(cookie)) ++cookie;  // lowest free index (xa_alloc)
      for (auto r : g.records) {
        r.cookie = cookie;
        out[used / abi::kRecordSize] = r;
        used += abi::kRecordSize;
      }
      f->response.emplace(cookie, std::move(g));
      f->deliver.pop_front();
    }
    signal(*f);
    return static_cast<ssize_t>(used);
  }

  ssize_t write(int fd, const void* buf, size_t count) override {
    std::lock_guard lock(mu_);
    Fault* f = byFd(fd);
    if (f == nullptr) return -EBADF;
    if (count % abi::kResponseSize != 0) return -ESPIPE;
    const auto* in = static_cast<const abi::IommuHwptPageResponse*>(buf);
    size_t done = 0;
    std::vector<uint32_t> cookies;
    for (; done < count / abi::kResponseSize; ++done) {
      cookies.push_back(in[done].cookie);
      if (in[done].code > 1) break;
      auto it = f->response.find(in[done].cookie);
      if (it == f->response.end()) break;
      answers_.push_back({it->second.serial, in[done].cookie, in[done].code});
      f->response.erase(it);
    }
    write_calls_.push_back(cookies);
    if (done == 0) return -EINVAL;
    return static_cast<ssize_t>(done * abi::kResponseSize);
  }

  int ioctl(int fd, unsigned long request, void* arg) override {
    std::lock_guard lock(mu_);
    if (fd != iommufd_) return -ENOTTY;
    const uint32_t size = *static_cast<uint32_t*>(arg);
    switch (request) {
      case abi::kIommuDestroy:
      case abi::kIommuIoasAlloc:
      case abi::kIommuIoasMap:
      case abi::kIommuHwptAlloc:
        break;
      case abi::kIommuFaultQueueAlloc:
        if (!fault_queue_supported) return -ENOTTY;
        break;
      default:
        return -ENOTTY;
    }
    if (size == 0) return -EINVAL;  // min_size: the probe
    switch (request) {
      case abi::kIommuIoasAlloc:
        static_cast<abi::IommuIoasAlloc*>(arg)->out_ioas_id = ++next_id_;
        ioas_.insert(next_id_);
        return 0;
      case abi::kIommuFaultQueueAlloc: {
        int p[2];
        if (::pipe(p) != 0) return -errno;
        auto* cmd = static_cast<abi::IommuFaultAlloc*>(arg);
        cmd->out_fault_id = ++next_id_;
        cmd->out_fault_fd = static_cast<uint32_t>(p[0]);
        struct stat st{};
        ::fstat(p[0], &st);
        Fault& f = faults_[st.st_ino];
        f.id = next_id_;
        f.write_end = p[1];
        f.drain_fd = ::dup(p[0]);
        ::fcntl(f.drain_fd, F_SETFL, O_NONBLOCK);
        f.open_fds = 1;
        return 0;
      }
      case abi::kIommuHwptAlloc: {
        auto* cmd = static_cast<abi::IommuHwptAlloc*>(arg);
        cmd->out_hwpt_id = ++next_id_;
        if (cmd->flags & abi::kHwptFaultIdValid) {
          byId(cmd->fault_id).hwpt_refs++;
          hwpt_fault_[next_id_] = cmd->fault_id;
        }
        return 0;
      }
      case abi::kIommuIoasMap: {
        auto* cmd = static_cast<abi::IommuIoasMap*>(arg);
        if (!ioas_.count(cmd->ioas_id)) return -ENOENT;
        for (const auto& m : maps_) {
          if (m.ioas_id == cmd->ioas_id && cmd->iova < m.iova + m.length && m.iova < cmd->iova + cmd->length) {
            return -EEXIST;
          }
        }
        maps_.push_back(*cmd);
        return 0;
      }
      case abi::kIommuDestroy: {
        const uint32_t id = static_cast<abi::IommuDestroy*>(arg)->id;
        if (auto h = hwpt_fault_.find(id); h != hwpt_fault_.end()) {
          if (attached_hwpts_.count(id)) return -EBUSY;
          byId(h->second).hwpt_refs--;
          hwpt_fault_.erase(h);
          destroyed_.insert(id);
          return 0;
        }
        for (auto& [ino, f] : faults_) {
          if (f.id != id || f.destroyed) continue;
          if (f.open_fds > 0 || f.hwpt_refs > 0) return -EBUSY;
          f.destroyed = true;
          destroyed_.insert(id);
          return 0;
        }
        if (ioas_.erase(id) || destroyed_.count(id) == 0) {
          destroyed_.insert(id);
          return 0;
        }
        return -ENOENT;
      }
    }
    return -ENOTTY;
  }

  int close(int fd) override {
    std::lock_guard lock(mu_);
    if (Fault* f = byFd(fd)) f->open_fds--;
    return ::close(fd) == 0 ? 0 : -errno;
  }

  // A received (SCM_RIGHTS) copy of a fault fd counts as one more open file.
  void noteFdReceived() {
    std::lock_guard lock(mu_);
    for (auto& [ino, f] : faults_) f.open_fds++;
  }
  void setAttached(uint32_t hwpt, bool attached) {
    std::lock_guard lock(mu_);
    if (attached) attached_hwpts_.insert(hwpt); else attached_hwpts_.erase(hwpt);
  }

 private:
  struct Fault {
    uint32_t id = 0;
    int write_end = -1;
    int drain_fd = -1;
    int open_fds = 0;
    int hwpt_refs = 0;
    bool destroyed = false;
    bool signalled = false;
    std::deque<Group> deliver;
    std::map<uint32_t, Group> response;  // cookie → group
  };
  Fault* byFd(int fd) {
    struct stat st{};
    if (::fstat(fd, &st) != 0) return nullptr;
    auto it = faults_.find(st.st_ino);
    return it == faults_.end() ? nullptr : &it->second;
  }
  Fault& byId(uint32_t id) {
    for (auto& [ino, f] : faults_) {
      if (f.id == id) return f;
    }
    std::abort();
  }
  // Readiness: one byte in the pipe while `deliver` is non-empty (EPOLLIN semantics of §2.5).
  void signal(Fault& f) {
    const bool want = !f.deliver.empty();
    if (want == f.signalled) return;
    char c = 0;
    if (want) {
      (void)!::write(f.write_end, &c, 1);
    } else {
      (void)!::read(f.drain_fd, &c, 1);  // private dup of the read end (non-blocking)
    }
    f.signalled = want;
  }
  mutable std::mutex mu_;
  int iommufd_ = -1;
  int iommufd_peer_ = -1;
  uint32_t next_id_ = 0;
  uint64_t serial_ = 0;
  std::map<ino_t, Fault> faults_;
  std::set<uint32_t> ioas_;
  std::map<uint32_t, uint32_t> hwpt_fault_;
  std::set<uint32_t> attached_hwpts_;
  std::vector<Answer> answers_;
  std::vector<Answer> auto_answered_;
  std::vector<std::vector<uint32_t>> write_calls_;
  std::vector<abi::IommuIoasMap> maps_;
  std::set<uint32_t> destroyed_;
};

}  // namespace iopf::iommufd::testing
