// Schema of the udd_fast ops, argument checks shared by the device kernels, and the Python module
// `udd_fast._C` (importing it registers everything; each device's kernels register themselves in cpu/ and
// cuda/, the autograd in autograd/, and the fake implementations live in udd_fast/_extension.py).
#include <Python.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/aminmax.h>
#include <ATen/ops/empty.h>
#include <c10/core/ScalarType.h>
#include <torch/library.h>

#include <limits>

#include "crop_resize.h"
#include "crop_resize_sampling.h"

namespace udd_fast {

namespace {

bool prefers_channels_last(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

void check_data(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4, "crop_resize: ", name, " must be (B, C, H, W), got ", t.sizes());
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kHalf || st == at::kBFloat16,
              "crop_resize: ", name, " must be float32, float64, float16 or bfloat16, got ", st);
  TORCH_CHECK(t.size(2) <= std::numeric_limits<int>::max() && t.size(3) <= std::numeric_limits<int>::max(),
              "crop_resize: ", name, " is too large");
}

void check_windows_index(const at::Tensor& data, const at::Tensor& windows, const at::Tensor& index) {
  TORCH_CHECK(windows.dim() == 2 && windows.size(1) == 4,
              "crop_resize: windows must be (N, 4) as (y0, x0, y1, x1), got ", windows.sizes());
  TORCH_CHECK(at::isFloatingType(windows.scalar_type()), "crop_resize: windows must be floating point, got ",
              windows.scalar_type());
  TORCH_CHECK(index.dim() == 2, "crop_resize: index must be (B, P), got ", index.sizes());
  TORCH_CHECK(index.scalar_type() == at::kLong || index.scalar_type() == at::kInt,
              "crop_resize: index must be int64 or int32, got ", index.scalar_type());
  TORCH_CHECK(windows.device() == data.device() && index.device() == data.device(),
              "crop_resize: images/grad, windows and index must be on one device, got ", data.device(), ", ",
              windows.device(), ", ", index.device());
  TORCH_CHECK(index.numel() == 0 || windows.size(0) > 0, "crop_resize: index selects from an empty window set");
}

// Every index value must pick a row of windows (see checked_geometry in crop_resize.h for why on the host).
void check_index_values(const at::Tensor& index, int64_t num_windows) {
  if (index.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(index);
  const int64_t low = lo.item<int64_t>(), high = hi.item<int64_t>();
  TORCH_CHECK(low >= 0 && high < num_windows, "crop_resize: index value ", low < 0 ? low : high,
              " is out of range for ", num_windows, " windows");
}

}  // namespace

Geometry checked_geometry(const at::Tensor& data, const at::Tensor& windows, const at::Tensor& index,
                          bool with_source, Pass pass) {
  const bool forward = pass == Pass::kForward;
  check_data(data, forward ? "images" : "grad");
  check_windows_index(data, windows, index);
  if (forward) {
    TORCH_CHECK(index.size(0) == data.size(0), "crop_resize: index has ", index.size(0), " rows for ",
                data.size(0), " images");
  }
  check_index_values(index, windows.size(0));
  Geometry g;
  g.B = index.size(0);
  g.P = index.size(1);
  g.C = data.size(1);
  g.N = windows.size(0);
  g.H = static_cast<int>(data.size(2));
  g.W = static_cast<int>(data.size(3));
  g.with_source = with_source;
  g.channels_last = prefers_channels_last(data);
  if (!forward) {
    TORCH_CHECK(data.size(0) == g.out_rows(), "crop_resize_backward: grad has ", data.size(0),
                " rows, expected ", g.out_rows(), " for index ", index.sizes(), with_source ? " with sources" : "");
  }
  return g;
}

at::Tensor prepared_windows(const at::Tensor& windows, at::ScalarType data_type) {
  const auto opmath = data_type == at::kDouble ? at::kDouble : at::kFloat;
  return windows.to(opmath).contiguous();
}

at::Tensor prepared_index(const at::Tensor& index) { return index.to(at::kLong).contiguous(); }

at::Tensor forward_output(const at::Tensor& images, const Geometry& g) {
  return at::empty({g.out_rows(), g.C, g.H, g.W},
                   images.options().memory_format(g.channels_last ? at::MemoryFormat::ChannelsLast
                                                                  : at::MemoryFormat::Contiguous));
}

at::Tensor backward_output(const at::Tensor& grad, const Geometry& g) {
  return at::empty({g.B, g.C, g.H, g.W},
                   grad.options().memory_format(g.channels_last ? at::MemoryFormat::ChannelsLast
                                                                : at::MemoryFormat::Contiguous));
}

int64_t table_bytes(const Geometry& g, at::ScalarType data_type) {
  const int64_t entry = data_type == at::kDouble ? sizeof(AxisEntry<double>) : sizeof(AxisEntry<float>);
  return g.crops() * (static_cast<int64_t>(g.H) + g.W) * entry;
}

at::Tensor crop_resize(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index,
                       bool with_source) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("udd_fast::crop_resize", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(images, windows, index, with_source);
}

at::Tensor crop_resize_backward(const at::Tensor& grad, const at::Tensor& windows, const at::Tensor& index,
                                bool with_source) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("udd_fast::crop_resize_backward", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>();
  return op.call(grad, windows, index, with_source);
}

TORCH_LIBRARY(udd_fast, m) {
  m.set_python_module("udd_fast._extension");
  m.def("crop_resize(Tensor images, Tensor windows, Tensor index, bool with_source) -> Tensor");
  m.def("crop_resize_backward(Tensor grad, Tensor windows, Tensor index, bool with_source) -> Tensor");
}

}  // namespace udd_fast

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                                      "udd_fast compiled ops, registered as torch.ops.udd_fast.*", -1, nullptr};
  return PyModule_Create(&module);
}
