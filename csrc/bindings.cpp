// pybind11 bindings of rdkernels._C. Each op's Python wrapper (rdkernels/ops/<op>/cuda.py)
// validates its inputs and passes raw pointers, dtype codes and the current CUDA stream.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bank_contrast.h"
#include "bank_update.h"
#include "dcd.h"
#include "device_limits.h"
#include "shared_bank_contrast.h"
#include "sinkhorn.h"

namespace py = pybind11;

// The tests' CPU emulation (emulation/simt.h) builds these bindings as another module.
#ifndef RDK_MODULE_NAME
#define RDK_MODULE_NAME _C
#endif

PYBIND11_MODULE(RDK_MODULE_NAME, m) {
  m.doc() = "rdkernels CUDA kernels (raw-pointer interface; see rdkernels/ops/*/cuda.py)";
  m.def("max_shared_memory_per_block", &rdk::max_shared_memory_per_block,
        "Largest dynamic shared memory one block may opt in to on the current CUDA device (bytes)");
  m.def("compiled_archs", &rdk::compiled_archs,
        "Architectures the device code was compiled for (__CUDA_ARCH_LIST__: 800 = sm_80)");
  m.def("kernel_image_error", &rdk::kernel_image_error,
        "'' if this module has code the current device can run, else the CUDA error ('name: description')");
  m.def("bank_contrast", &rdk::bank_contrast,
        "Bank contrast, gather strategy: per-(row, split) partials of an nce/softmax/scores epilogue",
        py::arg("query"), py::arg("bank"), py::arg("bank_dtype"), py::arg("idx"), py::arg("idx_dtype"),
        py::arg("z"), py::arg("grad"), py::arg("out"), py::arg("dq"), py::arg("run_max"), py::arg("run_sum"),
        py::arg("batch"), py::arg("n_cols"), py::arg("dim"), py::arg("cols_per_split"), py::arg("n_splits"),
        py::arg("stride_bank"), py::arg("stride_idx"), py::arg("inv_t"), py::arg("log_c"), py::arg("log_mpn_c"),
        py::arg("epilogue"), py::arg("stream"));
  m.def("bank_contrast_dense", &rdk::bank_contrast_dense,
        "Bank contrast, dense strategy (tensor cores, 3xTF32): per-(row, split) partials over the negatives",
        py::arg("query"), py::arg("bank"), py::arg("bank_dtype"), py::arg("counts"), py::arg("z"), py::arg("loss"),
        py::arg("dq"), py::arg("run_max"), py::arg("run_sum"), py::arg("batch"), py::arg("n_bank"), py::arg("dim"),
        py::arg("n_tiles"), py::arg("tiles_per_split"), py::arg("n_splits"), py::arg("stride_bank"),
        py::arg("stride_counts"), py::arg("inv_t"), py::arg("log_c"), py::arg("log_mpn_c"), py::arg("epilogue"),
        py::arg("stream"));
  m.def("sample_counts", &rdk::sample_counts,
        "Packed sample counts of the dense strategy: a shared-memory histogram per (query row, chunk of words)",
        py::arg("idx"), py::arg("idx_dtype"), py::arg("counts"), py::arg("batch"), py::arg("n_neg"),
        py::arg("n_bank"), py::arg("stride_idx"), py::arg("stride_counts"), py::arg("words"),
        py::arg("chunk_words"), py::arg("stream"));
  m.def("sample_count_max_chunk_words", &rdk::sample_count_max_chunk_words,
        "Most words of a row one block of sample_counts takes (its shared-memory histogram)");
  m.def("dense_block_m", &rdk::dense_block_m, "Query rows per block of bank_contrast_dense");
  m.def("dense_block_n", &rdk::dense_block_n, "Bank rows per tile of bank_contrast_dense");
  m.def("dense_max_dim", &rdk::dense_max_dim, "Widest embedding bank_contrast_dense supports");
  m.def("dense_shared_memory_bytes", &rdk::dense_shared_memory_bytes,
        "Dynamic shared memory per block of bank_contrast_dense", py::arg("dim"));
  m.def("bank_update", &rdk::bank_update, "In-place momentum update + L2 renormalisation of bank rows",
        py::arg("bank"), py::arg("bank_dtype"), py::arg("dim"), py::arg("index"), py::arg("index_dtype"),
        py::arg("values"), py::arg("values_dtype"), py::arg("batch"), py::arg("momentum"), py::arg("stream"));
  m.def("shared_bank_contrast_shared_memory_bytes", &rdk::shared_bank_contrast_shared_memory_bytes,
        "Dynamic shared memory per block of shared_bank_contrast's main kernel", py::arg("dim"));
  m.def("shared_bank_contrast", &rdk::shared_bank_contrast,
        "Queries against a shared queue (RRD): per-split online-softmax statistics, merged into loss and dq",
        py::arg("q_s"),
        py::arg("q_t"), py::arg("q_dtype"), py::arg("queue"), py::arg("queue_dtype"), py::arg("batch"),
        py::arg("n_rows"), py::arg("dim"), py::arg("splits"), py::arg("rows_per_split"), py::arg("scale_s"),
        py::arg("scale_t"), py::arg("inv_tau_s"), py::arg("stats"), py::arg("acc"), py::arg("loss"), py::arg("dq"),
        py::arg("need_grad"), py::arg("stream"));
  m.def("dcd_scratch_bytes", &rdk::dcd_scratch_bytes, "Device scratch of one dcd_loss call (S, S^T, row stats)",
        py::arg("batch"));
  m.def("dcd_loss", &rdk::dcd_loss, "Fused DCD loss and its gradients to z_s, z_t, tau and bias",
        py::arg("z_s"), py::arg("z_t"), py::arg("z_dtype"), py::arg("batch"), py::arg("dim"), py::arg("tau"),
        py::arg("bias"), py::arg("max_scale"), py::arg("alpha"), py::arg("scratch"), py::arg("loss"), py::arg("dzs"),
        py::arg("dzt"), py::arg("dtau"), py::arg("dbias"), py::arg("need_grad"), py::arg("stream"));
  m.def("sinkhorn", &rdk::sinkhorn,
        "Batched log-domain Sinkhorn, one CTA per problem running every iteration (n, m <= 256)",
        py::arg("cost"), py::arg("cost_dtype"), py::arg("log_a"), py::arg("log_b"), py::arg("a"), py::arg("f"),
        py::arg("g"), py::arg("total"), py::arg("plan"), py::arg("n_iters"), py::arg("problems"), py::arg("n"),
        py::arg("m"), py::arg("eps"), py::arg("tol"), py::arg("max_iters"), py::arg("check"), py::arg("registers"), py::arg("stream"));
  m.def("sinkhorn_rows", &rdk::sinkhorn_rows, "Tiled Sinkhorn: f update (and row-marginal error) for every row",
        py::arg("cost"), py::arg("cost_dtype"), py::arg("log_b"), py::arg("G"), py::arg("F"), py::arg("F_new"),
        py::arg("a"), py::arg("err"), py::arg("done"), py::arg("problems"), py::arg("n"), py::arg("m"),
        py::arg("inv_eps"), py::arg("check"), py::arg("stream"));
  m.def("sinkhorn_cols", &rdk::sinkhorn_cols, "Tiled Sinkhorn: g update for every column", py::arg("cost"),
        py::arg("cost_dtype"), py::arg("log_a"), py::arg("F"), py::arg("G"), py::arg("done"), py::arg("problems"),
        py::arg("n"), py::arg("m"), py::arg("inv_eps"), py::arg("stream"));
  m.def("sinkhorn_plan_cost", &rdk::sinkhorn_plan_cost, "Tiled Sinkhorn: per-row <plan, C> and the plan",
        py::arg("cost"), py::arg("cost_dtype"), py::arg("log_a"), py::arg("log_b"), py::arg("F"), py::arg("G"),
        py::arg("rowcost"), py::arg("plan"), py::arg("problems"), py::arg("n"), py::arg("m"), py::arg("inv_eps"),
        py::arg("stream"));
}
