// The bf16 precision of the float products (blas.hpp): both factors rounded to bfloat16, the
// product accumulated in fp32 by oneDNN's matmul primitive. Each thread keeps its primitives (one
// per shape, alpha and beta) and its conversion buffers, so that a repeated product creates
// nothing; the primitives come from oneDNN's own cache when another thread made them first.
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "util/blas.hpp"
#include "util/error.hpp"

namespace rbn::blas {

namespace detail {
std::atomic<int> g_precision{static_cast<int>(Precision::fp32)};
}  // namespace detail

namespace {
// How bf16 products run: oneDNN's matmul, or (test override, oneDNN refusing bf16 here) the
// rounded factors through the fp32 GEMM. Decided by set_precision.
std::atomic<bool> g_emulate{false};
}  // namespace

const char* precision_name(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

std::optional<Precision> parse_precision(std::string_view name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "bf16") return Precision::bf16;
  return std::nullopt;
}

bool cpu_has_bf16() {
  const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  const unsigned bf16 = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_bf16);
  return (isa & bf16) == bf16;  // the ISA values are nested bit sets (AMX includes AVX512_BF16)
}

bool bf16_emulation_override() {
  const char* v = std::getenv("RBN_TEST_BF16");
  if (!v || !*v) return false;
  if (std::string_view(v) == "emulate") return true;
  throw UsageError(fmt::format("RBN_TEST_BF16={}: the only value is 'emulate' (for tests only)", v));
}

uint16_t to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even (overflow rounds to inf)
  return static_cast<uint16_t>(u >> 16);
}

float from_bf16(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

namespace {

const dnnl::engine& cpu_engine() {
  static const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// A bf16 matmul of one shape, alpha and beta: src [M,K] row-major (dense), weights [K,N] dense in
// B's stored orientation (tb: strides {1, K}), dst fp32 [M,N] with ldc.
struct Matmul {
  dnnl::matmul prim;
  dnnl::memory src, wei, dst;
};
using MatmulKey = std::tuple<bool, int, int, int, int, float, float>;  // tb, M, N, K, ldc, alpha, beta

Matmul make_matmul(const MatmulKey& key) {
  using dt = dnnl::memory::data_type;
  using dims = dnnl::memory::dims;
  const auto [tb, M, N, K, ldc, alpha, beta] = key;
  const dnnl::memory::desc src({M, K}, dt::bf16, dims{K, 1});
  const dnnl::memory::desc wei({K, N}, dt::bf16, tb ? dims{1, K} : dims{N, 1});
  const dnnl::memory::desc dst({M, N}, dt::f32, dims{ldc, 1});
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, wei, dst), attr, cpu_engine());
  Matmul m{dnnl::matmul(pd), dnnl::memory(src, cpu_engine(), DNNL_MEMORY_NONE),
           dnnl::memory(wei, cpu_engine(), DNNL_MEMORY_NONE),
           dnnl::memory(dst, cpu_engine(), DNNL_MEMORY_NONE)};
  return m;
}

// rows x cols of X (leading dimension ld) to bf16, dense; transposed (cols x rows) if `transpose`.
void convert(const float* X, int rows, int cols, int ld, bool transpose, std::vector<uint16_t>& out) {
  out.resize(static_cast<size_t>(rows) * cols);
  for (int r = 0; r < rows; ++r) {
    const float* x = X + static_cast<size_t>(r) * ld;
    if (transpose)
      for (int c = 0; c < cols; ++c) out[static_cast<size_t>(c) * rows + r] = to_bf16(x[c]);
    else
      for (int c = 0; c < cols; ++c) out[static_cast<size_t>(r) * cols + c] = to_bf16(x[c]);
  }
}

// The test override's product: the factors rounded to bf16 and back, the fp32 GEMM.
void emulated(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
              const float* B, int ldb, float beta, float* C, int ldc) {
  thread_local std::vector<float> a, b;
  auto round = [](const float* X, int rows, int cols, int ld, std::vector<float>& out) {
    out.resize(static_cast<size_t>(rows) * cols);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c)
        out[static_cast<size_t>(r) * cols + c] = from_bf16(to_bf16(X[static_cast<size_t>(r) * ld + c]));
  };
  round(A, ta ? K : M, ta ? M : K, lda, a);
  round(B, tb ? N : K, tb ? K : N, ldb, b);
  sgemm(backend(), ta, tb, M, N, K, alpha, a.data(), ta ? M : K, b.data(), tb ? K : N, beta, C, ldc);
}

// Whether oneDNN creates a bf16 matmul on this machine (a small probe).
bool onednn_runs_bf16() {
  try {
    (void)make_matmul({false, 4, 4, 4, 4, 1.0f, 0.0f});
    return true;
  } catch (const dnnl::error&) {
    return false;
  }
}

}  // namespace

void set_precision(Precision p, const std::string& what) {
  if (p == Precision::bf16) {
    const bool override_set = bf16_emulation_override();
    if (!override_set && !cpu_has_bf16())
      throw UsageError(what + ": bf16 needs a CPU with AVX512_BF16 or AMX, and this one has neither (" +
                       backend_description(Backend::onednn) + "); use fp32");
    static const bool runs = onednn_runs_bf16();  // (the modules of rbn.torch set it per call)
    if (!runs && !override_set)
      throw UsageError(what + ": oneDNN " + backend_description(Backend::onednn) +
                       " creates no bf16 matmul on this CPU (use fp32)");
    g_emulate.store(!runs);
  }
  detail::g_precision.store(static_cast<int>(p));
}

void sgemm_bf16(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0 || K <= 0)  // empty products keep cblas's meaning: C = beta C
    return sgemm(Backend::openblas, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (g_emulate.load(std::memory_order_relaxed))
    return emulated(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  thread_local std::map<MatmulKey, Matmul> prims;
  thread_local std::vector<uint16_t> a, b;
  thread_local dnnl::stream stream(cpu_engine());
  const MatmulKey key{tb, M, N, K, ldc, alpha, beta};
  try {
    auto it = prims.find(key);
    if (it == prims.end()) it = prims.emplace(key, make_matmul(key)).first;
    Matmul& m = it->second;
    convert(A, ta ? K : M, ta ? M : K, lda, ta, a);  // src dense [M,K]
    convert(B, tb ? N : K, tb ? K : N, ldb, false, b);  // weights as stored, dense
    m.src.set_data_handle(a.data());
    m.wei.set_data_handle(b.data());
    m.dst.set_data_handle(C);
    m.prim.execute(stream, {{DNNL_ARG_SRC, m.src}, {DNNL_ARG_WEIGHTS, m.wei}, {DNNL_ARG_DST, m.dst}});
    stream.wait();
  } catch (const dnnl::error& e) {
    // set_precision created one first: a failure here is a defect of rbn, not of the input
    std::fprintf(stderr, "rbn: error: bf16 matmul (%c%c, %d, %d, %d, ldc %d) failed: %s (a defect "
                 "of rbn: please report the command)\n", ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K,
                 ldc, e.what());
    std::abort();
  }
}

}  // namespace rbn::blas
