// CUDA kernel for softmax_ce_hvp (landscape_fast/ops/softmax_ce_hvp.py), with a plain C ABI
// for ctypes:
//
//   out[j, n, :] = w_n * p_n * (U[j, n, :] - <p_n, U[j, n, :]>),   p_n = softmax(logits[n])
//
// logits (N, C), U and out (k, N, C), all row-major and contiguous; out may be U itself.
// Supported dtypes: float64 logits with float64 tangents, or float32/bfloat16/float16 logits
// with float32/bfloat16/float16 tangents; the compute type CT is float64 for float64
// tangents, float32 otherwise; weights (optional, N values) are CT.
//
// Design (memory-bound; k tangents per row, C up to ~10^5 classes):
//   * One CTA of 256 threads per row; the grid is min(N, 8 x #SMs) CTAs (a full GPU at 2048
//     threads per SM), which stride over the rows. The threads of a CTA stride the row with
//     coalesced loads (consecutive threads, consecutive classes).
//   * Softmax statistics in one pass over the logits: each thread keeps an online
//     (max, normalizer) pair over its classes; the pairs are combined with warp shuffles
//     (xor butterfly), then across warps through shared memory, so that every thread holds
//     the same (max, 1/sum). Masked classes (-inf) contribute 0; a row of -inf gives p = 0.
//   * Tangents in groups of kTan = 4: one pass accumulates the 4 dots s_j = sum_c p_c u_jc in
//     registers (p_c recomputed from the logits, an L2 hit after the first pass), a block
//     reduction of the 4 values, then one pass writes w p_c (u_jc - s_j). No (k, N, C) or
//     (N, C) temporary: the output is the only memory written.
//   * A row with weight exactly 0 is written as zeros without reading logits or tangents.
//   * Reductions use a fixed shuffle/smem order: results are bitwise reproducible, and every
//     thread of a CTA gets bitwise-identical sums (xor butterflies are symmetric).
//
// Building with -DLF_HOST_EMULATION='"header.h"' compiles this file as plain C++ against
// the host emulation of tests/kernels/cuda_emulation.h; warp shuffles, which it does not
// emulate, are then replaced by an exchange through a host buffer between two barriers
// (same values, same order), so the kernel runs on CPU memory in the tests.

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

namespace lf_sce {

using i64 = std::int64_t;

constexpr int kThreads = 256;             // threads per CTA
constexpr int kWarps = kThreads / 32;     // warps per CTA
constexpr int kTan = 4;                   // tangents per pass (register accumulators)
constexpr int kCtasPerSm = 8;            // grid = min(N, 8 x #SMs): full occupancy, then
                                         // a grid-stride loop over rows

enum Dtype : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

// ------------------------------------------------------------------------------------
// Element conversions and math in the compute type.
__device__ __forceinline__ float to_ct(float x, float) { return x; }
__device__ __forceinline__ float to_ct(__nv_bfloat16 x, float) { return __bfloat162float(x); }
__device__ __forceinline__ float to_ct(__half x, float) { return __half2float(x); }
__device__ __forceinline__ double to_ct(double x, double) { return x; }

template <class T>
__device__ __forceinline__ T from_ct(float x);
template <>
__device__ __forceinline__ float from_ct<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_ct<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_ct<__half>(float x) {
  return __float2half_rn(x);
}
template <class T>
__device__ __forceinline__ T from_ct(double x) {
  return x;
}

__device__ __forceinline__ float ct_exp(float x) { return expf(x); }
__device__ __forceinline__ double ct_exp(double x) { return exp(x); }

template <class CT>
__device__ __forceinline__ CT neg_inf() {
  return -static_cast<CT>(HUGE_VAL);
}

// ------------------------------------------------------------------------------------
// Warp shuffles (emulated through a host exchange buffer and two barriers).
#ifdef LF_HOST_EMULATION
template <class T>
inline T shfl_xor(T v, int mask) {
  static T buffer[1024];
  buffer[threadIdx.x] = v;
  __syncthreads();
  const T r = buffer[threadIdx.x ^ static_cast<unsigned>(mask)];
  __syncthreads();
  return r;
}
#else
template <class T>
__device__ __forceinline__ T shfl_xor(T v, int mask) {
  return __shfl_xor_sync(0xffffffffu, v, mask);
}
#endif

// Online softmax statistics: max m and normalizer s = sum exp(x - m) (s = 0 while m = -inf).
template <class CT>
struct Stat {
  CT m, s;
};

template <class CT>
__device__ __forceinline__ Stat<CT> combine(Stat<CT> a, Stat<CT> b) {
  const CT m = b.m > a.m ? b.m : a.m;
  if (m == neg_inf<CT>()) return Stat<CT>{m, CT(0)};
  return Stat<CT>{m, a.s * ct_exp(a.m - m) + b.s * ct_exp(b.m - m)};
}

template <class CT>
__device__ __forceinline__ Stat<CT> warp_combine(Stat<CT> v) {
#pragma unroll
  for (int off = 16; off >= 1; off /= 2) {
    const Stat<CT> o{shfl_xor(v.m, off), shfl_xor(v.s, off)};
    v = combine(v, o);
  }
  return v;
}

template <class CT>
__device__ __forceinline__ CT warp_sum(CT v) {
#pragma unroll
  for (int off = 16; off >= 1; off /= 2) v += shfl_xor(v, off);
  return v;
}

// Block-wide combination; every thread returns the same value. All threads must call it.
template <class CT>
__device__ Stat<CT> block_combine(Stat<CT> v, CT* smem) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  v = warp_combine(v);
  if (lane == 0) {
    smem[2 * warp] = v.m;
    smem[2 * warp + 1] = v.s;
  }
  __syncthreads();
  v = lane < kWarps ? Stat<CT>{smem[2 * lane], smem[2 * lane + 1]}
                    : Stat<CT>{neg_inf<CT>(), CT(0)};
  v = warp_combine(v);
  __syncthreads();  // smem is reused by the next reduction
  return v;
}

// Block-wide sums of kTan values; every thread gets the same sums. All threads must call it.
template <class CT>
__device__ void block_sum(CT (&v)[kTan], CT* smem) {
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
#pragma unroll
  for (int t = 0; t < kTan; ++t) {
    v[t] = warp_sum(v[t]);
    if (lane == 0) smem[t * kWarps + warp] = v[t];
  }
  __syncthreads();
#pragma unroll
  for (int t = 0; t < kTan; ++t) v[t] = warp_sum(lane < kWarps ? smem[t * kWarps + lane] : CT(0));
  __syncthreads();
}

// ------------------------------------------------------------------------------------
template <class ZT, class UT, class CT>
struct Params {
  const ZT* z;    // (N, C)
  const UT* u;    // (k, N, C)
  const CT* w;    // (N,) or null
  UT* out;        // (k, N, C), may equal u
  i64 k, N, C;
};

template <class ZT, class UT, class CT>
__global__ void __launch_bounds__(kThreads) softmax_ce_hvp_kernel(Params<ZT, UT, CT> P) {
  LF_DYNAMIC_SMEM(smem_raw);
  CT* smem = reinterpret_cast<CT*>(smem_raw);  // 2 * kWarps and kTan * kWarps values
  const i64 C = P.C, N = P.N, k = P.k;
  const i64 tid = threadIdx.x;
  for (i64 n = blockIdx.x; n < N; n += gridDim.x) {
    const CT w = P.w != nullptr ? P.w[n] : CT(1);
    if (w == CT(0)) {  // block-uniform: ignored sample, zeros without reading anything
      for (i64 j = 0; j < k; ++j) {
        UT* o = P.out + (j * N + n) * C;
        for (i64 c = tid; c < C; c += kThreads) o[c] = from_ct<UT>(CT(0));
      }
      continue;
    }
    const ZT* z = P.z + n * C;
    // 1. Online max / normalizer per thread, then across the block.
    Stat<CT> st{neg_inf<CT>(), CT(0)};
    for (i64 c = tid; c < C; c += kThreads) {
      const CT x = to_ct(z[c], CT(0));
      if (x <= st.m) {
        if (x != neg_inf<CT>()) st.s += ct_exp(x - st.m);
      } else {  // new maximum (or NaN, which then poisons s)
        st.s = st.m == neg_inf<CT>() ? CT(1) : st.s * ct_exp(st.m - x) + CT(1);
        if (x != x) st.s = x;
        st.m = x > st.m ? x : st.m;
      }
    }
    st = block_combine(st, smem);
    const CT mu = st.m == neg_inf<CT>() ? CT(0) : st.m;
    const CT inv = st.s == CT(0) ? CT(0) : CT(1) / st.s;
    // 2. Groups of kTan tangents: dots, then the output.
    for (i64 j0 = 0; j0 < k; j0 += kTan) {
      const UT* u[kTan];
      UT* o[kTan];
      bool live[kTan];
#pragma unroll
      for (int t = 0; t < kTan; ++t) {
        live[t] = j0 + t < k;
        const i64 j = live[t] ? j0 + t : j0;
        u[t] = P.u + (j * N + n) * C;
        o[t] = P.out + (j * N + n) * C;
      }
      CT s[kTan] = {};
      for (i64 c = tid; c < C; c += kThreads) {
        const CT p = ct_exp(to_ct(z[c], CT(0)) - mu) * inv;
#pragma unroll
        for (int t = 0; t < kTan; ++t)
          if (live[t]) s[t] += p * to_ct(u[t][c], CT(0));
      }
      block_sum(s, smem);
      for (i64 c = tid; c < C; c += kThreads) {
        const CT wp = w * (ct_exp(to_ct(z[c], CT(0)) - mu) * inv);
#pragma unroll
        for (int t = 0; t < kTan; ++t)
          if (live[t]) o[t][c] = from_ct<UT>(wp * (to_ct(u[t][c], CT(0)) - s[t]));
      }
    }
  }
}

template <class ZT, class UT, class CT>
cudaError_t launch(const void* z, const void* u, const void* w, void* out, i64 k, i64 N, i64 C,
                   int sms, cudaStream_t stream) {
  Params<ZT, UT, CT> P;
  P.z = static_cast<const ZT*>(z);
  P.u = static_cast<const UT*>(u);
  P.w = static_cast<const CT*>(w);
  P.out = static_cast<UT*>(out);
  P.k = k;
  P.N = N;
  P.C = C;
  const i64 max_grid = static_cast<i64>(sms) * kCtasPerSm;
  const int grid = static_cast<int>(N < max_grid ? N : max_grid);
  const std::size_t smem = static_cast<std::size_t>(kWarps) * (kTan > 2 ? kTan : 2) * sizeof(CT);
  const auto kernel = &softmax_ce_hvp_kernel<ZT, UT, CT>;
  LF_LAUNCH(kernel, grid, kThreads, smem, stream)(P);
  return cudaGetLastError();
}

// Calls f(ZT*, UT*, CT*) (null pointers as type tags) for a supported dtype pair.
template <class F>
cudaError_t dispatch(int zdtype, int udtype, F&& f) {
  auto with_u = [&](auto* zt) -> cudaError_t {
    switch (udtype) {
      case kFloat32:
        return f(zt, static_cast<float*>(nullptr), static_cast<float*>(nullptr));
      case kBFloat16:
        return f(zt, static_cast<__nv_bfloat16*>(nullptr), static_cast<float*>(nullptr));
      case kFloat16:
        return f(zt, static_cast<__half*>(nullptr), static_cast<float*>(nullptr));
      default:
        return cudaErrorInvalidValue;
    }
  };
  if (udtype == kFloat64) {
    if (zdtype != kFloat64) return cudaErrorInvalidValue;
    return f(static_cast<double*>(nullptr), static_cast<double*>(nullptr),
             static_cast<double*>(nullptr));
  }
  switch (zdtype) {
    case kFloat32:
      return with_u(static_cast<float*>(nullptr));
    case kBFloat16:
      return with_u(static_cast<__nv_bfloat16*>(nullptr));
    case kFloat16:
      return with_u(static_cast<__half*>(nullptr));
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace lf_sce

extern "C" {

// Threads per CTA (one CTA per row), tangents per pass and CTAs per SM, for tests and tuning.
int lf_softmax_ce_hvp_threads(void) { return lf_sce::kThreads; }
int lf_softmax_ce_hvp_tangents_per_pass(void) { return lf_sce::kTan; }
int lf_softmax_ce_hvp_ctas_per_sm(void) { return lf_sce::kCtasPerSm; }

// logits: (N, C) of zdtype; U, out: (k, N, C) of udtype (out may equal U); weights: N values
// of the compute type (float64 for float64 tangents, else float32) or null. Returns a
// cudaError_t code (0: success); the launch is asynchronous on `stream`.
int lf_softmax_ce_hvp(int zdtype, int udtype, const void* logits, const void* U,
                      const void* weights, void* out, std::int64_t k, std::int64_t N,
                      std::int64_t C, int device, cudaStream_t stream) {
  using namespace lf_sce;
  if (k < 0 || N < 0 || C < 1) return cudaErrorInvalidValue;
  if (k == 0 || N == 0) return cudaSuccess;
  if (logits == nullptr || U == nullptr || out == nullptr) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  int sms = 0;
  e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  if (sms < 1) sms = 1;
  return dispatch(zdtype, udtype, [&](auto* zt, auto* ut, auto* ct) -> cudaError_t {
    using ZT = std::remove_pointer_t<decltype(zt)>;
    using UT = std::remove_pointer_t<decltype(ut)>;
    using CT = std::remove_pointer_t<decltype(ct)>;
    return launch<ZT, UT, CT>(logits, U, weights, out, k, N, C, sms, stream);
  });
}

}  // extern "C"
