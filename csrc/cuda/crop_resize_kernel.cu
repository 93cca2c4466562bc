// CUDA kernels of crop_resize and their registration for CUDA tensors.
//
// Both passes first build the per-crop axis table (crop_resize_sampling.h: per crop, H row entries then W
// column entries), one thread per entry, so that no output element recomputes its window's geometry (two
// IEEE divisions in axis_box) or re-reads the index. Then one thread per output element for the forward
// (the sources of with_source are copied by the same launch), and one thread per input element for the
// backward, which gathers in the fixed order of gather_grad, so it is deterministic.
//
// Index math: an element's linear position is decoded into (row, channel, y, x) by three divisions, plus
// one to find a crop's image. When every offset of the call fits in 31 bits (always, short of 8 GB of
// float32), they run in uint32_t through IntDivider (a multiply-high and a shift); otherwise in uint64_t,
// whose division is a called routine of about a hundred instructions.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/cuda/detail/IntegerDivider.cuh>
#include <ATen/native/CanUse32BitIndexMath.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../crop_resize.h"
#include "../crop_resize_sampling.h"

namespace udd_fast {
namespace {

using at::cuda::detail::IntDivider;

constexpr int kThreads = 256;

int64_t blocks_for(int64_t total) { return std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 22); }

// A dense (rows, C, H, W) tensor walked in its memory order (contiguous or channels_last): linear position
// k -> (m, c, i, j). The results the kernels write are allocated dense in that order, so their offset is k.
template <typename index_t>
struct Coord {
  index_t m, c;
  int i, j;
};

template <typename index_t>
struct Decoder {
  IntDivider<index_t> C, H, W;
  bool channels_last;

  explicit Decoder(const Geometry& g)
      : C(static_cast<index_t>(g.C)), H(static_cast<index_t>(g.H)), W(static_cast<index_t>(g.W)),
        channels_last(g.channels_last) {}

  UDD_HD Coord<index_t> operator()(index_t k) const {
    if (channels_last) {  // k = ((m*H + i)*W + j)*C + c
      const auto c = C.divmod(k);
      const auto j = W.divmod(c.div);
      const auto i = H.divmod(j.div);
      return {i.div, c.mod, static_cast<int>(i.mod), static_cast<int>(j.mod)};
    }
    const auto j = W.divmod(k);  // k = ((m*C + c)*H + i)*W + j
    const auto i = H.divmod(j.div);
    const auto c = C.divmod(i.div);
    return {c.div, c.mod, static_cast<int>(i.mod), static_cast<int>(j.mod)};
  }
};

// The work of one thread, per pass: `op(k)` for k in [0, op.total). Each pass is a struct holding its
// arguments, so that one grid-stride kernel launches all three.

// Entry k of the per-crop axis table: crop n = k / (H + W), its row a (a < H) or column a - H. Ranges (for
// the backward's gather) only when WithRange. Index values were checked on the host.
template <typename T, typename index_t, bool WithRange>
struct TableEntry {
  const T* windows;
  const int64_t* index;
  AxisEntry<T>* table;
  index_t total;
  IntDivider<index_t> span;
  int H, W;

  UDD_HD void operator()(index_t k) const {
    const auto na = span.divmod(k);
    const int a = static_cast<int>(na.mod);
    const T* w = windows + 4 * index[na.div];
    table[k] = a < H ? axis_entry(axis_box(w[0], w[2], H), a, H, WithRange)
                     : axis_entry(axis_box(w[1], w[3], W), a - H, W, WithRange);
  }
};

// What the forward and the backward element passes share: they read `in` (images / the crops' gradient)
// through its strides and the axis table, and write element k of the dense result `out` (crops / the
// images' gradient), decoded by `decode`.
template <typename scalar_t, typename T, typename index_t>
struct ElementPass {
  const scalar_t* in;
  Strides<index_t> is;
  const AxisEntry<T>* table;
  scalar_t* out;
  index_t total;
  Decoder<index_t> decode;
  int H, W;
};

// Output element k: a copy of a source pixel (rows m < S), or the bilinear sample of crop n = m - S of
// image n / P at that crop's row and column table entries.
template <typename scalar_t, typename T, typename index_t>
struct ForwardElement : ElementPass<scalar_t, T, index_t> {
  IntDivider<index_t> per_image;  // P
  index_t S;

  UDD_HD void operator()(index_t k) const {
    const auto& [in, is, table, out, total, decode, H, W] = static_cast<const ElementPass<scalar_t, T, index_t>&>(*this);
    const Coord<index_t> d = decode(k);
    if (d.m < S) {
      out[k] = in[d.m * is.n + d.c * is.c + static_cast<index_t>(d.i) * is.h + static_cast<index_t>(d.j) * is.w];
      return;
    }
    const index_t n = d.m - S;
    const AxisEntry<T>* rows = table + n * (static_cast<index_t>(H) + static_cast<index_t>(W));
    out[k] = static_cast<scalar_t>(bilinear<T>(in + per_image.div(n) * is.n + d.c * is.c, is.h, is.w,
                                               rows[d.i].sample, rows[H + d.j].sample, H, W));
  }
};

// Input element k's gradient (gather_grad).
template <typename scalar_t, typename T, typename index_t>
struct GatherElement : ElementPass<scalar_t, T, index_t> {
  index_t B, P;
  bool with_source;

  UDD_HD void operator()(index_t k) const {
    const auto& [in, is, table, out, total, decode, H, W] = static_cast<const ElementPass<scalar_t, T, index_t>&>(*this);
    const Coord<index_t> d = decode(k);
    out[k] = static_cast<scalar_t>(gather_grad<T>(in, is, table, d.m, d.c, d.i, d.j, P, H, W, with_source, B));
  }
};

template <typename Op>
__global__ void for_each_element(Op op) {
  using index_t = decltype(op.total);
  for (index_t k = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; k < op.total;
       k += static_cast<index_t>(gridDim.x) * blockDim.x) {
    op(k);
  }
}

template <typename Op>
void launch(const Op& op, cudaStream_t stream) {
  if (op.total == 0) return;
  for_each_element<<<blocks_for(static_cast<int64_t>(op.total)), kThreads, 0, stream>>>(op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Calls f(uint32_t{}) when every offset of the call fits in 31 bits (IntDivider<unsigned> takes divisors
// and dividends up to INT32_MAX), else f(uint64_t{}).
template <typename F>
void with_index_type(bool fits_32bit, F&& f) {
  if (fits_32bit) {
    f(uint32_t{});
  } else {
    f(uint64_t{});
  }
}

bool fits_32bit(const at::Tensor& data, const at::Tensor& result, int64_t table_entries) {
  return at::native::canUse32BitIndexMath(data) && at::native::canUse32BitIndexMath(result) &&
         table_entries < std::numeric_limits<int32_t>::max();
}

int64_t table_entries(const Geometry& g) { return g.crops() * (static_cast<int64_t>(g.H) + g.W); }

// The per-crop axis table, as bytes (table_bytes), and the pass that fills it.
at::Tensor new_table(const Geometry& g, const at::Tensor& like) {
  return at::empty({table_bytes(g, like.scalar_type())}, like.options().dtype(at::kByte));
}

template <typename T, typename index_t, bool WithRange>
TableEntry<T, index_t, WithRange> table_pass(const at::Tensor& windows, const at::Tensor& index, const Geometry& g,
                                             const at::Tensor& table) {
  return {windows.const_data_ptr<T>(), index.const_data_ptr<int64_t>(),
          static_cast<AxisEntry<T>*>(table.mutable_data_ptr()), static_cast<index_t>(table_entries(g)),
          IntDivider<index_t>(static_cast<index_t>(g.H + g.W)), g.H, g.W};
}

// Either op: check the arguments on the host, allocate the result and the axis table, then launch the
// table pass and the element pass in the call's index type.
at::Tensor run_pass(const at::Tensor& data, const at::Tensor& windows, const at::Tensor& index, bool with_source,
                    Pass pass) {
  const Geometry g = checked_geometry(data, windows, index, with_source, pass);
  const bool forward = pass == Pass::kForward;
  at::Tensor result = forward ? forward_output(data, g) : backward_output(data, g);
  if (result.numel() == 0) return result;
  const c10::cuda::CUDAGuard guard(data.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor win = prepared_windows(windows, data.scalar_type()), idx = prepared_index(index);
  const at::Tensor table = new_table(g, data);
  with_index_type(fits_32bit(data, result, table_entries(g)), [&](auto zero) {
    using index_t = decltype(zero);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, data.scalar_type(), "crop_resize_cuda", [&] {
      using T = at::opmath_type<scalar_t>;
      const ElementPass<scalar_t, T, index_t> pass{data.const_data_ptr<scalar_t>(), strides_of<index_t>(data),
                                                   static_cast<const AxisEntry<T>*>(table.const_data_ptr()),
                                                   result.mutable_data_ptr<scalar_t>(),
                                                   static_cast<index_t>(result.numel()), Decoder<index_t>(g), g.H, g.W};
      if (forward) {
        launch(table_pass<T, index_t, false>(win, idx, g, table), stream);
        launch(ForwardElement<scalar_t, T, index_t>{
                   pass, IntDivider<index_t>(static_cast<index_t>(std::max<int64_t>(g.P, 1))),  // P = 0: sources only
                   static_cast<index_t>(g.source_rows())},
               stream);
      } else {
        launch(table_pass<T, index_t, true>(win, idx, g, table), stream);
        launch(GatherElement<scalar_t, T, index_t>{pass, static_cast<index_t>(g.B), static_cast<index_t>(g.P),
                                                   g.with_source},
               stream);
      }
    });
  });
  return result;
}

at::Tensor crop_resize_cuda(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index,
                            bool with_source) {
  return run_pass(images, windows, index, with_source, Pass::kForward);
}

at::Tensor crop_resize_backward_cuda(const at::Tensor& grad, const at::Tensor& windows, const at::Tensor& index,
                                     bool with_source) {
  return run_pass(grad, windows, index, with_source, Pass::kBackward);
}

}  // namespace

TORCH_LIBRARY_IMPL(udd_fast, CUDA, m) {
  m.impl("crop_resize", TORCH_FN(crop_resize_cuda));
  m.impl("crop_resize_backward", TORCH_FN(crop_resize_backward_cuda));
}

}  // namespace udd_fast
