// Handlers for router tests.
#pragma once

#include <functional>
#include <string>

#include "iopf/handler.h"

namespace iopf::testing {

class FnHandler final : public Handler {
 public:
  using Fn = std::function<Verdict(const GroupView&, const CompletionHandle&)>;
  FnHandler(std::string name, Fn fn) : name_(std::move(name)), fn_(std::move(fn)) {}
  std::string_view name() const override { return name_; }
  Verdict handle(const GroupView& g, const CompletionHandle& c) override { return fn_(g, c); }

 private:
  std::string name_;
  Fn fn_;
};

inline std::shared_ptr<Handler> respondWith(std::string name, ResponseCode code) {
  return std::make_shared<FnHandler>(std::move(name),
                                     [code](const GroupView&, const CompletionHandle&) {
                                       return Verdict::respond(code);
                                     });
}

}  // namespace iopf::testing
