// CUDA kernels of crop_resize and their registration for CUDA tensors: one thread per output element for
// the forward (the sources of with_source are copied by the same launch); one thread per input element for
// the backward, which gathers in the fixed order of gather_grad (crop_resize_sampling.h), so it is
// deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <algorithm>

#include "../crop_resize.h"
#include "../crop_resize_sampling.h"

namespace udd_fast {
namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t total) { return std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 22); }

// Decodes linear element k of a (rows, C, H, W) tensor walked in memory order.
struct Coord {
  int64_t m, c;
  int i, j;
};

__device__ __forceinline__ Coord decode(int64_t k, int64_t C, int H, int W, bool channels_last) {
  Coord d;
  if (channels_last) {
    d.c = k % C;
    k /= C;
    d.j = static_cast<int>(k % W);
    k /= W;
    d.i = static_cast<int>(k % H);
    d.m = k / H;
  } else {
    d.j = static_cast<int>(k % W);
    k /= W;
    d.i = static_cast<int>(k % H);
    k /= H;
    d.c = k % C;
    d.m = k / C;
  }
  return d;
}

template <typename scalar_t, typename T>
__global__ void forward_kernel(const scalar_t* __restrict__ images, Strides4 is, const T* __restrict__ windows,
                               const int64_t* __restrict__ index, scalar_t* __restrict__ out, Strides4 os,
                               int64_t total, int64_t C, int H, int W, int64_t S, int64_t P, int64_t N,
                               bool channels_last) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Coord d = decode(k, C, H, W, channels_last);
    scalar_t* o = out + d.m * os.n + d.c * os.c + d.i * os.h + d.j * os.w;
    if (d.m < S) {
      *o = images[d.m * is.n + d.c * is.c + d.i * is.h + d.j * is.w];
      continue;
    }
    const int64_t n = d.m - S;
    const int64_t w_idx = index[n];
    CUDA_KERNEL_ASSERT(w_idx >= 0 && w_idx < N);
    const T* w = windows + 4 * w_idx;
    const Sample<T> sy = sample_at(axis_box(w[0], w[2], H), d.i, H);
    const Sample<T> sx = sample_at(axis_box(w[1], w[3], W), d.j, W);
    *o = static_cast<scalar_t>(bilinear<T>(images + (n / P) * is.n + d.c * is.c, is.h, is.w, sy, sx, H, W));
  }
}

template <typename T>
__global__ void table_kernel(const T* __restrict__ windows, const int64_t* __restrict__ index,
                             AxisEntry<T>* __restrict__ table, int64_t total, int H, int W, int64_t N) {
  const int64_t span = static_cast<int64_t>(H) + W;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = k / span;
    const int a = static_cast<int>(k % span);
    const int64_t w_idx = index[n];
    CUDA_KERNEL_ASSERT(w_idx >= 0 && w_idx < N);
    const T* w = windows + 4 * w_idx;
    table[k] = a < H ? axis_entry(axis_box(w[0], w[2], H), a, H, true)
                     : axis_entry(axis_box(w[1], w[3], W), a - H, W, true);
  }
}

template <typename scalar_t, typename T>
__global__ void gather_kernel(const scalar_t* __restrict__ grad, Strides4 gs, const AxisEntry<T>* __restrict__ table,
                              scalar_t* __restrict__ grad_images, Strides4 os, int64_t total, int64_t C, int H,
                              int W, int64_t B, int64_t P, bool with_source, bool channels_last) {
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Coord d = decode(k, C, H, W, channels_last);
    grad_images[d.m * os.n + d.c * os.c + d.i * os.h + d.j * os.w] =
        static_cast<scalar_t>(gather_grad<T>(grad, gs, table, d.m, d.c, d.i, d.j, P, H, W, with_source, B));
  }
}

// Launches into the preallocated `out`.
void launch_forward(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index, const Geometry& g,
                    const at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(images.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t total = out.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "crop_resize_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    forward_kernel<scalar_t, T><<<blocks_for(total), kThreads, 0, stream>>>(
        images.const_data_ptr<scalar_t>(), strides_of(images), windows.const_data_ptr<T>(),
        index.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), strides_of(out), total, g.C, g.H, g.W,
        g.source_rows(), g.P, g.N, g.channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

// Launches into the preallocated `table` (table_bytes(g, ...) bytes) and `grad_images`.
void launch_backward(const at::Tensor& grad, const at::Tensor& windows, const at::Tensor& index, const Geometry& g,
                     const at::Tensor& table, const at::Tensor& grad_images) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t entries = g.crops() * (static_cast<int64_t>(g.H) + g.W);
  const int64_t total = grad_images.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cuda", [&] {
    using T = at::opmath_type<scalar_t>;
    auto* entries_ptr = static_cast<AxisEntry<T>*>(table.mutable_data_ptr());
    if (entries > 0) {
      table_kernel<T><<<blocks_for(entries), kThreads, 0, stream>>>(
          windows.const_data_ptr<T>(), index.const_data_ptr<int64_t>(), entries_ptr, entries, g.H, g.W, g.N);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    gather_kernel<scalar_t, T><<<blocks_for(total), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), strides_of(grad), entries_ptr, grad_images.mutable_data_ptr<scalar_t>(),
        strides_of(grad_images), total, g.C, g.H, g.W, g.B, g.P, g.with_source, g.channels_last);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

at::Tensor crop_resize_cuda(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index,
                            bool with_source) {
  const Geometry g = checked_geometry(images, windows, index, with_source, Pass::kForward);
  at::Tensor out = forward_output(images, g);
  if (out.numel() == 0) return out;
  launch_forward(images, prepared_windows(windows, images.scalar_type()), prepared_index(index), g, out);
  return out;
}

at::Tensor crop_resize_backward_cuda(const at::Tensor& grad, const at::Tensor& windows, const at::Tensor& index,
                                     bool with_source) {
  const Geometry g = checked_geometry(grad, windows, index, with_source, Pass::kBackward);
  at::Tensor grad_images = backward_output(grad, g);
  if (grad_images.numel() == 0) return grad_images;
  at::Tensor table = at::empty({table_bytes(g, grad.scalar_type())}, grad.options().dtype(at::kByte));
  launch_backward(grad, prepared_windows(windows, grad.scalar_type()), prepared_index(index), g, table,
                  grad_images);
  return grad_images;
}

}  // namespace

TORCH_LIBRARY_IMPL(udd_fast, CUDA, m) {
  m.impl("crop_resize", TORCH_FN(crop_resize_cuda));
  m.impl("crop_resize_backward", TORCH_FN(crop_resize_backward_cuda));
}

}  // namespace udd_fast
