// The plugin ABI of iopf-router: the whole boundary between the router process (the host) and a
// handler plugin (a shared object loaded with dlopen). Plain C: no C++ types, no exceptions, and no
// allocation changes owner across it (every buffer is owned by the side that allocated it, and
// opaque pointers are only ever handed back to their owner).
//
// Versioning (docs/plugins.md, "ABI versioning"):
// - IOPF_PLUGIN_ABI_MAJOR changes when anything existing changes meaning, layout or order. The host
//   loads a plugin only if the majors are equal.
// - IOPF_PLUGIN_ABI_MINOR changes when something is only added: a field at the end of a struct
//   that carries its size, a function pointer at the end of a table, a new constant. The host loads
//   a plugin only if host minor >= plugin minor, and then reads fields the plugin knows about only:
//   it looks at `struct_size` before touching anything added after minor 0.
// - The ABI hash is a hash of this header with comments and white space removed, computed at build
//   time (cmake/IopfPlugin.cmake, generated header iopf/plugin_abi_hash.h). The host keeps the hash
//   of every minor it supports; a plugin whose (minor, hash) pair is not one of them was built
//   against an edited header and is refused. Editing a comment does not change the hash; editing a
//   declaration does, so any change below MUST come with a version bump.
//
// Threading (the contract every plugin relies on; details at each function):
// - init, post_init, create, destroy and shutdown are called from a host control thread, never
//   concurrently with each other for the same plugin.
// - handle is called from the router shard thread that owns the instance's domain, one group at a
//   time per instance. Different instances of one plugin MAY be called concurrently.
// - on_events is called from one host-owned reader thread per plugin, never concurrently with
//   itself, concurrently with handle and counters.
// - counters MAY be called from any thread at any time between init and shutdown.
// - A completion MAY be used from any thread until the host's shutdown of the plugin returns.
#pragma once

#include <stddef.h>
#include <stdint.h>

#define IOPF_PLUGIN_ABI_MAJOR 1
#define IOPF_PLUGIN_ABI_MINOR 1

// Name of the one symbol a plugin exports (type iopf_plugin_entry_fn).
#define IOPF_PLUGIN_ENTRY_SYMBOL "iopf_plugin_entry"

#if defined(__GNUC__)
#define IOPF_PLUGIN_EXPORT __attribute__((visibility("default")))
#else
#define IOPF_PLUGIN_EXPORT
#endif

#ifdef __cplusplus
extern "C" {
#endif

// Return values of the lifecycle functions.
#define IOPF_PLUGIN_OK 0
#define IOPF_PLUGIN_FAILED 1

// Response codes (PCIe PRG response codes; only SUCCESS and INVALID reach iommufd hardware).
#define IOPF_CODE_SUCCESS 0u
#define IOPF_CODE_INVALID 1u
#define IOPF_CODE_FAILURE 2u

// Verdict kinds. ERROR means "I failed on this group": the host answers it INVALID (origin
// handler-error) and counts the failure against the instance.
#define IOPF_VERDICT_CONTINUE 0u
#define IOPF_VERDICT_RESPOND 1u
#define IOPF_VERDICT_DEFER 2u
#define IOPF_VERDICT_ERROR 3u

// Permission bits of a request (iommu_hwpt_pgfault_perm values).
#define IOPF_PERM_READ (1u << 0)
#define IOPF_PERM_WRITE (1u << 1)
#define IOPF_PERM_EXEC (1u << 2)
#define IOPF_PERM_PRIV (1u << 3)

// iopf_plugin_request.flags
#define IOPF_REQUEST_PASID_VALID (1u << 0)
#define IOPF_REQUEST_LAST (1u << 1)
#define IOPF_REQUEST_COOKIE_VALID (1u << 2)

// iopf_plugin_group.flags
#define IOPF_GROUP_PASID_VALID (1u << 0)
#define IOPF_GROUP_COOKIE_VALID (1u << 1)
#define IOPF_GROUP_NEEDS_PASID (1u << 2)

// iopf_plugin_descriptor.capabilities
#define IOPF_PLUGIN_CAP_HANDLER (1u << 0)
#define IOPF_PLUGIN_CAP_EVENTS (1u << 1)

// Log levels of iopf_plugin_host_api.log
#define IOPF_LOG_DEBUG 0u
#define IOPF_LOG_INFO 1u
#define IOPF_LOG_WARNING 2u
#define IOPF_LOG_ERROR 3u

// Event types (iopf_plugin_event.type); values of iopf::EventType.
#define IOPF_EVENT_GAP 0u
#define IOPF_EVENT_REQUEST 1u
#define IOPF_EVENT_GROUP_QUEUED 2u
#define IOPF_EVENT_DISPATCHED 3u
#define IOPF_EVENT_HANDLER_VERDICT 4u
#define IOPF_EVENT_RESPONDED 5u
#define IOPF_EVENT_TIMED_OUT 6u
#define IOPF_EVENT_COMPLETION_REFUSED 7u
#define IOPF_EVENT_ATTACH 8u
#define IOPF_EVENT_DETACH 9u
#define IOPF_EVENT_DEVICE_ADDED 10u
#define IOPF_EVENT_DEVICE_REMOVED 11u
#define IOPF_EVENT_DOMAIN_ADDED 12u
#define IOPF_EVENT_STOP_MARKER_DROPPED 13u
#define IOPF_EVENT_PARTIAL_DISCARDED 14u
#define IOPF_EVENT_PROTOCOL_ERROR 15u
#define IOPF_EVENT_REQUEST_DROPPED 16u
#define IOPF_EVENT_DOMAIN_REMOVED 17u
#define IOPF_EVENT_CHAIN_CHANGED 18u
#define IOPF_EVENT_DOMAIN_PAUSED 19u
#define IOPF_EVENT_DOMAIN_RESUMED 20u

// iopf_plugin_event.flags
#define IOPF_EVENT_PASID_VALID (1u << 0)
#define IOPF_EVENT_LAST (1u << 1)
#define IOPF_EVENT_COOKIE_VALID (1u << 2)

// iopf_plugin_device_info.flags
#define IOPF_DEVICE_NEEDS_PASID (1u << 0)
#define IOPF_DEVICE_STALL_MODEL (1u << 1)
#define IOPF_DEVICE_REMOVED (1u << 2)
#define IOPF_DEVICE_CAN_MAP (1u << 3)  // minor 1: the device's backend implements map()

// iopf_plugin_backend_info.flags (minor 1)
#define IOPF_BACKEND_CAN_MAP (1u << 0)       // implements map() (iopf::Backend::Capabilities)
#define IOPF_BACKEND_WHOLE_GROUPS (1u << 1)  // delivers complete groups (iommufd)

// iopf_plugin_map_request.flags (minor 1)
#define IOPF_MAP_PASID_VALID (1u << 0)

// One page request of a group. Elements of iopf_plugin_group.requests are `request_size` bytes
// apart: index them with iopf_plugin_group_request().
typedef struct iopf_plugin_request {
  uint64_t addr;         // may be unaligned
  int64_t arrival_ns;    // router monotonic clock
  uint32_t grpid;        // PRGI
  uint32_t pasid;        // valid if flags & IOPF_REQUEST_PASID_VALID
  uint32_t cookie;       // valid if flags & IOPF_REQUEST_COOKIE_VALID
  uint32_t length_hint;
  uint8_t perm;          // IOPF_PERM_*
  uint8_t flags;         // IOPF_REQUEST_*
  uint16_t reserved0;
  uint32_t reserved1;
} iopf_plugin_request;

// Read-only view of one complete page request group, valid only during the handle call that
// receives it (copy what a deferred answer needs before returning).
typedef struct iopf_plugin_group {
  uint32_t struct_size;
  uint32_t request_size;               // stride of `requests`, >= sizeof(iopf_plugin_request)
  uint64_t group_id;                   // router-wide, monotonic
  uint64_t backend_handle;             // the device's backend-local handle (iommufd dev_id, ...)
  const iopf_plugin_request* requests; // arrival order, LAST request last
  uint32_t request_count;              // >= 1
  uint32_t domain;
  uint32_t device;                     // router device id
  uint32_t pci_segment;
  uint32_t pasid;                      // LAST request's PASID, valid if IOPF_GROUP_PASID_VALID
  uint32_t grpid;                      // LAST request's PRGI
  uint32_t cookie;                     // valid if IOPF_GROUP_COOKIE_VALID
  uint16_t rid;                        // PCI requester id (bus << 8 | devfn)
  uint8_t flags;                       // IOPF_GROUP_*
  uint8_t reserved0;
} iopf_plugin_group;

static inline const iopf_plugin_request* iopf_plugin_group_request(const iopf_plugin_group* group,
                                                                   uint32_t index) {
  return (const iopf_plugin_request*)((const char*)group->requests +
                                      (size_t)index * group->request_size);
}

// Completes one deferred group. A plain value: copy the whole struct (it never grows within a
// major version) and call complete(&copy, code) later from any thread.
typedef struct iopf_plugin_completion {
  uint32_t struct_size;
  uint32_t reserved0;
  uint64_t group_id;
  // Returns 1 if this call completed the group, 0 if it was refused: the group was already
  // completed (a second answer), timed out, detached or drained. A code outside IOPF_CODE_* is
  // answered INVALID and counted as an error. MUST NOT be called after the plugin's shutdown
  // returned.
  int32_t (*complete)(const struct iopf_plugin_completion* self, uint32_t code);
  uint64_t opaque[4];  // host-owned state
} iopf_plugin_completion;

// A handler's answer for one group.
typedef struct iopf_plugin_verdict {
  uint32_t kind;  // IOPF_VERDICT_*
  uint32_t code;  // IOPF_CODE_*, for IOPF_VERDICT_RESPOND
} iopf_plugin_verdict;

// One router event, as on the router's event bus (72 bytes, the layout of iopf::Event). Fields
// that do not apply to a type are zero. Consecutive events are `event_size` bytes apart.
typedef struct iopf_plugin_event {
  uint64_t seq;       // router-wide, monotonic; for GAP: the first lost sequence number
  int64_t time_ns;    // router monotonic clock
  uint64_t group;
  uint64_t addr;
  int64_t value;      // type-specific: latency (RESPONDED), ns spent (HANDLER_VERDICT), lost (GAP)
  uint32_t device;
  uint32_t domain;
  uint32_t pasid;     // valid if flags & IOPF_EVENT_PASID_VALID
  uint32_t grpid;
  uint32_t cookie;    // valid if flags & IOPF_EVENT_COOKIE_VALID
  uint8_t type;       // IOPF_EVENT_*
  uint8_t flags;      // IOPF_EVENT_*
  uint8_t perm;
  uint8_t code;       // IOPF_CODE_*
  uint8_t origin;     // iopf::Origin
  uint8_t verdict;    // IOPF_VERDICT_*
  uint16_t handler;   // handler id; name through iopf_plugin_host_api.handler_name
} iopf_plugin_event;

// What the host knows about a device. The caller sets struct_size to sizeof its struct; the host
// fills no more than that.
typedef struct iopf_plugin_device_info {
  uint32_t struct_size;
  uint32_t device;          // router id
  uint64_t backend_handle;
  uint32_t backend;         // router backend id
  uint32_t pci_segment;
  uint32_t pri_allocation;
  uint16_t rid;
  uint8_t pasid_bits;
  uint8_t flags;            // IOPF_DEVICE_*
  char name[64];            // NUL-terminated, truncated
  char backend_name[32];    // NUL-terminated, truncated
} iopf_plugin_device_info;

typedef struct iopf_plugin_domain_info {
  uint32_t struct_size;
  uint32_t domain;
  uint32_t kind;            // 0 paging, 1 nested, 2 sva
  uint32_t reserved0;
  int64_t deadline_ns;
  char name[64];            // NUL-terminated, truncated
} iopf_plugin_domain_info;

// What a backend is (minor 1). The caller sets struct_size; the host fills no more than that.
typedef struct iopf_plugin_backend_info {
  uint32_t struct_size;
  uint32_t backend;         // router backend id
  uint32_t flags;           // IOPF_BACKEND_*
  uint32_t reserved0;
  char name[32];            // NUL-terminated, truncated ("simulated", "iommufd", ...)
} iopf_plugin_backend_info;

// A range a resolver asks the device's backend to make present in the domain's I/O page table
// (minor 1; iopf::MapRequest). The caller sets struct_size to sizeof its struct.
typedef struct iopf_plugin_map_request {
  uint32_t struct_size;
  uint32_t domain;
  uint32_t device;          // router device id: its backend does the mapping
  uint32_t pasid;           // valid if flags & IOPF_MAP_PASID_VALID
  uint64_t iova;
  uint64_t length;
  uint64_t source_va;       // user VA backing the range (iommufd IOAS_MAP), 0 if not applicable
  uint8_t perm;             // IOPF_PERM_* the range is mapped with
  uint8_t flags;            // IOPF_MAP_*
  uint16_t reserved0;
  uint32_t reserved1;
} iopf_plugin_map_request;

// Services of the host, handed to init. The struct and everything it points to stay valid until
// the plugin's shutdown returns. Every function MAY be called from any thread.
typedef struct iopf_plugin_host_api {
  uint32_t struct_size;
  uint16_t abi_major;  // the host's ABI
  uint16_t abi_minor;
  void* ctx;           // pass back as the first argument
  // Logs one message (need not be NUL-terminated). The host rate-limits per plugin.
  void (*log)(void* ctx, uint32_t level, const char* message, size_t length);
  // The router's monotonic clock (the clock of event times and request arrivals).
  int64_t (*now_ns)(void* ctx);
  // Fills *out for a router device id; returns 1 if known, 0 if not.
  int32_t (*device_info)(void* ctx, uint32_t device, iopf_plugin_device_info* out);
  // Writes up to `capacity` device ids into ids; returns how many devices exist.
  uint32_t (*list_devices)(void* ctx, uint32_t* ids, uint32_t capacity);
  int32_t (*domain_info)(void* ctx, uint32_t domain, iopf_plugin_domain_info* out);
  uint32_t (*list_domains)(void* ctx, uint32_t* ids, uint32_t capacity);
  // Copies the handler's name (NUL-terminated, truncated) into buffer; returns its full length,
  // 0 if the id is unknown.
  size_t (*handler_name)(void* ctx, uint32_t handler, char* buffer, size_t capacity);
  // --- minor 1: check struct_size before use ---------------------------------------------------
  // Writes up to `capacity` backend ids into ids; returns how many backends the router has.
  uint32_t (*list_backends)(void* ctx, uint32_t* ids, uint32_t capacity);
  // Fills *out for a router backend id; returns 1 if known, 0 if not.
  int32_t (*backend_info)(void* ctx, uint32_t backend, iopf_plugin_backend_info* out);
  // Asks the backend of request->device to map the range (iopf::Router::map). Returns 1 on success;
  // 0 on failure, with a NUL-terminated reason in `error` if error_capacity > 0 (unknown or removed
  // device, a backend without map(), the backend's own error). Any thread, typically the shard
  // thread inside handle; never blocks on the router.
  int32_t (*map)(void* ctx, const iopf_plugin_map_request* request, char* error, size_t error_capacity);
} iopf_plugin_host_api;

// Per-instance facts handed to create. Valid during the call only.
typedef struct iopf_plugin_instance_info {
  uint32_t struct_size;
  uint32_t domain;
  const char* domain_name;    // NUL-terminated
  const char* config_source;  // where the config came from (a file name), for error messages
} iopf_plugin_instance_info;

// One named counter reported by a plugin.
typedef struct iopf_plugin_counter {
  char name[48];  // NUL-terminated
  uint64_t value;
} iopf_plugin_counter;

// What the entry point returns: static, immutable, valid while the library is loaded (the host
// never unloads a plugin library).
typedef struct iopf_plugin_descriptor {
  // --- frozen prefix: the same in every ABI version, read before anything else ---------------
  uint32_t struct_size;
  uint16_t abi_major;  // IOPF_PLUGIN_ABI_MAJOR the plugin was built against
  uint16_t abi_minor;  // IOPF_PLUGIN_ABI_MINOR the plugin was built against
  uint64_t abi_hash;   // IOPF_PLUGIN_ABI_HASH the plugin was built against

  // --- identity (NUL-terminated; MUST equal the sidecar's) ------------------------------------
  const char* id;                  // [a-z0-9_]+, also the file names: <id>.so, <id>.json
  const char* name;                // human-readable
  const char* version;             // the plugin's own version, "1.2.0"
  const char* description;
  const char* config_type;         // protobuf message of an instance's config, "" = none
  const char* plugin_config_type;  // protobuf message of the plugin-wide config, "" = none
  uint32_t capabilities;           // IOPF_PLUGIN_CAP_*
  uint32_t reserved0;

  // --- lifecycle: init -> post_init -> ... -> shutdown, control thread ------------------------
  // Called once after loading. `config_json` is the plugin-wide config (JSON of
  // plugin_config_type, "{}" if none was given). On success stores the plugin's opaque state in
  // *plugin and returns IOPF_PLUGIN_OK; on failure writes a NUL-terminated message into `error`
  // (at most error_capacity bytes) and returns IOPF_PLUGIN_FAILED, and the host never calls the
  // plugin again. MUST NOT start threads that call into the host before post_init.
  int32_t (*init)(const iopf_plugin_host_api* host, const char* config_json, size_t config_length,
                  void** plugin, char* error, size_t error_capacity);
  // Called once when the host starts (after every plugin's init): start background work here.
  // A failure is reported like init's; the host then calls shutdown.
  int32_t (*post_init)(void* plugin, char* error, size_t error_capacity);
  // Called once, last: after every instance was destroyed and events stopped. MUST stop every
  // thread of the plugin and release everything; MUST return within the host's shutdown time
  // limit (the host abandons it otherwise and reports it).
  void (*shutdown)(void* plugin);

  // --- handler instances (IOPF_PLUGIN_CAP_HANDLER), control thread ----------------------------
  // Creates one handler instance for one domain from that domain's config (JSON of config_type).
  // Validates the config: on failure writes a message naming the field and info->config_source
  // and returns IOPF_PLUGIN_FAILED.
  int32_t (*create)(void* plugin, const iopf_plugin_instance_info* info, const char* config_json,
                    size_t config_length, void** instance, char* error, size_t error_capacity);
  // Destroys an instance. No handle call of it is in flight or will follow. Deferred
  // completions it issued MAY still be used until shutdown.
  void (*destroy)(void* plugin, void* instance);
  // Decides about one group (shard thread; see the threading contract above). MUST NOT throw,
  // MUST NOT block: slow work belongs behind IOPF_VERDICT_DEFER. The host measures the call
  // against the instance's budget. `completion` is valid for this group only; copy it to defer.
  iopf_plugin_verdict (*handle)(void* instance, const iopf_plugin_group* group,
                                const iopf_plugin_completion* completion);

  // --- events (IOPF_PLUGIN_CAP_EVENTS), host reader thread ------------------------------------
  // Receives every router event in sequence order, in batches, from post_init until shutdown
  // (with GAP markers for events the reader lost). Runs off the routing path: however long it
  // takes, routing never waits for it (the reader falls behind and loses events instead).
  void (*on_events)(void* plugin, const iopf_plugin_event* events, uint32_t count,
                    uint32_t event_size);

  // --- observation, any thread ---------------------------------------------------------------
  // Writes up to `capacity` counters into out; returns how many the plugin has. MAY be NULL.
  uint32_t (*counters)(void* plugin, iopf_plugin_counter* out, uint32_t capacity);
} iopf_plugin_descriptor;

// The exported entry point, named IOPF_PLUGIN_ENTRY_SYMBOL. MUST NOT fail or allocate on each call.
typedef const iopf_plugin_descriptor* (*iopf_plugin_entry_fn)(void);

#ifdef __cplusplus
}  // extern "C"
#endif
