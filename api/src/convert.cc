#include "iopf/api/convert.h"

#include "iopf/api/packed_events.h"

namespace iopf::api {

grpc::Status toGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // absl and gRPC share the canonical code numbers.
  return grpc::Status(static_cast<grpc::StatusCode>(static_cast<int>(s.code())), std::string(s.message()));
}

std::string_view originName(Origin origin) { return toString(origin); }

void toProto(const DeviceInfo& in, v1::Device& out) {
  out.set_id(in.id);
  out.set_name(in.spec.name);
  out.set_backend(in.backend_name);
  out.set_backend_handle(in.spec.backend_handle);
  out.set_pci_segment(in.spec.pci_segment);
  out.set_rid(in.spec.rid);
  out.set_pri_allocation(in.spec.pri_allocation);
  out.set_pasid_bits(in.spec.pasid_bits);
  out.set_needs_pasid(in.spec.needs_pasid);
  out.set_stall_model(in.spec.stall_model);
  out.set_removed(in.removed);
  out.set_outstanding_requests(in.outstanding_requests);
}

void toProto(const DomainInfo& in, v1::Domain& out) {
  out.set_id(in.id);
  out.set_name(in.spec.name);
  out.set_kind(std::string(toString(in.spec.kind)));
  out.set_deadline_ns(in.spec.deadline_ns);
  out.set_timeout_code(static_cast<v1::ResponseCode>(in.spec.timeout_code));
  out.set_default_code(static_cast<v1::ResponseCode>(in.spec.default_code));
  out.set_max_open_groups(in.spec.max_open_groups);
  out.set_shard(in.shard);
  for (const auto& h : in.chain) out.add_chain(h);
  out.set_open_groups(in.open_groups);
  out.set_removed(in.removed);
  out.set_paused(in.paused);
}

void toProto(const AttachmentInfo& in, v1::Attachment& out) {
  out.set_device(in.device);
  if (in.pasid) out.set_pasid(*in.pasid);
  out.set_domain(in.domain);
  out.set_epoch(in.epoch);
}

void toProto(const GroupInfo& in, int64_t now_ns, v1::Group& out) {
  out.set_id(in.id);
  out.set_device(in.device);
  out.set_backend_handle(in.backend_handle);
  out.set_rid(in.rid);
  out.set_domain(in.domain);
  out.set_epoch(in.epoch);
  if (in.pasid) out.set_pasid(*in.pasid);
  out.set_grpid(in.grpid);
  if (in.cookie) out.set_cookie(*in.cookie);
  out.set_state(static_cast<v1::GroupState>(in.state));
  out.set_first_arrival_ns(in.first_arrival_ns);
  out.set_queued_ns(in.queued_ns);
  out.set_dispatched_ns(in.dispatched_ns);
  out.set_deadline_ns(in.deadline_ns);
  out.set_age_ns(now_ns - in.first_arrival_ns);
  out.set_request_count(static_cast<uint32_t>(in.requests.size()));
  for (const PageRequest& r : in.requests) {
    v1::PageRequest* p = out.add_requests();
    p->set_grpid(r.grpid);
    if (r.pasid) p->set_pasid(*r.pasid);
    p->set_addr(r.addr);
    p->set_perm(r.perm);
    p->set_last(r.last);
    if (r.cookie) p->set_cookie(*r.cookie);
    p->set_arrival_ns(r.arrival_ns);
  }
  for (const TraceEntry& t : in.trace) {
    v1::TraceEntry* e = out.add_trace();
    e->set_handler(t.handler);
    e->set_handler_name(t.handler_name);
    e->set_verdict(static_cast<v1::Verdict>(t.verdict));
    e->set_code(static_cast<v1::ResponseCode>(t.code));
    e->set_error(t.error);
    e->set_duration_ns(t.duration_ns);
  }
}

void toProto(const Event& in, v1::Event& out) {
  out.set_seq(in.seq);
  out.set_type(static_cast<v1::EventType>(in.type));
  out.set_time_ns(in.time_ns);
  out.set_group(in.group);
  out.set_device(in.device);
  out.set_domain(in.domain);
  if (in.flags & event_flag::kPasidValid) out.set_pasid(in.pasid);
  out.set_grpid(in.grpid);
  out.set_addr(in.addr);
  out.set_perm(in.perm);
  out.set_last((in.flags & event_flag::kLast) != 0);
  if (in.flags & event_flag::kCookieValid) out.set_cookie(in.cookie);
  out.set_code(static_cast<v1::ResponseCode>(in.code));
  out.set_origin(static_cast<v1::Origin>(in.origin));
  out.set_verdict(static_cast<v1::Verdict>(in.verdict));
  out.set_handler(in.handler);
  out.set_value(in.value);
}

void writePacked(const Event& in, uint8_t* r) {
  namespace pk = packed;
  pk::put(r, pk::kSeq, in.seq);
  pk::put(r, pk::kTimeNs, in.time_ns);
  pk::put(r, pk::kGroup, in.group);
  pk::put(r, pk::kAddr, in.addr);
  pk::put(r, pk::kValue, in.value);
  pk::put(r, pk::kDevice, in.device);
  pk::put(r, pk::kDomain, in.domain);
  pk::put(r, pk::kPasid, (in.flags & event_flag::kPasidValid) ? in.pasid : 0u);
  pk::put(r, pk::kCookie, (in.flags & event_flag::kCookieValid) ? in.cookie : 0u);
  pk::put(r, pk::kGrpid, in.grpid);
  pk::put(r, pk::kHandler, in.handler);
  r[pk::kType] = static_cast<uint8_t>(in.type);
  r[pk::kFlags] = static_cast<uint8_t>(((in.flags & event_flag::kPasidValid) ? pk::kFlagPasidValid : 0) |
                                       ((in.flags & event_flag::kLast) ? pk::kFlagLast : 0) |
                                       ((in.flags & event_flag::kCookieValid) ? pk::kFlagCookieValid : 0));
  r[pk::kPerm] = in.perm;
  r[pk::kCode] = in.code;
  r[pk::kOrigin] = in.origin;
  r[pk::kVerdict] = in.verdict;
  pk::put(r, 68, uint32_t{0});
}

void toProto(const LatencyHistogram::Snapshot& in, v1::Histogram& out) {
  out.set_count(in.count);
  out.set_sum_ns(in.sum);
  out.set_max_ns(in.max);
  out.set_p50_ns(in.percentile(0.5));
  out.set_p99_ns(in.percentile(0.99));
  out.set_p999_ns(in.percentile(0.999));
  for (size_t i = 0; i < in.buckets.size(); ++i) {
    if (in.buckets[i] == 0) continue;
    out.add_bucket_lower_ns(LatencyHistogram::bucketLowerBound(static_cast<int>(i)));
    out.add_bucket_upper_ns(LatencyHistogram::bucketUpperBound(static_cast<int>(i)));
    out.add_bucket_count(in.buckets[i]);
  }
}

namespace {
template <typename Map, size_t N>
void origins(const std::array<uint64_t, N>& by_origin, Map* out) {
  for (size_t o = 0; o < N; ++o) {
    if (by_origin[o] != 0) (*out)[std::string(toString(static_cast<Origin>(o)))] = by_origin[o];
  }
}
}  // namespace

void toProto(const StatsSnapshot& in, v1::Stats& out) {
  out.set_requests(in.requests);
  out.set_groups(in.groups);
  out.set_responses(in.responses);
  out.set_open_groups(in.open_groups);
  out.set_refused_completions(in.refused_completions);
  out.set_dropped_requests(in.dropped_requests);
  out.set_stop_markers(in.stop_markers);
  out.set_partial_discarded(in.partial_discarded);
  out.set_protocol_errors(in.protocol_errors);
  for (uint64_t c : in.responses_by_code) out.add_responses_by_code(c);
  origins(in.responses_by_origin, out.mutable_responses_by_origin());
  toProto(in.latency, *out.mutable_latency());
  for (const DeviceStats& d : in.devices) {
    v1::DeviceStats* p = out.add_devices();
    p->set_device(d.device);
    p->set_name(d.name);
    p->set_requests(d.requests);
    p->set_groups(d.groups);
    p->set_stop_markers(d.stop_markers);
    p->set_partial_discarded(d.partial_discarded);
    p->set_protocol_errors(d.protocol_errors);
    p->set_overload(d.overload);
    p->set_outstanding_requests(d.outstanding_requests);
    for (uint64_t c : d.responses_by_code) p->add_responses_by_code(c);
  }
  for (const DomainStats& d : in.domains) {
    v1::DomainStats* p = out.add_domains();
    p->set_domain(d.domain);
    p->set_name(d.name);
    p->set_groups(d.groups);
    p->set_open_groups(d.open_groups);
    for (uint64_t c : d.responses_by_code) p->add_responses_by_code(c);
    origins(d.responses_by_origin, p->mutable_responses_by_origin());
    toProto(d.latency, *p->mutable_latency());
  }
  for (const HandlerStats& h : in.handlers) {
    v1::HandlerStats* p = out.add_handlers();
    p->set_handler(h.handler);
    p->set_name(h.name);
    p->set_calls(h.calls);
    p->set_continues(h.continues);
    p->set_responds(h.responds);
    p->set_defers(h.defers);
    p->set_errors(h.errors);
    p->set_deferred_completed(h.deferred_completed);
    p->set_refused(h.refused);
    toProto(h.call_time, *p->mutable_call_time());
  }
}

}  // namespace iopf::api
