// The plugin host: discovery by sidecar, ABI and permission checks, lifecycle, handler instances
// and event readers (plugin_host.h has the contract).
#include "iopf/plugin_host.h"

#include <dlfcn.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/util/json_util.h"
#include "iopf/event_bus.h"
#include "iopf/plugin_abi.h"
#include "iopf/plugin_abi_hash.h"
#include "iopf/router.h"
#include "iopf/v1/plugin_manifest.pb.h"
#include "plugin_handler.h"

namespace iopf {

using detail::LoadedPlugin;
using detail::PluginContext;
using detail::PluginHandler;
using detail::PluginServices;

namespace {

// The hash of every ABI minor this host supports, index = minor. When IOPF_PLUGIN_ABI_MINOR is
// bumped, the previous entry MUST become the literal hash that minor had.
constexpr uint64_t kAbiHashByMinor[] = {UINT64_C(0x3fd1ed302b5a5a01), IOPF_PLUGIN_ABI_HASH};
static_assert(std::size(kAbiHashByMinor) == IOPF_PLUGIN_ABI_MINOR + 1,
              "record the ABI hash of every supported minor in kAbiHashByMinor");

// The descriptor of ABI 1.0 ends with `counters`: anything shorter is not a 1.x descriptor.
constexpr size_t kMinDescriptorSize =
    offsetof(iopf_plugin_descriptor, counters) + sizeof(iopf_plugin_descriptor::counters);

// iopf_plugin_event is iopf::Event, field by field: events are handed over as one memcpy.
static_assert(sizeof(iopf_plugin_event) == sizeof(Event));
static_assert(offsetof(iopf_plugin_event, seq) == offsetof(Event, seq));
static_assert(offsetof(iopf_plugin_event, time_ns) == offsetof(Event, time_ns));
static_assert(offsetof(iopf_plugin_event, group) == offsetof(Event, group));
static_assert(offsetof(iopf_plugin_event, addr) == offsetof(Event, addr));
static_assert(offsetof(iopf_plugin_event, value) == offsetof(Event, value));
static_assert(offsetof(iopf_plugin_event, device) == offsetof(Event, device));
static_assert(offsetof(iopf_plugin_event, domain) == offsetof(Event, domain));
static_assert(offsetof(iopf_plugin_event, pasid) == offsetof(Event, pasid));
static_assert(offsetof(iopf_plugin_event, grpid) == offsetof(Event, grpid));
static_assert(offsetof(iopf_plugin_event, cookie) == offsetof(Event, cookie));
static_assert(offsetof(iopf_plugin_event, type) == offsetof(Event, type));
static_assert(offsetof(iopf_plugin_event, flags) == offsetof(Event, flags));
static_assert(offsetof(iopf_plugin_event, perm) == offsetof(Event, perm));
static_assert(offsetof(iopf_plugin_event, code) == offsetof(Event, code));
static_assert(offsetof(iopf_plugin_event, origin) == offsetof(Event, origin));
static_assert(offsetof(iopf_plugin_event, verdict) == offsetof(Event, verdict));
static_assert(offsetof(iopf_plugin_event, handler) == offsetof(Event, handler));
static_assert(IOPF_EVENT_CHAIN_CHANGED == static_cast<unsigned>(EventType::kChainChanged));
static_assert(IOPF_EVENT_DOMAIN_RESUMED == static_cast<unsigned>(EventType::kDomainResumed));
static_assert(IOPF_EVENT_PASID_VALID == event_flag::kPasidValid &&
              IOPF_EVENT_LAST == event_flag::kLast && IOPF_EVENT_COOKIE_VALID == event_flag::kCookieValid);
static_assert(IOPF_PERM_READ == perm::kRead && IOPF_PERM_WRITE == perm::kWrite &&
              IOPF_PERM_EXEC == perm::kExec && IOPF_PERM_PRIV == perm::kPriv);
static_assert(IOPF_CODE_SUCCESS == static_cast<unsigned>(ResponseCode::kSuccess) &&
              IOPF_CODE_INVALID == static_cast<unsigned>(ResponseCode::kInvalid) &&
              IOPF_CODE_FAILURE == static_cast<unsigned>(ResponseCode::kFailure));

std::string hex16(uint64_t v) { return absl::StrFormat("%016x", v); }

std::string abiText(const PluginAbi& abi) { return absl::StrCat(abi.major, ".", abi.minor); }

bool parseHex64(std::string_view text, uint64_t& out) {
  if (text.empty() || text.size() > 16) return false;
  uint64_t v = 0;
  for (char c : text) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v |= static_cast<uint64_t>(c - 'a' + 10);
    } else if (c >= 'A' && c <= 'F') {
      v |= static_cast<uint64_t>(c - 'A' + 10);
    } else {
      return false;
    }
  }
  out = v;
  return true;
}

bool validId(std::string_view id) {
  if (id.empty()) return false;
  return std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

std::string str(const char* s) { return s == nullptr ? std::string() : std::string(s); }

void defaultReport(const PluginReport& r) {
  std::fprintf(stderr, "iopf plugin host: %s%s%s: %s\n", std::string(toString(r.kind)).c_str(),
               r.plugin.empty() ? "" : " ", r.plugin.c_str(), r.message.c_str());
}

// --- host API trampolines (ctx is the plugin's PluginContext) ----------------------------------

PluginContext& ctxOf(void* ctx) { return *static_cast<PluginContext*>(ctx); }

void apiLog(void* ctx, uint32_t level, const char* message, size_t length) {
  try {
    ctxOf(ctx).log(level, std::string_view(message == nullptr ? "" : message, message == nullptr ? 0 : length));
  } catch (...) {
  }
}
int64_t apiNow(void* ctx) { return ctxOf(ctx).services->now(); }
template <typename Info>
void fillPrefix(Info* out, const Info& full) {
  // Copy no more than the caller's struct holds, keep its struct_size.
  const uint32_t size = out->struct_size;
  std::memcpy(static_cast<void*>(out), &full, std::min<size_t>(size, sizeof full));
  out->struct_size = size;
}
// The *_info trampolines: check the caller's struct, fill a full one, copy what the caller holds.
template <typename Info, typename Lookup>
int32_t fillInfo(Info* out, Lookup&& lookup) {
  if (out == nullptr || out->struct_size < sizeof(uint32_t) * 2) return 0;
  try {
    Info full{};
    full.struct_size = sizeof full;
    if (!lookup(full)) return 0;
    fillPrefix(out, full);
    return 1;
  } catch (...) {
    return 0;
  }
}
int32_t apiDeviceInfo(void* ctx, uint32_t device, iopf_plugin_device_info* out) {
  return fillInfo(out, [&](iopf_plugin_device_info& full) {
    return ctxOf(ctx).services->device(device, full);
  });
}
uint32_t apiListDevices(void* ctx, uint32_t* ids, uint32_t capacity) {
  try {
    return ctxOf(ctx).services->listDevices(ids, ids == nullptr ? 0 : capacity);
  } catch (...) {
    return 0;
  }
}
int32_t apiDomainInfo(void* ctx, uint32_t domain, iopf_plugin_domain_info* out) {
  return fillInfo(out, [&](iopf_plugin_domain_info& full) {
    return ctxOf(ctx).services->domain(domain, full);
  });
}
uint32_t apiListDomains(void* ctx, uint32_t* ids, uint32_t capacity) {
  try {
    return ctxOf(ctx).services->listDomains(ids, ids == nullptr ? 0 : capacity);
  } catch (...) {
    return 0;
  }
}
size_t apiHandlerName(void* ctx, uint32_t handler, char* buffer, size_t capacity) {
  try {
    const std::string name = ctxOf(ctx).services->handlerName(handler);
    if (buffer != nullptr && capacity > 0) {
      const size_t n = std::min(name.size(), capacity - 1);
      std::memcpy(buffer, name.data(), n);
      buffer[n] = '\0';
    }
    return name.size();
  } catch (...) {
    return 0;
  }
}

uint32_t apiListBackends(void* ctx, uint32_t* ids, uint32_t capacity) {
  try {
    return ctxOf(ctx).services->listBackends(ids, ids == nullptr ? 0 : capacity);
  } catch (...) {
    return 0;
  }
}
int32_t apiBackendInfo(void* ctx, uint32_t backend, iopf_plugin_backend_info* out) {
  return fillInfo(out, [&](iopf_plugin_backend_info& full) {
    return ctxOf(ctx).services->backend(backend, full);
  });
}
int32_t apiMap(void* ctx, const iopf_plugin_map_request* request, char* error, size_t capacity) {
  auto fail = [&](std::string_view why) {
    if (error != nullptr && capacity > 0) {
      const size_t n = std::min(why.size(), capacity - 1);
      std::memcpy(error, why.data(), n);
      error[n] = '\0';
    }
    return 0;
  };
  if (request == nullptr || request->struct_size < sizeof(iopf_plugin_map_request)) {
    return fail("map: no request, or a request struct smaller than ABI 1.1's");
  }
  try {
    MapRequest m;
    m.domain = request->domain;
    m.device = request->device;
    if (request->flags & IOPF_MAP_PASID_VALID) m.pasid = request->pasid;
    m.iova = request->iova;
    m.length = request->length;
    m.source_va = request->source_va;
    m.perm = request->perm;
    const absl::Status st = ctxOf(ctx).services->map(m);
    if (st.ok()) return 1;
    return fail(std::string(st.message()));
  } catch (const std::exception& e) {
    return fail(e.what());
  } catch (...) {
    return fail("map threw");
  }
}

}  // namespace

std::string_view toString(PluginReportKind kind) {
  switch (kind) {
    case PluginReportKind::kLog: return "log";
    case PluginReportKind::kSuppressed: return "suppressed";
    case PluginReportKind::kRefused: return "refused";
    case PluginReportKind::kLoaded: return "loaded";
    case PluginReportKind::kFailed: return "failed";
    case PluginReportKind::kQuarantined: return "quarantined";
    case PluginReportKind::kReenabled: return "reenabled";
    case PluginReportKind::kShutdownTimeout: return "shutdown-timeout";
  }
  return "?";
}

std::string_view toString(PluginState state) {
  switch (state) {
    case PluginState::kLoaded: return "loaded";
    case PluginState::kRunning: return "running";
    case PluginState::kFailed: return "failed";
    case PluginState::kShutDown: return "shut-down";
  }
  return "?";
}

PluginAbi hostPluginAbi() {
  return {IOPF_PLUGIN_ABI_MAJOR, IOPF_PLUGIN_ABI_MINOR, IOPF_PLUGIN_ABI_HASH};
}

absl::Status checkPluginAbi(std::string_view plugin, std::string_view file, const PluginAbi& abi) {
  const PluginAbi host = hostPluginAbi();
  const std::string who = absl::StrCat("plugin '", std::string(plugin), "' (", std::string(file), ")");
  if (abi.major != host.major) {
    return absl::FailedPreconditionError(absl::StrCat(
        who, ": built for plugin ABI ", abiText(abi), ", this host implements ABI ", abiText(host),
        ": the major version must be equal; rebuild the plugin against this host's SDK"));
  }
  if (abi.minor > host.minor) {
    return absl::FailedPreconditionError(absl::StrCat(
        who, ": built for plugin ABI ", abiText(abi), ", this host implements ABI ", abiText(host),
        ": the plugin needs a newer host (its minor ", abi.minor, " > the host's ", host.minor, ")"));
  }
  const uint64_t expected = kAbiHashByMinor[abi.minor];
  if (abi.hash != expected) {
    return absl::FailedPreconditionError(absl::StrCat(
        who, ": built for plugin ABI ", abiText(abi), " with ABI hash ", hex16(abi.hash),
        ", this host implements ABI ", abiText(host), " and expects hash ", hex16(expected),
        " for ", abiText(abi), ": the plugin was built against a different plugin_abi.h"));
  }
  return absl::OkStatus();
}

absl::Status checkNotWorldWritable(const std::string& path, std::string_view what) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(std::string(what), " '", path, "': ", std::strerror(errno)));
  }
  if (st.st_mode & S_IWOTH) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s '%s' is world-writable (mode %04o): refused, anyone could replace plugin code",
        std::string(what), path, st.st_mode & 07777));
  }
  return absl::OkStatus();
}

absl::StatusOr<PluginCandidate> readPluginSidecar(const std::string& json_path) {
  namespace fs = std::filesystem;
  const fs::path path(json_path);
  const std::string dir = path.parent_path().empty() ? "." : path.parent_path().string();
  if (absl::Status s = checkNotWorldWritable(json_path, "plugin sidecar"); !s.ok()) {
    if (s.code() == absl::StatusCode::kNotFound) return s;
    PluginCandidate c;
    c.id = path.stem().string();
    c.sidecar_path = json_path;
    c.status = s;
    return c;
  }
  std::ifstream in(json_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("plugin sidecar '", json_path, "': cannot open"));
  std::stringstream buf;
  buf << in.rdbuf();
  v1::PluginManifest m;
  google::protobuf::util::JsonParseOptions options;
  options.ignore_unknown_fields = true;  // sidecars only grow
  const auto parsed = google::protobuf::util::JsonStringToMessage(buf.str(), &m, options);
  if (!parsed.ok()) {
    const auto msg = parsed.message();
    return absl::InvalidArgumentError(absl::StrCat("plugin sidecar '", json_path, "': ",
                                                   std::string(msg.data(), msg.size())));
  }
  PluginCandidate c;
  c.id = m.id();
  c.name = m.name();
  c.version = m.version();
  c.description = m.description();
  c.sidecar_path = json_path;
  c.config_type = m.config_type();
  c.plugin_config_type = m.plugin_config_type();
  c.config_proto = m.config_proto();
  c.abi.major = m.abi().major();
  c.abi.minor = m.abi().minor();
  const std::string stem = path.stem().string();
  if (!validId(m.id())) {
    return absl::InvalidArgumentError(
        absl::StrCat("plugin sidecar '", json_path, "': field 'id' must match [a-z0-9_]+, got '", m.id(), "'"));
  }
  if (m.id() != stem) {
    return absl::InvalidArgumentError(absl::StrCat("plugin sidecar '", json_path, "': field 'id' is '",
                                                   m.id(), "' but the file is named '", stem, ".json'"));
  }
  if (m.library().empty() || m.library().find('/') != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "plugin sidecar '", json_path, "': field 'library' must be a file name next to the sidecar, got '",
        m.library(), "'"));
  }
  if (!parseHex64(m.abi().hash(), c.abi.hash)) {
    return absl::InvalidArgumentError(absl::StrCat("plugin sidecar '", json_path,
                                                   "': field 'abi.hash' must be 16 hex digits, got '",
                                                   m.abi().hash(), "'"));
  }
  c.library_path = (fs::path(dir) / m.library()).string();
  c.status = checkNotWorldWritable(c.library_path, "plugin library");
  if (c.status.ok()) c.status = checkPluginAbi(c.id, c.library_path, c.abi);
  return c;
}

// The plugin's own counters. Caller holds p.mu and p.initialized is true.
std::vector<std::pair<std::string, uint64_t>> readCounters(const LoadedPlugin& p) {
  std::vector<std::pair<std::string, uint64_t>> out;
  if (p.descriptor->counters == nullptr) return out;
  std::vector<iopf_plugin_counter> counters(32);
  uint32_t n = p.descriptor->counters(p.state, counters.data(), static_cast<uint32_t>(counters.size()));
  if (n > counters.size()) {
    counters.resize(n);
    n = std::min<uint32_t>(n, p.descriptor->counters(p.state, counters.data(), n));
  }
  for (uint32_t i = 0; i < n; ++i) {
    counters[i].name[sizeof counters[i].name - 1] = '\0';
    out.emplace_back(counters[i].name, counters[i].value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Impl

class PluginHost::Impl {
 public:
  Impl(Router* router, PluginHostOptions options)
      : router_(router), options_(std::move(options)) {
    if (!options_.report) options_.report = &defaultReport;
    services_ = std::make_shared<PluginServices>(router_, options_.report);
  }

  void report(PluginReportKind kind, std::string plugin, std::string message, DomainId domain = 0,
              uint32_t level = IOPF_LOG_INFO) {
    PluginReport r;
    r.kind = kind;
    r.plugin = std::move(plugin);
    r.domain = domain;
    r.level = level;
    r.message = std::move(message);
    services_->report(r);
  }

  std::vector<PluginCandidate> discover();
  absl::Status loadCandidate(const PluginCandidate& c, std::string_view config);
  absl::Status startPlugin(const std::shared_ptr<LoadedPlugin>& p);
  void startReader(const std::shared_ptr<LoadedPlugin>& p);
  void runReader(std::shared_ptr<LoadedPlugin> p, uint64_t cursor);
  void shutdownPlugin(const std::shared_ptr<LoadedPlugin>& p);
  std::shared_ptr<LoadedPlugin> find(std::string_view id) const {
    for (const auto& p : plugins_) {
      if (p->candidate.id == id) return p;
    }
    return nullptr;
  }
  PluginStatus statusOf(const LoadedPlugin& p) const;

  Router* router_;
  PluginHostOptions options_;
  std::shared_ptr<PluginServices> services_;
  mutable std::mutex mu_;  // control plane
  std::map<std::string, PluginCandidate> discovered_;
  std::vector<std::shared_ptr<LoadedPlugin>> plugins_;  // load order
  std::vector<std::weak_ptr<PluginHandler>> stand_ins_;
  bool started_ = false;
  bool shut_down_ = false;

  struct Reader {
    std::shared_ptr<LoadedPlugin> plugin;
    std::thread thread;
  };
  std::vector<Reader> readers_;
  std::mutex reader_mu_;
  std::condition_variable reader_cv_;
  bool readers_stop_ = false;
};

std::vector<PluginCandidate> PluginHost::Impl::discover() {
  namespace fs = std::filesystem;
  std::vector<PluginCandidate> out;
  discovered_.clear();
  for (const std::string& dir : options_.search_paths) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) {
      report(PluginReportKind::kRefused, "", absl::StrCat("plugin directory '", dir, "' does not exist"),
             0, IOPF_LOG_WARNING);
      continue;
    }
    if (absl::Status s = checkNotWorldWritable(dir, "plugin directory"); !s.ok()) {
      report(PluginReportKind::kRefused, "", std::string(s.message()), 0, IOPF_LOG_ERROR);
      continue;
    }
    std::vector<std::string> sidecars;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
      if (entry.path().extension() == ".json") sidecars.push_back(entry.path().string());
    }
    std::sort(sidecars.begin(), sidecars.end());
    for (const std::string& json : sidecars) {
      absl::StatusOr<PluginCandidate> c = readPluginSidecar(json);
      if (!c.ok()) {
        report(PluginReportKind::kRefused, fs::path(json).stem().string(),
               std::string(c.status().message()), 0, IOPF_LOG_ERROR);
        continue;
      }
      if (discovered_.count(c->id) != 0) {
        report(PluginReportKind::kRefused, c->id,
               absl::StrCat("plugin '", c->id, "' in '", json, "' is shadowed by '",
                            discovered_[c->id].sidecar_path, "'"),
               0, IOPF_LOG_WARNING);
        continue;
      }
      if (!c->status.ok()) {
        report(PluginReportKind::kRefused, c->id, std::string(c->status.message()), 0, IOPF_LOG_ERROR);
      }
      discovered_[c->id] = *c;
      out.push_back(*c);
    }
  }
  return out;
}

absl::Status PluginHost::Impl::loadCandidate(const PluginCandidate& c, std::string_view config) {
  const std::string who = absl::StrCat("plugin '", c.id, "' (", c.library_path, ")");
  auto refuse = [&](absl::Status s) {
    report(PluginReportKind::kRefused, c.id, std::string(s.message()), 0, IOPF_LOG_ERROR);
    return s;
  };
  if (shut_down_) return absl::FailedPreconditionError("the plugin host is shut down");
  if (find(c.id) != nullptr) {
    return absl::AlreadyExistsError(absl::StrCat("plugin '", c.id, "' is already loaded"));
  }
  if (!c.status.ok()) return refuse(c.status);
  // Checked again right before loading: the files may have changed since discovery.
  const std::string dir = std::filesystem::path(c.library_path).parent_path().string();
  if (absl::Status s = checkNotWorldWritable(dir.empty() ? "." : dir, "plugin directory"); !s.ok()) {
    return refuse(s);
  }
  if (absl::Status s = checkNotWorldWritable(c.library_path, "plugin library"); !s.ok()) return refuse(s);
  // Two generated copies of one .proto file abort the process inside dlopen: refuse before. The
  // same library already mapped (an earlier host in this process) registers nothing new.
  const bool mapped = ::dlopen(c.library_path.c_str(), RTLD_NOW | RTLD_NOLOAD) != nullptr;
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  if (!mapped && !c.config_proto.empty() && pool->FindFileByName(c.config_proto) != nullptr) {
    return refuse(absl::FailedPreconditionError(absl::StrCat(
        who, ": its config proto '", c.config_proto,
        "' is already registered in this process (by the host or another plugin); loading it would abort")));
  }
  for (const std::string& type : {c.config_type, c.plugin_config_type}) {
    if (!mapped && !type.empty() && pool->FindMessageTypeByName(type) != nullptr) {
      return refuse(absl::FailedPreconditionError(absl::StrCat(
          who, ": its config message '", type, "' is already registered in this process")));
    }
  }

  void* library = ::dlopen(c.library_path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  if (library == nullptr) {
    const char* err = ::dlerror();
    return refuse(absl::FailedPreconditionError(absl::StrCat(who, ": dlopen failed: ", str(err))));
  }
  auto entry = reinterpret_cast<iopf_plugin_entry_fn>(::dlsym(library, IOPF_PLUGIN_ENTRY_SYMBOL));
  if (entry == nullptr) {
    return refuse(absl::FailedPreconditionError(
        absl::StrCat(who, ": does not export '" IOPF_PLUGIN_ENTRY_SYMBOL "'")));
  }
  const iopf_plugin_descriptor* d = entry();
  if (d == nullptr) {
    return refuse(absl::FailedPreconditionError(absl::StrCat(who, ": the entry point returned no descriptor")));
  }
  const PluginAbi abi{d->abi_major, d->abi_minor, d->abi_hash};
  if (absl::Status s = checkPluginAbi(c.id, c.library_path, abi); !s.ok()) return refuse(s);
  if (abi.major != c.abi.major || abi.minor != c.abi.minor || abi.hash != c.abi.hash) {
    return refuse(absl::FailedPreconditionError(absl::StrCat(
        who, ": the library is built for ABI ", abiText(abi), " hash ", hex16(abi.hash),
        " but its sidecar says ABI ", abiText(c.abi), " hash ", hex16(c.abi.hash), ": stale sidecar")));
  }
  if (d->struct_size < kMinDescriptorSize) {
    return refuse(absl::FailedPreconditionError(
        absl::StrCat(who, ": descriptor of ", d->struct_size, " bytes, ABI ", abiText(abi),
                     " needs at least ", kMinDescriptorSize)));
  }
  auto mismatch = [&](const char* field, const std::string& lib, const std::string& side) {
    return refuse(absl::FailedPreconditionError(absl::StrCat(who, ": descriptor ", field, " '", lib,
                                                             "' differs from the sidecar's '", side, "'")));
  };
  if (str(d->id) != c.id) return mismatch("id", str(d->id), c.id);
  if (str(d->version) != c.version) return mismatch("version", str(d->version), c.version);
  if (str(d->config_type) != c.config_type) return mismatch("config_type", str(d->config_type), c.config_type);
  if (str(d->plugin_config_type) != c.plugin_config_type) {
    return mismatch("plugin_config_type", str(d->plugin_config_type), c.plugin_config_type);
  }
  const bool handler = (d->capabilities & IOPF_PLUGIN_CAP_HANDLER) != 0;
  const bool events = (d->capabilities & IOPF_PLUGIN_CAP_EVENTS) != 0;
  if (d->init == nullptr || d->post_init == nullptr || d->shutdown == nullptr ||
      (handler && (d->create == nullptr || d->destroy == nullptr || d->handle == nullptr)) ||
      (events && d->on_events == nullptr)) {
    return refuse(absl::FailedPreconditionError(
        absl::StrCat(who, ": descriptor lacks a function its capabilities require")));
  }

  auto p = std::make_shared<LoadedPlugin>();
  p->candidate = c;
  p->library = library;
  p->descriptor = d;
  p->context = std::make_unique<PluginContext>();
  p->context->services = services_;
  p->context->plugin = c.id;
  p->context->lines_per_second = options_.log_lines_per_second;
  p->api.struct_size = sizeof p->api;
  p->api.abi_major = IOPF_PLUGIN_ABI_MAJOR;
  p->api.abi_minor = IOPF_PLUGIN_ABI_MINOR;
  p->api.ctx = p->context.get();
  p->api.log = &apiLog;
  p->api.now_ns = &apiNow;
  p->api.device_info = &apiDeviceInfo;
  p->api.list_devices = &apiListDevices;
  p->api.domain_info = &apiDomainInfo;
  p->api.list_domains = &apiListDomains;
  p->api.handler_name = &apiHandlerName;
  p->api.list_backends = &apiListBackends;
  p->api.backend_info = &apiBackendInfo;
  p->api.map = &apiMap;

  char error[1024] = {0};
  const std::string json(config.empty() ? std::string_view("{}") : config);
  void* state = nullptr;
  const int32_t rc = d->init(&p->api, json.data(), json.size(), &state, error, sizeof error);
  if (rc != IOPF_PLUGIN_OK) {
    error[sizeof error - 1] = '\0';
    absl::Status s = absl::FailedPreconditionError(absl::StrCat(who, ": init failed: ", error));
    p->phase = PluginState::kFailed;
    p->error = std::string(s.message());
    plugins_.push_back(p);
    report(PluginReportKind::kFailed, c.id, p->error, 0, IOPF_LOG_ERROR);
    return s;
  }
  p->state = state;
  p->initialized = true;
  plugins_.push_back(p);
  report(PluginReportKind::kLoaded, c.id,
         absl::StrCat("plugin '", c.id, "' ", c.version, " loaded from ", c.library_path, " (ABI ",
                      abiText(abi), ")"));
  if (started_) return startPlugin(p);
  return absl::OkStatus();
}

absl::Status PluginHost::Impl::startPlugin(const std::shared_ptr<LoadedPlugin>& p) {
  {
    std::lock_guard lk(p->mu);
    if (!p->initialized || p->phase != PluginState::kLoaded) return absl::OkStatus();
  }
  char error[1024] = {0};
  if (p->descriptor->post_init(p->state, error, sizeof error) != IOPF_PLUGIN_OK) {
    error[sizeof error - 1] = '\0';
    absl::Status s = absl::FailedPreconditionError(absl::StrCat(
        "plugin '", p->candidate.id, "' (", p->candidate.library_path, "): post-init failed: ", error));
    report(PluginReportKind::kFailed, p->candidate.id, std::string(s.message()), 0, IOPF_LOG_ERROR);
    shutdownPlugin(p);
    std::lock_guard lk(p->mu);
    p->phase = PluginState::kFailed;
    p->error = std::string(s.message());
    return s;
  }
  {
    std::lock_guard lk(p->mu);
    p->phase = PluginState::kRunning;
  }
  if (p->hasEvents() && router_ != nullptr) startReader(p);
  return absl::OkStatus();
}

void PluginHost::Impl::startReader(const std::shared_ptr<LoadedPlugin>& p) {
  const EventBus& bus = router_->events();
  const uint64_t cursor = std::max<uint64_t>(1, bus.oldest());
  Reader r;
  r.plugin = p;
  r.thread = std::thread([this, p, cursor] { runReader(p, cursor); });
  readers_.push_back(std::move(r));
}

void PluginHost::Impl::runReader(std::shared_ptr<LoadedPlugin> p, uint64_t cursor) {
  const EventBus& bus = router_->events();
  const size_t batch = std::max<uint32_t>(1, options_.event_batch);
  std::vector<Event> events(batch);
  std::vector<iopf_plugin_event> out(batch);
  auto deliver = [&](size_t n) {
    uint64_t lost = 0;
    for (size_t i = 0; i < n; ++i) {
      if (events[i].type == EventType::kGap) lost += static_cast<uint64_t>(events[i].value);
    }
    std::memcpy(static_cast<void*>(out.data()), events.data(), n * sizeof(Event));
    p->descriptor->on_events(p->state, out.data(), static_cast<uint32_t>(n), sizeof(iopf_plugin_event));
    p->events_lost.fetch_add(lost, std::memory_order_relaxed);
    p->events_delivered.fetch_add(n, std::memory_order_relaxed);
  };
  for (;;) {
    const size_t n = bus.read(cursor, events);
    if (n > 0) {
      deliver(n);
      continue;
    }
    std::unique_lock lk(reader_mu_);
    if (readers_stop_) break;
    reader_cv_.wait_for(lk, std::chrono::nanoseconds(options_.event_idle_sleep_ns));
    if (readers_stop_) break;
  }
  // Final drain: everything published before the stop.
  const uint64_t end = bus.head();
  while (cursor < end) {
    const size_t n = bus.read(cursor, events);
    if (n == 0) break;
    deliver(n);
  }
}

void PluginHost::Impl::shutdownPlugin(const std::shared_ptr<LoadedPlugin>& p) {
  {
    std::lock_guard lk(p->mu);
    if (!p->initialized) return;
    for (PluginHandler* h : p->instances) h->destroyInstanceLocked();
    p->final_counters = readCounters(*p);
    p->initialized = false;  // from here on no call reaches the plugin but shutdown
  }
  struct Done {
    std::mutex mu;
    std::condition_variable cv;
    bool finished = false;
  };
  auto done = std::make_shared<Done>();
  std::thread t([p, done] {
    p->descriptor->shutdown(p->state);
    std::lock_guard lk(done->mu);
    done->finished = true;
    done->cv.notify_all();
  });
  bool finished;
  {
    std::unique_lock lk(done->mu);
    finished = done->cv.wait_for(lk, std::chrono::nanoseconds(options_.shutdown_timeout_ns),
                                 [&] { return done->finished; });
  }
  if (finished) {
    t.join();
  } else {
    t.detach();  // the library stays mapped; the thread owns what it touches
    report(PluginReportKind::kShutdownTimeout, p->candidate.id,
           absl::StrFormat("plugin '%s' (%s): shutdown did not return within %.0f ms; abandoned",
                           p->candidate.id, p->candidate.library_path,
                           static_cast<double>(options_.shutdown_timeout_ns) / 1e6),
           0, IOPF_LOG_ERROR);
  }
  std::lock_guard lk(p->mu);
  if (p->phase != PluginState::kFailed) p->phase = PluginState::kShutDown;
}

PluginStatus PluginHost::Impl::statusOf(const LoadedPlugin& p) const {
  PluginStatus s;
  s.id = p.candidate.id;
  s.name = p.candidate.name;
  s.version = p.candidate.version;
  s.library_path = p.candidate.library_path;
  s.handler = p.hasHandler();
  s.events = p.hasEvents();
  s.events_delivered = p.events_delivered.load(std::memory_order_relaxed);
  s.events_lost = p.events_lost.load(std::memory_order_relaxed);
  std::lock_guard lk(p.mu);
  s.state = p.phase;
  s.error = p.error;
  s.counters = p.initialized ? readCounters(p) : p.final_counters;
  for (const PluginHandler* h : p.instances) s.handlers.push_back(h->status());
  return s;
}

// ---------------------------------------------------------------------------------------------
// PluginHost

PluginHost::PluginHost(Router* router, PluginHostOptions options)
    : impl_(std::make_unique<Impl>(router, std::move(options))) {}

PluginHost::~PluginHost() { shutdown(); }

std::vector<PluginCandidate> PluginHost::discover() {
  std::lock_guard lk(impl_->mu_);
  return impl_->discover();
}

absl::Status PluginHost::load(std::string_view id, std::string_view plugin_config_json) {
  std::lock_guard lk(impl_->mu_);
  auto it = impl_->discovered_.find(std::string(id));
  if (it == impl_->discovered_.end()) {
    return absl::NotFoundError(absl::StrCat("plugin '", std::string(id), "' was not found in the plugin directories"));
  }
  return impl_->loadCandidate(it->second, plugin_config_json);
}

absl::Status PluginHost::loadFile(const std::string& library_path, std::string_view plugin_config_json) {
  std::lock_guard lk(impl_->mu_);
  const std::filesystem::path lib(library_path);
  const std::string dir = lib.parent_path().empty() ? "." : lib.parent_path().string();
  if (absl::Status s = checkNotWorldWritable(dir, "plugin directory"); !s.ok()) {
    impl_->report(PluginReportKind::kRefused, lib.stem().string(), std::string(s.message()), 0, IOPF_LOG_ERROR);
    return s;
  }
  const std::string sidecar = (lib.parent_path() / (lib.stem().string() + ".json")).string();
  absl::StatusOr<PluginCandidate> c = readPluginSidecar(sidecar);
  if (!c.ok()) {
    impl_->report(PluginReportKind::kRefused, lib.stem().string(), std::string(c.status().message()), 0,
                  IOPF_LOG_ERROR);
    return c.status();
  }
  if (std::filesystem::path(c->library_path).filename() != lib.filename()) {
    return absl::InvalidArgumentError(absl::StrCat("plugin sidecar '", sidecar, "' names library '",
                                                   c->library_path, "', not '", library_path, "'"));
  }
  return impl_->loadCandidate(*c, plugin_config_json);
}

absl::Status PluginHost::start() {
  std::lock_guard lk(impl_->mu_);
  if (impl_->shut_down_) return absl::FailedPreconditionError("the plugin host is shut down");
  impl_->started_ = true;
  absl::Status first;
  for (const auto& p : impl_->plugins_) {
    absl::Status s = impl_->startPlugin(p);
    if (first.ok() && !s.ok()) first = s;
  }
  return first;
}

absl::StatusOr<std::shared_ptr<Handler>> PluginHost::createHandler(std::string_view plugin, DomainId domain,
                                                                   const PluginHandlerConfig& config) {
  std::lock_guard lk(impl_->mu_);
  std::shared_ptr<LoadedPlugin> p = impl_->find(plugin);
  if (p == nullptr) return absl::NotFoundError(absl::StrCat("plugin '", std::string(plugin), "' is not loaded"));
  if (!p->hasHandler()) {
    return absl::FailedPreconditionError(
        absl::StrCat("plugin '", std::string(plugin), "' provides no handler (it only consumes events)"));
  }
  const std::string domain_name = impl_->services_->domainName(domain);
  std::lock_guard plk(p->mu);
  if (!p->initialized) {
    return absl::FailedPreconditionError(absl::StrCat("plugin '", std::string(plugin), "' is ", std::string(toString(p->phase)),
                                                      p->error.empty() ? "" : ": ", p->error));
  }
  for (const PluginHandler* h : p->instances) {
    if (h->domain() == domain) {
      return absl::AlreadyExistsError(absl::StrCat("plugin '", std::string(plugin), "' already has a handler for domain ",
                                                   domain, " (one instance per domain)"));
    }
  }
  iopf_plugin_instance_info info;
  info.struct_size = sizeof info;
  info.domain = domain;
  info.domain_name = domain_name.c_str();
  info.config_source = config.source.c_str();
  const std::string json = config.json.empty() ? std::string("{}") : config.json;
  char error[1024] = {0};
  void* instance = nullptr;
  if (p->descriptor->create(p->state, &info, json.data(), json.size(), &instance, error, sizeof error) !=
      IOPF_PLUGIN_OK) {
    error[sizeof error - 1] = '\0';
    absl::Status s = absl::InvalidArgumentError(
        absl::StrCat("plugin '", std::string(plugin), "', domain ", domain, domain_name.empty() ? "" : " '",
                     domain_name, domain_name.empty() ? "" : "'", ": ", error));
    impl_->report(PluginReportKind::kFailed, std::string(plugin), std::string(s.message()), domain,
                  IOPF_LOG_ERROR);
    return s;
  }
  const int64_t budget = config.call_budget_ns > 0 ? config.call_budget_ns : impl_->options_.call_budget_ns;
  const uint32_t after = config.quarantine_after > 0 ? config.quarantine_after : impl_->options_.quarantine_after;
  return std::shared_ptr<Handler>(std::make_shared<PluginHandler>(p, instance, domain, budget, after));
}

std::shared_ptr<Handler> PluginHost::createHandlerOrStandIn(std::string_view plugin, DomainId domain,
                                                            const PluginHandlerConfig& config) {
  absl::StatusOr<std::shared_ptr<Handler>> h = createHandler(plugin, domain, config);
  if (h.ok()) return *std::move(h);
  const std::string why(h.status().message());
  impl_->report(PluginReportKind::kQuarantined, std::string(plugin),
                absl::StrCat("plugin '", std::string(plugin), "' handler of domain ", domain,
                             " replaced by a stand-in that passes groups on: ", why),
                domain, IOPF_LOG_ERROR);
  auto stand_in = std::make_shared<PluginHandler>(std::string(plugin), domain, impl_->services_, why);
  std::lock_guard lk(impl_->mu_);
  impl_->stand_ins_.push_back(stand_in);
  return stand_in;
}

absl::Status PluginHost::reenable(std::string_view plugin, DomainId domain) {
  std::lock_guard lk(impl_->mu_);
  if (std::shared_ptr<LoadedPlugin> p = impl_->find(plugin)) {
    std::lock_guard plk(p->mu);
    for (PluginHandler* h : p->instances) {
      if (h->domain() == domain) return h->reenable();
    }
  }
  for (const auto& weak : impl_->stand_ins_) {
    if (auto h = weak.lock(); h && h->name() == plugin && h->domain() == domain) return h->reenable();
  }
  return absl::NotFoundError(absl::StrCat("plugin '", std::string(plugin), "' has no handler for domain ", domain));
}

std::vector<PluginStatus> PluginHost::status() const {
  std::lock_guard lk(impl_->mu_);
  std::vector<PluginStatus> out;
  for (const auto& p : impl_->plugins_) out.push_back(impl_->statusOf(*p));
  return out;
}

std::optional<PluginStatus> PluginHost::status(std::string_view plugin) const {
  std::lock_guard lk(impl_->mu_);
  std::optional<PluginStatus> out;
  if (std::shared_ptr<LoadedPlugin> p = impl_->find(plugin)) out = impl_->statusOf(*p);
  for (const auto& weak : impl_->stand_ins_) {
    if (auto h = weak.lock(); h && h->name() == plugin) {
      if (!out) {
        out.emplace();
        out->id = std::string(plugin);
        out->state = PluginState::kFailed;
      }
      out->handlers.push_back(h->status());
    }
  }
  return out;
}

std::optional<uint64_t> PluginHost::counter(std::string_view plugin, std::string_view name) const {
  std::optional<PluginStatus> s = status(plugin);
  if (!s) return std::nullopt;
  for (const auto& [n, v] : s->counters) {
    if (n == name) return v;
  }
  return std::nullopt;
}

void PluginHost::shutdown() {
  std::lock_guard lk(impl_->mu_);
  if (impl_->shut_down_) return;
  impl_->shut_down_ = true;
  {
    std::lock_guard rlk(impl_->reader_mu_);
    impl_->readers_stop_ = true;
  }
  impl_->reader_cv_.notify_all();
  for (auto& r : impl_->readers_) r.thread.join();
  impl_->readers_.clear();
  for (auto it = impl_->plugins_.rbegin(); it != impl_->plugins_.rend(); ++it) impl_->shutdownPlugin(*it);
  impl_->services_->detachRouter();
}

}  // namespace iopf
