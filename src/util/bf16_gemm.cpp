// oneDNN's matmul primitive behind blas.hpp: the bf16 precision of the float products (both
// factors rounded to bfloat16 by oneDNN's reorders, the product accumulated in fp32), and
// FixedRightOperand, the time loop's right operand rounded once per call into the matmul's own
// weight layout. Each thread keeps its primitives (one per
// shape, alpha and beta) and its conversion buffers, so that a repeated product creates nothing;
// the primitives come from oneDNN's own cache when another thread made them first.
#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
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

using dt = dnnl::memory::data_type;
using dims = dnnl::memory::dims;

// op(X) [rows, cols] of an fp32 matrix stored row-major with leading dimension ld.
dnnl::memory::desc f32_desc(int rows, int cols, int ld, bool transposed) {
  return {{rows, cols}, dt::f32, transposed ? dims{1, ld} : dims{ld, 1}};
}

dnnl::memory unbound(const dnnl::memory::desc& d) {
  return dnnl::memory(d, cpu_engine(), DNNL_MEMORY_NONE);
}

dnnl::reorder make_reorder(const dnnl::memory::desc& from, const dnnl::memory::desc& to) {
  return dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), from, cpu_engine(), to));
}

dnnl::memory::desc bf16_rows(int M, int K) { return {{M, K}, dt::bf16, dims{K, 1}}; }

// bf16 [K,N] in the layout the matmul reads fastest (the caller then reorders into it).
dnnl::memory::desc any_weights(int K, int N) {
  return {{K, N}, dt::bf16, dnnl::memory::format_tag::any};
}

// A bf16 matmul C[M,N] = alpha A B + beta C: src [M,K] dense, weights `wei` [K,N] (any_weights,
// or the layout an earlier one chose), dst fp32 [M,N] with ldc. alpha is its output scale, beta a
// sum post-op.
dnnl::matmul::primitive_desc matmul_desc(const dnnl::memory::desc& wei, int M, int N, int K,
                                         int ldc, float alpha, float beta) {
  dnnl::primitive_attr attr;
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (beta != 0.0f) {
    dnnl::post_ops po;
    po.append_sum(beta);
    attr.set_post_ops(po);
  }
  const dnnl::memory::desc dst({M, N}, dt::f32, dims{ldc, 1});
  return {dnnl::matmul::desc(bf16_rows(M, K), wei, dst), attr, cpu_engine()};
}

// A 64-byte aligned byte buffer that only grows (the bf16 copies of the factors).
class Buffer {
 public:
  void* get(size_t bytes) {
    if (bytes > size_) {
      p_.reset(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
      if (!p_) throw std::bad_alloc();
      size_ = bytes;
    }
    return p_.get();
  }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> p_;
  size_t size_ = 0;
};

[[noreturn]] void matmul_failed(const char* what, int M, int N, int K, const dnnl::error& e) {
  // set_precision created one first: a failure here is a defect of rbn, not of the input
  std::fprintf(stderr, "rbn: error: oneDNN %s (%d, %d, %d) failed: %s (a defect of rbn: please "
               "report the command)\n", what, M, N, K, e.what());
  std::abort();
}

// A matmul and where it writes: straight into C (leading dimension ldc, beta as a sum post-op),
// or, where oneDNN has no fast kernel for the strided destination (its brgemm matmul wants
// ldc == N; 2.6 then picks its reference loop: a PTB training step through it had not finished
// after 15 minutes), into a dense scratch [M,N] that is then added to C row by row.
struct Matmul {
  dnnl::matmul::primitive_desc pd;
  dnnl::matmul prim;
  dnnl::memory c;
  bool via_scratch = false;
  float beta = 0;
  int M = 0, N = 0, ldc = 0;
};

bool reference_impl(const dnnl::matmul::primitive_desc& pd) {
  return std::string(pd.impl_info_str()).rfind("ref", 0) == 0;
}

Matmul make_matmul(const dnnl::memory::desc& wei, int M, int N, int K, int ldc, float alpha,
                   float beta) {
  Matmul m{matmul_desc(wei, M, N, K, ldc, alpha, beta), {}, {}, false, beta, M, N, ldc};
  if (ldc != N && reference_impl(m.pd)) {
    m.pd = matmul_desc(wei, M, N, K, N, alpha, 0.0f);
    m.via_scratch = true;
  }
  m.prim = dnnl::matmul(m.pd);
  m.c = unbound(m.pd.dst_desc());
  return m;
}

void run_matmul(Matmul& m, dnnl::stream& stream, const dnnl::memory& src, const dnnl::memory& wei,
                float* C, Buffer& scratch) {
  float* out = m.via_scratch ? static_cast<float*>(scratch.get(sizeof(float) * m.M * m.N)) : C;
  m.c.set_data_handle(out);
  m.prim.execute(stream, {{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wei}, {DNNL_ARG_DST, m.c}});
  stream.wait();
  if (!m.via_scratch) return;
  for (int i = 0; i < m.M; ++i) {
    const float* o = out + static_cast<size_t>(i) * m.N;
    float* c = C + static_cast<size_t>(i) * m.ldc;
    if (m.beta == 0.0f)  // C is not read (cblas's beta = 0)
      std::copy_n(o, m.N, c);
    else
      for (int j = 0; j < m.N; ++j) c[j] = o[j] + m.beta * c[j];
  }
}

// One product shape of sgemm_bf16: both fp32 factors reordered into bf16 (A dense, B in the
// matmul's layout; the reorders read any strides, so op() is a stride), then the matmul.
struct Product {
  Matmul mm;
  dnnl::reorder to_a, to_b;
  dnnl::memory a32, b32, a16, b16;
};
// ta, tb, M, N, K, lda, ldb, ldc, alpha, beta
using ProductKey = std::tuple<bool, bool, int, int, int, int, int, int, float, float>;

Product make_product(const ProductKey& key) {
  const auto [ta, tb, M, N, K, lda, ldb, ldc, alpha, beta] = key;
  Matmul mm = make_matmul(any_weights(K, N), M, N, K, ldc, alpha, beta);
  const auto a32 = f32_desc(M, K, lda, ta), b32 = f32_desc(K, N, ldb, tb);
  const auto a16 = mm.pd.src_desc(), b16 = mm.pd.weights_desc();
  return {std::move(mm), make_reorder(a32, a16), make_reorder(b32, b16),
          unbound(a32),  unbound(b32),           unbound(a16), unbound(b16)};
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
    (void)make_product({false, false, 4, 4, 4, 4, 4, 4, 1.0f, 0.0f});
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
  thread_local std::map<ProductKey, Product> products;
  thread_local Buffer a16, b16, out;
  thread_local dnnl::stream stream(cpu_engine());
  const ProductKey key{ta, tb, M, N, K, lda, ldb, ldc, alpha, beta};
  try {
    auto it = products.find(key);
    if (it == products.end()) it = products.emplace(key, make_product(key)).first;
    Product& p = it->second;
    p.a32.set_data_handle(const_cast<float*>(A));
    p.b32.set_data_handle(const_cast<float*>(B));
    p.a16.set_data_handle(a16.get(p.a16.get_desc().get_size()));
    p.b16.set_data_handle(b16.get(p.b16.get_desc().get_size()));
    p.to_a.execute(stream, p.a32, p.a16);
    p.to_b.execute(stream, p.b32, p.b16);
    run_matmul(p.mm, stream, p.a16, p.b16, C, out);
  } catch (const dnnl::error& e) {
    matmul_failed("matmul", M, N, K, e);
  }
}

// ---- FixedRightOperand<float> -----------------------------------------------------------------

// B rounded to bf16 in the layout oneDNN's matmul reads fastest, and the matmuls that read it: one
// per lda, ldc and beta.
struct FixedRightOperand<float>::Blocked {
  struct Step {
    Matmul mm;
    dnnl::reorder to_a;  // A rounded into a16
    dnnl::memory a32, a16;
  };
  int M = 0, N = 0, K = 0, ldb = 0;
  dnnl::memory::desc b32_desc, wei_desc;
  dnnl::reorder to_wei;
  dnnl::memory wei;  // owned: B in the matmul's layout
  std::map<std::tuple<int, int, float>, Step> steps;  // lda, ldc, beta
  Buffer a16, out;
  dnnl::stream stream{cpu_engine()};

  void prepare(const float* B, int K_, int N_, int ldb_, int M_) {
    if (M_ != M || N_ != N || K_ != K || ldb_ != ldb) {
      M = M_, N = N_, K = K_, ldb = ldb_;
      const auto pd = matmul_desc(any_weights(K, N), M, N, K, N, 1.0f, 0.0f);
      steps.clear();
      if (pd.weights_desc() != wei_desc) {
        wei_desc = pd.weights_desc();
        wei = dnnl::memory(wei_desc, cpu_engine());
      }
      b32_desc = f32_desc(K, N, ldb, false);
      to_wei = make_reorder(b32_desc, wei_desc);
    }
    dnnl::memory b32(b32_desc, cpu_engine(), const_cast<float*>(B));
    to_wei.execute(stream, b32, wei);
    stream.wait();
  }

  void multiply(const float* A, int lda, float beta, float* C, int ldc) {
    auto it = steps.find({lda, ldc, beta});
    if (it == steps.end()) {
      Matmul mm = make_matmul(wei_desc, M, N, K, ldc, 1.0f, beta);
      const auto a32 = f32_desc(M, K, lda, false), a16_desc = mm.pd.src_desc();
      it = steps.emplace(std::tuple{lda, ldc, beta},
                         Step{std::move(mm), make_reorder(a32, a16_desc), unbound(a32), unbound(a16_desc)})
               .first;
    }
    Step& s = it->second;
    s.a32.set_data_handle(const_cast<float*>(A));
    s.a16.set_data_handle(a16.get(s.a16.get_desc().get_size()));
    s.to_a.execute(stream, s.a32, s.a16);
    run_matmul(s.mm, stream, s.a16, wei, C, out);
  }
};

FixedRightOperand<float>::FixedRightOperand() = default;
FixedRightOperand<float>::FixedRightOperand(FixedRightOperand&&) noexcept = default;
FixedRightOperand<float>& FixedRightOperand<float>::operator=(FixedRightOperand&&) noexcept = default;
FixedRightOperand<float>::~FixedRightOperand() = default;

void FixedRightOperand<float>::prepare(const float* B, int K, int N, int ldb, int M) {
  B_ = B, K_ = K, N_ = N, ldb_ = ldb, M_ = M;
  // (the test emulation rounds both factors at each product, through gemm)
  blocked_on_ = precision() == Precision::bf16 && !g_emulate.load(std::memory_order_relaxed) &&
                M > 0 && N > 0 && K > 0;
  if (!blocked_on_) return;
  if (!blocked_) blocked_ = std::make_unique<Blocked>();
  try {
    blocked_->prepare(B, K, N, ldb, M);
  } catch (const dnnl::error& e) {
    matmul_failed("weights reorder", M, N, K, e);
  }
}

void FixedRightOperand<float>::multiply(const float* A, int lda, float beta, float* C, int ldc) {
  if (!blocked_on_) return gemm(false, false, M_, N_, K_, 1.0f, A, lda, B_, ldb_, beta, C, ldc);
  try {
    blocked_->multiply(A, lda, beta, C, ldc);
  } catch (const dnnl::error& e) {
    matmul_failed("matmul", M_, N_, K_, e);
  }
}

}  // namespace rbn::blas
