// landscape_fast._C: schema definitions of every native op, and the Python module stub.
//
// Each op is declared once here (TORCH_LIBRARY) and implemented per dispatch key in its
// own file (TORCH_LIBRARY_IMPL(landscape_fast, CPU, m) in csrc/cpu/<op>.cpp). Importing the
// module registers the ops as torch.ops.landscape_fast.<name>.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(landscape_fast, m) {
  // block_reorth primitives (landscape_fast/kernels/block_reorth_driver.py):
  //   C = Q W^T and n2 = rowwise |W|^2, float64 results.
  m.def("reorth_project(Tensor Q, Tensor W) -> (Tensor, Tensor)");
  //   W -= C^T Q in place; then Q W^T (gram=False) or W W^T (gram=True), float64.
  m.def("reorth_update_(Tensor Q, Tensor(a!) W, Tensor C, bool gram) -> Tensor");
  //   W <- T W in place (T: b x b float64); W W^T if gram, else an empty tensor.
  m.def("reorth_transform_(Tensor(a!) W, Tensor T, bool gram) -> Tensor");
  // softmax_ce_hvp (landscape_fast/kernels/cpp/softmax_ce_hvp.py): out[j, n] = w_n p_n *
  //   (U[j, n] - <p_n, U[j, n]>), p_n = softmax(logits[n]); out may be U itself.
  m.def("softmax_ce_hvp_(Tensor logits, Tensor U, Tensor? weights, Tensor(a!) out) -> ()");
}

static struct PyModuleDef landscape_fast_C_module = {
    PyModuleDef_HEAD_INIT, "_C", "landscape_fast native CPU kernels (torch.ops.landscape_fast)",
    -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&landscape_fast_C_module); }
