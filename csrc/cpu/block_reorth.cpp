// block_reorth CPU kernels: the three streaming primitives of
// landscape_fast/kernels/block_reorth_driver.py, registered as torch.ops.landscape_fast.*.
//
//   reorth_project(Q, W)            -> (C = Q W^T (m,b) f64, n2 = rowwise |W|^2 (b,) f64)
//   reorth_update_(Q, W!, C, gram)  -> W -= C^T Q, then Q W^T (m,b) or W W^T (b,b), f64
//   reorth_transform_(W!, T, gram)  -> W <- T W, then W W^T (b,b) f64 or an empty tensor
//
// Layout: Q is (m, p) and W is (b, p), row-major, one vector per row.
//
// Design:
// * Streaming. Each op reads Q exactly once, directly from the caller's memory (no copy):
//   a low-precision basis is widened to float32 in registers as it is loaded (bf16: a
//   16-bit shift; fp16: vcvtph2ps), so it is streamed at its stored width. CGS2 therefore
//   costs three passes over Q (project; update; update + Gram), not four.
// * Tiling (all sizes depend on p, m, b and the dtypes only, never on the thread count):
//   - sub-tile: the cache unit, ~kTileBytes of Q and W columns. reorth_update_ subtracts
//     C^T Q from a sub-tile of W and then, while that sub-tile of Q is still in L2,
//     accumulates Q W^T (or W W^T) on it. The next sub-tile is software-prefetched into L2
//     while the current one is computed on (see Prefetcher).
//   - tile: the reduction unit (>= kRedCols columns). Dot products accumulate in float32
//     vector registers/buffers over a tile, then are reduced into float64.
//   - chunk: a fixed range of tiles with its own float64 accumulator; at most kMaxChunks.
//     Chunks are summed in chunk order, so results are bitwise identical for any number of
//     threads.
// * Arithmetic: float32 within a tile (float64 for a float64 block), SIMD vectors of the
//   build's widest registers (GCC/Clang vector extensions: 16 floats with AVX-512 as built
//   with -march=native on Zen 4, 8 with AVX2, 4 otherwise), register-blocked micro-kernels:
//   - dots (C = Q W^T, D = Q W^T): 4 x 4 blocks of (basis row, block row) pairs, 16 vector
//     accumulators, 8 loads per 16 FMAs;
//   - gemm (W -= C^T Q, W <- T W): 4 rows x 4 vectors of columns of W in 16 registers while
//     the K loop runs over basis rows (4 loads + 4 broadcasts per 16 FMAs).
//   Gram matrices W W^T and the norms n2 are computed in float64 (the float32 block tile is
//   widened once; float32 products are exact in float64), because the driver's Cholesky
//   rank decisions need ~1e-8 relative resolution.
// * Threads: at::parallel_for over chunks (torch's OpenMP pool, so torch.set_num_threads
//   applies), one thread for small problems.
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "common.h"
#include "simd.h"

// Vector arguments of non-inlined helpers (ABI note only), and GCC 12's false
// positive on _mm512_undefined_*() inside its own AVX-512 headers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace landscape_fast {
namespace {

#define LF_INLINE inline __attribute__((always_inline))
#define LF_INLINE_LAMBDA __attribute__((always_inline))

// ------------------------------------------------------------------------------------------
// Tuning constants (measured on Zen 4, 1 MiB L2 per core; see bench/bench_block_reorth.py).
// ------------------------------------------------------------------------------------------
constexpr int64_t kTileBytes = 256 * 1024;  // cache budget of one sub-tile (+ the next one)
constexpr int64_t kMinTile = 256;           // sub-tile width bounds, columns
constexpr int64_t kMaxTile = 16384;
constexpr int64_t kColAlign = 64;           // sub-tile width granularity (gemm column block)
constexpr int64_t kRedCols = 4096;          // tile (float32 -> float64 reduction unit), columns
constexpr int64_t kMaxChunks = 128;         // fixed reduction chunks (thread-count independent)
constexpr int64_t kSerialFlops = 1 << 20;   // below this many multiply-adds: one thread
constexpr int kMR = 4;                      // dots: basis rows per register block
constexpr int kNR = 4;                      // dots: block rows per register block
constexpr int64_t kDotsCols = 1024;         // dots: columns per range between prefetches,
constexpr int64_t kDotsColsThin = 256;      //   for nb >= 8 / for thin blocks (memory-bound)
constexpr int kGR = 4;                      // gemm: output rows per register block
constexpr int kGV = 4;                      // gemm: vectors of columns per register block
constexpr int64_t kKC = 32;                 // gemm (subtraction): basis rows per K chunk
constexpr int64_t kPfMinBytes = 8 << 20;    // software prefetch only above this footprint

// ------------------------------------------------------------------------------------------
// SIMD layer: compiler vector extensions of the widest register the build targets (64 bytes
// with AVX-512, 32 with AVX, 16 otherwise), so the register-blocked kernels never hold more
// accumulators than there are registers. a * b + c is contracted to an FMA (GCC's and
// Clang's default for C++).
// ------------------------------------------------------------------------------------------
// (kVecBytes, Simd, VecT, vload and vstore come from simd.h.)

// Pins a loaded vector in a register: without it GCC re-reads an operand from memory for
// each of its uses (folding the load into every FMA), which doubles the load-port pressure
// of the register-blocked kernels.
template <typename V>
LF_INLINE void pin(V& v) {
#if defined(__GNUC__) && defined(__x86_64__) && defined(__AVX512F__)
  asm("" : "+v"(v));
#elif defined(__GNUC__) && defined(__x86_64__)
  if constexpr (sizeof(V) <= kVecBytes) asm("" : "+x"(v));
#elif defined(__GNUC__) && defined(__aarch64__)
  if constexpr (sizeof(V) == 16) asm("" : "+w"(v));
#else
  (void)v;
#endif
}

// Fixed-order tree sum of the lanes of any vector.
template <typename V>
LF_INLINE auto hsum(V v) {
  using S = std::remove_cv_t<std::remove_reference_t<decltype(v[0])>>;
  constexpr int L = sizeof(V) / sizeof(S);
  S lanes[L];
  std::memcpy(lanes, &v, sizeof(v));
  for (int w = L / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) lanes[i] += lanes[i + w];
  return lanes[0];
}

// ------------------------------------------------------------------------------------------
// Scratch memory (64-byte aligned, uninitialised).
// ------------------------------------------------------------------------------------------
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t count) {
    if (count > 0) {
      size_t bytes = (static_cast<size_t>(count) * sizeof(T) + 63) / 64 * 64;
      ptr_ = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (ptr_ == nullptr) throw std::bad_alloc();
    }
  }
  ~Scratch() { std::free(ptr_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* get() const { return ptr_; }

 private:
  T* ptr_ = nullptr;
};

// ------------------------------------------------------------------------------------------
// Software prefetch of the next sub-tile. A sub-tile is m + b short row segments (a few KiB
// each, p elements apart), on which the hardware stream prefetchers restart at every row;
// without help one core read them at about half its streaming bandwidth (measured), and
// only while it was not computing. The kernels therefore prefetch the next sub-tile's rows
// (of Q and of W) into L2 while they compute on the current one, a fixed quota of cache
// lines per micro-kernel call, so that DRAM traffic overlaps compute.
// ------------------------------------------------------------------------------------------
class Prefetcher {
 public:
  // Registers a row-major matrix of `rows` rows, row stride ld elements of elem bytes.
  void add(const void* base, int64_t rows, int64_t ld, int64_t elem) {
    mats_[nmats_++] = {static_cast<const char*>(base), rows, ld * elem, elem};
  }
  // Software prefetch only when the operands do not fit in the last-level cache: on
  // cache-resident data the prefetch instructions cost as much as the loads they replace.
  void enable_if_larger_than_cache(int64_t cols) {
    int64_t bytes = 0;
    for (int i = 0; i < nmats_; ++i) bytes += mats_[i].rows * cols * mats_[i].elem;
    enabled_ = bytes > kPfMinBytes;
  }
  // Aims at columns [j0, j0 + n) of every registered matrix (n = 0: nothing to prefetch),
  // spreading their cache lines evenly over the `steps` issue() calls the caller will make.
  void target(int64_t j0, int64_t n, int64_t steps) {
    mat_ = 0;
    row_ = 0;
    j0_ = j0;
    n_ = enabled_ ? n : 0;
    int64_t lines = 0;
    for (int i = 0; i < nmats_; ++i) lines += mats_[i].rows * ((n * mats_[i].elem + 63) / 64 + 1);
    quota_ = n_ > 0 ? (lines + steps - 1) / std::max<int64_t>(steps, 1) : 0;
    start_row();
  }
  LF_INLINE void issue() {
    if (quota_ > 0) issue_n(quota_);
  }

 private:
  struct Mat {
    const char* base;
    int64_t rows, ld_bytes, elem;
  };
  void start_row() {
    while (mat_ < nmats_ && row_ >= mats_[mat_].rows) {
      ++mat_;
      row_ = 0;
    }
    if (mat_ < nmats_) {
      const Mat& M = mats_[mat_];
      const char* p = M.base + row_ * M.ld_bytes + j0_ * M.elem;
      cur_ = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63));
      end_ = p + n_ * M.elem;
    }
  }
  void issue_n(int64_t k) {
    while (k > 0 && mat_ < nmats_) {
      const int64_t take = std::min<int64_t>(k, (end_ - cur_ + 63) / 64);
      for (int64_t l = 0; l < take; ++l) {
        __builtin_prefetch(cur_ + 64 * l, 0, 2);  // prefetcht1: into L2 (T0, NTA: slower)
      }
      cur_ += 64 * take;
      k -= take;
      if (cur_ >= end_) {
        ++row_;
        start_row();
      }
    }
  }
  Mat mats_[2] = {};
  int nmats_ = 0;
  int mat_ = 0;
  int64_t row_ = 0, j0_ = 0, n_ = 0, quota_ = 0;
  bool enabled_ = true;
  const char* cur_ = nullptr;
  const char* end_ = nullptr;
};

// Leading dimension of a scratch tile of n columns: padded by one cache line so that rows of
// a 4 KiB-multiple width do not map to the same L1 sets.
template <typename S>
int64_t padded_ld(int64_t n) {
  constexpr int64_t line = 64 / sizeof(S);
  return (n + line - 1) / line * line + line;
}

// ------------------------------------------------------------------------------------------
// Basis storage types. A low-precision basis is widened to float32 as it is loaded into
// registers (bf16: a 16-bit shift; fp16: F16C), so it is read at its stored width.
// ------------------------------------------------------------------------------------------
struct BF16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

template <typename S>
LF_INLINE VecT<S> load_as(const S* p) {
  return vload(p);
}

LF_INLINE VecT<float> load_as(const BF16* p) {
  VecT<float> v;
#if defined(__AVX512F__)
  __m512i w = _mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16);
  std::memcpy(&v, &w, sizeof(v));
#elif defined(__AVX2__)
  __m256i w = _mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16);
  std::memcpy(&v, &w, sizeof(v));
#else
  typedef uint16_t U16v __attribute__((vector_size(kVecBytes / 2)));
  typedef uint32_t U32v __attribute__((vector_size(kVecBytes)));
  U16v h;
  std::memcpy(&h, p, sizeof(h));
  U32v w = __builtin_convertvector(h, U32v) << 16;
  std::memcpy(&v, &w, sizeof(v));
#endif
  return v;
}

LF_INLINE VecT<float> load_as(const F16* p) {
  VecT<float> v;
#if defined(__AVX512F__)
  __m512 f = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  std::memcpy(&v, &f, sizeof(v));
#elif defined(__F16C__)  // implies AVX: 8 lanes
  __m256 f = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  std::memcpy(&v, &f, sizeof(v));
#else
  for (int l = 0; l < Simd<float>::L; ++l) v[l] = c10::detail::fp16_ieee_to_fp32_value(p[l].bits);
#endif
  return v;
}

template <typename S>
LF_INLINE S scalar_as(S x) {
  return x;
}
LF_INLINE float scalar_as(BF16 x) {
  const uint32_t w = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}
LF_INLINE float scalar_as(F16 x) { return c10::detail::fp16_ieee_to_fp32_value(x.bits); }

// 8 floats widened to 8 doubles (vcvtps2pd zmm; GCC splits __builtin_convertvector).
typedef double D8 __attribute__((vector_size(64)));
LF_INLINE D8 widen8(const float* p) {
  D8 d;
#if defined(__AVX512F__)
  __m512d w = _mm512_cvtps_pd(_mm256_loadu_ps(p));
  std::memcpy(&d, &w, sizeof(d));
#else
  typedef float F8 __attribute__((vector_size(32)));
  F8 f;
  std::memcpy(&f, p, sizeof(f));
  d = __builtin_convertvector(f, D8);
#endif
  return d;
}
LF_INLINE D8 widen8(const double* p) {
  D8 d;
  std::memcpy(&d, p, sizeof(d));
  return d;
}

// Row copy of a (rows x n) tile.
template <typename S>
void copy_rows(const S* src, int64_t lds, int64_t rows, int64_t n, S* dst, int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i) std::memcpy(dst + i * ldd, src + i * lds, n * sizeof(S));
}

// float -> double widening of a (rows x n) tile.
void widen_rows(const float* src, int64_t lds, int64_t rows, int64_t n, double* dst,
                int64_t ldd) {
  for (int64_t i = 0; i < rows; ++i) {
    const float* s = src + i * lds;
    double* d = dst + i * ldd;
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
      const D8 w = widen8(s + j);
      std::memcpy(d + j, &w, sizeof(w));
    }
    for (; j < n; ++j) d[j] = static_cast<double>(s[j]);
  }
}

// sum_j x[j]^2 in float64 (4 independent accumulators).
template <typename S>
double sumsq_f64(const S* x, int64_t n) {
  D8 acc[4] = {};
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    for (int u = 0; u < 4; ++u) {
      const D8 d = widen8(x + j + 8 * u);
      acc[u] = d * d + acc[u];
    }
  }
  for (; j + 8 <= n; j += 8) {
    const D8 d = widen8(x + j);
    acc[0] = d * d + acc[0];
  }
  double s = hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; j < n; ++j) s += static_cast<double>(x[j]) * static_cast<double>(x[j]);
  return s;
}

// ------------------------------------------------------------------------------------------
// dots: out[i * ldo + k] += sum_j A[i][j] * B[k][j]   (S arithmetic, float64 result)
// A may be stored in a narrower type AT (the basis).
//
// The kernel adds one column range of an MR x NR block into vector accumulators kept in a
// small buffer (acc), so the driver can cut the columns into ranges (and interleave
// prefetches) without reducing the vectors to scalars more than once per tile.
// ------------------------------------------------------------------------------------------
template <typename S, typename AT, int MR, int NR>
void dots_kernel(const AT* A, int64_t lda, const S* B, int64_t ldb, int64_t n, VecT<S>* accbuf) {
  using V = VecT<S>;
  constexpr int L = Simd<S>::L;
  // Small blocks (b = 1, remainders) get U independent accumulator sets, so that at least
  // ~8 FMA chains are in flight (FMA latency x throughput); summed in a fixed order.
  constexpr int U = MR * NR >= 8 ? 1 : (MR * NR >= 4 ? 2 : 4);
  V acc[U][MR][NR];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < MR; ++i)
      for (int k = 0; k < NR; ++k) acc[u][i][k] = u == 0 ? accbuf[i * NR + k] : V{};
  int64_t j = 0;
  auto step = [&](int u, int64_t jj) LF_INLINE_LAMBDA {
    V b[NR];
    for (int k = 0; k < NR; ++k) {
      b[k] = vload(B + k * ldb + jj);
      pin(b[k]);
    }
    for (int i = 0; i < MR; ++i) {
      V a = load_as(A + i * lda + jj);
      pin(a);
      for (int k = 0; k < NR; ++k) acc[u][i][k] = a * b[k] + acc[u][i][k];
    }
  };
  for (; j + U * L <= n; j += U * L)
    for (int u = 0; u < U; ++u) step(u, j + u * L);
  for (; j + L <= n; j += L) step(0, j);
  for (int u = 1; u < U; ++u)
    for (int i = 0; i < MR; ++i)
      for (int k = 0; k < NR; ++k) acc[0][i][k] += acc[u][i][k];
  for (int i = 0; i < MR; ++i)
    for (int k = 0; k < NR; ++k) accbuf[i * NR + k] = acc[0][i][k];
}

template <typename S, typename AT>
using DotsFn = void (*)(const AT*, int64_t, const S*, int64_t, int64_t, VecT<S>*);

template <typename S, typename AT, int MR, int... NR>
constexpr std::array<DotsFn<S, AT>, sizeof...(NR)> dots_row(std::integer_sequence<int, NR...>) {
  return {&dots_kernel<S, AT, MR, NR + 1>...};
}

template <typename S, typename AT, int... MR>
constexpr std::array<std::array<DotsFn<S, AT>, kNR>, sizeof...(MR)> dots_table(
    std::integer_sequence<int, MR...>) {
  return {dots_row<S, AT, MR + 1>(std::make_integer_sequence<int, kNR>{})...};
}

// Vector accumulators of every (i, k) register block of one dots product, kept across the
// sub-tiles of a tile and reduced to float64 once per tile (flush).
template <typename S>
class DotAcc {
 public:
  DotAcc(int64_t ma, int64_t nb)
      : ma_(ma), nb_(nb), ib_((ma + kMR - 1) / kMR), kb_((nb + kNR - 1) / kNR),
        buf_(ib_ * kb_ * kMR * kNR) {}
  VecT<S>* block(int64_t i0, int64_t k0) {
    return buf_.get() + ((i0 / kMR) * kb_ + k0 / kNR) * (kMR * kNR);
  }
  void zero() {
    VecT<S>* p = buf_.get();
    for (int64_t e = 0; e < ib_ * kb_ * kMR * kNR; ++e) p[e] = VecT<S>{};
  }
  // out[i * ldo + k] += sum of the lanes, for every pair (sym: blocks on or above the
  // diagonal); then zero.
  void flush(double* out, int64_t ldo, bool sym) {
    for (int64_t i0 = 0; i0 < ma_; i0 += kMR) {
      const int64_t mr = std::min<int64_t>(kMR, ma_ - i0);
      for (int64_t k0 = sym ? i0 : 0; k0 < nb_; k0 += kNR) {
        const int64_t nr = std::min<int64_t>(kNR, nb_ - k0);
        VecT<S>* blk = block(i0, k0);
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t k = 0; k < nr; ++k)
            out[(i0 + i) * ldo + k0 + k] += static_cast<double>(hsum(blk[i * nr + k]));
      }
    }
    zero();
  }

 private:
  int64_t ma_, nb_, ib_, kb_;
  Scratch<VecT<S>> buf_;
};

// Number of prefetcher issue() calls dots makes on n columns.
int64_t dots_cols(int64_t nb) { return nb >= 8 ? kDotsCols : kDotsColsThin; }
int64_t dots_steps(int64_t ma, int64_t nb, int64_t n) {
  return (ma + kMR - 1) / kMR * ((n + dots_cols(nb) - 1) / dots_cols(nb));
}

// acc += A B^T over n columns, for all (i, k) pairs, or with sym (A == B) only the blocks
// on or above the diagonal (the caller mirrors the upper triangle once the sums are
// complete). Loop order: block row of A (kMR rows, read once from memory) > column range
// (dots_cols(nb), stays in L1) > block of B. The prefetcher gets one issue() per (block row,
// column range). The columns past the last full vector (only in the last tile of the
// matrix) are summed in scalar S and added to out directly.
template <typename S, typename AT>
void dots(const AT* A, int64_t lda, int64_t ma, const S* B, int64_t ldb, int64_t nb, int64_t n,
          DotAcc<S>& acc, double* out, int64_t ldo, bool sym, Prefetcher* pf) {
  constexpr int L = Simd<S>::L;
  static constexpr auto table = dots_table<S, AT>(std::make_integer_sequence<int, kMR>{});
  static_assert(kMR == kNR, "symmetric blocking assumes square register blocks");
  const int64_t nv = n / L * L;
  const int64_t cols = dots_cols(nb);
  for (int64_t i0 = 0; i0 < ma; i0 += kMR) {
    const int mr = static_cast<int>(std::min<int64_t>(kMR, ma - i0));
    const AT* a = A + i0 * lda;
    for (int64_t c0 = 0; c0 < n; c0 += cols) {
      pf->issue();
      const int64_t cn = std::min(cols, nv - c0);
      if (cn <= 0) continue;
      for (int64_t k0 = sym ? i0 : 0; k0 < nb; k0 += kNR) {
        const int nr = static_cast<int>(std::min<int64_t>(kNR, nb - k0));
        table[mr - 1][nr - 1](a + c0, lda, B + k0 * ldb + c0, ldb, cn, acc.block(i0, k0));
      }
    }
  }
  if (nv < n) {
    for (int64_t i = 0; i < ma; ++i) {
      for (int64_t k = sym ? i / kNR * kNR : 0; k < nb; ++k) {
        S s = 0;
        for (int64_t t = nv; t < n; ++t) s += scalar_as(A[i * lda + t]) * B[k * ldb + t];
        out[i * ldo + k] += static_cast<double>(s);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------
// gemm: dst[r][j] = (SUB ? dst[r][j] - : +) sum_{i<K} coef[i * ldc + r] * src[i][j]
//   (W -= C^T Q with coef = C (m x b); W <- T W with coef = T^T (b x b) and src = old W)
// ------------------------------------------------------------------------------------------
template <typename S, typename AT, int NR, int JV, bool SUB>
void gemm_kernel(S* dst, int64_t ldd, const AT* src, int64_t lds, const S* coef, int64_t ldc,
                 int64_t K) {
  using V = VecT<S>;
  constexpr int L = Simd<S>::L;
  V acc[NR][JV];
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < JV; ++v) acc[r][v] = SUB ? vload(dst + r * ldd + v * L) : V{};
  for (int64_t i = 0; i < K; ++i) {
    V q[JV];
    for (int v = 0; v < JV; ++v) {
      q[v] = load_as(src + i * lds + v * L);
      pin(q[v]);
    }
    for (int r = 0; r < NR; ++r) {
      const S c = coef[i * ldc + r];
      for (int v = 0; v < JV; ++v) {
        if constexpr (SUB) {
          acc[r][v] = acc[r][v] - c * q[v];
        } else {
          acc[r][v] = c * q[v] + acc[r][v];
        }
      }
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int v = 0; v < JV; ++v) vstore(dst + r * ldd + v * L, acc[r][v]);
}

template <typename S, typename AT>
using GemmFn = void (*)(S*, int64_t, const AT*, int64_t, const S*, int64_t, int64_t);

template <typename S, typename AT, int JV, bool SUB, int... NR>
constexpr std::array<GemmFn<S, AT>, sizeof...(NR)> gemm_table(std::integer_sequence<int, NR...>) {
  return {&gemm_kernel<S, AT, NR + 1, JV, SUB>...};
}

// The K loop of a subtraction is cut into chunks of kKC basis rows (the W accumulators go
// through L1 between chunks; the arithmetic order is unchanged), and the prefetcher gets
// one issue() per (column block, K chunk): enough calls to spread the next tile's lines.
template <typename S, typename AT, bool SUB>
void gemm(S* dst, int64_t ldd, int64_t rows, const AT* src, int64_t lds, const S* coef,
          int64_t ldc, int64_t K, int64_t n, Prefetcher* pf) {
  constexpr int L = Simd<S>::L;
  static constexpr auto wide =
      gemm_table<S, AT, kGV, SUB>(std::make_integer_sequence<int, kGR>{});
  static constexpr auto narrow = gemm_table<S, AT, 1, SUB>(std::make_integer_sequence<int, kGR>{});
  const int64_t kc = SUB ? kKC : K;
  int64_t j = 0;
  for (; j + kGV * L <= n; j += kGV * L) {
    for (int64_t k0 = 0; k0 < K; k0 += kc) {
      pf->issue();
      const int64_t kn = std::min(kc, K - k0);
      for (int64_t r0 = 0; r0 < rows; r0 += kGR) {
        const int nr = static_cast<int>(std::min<int64_t>(kGR, rows - r0));
        wide[nr - 1](dst + r0 * ldd + j, ldd, src + k0 * lds + j, lds, coef + k0 * ldc + r0,
                     ldc, kn);
      }
    }
  }
  for (; j + L <= n; j += L) {
    for (int64_t r0 = 0; r0 < rows; r0 += kGR) {
      const int nr = static_cast<int>(std::min<int64_t>(kGR, rows - r0));
      narrow[nr - 1](dst + r0 * ldd + j, ldd, src + j, lds, coef + r0, ldc, K);
    }
  }
  // Scalar tail; with rows <= kGR every output of a column is computed before any is stored,
  // as in the vector kernels, so that dst may alias src (in-place transform of a thin block).
  S out[kGR];
  for (; j < n; ++j) {
    for (int64_t r = 0; r < rows; ++r) {
      S acc = SUB ? dst[r * ldd + j] : S(0);
      for (int64_t i = 0; i < K; ++i) {
        const S q = scalar_as(src[i * lds + j]);
        if constexpr (SUB) {
          acc = acc - coef[i * ldc + r] * q;
        } else {
          acc = coef[i * ldc + r] * q + acc;
        }
      }
      if (rows <= kGR) {
        out[r] = acc;
      } else {
        dst[r * ldd + j] = acc;
      }
    }
    for (int64_t r = 0; rows <= kGR && r < rows; ++r) dst[r * ldd + j] = out[r];
  }
}

// Number of prefetcher issue() calls gemm makes on n columns.
template <typename S, bool SUB>
int64_t gemm_steps(int64_t n, int64_t K) {
  return n / (kGV * Simd<S>::L) * (SUB ? (K + kKC - 1) / kKC : 1);
}

// ------------------------------------------------------------------------------------------
// Column tiling and the fixed reduction chunks.
//   sub-tile: the cache unit (what one op keeps hot in L2, plus the next one in flight);
//   tile:     the reduction unit, a whole number of sub-tiles of >= kRedCols columns: the
//             float32 vector partial sums are reduced into float64 once per tile;
//   chunk:    a fixed range of tiles with its own float64 accumulator (parallel unit).
// All three depend on (p, m, b, dtypes) only, never on the thread count.
// ------------------------------------------------------------------------------------------
struct Plan {
  int64_t p = 0;        // columns
  int64_t sub = 0;      // columns per sub-tile
  int64_t tile = 0;     // columns per tile (a multiple of sub)
  int64_t ntiles = 0;
  int64_t nchunks = 0;  // chunk c owns tiles [c * ntiles / nchunks, (c + 1) * ntiles / nchunks)
  int64_t grain = 1;    // at::parallel_for grain over chunks

  int64_t first_tile(int64_t c) const { return c * ntiles / nchunks; }
};

// bytes_per_col: cache bytes one column of a sub-tile occupies (everything an op keeps hot,
// including the prefetched next sub-tile).
Plan make_plan(int64_t p, int64_t bytes_per_col, int64_t flops_per_col) {
  Plan plan;
  plan.p = p;
  const int64_t p_up = std::max<int64_t>((p + kColAlign - 1) / kColAlign * kColAlign, kColAlign);
  int64_t sub = kTileBytes / std::max<int64_t>(bytes_per_col, 1);
  sub = std::clamp(sub, kMinTile, kMaxTile) / kColAlign * kColAlign;
  plan.sub = std::min(sub, p_up);
  plan.tile = std::min(plan.sub * ((kRedCols + plan.sub - 1) / plan.sub),
                       (p_up + plan.sub - 1) / plan.sub * plan.sub);
  plan.ntiles = p > 0 ? (p + plan.tile - 1) / plan.tile : 0;
  plan.nchunks = std::min(plan.ntiles, kMaxChunks);
  const double flops = static_cast<double>(flops_per_col) * static_cast<double>(p);
  plan.grain = flops < static_cast<double>(kSerialFlops) ? std::max<int64_t>(plan.nchunks, 1) : 1;
  return plan;
}

// Runs body(c0, c1, acc) over the chunks in parallel (a contiguous range of chunks per
// thread, so the prefetcher runs across chunk boundaries); chunk c accumulates into its own
// zeroed float64 block acc + c * acc_size, and the blocks are summed in chunk order, so the
// result does not depend on the number of threads. (Guided scheduling, to tolerate a thread
// slowed down by another process, measured no better on the shared 2-core machine.)
template <typename Body>
std::vector<double> run_chunks(const Plan& plan, int64_t acc_size, Body&& body) {
  std::vector<double> total(acc_size, 0.0);
  if (plan.nchunks == 0) return total;
  std::vector<double> acc(plan.nchunks * acc_size, 0.0);
  at::parallel_for(0, plan.nchunks, plan.grain,
                   [&](int64_t c0, int64_t c1) { body(c0, c1, acc.data()); });
  for (int64_t c = 0; c < plan.nchunks; ++c) {
    const double* a = acc.data() + c * acc_size;
    for (int64_t e = 0; e < acc_size; ++e) total[e] += a[e];
  }
  return total;
}

void mirror_upper(double* G, int64_t b) {
  for (int64_t i = 0; i < b; ++i)
    for (int64_t k = 0; k < i; ++k) G[i * b + k] = G[k * b + i];
}

// For every tile of chunks [c0, c1), in order: sub(j0, n, a) on each of its sub-tiles, then
// flush(a), where a is the chunk's float64 accumulator. The prefetcher is aimed at the next
// sub-tile of the same range (the tiles of consecutive chunks are adjacent); steps(n): the
// prefetcher issue() calls sub() makes on n columns.
template <typename Steps, typename SubFn, typename FlushFn>
void for_tiles(const Plan& plan, int64_t c0, int64_t c1, double* acc, int64_t acc_size,
               Prefetcher& pf, Steps&& steps, SubFn&& sub, FlushFn&& flush) {
  const int64_t col_end = std::min(plan.p, plan.first_tile(c1) * plan.tile);
  for (int64_t c = c0; c < c1; ++c) {
    double* a = acc + c * acc_size;
    for (int64_t t = plan.first_tile(c); t < plan.first_tile(c + 1); ++t) {
      const int64_t t1 = std::min(plan.p, (t + 1) * plan.tile);
      for (int64_t j0 = t * plan.tile; j0 < t1; j0 += plan.sub) {
        const int64_t n = std::min(plan.sub, t1 - j0);
        pf.target(j0 + n, std::clamp<int64_t>(col_end - j0 - n, 0, plan.sub), steps(n));
        sub(j0, n, a);
      }
      flush(a);
    }
  }
}

// ------------------------------------------------------------------------------------------
// The three primitives, typed. S: compute type (= block dtype); QT: basis storage type.
// ------------------------------------------------------------------------------------------
template <typename S, typename QT>
void project_impl(const QT* Q, const S* W, int64_t m, int64_t b, int64_t p, double* C,
                  double* n2) {
  const Plan plan = make_plan(p, 2 * (m * sizeof(QT) + b * sizeof(S)), (m + 1) * b);
  const int64_t acc_size = m * b + b;
  std::vector<double> total = run_chunks(plan, acc_size, [&](int64_t c0, int64_t c1, double* acc) {
    DotAcc<S> dacc(m, b);
    dacc.zero();
    Prefetcher pf;
    pf.add(Q, m, p, sizeof(QT));
    pf.add(W, b, p, sizeof(S));
    pf.enable_if_larger_than_cache(p);
    auto steps = [&](int64_t n) { return dots_steps(m, b, n); };
    auto sub = [&](int64_t j0, int64_t n, double* a) {
      dots<S, QT>(Q + j0, p, m, W + j0, p, b, n, dacc, a, b, false, &pf);
      for (int64_t k = 0; k < b; ++k) a[m * b + k] += sumsq_f64(W + k * p + j0, n);
    };
    for_tiles(plan, c0, c1, acc, acc_size, pf, steps, sub,
              [&](double* a) { dacc.flush(a, b, false); });
  });
  std::copy(total.begin(), total.begin() + m * b, C);
  std::copy(total.begin() + m * b, total.end(), n2);
}

template <typename S, typename QT>
void update_impl(const QT* Q, S* W, const double* C, int64_t m, int64_t b, int64_t p, bool gram,
                 double* out) {
  const int64_t wide = (gram && !std::is_same_v<S, double>) ? 1 : 0;
  const Plan plan = make_plan(p, 2 * (m * sizeof(QT) + b * sizeof(S)) + wide * b * 8,
                              2 * m * b + (gram ? b * b : 0));
  const int64_t acc_size = gram ? b * b : m * b;
  const int64_t ldw = padded_ld<double>(plan.sub);
  std::vector<S> coef(m * b);  // coef[i * b + k] = C[i][k]
  for (int64_t e = 0; e < m * b; ++e) coef[e] = static_cast<S>(C[e]);
  std::vector<double> total = run_chunks(plan, acc_size, [&](int64_t c0, int64_t c1, double* acc) {
    Scratch<double> wd(wide * b * ldw);
    DotAcc<S> dacc(gram ? 0 : m, b);
    DotAcc<double> gacc(gram ? b : 0, gram ? b : 0);
    dacc.zero();
    gacc.zero();
    Prefetcher pf;
    pf.add(Q, m, p, sizeof(QT));
    pf.add(W, b, p, sizeof(S));
    pf.enable_if_larger_than_cache(p);
    auto steps = [&](int64_t n) {
      return (m > 0 ? gemm_steps<S, true>(n, m) : 0) + dots_steps(gram ? b : m, b, n);
    };
    auto sub = [&](int64_t j0, int64_t n, double* a) {
      S* wt = W + j0;
      if (m > 0) gemm<S, QT, true>(wt, p, b, Q + j0, p, coef.data(), b, m, n, &pf);
      if (!gram) {
        dots<S, QT>(Q + j0, p, m, wt, p, b, n, dacc, a, b, false, &pf);
      } else if constexpr (std::is_same_v<S, double>) {
        dots<double, double>(wt, p, b, wt, p, b, n, gacc, a, b, true, &pf);
      } else {
        widen_rows(wt, p, b, n, wd.get(), ldw);
        dots<double, double>(wd.get(), ldw, b, wd.get(), ldw, b, n, gacc, a, b, true, &pf);
      }
    };
    for_tiles(plan, c0, c1, acc, acc_size, pf, steps, sub, [&](double* a) {
      if (gram) {
        gacc.flush(a, b, true);
      } else {
        dacc.flush(a, b, false);
      }
    });
  });
  if (gram) mirror_upper(total.data(), b);
  std::copy(total.begin(), total.end(), out);
}

template <typename S>
void transform_impl(S* W, const double* T, int64_t b, int64_t p, bool gram, double* out) {
  const int64_t wide = (gram && !std::is_same_v<S, double>) ? 1 : 0;
  const Plan plan = make_plan(p, 3 * b * sizeof(S) + wide * b * 8, b * b * (gram ? 2 : 1));
  const int64_t acc_size = gram ? b * b : 0;
  const int64_t lds = padded_ld<S>(plan.sub);
  const int64_t ldw = padded_ld<double>(plan.sub);
  std::vector<S> coef(b * b);  // coef[l * b + k] = T[k][l]
  for (int64_t k = 0; k < b; ++k)
    for (int64_t l = 0; l < b; ++l) coef[l * b + k] = static_cast<S>(T[k * b + l]);
  std::vector<double> total = run_chunks(plan, acc_size, [&](int64_t c0, int64_t c1, double* acc) {
    // A block of at most kGR rows is one register block: each column block is read entirely
    // before it is written, so W can be transformed in place; wider blocks go through a copy.
    const bool in_place = b <= kGR;
    Scratch<S> old(in_place ? 0 : b * lds);
    Scratch<double> wd(wide * b * ldw);
    DotAcc<double> gacc(gram ? b : 0, gram ? b : 0);
    gacc.zero();
    Prefetcher pf;
    pf.add(W, b, p, sizeof(S));
    pf.enable_if_larger_than_cache(p);
    auto steps = [&](int64_t n) {
      return gemm_steps<S, false>(n, b) + (gram ? dots_steps(b, b, n) : 0);
    };
    auto sub = [&](int64_t j0, int64_t n, double* a) {
      S* wt = W + j0;
      if (in_place) {
        gemm<S, S, false>(wt, p, b, wt, p, coef.data(), b, b, n, &pf);
      } else {
        copy_rows(wt, p, b, n, old.get(), lds);
        gemm<S, S, false>(wt, p, b, old.get(), lds, coef.data(), b, b, n, &pf);
      }
      if (!gram) return;
      if constexpr (std::is_same_v<S, double>) {
        dots<double, double>(wt, p, b, wt, p, b, n, gacc, a, b, true, &pf);
      } else {
        widen_rows(wt, p, b, n, wd.get(), ldw);
        dots<double, double>(wd.get(), ldw, b, wd.get(), ldw, b, n, gacc, a, b, true, &pf);
      }
    };
    for_tiles(plan, c0, c1, acc, acc_size, pf, steps, sub, [&](double* a) {
      if (gram) gacc.flush(a, b, true);
    });
  });
  if (gram) {
    mirror_upper(total.data(), b);
    std::copy(total.begin(), total.end(), out);
  }
}

// ------------------------------------------------------------------------------------------
// Argument checks and dtype dispatch.
// ------------------------------------------------------------------------------------------
constexpr const char* kDtypeHelp =
    "supported: W float32 with Q float32/bfloat16/float16, or W float64 with Q float64";

void check_matrix(const char* op, const at::Tensor& t, const char* name, const char* shape) {
  LF_CHECK_CPU(op, t, name);
  LF_CHECK_DIM(op, t, name, 2, shape);
  LF_CHECK_CONTIGUOUS(op, t, name);
}

void check_block_dtype(const char* op, const at::Tensor& W) {
  TORCH_CHECK(W.scalar_type() == at::kFloat || W.scalar_type() == at::kDouble, op,
              ": W must be float32 or float64, got ", W.scalar_type());
}

void check_pair(const char* op, const at::Tensor& Q, const at::Tensor& W) {
  check_matrix(op, Q, "Q", "(m, p)");
  check_matrix(op, W, "W", "(b, p)");
  check_block_dtype(op, W);
  const auto q = Q.scalar_type();
  const bool ok = W.scalar_type() == at::kDouble
                      ? q == at::kDouble
                      : (q == at::kFloat || q == at::kBFloat16 || q == at::kHalf);
  TORCH_CHECK(ok, op, ": unsupported dtypes W=", W.scalar_type(), ", Q=", q, " (", kDtypeHelp,
              ")");
  TORCH_CHECK(Q.size(1) == W.size(1), op,
              ": Q and W must have the same number of columns p, got Q.shape=", Q.sizes(),
              ", W.shape=", W.sizes());
}

void check_small(const char* op, const at::Tensor& t, const char* name, int64_t rows,
                 int64_t cols, const char* shape) {
  LF_CHECK_CPU(op, t, name);
  LF_CHECK_DTYPE(op, t, name, at::kDouble);
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": ", name,
              " must have shape ", shape, " = (", rows, ", ", cols, "), got ", t.sizes());
}

// Calls f(S{}, QT{}) for the (block, basis) storage types of W and Q.
template <typename F>
void dispatch_pair(const at::Tensor& Q, const at::Tensor& W, F&& f) {
  if (W.scalar_type() == at::kDouble) {
    f(double{}, double{});
  } else if (Q.scalar_type() == at::kFloat) {
    f(float{}, float{});
  } else if (Q.scalar_type() == at::kBFloat16) {
    f(float{}, BF16{});
  } else {
    f(float{}, F16{});
  }
}

// A float64 (r, c) matrix as a dense row-major vector (any strides).
std::vector<double> dense(const at::Tensor& t) {
  const int64_t r = t.size(0), c = t.size(1);
  std::vector<double> out(r * c);
  const double* d = t.const_data_ptr<double>();
  const int64_t s0 = t.stride(0), s1 = t.stride(1);
  for (int64_t i = 0; i < r; ++i)
    for (int64_t j = 0; j < c; ++j) out[i * c + j] = d[i * s0 + j * s1];
  return out;
}

at::TensorOptions f64() { return at::TensorOptions().dtype(at::kDouble); }

// ------------------------------------------------------------------------------------------
// Ops.
// ------------------------------------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> reorth_project(const at::Tensor& Q, const at::Tensor& W) {
  constexpr const char* op = "reorth_project";
  check_pair(op, Q, W);
  const int64_t m = Q.size(0), b = W.size(0), p = W.size(1);
  at::Tensor C = at::empty({m, b}, f64());
  at::Tensor n2 = at::empty({b}, f64());
  dispatch_pair(Q, W, [&](auto s, auto qt) {
    using S = decltype(s);
    using QT = decltype(qt);
    project_impl<S, QT>(static_cast<const QT*>(Q.const_data_ptr()), W.const_data_ptr<S>(), m, b,
                        p, C.mutable_data_ptr<double>(), n2.mutable_data_ptr<double>());
  });
  return {C, n2};
}

at::Tensor reorth_update_(const at::Tensor& Q, const at::Tensor& W, const at::Tensor& C,
                          bool gram) {
  constexpr const char* op = "reorth_update_";
  check_pair(op, Q, W);
  const int64_t m = Q.size(0), b = W.size(0), p = W.size(1);
  check_small(op, C, "C", m, b, "(m, b)");
  check_no_overlap(op, W, "W", Q, "Q");
  const std::vector<double> coef = dense(C);
  at::Tensor out = gram ? at::empty({b, b}, f64()) : at::empty({m, b}, f64());
  dispatch_pair(Q, W, [&](auto s, auto qt) {
    using S = decltype(s);
    using QT = decltype(qt);
    update_impl<S, QT>(static_cast<const QT*>(Q.const_data_ptr()), W.mutable_data_ptr<S>(),
                       coef.data(), m, b, p, gram, out.mutable_data_ptr<double>());
  });
  return out;
}

at::Tensor reorth_transform_(const at::Tensor& W, const at::Tensor& T, bool gram) {
  constexpr const char* op = "reorth_transform_";
  check_matrix(op, W, "W", "(b, p)");
  check_block_dtype(op, W);
  const int64_t b = W.size(0), p = W.size(1);
  check_small(op, T, "T", b, b, "(b, b)");
  const std::vector<double> t = dense(T);
  at::Tensor out = gram ? at::empty({b, b}, f64()) : at::empty({0}, f64());
  if (W.scalar_type() == at::kDouble) {
    transform_impl<double>(W.mutable_data_ptr<double>(), t.data(), b, p, gram,
                           out.mutable_data_ptr<double>());
  } else {
    transform_impl<float>(W.mutable_data_ptr<float>(), t.data(), b, p, gram,
                          out.mutable_data_ptr<double>());
  }
  return out;
}

}  // namespace
}  // namespace landscape_fast

TORCH_LIBRARY_IMPL(landscape_fast, CPU, m) {
  m.impl("reorth_project", &landscape_fast::reorth_project);
  m.impl("reorth_update_", &landscape_fast::reorth_update_);
  m.impl("reorth_transform_", &landscape_fast::reorth_transform_);
}
