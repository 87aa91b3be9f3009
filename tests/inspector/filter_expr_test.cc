#include "iopf/api/filter_expr.h"

#include <gtest/gtest.h>

namespace flt = iopf::api::filter;
namespace v1 = iopf::v1;

namespace {

flt::Expr ok(const std::string& text) {
  auto r = flt::parseExpr(text);
  EXPECT_TRUE(r.expr.has_value()) << text << ": " << (r.error ? r.error->message : "");
  return r.expr.value_or(flt::Expr{});
}

flt::ParseError bad(const std::string& text) {
  auto r = flt::parseExpr(text);
  EXPECT_FALSE(r.expr.has_value()) << text;
  return r.error.value_or(flt::ParseError{});
}

v1::Event responded(uint32_t device, uint32_t domain, std::optional<uint32_t> pasid, v1::ResponseCode code,
                    v1::Origin origin, int64_t latency) {
  v1::Event e;
  e.set_seq(1);
  e.set_type(v1::EVENT_RESPONDED);
  e.set_group(7);
  e.set_device(device);
  e.set_domain(domain);
  if (pasid) e.set_pasid(*pasid);
  e.set_grpid(3);
  e.set_code(code);
  e.set_origin(origin);
  e.set_value(latency);
  return e;
}

}  // namespace

TEST(FilterExpr, EmptyMatchesEverything) {
  auto e = ok("   ");
  EXPECT_TRUE(e.empty());
  EXPECT_TRUE(flt::matches(e, flt::factsOf(responded(1, 1, {}, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_HANDLER, 5))));
}

TEST(FilterExpr, TheDocumentedExample) {
  auto e = ok("device:3 pasid:5 code:INVALID age>10ms domain:2 type:responded");
  ASSERT_EQ(e.terms.size(), 6u);
  EXPECT_TRUE(flt::matches(e, flt::factsOf(responded(3, 2, 5, v1::RESPONSE_CODE_INVALID, v1::ORIGIN_TIMEOUT, 1))));
  EXPECT_FALSE(flt::matches(e, flt::factsOf(responded(3, 2, 5, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_TIMEOUT, 1))));
  EXPECT_FALSE(flt::matches(e, flt::factsOf(responded(3, 2, {}, v1::RESPONSE_CODE_INVALID, v1::ORIGIN_TIMEOUT, 1))));
  EXPECT_FALSE(flt::matches(e, flt::factsOf(responded(4, 2, 5, v1::RESPONSE_CODE_INVALID, v1::ORIGIN_TIMEOUT, 1))));
  // The daemon gets domain, device, PASID and the types (plus the ones the client needs).
  bool complete = true;
  v1::EventFilter f = flt::toEventFilter(e, {v1::EVENT_REQUEST}, &complete);
  EXPECT_EQ(f.domain(), 2u);
  EXPECT_EQ(f.device(), 3u);
  EXPECT_EQ(f.pasid(), 5u);
  ASSERT_EQ(f.types_size(), 2);
  EXPECT_EQ(f.types(0), v1::EVENT_RESPONDED);
  EXPECT_EQ(f.types(1), v1::EVENT_REQUEST);
  EXPECT_FALSE(complete);  // code is matched on the client
}

TEST(FilterExpr, CompletePushdown) {
  bool complete = false;
  v1::EventFilter f = flt::toEventFilter(ok("domain:1 type:responded,timed_out group:0x10"), {}, &complete);
  EXPECT_TRUE(complete);
  EXPECT_EQ(f.group(), 16u);
  EXPECT_EQ(f.types_size(), 2);
  // Negated and listed terms stay on the client.
  f = flt::toEventFilter(ok("!domain:1 device:1,2"), {}, &complete);
  EXPECT_FALSE(complete);
  EXPECT_FALSE(f.has_domain());
  EXPECT_FALSE(f.has_device());
}

TEST(FilterExpr, ErrorsCarryTheirPosition) {
  auto e = bad("device:3 colour:red");
  EXPECT_EQ(e.pos, 9u);
  EXPECT_NE(e.message.find("unknown key 'colour'"), std::string::npos) << e.message;
  e = bad("code:MAYBE");
  EXPECT_EQ(e.pos, 5u);
  EXPECT_NE(e.message.find("success, invalid, failure"), std::string::npos) << e.message;
  e = bad("age>10parsecs");
  EXPECT_EQ(e.pos, 4u);
  EXPECT_NE(e.message.find("duration"), std::string::npos);
  e = bad("type>responded");
  EXPECT_NE(e.message.find("cannot be compared"), std::string::npos) << e.message;
  e = bad("pasid:");
  EXPECT_NE(e.message.find("needs a value"), std::string::npos);
  e = bad("device:0000:03:20.0");
  EXPECT_NE(e.message.find("PCI address"), std::string::npos) << e.message;
  e = bad("domain:1,,2");
  EXPECT_NE(e.message.find("empty value"), std::string::npos);
  e = bad("domain:99999999999");
  EXPECT_NE(e.message.find("out of range"), std::string::npos);
  auto st = flt::parse("perm:Q");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(std::string(st.status().message()).find("column 6"), std::string::npos) << st.status().message();
}

TEST(FilterExpr, OperatorsDurationsAndSpacing) {
  auto e = ok("latency >= 250us");
  ASSERT_EQ(e.terms.size(), 1u);
  EXPECT_EQ(e.terms[0].op, flt::Op::kGe);
  EXPECT_EQ(e.terms[0].values[0], 250000u);
  EXPECT_TRUE(flt::matches(e, flt::factsOf(responded(1, 1, {}, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_HANDLER, 300000))));
  EXPECT_FALSE(flt::matches(e, flt::factsOf(responded(1, 1, {}, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_HANDLER, 1000))));
  e = ok("domain!=2");
  EXPECT_FALSE(flt::matches(e, flt::factsOf(responded(1, 2, {}, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_HANDLER, 1))));
  EXPECT_TRUE(flt::matches(e, flt::factsOf(responded(1, 3, {}, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_HANDLER, 1))));
  e = ok("!origin:operator pasid:none");
  EXPECT_TRUE(flt::matches(e, flt::factsOf(responded(1, 3, {}, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_HANDLER, 1))));
  EXPECT_FALSE(flt::matches(e, flt::factsOf(responded(1, 3, {}, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_OPERATOR, 1))));
  EXPECT_FALSE(flt::matches(e, flt::factsOf(responded(1, 3, 4, v1::RESPONSE_CODE_SUCCESS, v1::ORIGIN_HANDLER, 1))));
}

TEST(FilterExpr, GroupsIgnoreEventOnlyTermsAndEventsIgnoreAge) {
  v1::Group g;
  g.set_id(9);
  g.set_device(3);
  g.set_rid(0x0300);
  g.set_domain(2);
  g.set_pasid(5);
  g.set_state(v1::GROUP_STATE_DEFERRED);
  auto* r = g.add_requests();
  r->set_addr(0x1000);
  r->set_perm(3);
  auto e = ok("device:3 type:responded code:invalid age>10ms state:deferred perm:W");
  EXPECT_TRUE(flt::matches(e, flt::factsOf(g, 20'000'000)));
  EXPECT_FALSE(flt::matches(e, flt::factsOf(g, 5'000'000)));
  // PCI address against the RID.
  EXPECT_TRUE(flt::matches(ok("device:0000:03:00.0"), flt::factsOf(g, 0)));
  EXPECT_FALSE(flt::matches(ok("device:04:00.0"), flt::factsOf(g, 0)));
  // Events: age is ignored, the RID comes from the lookup.
  auto ev = responded(3, 2, 5, v1::RESPONSE_CODE_INVALID, v1::ORIGIN_HANDLER, 1);
  EXPECT_TRUE(flt::matches(ok("age>10s"), flt::factsOf(ev)));
  EXPECT_TRUE(flt::matches(ok("device:03:00.0"), flt::factsOf(ev, [](uint32_t d) -> std::optional<uint32_t> {
                             return d == 3 ? std::optional<uint32_t>(0x0300) : std::nullopt;
                           })));
  EXPECT_FALSE(flt::matches(ok("device:03:00.0"), flt::factsOf(ev)));
}

TEST(FilterExpr, NamesRoundTrip) {
  for (int t = 0; t <= 20; ++t) {
    const std::string text = "type:" + std::string(flt::eventTypeName(t));
    auto e = ok(text);
    ASSERT_EQ(e.terms.size(), 1u) << text;
    EXPECT_EQ(e.terms[0].values[0], static_cast<uint64_t>(t));
  }
  EXPECT_TRUE(ok("type:EVENT_RESPONDED origin:no-domain").terms.size() == 2);
  EXPECT_FALSE(flt::completionWords().empty());
}
