// Host emulation of the CUDA features csrc/cuda/*.cu uses, so that the kernels can be run
// and tested on a machine without a GPU. Compile a kernel file as plain C++ with
//
//   g++ -std=c++17 -shared -fPIC -x c++ -I$CUDA_HOME/include -Wno-attributes
//       -DLF_HOST_EMULATION='"/abs/path/cuda_emulation.h"' csrc/cuda/<op>.cu -o emu.so
//
// and call its extern "C" launchers with host pointers (streams are ignored, every launch
// is synchronous). What is emulated:
//   * each CTA runs its threads as cooperative fibers (ucontext); __syncthreads() switches
//     back to the scheduler, which resumes every thread once per barrier interval, in the
//     order set by lf_emu_configure (forward, reverse or shuffled). A missing barrier
//     between a write and a read by another thread gives wrong results in one of the
//     orders. All live threads must reach the same __syncthreads() line, else the process
//     aborts with a message (a divergent barrier is undefined behaviour on a GPU);
//   * dynamic shared memory is a fresh buffer per CTA, filled with 0xFF bytes (NaN as
//     float or double) and ending at an inaccessible guard page;
//   * device attributes and occupancy model an H200-like device whose SM count and shared
//     memory limits are configurable (few SMs exercise the grid-stride loops, small limits
//     the global-memory fallbacks); launches with more dynamic shared memory than allowed
//     (48 KiB unless raised with cudaFuncSetAttribute, never above the opt-in limit) fail
//     with cudaErrorInvalidValue through cudaGetLastError, as on a GPU.
// Not emulated: warp-level primitives, static __shared__ arrays, atomics, multiple streams.
#pragma once

#include <cuda_runtime.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <vector>

#define __launch_bounds__(...)
#define __syncthreads() ::lf_emu::syncthreads(__LINE__)
#define LF_DYNAMIC_SMEM(name) unsigned char* name = ::lf_emu::shared_memory()
#define LF_LAUNCH(kernel, grid, block, smem, stream) \
  (static_cast<void>(stream), ::lf_emu::make_launch((kernel), (grid), (block), (smem)))

inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 gridDim;
inline dim3 blockDim;

template <class T>
inline T __ldg(const T* p) {
  return *p;
}

namespace lf_emu {

struct Config {
  int order = 0;  // 0 forward, 1 reverse, 2 shuffled
  unsigned seed = 1;
  int sms = 4;
  int smem_optin = 232448;    // H200: 227 KiB per block (opt-in)
  int smem_per_sm = 233472;   // H200: 228 KiB per SM
  int max_blocks_per_sm = 2;  // the kernels' __launch_bounds__(256, 2)
};

struct State {
  Config cfg;
  std::vector<ucontext_t> ctx;
  std::vector<char*> stacks;
  std::vector<int> status;  // 0 runnable, 1 at barrier, 2 finished
  std::vector<int> line;
  ucontext_t main_ctx;
  int current = 0;
  std::function<void()> body;
  unsigned char* smem = nullptr;
  void* smem_map = nullptr;
  std::size_t smem_map_size = 0;
  cudaError_t last_error = cudaSuccess;
  std::map<const void*, int> max_dynamic_smem;
  std::mt19937 rng{1};
  long long launches = 0, blocks = 0;
};

inline State& state() {
  static State s;
  return s;
}

constexpr std::size_t kStackBytes = 256 * 1024;

inline void fail(const char* what, int line) {
  std::fprintf(stderr, "lf_emu: %s (line %d, block %u, thread %d)\n", what, line, blockIdx.x,
               state().current);
  std::abort();
}

inline void syncthreads(int line) {
  State& s = state();
  s.status[s.current] = 1;
  s.line[s.current] = line;
  swapcontext(&s.ctx[s.current], &s.main_ctx);
}

inline unsigned char* shared_memory() { return state().smem; }

inline void trampoline() {
  State& s = state();
  s.body();
  s.status[s.current] = 2;  // returning resumes uc_link = main_ctx
}

inline void prepare_smem(std::size_t bytes) {
  State& s = state();
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t body = (bytes + page - 1) / page * page;
  if (s.smem_map != nullptr) munmap(s.smem_map, s.smem_map_size);
  s.smem_map_size = body + 2 * page;
  s.smem_map = mmap(nullptr, s.smem_map_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                    -1, 0);
  if (s.smem_map == MAP_FAILED) fail("mmap failed", 0);
  auto* base = static_cast<unsigned char*>(s.smem_map);
  mprotect(base, page, PROT_NONE);
  mprotect(base + page + body, page, PROT_NONE);
  const std::size_t used = (bytes + 15) / 16 * 16;
  s.smem = base + page + body - used;  // the buffer ends at the guard page
  std::memset(base + page, 0xFF, body);
}

inline void run_block(int nthreads) {
  State& s = state();
  if (static_cast<int>(s.stacks.size()) < nthreads) {
    while (static_cast<int>(s.stacks.size()) < nthreads)
      s.stacks.push_back(static_cast<char*>(std::malloc(kStackBytes)));
  }
  s.ctx.assign(nthreads, ucontext_t{});
  s.status.assign(nthreads, 0);
  s.line.assign(nthreads, 0);
  for (int t = 0; t < nthreads; ++t) {
    getcontext(&s.ctx[t]);
    s.ctx[t].uc_stack.ss_sp = s.stacks[t];
    s.ctx[t].uc_stack.ss_size = kStackBytes;
    s.ctx[t].uc_link = &s.main_ctx;
    makecontext(&s.ctx[t], trampoline, 0);
  }
  std::vector<int> order(nthreads);
  for (;;) {
    for (int t = 0; t < nthreads; ++t) order[t] = t;
    if (s.cfg.order == 1) std::reverse(order.begin(), order.end());
    if (s.cfg.order == 2) std::shuffle(order.begin(), order.end(), s.rng);
    for (int t : order) {
      if (s.status[t] == 2) continue;
      s.status[t] = 0;
      s.current = t;
      threadIdx = uint3{static_cast<unsigned>(t), 0u, 0u};
      swapcontext(&s.main_ctx, &s.ctx[t]);
    }
    int waiting = 0, done = 0, line = -1;
    for (int t = 0; t < nthreads; ++t) {
      if (s.status[t] == 2) {
        ++done;
      } else {
        ++waiting;
        if (line == -1) line = s.line[t];
        if (s.line[t] != line) fail("threads wait at different __syncthreads()", s.line[t]);
      }
    }
    if (waiting == 0) break;
    if (done != 0) fail("__syncthreads() not reached by every thread of the block", line);
  }
}

// LF_LAUNCH(kernel, grid, block, smem, stream)(args...): run every CTA, one after the other.
template <class K>
struct Launch {
  const void* fn;
  K kernel;
  int grid, block;
  std::size_t smem;

  template <class... Args>
  void operator()(Args... args) const {
    State& s = state();
    const auto it = s.max_dynamic_smem.find(fn);
    const std::size_t limit = it != s.max_dynamic_smem.end() ? it->second : 48 * 1024;
    if (grid < 1 || block < 1 || block > 1024 || smem > limit) {
      s.last_error = cudaErrorInvalidValue;
      return;
    }
    ++s.launches;
    gridDim = dim3(grid, 1, 1);
    blockDim = dim3(block, 1, 1);
    for (int g = 0; g < grid; ++g) {
      blockIdx = uint3{static_cast<unsigned>(g), 0u, 0u};
      prepare_smem(smem);
      s.body = [&]() { kernel(args...); };
      run_block(block);
      ++s.blocks;
    }
  }
};

template <class K>
Launch<K> make_launch(K kernel, int grid, int block, std::size_t smem) {
  return Launch<K>{reinterpret_cast<const void*>(kernel), kernel, grid, block, smem};
}

}  // namespace lf_emu

// ---- CUDA runtime API subset (host definitions replacing libcudart) ------------------
extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
  return device == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetLastError(void) {
  const cudaError_t e = lf_emu::state().last_error;
  lf_emu::state().last_error = cudaSuccess;
  return e;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess:
      return "no error";
    case cudaErrorInvalidValue:
      return "invalid argument";
    case cudaErrorInvalidDevice:
      return "invalid device ordinal";
    case cudaErrorNotSupported:
      return "operation not supported";
    default:
      return "unrecognized error code (emulation)";
  }
}
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return cudaErrorInvalidDevice;
  const lf_emu::Config& c = lf_emu::state().cfg;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount:
      *value = c.sms;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
      *value = c.smem_optin;
      return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor:
      *value = c.smem_per_sm;
      return cudaSuccess;
    default:
      return cudaErrorInvalidValue;
  }
}
cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  if (value < 0 || value > lf_emu::state().cfg.smem_optin) return cudaErrorInvalidValue;
  lf_emu::state().max_dynamic_smem[func] = value;
  return cudaSuccess;
}
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
    int* num_blocks, const void* func, int block_size, size_t dynamic_smem, unsigned int) {
  const lf_emu::Config& c = lf_emu::state().cfg;
  const auto it = lf_emu::state().max_dynamic_smem.find(func);
  const std::size_t limit = it != lf_emu::state().max_dynamic_smem.end() ? it->second : 48 * 1024;
  if (block_size < 1 || block_size > 1024 || dynamic_smem > limit) {
    *num_blocks = 0;
    return cudaSuccess;
  }
  const int by_smem = static_cast<int>(c.smem_per_sm / (dynamic_smem + 1024));
  const int by_threads = 2048 / block_size;
  *num_blocks = std::min({by_smem, by_threads, c.max_blocks_per_sm});
  return cudaSuccess;
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* num_blocks, const void* func,
                                                           int block_size, size_t dynamic_smem) {
  return cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(num_blocks, func, block_size,
                                                                dynamic_smem, 0);
}

// Test hooks: configure the emulated device and scheduling; read counters.
int lf_emu_configure(int order, unsigned seed, int sms, int smem_optin, int smem_per_sm) {
  lf_emu::State& s = lf_emu::state();
  s.cfg.order = order;
  s.cfg.seed = seed;
  s.rng.seed(seed);
  s.cfg.sms = sms;
  s.cfg.smem_optin = smem_optin;
  s.cfg.smem_per_sm = smem_per_sm;
  s.max_dynamic_smem.clear();
  return 0;
}
long long lf_emu_blocks_run(void) { return lf_emu::state().blocks; }
}
