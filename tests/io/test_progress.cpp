// The progress line: rate and ETA arithmetic, the bar on terminals, plain lines when piped.
#include <gtest/gtest.h>

#include <cstdio>

#include "util/progress.hpp"

namespace rbn {
namespace {

TEST(Progress, RateAndEta) {
  const std::string s = Progress::format("train", 25, 100, 50.0, "loss 1.5", false);
  EXPECT_EQ(s, "train 25/100 (25%) 0.5/s elapsed 00:50 eta 02:30 loss 1.5");
  const std::string b = Progress::format("train", 50, 100, 3700.0, "", true);
  EXPECT_NE(b.find("[############............]"), std::string::npos) << b;
  EXPECT_NE(b.find("elapsed 1:01:40"), std::string::npos) << b;
  EXPECT_NE(Progress::format("x", 0, 10, 0.0, "", false).find("eta --:--"), std::string::npos);
}

TEST(Progress, PipedOutputHasNoCarriageReturns) {
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    Progress p("work", 3, f, /*interval_s=*/0.0);
    for (int i = 1; i <= 3; ++i) p.update(i, "x");
    p.finish();
  }
  std::rewind(f);
  std::string out;
  for (int c; (c = std::fgetc(f)) != EOF;) out += static_cast<char>(c);
  std::fclose(f);
  EXPECT_EQ(out.find('\r'), std::string::npos);
  EXPECT_NE(out.find("work 3/3 (100%)"), std::string::npos) << out;
}

}  // namespace
}  // namespace rbn
