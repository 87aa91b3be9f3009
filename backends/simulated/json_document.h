// A small JSON reader that remembers where every value came from, and fills a protobuf message
// from it by reflection. Scenario files get errors that name the file, the line and the field path
// ("scenarios/x.json:12: devices[0].pri_allocation: ...") instead of a byte offset.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message.h"

namespace iopf::sim {

struct JsonValue {
  enum class Kind : uint8_t { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  int line = 0;
  int column = 0;
  bool boolean = false;
  std::string text;               // string value, or the number's literal
  std::vector<std::string> keys;  // object members, in file order
  std::vector<JsonValue> values;  // object member values / array items
};
std::string_view toString(JsonValue::Kind kind);

// Parses strict JSON (RFC 8259). Errors: "FILE:LINE:COLUMN: what".
absl::StatusOr<JsonValue> parseJson(std::string_view text, std::string_view file);

// Where each field path of a document is: "devices[0].workload.kind" → line.
class JsonLines {
 public:
  void add(const std::string& path, int line) { lines_.emplace(path, line); }
  // The line of `path`, else of its closest enclosing value, else 0.
  int lineOf(std::string_view path) const;

 private:
  absl::flat_hash_map<std::string, int> lines_;
};

// Fills `message` from `value` (an object) by reflection: field names in snake_case or
// lowerCamelCase; strings, bools, numbers (integers checked for range and sign), nested and
// repeated messages and scalars, proto3 `optional`. Unknown fields and type mismatches are
// errors "FILE:LINE: PATH: what" (suggesting the closest known field name). Records every path's
// line in `lines`.
absl::Status fillMessage(const JsonValue& value, google::protobuf::Message& message, std::string_view file,
                         JsonLines& lines);

}  // namespace iopf::sim
