// crop_resize: fused crop + bilinear resize of chosen windows, with a deterministic gather backward.
//
//   udd_fast::crop_resize(Tensor images, Tensor windows, Tensor index, bool with_source) -> Tensor
//   udd_fast::crop_resize_backward(Tensor grad, Tensor windows, Tensor index, bool with_source) -> Tensor
//
// images (B, C, H, W) float32/float64/float16/bfloat16, any strides; windows (N, 4) normalized
// (y0, x0, y1, x1); index (B, P) int64 or int32 (widened to int64 before the kernels read it). Output
// (B*P, C, H, W) (B + B*P with the sources first when with_source), channels_last when the images are.
// Sampling: see crop_resize_sampling.h.
#pragma once

#include <ATen/core/Tensor.h>

#include "crop_resize_sampling.h"

namespace udd_fast {

// Calls through the dispatcher (used by the autograd functions).
at::Tensor crop_resize(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index,
                       bool with_source);
at::Tensor crop_resize_backward(const at::Tensor& grad, const at::Tensor& windows, const at::Tensor& index,
                                bool with_source);

// Shapes of one call, checked and shared by the device kernels.
struct Geometry {
  int64_t B = 0;  // images
  int64_t P = 0;  // chosen windows per image
  int64_t C = 0;  // channels
  int64_t N = 0;  // candidate windows
  int H = 0;
  int W = 0;
  bool with_source = false;
  bool channels_last = false;  // memory format of the result

  int64_t source_rows() const { return with_source ? B : 0; }
  int64_t crops() const { return B * P; }
  int64_t out_rows() const { return source_rows() + crops(); }
};

// Which op's arguments are checked: the forward reads images (B, C, H, W), the backward the gradient of
// the forward's output (rows as Geometry::out_rows()).
enum class Pass { kForward, kBackward };

// Validate the arguments of the forward / backward op (`data` is images / grad) and return their geometry.
// The index values are checked here, on the host, for every device: a bad index on a CUDA tensor then
// raises a RuntimeError instead of tripping a device-side assert, which would leave the CUDA context
// unusable. For CUDA tensors this costs one reduction and a copy of two numbers back (a synchronization).
Geometry checked_geometry(const at::Tensor& data, const at::Tensor& windows, const at::Tensor& index,
                          bool with_source, Pass pass);

// Strides of a 4-d tensor as the kernels take them (index_t: see bilinear() in crop_resize_sampling.h).
template <typename index_t = int64_t>
inline Strides<index_t> strides_of(const at::Tensor& t) {
  return {static_cast<index_t>(t.stride(0)), static_cast<index_t>(t.stride(1)), static_cast<index_t>(t.stride(2)),
          static_cast<index_t>(t.stride(3))};
}

// Windows in the accumulation type (float32, or float64 for float64 data), contiguous; index as
// contiguous int64.
at::Tensor prepared_windows(const at::Tensor& windows, at::ScalarType data_type);
at::Tensor prepared_index(const at::Tensor& index);

// Empty result tensors of the forward / backward op.
at::Tensor forward_output(const at::Tensor& images, const Geometry& g);
at::Tensor backward_output(const at::Tensor& grad, const Geometry& g);

// Bytes of the per-crop axis table of the backward: crops * (H + W) AxisEntry<opmath>.
int64_t table_bytes(const Geometry& g, at::ScalarType data_type);

}  // namespace udd_fast
