// softmax_ce_hvp CPU kernel: the softmax-cross-entropy Hessian w.r.t. the logits applied to
// k tangents per sample, registered as torch.ops.landscape_fast.softmax_ce_hvp_.
//
//   softmax_ce_hvp_(logits (N, C), U (k, N, C), weights (N,)?, out! (k, N, C)) -> ()
//   out[j, n, :] = w_n * p_n * (U[j, n, :] - <p_n, U[j, n, :]>),   p_n = softmax(logits[n])
//
// Design:
// * One work item = one row n and a range of tangents j. Per item the softmax row is formed
//   once in a thread-local scratch row of C accumulator-type values (two passes over the
//   logits: convert + max, then exp + sum, then a scaling pass on the in-cache scratch),
//   then per tangent: s = <p, u> (one read of u) and out = (w p) * (u - s) (a second read
//   of u, from L2, and one write). No (k, N, C) temporary and no (N, C) one: the only
//   scratch is one or two rows per thread.
// * Arithmetic: float64 for float64 tangents, float32 otherwise; bfloat16/float16 logits or
//   tangents are widened to float32 as they are loaded (tangents through a second scratch
//   row), results rounded to the tangents' dtype (round to nearest even) as stored.
//   Dot products and the softmax normalizer use 4 independent SIMD accumulators (GCC/Clang
//   vector extensions, the widest registers the build targets), summed in a fixed order.
//   float32 exponentials use a vectorized Cephes-style exp (about 1 ulp); float64 ones
//   call std::exp.
// * Rows with weight exactly 0 are written as zeros without reading logits or tangents.
//   A row whose logits are all -inf has p = 0 (zero output); NaN/+inf logits give NaN.
// * out may be U itself (each element of u is read before the same element of out is
//   written); partial overlaps are refused.
// * Threads: at::parallel_for over work items (torch's OpenMP pool); a row's tangents are
//   split across threads only when there are fewer rows than threads. Results do not
//   depend on the thread count (each output row is computed by one thread, in one order).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include "common.h"
#include "simd.h"

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace landscape_fast {
namespace {

#define LF_SCE_INLINE inline __attribute__((always_inline))

constexpr int64_t kMinItemWork = 1 << 15;  // elements per parallel chunk, at least

template <typename S>
LF_SCE_INLINE VecT<S> vsplat(S x) {
  return VecT<S>{} + x;
}
// Fixed-order tree sum of the lanes.
template <typename S>
LF_SCE_INLINE S hsum(VecT<S> v) {
  constexpr int L = Simd<S>::L;
  S lanes[L];
  std::memcpy(lanes, &v, sizeof(v));
  for (int w = L / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) lanes[i] += lanes[i + w];
  return lanes[0];
}
template <typename S>
LF_SCE_INLINE S hmax(VecT<S> v) {
  constexpr int L = Simd<S>::L;
  S lanes[L];
  std::memcpy(lanes, &v, sizeof(v));
  S m = lanes[0];
  for (int i = 1; i < L; ++i) m = lanes[i] > m ? lanes[i] : m;
  return m;
}

// ------------------------------------------------------------------------------------------
// Element conversions (storage type <-> arithmetic type).
// ------------------------------------------------------------------------------------------
LF_SCE_INLINE float widen(c10::BFloat16 x) {
  const uint32_t w = static_cast<uint32_t>(x.x) << 16;
  float f;
  std::memcpy(&f, &w, sizeof(f));
  return f;
}
LF_SCE_INLINE float widen(c10::Half x) { return c10::detail::fp16_ieee_to_fp32_value(x.x); }
LF_SCE_INLINE float widen(float x) { return x; }
LF_SCE_INLINE double widen(double x) { return x; }

template <typename T, typename S>
LF_SCE_INLINE T narrow(S x) {
  if constexpr (std::is_same_v<T, S>) {
    return x;
  } else {
    return T(static_cast<float>(x));  // c10: round to nearest even
  }
}

// src (n elements of T) -> dst (S); a plain copy when T == S.
template <typename S, typename T>
void widen_row(const T* src, int64_t n, S* dst) {
  if constexpr (std::is_same_v<S, T>) {
    std::memcpy(dst, src, n * sizeof(S));
  } else {
    for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<S>(widen(src[c]));
  }
}

// ------------------------------------------------------------------------------------------
// exp of a float32 vector for arguments x <= 0 (x = z - max z) or NaN: Cephes expf
// (range reduction by ln 2 in two parts, degree-6 polynomial; ~1 ulp). Results below
// 2^-126 (x < -87.33) are flushed to 0, which is far below what a softmax row of sum >= 1
// can resolve; NaN stays NaN.
// ------------------------------------------------------------------------------------------
LF_SCE_INLINE VecT<float> vexp(VecT<float> x) {
  using V = VecT<float>;
  typedef int32_t IV __attribute__((vector_size(kVecBytes)));
  const V lo = vsplat(-87.33654f), hi = vsplat(88.3762626647949f);
  V xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const V magic = vsplat(12582912.0f);  // 1.5 * 2^23: rounds to the nearest integer
  const V t = xc * vsplat(1.44269504088896341f) + magic;
  const V n = t - magic;
  IV ni;
  std::memcpy(&ni, &t, sizeof(ni));
  IV magic_bits;
  const V m = magic;
  std::memcpy(&magic_bits, &m, sizeof(magic_bits));
  ni = ni - magic_bits;  // integer value of n
  V r = xc - n * vsplat(0.693359375f);
  r = r - n * vsplat(-2.12194440e-4f);
  V poly = vsplat(1.9875691500E-4f);
  poly = poly * r + vsplat(1.3981999507E-3f);
  poly = poly * r + vsplat(8.3334519073E-3f);
  poly = poly * r + vsplat(4.1665795894E-2f);
  poly = poly * r + vsplat(1.6666665459E-1f);
  poly = poly * r + vsplat(5.0000001201E-1f);
  V y = poly * (r * r) + r + vsplat(1.0f);
  const IV bits = (ni + 127) << 23;
  V scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  y = y * scale;
  y = x < lo ? vsplat(0.0f) : y;
  return x != x ? x : y;  // NaN in, NaN out
}

LF_SCE_INLINE float sexp(float x) {
  VecT<float> v = vsplat(x);
  return vexp(v)[0];
}

// ------------------------------------------------------------------------------------------
// Row kernels on arithmetic-type rows.
// ------------------------------------------------------------------------------------------

// p <- softmax of the logits row z (n elements of ZT); p is S scratch of n elements.
template <typename S, typename ZT>
void softmax_row(const ZT* z, int64_t n, S* p) {
  using V = VecT<S>;
  constexpr int L = Simd<S>::L;
  constexpr S kNegInf = -std::numeric_limits<S>::infinity();
  widen_row<S>(z, n, p);
  // max (NaN entries are skipped here and propagate through exp below)
  V vm = vsplat(kNegInf);
  int64_t c = 0;
  for (; c + L <= n; c += L) {
    const V x = vload(p + c);
    vm = x > vm ? x : vm;
  }
  S mu = hmax<S>(vm);
  for (; c < n; ++c) mu = p[c] > mu ? p[c] : mu;
  if (mu == kNegInf) mu = S(0);  // every class masked: p = 0
  // exponentials and their sum
  V acc[4] = {};
  const V vmu = vsplat(mu);
  c = 0;
  if constexpr (std::is_same_v<S, float>) {
    for (; c + 4 * L <= n; c += 4 * L) {
      for (int u = 0; u < 4; ++u) {
        const V e = vexp(vload(p + c + u * L) - vmu);
        vstore(p + c + u * L, e);
        acc[u] += e;
      }
    }
    for (; c + L <= n; c += L) {
      const V e = vexp(vload(p + c) - vmu);
      vstore(p + c, e);
      acc[0] += e;
    }
  } else {
    for (; c + 4 * L <= n; c += 4 * L) {
      for (int u = 0; u < 4; ++u) {
        V e;
        for (int l = 0; l < L; ++l) e[l] = std::exp(p[c + u * L + l] - mu);
        vstore(p + c + u * L, e);
        acc[u] += e;
      }
    }
  }
  S total = hsum<S>((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; c < n; ++c) {
    S e;
    if constexpr (std::is_same_v<S, float>) {
      e = sexp(p[c] - mu);
    } else {
      e = std::exp(p[c] - mu);
    }
    p[c] = e;
    total += e;
  }
  const S inv = total == S(0) ? S(0) : S(1) / total;
  const V vinv = vsplat(inv);
  c = 0;
  for (; c + L <= n; c += L) vstore(p + c, vload(p + c) * vinv);
  for (; c < n; ++c) p[c] *= inv;
}

// <p, u> over n elements, 4 SIMD accumulators.
template <typename S>
S dot(const S* p, const S* u, int64_t n) {
  using V = VecT<S>;
  constexpr int L = Simd<S>::L;
  V acc[4] = {};
  int64_t c = 0;
  for (; c + 4 * L <= n; c += 4 * L)
    for (int k = 0; k < 4; ++k) acc[k] += vload(p + c + k * L) * vload(u + c + k * L);
  for (; c + L <= n; c += L) acc[0] += vload(p + c) * vload(u + c);
  S s = hsum<S>((acc[0] + acc[1]) + (acc[2] + acc[3]));
  for (; c < n; ++c) s += p[c] * u[c];
  return s;
}

// o = (w p) * (u - s); o may be u.
template <typename S>
void hvp_store(const S* p, const S* u, S s, S w, int64_t n, S* o) {
  using V = VecT<S>;
  constexpr int L = Simd<S>::L;
  const V vs = vsplat(s), vw = vsplat(w);
  int64_t c = 0;
  for (; c + L <= n; c += L) vstore(o + c, (vw * vload(p + c)) * (vload(u + c) - vs));
  for (; c < n; ++c) o[c] = (w * p[c]) * (u[c] - s);
}

template <typename S, typename ZT, typename UT>
void sce_hvp_impl(const ZT* z, const UT* U, const S* w, UT* out, int64_t k, int64_t N,
                  int64_t C) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  // Split a row's tangents across threads only when rows alone cannot feed every thread.
  const int64_t jsplit = N >= threads ? 1 : std::min<int64_t>(k, (threads + N - 1) / N);
  const int64_t jper = (k + jsplit - 1) / jsplit;
  const int64_t items = N * jsplit;
  const int64_t grain = std::max<int64_t>(1, kMinItemWork / std::max<int64_t>(1, C * (jper + 1)));
  at::parallel_for(0, items, grain, [&](int64_t begin, int64_t end) {
    std::unique_ptr<S[]> p(new S[C]);
    std::unique_ptr<S[]> ubuf(std::is_same_v<S, UT> ? nullptr : new S[C]);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / jsplit;
      const int64_t j0 = (item % jsplit) * jper, j1 = std::min(k, j0 + jper);
      if (j0 >= j1) continue;
      const S wn = w != nullptr ? w[n] : S(1);
      if (wn == S(0)) {
        for (int64_t j = j0; j < j1; ++j) {
          UT* o = out + (j * N + n) * C;
          std::fill(o, o + C, narrow<UT>(S(0)));
        }
        continue;
      }
      softmax_row<S>(z + n * C, C, p.get());
      for (int64_t j = j0; j < j1; ++j) {
        const UT* u = U + (j * N + n) * C;
        UT* o = out + (j * N + n) * C;
        if constexpr (std::is_same_v<S, UT>) {
          hvp_store<S>(p.get(), u, dot<S>(p.get(), u, C), wn, C, o);
        } else {
          widen_row<S>(u, C, ubuf.get());
          const S s = dot<S>(p.get(), ubuf.get(), C);
          hvp_store<S>(p.get(), ubuf.get(), s, wn, C, ubuf.get());
          for (int64_t c = 0; c < C; ++c) o[c] = narrow<UT>(ubuf[c]);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// Argument checks and dtype dispatch.
// ------------------------------------------------------------------------------------------
constexpr const char* kOp = "softmax_ce_hvp_";

bool is_low(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

template <typename F>
void dispatch_storage(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat:
      f(float{});
      break;
    case at::kDouble:
      f(double{});
      break;
    case at::kBFloat16:
      f(c10::BFloat16{});
      break;
    default:
      f(c10::Half{});
      break;
  }
}

void softmax_ce_hvp_(const at::Tensor& logits, const at::Tensor& U,
                     const std::optional<at::Tensor>& weights, const at::Tensor& out) {
  LF_CHECK_CPU(kOp, logits, "logits");
  LF_CHECK_CPU(kOp, U, "U");
  LF_CHECK_CPU(kOp, out, "out");
  LF_CHECK_DIM(kOp, logits, "logits", 2, "(N, C)");
  LF_CHECK_DIM(kOp, U, "U", 3, "(k, N, C)");
  LF_CHECK_DIM(kOp, out, "out", 3, "(k, N, C)");
  LF_CHECK_CONTIGUOUS(kOp, logits, "logits");
  LF_CHECK_CONTIGUOUS(kOp, U, "U");
  LF_CHECK_CONTIGUOUS(kOp, out, "out");
  const int64_t N = logits.size(0), C = logits.size(1), k = U.size(0);
  TORCH_CHECK(C >= 1, kOp, ": logits must have C >= 1 classes, got shape ", logits.sizes());
  LF_CHECK_SIZE(kOp, U, "U", 1, N, "logits.size(0)");
  LF_CHECK_SIZE(kOp, U, "U", 2, C, "logits.size(1)");
  TORCH_CHECK(out.sizes() == U.sizes(), kOp, ": out must have U's shape ", U.sizes(), ", got ",
              out.sizes());
  const auto ut = U.scalar_type(), zt = logits.scalar_type();
  TORCH_CHECK(ut == at::kFloat || ut == at::kDouble || is_low(ut), kOp,
              ": U must be float32, float64, bfloat16 or float16, got ", ut);
  LF_CHECK_DTYPE(kOp, out, "out", ut);
  const bool f64 = ut == at::kDouble;
  TORCH_CHECK(f64 ? zt == at::kDouble : (zt == at::kFloat || is_low(zt)), kOp,
              ": unsupported dtypes U=", ut, ", logits=", zt,
              " (float64 tangents need float64 logits; other tangents float32/bfloat16/float16 "
              "logits)");
  const at::ScalarType acc = f64 ? at::kDouble : at::kFloat;
  const void* wptr = nullptr;
  if (weights.has_value()) {
    const at::Tensor& w = *weights;
    LF_CHECK_CPU(kOp, w, "weights");
    LF_CHECK_DIM(kOp, w, "weights", 1, "(N,)");
    LF_CHECK_CONTIGUOUS(kOp, w, "weights");
    LF_CHECK_SIZE(kOp, w, "weights", 0, N, "logits.size(0)");
    LF_CHECK_DTYPE(kOp, w, "weights", acc);
    wptr = w.const_data_ptr();
  }
  check_no_overlap(kOp, out, "out", logits, "logits");
  if (out.const_data_ptr() != U.const_data_ptr()) check_no_overlap(kOp, out, "out", U, "U");
  if (out.numel() == 0) return;
  dispatch_storage(ut, [&](auto u_tag) {
    using UT = decltype(u_tag);
    dispatch_storage(zt, [&](auto z_tag) {
      using ZT = decltype(z_tag);
      using S = std::conditional_t<std::is_same_v<UT, double>, double, float>;
      if constexpr (std::is_same_v<S, double> == std::is_same_v<ZT, double>) {
        sce_hvp_impl<S, ZT, UT>(static_cast<const ZT*>(logits.const_data_ptr()),
                                static_cast<const UT*>(U.const_data_ptr()),
                                static_cast<const S*>(wptr),
                                static_cast<UT*>(out.mutable_data_ptr()), k, N, C);
      }
    });
  });
}

}  // namespace
}  // namespace landscape_fast

TORCH_LIBRARY_IMPL(landscape_fast, CPU, m) {
  m.impl("softmax_ce_hvp_", &landscape_fast::softmax_ce_hvp_);
}
