// CUDA kernels for the three streaming primitives of block_reorth
// (landscape_fast/kernels/block_reorth_driver.py), with a plain C ABI for ctypes.
//
//   project:   C = Q W^T (m x b) and n2 = rowwise |W|^2 (b)            -> out[m*b + b]
//   update:    W -= C^T Q in place, then D = Q W^T (m x b) or, with gram, G = W W^T (b x b)
//   transform: W <- T W in place (T: b x b), then, with gram, G = W W^T (b x b)
//
// Q is (m, p), W is (b, p), both row-major and contiguous (one vector per row); all
// coefficient inputs and outputs are float64. Supported (basis, block) dtypes:
// (float32, float32), (bfloat16, float32), (float16, float32), (float64, float64).
//
// Design (memory-bound on the p axis; b <= 64, m up to a few hundred, any p >= 1):
//   * The column axis is cut into tiles of Tile<CT>::TP columns (64 float32 / 32 float64 =
//     256 bytes per row). CTAs grid-stride over tiles. Per tile a CTA stages the b x TP
//     block tile and, in chunks of `mc` rows, the m x TP basis tile into shared memory,
//     converting to the compute type CT (float32 for a float32 block, float64 for float64)
//     with coalesced, 16-byte vector loads where the row pitch and base allow; partial tiles
//     (p not a multiple of the tile) are zero-filled, so the arithmetic is branch-free.
//   * Every element of Q is loaded from global memory once per primitive. `update` needs
//     the basis tile twice (W update, then D): the second sweep re-uses the chunk still in
//     shared memory (all of it when mc == m) and re-stages the others from L2, in reverse
//     order, right after the first sweep read them.
//   * Products are accumulated in registers (4 x 4 outputs per thread) within a tile, in CT
//     for Q W^T and C^T Q / T W, in float64 (exact products of floats) for the Gram
//     matrices W W^T and the norms (see gemm_nt_acc); across tiles the sums go to float64
//     accumulators owned by exactly one thread (shared memory when they fit, else the
//     CTA's slice of the workspace). A short reduction over a tile dimension is split
//     across otherwise idle threads and re-combined through shared memory in a fixed
//     order. No atomics anywhere.
//   * 256 threads per CTA, at most 128 registers (two CTAs per SM); the shared-memory plan
//     (make_plan) prefers a layout that fits two CTAs per SM, then one, then moves the
//     accumulators and/or coefficients to global memory (L2), so every m works.
//   * Each CTA writes its float64 partial sums to workspace[cta][...]; a second kernel adds
//     the partials in a fixed order, so results are bitwise reproducible for a given device.
//   * Coefficients (C for update, T^T for transform) are converted once to CT into the
//     workspace and then copied into shared memory when they fit.
//
// Building with -DLF_HOST_EMULATION='"header.h"' compiles this file as plain C++ against
// a host emulation of the few CUDA features used (tests/kernels/cuda_emulation.h); the
// kernels then run on CPU memory, which is how they are tested on machines without a GPU.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#ifdef LF_HOST_EMULATION
#include LF_HOST_EMULATION
#else
#include <cuda_runtime.h>
#define LF_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#define LF_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace lf_reorth {

using i64 = std::int64_t;

constexpr int kThreads = 256;    // threads per CTA of every streaming kernel
constexpr int kMaxBlock = 64;    // largest block size b the kernels handle
constexpr int kMicro = 4;        // 4 x 4 register micro-tile per thread
constexpr int kScratch = kThreads * kMicro * kMicro;  // CT elements of split scratch

enum Dtype : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };
enum Op : int { kProject = 0, kUpdate = 1, kTransform = 2 };

// ------------------------------------------------------------------------------------
// Compile-time tile geometry per compute type.
template <class CT>
struct Tile;
template <>
struct Tile<float> {
  static constexpr int TP = 64;  // columns per tile
  static constexpr int LD = 68;  // smem row pitch (16-byte rows, conflict-free quarter-warps)
};
template <>
struct Tile<double> {
  static constexpr int TP = 32;
  static constexpr int LD = 34;
};

// 16 bytes of CT: the unit of vectorized shared-memory access.
template <class CT>
struct alignas(16) Pack {
  CT v[16 / sizeof(CT)];
};

__host__ __device__ inline i64 imin(i64 a, i64 b) { return a < b ? a : b; }
__host__ __device__ inline std::size_t align16(std::size_t x) {
  return (x + 15) & ~static_cast<std::size_t>(15);
}

// ------------------------------------------------------------------------------------
// Element conversion to the compute type.
__device__ __forceinline__ float to_ct(float x, float) { return x; }
__device__ __forceinline__ float to_ct(__nv_bfloat16 x, float) { return __bfloat162float(x); }
__device__ __forceinline__ float to_ct(__half x, float) { return __half2float(x); }
__device__ __forceinline__ double to_ct(double x, double) { return x; }

template <bool kReadOnly, class V>
__device__ __forceinline__ V load_vec(const V* p) {
  if constexpr (kReadOnly) {
    return __ldg(p);
  } else {
    return *p;
  }
}

// Load 16 bytes of T at src (16-byte aligned) and store them, converted, at dst (smem,
// 16-byte aligned): 4 floats from float32, 8 floats from bfloat16/float16, 2 doubles.
template <bool kReadOnly>
__device__ __forceinline__ void load16(const float* src, float* dst) {
  *reinterpret_cast<float4*>(dst) = load_vec<kReadOnly>(reinterpret_cast<const float4*>(src));
}
template <bool kReadOnly>
__device__ __forceinline__ void load16(const double* src, double* dst) {
  *reinterpret_cast<double2*>(dst) =
      load_vec<kReadOnly>(reinterpret_cast<const double2*>(src));
}
template <bool kReadOnly>
__device__ __forceinline__ void load16(const __nv_bfloat16* src, float* dst) {
  const uint4 u = load_vec<kReadOnly>(reinterpret_cast<const uint4*>(src));
  const unsigned int w[4] = {u.x, u.y, u.z, u.w};
  float f[8];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    __nv_bfloat162 h;
    h.x = __ushort_as_bfloat16(static_cast<unsigned short>(w[k] & 0xFFFFu));
    h.y = __ushort_as_bfloat16(static_cast<unsigned short>(w[k] >> 16));
    const float2 g = __bfloat1622float2(h);
    f[2 * k] = g.x;
    f[2 * k + 1] = g.y;
  }
  *reinterpret_cast<float4*>(dst) = make_float4(f[0], f[1], f[2], f[3]);
  *reinterpret_cast<float4*>(dst + 4) = make_float4(f[4], f[5], f[6], f[7]);
}
template <bool kReadOnly>
__device__ __forceinline__ void load16(const __half* src, float* dst) {
  const uint4 u = load_vec<kReadOnly>(reinterpret_cast<const uint4*>(src));
  const unsigned int w[4] = {u.x, u.y, u.z, u.w};
  float f[8];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const __half2 h = __halves2half2(__ushort_as_half(static_cast<unsigned short>(w[k] & 0xFFFFu)),
                                     __ushort_as_half(static_cast<unsigned short>(w[k] >> 16)));
    const float2 g = __half22float2(h);
    f[2 * k] = g.x;
    f[2 * k + 1] = g.y;
  }
  *reinterpret_cast<float4*>(dst) = make_float4(f[0], f[1], f[2], f[3]);
  *reinterpret_cast<float4*>(dst + 4) = make_float4(f[4], f[5], f[6], f[7]);
}

// Stage rows [0, nrows) x columns [col0, col0 + TP) of the row-major (., p) matrix src into
// shared memory dst (row pitch LD, type CT). Columns >= p are zero-filled. `vec`: src is
// 16-byte aligned and p * sizeof(T) is a multiple of 16 (then every row start of a full
// tile is 16-byte aligned, since col0 is a multiple of TP); only full tiles use vectors.
template <class CT, bool kReadOnly, class T>
__device__ void stage_tile(CT* __restrict__ dst, const T* __restrict__ src, i64 p, int nrows,
                           i64 col0, bool vec) {
  constexpr int TP = Tile<CT>::TP, LD = Tile<CT>::LD;
  constexpr int V = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte load
  constexpr int VPR = TP / V;                           // 16-byte loads per tile row
  static_assert(TP % V == 0, "tile width must be a multiple of the vector width");
  const i64 valid = p - col0;  // >= 1
  if (vec && valid >= TP) {
#pragma unroll 4
    for (int idx = threadIdx.x; idx < nrows * VPR; idx += kThreads) {
      const int r = idx / VPR, v = idx - r * VPR;
      load16<kReadOnly>(src + static_cast<i64>(r) * p + col0 + v * V, dst + r * LD + v * V);
    }
  } else {
    for (int idx = threadIdx.x; idx < nrows * TP; idx += kThreads) {
      const int r = idx / TP, c = idx - r * TP;
      dst[r * LD + c] = c < valid ? to_ct(src[static_cast<i64>(r) * p + col0 + c], CT(0)) : CT(0);
    }
  }
}

// Write rows [0, nrows) of the smem tile back to columns [col0, min(col0 + TP, p)).
template <class CT>
__device__ void store_tile(CT* __restrict__ dst, const CT* __restrict__ src, i64 p, int nrows,
                           i64 col0, bool vec) {
  constexpr int TP = Tile<CT>::TP, LD = Tile<CT>::LD;
  constexpr int V = 16 / static_cast<int>(sizeof(CT));
  constexpr int VPR = TP / V;
  const i64 valid = p - col0;
  if (vec && valid >= TP) {
#pragma unroll 4
    for (int idx = threadIdx.x; idx < nrows * VPR; idx += kThreads) {
      const int r = idx / VPR, v = idx - r * VPR;
      *reinterpret_cast<Pack<CT>*>(dst + static_cast<i64>(r) * p + col0 + v * V) =
          *reinterpret_cast<const Pack<CT>*>(src + r * LD + v * V);
    }
  } else {
    for (int idx = threadIdx.x; idx < nrows * TP; idx += kThreads) {
      const int r = idx / TP, c = idx - r * TP;
      if (c < valid) dst[static_cast<i64>(r) * p + col0 + c] = src[r * LD + c];
    }
  }
}

// ------------------------------------------------------------------------------------
// "NT" product accumulated into float64:
//   acc[r * acc_ld + c] += sum_{l < TP} A[r * LD + l] * B[c * LD + l],  r < R, c < C,
// with A, B smem tiles. Products and the sum over the tile are formed in AT: the compute
// type for projections (Q W^T), float64 for Gram matrices (W W^T). A Gram matrix must be
// float64 per product: CholeskyQR's d_k = G_kk - sum_i R_ik^2 cancels down to the residual
// of a (numerically) dependent vector, ~1e-10 G_kk for float32 data, far below float32's
// rounding of G_kk (a float32-accumulated G keeps such vectors as spurious directions).
// A float32 x float32 product is exact in float64.
//
// Thread micro-tile u = (gr, gc) owns rows gr + NR*x and columns gc + NC*y (x, y < 4;
// out-of-range ones are clamped for the loads and never stored). kSym (A == B, R == C):
// only micro-tiles with gr <= gc are computed, enumerated triangularly, and an
// off-diagonal micro-tile also writes the mirrored entries (G is exactly symmetric).
// When there are fewer micro-tiles than threads, the l axis is split S ways (l-vector
// groups g = s, s + S, ...) and the splits are added in a fixed order through `scratch`.
// Every acc element is updated by exactly one thread per call. Contains __syncthreads()
// when S > 1 (S depends only on R and C, so the branch is CTA-uniform).
__device__ __forceinline__ void tri_decode(int u, int* gr, int* gc) {
  // u = gc (gc + 1) / 2 + gr with 0 <= gr <= gc
  int c = static_cast<int>((sqrtf(8.0f * static_cast<float>(u) + 1.0f) - 1.0f) * 0.5f);
  while ((c + 1) * (c + 2) / 2 <= u) ++c;
  while (c * (c + 1) / 2 > u) --c;
  *gc = c;
  *gr = u - c * (c + 1) / 2;
}

template <class AT, bool kSym, class CT>
__device__ void gemm_nt_acc(const CT* A, int R, const CT* B, int C, double* acc, i64 acc_ld,
                            CT* scratch_ct) {
  constexpr int TP = Tile<CT>::TP, LD = Tile<CT>::LD;
  constexpr int LV = 16 / static_cast<int>(sizeof(CT));
  constexpr int NG = TP / LV;  // l-vector groups per tile (16)
  // micro-tile partials (16 AT each) that the scratch buffer (kScratch CT) holds
  constexpr int kCap = kScratch * static_cast<int>(sizeof(CT)) / static_cast<int>(sizeof(AT)) / 16;
  const int NR = (R + kMicro - 1) / kMicro, NC = (C + kMicro - 1) / kMicro;
  const int U = kSym ? NR * (NR + 1) / 2 : NR * NC;
  int S = static_cast<int>(imin(imin(kThreads / U, kCap / U), NG));
  if (S < 1) S = 1;
  const int tid = static_cast<int>(threadIdx.x);
  AT* scratch = reinterpret_cast<AT*>(scratch_ct);

  auto tile_of = [&](int u, int* gr, int* gc) {
    if (kSym) {
      tri_decode(u, gr, gc);
    } else {
      *gr = u % NR;
      *gc = u / NR;
    }
  };
  auto micro = [&](int gr, int gc, int s, AT (&part)[kMicro][kMicro]) {
    int a[kMicro], b[kMicro];  // smem row offsets (clamped rows are loaded, never stored)
#pragma unroll
    for (int x = 0; x < kMicro; ++x) {
      a[x] = static_cast<int>(imin(gr + NR * x, R - 1)) * LD;
      b[x] = static_cast<int>(imin(gc + NC * x, C - 1)) * LD;
    }
#pragma unroll
    for (int x = 0; x < kMicro; ++x)
#pragma unroll
      for (int y = 0; y < kMicro; ++y) part[x][y] = AT(0);
#pragma unroll 1
    for (int g = s; g < NG; g += S) {
      const int l = g * LV;
      if constexpr (sizeof(AT) > sizeof(CT)) {  // widening products: scalar loads, fewer registers
#pragma unroll
        for (int e = 0; e < LV; ++e) {
          AT av[kMicro], bv[kMicro];
#pragma unroll
          for (int x = 0; x < kMicro; ++x) {
            av[x] = static_cast<AT>(A[a[x] + l + e]);
            bv[x] = static_cast<AT>(B[b[x] + l + e]);
          }
#pragma unroll
          for (int x = 0; x < kMicro; ++x)
#pragma unroll
            for (int y = 0; y < kMicro; ++y) part[x][y] += av[x] * bv[y];
        }
      } else {  // 16-byte smem loads
        Pack<CT> av[kMicro], bv[kMicro];
#pragma unroll
        for (int x = 0; x < kMicro; ++x) {
          av[x] = *reinterpret_cast<const Pack<CT>*>(A + a[x] + l);
          bv[x] = *reinterpret_cast<const Pack<CT>*>(B + b[x] + l);
        }
#pragma unroll
        for (int e = 0; e < LV; ++e)
#pragma unroll
          for (int x = 0; x < kMicro; ++x)
#pragma unroll
            for (int y = 0; y < kMicro; ++y)
              part[x][y] += static_cast<AT>(av[x].v[e]) * static_cast<AT>(bv[y].v[e]);
      }
    }
  };
  // acc[r][c] (+ mirror) += value for one micro-tile entry
  auto store = [&](int gr, int gc, int x, int y, double value) {
    const int r = gr + NR * x, c = gc + NC * y;
    if (r < R && c < C) {
      acc[r * acc_ld + c] += value;
      if (kSym && gr != gc) acc[c * acc_ld + r] += value;
    }
  };

  if (S == 1) {
    for (int u = tid; u < U; u += kThreads) {
      int gr, gc;
      tile_of(u, &gr, &gc);
      AT part[kMicro][kMicro];
      micro(gr, gc, 0, part);
#pragma unroll
      for (int x = 0; x < kMicro; ++x)
#pragma unroll
        for (int y = 0; y < kMicro; ++y) store(gr, gc, x, y, static_cast<double>(part[x][y]));
    }
    return;
  }
  const int u = tid % U, s = tid / U;
  if (s < S) {
    int gr, gc;
    tile_of(u, &gr, &gc);
    AT part[kMicro][kMicro];
    micro(gr, gc, s, part);
#pragma unroll
    for (int x = 0; x < kMicro; ++x)
#pragma unroll
      for (int y = 0; y < kMicro; ++y) scratch[(s * U + u) * 16 + x * kMicro + y] = part[x][y];
  }
  __syncthreads();
  for (int o = tid; o < U * 16; o += kThreads) {
    double sum = static_cast<double>(scratch[o]);
    for (int k = 1; k < S; ++k) sum += static_cast<double>(scratch[k * U * 16 + o]);
    int gr, gc;
    tile_of(o >> 4, &gr, &gc);
    store(gr, gc, (o >> 2) & 3, o & 3, sum);
  }
  __syncthreads();
}

// Projection (Q W^T): compute-type products; Gram (W W^T): float64 products, symmetric.
template <class CT>
__device__ void project_acc(const CT* A, int R, const CT* B, int C, double* acc, i64 acc_ld,
                            CT* scratch) {
  gemm_nt_acc<CT, false>(A, R, B, C, acc, acc_ld, scratch);
}
template <class CT>
__device__ void gram_acc(const CT* Ws, int b, double* acc, CT* scratch) {
  gemm_nt_acc<double, true>(Ws, b, Ws, b, acc, b, scratch);
}

// ------------------------------------------------------------------------------------
// "NN" product kept in registers across calls (one basis chunk per call):
//   out[a][j] = sum_i coef[i * b + a] * M[i * LD + j],   a < b (<= 64), j < TP,
// coef in smem or global memory (CT), M an smem tile. Micro-tile u = (gj, ga) owns
// columns 4*gj .. 4*gj+3 and rows ga + NA*x. U = NA * TP/4 <= kThreads, so every output
// has one owner; the i axis is split S = kThreads / U ways (rows i = s, s + S, ...).
template <class CT>
struct NNBlock {
  static constexpr int TP = Tile<CT>::TP, LD = Tile<CT>::LD, NJ = TP / kMicro;
  int b, NA, U, S, u, s;
  CT v[kMicro][kMicro];

  __device__ explicit NNBlock(int b_) : b(b_) {
    NA = (b + kMicro - 1) / kMicro;
    U = NA * NJ;
    S = kThreads / U;
    u = static_cast<int>(threadIdx.x) % U;
    s = static_cast<int>(threadIdx.x) / U;
    zero();
  }
  __device__ bool active() const { return s < S; }
  __device__ void zero() {
#pragma unroll
    for (int x = 0; x < kMicro; ++x)
#pragma unroll
      for (int y = 0; y < kMicro; ++y) v[x][y] = CT(0);
  }
  __device__ void accumulate(const CT* coef, const CT* M, int rows) {
    if (!active()) return;
    const int gj = u % NJ, ga = u / NJ;
    int a[kMicro];
#pragma unroll
    for (int x = 0; x < kMicro; ++x) a[x] = static_cast<int>(imin(ga + NA * x, b - 1));
    const CT* mt = M + kMicro * gj;
#pragma unroll 1
    for (int i = s; i < rows; i += S) {
      const CT* ci = coef + static_cast<i64>(i) * b;
      CT cv[kMicro];
#pragma unroll
      for (int x = 0; x < kMicro; ++x) cv[x] = ci[a[x]];
      CT mv[kMicro];
#pragma unroll
      for (int k = 0; k < kMicro; k += 16 / static_cast<int>(sizeof(CT))) {
        const Pack<CT> pk = *reinterpret_cast<const Pack<CT>*>(mt + i * LD + k);
#pragma unroll
        for (int e = 0; e < 16 / static_cast<int>(sizeof(CT)); ++e) mv[k + e] = pk.v[e];
      }
#pragma unroll
      for (int x = 0; x < kMicro; ++x)
#pragma unroll
        for (int y = 0; y < kMicro; ++y) v[x][y] += cv[x] * mv[y];
    }
  }
  // Combine the splits and call apply(a, j, value) once for every a < b, j < TP. Starts and
  // ends with __syncthreads(), so apply may overwrite the tiles the products were read from.
  template <class F>
  __device__ void finish(CT* scratch, F apply) {
    const int tid = static_cast<int>(threadIdx.x);
    if (S == 1) {
      __syncthreads();
      if (active()) {
        const int gj = u % NJ, ga = u / NJ;
#pragma unroll
        for (int x = 0; x < kMicro; ++x)
#pragma unroll
          for (int y = 0; y < kMicro; ++y)
            if (ga + NA * x < b) apply(ga + NA * x, kMicro * gj + y, static_cast<double>(v[x][y]));
      }
      __syncthreads();
      return;
    }
    if (active()) {
#pragma unroll
      for (int x = 0; x < kMicro; ++x)
#pragma unroll
        for (int y = 0; y < kMicro; ++y) scratch[(s * U + u) * 16 + x * kMicro + y] = v[x][y];
    }
    __syncthreads();
    for (int o = tid; o < U * 16; o += kThreads) {
      double sum = static_cast<double>(scratch[o]);
      for (int k = 1; k < S; ++k) sum += static_cast<double>(scratch[k * U * 16 + o]);
      const int uo = o >> 4, x = (o >> 2) & 3, y = o & 3;
      const int gj = uo % NJ, ga = uo / NJ;
      if (ga + NA * x < b) apply(ga + NA * x, kMicro * gj + y, sum);
    }
    __syncthreads();
  }
};

// n2[k] += sum_j W[k][j]^2 (float64 products) over one smem tile. Thread k owns n2[k]; its
// start column is rotated by k so that the rows a warp reads hit different banks.
template <class CT>
__device__ void row_norms_acc(const CT* Ws, int b, double* n2) {
  constexpr int TP = Tile<CT>::TP, LD = Tile<CT>::LD;
  for (int k = static_cast<int>(threadIdx.x); k < b; k += kThreads) {
    double sum = 0.0;
    for (int jj = 0; jj < TP; ++jj) {
      const double w = static_cast<double>(Ws[k * LD + ((jj + k) & (TP - 1))]);
      sum += w * w;
    }
    n2[k] += sum;
  }
}

// ------------------------------------------------------------------------------------
// Kernel parameters and shared-memory layout (computed identically on host and device).
struct Params {
  const void* q;     // (m, p) basis, basis dtype
  void* w;           // (b, p) block, CT (not written by project)
  const void* coef;  // (coef_rows, b) CT in global memory: C (update) or T^T (transform)
  double* partials;  // (gridDim.x, acc_size) float64 per-CTA partial sums
  i64 m, b, p, ntiles;
  int mc;            // basis rows staged per chunk (>= 1)
  int coef_rows;
  int acc_size;      // float64 accumulators per CTA
  int acc_in_smem, coef_in_smem, gram, qvec, wvec;
};

struct Layout {
  std::size_t ws, scratch, qs, coef, acc, total;  // byte offsets into dynamic smem
};

template <class CT>
__host__ __device__ inline Layout make_layout(i64 b, i64 mc, i64 coef_rows, bool coef_in_smem,
                                              i64 acc_size, bool acc_in_smem) {
  constexpr int LD = Tile<CT>::LD;
  Layout L;
  L.ws = 0;
  L.scratch = L.ws + align16(static_cast<std::size_t>(b) * LD * sizeof(CT));
  L.qs = L.scratch + align16(static_cast<std::size_t>(kScratch) * sizeof(CT));
  L.coef = L.qs + align16(static_cast<std::size_t>(mc) * LD * sizeof(CT));
  L.acc = L.coef +
          (coef_in_smem ? align16(static_cast<std::size_t>(coef_rows * b) * sizeof(CT)) : 0);
  L.total = L.acc + (acc_in_smem ? align16(static_cast<std::size_t>(acc_size) * sizeof(double)) : 0);
  return L;
}

template <class CT>
__host__ __device__ inline Layout make_layout(const Params& P) {
  return make_layout<CT>(P.b, P.mc, P.coef_rows, P.coef_in_smem != 0, P.acc_size,
                         P.acc_in_smem != 0);
}

// Pointers into dynamic shared memory / the workspace, zeroed accumulators, coefficients
// copied into smem when planned so. Ends with __syncthreads().
template <class CT>
struct Frame {
  CT* ws;
  CT* scratch;
  CT* qs;
  const CT* coef;
  double* acc;

  __device__ Frame(const Params& P, unsigned char* smem) {
    const Layout L = make_layout<CT>(P);
    ws = reinterpret_cast<CT*>(smem + L.ws);
    scratch = reinterpret_cast<CT*>(smem + L.scratch);
    qs = reinterpret_cast<CT*>(smem + L.qs);
    acc = P.acc_in_smem ? reinterpret_cast<double*>(smem + L.acc)
                        : P.partials + static_cast<i64>(blockIdx.x) * P.acc_size;
    const CT* coef_g = static_cast<const CT*>(P.coef);
    if (P.coef_in_smem) {
      CT* cs = reinterpret_cast<CT*>(smem + L.coef);
      const int n = P.coef_rows * static_cast<int>(P.b);
      for (int o = static_cast<int>(threadIdx.x); o < n; o += kThreads) cs[o] = coef_g[o];
      coef = cs;
    } else {
      coef = coef_g;
    }
    for (int o = static_cast<int>(threadIdx.x); o < P.acc_size; o += kThreads) acc[o] = 0.0;
    __syncthreads();
  }

  // Copy smem accumulators to this CTA's workspace slice (starts with __syncthreads()).
  __device__ void flush(const Params& P) const {
    __syncthreads();
    if (!P.acc_in_smem) return;
    double* dst = P.partials + static_cast<i64>(blockIdx.x) * P.acc_size;
    for (int o = static_cast<int>(threadIdx.x); o < P.acc_size; o += kThreads) dst[o] = acc[o];
  }
};

// ------------------------------------------------------------------------------------
// Kernels.

// acc = [C (m x b) | n2 (b)]
template <class QT, class CT>
__global__ void __launch_bounds__(kThreads, 2) project_kernel(Params P) {
  constexpr int TP = Tile<CT>::TP;
  LF_DYNAMIC_SMEM(smem);
  const Frame<CT> F(P, smem);
  const QT* Q = static_cast<const QT*>(P.q);
  const CT* W = static_cast<const CT*>(P.w);
  const int b = static_cast<int>(P.b);
  const i64 m = P.m, p = P.p;
  double* n2 = F.acc + m * b;
  for (i64 tile = blockIdx.x; tile < P.ntiles; tile += gridDim.x) {
    const i64 col0 = tile * TP;
    stage_tile<CT, true>(F.ws, W, p, b, col0, P.wvec != 0);
    if (m == 0) {
      __syncthreads();
      row_norms_acc(F.ws, b, n2);
    }
    for (i64 i0 = 0; i0 < m; i0 += P.mc) {
      const int rows = static_cast<int>(imin(P.mc, m - i0));
      stage_tile<CT, true>(F.qs, Q + i0 * p, p, rows, col0, P.qvec != 0);
      __syncthreads();
      if (i0 == 0) row_norms_acc(F.ws, b, n2);
      project_acc(F.qs, rows, F.ws, b, F.acc + i0 * b, b, F.scratch);
      __syncthreads();
    }
    __syncthreads();
  }
  F.flush(P);
}

// acc = D = Q W'^T (m x b) or, with gram, G = W' W'^T (b x b), where W' = W - C^T Q.
template <class QT, class CT>
__global__ void __launch_bounds__(kThreads, 2) update_kernel(Params P) {
  constexpr int TP = Tile<CT>::TP, LD = Tile<CT>::LD;
  LF_DYNAMIC_SMEM(smem);
  const Frame<CT> F(P, smem);
  const QT* Q = static_cast<const QT*>(P.q);
  CT* W = static_cast<CT*>(P.w);
  const int b = static_cast<int>(P.b);
  const i64 m = P.m, p = P.p;
  const i64 nchunks = (m + P.mc - 1) / P.mc;
  NNBlock<CT> nn(b);
  CT* ws = F.ws;
  for (i64 tile = blockIdx.x; tile < P.ntiles; tile += gridDim.x) {
    const i64 col0 = tile * TP;
    stage_tile<CT, false>(ws, W, p, b, col0, P.wvec != 0);
    nn.zero();
    // Sweep 1: W_tile -= C^T Q_tile, one basis chunk at a time.
    for (i64 c = 0; c < nchunks; ++c) {
      const i64 i0 = c * P.mc;
      const int rows = static_cast<int>(imin(P.mc, m - i0));
      if (c > 0) __syncthreads();  // everyone is done reading the previous chunk
      stage_tile<CT, true>(F.qs, Q + i0 * p, p, rows, col0, P.qvec != 0);
      __syncthreads();
      nn.accumulate(F.coef + i0 * b, F.qs, rows);
    }
    nn.finish(F.scratch, [&](int a, int j, double val) { ws[a * LD + j] -= static_cast<CT>(val); });
    store_tile(W, ws, p, b, col0, P.wvec != 0);
    if (P.gram) {
      gram_acc(ws, b, F.acc, F.scratch);
    } else {
      // Sweep 2: D += Q_tile W_tile^T, last chunk first (it is still in smem).
      for (i64 c = nchunks - 1; c >= 0; --c) {
        const i64 i0 = c * P.mc;
        const int rows = static_cast<int>(imin(P.mc, m - i0));
        if (c != nchunks - 1) {
          __syncthreads();
          stage_tile<CT, true>(F.qs, Q + i0 * p, p, rows, col0, P.qvec != 0);
          __syncthreads();
        }
        project_acc(F.qs, rows, ws, b, F.acc + i0 * b, b, F.scratch);
      }
    }
    __syncthreads();
  }
  F.flush(P);
}

// W <- T W with coef = T^T (b x b); acc = G = W W^T (b x b) when gram.
template <class CT>
__global__ void __launch_bounds__(kThreads, 2) transform_kernel(Params P) {
  constexpr int TP = Tile<CT>::TP, LD = Tile<CT>::LD;
  LF_DYNAMIC_SMEM(smem);
  const Frame<CT> F(P, smem);
  CT* W = static_cast<CT*>(P.w);
  const int b = static_cast<int>(P.b);
  const i64 p = P.p;
  NNBlock<CT> nn(b);
  CT* ws = F.ws;
  for (i64 tile = blockIdx.x; tile < P.ntiles; tile += gridDim.x) {
    const i64 col0 = tile * TP;
    stage_tile<CT, false>(ws, W, p, b, col0, P.wvec != 0);
    __syncthreads();
    nn.zero();
    nn.accumulate(F.coef, ws, b);
    nn.finish(F.scratch, [&](int a, int j, double val) { ws[a * LD + j] = static_cast<CT>(val); });
    store_tile(W, ws, p, b, col0, P.wvec != 0);
    if (P.gram) gram_acc(ws, b, F.acc, F.scratch);
    __syncthreads();
  }
  F.flush(P);
}

// dst (rows x cols, CT) = src (float64), transposed when `transpose` (src is cols x rows).
template <class CT>
__global__ void __launch_bounds__(kThreads) convert_coef_kernel(const double* __restrict__ src,
                                                                CT* __restrict__ dst, i64 rows,
                                                                i64 cols, int transpose) {
  const i64 n = rows * cols;
  for (i64 o = static_cast<i64>(blockIdx.x) * kThreads + threadIdx.x; o < n;
       o += static_cast<i64>(gridDim.x) * kThreads) {
    const i64 i = o / cols, a = o - i * cols;
    dst[o] = static_cast<CT>(transpose ? src[a * rows + i] : src[o]);
  }
}

// out[o] = sum over c = 0..nparts-1 of partials[c][o], in a fixed order: 32 outputs per
// CTA (one per lane), 8 warps each summing a fixed residue class of c, then warp 0 adds
// the 8 sums in order.
constexpr int kReduceLanes = 32, kReduceSplits = kThreads / kReduceLanes;
constexpr std::size_t kReduceSmem = sizeof(double) * kThreads;

__global__ void __launch_bounds__(kThreads) reduce_partials_kernel(
    const double* __restrict__ partials, int nparts, int size, double* __restrict__ out) {
  LF_DYNAMIC_SMEM(smem);
  double* red = reinterpret_cast<double*>(smem);
  const int lane = static_cast<int>(threadIdx.x) % kReduceLanes;
  const int split = static_cast<int>(threadIdx.x) / kReduceLanes;
  const int o = static_cast<int>(blockIdx.x) * kReduceLanes + lane;
  double sum = 0.0;
  if (o < size) {
#pragma unroll 4
    for (int c = split; c < nparts; c += kReduceSplits) sum += partials[static_cast<i64>(c) * size + o];
  }
  red[split * kReduceLanes + lane] = sum;
  __syncthreads();
  if (split == 0 && o < size) {
    double total = red[lane];
    for (int k = 1; k < kReduceSplits; ++k) total += red[k * kReduceLanes + lane];
    out[o] = total;
  }
}

// ------------------------------------------------------------------------------------
// Host side: planning (shared by the workspace query and the launchers) and launch.

struct DeviceInfo {
  int sms, smem_optin, smem_per_sm;
};

static cudaError_t device_info(int device, DeviceInfo* d) {
  cudaError_t e = cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&d->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e == cudaSuccess)
    e = cudaDeviceGetAttribute(&d->smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor,
                               device);
  return e;
}

struct Plan {
  i64 ntiles;
  int mc, coef_rows, acc_size, nctas;
  bool coef_in_smem, acc_in_smem;
  std::size_t smem;
  std::size_t coef_bytes;  // workspace bytes for the CT copy of the coefficients (aligned)
  std::size_t workspace;   // total workspace bytes
};

constexpr std::size_t kMaxPartialBytes = std::size_t(512) << 20;

static bool valid_pair(int qdtype, int wdtype) {
  if (wdtype == kFloat64) return qdtype == kFloat64;
  if (wdtype == kFloat32) return qdtype == kFloat32 || qdtype == kBFloat16 || qdtype == kFloat16;
  return false;
}

// Choose the smem layout and grid for one call. `kernel` is the kernel that will run.
template <class CT>
static cudaError_t make_plan(int op, i64 m, i64 b, i64 p, bool gram, int device,
                             const void* kernel, Plan* plan) {
  constexpr int TP = Tile<CT>::TP;
  if (op == kTransform) m = 0;
  if (m < 0 || b < 1 || b > kMaxBlock || p < 1) return cudaErrorInvalidValue;
  const bool has_q = op != kTransform;
  const i64 acc_size = op == kProject ? m * b + b : (gram ? b * b : (op == kUpdate ? m * b : 0));
  const i64 coef_rows = op == kUpdate ? m : (op == kTransform ? b : 0);
  if (acc_size > (i64(1) << 30) || coef_rows * b > (i64(1) << 30) || m > (i64(1) << 30))
    return cudaErrorNotSupported;
  DeviceInfo dev;
  cudaError_t e = device_info(device, &dev);
  if (e != cudaSuccess) return e;
  const std::size_t full = static_cast<std::size_t>(dev.smem_optin);
  std::size_t half = static_cast<std::size_t>(dev.smem_per_sm) / 2;
  half = half > 1024 ? half - 1024 : 0;  // 1 KiB per CTA is reserved by the system
  if (half > full) half = full;
  const i64 mq = has_q ? m : 0;
  struct Candidate {
    i64 mc;
    bool coef_in, acc_in;
    std::size_t budget;
  };
  const Candidate cands[] = {
      {mq, true, true, half},
      {imin(mq, 128), true, true, half},
      {mq, true, true, full},
      {imin(mq, 128), true, true, full},
      {imin(mq, 64), true, true, full},
      {imin(mq, 64), true, false, full},
      {imin(mq, 64), false, true, full},
      {imin(mq, 64), false, false, full},
  };
  bool found = false;
  for (const Candidate& c : cands) {
    const i64 mc = c.mc < 1 ? 1 : c.mc;
    const bool coef_in = c.coef_in && coef_rows > 0;
    const bool acc_in = c.acc_in && acc_size > 0;
    const Layout L = make_layout<CT>(b, mc, coef_rows, coef_in, acc_size, acc_in);
    if (L.total <= c.budget) {
      plan->mc = static_cast<int>(mc);
      plan->coef_in_smem = coef_in;
      plan->acc_in_smem = acc_in;
      plan->smem = L.total;
      found = true;
      break;
    }
  }
  if (!found) return cudaErrorNotSupported;
  plan->ntiles = (p + TP - 1) / TP;
  plan->coef_rows = static_cast<int>(coef_rows);
  plan->acc_size = static_cast<int>(acc_size);

  // Always the device maximum (not this call's size): concurrent host threads planning
  // different sizes for the same kernel then cannot lower it under each other's launch.
  e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, dev.smem_optin);
  if (e != cudaSuccess) return e;
  int per_sm = 0;
  e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, plan->smem);
  if (e != cudaSuccess) return e;
  if (per_sm < 1) return cudaErrorNotSupported;
  i64 nctas = imin(plan->ntiles, static_cast<i64>(dev.sms) * per_sm);
  if (acc_size > 0) {
    const i64 cap = static_cast<i64>(kMaxPartialBytes / (sizeof(double) * acc_size));
    nctas = imin(nctas, cap < 1 ? 1 : cap);
  }
  plan->nctas = static_cast<int>(nctas < 1 ? 1 : nctas);
  plan->coef_bytes = (static_cast<std::size_t>(coef_rows * b) * sizeof(CT) + 255) &
                     ~static_cast<std::size_t>(255);
  plan->workspace = plan->coef_bytes +
                    static_cast<std::size_t>(plan->nctas) * static_cast<std::size_t>(acc_size) *
                        sizeof(double);
  return cudaSuccess;
}

template <class QT, class CT>
static const void* kernel_for(int op) {
  if (op == kProject) return reinterpret_cast<const void*>(&project_kernel<QT, CT>);
  if (op == kUpdate) return reinterpret_cast<const void*>(&update_kernel<QT, CT>);
  return reinterpret_cast<const void*>(&transform_kernel<CT>);
}

template <class QT, class CT>
static cudaError_t plan_for(int op, i64 m, i64 b, i64 p, bool gram, int device, Plan* plan) {
  return make_plan<CT>(op, m, b, p, gram, device, kernel_for<QT, CT>(op), plan);
}

// Dispatch on the dtype pair: f(QT*, CT*) with null pointers of the right types.
template <class F>
static cudaError_t dispatch(int qdtype, int wdtype, F&& f) {
  if (!valid_pair(qdtype, wdtype)) return cudaErrorInvalidValue;
  switch (qdtype) {
    case kFloat32:
      return f(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
    case kBFloat16:
      return f(static_cast<__nv_bfloat16*>(nullptr), static_cast<float*>(nullptr));
    case kFloat16:
      return f(static_cast<__half*>(nullptr), static_cast<float*>(nullptr));
    default:
      return f(static_cast<double*>(nullptr), static_cast<double*>(nullptr));
  }
}

static bool aligned16(const void* ptr) { return (reinterpret_cast<std::uintptr_t>(ptr) & 15) == 0; }

static cudaError_t reduce(const double* partials, int nparts, int size, double* out,
                          cudaStream_t stream) {
  if (size <= 0) return cudaSuccess;
  const int grid = (size + kReduceLanes - 1) / kReduceLanes;
  LF_LAUNCH(reduce_partials_kernel, grid, kThreads, kReduceSmem, stream)(partials, nparts, size, out);
  return cudaGetLastError();
}

template <class CT>
static cudaError_t convert_coef(const double* src, CT* dst, i64 rows, i64 cols, bool transpose,
                                cudaStream_t stream) {
  const i64 n = rows * cols;
  if (n <= 0) return cudaSuccess;
  const int grid = static_cast<int>(imin((n + kThreads - 1) / kThreads, 1024));
  LF_LAUNCH(convert_coef_kernel<CT>, grid, kThreads, 0, stream)(src, dst, rows, cols,
                                                                transpose ? 1 : 0);
  return cudaGetLastError();
}

template <class QT, class CT>
static Params make_params(const Plan& plan, const void* q, void* w, void* workspace, i64 m,
                          i64 b, i64 p, bool gram) {
  Params P;
  P.q = q;
  P.w = w;
  P.coef = workspace;
  P.partials = reinterpret_cast<double*>(static_cast<unsigned char*>(workspace) + plan.coef_bytes);
  P.m = m;
  P.b = b;
  P.p = p;
  P.ntiles = plan.ntiles;
  P.mc = plan.mc;
  P.coef_rows = plan.coef_rows;
  P.acc_size = plan.acc_size;
  P.acc_in_smem = plan.acc_in_smem ? 1 : 0;
  P.coef_in_smem = plan.coef_in_smem ? 1 : 0;
  P.gram = gram ? 1 : 0;
  P.qvec = (q != nullptr && aligned16(q) && (p * static_cast<i64>(sizeof(QT))) % 16 == 0) ? 1 : 0;
  P.wvec = (aligned16(w) && (p * static_cast<i64>(sizeof(CT))) % 16 == 0) ? 1 : 0;
  return P;
}

}  // namespace lf_reorth

// ====================================================================================
// C ABI. Every function returns a cudaError_t code (0 = success); dtype codes are
// 0 float32, 1 float64, 2 bfloat16, 3 float16; op codes 0 project, 1 update, 2 transform.
// Pointers are device pointers; `workspace` must hold lf_reorth_workspace_size() bytes
// for the same arguments and device, 16-byte aligned. All work is enqueued on `stream`.

using lf_reorth::i64;

extern "C" {

// Number of visible CUDA devices, or -(cudaError_t) if the runtime cannot tell (no driver,
// driver too old, ...). Never initializes more than the runtime itself.
int lf_cuda_device_count(void) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  return e == cudaSuccess ? n : -static_cast<int>(e);
}

const char* lf_cuda_error_string(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

int lf_reorth_max_block(void) { return lf_reorth::kMaxBlock; }

// The launch plan for these arguments on `device`, for tests and tuning: info[0..7] =
// {mc (basis rows per smem chunk), coefficients in smem, accumulators in smem, CTAs,
//  dynamic smem bytes, workspace bytes, column tiles, float64 accumulators per CTA}.
int lf_reorth_plan(int op, int qdtype, int wdtype, i64 m, i64 b, i64 p, int gram, int device,
                   i64* info) {
  using namespace lf_reorth;
  if (info == nullptr || op < kProject || op > kTransform || b < 1) return cudaErrorInvalidValue;
  if (op == kTransform) qdtype = wdtype;  // no basis; the pair only selects the compute type
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return dispatch(qdtype, wdtype, [&](auto* qt, auto* ct) -> cudaError_t {
    using QT = std::remove_pointer_t<decltype(qt)>;
    using CT = std::remove_pointer_t<decltype(ct)>;
    Plan plan;
    const cudaError_t err = plan_for<QT, CT>(op, m, b, p, gram != 0, device, &plan);
    if (err != cudaSuccess) return err;
    const i64 values[8] = {plan.mc,
                           plan.coef_in_smem ? 1 : 0,
                           plan.acc_in_smem ? 1 : 0,
                           plan.nctas,
                           static_cast<i64>(plan.smem),
                           static_cast<i64>(plan.workspace),
                           plan.ntiles,
                           plan.acc_size};
    for (int k = 0; k < 8; ++k) info[k] = values[k];
    return cudaSuccess;
  });
}

// Workspace bytes the launcher needs for these arguments on `device` (0 when b == 0).
int lf_reorth_workspace_size(int op, int qdtype, int wdtype, i64 m, i64 b, i64 p, int gram,
                             int device, i64* bytes) {
  if (bytes == nullptr) return cudaErrorInvalidValue;
  *bytes = 0;
  if (b == 0) return cudaSuccess;
  i64 info[8];
  const int e = lf_reorth_plan(op, qdtype, wdtype, m, b, p, gram, device, info);
  if (e == cudaSuccess) *bytes = info[5];
  return e;
}

// out: m*b + b float64 = [C (m x b, row-major) | n2 (b)].
int lf_reorth_project(int qdtype, int wdtype, const void* Q, const void* W, double* out, i64 m,
                      i64 b, i64 p, void* workspace, i64 workspace_bytes, int device,
                      cudaStream_t stream) {
  using namespace lf_reorth;
  if (b == 0) return cudaSuccess;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return dispatch(qdtype, wdtype, [&](auto* qt, auto* ct) -> cudaError_t {
    using QT = std::remove_pointer_t<decltype(qt)>;
    using CT = std::remove_pointer_t<decltype(ct)>;
    Plan plan;
    cudaError_t err = plan_for<QT, CT>(kProject, m, b, p, false, device, &plan);
    if (err != cudaSuccess) return err;
    if (workspace_bytes < static_cast<i64>(plan.workspace) || !aligned16(workspace) ||
        out == nullptr || W == nullptr || (m > 0 && Q == nullptr))
      return cudaErrorInvalidValue;
    const Params P = make_params<QT, CT>(plan, Q, const_cast<void*>(W), workspace, m, b, p, false);
    const auto kernel = &project_kernel<QT, CT>;
    LF_LAUNCH(kernel, plan.nctas, kThreads, plan.smem, stream)(P);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    return reduce(P.partials, plan.nctas, plan.acc_size, out, stream);
  });
}

// C: (m, b) float64. out: (m x b) D, or (b x b) G with gram.
int lf_reorth_update(int qdtype, int wdtype, const void* Q, void* W, const double* C, int gram,
                     double* out, i64 m, i64 b, i64 p, void* workspace, i64 workspace_bytes,
                     int device, cudaStream_t stream) {
  using namespace lf_reorth;
  if (b == 0) return cudaSuccess;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  return dispatch(qdtype, wdtype, [&](auto* qt, auto* ct) -> cudaError_t {
    using QT = std::remove_pointer_t<decltype(qt)>;
    using CT = std::remove_pointer_t<decltype(ct)>;
    Plan plan;
    cudaError_t err = plan_for<QT, CT>(kUpdate, m, b, p, gram != 0, device, &plan);
    if (err != cudaSuccess) return err;
    if (workspace_bytes < static_cast<i64>(plan.workspace) || !aligned16(workspace) ||
        W == nullptr || (plan.acc_size > 0 && out == nullptr) ||
        (m > 0 && (Q == nullptr || C == nullptr)))
      return cudaErrorInvalidValue;
    const Params P = make_params<QT, CT>(plan, Q, W, workspace, m, b, p, gram != 0);
    err = convert_coef<CT>(C, static_cast<CT*>(workspace), m, b, false, stream);
    if (err != cudaSuccess) return err;
    const auto kernel = &update_kernel<QT, CT>;
    LF_LAUNCH(kernel, plan.nctas, kThreads, plan.smem, stream)(P);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    return reduce(P.partials, plan.nctas, plan.acc_size, out, stream);
  });
}

// T: (b, b) float64. out: (b x b) G with gram (may be null without).
int lf_reorth_transform(int wdtype, void* W, const double* T, int gram, double* out, i64 b, i64 p,
                        void* workspace, i64 workspace_bytes, int device, cudaStream_t stream) {
  using namespace lf_reorth;
  if (b == 0) return cudaSuccess;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  const int qdtype = wdtype;  // no basis; the pair only selects the compute type
  return dispatch(qdtype, wdtype, [&](auto* qt, auto* ct) -> cudaError_t {
    using QT = std::remove_pointer_t<decltype(qt)>;
    using CT = std::remove_pointer_t<decltype(ct)>;
    Plan plan;
    cudaError_t err = plan_for<QT, CT>(kTransform, 0, b, p, gram != 0, device, &plan);
    if (err != cudaSuccess) return err;
    if (workspace_bytes < static_cast<i64>(plan.workspace) || !aligned16(workspace) ||
        W == nullptr || T == nullptr || (gram && out == nullptr))
      return cudaErrorInvalidValue;
    const Params P = make_params<QT, CT>(plan, nullptr, W, workspace, 0, b, p, gram != 0);
    err = convert_coef<CT>(T, static_cast<CT*>(workspace), b, b, true, stream);
    if (err != cudaSuccess) return err;
    const auto kernel = &transform_kernel<CT>;
    LF_LAUNCH(kernel, plan.nctas, kThreads, plan.smem, stream)(P);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    return reduce(P.partials, plan.nctas, plan.acc_size, out, stream);
  });
}

}  // extern "C"
