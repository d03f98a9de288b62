// Portable SIMD layer of the CPU kernels: compiler vector extensions of the widest register
// the build targets (64 bytes with AVX-512, 32 with AVX, 16 otherwise), with unaligned
// loads and stores. a * b + c is contracted to an FMA (GCC's and Clang's default for C++).
#pragma once

#include <cstring>

namespace landscape_fast {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename S>
struct Simd {
  typedef S V __attribute__((vector_size(kVecBytes)));
  static constexpr int L = kVecBytes / sizeof(S);
};

template <typename S>
using VecT = typename Simd<S>::V;

template <typename S>
inline __attribute__((always_inline)) VecT<S> vload(const S* p) {
  VecT<S> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename S>
inline __attribute__((always_inline)) void vstore(S* p, VecT<S> v) {
  std::memcpy(p, &v, sizeof(v));
}

}  // namespace landscape_fast
