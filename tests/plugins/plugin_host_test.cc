// The plugin host with the real fixture plugins, loaded by path: ABI checks, discovery without
// loading code, permission refusals, lifecycle order, what crosses the ABI, config errors.
#include "iopf/plugin_host.h"

#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>

#include "absl/strings/str_format.h"
#include "iopf/plugin_abi.h"
#include "iopf/plugin_abi_hash.h"
#include "plugin_test_util.h"

namespace iopf {
namespace {

using testing::copyPlugin;
using testing::readFile;
using testing::Reports;
using testing::RouterRig;
using testing::TempDir;
using testing::writeFile;

const std::string kFixtureDir = IOPF_FIXTURE_PLUGIN_DIR;
const std::string kGood = IOPF_FIXTURE_GOOD;
const std::string kOldAbi = IOPF_FIXTURE_OLD_ABI;
const std::string kBadHash = IOPF_FIXTURE_BAD_HASH;
const std::string kInitFails = IOPF_FIXTURE_INIT_FAILS;
const std::string kSlow = IOPF_FIXTURE_SLOW;
const std::string kThrows = IOPF_FIXTURE_THROWS;

std::string hostHash() { return absl::StrFormat("%016x", IOPF_PLUGIN_ABI_HASH); }

std::string oldAbiMessage(const std::string& file) {
  return "plugin 'old_abi' (" + file +
         "): built for plugin ABI 0.7, this host implements ABI 1.1: the major version must be "
         "equal; rebuild the plugin against this host's SDK";
}
std::string badHashMessage(const std::string& file) {
  return "plugin 'bad_hash' (" + file +
         "): built for plugin ABI 1.1 with ABI hash 0123456789abcdef, this host implements ABI 1.1 "
         "and expects hash " + hostHash() + " for 1.1: the plugin was built against a different plugin_abi.h";
}

bool mapped(const std::string& library) {
  void* h = ::dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);
  return h != nullptr;
}

// Budgets are far beyond any scheduling delay here: only the tests about budgets set small ones.
PluginHostOptions options(Reports& reports) {
  PluginHostOptions o;
  o.report = reports.sink();
  o.call_budget_ns = testing::kGenerousBudgetNs;
  return o;
}

TEST(PluginAbi, HostAbiIsTheHeadersAndTheBuildTimeHash) {
  const PluginAbi abi = hostPluginAbi();
  EXPECT_EQ(abi.major, 1u);
  EXPECT_EQ(abi.major, IOPF_PLUGIN_ABI_MAJOR);
  EXPECT_EQ(abi.minor, IOPF_PLUGIN_ABI_MINOR);
  EXPECT_EQ(abi.hash, IOPF_PLUGIN_ABI_HASH);
  EXPECT_NE(abi.hash, 0u);
  // The sidecar of a plugin built in this tree carries the same hash.
  EXPECT_NE(readFile(kFixtureDir + "/good.json").find("\"hash\": \"" + hostHash() + "\""), std::string::npos);
}

TEST(PluginAbi, MajorMinorAndHashRulesNameThePluginTheFileAndBothVersions) {
  const PluginAbi host = hostPluginAbi();
  EXPECT_TRUE(checkPluginAbi("p", "/x/p.so", host).ok());
  absl::Status s = checkPluginAbi("p", "/x/p.so", {2, 0, host.hash});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(),
            "plugin 'p' (/x/p.so): built for plugin ABI 2.0, this host implements ABI 1.1: the major "
            "version must be equal; rebuild the plugin against this host's SDK");
  s = checkPluginAbi("p", "/x/p.so", {1, 3, host.hash});
  EXPECT_EQ(s.message(),
            "plugin 'p' (/x/p.so): built for plugin ABI 1.3, this host implements ABI 1.1: the plugin "
            "needs a newer host (its minor 3 > the host's 1)");
  s = checkPluginAbi("p", "/x/p.so", {1, 1, 0x42});
  EXPECT_EQ(s.message(), "plugin 'p' (/x/p.so): built for plugin ABI 1.1 with ABI hash 0000000000000042, "
                         "this host implements ABI 1.1 and expects hash " + hostHash() +
                         " for 1.1: the plugin was built against a different plugin_abi.h");
  // A plugin built against ABI 1.0 (before map() and the backend lookups) still loads.
  EXPECT_TRUE(checkPluginAbi("p", "/x/p.so", {1, 0, 0x3fd1ed302b5a5a01}).ok());
  s = checkPluginAbi("p", "/x/p.so", {1, 0, host.hash});
  EXPECT_EQ(s.message(), "plugin 'p' (/x/p.so): built for plugin ABI 1.0 with ABI hash " + hostHash() +
                         ", this host implements ABI 1.1 and expects hash 3fd1ed302b5a5a01 for 1.0: the "
                         "plugin was built against a different plugin_abi.h");
}

TEST(PluginDiscovery, ReadsEverySidecarWithoutLoadingCode) {
  Reports reports;
  PluginHostOptions o = options(reports);
  o.search_paths = {kFixtureDir};
  PluginHost host(nullptr, o);
  const std::vector<PluginCandidate> found = host.discover();
  std::map<std::string, PluginCandidate> by_id;
  for (const auto& c : found) by_id[c.id] = c;
  ASSERT_EQ(by_id.size(), 7u);
  for (const char* id : {"good", "old_abi", "bad_hash", "init_fails", "slow", "throws", "defers"}) {
    ASSERT_EQ(by_id.count(id), 1u) << id;
  }
  const PluginCandidate& good = by_id["good"];
  EXPECT_TRUE(good.status.ok()) << good.status;
  EXPECT_EQ(good.name, "Good fixture");
  EXPECT_EQ(good.version, "1.2.3");
  EXPECT_EQ(good.description, "Answers with a configured code and records what it saw (\"quoted\" text)");
  EXPECT_EQ(good.config_type, "iopf.fixtures.good.GoodConfig");
  EXPECT_EQ(good.config_proto, "tests/fixtures/plugins/good.proto");
  EXPECT_EQ(good.library_path, kGood);
  EXPECT_EQ(good.abi.major, 1u);
  EXPECT_EQ(good.abi.hash, IOPF_PLUGIN_ABI_HASH);
  EXPECT_EQ(by_id["slow"].plugin_config_type, "iopf.fixtures.slow.SlowPluginConfig");

  EXPECT_EQ(by_id["old_abi"].status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(by_id["old_abi"].status.message(), oldAbiMessage(kOldAbi));
  EXPECT_EQ(by_id["bad_hash"].status.message(), badHashMessage(kBadHash));
  for (const char* id : {"init_fails", "slow", "throws", "defers"}) EXPECT_TRUE(by_id[id].status.ok()) << id;
  // Both refusals were reported, and neither library was mapped into the process.
  EXPECT_EQ(reports.messages(PluginReportKind::kRefused),
            (std::vector<std::string>{badHashMessage(kBadHash), oldAbiMessage(kOldAbi)}));
  EXPECT_FALSE(mapped(kOldAbi));
  EXPECT_FALSE(mapped(kBadHash));

  // Loading a refused plugin is refused with the same message, still without loading it.
  absl::Status s = host.load("old_abi");
  EXPECT_EQ(s.message(), oldAbiMessage(kOldAbi));
  EXPECT_EQ(host.load("missing").message(), "plugin 'missing' was not found in the plugin directories");
  EXPECT_FALSE(mapped(kOldAbi));
}

TEST(PluginLoad, RefusesOldAbiAndBadHashByPath) {
  Reports reports;
  PluginHost host(nullptr, options(reports));
  absl::Status s = host.loadFile(kOldAbi);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), oldAbiMessage(kOldAbi));
  s = host.loadFile(kBadHash);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), badHashMessage(kBadHash));
  EXPECT_FALSE(mapped(kOldAbi));
  EXPECT_FALSE(mapped(kBadHash));
  EXPECT_TRUE(host.status().empty());
  // The host goes on: a good plugin loads after the refusals.
  EXPECT_TRUE(host.loadFile(kGood).ok());
  ASSERT_EQ(host.status().size(), 1u);
}

TEST(PluginLoad, TheLibrarysOwnDescriptorIsCheckedAfterLoading) {
  // A sidecar that lies (claims the host's ABI) does not get old code past the host: the
  // descriptor in the library is checked too.
  TempDir dir;
  const std::string lib = copyPlugin(kOldAbi, dir.path());
  std::string json = readFile(dir.file("old_abi.json"));
  json.replace(json.find("\"major\": 0, \"minor\": 7"), 22, "\"major\": 1, \"minor\": 1");
  json.replace(json.find("\"hash\": \""), 9 + 16, "\"hash\": \"" + hostHash());
  writeFile(dir.file("old_abi.json"), json);
  Reports reports;
  PluginHost host(nullptr, options(reports));
  absl::Status s = host.loadFile(lib);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), oldAbiMessage(lib));

  // A stale sidecar (another version than the library) is refused before init runs.
  const std::string lib2 = copyPlugin(kInitFails, dir.path());
  std::string json2 = readFile(dir.file("init_fails.json"));
  json2.replace(json2.find("\"version\": \""), 12 + 5, "\"version\": \"9.9.9");
  writeFile(dir.file("init_fails.json"), json2);
  s = host.loadFile(lib2);
  EXPECT_EQ(s.message(), "plugin 'init_fails' (" + lib2 +
                             "): descriptor version '0.1.0' differs from the sidecar's '9.9.9'");
  EXPECT_TRUE(reports.messages(PluginReportKind::kLog).empty());  // init never ran
}

TEST(PluginLoad, RefusesWorldWritableDirectoriesAndFiles) {
  TempDir dir;
  const std::string lib = copyPlugin(kGood, dir.path());
  Reports reports;
  PluginHostOptions o = options(reports);
  o.search_paths = {dir.path()};
  PluginHost host(nullptr, o);

  ASSERT_EQ(::chmod(dir.path().c_str(), 0777), 0);
  const std::string dir_message = "plugin directory '" + dir.path() +
                                  "' is world-writable (mode 0777): refused, anyone could replace plugin code";
  EXPECT_TRUE(host.discover().empty());
  EXPECT_EQ(reports.messages(PluginReportKind::kRefused), std::vector<std::string>{dir_message});
  absl::Status s = host.loadFile(lib);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(), dir_message);

  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  ASSERT_EQ(::chmod(lib.c_str(), 0666), 0);
  std::vector<PluginCandidate> found = host.discover();
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].status.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(found[0].status.message(), "plugin library '" + lib +
                                           "' is world-writable (mode 0666): refused, anyone could replace plugin code");
  EXPECT_EQ(host.loadFile(lib).message(), found[0].status.message());

  ASSERT_EQ(::chmod(lib.c_str(), 0755), 0);
  ASSERT_EQ(::chmod(dir.file("good.json").c_str(), 0646), 0);
  found = host.discover();
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].status.message(), "plugin sidecar '" + dir.file("good.json") +
                                           "' is world-writable (mode 0646): refused, anyone could replace plugin code");
  EXPECT_FALSE(mapped(lib));
  EXPECT_TRUE(host.status().empty());
}

TEST(PluginLoad, BrokenSidecarsAreReportedWithTheirFile) {
  TempDir dir;
  writeFile(dir.file("broken.json"), "{\"id\": \"broken\", ");
  writeFile(dir.file("named.json"), "{\"id\": \"other\", \"library\": \"named.so\", \"abi\": {\"hash\": \"00\"}}");
  Reports reports;
  PluginHostOptions o = options(reports);
  o.search_paths = {dir.path(), dir.path() + "/missing"};
  PluginHost host(nullptr, o);
  EXPECT_TRUE(host.discover().empty());
  const auto refused = reports.messages(PluginReportKind::kRefused);
  ASSERT_EQ(refused.size(), 3u);
  EXPECT_EQ(refused[0].rfind("plugin sidecar '" + dir.file("broken.json") + "': ", 0), 0u) << refused[0];
  EXPECT_EQ(refused[1], "plugin sidecar '" + dir.file("named.json") +
                            "': field 'id' is 'other' but the file is named 'named.json'");
  EXPECT_EQ(refused[2], "plugin directory '" + dir.path() + "/missing' does not exist");
}

TEST(PluginLifecycle, InitFailsIsReportedAndTheHostGoesOn) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  const std::string message = "plugin 'init_fails' (" + kInitFails +
                              "): init failed: cannot open /dev/fixture-device: no such device (fixture)";
  absl::Status s = host.loadFile(kInitFails);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), message);
  EXPECT_EQ(reports.messages(PluginReportKind::kFailed, "init_fails"), std::vector<std::string>{message});
  std::optional<PluginStatus> st = host.status("init_fails");
  ASSERT_TRUE(st);
  EXPECT_EQ(st->state, PluginState::kFailed);
  EXPECT_EQ(st->error, message);
  absl::StatusOr<std::shared_ptr<Handler>> h = host.createHandler("init_fails", rig.domain);
  EXPECT_EQ(h.status().message(), "plugin 'init_fails' is failed: " + message);
  EXPECT_EQ(host.loadFile(kInitFails).code(), absl::StatusCode::kAlreadyExists);

  EXPECT_TRUE(host.loadFile(kGood).ok());
  EXPECT_TRUE(host.start().ok());
  EXPECT_EQ(host.status("good")->state, PluginState::kRunning);
  host.shutdown();
  EXPECT_EQ(host.status("good")->state, PluginState::kShutDown);
  EXPECT_EQ(host.status("init_fails")->state, PluginState::kFailed);
}

TEST(PluginLifecycle, InitCreatePostInitDestroyShutdownInOrder) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kGood).ok());
  EXPECT_EQ(host.status("good")->state, PluginState::kLoaded);
  PluginHandlerConfig config;
  config.json = R"({"answer": "success"})";
  config.source = "domains/host.json";
  absl::StatusOr<std::shared_ptr<Handler>> h = host.createHandler("good", rig.domain, config);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(host.start().ok());
  EXPECT_EQ(host.status("good")->state, PluginState::kRunning);
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*h}).ok());
  rig.group(1, 0x1000);
  ASSERT_EQ(rig.backend.responseCount(), 1u);
  EXPECT_EQ(rig.backend.responses()[0].code, ResponseCode::kSuccess);
  EXPECT_EQ(rig.backend.responses()[0].origin, Origin::kHandler);
  rig.router->shutdown();
  host.shutdown();
  host.shutdown();  // idempotent
  EXPECT_EQ(reports.messages(PluginReportKind::kLog, "good"),
            (std::vector<std::string>{"init", "create domain=1 name=host", "post_init", "destroy domain=1",
                                      "shutdown"}));
  EXPECT_EQ(reports.messages(PluginReportKind::kLoaded),
            std::vector<std::string>{"plugin 'good' 1.2.3 loaded from " + kGood + " (ABI 1.1)"});
  EXPECT_EQ(host.status("good")->state, PluginState::kShutDown);
  // A handler still held by a chain after shutdown passes groups on and never reaches the plugin.
  GroupView view;
  EXPECT_EQ((*h)->handle(view, CompletionHandle()).kind, Verdict::Kind::kContinue);
}

TEST(PluginLifecycle, ShutdownOverItsTimeLimitIsAbandonedAndReported) {
  Reports reports;
  PluginHostOptions o = options(reports);
  o.shutdown_timeout_ns = 20'000'000;
  PluginHost host(nullptr, o);
  ASSERT_TRUE(host.loadFile(kSlow, R"({"shutdown_sleep_ms": 300})").ok());
  ASSERT_TRUE(host.start().ok());
  host.shutdown();
  EXPECT_EQ(reports.messages(PluginReportKind::kShutdownTimeout, "slow"),
            std::vector<std::string>{"plugin 'slow' (" + kSlow +
                                     "): shutdown did not return within 20 ms; abandoned"});
  EXPECT_EQ(host.status("slow")->state, PluginState::kShutDown);
  // Let the abandoned shutdown finish before the process goes on (keeps the leak checker calm).
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
}

TEST(PluginHandlers, TheGroupCrossesTheAbiIntact) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kGood).ok());
  ASSERT_TRUE(host.start().ok());
  auto h = host.createHandler("good", rig.domain);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*h}).ok());
  ASSERT_TRUE(rig.router->attach(rig.device, 7u, rig.domain).ok());
  std::vector<PageRequest> group{
      rig.request(5, 0x7000'1234, false, perm::kRead, 7u, 11u),
      rig.request(5, 0x7000'2000, false, perm::kRead | perm::kWrite, 7u, 12u),
      rig.request(5, 0x7000'3000, true, perm::kRead, 7u, 13u),
  };
  rig.backend.sink().deliver(group);
  rig.router->runUntilIdle();
  ASSERT_EQ(rig.backend.responseCount(), 1u);
  const Response r = rig.backend.responses()[0];
  EXPECT_EQ(r.code, ResponseCode::kSuccess);
  auto c = [&](const char* name) { return host.counter("good", name).value_or(~0ull); };
  EXPECT_EQ(c("groups"), 1u);
  EXPECT_EQ(c("requests"), 3u);
  EXPECT_EQ(c("last_group"), r.group);
  EXPECT_EQ(c("last_domain"), rig.domain);
  EXPECT_EQ(c("last_device"), rig.device);
  EXPECT_EQ(c("last_backend_handle"), 42u);
  EXPECT_EQ(c("last_rid"), 0x0300u);
  EXPECT_EQ(c("last_pasid"), 7u + 1);
  EXPECT_EQ(c("last_grpid"), 5u);
  EXPECT_EQ(c("last_cookie"), 13u + 1);
  EXPECT_EQ(c("last_needs_pasid"), 1u);
  EXPECT_EQ(c("last_request_count"), 3u);
  EXPECT_EQ(c("first_addr"), 0x7000'1234u);
  EXPECT_EQ(c("last_addr"), 0x7000'3000u);
  EXPECT_EQ(c("write_requests"), 1u);
  EXPECT_EQ(c("last_flags_ok"), 1u);
  EXPECT_EQ(c("sdk_handler_exceptions"), 0u);
  rig.router->shutdown();
}

TEST(PluginHandlers, ConfigIsTypedAndErrorsNameTheFieldAndTheSource) {
  Reports reports;
  RouterRig rig;
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kGood).ok());
  PluginHandlerConfig config;
  config.source = "domains/host.json";
  config.json = R"({"answer": "maybe"})";
  auto h = host.createHandler("good", rig.domain, config);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.status().message(),
            "plugin 'good', domain 1 'host': config 'domains/host.json': field 'answer' must be success, "
            "invalid, failure or continue, got 'maybe'");
  config.json = R"({"anser": "success"})";
  h = host.createHandler("good", rig.domain, config);
  const std::string prefix =
      "plugin 'good', domain 1 'host': config 'domains/host.json' of domain 'host': invalid "
      "iopf.fixtures.good.GoodConfig: ";
  EXPECT_EQ(h.status().message().substr(0, prefix.size()), prefix) << h.status();
  EXPECT_NE(h.status().message().find("anser"), std::string::npos) << h.status();
  // Plugin-wide configs are typed too; a plugin without a config message refuses one.
  absl::Status s = host.loadFile(kSlow, R"({"shutdown_sleep_ms": "x"})");
  const std::string slow_prefix = "plugin 'slow' (" + kSlow +
                                  "): init failed: plugin config: invalid iopf.fixtures.slow.SlowPluginConfig: ";
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message().substr(0, slow_prefix.size()), slow_prefix) << s;
  s = host.loadFile(kThrows, R"({"verbose": true})");
  EXPECT_EQ(s.message(), "plugin 'throws' (" + kThrows + "): init failed: plugin config: this plugin takes no configuration");
  // Typed config reaches the instance.
  config.json = R"({"answer": "failure"})";
  h = host.createHandler("good", rig.domain, config);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_TRUE(rig.router->setChain(rig.domain, {*h}).ok());
  rig.group(1, 0x1000);
  ASSERT_EQ(rig.backend.responseCount(), 1u);
  EXPECT_EQ(rig.backend.responses()[0].code, ResponseCode::kFailure);
  rig.router->shutdown();
}

TEST(PluginHandlers, OneInstancePerDomain) {
  Reports reports;
  RouterRig rig;
  DomainSpec other;
  other.name = "guest";
  const DomainId second = *rig.router->addDomain(other);
  PluginHost host(rig.router.get(), options(reports));
  ASSERT_TRUE(host.loadFile(kGood).ok());
  auto a = host.createHandler("good", rig.domain);
  ASSERT_TRUE(a.ok());
  auto dup = host.createHandler("good", rig.domain);
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(dup.status().message(), "plugin 'good' already has a handler for domain 1 (one instance per domain)");
  auto b = host.createHandler("good", second);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(host.status("good")->handlers.size(), 2u);
  a->reset();  // the chain let go: the instance is destroyed and the domain may get a new one
  EXPECT_EQ(reports.messages(PluginReportKind::kLog, "good").back(), "destroy domain=1");
  EXPECT_EQ(host.status("good")->handlers.size(), 1u);
  EXPECT_TRUE(host.createHandler("good", rig.domain).ok());
  EXPECT_EQ(host.createHandler("nope", rig.domain).status().message(), "plugin 'nope' is not loaded");
}

TEST(PluginLoad, ASecondCopyOfAConfigProtoIsRefusedInsteadOfAborting) {
  Reports reports;
  PluginHost host(nullptr, options(reports));
  ASSERT_TRUE(host.loadFile(kSlow).ok());
  TempDir dir;
  std::filesystem::copy_file(kSlow, dir.file("slow_copy.so"));
  std::string json = readFile(std::filesystem::path(kSlow).replace_extension(".json").string());
  json.replace(json.find("\"id\": \"slow\""), 12, "\"id\": \"slow_copy\"");
  json.replace(json.find("\"library\": \"slow.so\""), 20, "\"library\": \"slow_copy.so\"");
  writeFile(dir.file("slow_copy.json"), json);
  absl::Status s = host.loadFile(dir.file("slow_copy.so"));
  EXPECT_EQ(s.message(), "plugin 'slow_copy' (" + dir.file("slow_copy.so") +
                             "): its config proto 'tests/fixtures/plugins/slow.proto' is already registered "
                             "in this process (by the host or another plugin); loading it would abort");
  EXPECT_FALSE(mapped(dir.file("slow_copy.so")));
  // A second host in the same process may load the same library again.
  PluginHost again(nullptr, options(reports));
  EXPECT_TRUE(again.loadFile(kSlow).ok());
}

}  // namespace
}  // namespace iopf
