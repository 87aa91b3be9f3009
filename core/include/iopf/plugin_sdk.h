// The C++ SDK for handler plugins: header-only, on top of the C ABI (iopf/plugin_abi.h).
//
// A plugin derives from iopf::sdk::Plugin<PluginConfig, HandlerConfig> (both protobuf messages, or
// iopf::sdk::NoConfig), returns iopf::sdk::Handler instances from createHandler(), and ends its
// plugin.cc with IOPF_PLUGIN(MyPlugin). It is built with iopf_add_plugin() (cmake/IopfPlugin.cmake),
// which supplies the identity macros the descriptor is made of. docs/plugins.md walks through it.
//
// What the SDK guarantees at the boundary:
// - No exception crosses it. An exception from init/postInit/createHandler becomes the failure
//   message the host reports; one from Handler::handle becomes IOPF_VERDICT_ERROR (the host answers
//   the group INVALID, origin handler-error, and counts it) plus an SDK counter and a log line.
// - Configs arrive as JSON and are parsed into the plugin's own message with
//   JsonStringToMessage; unknown fields and type mismatches are refused with protobuf's message,
//   prefixed with the config's source.
// - Ownership: the plugin object and every handler live in boxes owned by the plugin side; the
//   host only holds opaque pointers to them.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "google/protobuf/message.h"
#include "google/protobuf/util/json_util.h"
#include "iopf/plugin_abi.h"
#include "iopf/plugin_abi_hash.h"

namespace iopf::sdk {

enum class Code : uint32_t {
  kSuccess = IOPF_CODE_SUCCESS,
  kInvalid = IOPF_CODE_INVALID,
  kFailure = IOPF_CODE_FAILURE,
};

// A handler's answer for one group.
class Verdict {
 public:
  static constexpr Verdict proceed() { return Verdict(IOPF_VERDICT_CONTINUE, IOPF_CODE_INVALID); }
  static constexpr Verdict respond(Code code) {
    return Verdict(IOPF_VERDICT_RESPOND, static_cast<uint32_t>(code));
  }
  static constexpr Verdict defer() { return Verdict(IOPF_VERDICT_DEFER, IOPF_CODE_INVALID); }
  constexpr iopf_plugin_verdict raw() const { return raw_; }
  constexpr uint32_t kind() const { return raw_.kind; }
  constexpr uint32_t code() const { return raw_.code; }

 private:
  constexpr Verdict(uint32_t kind, uint32_t code) : raw_{kind, code} {}
  iopf_plugin_verdict raw_;
};

// One page request of a group, decoded.
struct Request {
  uint64_t addr = 0;
  int64_t arrival_ns = 0;
  uint32_t grpid = 0;
  std::optional<uint32_t> pasid;
  std::optional<uint32_t> cookie;
  uint32_t length_hint = 0;
  uint8_t perm = 0;  // IOPF_PERM_*
  bool last = false;

  bool reads() const { return (perm & IOPF_PERM_READ) != 0; }
  bool writes() const { return (perm & IOPF_PERM_WRITE) != 0; }
  bool executes() const { return (perm & IOPF_PERM_EXEC) != 0; }
  bool privileged() const { return (perm & IOPF_PERM_PRIV) != 0; }
};

// Read-only view of one group; valid only during the Handler::handle call that receives it.
class Group {
 public:
  explicit Group(const iopf_plugin_group& raw) : raw_(raw) {}

  uint64_t id() const { return raw_.group_id; }
  uint32_t domain() const { return raw_.domain; }
  uint32_t device() const { return raw_.device; }
  uint64_t backendHandle() const { return raw_.backend_handle; }
  uint16_t rid() const { return raw_.rid; }
  uint32_t pciSegment() const { return raw_.pci_segment; }
  bool needsPasid() const { return (raw_.flags & IOPF_GROUP_NEEDS_PASID) != 0; }
  std::optional<uint32_t> pasid() const {
    if (raw_.flags & IOPF_GROUP_PASID_VALID) return raw_.pasid;
    return std::nullopt;
  }
  uint32_t grpid() const { return raw_.grpid; }
  std::optional<uint32_t> cookie() const {
    if (raw_.flags & IOPF_GROUP_COOKIE_VALID) return raw_.cookie;
    return std::nullopt;
  }
  uint32_t size() const { return raw_.request_count; }
  Request request(uint32_t index) const {
    const iopf_plugin_request& r = *iopf_plugin_group_request(&raw_, index);
    Request out;
    out.addr = r.addr;
    out.arrival_ns = r.arrival_ns;
    out.grpid = r.grpid;
    if (r.flags & IOPF_REQUEST_PASID_VALID) out.pasid = r.pasid;
    if (r.flags & IOPF_REQUEST_COOKIE_VALID) out.cookie = r.cookie;
    out.length_hint = r.length_hint;
    out.perm = r.perm;
    out.last = (r.flags & IOPF_REQUEST_LAST) != 0;
    return out;
  }
  const iopf_plugin_group& raw() const { return raw_; }

  class Iterator {
   public:
    Iterator(const Group* group, uint32_t index) : group_(group), index_(index) {}
    Request operator*() const { return group_->request(index_); }
    Iterator& operator++() {
      ++index_;
      return *this;
    }
    bool operator!=(const Iterator& other) const { return index_ != other.index_; }

   private:
    const Group* group_;
    uint32_t index_;
  };
  Iterator begin() const { return Iterator(this, 0); }
  Iterator end() const { return Iterator(this, size()); }

 private:
  const iopf_plugin_group& raw_;
};

// Completes one deferred group. A small value: copy it freely and complete from any thread.
class Completion {
 public:
  Completion() = default;
  explicit Completion(const iopf_plugin_completion& raw) : raw_(raw) {}
  bool valid() const { return raw_.complete != nullptr; }
  uint64_t group() const { return raw_.group_id; }
  // true if this call completed the group; false if the core refused it (a second answer, or the
  // group already timed out, was detached or drained).
  bool complete(Code code) const {
    return valid() && raw_.complete(&raw_, static_cast<uint32_t>(code)) == 1;
  }

 private:
  iopf_plugin_completion raw_{};
};

enum class LogLevel : uint32_t {
  kDebug = IOPF_LOG_DEBUG,
  kInfo = IOPF_LOG_INFO,
  kWarning = IOPF_LOG_WARNING,
  kError = IOPF_LOG_ERROR,
};

struct DeviceInfo {
  uint32_t device = 0;
  uint64_t backend_handle = 0;
  uint32_t backend = 0;
  uint32_t pci_segment = 0;
  uint32_t pri_allocation = 0;
  uint16_t rid = 0;
  uint8_t pasid_bits = 0;
  bool needs_pasid = false;
  bool stall_model = false;
  bool removed = false;
  std::string name;
  std::string backend_name;
};

struct DomainInfo {
  uint32_t domain = 0;
  uint32_t kind = 0;  // 0 paging, 1 nested, 2 sva
  int64_t deadline_ns = 0;
  std::string name;
};

struct BackendInfo {
  uint32_t backend = 0;
  bool can_map = false;
  bool whole_groups = false;
  std::string name;
};

// The host's services (iopf_plugin_host_api). Every method MAY be called from any thread until
// the plugin's shutdown() returns.
class Host {
 public:
  explicit Host(const iopf_plugin_host_api* api) : api_(api) {}

  void log(LogLevel level, std::string_view message) const {
    api_->log(api_->ctx, static_cast<uint32_t>(level), message.data(), message.size());
  }
  // The router's monotonic clock.
  int64_t now() const { return api_->now_ns(api_->ctx); }

  std::optional<DeviceInfo> device(uint32_t id) const {
    iopf_plugin_device_info raw{};
    raw.struct_size = sizeof raw;
    if (api_->device_info(api_->ctx, id, &raw) != 1) return std::nullopt;
    DeviceInfo d;
    d.device = raw.device;
    d.backend_handle = raw.backend_handle;
    d.backend = raw.backend;
    d.pci_segment = raw.pci_segment;
    d.pri_allocation = raw.pri_allocation;
    d.rid = raw.rid;
    d.pasid_bits = raw.pasid_bits;
    d.needs_pasid = (raw.flags & IOPF_DEVICE_NEEDS_PASID) != 0;
    d.stall_model = (raw.flags & IOPF_DEVICE_STALL_MODEL) != 0;
    d.removed = (raw.flags & IOPF_DEVICE_REMOVED) != 0;
    d.name.assign(raw.name, strnlen(raw.name, sizeof raw.name));
    d.backend_name.assign(raw.backend_name, strnlen(raw.backend_name, sizeof raw.backend_name));
    return d;
  }
  std::vector<uint32_t> devices() const { return list(api_->list_devices); }

  std::optional<DomainInfo> domain(uint32_t id) const {
    iopf_plugin_domain_info raw{};
    raw.struct_size = sizeof raw;
    if (api_->domain_info(api_->ctx, id, &raw) != 1) return std::nullopt;
    DomainInfo d;
    d.domain = raw.domain;
    d.kind = raw.kind;
    d.deadline_ns = raw.deadline_ns;
    d.name.assign(raw.name, strnlen(raw.name, sizeof raw.name));
    return d;
  }
  std::vector<uint32_t> domains() const { return list(api_->list_domains); }

  std::string handlerName(uint32_t id) const {
    char buf[128];
    const size_t n = api_->handler_name(api_->ctx, id, buf, sizeof buf);
    if (n < sizeof buf) return std::string(buf, n);
    std::string big(n + 1, '\0');
    api_->handler_name(api_->ctx, id, big.data(), big.size());
    big.resize(n);
    return big;
  }

  // --- ABI minor 1 ---------------------------------------------------------------------------
  // True if the host offers backend lookups and map() (a host of ABI minor >= 1).
  bool hasMap() const {
    return api_->abi_minor >= 1 &&
           api_->struct_size >= offsetof(iopf_plugin_host_api, map) + sizeof api_->map &&
           api_->map != nullptr && api_->list_backends != nullptr && api_->backend_info != nullptr;
  }
  // The router's backends (empty on a host without hasMap()).
  std::vector<BackendInfo> backends() const {
    std::vector<BackendInfo> out;
    if (!hasMap()) return out;
    for (uint32_t id : list(api_->list_backends)) {
      iopf_plugin_backend_info raw{};
      raw.struct_size = sizeof raw;
      if (api_->backend_info(api_->ctx, id, &raw) != 1) continue;
      BackendInfo b;
      b.backend = raw.backend;
      b.can_map = (raw.flags & IOPF_BACKEND_CAN_MAP) != 0;
      b.whole_groups = (raw.flags & IOPF_BACKEND_WHOLE_GROUPS) != 0;
      b.name.assign(raw.name, strnlen(raw.name, sizeof raw.name));
      out.push_back(std::move(b));
    }
    return out;
  }
  // Asks the device's backend to map the range (request.struct_size MUST be set). True on success;
  // on failure false and, if `error` is given, the host's reason. Requires hasMap().
  bool map(const iopf_plugin_map_request& request, std::string* error = nullptr) const {
    char buf[256];
    buf[0] = '\0';
    if (api_->map(api_->ctx, &request, buf, sizeof buf) == 1) return true;
    if (error != nullptr) error->assign(buf, strnlen(buf, sizeof buf));
    return false;
  }

  const iopf_plugin_host_api& raw() const { return *api_; }

 private:
  using ListFn = uint32_t (*)(void*, uint32_t*, uint32_t);
  std::vector<uint32_t> list(ListFn fn) const {
    std::vector<uint32_t> ids(16);
    for (;;) {
      const uint32_t n = fn(api_->ctx, ids.data(), static_cast<uint32_t>(ids.size()));
      if (n <= ids.size()) {
        ids.resize(n);
        return ids;
      }
      ids.resize(n);
    }
  }
  const iopf_plugin_host_api* api_;
};

struct InstanceInfo {
  uint32_t domain = 0;
  std::string domain_name;
  std::string config_source;
};

using Event = iopf_plugin_event;

// Throw from init/postInit/createHandler to refuse; the message reaches the host verbatim.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The config type of a plugin that takes none: only an empty config or "{}" is accepted.
struct NoConfig {};

// Collects a plugin's named counters (Plugin::counters).
class Counters {
 public:
  Counters(iopf_plugin_counter* out, uint32_t capacity) : out_(out), capacity_(capacity) {}
  void add(std::string_view name, uint64_t value) {
    if (count_ < capacity_) {
      iopf_plugin_counter& c = out_[count_];
      const size_t n = std::min(name.size(), sizeof c.name - 1);
      std::memcpy(c.name, name.data(), n);
      c.name[n] = '\0';
      c.value = value;
    }
    ++count_;
  }
  uint32_t count() const { return count_; }

 private:
  iopf_plugin_counter* out_;
  uint32_t capacity_;
  uint32_t count_ = 0;
};

// One domain's handler.
class Handler {
 public:
  virtual ~Handler() = default;
  // Called on the shard thread of the instance's domain, one group at a time. SHOULD return
  // quickly (the host measures the call against a budget; slow work belongs behind defer()).
  // MAY throw: the group is answered INVALID and the failure counted.
  virtual Verdict handle(const Group& group, const Completion& completion) = 0;
};

namespace detail {
template <typename P>
struct Glue;
}

// Base class of a plugin. PluginConfigT configures the plugin as a whole (init), HandlerConfigT
// one domain's handler (createHandler); each is a protobuf message or NoConfig.
template <typename PluginConfigT = NoConfig, typename HandlerConfigT = NoConfig>
class Plugin {
 public:
  using PluginConfig = PluginConfigT;
  using HandlerConfig = HandlerConfigT;
  // What the plugin offers: IOPF_PLUGIN_CAP_HANDLER and/or IOPF_PLUGIN_CAP_EVENTS. Redefine it in
  // the derived class to change it.
  static constexpr uint32_t kCapabilities = IOPF_PLUGIN_CAP_HANDLER;

  virtual ~Plugin() = default;

  // Control thread, once, first. Throw to refuse (the host reports the message, never calls the
  // plugin again). MUST NOT start threads that call the host yet.
  virtual void init(const PluginConfig& config) { (void)config; }
  // Control thread, once, when the host starts: start background work. Throw to refuse.
  virtual void postInit() {}
  // Control thread, once, last, after every handler was destroyed: stop every thread, flush.
  // MUST return within the host's shutdown time limit.
  virtual void shutdown() {}
  // Control thread: one handler for one domain. Validate the config here; throw Error naming the
  // field and info.config_source to refuse it.
  virtual std::unique_ptr<Handler> createHandler(const InstanceInfo& info,
                                                 const HandlerConfig& config) {
    (void)info;
    (void)config;
    throw Error("this plugin provides no handler");
  }
  // Host reader thread (IOPF_PLUGIN_CAP_EVENTS): every router event in order, in batches, with
  // GAP markers for lost ones. Never on the routing path; MAY take its time.
  virtual void onEvents(std::span<const Event> events) { (void)events; }
  // Any thread: the plugin's counters (MUST be thread-safe, e.g. atomics).
  virtual void counters(Counters& out) const { (void)out; }

  // The host's services; valid from init() until shutdown() returns.
  const Host& host() const { return *host_; }

 private:
  template <typename P>
  friend struct detail::Glue;
  const Host* host_ = nullptr;
};

namespace detail {

inline void writeError(char* buffer, size_t capacity, std::string_view message) {
  if (buffer == nullptr || capacity == 0) return;
  const size_t n = std::min(message.size(), capacity - 1);
  std::memcpy(buffer, message.data(), n);
  buffer[n] = '\0';
}

inline bool isBlankOrEmptyObject(std::string_view text) {
  std::string compact;
  for (char c : text) {
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') compact.push_back(c);
  }
  return compact.empty() || compact == "{}";
}

template <typename T>
std::string configTypeName() {
  if constexpr (std::is_same_v<T, NoConfig>) {
    return "";
  } else {
    static_assert(std::is_base_of_v<google::protobuf::Message, T>,
                  "a plugin config must be a protobuf message or iopf::sdk::NoConfig");
    return T::descriptor()->full_name();
  }
}

// Parses `json` into `out`. `what` says which config it is, for the error message.
template <typename T>
void parseConfig(T& out, std::string_view json, const std::string& what) {
  if constexpr (std::is_same_v<T, NoConfig>) {
    (void)out;
    if (!isBlankOrEmptyObject(json)) throw Error(what + ": this plugin takes no configuration");
  } else {
    if (isBlankOrEmptyObject(json)) return;  // every field at its default
    google::protobuf::util::JsonParseOptions options;
    options.ignore_unknown_fields = false;
    const auto status = google::protobuf::util::JsonStringToMessage(std::string(json), &out, options);
    if (!status.ok()) {
      const auto message = status.message();
      throw Error(what + ": invalid " + T::descriptor()->full_name() + ": " +
                  std::string(message.data(), message.size()));
    }
  }
}

struct Identity {
  const char* id;
  const char* name;
  const char* version;
  const char* description;
  const char* config_type;
  const char* plugin_config_type;
  uint16_t abi_major;
  uint16_t abi_minor;
  uint64_t abi_hash;
};

template <typename P>
struct Glue {
  struct PluginBox {
    explicit PluginBox(const iopf_plugin_host_api* api) : host(api) {}
    Host host;
    std::unique_ptr<P> plugin;
    std::string id;
    std::atomic<uint64_t> handler_exceptions{0};
    std::atomic<uint64_t> event_exceptions{0};
  };
  struct InstanceBox {
    PluginBox* owner = nullptr;
    std::unique_ptr<Handler> handler;
  };

  static inline const Identity* identity = nullptr;

  static int32_t init(const iopf_plugin_host_api* api, const char* config, size_t length,
                      void** out, char* error, size_t capacity) {
    try {
      auto box = std::make_unique<PluginBox>(api);
      box->id = identity->id;
      const std::string want_plugin = identity->plugin_config_type;
      const std::string want_handler = identity->config_type;
      if (want_plugin != configTypeName<typename P::PluginConfig>() ||
          want_handler != configTypeName<typename P::HandlerConfig>()) {
        throw Error("built with config types '" + want_plugin + "' / '" + want_handler +
                    "' (iopf_add_plugin) but the plugin class uses '" +
                    configTypeName<typename P::PluginConfig>() + "' / '" +
                    configTypeName<typename P::HandlerConfig>() + "'");
      }
      typename P::PluginConfig parsed{};
      parseConfig(parsed, std::string_view(config == nullptr ? "" : config, config == nullptr ? 0 : length),
                  "plugin config");
      box->plugin = std::make_unique<P>();
      box->plugin->host_ = &box->host;
      box->plugin->init(parsed);
      *out = box.release();
      return IOPF_PLUGIN_OK;
    } catch (const std::exception& e) {
      writeError(error, capacity, e.what());
    } catch (...) {
      writeError(error, capacity, "init threw a non-standard exception");
    }
    return IOPF_PLUGIN_FAILED;
  }

  static int32_t postInit(void* plugin, char* error, size_t capacity) {
    try {
      static_cast<PluginBox*>(plugin)->plugin->postInit();
      return IOPF_PLUGIN_OK;
    } catch (const std::exception& e) {
      writeError(error, capacity, e.what());
    } catch (...) {
      writeError(error, capacity, "postInit threw a non-standard exception");
    }
    return IOPF_PLUGIN_FAILED;
  }

  static void shutdown(void* plugin) {
    std::unique_ptr<PluginBox> box(static_cast<PluginBox*>(plugin));
    try {
      box->plugin->shutdown();
    } catch (const std::exception& e) {
      box->host.log(LogLevel::kError, std::string("shutdown threw: ") + e.what());
    } catch (...) {
      box->host.log(LogLevel::kError, "shutdown threw a non-standard exception");
    }
    try {
      box->plugin.reset();
    } catch (...) {
      box->host.log(LogLevel::kError, "the plugin's destructor threw");
    }
  }

  static int32_t create(void* plugin, const iopf_plugin_instance_info* info, const char* config,
                        size_t length, void** out, char* error, size_t capacity) {
    auto* owner = static_cast<PluginBox*>(plugin);
    try {
      InstanceInfo ii;
      ii.domain = info->domain;
      ii.domain_name = info->domain_name == nullptr ? "" : info->domain_name;
      ii.config_source = info->config_source == nullptr ? "" : info->config_source;
      typename P::HandlerConfig parsed{};
      parseConfig(parsed, std::string_view(config == nullptr ? "" : config, config == nullptr ? 0 : length),
                  "config '" + ii.config_source + "' of domain '" + ii.domain_name + "'");
      auto box = std::make_unique<InstanceBox>();
      box->owner = owner;
      box->handler = owner->plugin->createHandler(ii, parsed);
      if (!box->handler) throw Error("createHandler returned no handler");
      *out = box.release();
      return IOPF_PLUGIN_OK;
    } catch (const std::exception& e) {
      writeError(error, capacity, e.what());
    } catch (...) {
      writeError(error, capacity, "createHandler threw a non-standard exception");
    }
    return IOPF_PLUGIN_FAILED;
  }

  static void destroy(void* plugin, void* instance) {
    std::unique_ptr<InstanceBox> box(static_cast<InstanceBox*>(instance));
    try {
      box->handler.reset();
    } catch (...) {
      static_cast<PluginBox*>(plugin)->host.log(LogLevel::kError, "a handler's destructor threw");
    }
  }

  static iopf_plugin_verdict handle(void* instance, const iopf_plugin_group* group,
                                    const iopf_plugin_completion* completion) {
    auto* box = static_cast<InstanceBox*>(instance);
    try {
      return box->handler->handle(Group(*group), Completion(*completion)).raw();
    } catch (const std::exception& e) {
      failed(*box->owner, e.what());
    } catch (...) {
      failed(*box->owner, "a non-standard exception");
    }
    return iopf_plugin_verdict{IOPF_VERDICT_ERROR, IOPF_CODE_INVALID};
  }

  static void failed(PluginBox& owner, const char* what) noexcept {
    owner.handler_exceptions.fetch_add(1, std::memory_order_relaxed);
    try {
      owner.host.log(LogLevel::kError, std::string("handle threw: ") + what);
    } catch (...) {
    }
  }

  static void onEvents(void* plugin, const iopf_plugin_event* events, uint32_t count,
                       uint32_t event_size) {
    auto* box = static_cast<PluginBox*>(plugin);
    try {
      if (event_size == sizeof(iopf_plugin_event)) {
        box->plugin->onEvents(std::span<const Event>(events, count));
      } else {
        // A newer host with larger events: copy the part this plugin knows.
        std::vector<Event> copy(count);
        for (uint32_t i = 0; i < count; ++i) {
          std::memcpy(&copy[i], reinterpret_cast<const char*>(events) + size_t{i} * event_size,
                      std::min<size_t>(event_size, sizeof(Event)));
        }
        box->plugin->onEvents(copy);
      }
    } catch (const std::exception& e) {
      box->event_exceptions.fetch_add(1, std::memory_order_relaxed);
      box->host.log(LogLevel::kError, std::string("onEvents threw: ") + e.what());
    } catch (...) {
      box->event_exceptions.fetch_add(1, std::memory_order_relaxed);
    }
  }

  static uint32_t counters(void* plugin, iopf_plugin_counter* out, uint32_t capacity) {
    auto* box = static_cast<PluginBox*>(plugin);
    Counters c(out, capacity);
    c.add("sdk_handler_exceptions", box->handler_exceptions.load(std::memory_order_relaxed));
    c.add("sdk_event_exceptions", box->event_exceptions.load(std::memory_order_relaxed));
    try {
      box->plugin->counters(c);
    } catch (...) {
    }
    return c.count();
  }

  static iopf_plugin_descriptor describe(const Identity& id) {
    identity = &id;
    iopf_plugin_descriptor d{};
    d.struct_size = sizeof d;
    d.abi_major = id.abi_major;
    d.abi_minor = id.abi_minor;
    d.abi_hash = id.abi_hash;
    d.id = id.id;
    d.name = id.name;
    d.version = id.version;
    d.description = id.description;
    d.config_type = id.config_type;
    d.plugin_config_type = id.plugin_config_type;
    d.capabilities = P::kCapabilities;
    d.init = &Glue::init;
    d.post_init = &Glue::postInit;
    d.shutdown = &Glue::shutdown;
    if (P::kCapabilities & IOPF_PLUGIN_CAP_HANDLER) {
      d.create = &Glue::create;
      d.destroy = &Glue::destroy;
      d.handle = &Glue::handle;
    }
    if (P::kCapabilities & IOPF_PLUGIN_CAP_EVENTS) d.on_events = &Glue::onEvents;
    d.counters = &Glue::counters;
    return d;
  }
};

}  // namespace detail
}  // namespace iopf::sdk

// Build identity, supplied by iopf_add_plugin(); the ABI overrides exist for test fixtures only.
#ifndef IOPF_PLUGIN_BUILD_ABI_MAJOR
#define IOPF_PLUGIN_BUILD_ABI_MAJOR IOPF_PLUGIN_ABI_MAJOR
#endif
#ifndef IOPF_PLUGIN_BUILD_ABI_MINOR
#define IOPF_PLUGIN_BUILD_ABI_MINOR IOPF_PLUGIN_ABI_MINOR
#endif
#ifndef IOPF_PLUGIN_BUILD_ABI_HASH
#define IOPF_PLUGIN_BUILD_ABI_HASH IOPF_PLUGIN_ABI_HASH
#endif

// Defines the plugin's exported entry point. Use once, in one source file of the plugin, at
// namespace scope. Needs the IOPF_PLUGIN_* definitions that iopf_add_plugin() provides.
#define IOPF_PLUGIN(PluginClass)                                                                \
  extern "C" IOPF_PLUGIN_EXPORT const iopf_plugin_descriptor* iopf_plugin_entry(void) {         \
    static const ::iopf::sdk::detail::Identity identity{                                        \
        IOPF_PLUGIN_ID,          IOPF_PLUGIN_NAME,          IOPF_PLUGIN_VERSION,                \
        IOPF_PLUGIN_DESCRIPTION, IOPF_PLUGIN_CONFIG_TYPE,   IOPF_PLUGIN_PLUGIN_CONFIG_TYPE,     \
        IOPF_PLUGIN_BUILD_ABI_MAJOR, IOPF_PLUGIN_BUILD_ABI_MINOR, IOPF_PLUGIN_BUILD_ABI_HASH};  \
    static const iopf_plugin_descriptor descriptor =                                            \
        ::iopf::sdk::detail::Glue<PluginClass>::describe(identity);                             \
    return &descriptor;                                                                         \
  }
