// Core values ↔ iopf.v1 messages, and absl::Status → grpc::Status, in one place.
#pragma once

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "iopf/router.h"
#include "iopf/v1/router.pb.h"

namespace iopf::api {

grpc::Status toGrpc(const absl::Status& status);

void toProto(const DeviceInfo& in, v1::Device& out);
void toProto(const DomainInfo& in, v1::Domain& out);
void toProto(const AttachmentInfo& in, v1::Attachment& out);
void toProto(const GroupInfo& in, int64_t now_ns, v1::Group& out);
void toProto(const Event& in, v1::Event& out);
// Writes `in` as one packed record (iopf/api/packed_events.h): packed::kRecordSize bytes at `out`.
void writePacked(const Event& in, uint8_t* out);
void toProto(const LatencyHistogram::Snapshot& in, v1::Histogram& out);
void toProto(const StatsSnapshot& in, v1::Stats& out);

std::string_view originName(Origin origin);

}  // namespace iopf::api
