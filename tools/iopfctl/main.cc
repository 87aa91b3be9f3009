// iopfctl — command-line client of iopfd (iopf.v1.Router).
//
// Exit codes: 0 done; 1 the daemon refused the request; 2 usage error; 3 the daemon is unreachable.
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cinttypes>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "google/protobuf/util/json_util.h"
#include "iopf/api/health_client.h"
#include "iopf/v1/router.grpc.pb.h"

namespace {

constexpr int kRefused = 1, kUsage = 2, kUnreachable = 3;
constexpr char kDefaultAddr[] = "unix:/run/iopf/iopfd.sock";

const char* kHelp =
    "usage: iopfctl [--connect ADDR] [--json] [--timeout SECONDS] [--tls-ca FILE] [--token-file FILE] COMMAND\n"
    "commands:\n"
    "  status                         daemon, router and health summary\n"
    "  devices | domains | attachments\n"
    "  outstanding [--domain N] [--device N] [--pasid N] [--min-age-ms N] [--limit N]\n"
    "  group ID                       one group: requests, transitions, handler trace\n"
    "  watch [--since SEQ] [--filter EXPR] [--count N] [--seconds S] [--max-batch N]\n"
    "        EXPR: comma-separated key=value: type=responded|request|…, domain=N, device=N, pasid=N, group=N\n"
    "  respond ID success|invalid [--reason TEXT]\n"
    "  pause DOMAIN | resume DOMAIN   hold the domain's new groups (deadlines still run) / release them\n"
    "  run-scenario PATH              add a scenario's devices to the running simulation (PATH on the\n"
    "                                 daemon's host, relative to its config file's directory)\n"
    "  stats | plugins | health | reload\n"
    "ADDR: unix:PATH (default $IOPF_ADDR or unix:/run/iopf/iopfd.sock) or HOST:PORT (TLS)\n";

struct Options {
  std::string addr;
  bool json = false;
  double timeout_s = 5;
  std::string tls_ca, token;
  std::vector<std::string> args;  // command and its arguments
  std::map<std::string, std::string> flags;
};

[[noreturn]] void usageError(const std::string& what) {
  std::fprintf(stderr, "iopfctl: %s\n%s", what.c_str(), kHelp);
  std::exit(kUsage);
}

std::string readFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) usageError("cannot read '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

int fail(const grpc::Status& st) {
  const bool unreachable =
      st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
  std::fprintf(stderr, "iopfctl: %s: %s\n", unreachable ? "daemon unreachable" : "request refused",
               st.error_message().c_str());
  return unreachable ? kUnreachable : kRefused;
}

class Client {
 public:
  explicit Client(const Options& o) : o_(o) {
    std::shared_ptr<grpc::ChannelCredentials> creds;
    if (o.addr.rfind("unix:", 0) == 0) {
      creds = grpc::experimental::LocalCredentials(UDS);
    } else {
      grpc::SslCredentialsOptions ssl;
      if (!o.tls_ca.empty()) ssl.pem_root_certs = readFile(o.tls_ca);
      creds = grpc::SslCredentials(ssl);
    }
    channel_ = grpc::CreateChannel(o.addr, creds);
    stub_ = iopf::v1::Router::NewStub(channel_);
  }
  std::unique_ptr<grpc::ClientContext> context(bool unary = true) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (unary) {
      ctx->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(o_.timeout_s * 1000)));
    }
    if (!o_.token.empty()) ctx->AddMetadata("authorization", "Bearer " + o_.token);
    return ctx;
  }
  iopf::v1::Router::Stub& stub() { return *stub_; }
  grpc::Channel& channel() { return *channel_; }

 private:
  const Options& o_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<iopf::v1::Router::Stub> stub_;
};

std::string toJson(const google::protobuf::Message& m, bool pretty) {
  std::string out;
  google::protobuf::util::JsonPrintOptions po;
  po.add_whitespace = pretty;
  po.always_print_primitive_fields = true;
  po.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &out, po);
  if (!pretty) return out;
  return out;
}

std::string rid(uint32_t r) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%02x:%02x.%x", (r >> 8) & 0xff, (r >> 3) & 0x1f, r & 7);
  return buf;
}

std::string codeName(int c) { return c == 0 ? "success" : c == 1 ? "invalid" : "failure"; }

std::string originName(int o) {
  static const char* names[] = {"handler", "default", "timeout", "detach", "operator",
                                "shutdown", "overload", "no-domain", "handler-error"};
  return o >= 0 && o < 9 ? names[o] : "?";
}

std::string eventName(int t) {
  const auto* d = iopf::v1::EventType_descriptor()->FindValueByNumber(t);
  std::string n = d ? d->name() : "?";
  if (n.rfind("EVENT_", 0) == 0) n = n.substr(6);
  for (char& c : n) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return n;
}

uint64_t number(const std::string& s, const std::string& what) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 0);
  if (s.empty() || *end != '\0') usageError(what + ": '" + s + "' is not a number");
  return v;
}

// grpc.health.v1.Health/Check for iopf.v1.Router.
int health(Client& c, const Options& o) {
  auto status = iopf::api::checkHealth(c.channel().shared_from_this(), "iopf.v1.Router",
                                           std::chrono::milliseconds(static_cast<int64_t>(o.timeout_s * 1000)));
  if (!status.ok()) {
    return fail(grpc::Status(static_cast<grpc::StatusCode>(status.status().code()),
                             std::string(status.status().message())));
  }
  const char* name = iopf::api::toString(*status);
  if (o.json) {
    std::printf("{\"service\":\"iopf.v1.Router\",\"status\":\"%s\"}\n", name);
  } else {
    std::printf("iopf.v1.Router: %s\n", name);
  }
  return *status == iopf::api::HealthStatus::kServing ? 0 : kRefused;
}

void printGroupLine(const iopf::v1::Group& g) {
  std::printf("%-10" PRIu64 " %-6u %-8s %-6u %-6s %-5u %-10s %-9.3f %-4u 0x%" PRIx64 "\n", g.id(), g.device(),
              rid(g.rid()).c_str(), g.domain(), g.has_pasid() ? std::to_string(g.pasid()).c_str() : "-", g.grpid(),
              iopf::v1::GroupState_Name(g.state()).substr(12).c_str(), static_cast<double>(g.age_ns()) / 1e6,
              static_cast<uint32_t>(g.requests_size()), g.requests_size() ? g.requests(0).addr() : 0);
}

int run(Options& o) {
  if (o.args.empty()) usageError("no command");
  Client c(o);
  const std::string cmd = o.args[0];
  auto flag = [&](const std::string& n) -> std::optional<std::string> {
    auto it = o.flags.find(n);
    if (it == o.flags.end()) return std::nullopt;
    return it->second;
  };
  auto print = [&](const google::protobuf::Message& m) { std::printf("%s\n", toJson(m, true).c_str()); };

  if (cmd == "status") {
    iopf::v1::Info info;
    iopf::v1::Stats stats;
    auto ctx = c.context();
    if (auto st = c.stub().GetInfo(ctx.get(), {}, &info); !st.ok()) return fail(st);
    auto ctx2 = c.context();
    if (auto st = c.stub().GetStats(ctx2.get(), {}, &stats); !st.ok()) return fail(st);
    if (o.json) {
      std::printf("{\"info\":%s,\"stats\":%s}\n", toJson(info, false).c_str(), toJson(stats, false).c_str());
      return 0;
    }
    std::printf("iopfd %s (%s), up %.1f s, %u shards, config generation %" PRIu64 "%s\n", info.daemon_version().c_str(),
                info.api_version().c_str(), static_cast<double>(info.uptime_ns()) / 1e9, info.shards(),
                info.config_generation(), info.draining() ? ", DRAINING" : "");
    std::printf("backends:");
    for (const auto& b : info.backends()) std::printf(" %s", b.c_str());
    std::printf("\nrequests %" PRIu64 ", groups %" PRIu64 ", responses %" PRIu64 ", open %" PRIu64
                ", refused completions %" PRIu64 "\n",
                stats.requests(), stats.groups(), stats.responses(), stats.open_groups(), stats.refused_completions());
    std::printf("by origin:");
    for (const auto& [k, v] : stats.responses_by_origin()) std::printf(" %s=%" PRIu64, k.c_str(), v);
    std::printf("\nlatency: p50 %.1f us, p99 %.1f us, max %.1f us\n", stats.latency().p50_ns() / 1e3,
                stats.latency().p99_ns() / 1e3, stats.latency().max_ns() / 1e3);
    std::printf("events: next seq %" PRIu64 ", oldest held %" PRIu64 "\n", info.event_head_seq(), info.event_oldest_seq());
    return 0;
  }
  if (cmd == "devices") {
    iopf::v1::ListDevicesResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().ListDevices(ctx.get(), {}, &r); !st.ok()) return fail(st);
    if (o.json) return print(r), 0;
    std::printf("%-5s %-20s %-10s %-8s %-8s %-6s %-6s %-11s\n", "ID", "NAME", "BACKEND", "HANDLE", "RID", "PRI", "PASID",
                "OUTSTANDING");
    for (const auto& d : r.devices()) {
      std::printf("%-5u %-20s %-10s %-8" PRIu64 " %-8s %-6u %-6u %-11" PRIu64 "%s\n", d.id(), d.name().c_str(),
                  d.backend().c_str(), d.backend_handle(), rid(d.rid()).c_str(), d.pri_allocation(), d.pasid_bits(),
                  d.outstanding_requests(), d.removed() ? " (removed)" : "");
    }
    return 0;
  }
  if (cmd == "domains") {
    iopf::v1::ListDomainsResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().ListDomains(ctx.get(), {}, &r); !st.ok()) return fail(st);
    if (o.json) return print(r), 0;
    std::printf("%-5s %-20s %-7s %-10s %-6s %-6s %s\n", "ID", "NAME", "KIND", "DEADLINE", "SHARD", "OPEN", "CHAIN");
    for (const auto& d : r.domains()) {
      std::string chain;
      for (const auto& h : d.chain()) chain += (chain.empty() ? "" : " → ") + h;
      std::printf("%-5u %-20s %-7s %-10s %-6u %-6" PRIu64 " %s%s\n", d.id(), d.name().c_str(), d.kind().c_str(),
                  (std::to_string(d.deadline_ns() / 1000000) + "ms").c_str(), d.shard(), d.open_groups(),
                  chain.c_str(), d.removed() ? " (removed)" : "");
    }
    return 0;
  }
  if (cmd == "attachments") {
    iopf::v1::ListAttachmentsResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().ListAttachments(ctx.get(), {}, &r); !st.ok()) return fail(st);
    if (o.json) return print(r), 0;
    std::printf("%-7s %-7s %-7s %s\n", "DEVICE", "PASID", "DOMAIN", "EPOCH");
    for (const auto& a : r.attachments()) {
      std::printf("%-7u %-7s %-7u %" PRIu64 "\n", a.device(), a.has_pasid() ? std::to_string(a.pasid()).c_str() : "RID",
                  a.domain(), a.epoch());
    }
    return 0;
  }
  if (cmd == "outstanding") {
    iopf::v1::ListOutstandingRequest req;
    if (auto v = flag("domain")) req.set_domain(static_cast<uint32_t>(number(*v, "--domain")));
    if (auto v = flag("device")) req.set_device(static_cast<uint32_t>(number(*v, "--device")));
    if (auto v = flag("pasid")) req.set_pasid(static_cast<uint32_t>(number(*v, "--pasid")));
    if (auto v = flag("min-age-ms")) req.set_min_age_ns(static_cast<int64_t>(number(*v, "--min-age-ms")) * 1000000);
    const uint64_t limit = flag("limit") ? number(*flag("limit"), "--limit") : UINT64_MAX;
    iopf::v1::ListOutstandingResponse all;
    for (;;) {
      iopf::v1::ListOutstandingResponse page;
      auto ctx = c.context();
      if (auto st = c.stub().ListOutstanding(ctx.get(), req, &page); !st.ok()) return fail(st);
      for (auto& g : *page.mutable_groups()) {
        if (static_cast<uint64_t>(all.groups_size()) < limit) *all.add_groups() = std::move(g);
      }
      if (page.next_page_token() == 0 || static_cast<uint64_t>(all.groups_size()) >= limit) break;
      req.set_page_token(page.next_page_token());
    }
    if (o.json) return print(all), 0;
    std::printf("%-10s %-6s %-8s %-6s %-6s %-5s %-10s %-9s %-4s %s\n", "GROUP", "DEV", "RID", "DOMAIN", "PASID", "PRGI",
                "STATE", "AGE(ms)", "REQS", "ADDR");
    for (const auto& g : all.groups()) printGroupLine(g);
    return 0;
  }
  if (cmd == "group") {
    if (o.args.size() != 2) usageError("group needs an ID");
    iopf::v1::GetGroupRequest req;
    req.set_id(number(o.args[1], "group ID"));
    iopf::v1::Group g;
    auto ctx = c.context();
    if (auto st = c.stub().GetGroup(ctx.get(), req, &g); !st.ok()) return fail(st);
    if (o.json) return print(g), 0;
    std::printf("group %" PRIu64 ": device %u (%s), domain %u, PRGI %u, PASID %s, state %s\n", g.id(), g.device(),
                rid(g.rid()).c_str(), g.domain(), g.grpid(), g.has_pasid() ? std::to_string(g.pasid()).c_str() : "-",
                iopf::v1::GroupState_Name(g.state()).c_str());
    if (g.has_code()) {
      std::printf("answered %s (origin %s) after %.1f us\n", codeName(g.code()).c_str(), originName(g.origin()).c_str(),
                  static_cast<double>(g.latency_ns()) / 1e3);
    }
    for (const auto& r : g.requests()) {
      std::printf("  request addr 0x%" PRIx64 " perm %s%s%s%s%s\n", r.addr(), r.perm() & 1 ? "R" : "-",
                  r.perm() & 2 ? "W" : "-", r.perm() & 4 ? "X" : "-", r.perm() & 8 ? "P" : "-", r.last() ? " LAST" : "");
    }
    for (const auto& t : g.trace()) {
      std::printf("  handler %-16s %s %s %.1f us%s\n", t.handler_name().c_str(),
                  iopf::v1::Verdict_Name(t.verdict()).c_str(), codeName(t.code()).c_str(),
                  static_cast<double>(t.duration_ns()) / 1e3, t.error() ? " ERROR" : "");
    }
    for (const auto& t : g.transitions()) {
      std::printf("  #%-10" PRIu64 " %-20s %s\n", t.seq(), eventName(t.type()).c_str(), t.detail().c_str());
    }
    return 0;
  }
  if (cmd == "watch") {
    iopf::v1::WatchRequest req;
    if (auto v = flag("since")) req.set_since_seq(number(*v, "--since"));
    if (auto v = flag("max-batch")) req.set_max_batch(static_cast<uint32_t>(number(*v, "--max-batch")));
    req.set_allow_gap(true);
    if (auto v = flag("filter")) {
      std::stringstream ss(*v);
      std::string item;
      while (std::getline(ss, item, ',')) {
        const auto eq = item.find('=');
        if (eq == std::string::npos) usageError("filter item '" + item + "' is not key=value");
        const std::string k = item.substr(0, eq), val = item.substr(eq + 1);
        if (k == "type") {
          std::string upper = "EVENT_";
          for (char ch : val) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
          iopf::v1::EventType t;
          if (!iopf::v1::EventType_Parse(upper, &t)) usageError("unknown event type '" + val + "'");
          req.mutable_filter()->add_types(t);
        } else if (k == "domain") {
          req.mutable_filter()->set_domain(static_cast<uint32_t>(number(val, "domain")));
        } else if (k == "device") {
          req.mutable_filter()->set_device(static_cast<uint32_t>(number(val, "device")));
        } else if (k == "pasid") {
          req.mutable_filter()->set_pasid(static_cast<uint32_t>(number(val, "pasid")));
        } else if (k == "group") {
          req.mutable_filter()->set_group(number(val, "group"));
        } else {
          usageError("unknown filter key '" + k + "'");
        }
      }
    }
    const uint64_t count = flag("count") ? number(*flag("count"), "--count") : UINT64_MAX;
    auto ctx = c.context(false);
    if (auto v = flag("seconds")) {
      ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(number(*v, "--seconds") * 1000));
    }
    auto reader = c.stub().Watch(ctx.get(), req);
    iopf::v1::WatchBatch batch;
    uint64_t seen = 0;
    while (seen < count && reader->Read(&batch)) {
      if (batch.has_snapshot() && !o.json) {
        std::printf("snapshot: %d devices, %d domains, %d attachments, %d open groups; events from #%" PRIu64 "\n",
                    batch.snapshot().devices_size(), batch.snapshot().domains_size(),
                    batch.snapshot().attachments_size(), batch.snapshot().open_groups_size(),
                    batch.snapshot().next_seq());
      }
      for (const auto& e : batch.events()) {
        if (o.json) {
          std::printf("%s\n", toJson(e, false).c_str());
        } else if (e.type() == iopf::v1::EVENT_GAP) {
          std::printf("#%-10" PRIu64 " GAP: %" PRId64 " events lost\n", e.seq(), e.value());
        } else {
          std::printf("#%-10" PRIu64 " %-20s group %-8" PRIu64 " dev %-4u dom %-4u pasid %-5s prgi %-4u addr 0x%-12" PRIx64
                      " %s\n",
                      e.seq(), eventName(e.type()).c_str(), e.group(), e.device(), e.domain(),
                      e.has_pasid() ? std::to_string(e.pasid()).c_str() : "-", e.grpid(), e.addr(),
                      e.type() == iopf::v1::EVENT_RESPONDED
                          ? (codeName(e.code()) + " " + originName(e.origin())).c_str()
                          : "");
        }
        if (++seen >= count) break;
      }
      std::fflush(stdout);
    }
    if (seen >= count) {
      ctx->TryCancel();
      return 0;
    }
    grpc::Status st = reader->Finish();
    if (st.ok() || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) return 0;
    return fail(st);
  }
  if (cmd == "respond") {
    if (o.args.size() != 3) usageError("respond needs ID and success|invalid");
    iopf::v1::RespondRequest req;
    req.set_group(number(o.args[1], "group ID"));
    if (o.args[2] == "success") {
      req.set_code(iopf::v1::RESPONSE_CODE_SUCCESS);
    } else if (o.args[2] == "invalid") {
      req.set_code(iopf::v1::RESPONSE_CODE_INVALID);
    } else {
      usageError("the code is success or invalid, not '" + o.args[2] + "'");
    }
    req.set_reason(flag("reason").value_or("iopfctl"));
    iopf::v1::RespondResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().Respond(ctx.get(), req, &r); !st.ok()) return fail(st);
    if (o.json) {
      std::printf("{\"group\":%" PRIu64 ",\"code\":\"%s\"}\n", req.group(), o.args[2].c_str());
    } else {
      std::printf("group %" PRIu64 " answered %s\n", req.group(), o.args[2].c_str());
    }
    return 0;
  }
  if (cmd == "pause" || cmd == "resume") {
    if (o.args.size() != 2) usageError(cmd + " needs a domain ID");
    iopf::v1::PauseDomainRequest req;
    req.set_domain(static_cast<uint32_t>(number(o.args[1], "domain ID")));
    req.set_paused(cmd == "pause");
    iopf::v1::PauseDomainResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().PauseDomain(ctx.get(), req, &r); !st.ok()) return fail(st);
    if (o.json) return print(r), 0;
    std::printf("domain %u %s (was %s; %" PRIu64 " groups waiting)\n", req.domain(),
                req.paused() ? "paused" : "resumed", r.was_paused() ? "paused" : "running", r.waiting_groups());
    return 0;
  }
  if (cmd == "run-scenario") {
    if (o.args.size() != 2) usageError("run-scenario needs a scenario PATH");
    iopf::v1::RunScenarioRequest req;
    req.set_path(o.args[1]);
    iopf::v1::RunScenarioResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().RunScenario(ctx.get(), req, &r); !st.ok()) return fail(st);
    if (o.json) return print(r), 0;
    std::printf("started %d device(s), created %d domain(s); %s\n", r.devices_size(), r.created_domains_size(),
                r.bounded() ? (std::to_string(r.groups()) + " new groups to issue").c_str()
                            : "some workloads run until iopfd stops");
    std::printf("%-5s %-20s %-8s %-8s %-6s %-6s\n", "ID", "NAME", "HANDLE", "RID", "PRI", "PASID");
    for (const auto& d : r.devices()) {
      std::printf("%-5u %-20s %-8" PRIu64 " %-8s %-6u %-6u\n", d.id(), d.name().c_str(), d.backend_handle(),
                  rid(d.rid()).c_str(), d.pri_allocation(), d.pasid_bits());
    }
    if (r.created_domains_size() > 0) {
      std::printf("%-5s %-20s %-7s %-10s %-6s %s\n", "DOM", "NAME", "KIND", "DEADLINE", "SHARD", "CHAIN");
      for (const auto& d : r.created_domains()) {
        std::string chain;
        for (const auto& h : d.chain()) chain += (chain.empty() ? "" : " → ") + h;
        std::printf("%-5u %-20s %-7s %-10s %-6u %s\n", d.id(), d.name().c_str(), d.kind().c_str(),
                    (std::to_string(d.deadline_ns() / 1000000) + "ms").c_str(), d.shard(), chain.c_str());
      }
    }
    return 0;
  }
  if (cmd == "stats") {
    iopf::v1::Stats s;
    auto ctx = c.context();
    if (auto st = c.stub().GetStats(ctx.get(), {}, &s); !st.ok()) return fail(st);
    if (o.json) return print(s), 0;
    std::printf("requests %" PRIu64 "  groups %" PRIu64 "  responses %" PRIu64 "  open %" PRIu64 "\n", s.requests(),
                s.groups(), s.responses(), s.open_groups());
    std::printf("latency p50 %.1f us  p99 %.1f us  p999 %.1f us  max %.1f us\n", s.latency().p50_ns() / 1e3,
                s.latency().p99_ns() / 1e3, s.latency().p999_ns() / 1e3, s.latency().max_ns() / 1e3);
    std::printf("%-5s %-20s %-10s %-10s %-9s %-9s %-9s\n", "DOM", "NAME", "GROUPS", "OPEN", "SUCCESS", "INVALID",
                "p99(us)");
    for (const auto& d : s.domains()) {
      std::printf("%-5u %-20s %-10" PRIu64 " %-10" PRIu64 " %-9" PRIu64 " %-9" PRIu64 " %-9.1f\n", d.domain(),
                  d.name().c_str(), d.groups(), d.open_groups(), d.responses_by_code_size() > 0 ? d.responses_by_code(0) : 0,
                  d.responses_by_code_size() > 1 ? d.responses_by_code(1) : 0, d.latency().p99_ns() / 1e3);
    }
    std::printf("%-20s %-10s %-10s %-10s %-8s %-8s %-9s\n", "HANDLER", "CALLS", "RESPONDS", "DEFERS", "ERRORS",
                "REFUSED", "p99(us)");
    for (const auto& h : s.handlers()) {
      std::printf("%-20s %-10" PRIu64 " %-10" PRIu64 " %-10" PRIu64 " %-8" PRIu64 " %-8" PRIu64 " %-9.1f\n",
                  h.name().c_str(), h.calls(), h.responds(), h.defers(), h.errors(), h.refused(),
                  h.call_time().p99_ns() / 1e3);
    }
    return 0;
  }
  if (cmd == "plugins") {
    iopf::v1::ListPluginsResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().ListPlugins(ctx.get(), {}, &r); !st.ok()) return fail(st);
    if (o.json) return print(r), 0;
    std::printf("%-20s %-10s %-8s %-12s %s\n", "NAME", "VERSION", "ABI", "STATE", "FILE");
    for (const auto& p : r.plugins()) {
      std::printf("%-20s %-10s %-8s %-12s %s %s\n", p.name().c_str(), p.version().c_str(), p.abi().c_str(),
                  p.state().c_str(), p.file().c_str(), p.message().c_str());
    }
    return 0;
  }
  if (cmd == "health") return health(c, o);
  if (cmd == "reload") {
    iopf::v1::ReloadConfigResponse r;
    auto ctx = c.context();
    if (auto st = c.stub().ReloadConfig(ctx.get(), {}, &r); !st.ok()) return fail(st);
    if (o.json) return print(r), 0;
    std::printf("config reloaded: generation %" PRIu64 "\n", r.config_generation());
    return 0;
  }
  usageError("unknown command '" + cmd + "'");
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  const char* env = std::getenv("IOPF_ADDR");
  o.addr = env != nullptr ? env : kDefaultAddr;
  std::string token_file;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usageError(a + " needs a value");
      return argv[++i];
    };
    if (a == "-h" || a == "--help") {
      std::printf("%s", kHelp);
      return 0;
    }
    if (a == "--connect") {
      o.addr = value();
    } else if (a == "--json") {
      o.json = true;
    } else if (a == "--timeout") {
      o.timeout_s = static_cast<double>(number(value(), "--timeout"));
    } else if (a == "--tls-ca") {
      o.tls_ca = value();
    } else if (a == "--token-file") {
      token_file = value();
    } else if (a.rfind("--", 0) == 0) {
      // A command flag: --name VALUE.
      o.flags[a.substr(2)] = value();
    } else {
      o.args.push_back(a);
    }
  }
  if (!token_file.empty()) o.token = readFile(token_file);
  std::signal(SIGPIPE, SIG_IGN);
  return run(o);
}
