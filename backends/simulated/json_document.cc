#include "json_document.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "google/protobuf/descriptor.h"
#include "string_view_bridge.h"

namespace iopf::sim {

namespace pb = google::protobuf;

std::string_view toString(JsonValue::Kind kind) {
  switch (kind) {
    case JsonValue::Kind::kNull:
      return "null";
    case JsonValue::Kind::kBool:
      return "a boolean";
    case JsonValue::Kind::kNumber:
      return "a number";
    case JsonValue::Kind::kString:
      return "a string";
    case JsonValue::Kind::kArray:
      return "an array";
    case JsonValue::Kind::kObject:
      return "an object";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// parser

namespace {

class Parser {
 public:
  Parser(std::string_view text, std::string_view file) : text_(text), file_(file) {}

  absl::StatusOr<JsonValue> document() {
    JsonValue v;
    if (absl::Status st = value(v, 0); !st.ok()) return st;
    skipSpace();
    if (pos_ != text_.size()) return error("unexpected text after the JSON document");
    return v;
  }

 private:
  static constexpr int kMaxDepth = 64;

  absl::Status error(std::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(toAbsl(file_), ":", line_, ":", pos_ - line_start_ + 1, ": ", toAbsl(what)));
  }
  void skipSpace() {
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '\n') {
        ++line_;
        line_start_ = ++pos_;
      } else if (c == ' ' || c == '\t' || c == '\r') {
        ++pos_;
      } else {
        break;
      }
    }
  }
  bool literal(std::string_view word) {
    if (text_.substr(pos_, word.size()) != word) return false;
    pos_ += word.size();
    return true;
  }

  absl::Status value(JsonValue& out, int depth) {
    if (depth > kMaxDepth) return error("nesting deeper than 64 levels");
    skipSpace();
    out.line = line_;
    out.column = static_cast<int>(pos_ - line_start_ + 1);
    if (pos_ >= text_.size()) return error("unexpected end of file, expected a value");
    const char c = text_[pos_];
    if (c == '{') return object(out, depth);
    if (c == '[') return array(out, depth);
    if (c == '"') {
      out.kind = JsonValue::Kind::kString;
      return string(out.text);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return number(out);
    if (literal("true")) {
      out.kind = JsonValue::Kind::kBool;
      out.boolean = true;
      return absl::OkStatus();
    }
    if (literal("false")) {
      out.kind = JsonValue::Kind::kBool;
      return absl::OkStatus();
    }
    if (literal("null")) {
      out.kind = JsonValue::Kind::kNull;
      return absl::OkStatus();
    }
    return error(absl::StrCat("unexpected character '", std::string(1, c), "', expected a value"));
  }

  absl::Status object(JsonValue& out, int depth) {
    out.kind = JsonValue::Kind::kObject;
    ++pos_;
    skipSpace();
    if (pos_ < text_.size() && text_[pos_] == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    for (;;) {
      skipSpace();
      if (pos_ >= text_.size() || text_[pos_] != '"') return error("expected a member name in double quotes");
      const size_t key_pos = pos_;
      std::string key;
      if (absl::Status st = string(key); !st.ok()) return st;
      if (std::find(out.keys.begin(), out.keys.end(), key) != out.keys.end()) {
        pos_ = key_pos;  // point at the repeated name
        return error(absl::StrCat("member '", key, "' appears twice in this object"));
      }
      skipSpace();
      if (pos_ >= text_.size() || text_[pos_] != ':') return error("expected ':' after the member name");
      ++pos_;
      out.keys.push_back(std::move(key));
      out.values.emplace_back();
      if (absl::Status st = value(out.values.back(), depth + 1); !st.ok()) return st;
      skipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == '}') {
        ++pos_;
        return absl::OkStatus();
      }
      return error("expected ',' or '}' after an object member");
    }
  }

  absl::Status array(JsonValue& out, int depth) {
    out.kind = JsonValue::Kind::kArray;
    ++pos_;
    skipSpace();
    if (pos_ < text_.size() && text_[pos_] == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    for (;;) {
      out.values.emplace_back();
      if (absl::Status st = value(out.values.back(), depth + 1); !st.ok()) return st;
      skipSpace();
      if (pos_ < text_.size() && text_[pos_] == ',') {
        ++pos_;
        continue;
      }
      if (pos_ < text_.size() && text_[pos_] == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      return error("expected ',' or ']' after an array item");
    }
  }

  static void appendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  bool hex4(uint32_t& out) {
    if (pos_ + 4 > text_.size()) return false;
    out = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = text_[pos_++];
      out <<= 4;
      if (c >= '0' && c <= '9')
        out |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f')
        out |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        out |= static_cast<uint32_t>(c - 'A' + 10);
      else
        return false;
    }
    return true;
  }

  absl::Status string(std::string& out) {
    ++pos_;  // opening quote
    for (;;) {
      if (pos_ >= text_.size()) return error("unterminated string");
      const char c = text_[pos_++];
      if (c == '"') return absl::OkStatus();
      if (static_cast<unsigned char>(c) < 0x20) return error("control character inside a string");
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= text_.size()) return error("unterminated string");
      const char e = text_[pos_++];
      switch (e) {
        case '"':
          out += '"';
          break;
        case '\\':
          out += '\\';
          break;
        case '/':
          out += '/';
          break;
        case 'b':
          out += '\b';
          break;
        case 'f':
          out += '\f';
          break;
        case 'n':
          out += '\n';
          break;
        case 'r':
          out += '\r';
          break;
        case 't':
          out += '\t';
          break;
        case 'u': {
          uint32_t cp;
          if (!hex4(cp)) return error("bad \\u escape");
          if (cp >= 0xD800 && cp < 0xDC00) {
            uint32_t low;
            if (!literal("\\u") || !hex4(low) || low < 0xDC00 || low >= 0xE000) {
              return error("unpaired UTF-16 surrogate in a \\u escape");
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          }
          appendUtf8(out, cp);
          break;
        }
        default:
          return error(absl::StrCat("bad escape '\\", std::string(1, e), "'"));
      }
    }
  }

  absl::Status number(JsonValue& out) {
    const size_t start = pos_;
    auto digits = [&] {
      const size_t s = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
      return pos_ - s;
    };
    if (text_[pos_] == '-') ++pos_;
    if (pos_ < text_.size() && text_[pos_] == '0') {
      ++pos_;
    } else if (digits() == 0) {
      return error("bad number");
    }
    if (pos_ < text_.size() && text_[pos_] == '.') {
      ++pos_;
      if (digits() == 0) return error("bad number: digits expected after '.'");
    }
    if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
      ++pos_;
      if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
      if (digits() == 0) return error("bad number: digits expected in the exponent");
    }
    out.kind = JsonValue::Kind::kNumber;
    out.text = std::string(text_.substr(start, pos_ - start));
    return absl::OkStatus();
  }

  std::string_view text_;
  std::string_view file_;
  size_t pos_ = 0;
  int line_ = 1;
  size_t line_start_ = 0;
};

}  // namespace

absl::StatusOr<JsonValue> parseJson(std::string_view text, std::string_view file) {
  return Parser(text, file).document();
}

int JsonLines::lineOf(std::string_view path) const {
  std::string p(path);
  for (;;) {
    if (auto it = lines_.find(p); it != lines_.end()) return it->second;
    const size_t cut = p.find_last_of(".[");
    if (cut == std::string::npos) break;
    p.resize(cut);
  }
  if (auto it = lines_.find(""); it != lines_.end()) return it->second;
  return 0;
}

// ---------------------------------------------------------------------------------------------
// reflection

namespace {

size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

class Filler {
 public:
  Filler(std::string_view file, JsonLines& lines) : file_(file), lines_(lines) {}

  absl::Status message(const JsonValue& v, pb::Message& m, const std::string& path) {
    lines_.add(path, v.line);
    if (v.kind != JsonValue::Kind::kObject) {
      return error(v, path, absl::StrCat("expected an object, found ", toAbsl(toString(v.kind))));
    }
    const pb::Descriptor* d = m.GetDescriptor();
    for (size_t i = 0; i < v.keys.size(); ++i) {
      const std::string& key = v.keys[i];
      const JsonValue& value = v.values[i];
      const std::string child = path.empty() ? key : absl::StrCat(path, ".", key);
      const pb::FieldDescriptor* f = d->FindFieldByName(key);
      if (f == nullptr) f = d->FindFieldByCamelcaseName(key);
      if (f == nullptr) {
        std::string best;
        size_t best_distance = 3;
        std::vector<std::string> names;
        for (int k = 0; k < d->field_count(); ++k) {
          const std::string& name = d->field(k)->name();
          names.push_back(name);
          const size_t dist = editDistance(key, name);
          if (dist < best_distance) {
            best_distance = dist;
            best = name;
          }
        }
        lines_.add(child, value.line);
        return error(value, child,
                     best.empty() ? absl::StrCat("unknown field (known: ", absl::StrJoin(names, ", "), ")")
                                  : absl::StrCat("unknown field (did you mean '", best, "'?)"));
      }
      if (absl::Status st = field(value, m, f, child); !st.ok()) return st;
    }
    return absl::OkStatus();
  }

 private:
  absl::Status error(const JsonValue& v, const std::string& path, std::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(toAbsl(file_), ":", v.line, ": ",
                                                   path.empty() ? "(top level)" : path, ": ", toAbsl(what)));
  }

  absl::Status field(const JsonValue& v, pb::Message& m, const pb::FieldDescriptor* f,
                     const std::string& path) {
    lines_.add(path, v.line);
    if (v.kind == JsonValue::Kind::kNull) return absl::OkStatus();  // null: the field's default
    if (f->is_repeated()) {
      if (v.kind != JsonValue::Kind::kArray) {
        return error(v, path, absl::StrCat("expected an array, found ", toAbsl(toString(v.kind))));
      }
      for (size_t i = 0; i < v.values.size(); ++i) {
        const std::string item = absl::StrCat(path, "[", i, "]");
        if (absl::Status st = scalarOrMessage(v.values[i], m, f, item, true); !st.ok()) return st;
      }
      return absl::OkStatus();
    }
    return scalarOrMessage(v, m, f, path, false);
  }

  absl::Status expectKind(const JsonValue& v, JsonValue::Kind kind, const std::string& path) const {
    if (v.kind == kind) return absl::OkStatus();
    return error(v, path,
                 absl::StrCat("expected ", toAbsl(toString(kind)), ", found ", toAbsl(toString(v.kind))));
  }

  absl::Status unsignedValue(const JsonValue& v, const std::string& path, uint64_t max, uint64_t& out) const {
    if (absl::Status st = expectKind(v, JsonValue::Kind::kNumber, path); !st.ok()) return st;
    if (v.text.find_first_of(".eE") != std::string::npos || v.text[0] == '-') {
      return error(v, path, absl::StrCat("expected a non-negative integer, found ", v.text));
    }
    errno = 0;
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v.text.c_str(), &end, 10);
    if (errno == ERANGE || n > max) {
      return error(v, path, absl::StrCat(v.text, " is out of range (0..", max, ")"));
    }
    out = n;
    return absl::OkStatus();
  }

  absl::Status scalarOrMessage(const JsonValue& v, pb::Message& m, const pb::FieldDescriptor* f,
                               const std::string& path, bool repeated) {
    lines_.add(path, v.line);
    const pb::Reflection* r = m.GetReflection();
    switch (f->cpp_type()) {
      case pb::FieldDescriptor::CPPTYPE_MESSAGE: {
        pb::Message* sub = repeated ? r->AddMessage(&m, f) : r->MutableMessage(&m, f);
        return message(v, *sub, path);
      }
      case pb::FieldDescriptor::CPPTYPE_STRING: {
        if (absl::Status st = expectKind(v, JsonValue::Kind::kString, path); !st.ok()) return st;
        repeated ? r->AddString(&m, f, v.text) : r->SetString(&m, f, v.text);
        return absl::OkStatus();
      }
      case pb::FieldDescriptor::CPPTYPE_BOOL: {
        if (absl::Status st = expectKind(v, JsonValue::Kind::kBool, path); !st.ok()) return st;
        repeated ? r->AddBool(&m, f, v.boolean) : r->SetBool(&m, f, v.boolean);
        return absl::OkStatus();
      }
      case pb::FieldDescriptor::CPPTYPE_UINT32: {
        uint64_t n = 0;
        if (absl::Status st = unsignedValue(v, path, UINT32_MAX, n); !st.ok()) return st;
        repeated ? r->AddUInt32(&m, f, static_cast<uint32_t>(n))
                 : r->SetUInt32(&m, f, static_cast<uint32_t>(n));
        return absl::OkStatus();
      }
      case pb::FieldDescriptor::CPPTYPE_UINT64: {
        uint64_t n = 0;
        if (absl::Status st = unsignedValue(v, path, UINT64_MAX, n); !st.ok()) return st;
        repeated ? r->AddUInt64(&m, f, n) : r->SetUInt64(&m, f, n);
        return absl::OkStatus();
      }
      case pb::FieldDescriptor::CPPTYPE_DOUBLE:
      case pb::FieldDescriptor::CPPTYPE_FLOAT: {
        if (absl::Status st = expectKind(v, JsonValue::Kind::kNumber, path); !st.ok()) return st;
        const double d = std::strtod(v.text.c_str(), nullptr);
        if (!std::isfinite(d)) return error(v, path, absl::StrCat(v.text, " is not a finite number"));
        if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_DOUBLE) {
          repeated ? r->AddDouble(&m, f, d) : r->SetDouble(&m, f, d);
        } else {
          repeated ? r->AddFloat(&m, f, static_cast<float>(d)) : r->SetFloat(&m, f, static_cast<float>(d));
        }
        return absl::OkStatus();
      }
      default:
        return error(v, path, "field type not supported by the scenario reader");
    }
  }

  std::string_view file_;
  JsonLines& lines_;
};

}  // namespace

absl::Status fillMessage(const JsonValue& value, pb::Message& message, std::string_view file,
                         JsonLines& lines) {
  return Filler(file, lines).message(value, message, "");
}

}  // namespace iopf::sim
