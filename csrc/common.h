// Shared helpers for landscape_fast's native CPU kernels: argument checks that name the op,
// the tensor and what was expected, so a call made straight through torch.ops fails with a
// readable message instead of reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

// Every check reads: "<op>: <name> must ..., got ...".
#define LF_CHECK_CPU(op, t, name)                                                         \
  TORCH_CHECK((t).device().is_cpu(), op, ": ", name, " must be a CPU tensor, got a tensor on ", \
              (t).device())

#define LF_CHECK_DIM(op, t, name, d, shape_text)                                             \
  TORCH_CHECK((t).dim() == (d), op, ": ", name, " must be ", d, "-D ", shape_text, ", got shape ", \
              (t).sizes())

#define LF_CHECK_CONTIGUOUS(op, t, name)                                                    \
  TORCH_CHECK((t).is_contiguous(), op, ": ", name,                                         \
              " must be contiguous (row-major), got strides ", (t).strides(), " for shape ", \
              (t).sizes())

#define LF_CHECK_DTYPE(op, t, name, dtype)                                              \
  TORCH_CHECK((t).scalar_type() == (dtype), op, ": ", name, " must be ", (dtype), ", got ", \
              (t).scalar_type())

#define LF_CHECK_SIZE(op, t, name, dim, expected, what)                                     \
  TORCH_CHECK((t).size(dim) == (expected), op, ": ", name, ".size(", dim, ") must equal ", \
              what, " = ", (expected), ", got shape ", (t).sizes())

namespace landscape_fast {

// An in-place op must not write into memory another operand reads: checks that the byte
// ranges of a and b (contiguous tensors) are disjoint.
inline void check_no_overlap(const char* op, const at::Tensor& a, const char* aname,
                             const at::Tensor& b, const char* bname) {
  if (a.numel() == 0 || b.numel() == 0) return;
  const auto* a0 = static_cast<const char*>(a.const_data_ptr());
  const auto* b0 = static_cast<const char*>(b.const_data_ptr());
  const auto* a1 = a0 + a.nbytes();
  const auto* b1 = b0 + b.nbytes();
  TORCH_CHECK(a1 <= b0 || b1 <= a0, op, ": ", aname, " is written in place and must not share "
              "memory with ", bname);
}

}  // namespace landscape_fast
