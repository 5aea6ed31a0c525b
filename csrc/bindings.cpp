// pybind11 bindings of rdkernels._C. Each op's Python wrapper (rdkernels/ops/<op>/cuda.py)
// validates its inputs and passes raw pointers, dtype codes and the current CUDA stream.
#include <pybind11/pybind11.h>

#include "bank_update.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "rdkernels CUDA kernels (raw-pointer interface; see rdkernels/ops/*/cuda.py)";
  m.def("bank_update", &rdk::bank_update, "In-place momentum update + L2 renormalisation of bank rows",
        py::arg("bank"), py::arg("bank_dtype"), py::arg("dim"), py::arg("index"), py::arg("index_dtype"),
        py::arg("values"), py::arg("values_dtype"), py::arg("batch"), py::arg("momentum"), py::arg("stream"));
}
