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

// An 80-column terminal: the training line keeps its count and its loss; the bar, then the
// elapsed time, the rate... go first.
TEST(Progress, NarrowTerminalsDropTheLeastUsefulFieldsFirst) {
  ProgressLine l{"train", 250, 1000, 0, 50.0, "loss 1.2345 bpc 1.7810", true};
  const std::string wide = Progress::format(l, 0);
  EXPECT_NE(wide.find("[######"), std::string::npos) << wide;
  const std::string at79 = Progress::format(l, 79);
  EXPECT_LE(at79.size(), 79u) << at79;
  EXPECT_EQ(at79, "train 250/1000 (25%) 5.0/s elapsed 00:50 eta 02:30 loss 1.2345 bpc 1.7810");
  EXPECT_EQ(Progress::format(l, 59), "train 250/1000 (25%) 5.0/s eta 02:30 loss 1.2345 bpc 1.7810");
  EXPECT_EQ(Progress::format(l, 58), "train 250/1000 (25%) eta 02:30 loss 1.2345 bpc 1.7810");
  const std::string at40 = Progress::format(l, 40);
  EXPECT_EQ(at40, "train 250/1000 loss 1.2345 bpc 1.7810");
  // a terminal line drawn at 80 columns holds the loss
  std::FILE* f = std::tmpfile();
  ASSERT_NE(f, nullptr);
  {
    ProgressOptions o;
    o.tty = 1;
    o.width = 80;
    Progress p("train", 1000, f, o);
    p.update(250, "loss 1.2345 bpc 1.7810");
    p.finish();
  }
  std::rewind(f);
  std::string out;
  for (int c; (c = std::fgetc(f)) != EOF;) out += static_cast<char>(c);
  std::fclose(f);
  EXPECT_NE(out.find("loss 1.2345 bpc 1.7810"), std::string::npos) << out;
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
