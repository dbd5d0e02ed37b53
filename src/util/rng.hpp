// The library's own random numbers: xoshiro256** seeded by splitmix64, with our own uniform and
// normal transforms, so that a seed gives the same numbers with every compiler and standard
// library (std::*_distribution does not).
#pragma once

#include <array>
#include <cmath>
#include <cstdint>

namespace rbn {

class Rng {
 public:
  explicit Rng(uint64_t seed = 1) { reseed(seed); }

  void reseed(uint64_t seed) {
    uint64_t z = seed;
    for (auto& s : s_) s = splitmix64(z);
    has_spare_ = false;
  }

  uint64_t next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }

  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n), unbiased (Lemire's rejection).
  uint64_t below(uint64_t n) {
    if (n == 0) return 0;
    const uint64_t threshold = (0 - n) % n;
    for (;;) {
      const uint64_t r = next_u64();
      const unsigned __int128 m = static_cast<unsigned __int128>(r) * n;
      if (static_cast<uint64_t>(m) >= threshold) return static_cast<uint64_t>(m >> 64);
    }
  }

  // Standard normal (Box-Muller, both values used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u1 = uniform();
    while (u1 <= 0.0) u1 = uniform();
    const double u2 = uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 6.283185307179586476925286766559 * u2;
    spare_ = r * std::sin(a);
    has_spare_ = true;
    return r * std::cos(a);
  }

  // Fisher-Yates shuffle of [first, first + n).
  template <class It>
  void shuffle(It first, uint64_t n) {
    for (uint64_t i = n; i > 1; --i) {
      const uint64_t j = below(i);
      std::swap(first[i - 1], first[j]);
    }
  }

  // Serializable state (for checkpoints and bit-exact resume).
  struct State {
    std::array<uint64_t, 4> s;
    bool has_spare;
    double spare;
  };
  State state() const { return {s_, has_spare_, spare_}; }
  void set_state(const State& st) {
    s_ = st.s;
    has_spare_ = st.has_spare;
    spare_ = st.spare;
  }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  static uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }

  std::array<uint64_t, 4> s_{};
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// Counter-based masks for dropout and zoneout (docs/cells.md, "Dropout and zoneout"): a pure
// function of (seed, update index, layer, direction, which mask, global row, global time step,
// feature), so that chunked calls, a recomputed forward, a resumed run and data-parallel shards
// (each row by its index in the global batch) draw the same masks, in any order and on any
// thread. Each field enters through the splitmix64 finalizer (a bijection with full avalanche).
namespace mask {

enum class Kind : uint32_t { dropout = 1, zoneout_h = 2, zoneout_c = 3 };

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// The fields shared by one mask's draws of one run (all but row, step and feature).
struct Stream {
  uint64_t seed = 0;
  uint64_t update = 0;  // the training update's index
  int layer = 0;
  int direction = 0;    // 0 forward, 1 reverse (bidirectional layers)
  Kind kind = Kind::dropout;
};

// Key of one (row, step): the features' draws follow from it with one mix each.
inline uint64_t row_key(const Stream& s, int64_t row, int64_t step) {
  uint64_t k = mix64(s.seed ^ 0x6a09e667f3bcc909ULL);
  k = mix64(k + s.update * 0x9e3779b97f4a7c15ULL);
  k = mix64(k + ((static_cast<uint64_t>(s.layer) << 32) | (static_cast<uint64_t>(s.direction) << 8) |
                 static_cast<uint64_t>(s.kind)));
  k = mix64(k + static_cast<uint64_t>(row));
  return mix64(k + static_cast<uint64_t>(step));
}

// Uniform in [0, 1) with 53 bits, for feature j of the row key.
inline double uniform(uint64_t key, int64_t j) {
  const uint64_t z = mix64(key + (static_cast<uint64_t>(j) + 1) * 0xd1b54a32d192ed03ULL);
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

// Bernoulli(p): true with probability p.
inline bool bernoulli(uint64_t key, int64_t j, double p) { return uniform(key, j) < p; }

}  // namespace mask

}  // namespace rbn
