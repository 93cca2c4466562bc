// CPU kernels of crop_resize. Forward: one task item per output plane; backward: one task item per input
// plane, each input pixel gathering its contributions in a fixed order (see crop_resize_sampling.h), so the
// result does not depend on the number of threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../crop_resize.h"
#include "../crop_resize_sampling.h"

namespace udd_fast {
namespace {

// Aim for this much work (taps) per parallel task, so that small calls stay on one thread.
constexpr int64_t kGrainElements = 262144;

int64_t grain(int64_t elements_per_item) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, elements_per_item));
}

// Ranges of one axis from its samples, equal to range_of() (the same two monotone searches, done as one
// sweep because the samples are already at hand).
template <typename T>
void sweep_ranges(AxisEntry<T>* e, int length, const AxisBox<T>& box) {
  if (!(box.bin >= static_cast<T>(0))) {
    for (int r = 0; r < length; ++r) e[r].range = Range{0, length};
    return;
  }
  int begin = 0, end = 0;
  for (int r = 0; r < length; ++r) {
    while (begin < length && e[begin].sample.high < r) ++begin;  // first i with high(i) >= r
    while (end < length && e[end].sample.low <= r) ++end;        // first i with low(i) > r
    e[r].range = Range{begin, std::max(begin, end)};
  }
}

// Entries of crop n = b*P + p: H row entries then W column entries (samples, and ranges when with_range).
template <typename T>
void fill_crop_table(const T* windows, const int64_t* index, int64_t n, int H, int W, bool with_range,
                     AxisEntry<T>* e) {
  const T* w = windows + 4 * index[n];
  const AxisBox<T> box_y = axis_box(w[0], w[2], H), box_x = axis_box(w[1], w[3], W);
  for (int a = 0; a < H; ++a) e[a] = axis_entry(box_y, a, H, false);
  for (int a = 0; a < W; ++a) e[H + a] = axis_entry(box_x, a, W, false);
  if (with_range) {
    sweep_ranges(e, H, box_y);
    sweep_ranges(e + H, W, box_x);
  }
}

template <typename T>
std::vector<AxisEntry<T>> build_table(const at::Tensor& windows, const at::Tensor& index, const Geometry& g) {
  const int64_t span = static_cast<int64_t>(g.H) + g.W;
  std::vector<AxisEntry<T>> table(g.crops() * span);
  at::parallel_for(0, g.crops(), grain(span * 8), [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      fill_crop_table(windows.const_data_ptr<T>(), index.const_data_ptr<int64_t>(), n, g.H, g.W, false,
                      table.data() + n * span);
    }
  });
  return table;
}

// Forward, one task item per output plane (m, c), separably: the input rows the crop reads are first
// interpolated along x (two taps), then every output row mixes two of them (two taps).
template <typename scalar_t>
void forward_kernel(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index,
                    const Geometry& g, const at::Tensor& out) {
  using T = at::opmath_type<scalar_t>;
  const std::vector<AxisEntry<T>> table = build_table<T>(windows, index, g);
  const scalar_t* in = images.const_data_ptr<scalar_t>();
  scalar_t* o = out.data_ptr<scalar_t>();
  const Strides4 is = strides_of(images), os = strides_of(out);
  const int H = g.H, W = g.W;
  const int64_t span = static_cast<int64_t>(H) + W, C = g.C, S = g.source_rows(), P = g.P;

  at::parallel_for(0, g.out_rows() * C, grain(4 * static_cast<int64_t>(H) * W), [&](int64_t begin, int64_t end) {
    std::vector<T> rows(static_cast<size_t>(H) * W);  // x-interpolated input rows
    for (int64_t mc = begin; mc < end; ++mc) {
      const int64_t m = mc / C, c = mc % C;
      scalar_t* out_plane = o + m * os.n + c * os.c;
      if (m < S) {
        const scalar_t* src = in + m * is.n + c * is.c;
        for (int i = 0; i < H; ++i)
          for (int j = 0; j < W; ++j) out_plane[i * os.h + j * os.w] = src[i * is.h + j * is.w];
        continue;
      }
      const int64_t n = m - S;
      const AxisEntry<T>* ey = table.data() + n * span;
      const AxisEntry<T>* ex = ey + H;
      const scalar_t* plane = in + (n / P) * is.n + c * is.c;
      int r0 = H, r1 = 0;  // input rows read by this crop
      for (int i = 0; i < H; ++i) {
        if (valid(ey[i].sample, H)) {
          r0 = std::min(r0, ey[i].sample.low);
          r1 = std::max(r1, ey[i].sample.high + 1);
        }
      }
      for (int r = r0; r < r1; ++r) {
        const scalar_t* in_row = plane + r * is.h;
        T* row = rows.data() + static_cast<int64_t>(r) * W;
        for (int j = 0; j < W; ++j) {
          const Sample<T> sx = ex[j].sample;
          row[j] = valid(sx, W) ? sx.w_low * static_cast<T>(in_row[sx.low * is.w]) +
                                      sx.w_high * static_cast<T>(in_row[sx.high * is.w])
                                : static_cast<T>(0);
        }
      }
      for (int i = 0; i < H; ++i) {
        scalar_t* out_row = out_plane + i * os.h;
        const Sample<T> sy = ey[i].sample;
        if (!valid(sy, H)) {
          for (int j = 0; j < W; ++j) out_row[j * os.w] = static_cast<scalar_t>(0);
          continue;
        }
        const T* t0 = rows.data() + static_cast<int64_t>(sy.low) * W;
        const T* t1 = rows.data() + static_cast<int64_t>(sy.high) * W;
        const T w0 = sy.w_low, w1 = sy.w_high;
        if (os.w == 1) {
          for (int j = 0; j < W; ++j) out_row[j] = static_cast<scalar_t>(w0 * t0[j] + w1 * t1[j]);
        } else {
          for (int j = 0; j < W; ++j) out_row[j * os.w] = static_cast<scalar_t>(w0 * t0[j] + w1 * t1[j]);
        }
      }
    }
  });
}

// The transposed taps of one axis of one crop: input position r is read by output indices
// first[r] .. first[r] + (offset[r+1] - offset[r]) - 1 with weights weight[offset[r] ..]; [lo, hi) bounds
// the input positions that are read at all.
template <typename T>
struct TransposedAxis {
  std::vector<int> first;
  std::vector<int64_t> offset;
  std::vector<T> weight;
  int lo = 0;
  int hi = 0;
};

template <typename T>
void transpose_axis(const AxisEntry<T>* e, int length, TransposedAxis<T>& t) {
  t.first.resize(length);
  t.offset.assign(length + 1, 0);
  t.weight.clear();
  t.lo = length;
  t.hi = 0;
  for (int r = 0; r < length; ++r) {
    const Range rg = e[r].range;
    t.first[r] = rg.begin;
    for (int i = rg.begin; i < rg.end; ++i) t.weight.push_back(tap_weight(e[i].sample, r));
    t.offset[r + 1] = static_cast<int64_t>(t.weight.size());
    if (rg.end > rg.begin) {
      t.lo = std::min(t.lo, r);
      t.hi = r + 1;
    }
  }
}

// Backward, one task item per input plane (b, c), in two gathers with the summation order of gather_grad:
//   pass 1, per chosen window p and output row i:  part[p][i][x] = sum_j wx(j -> x) * grad[n][c][i][j]
//   pass 2, per input row y:  acc[x] = [with_source] grad[b][c][y][x], then for p, for i in the range
//                             of y (ascending): acc[x] += wy(i -> y) * part[p][i][x].
// Every input pixel sums the same terms in the same order as the one-thread-per-pixel CUDA gather
// (gather_grad), so the two agree up to the device's fused multiply-adds.
template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& windows, const at::Tensor& index,
                     const Geometry& g, const at::Tensor& grad_images) {
  using T = at::opmath_type<scalar_t>;
  const int H = g.H, W = g.W;
  const int64_t span = static_cast<int64_t>(H) + W, C = g.C, P = g.P, B = g.B;
  std::vector<TransposedAxis<T>> rows(g.crops()), cols(g.crops());
  at::parallel_for(0, g.crops(), grain(span * 16), [&](int64_t begin, int64_t end) {
    std::vector<AxisEntry<T>> entries(span);
    for (int64_t n = begin; n < end; ++n) {
      fill_crop_table(windows.const_data_ptr<T>(), index.const_data_ptr<int64_t>(), n, H, W, true, entries.data());
      transpose_axis(entries.data(), H, rows[n]);
      transpose_axis(entries.data() + H, W, cols[n]);
    }
  });

  const scalar_t* gp = grad.const_data_ptr<scalar_t>();
  scalar_t* o = grad_images.data_ptr<scalar_t>();
  const Strides4 gs = strides_of(grad), os = strides_of(grad_images);
  const int64_t first_crop_row = g.source_rows();
  const int64_t plane_work = static_cast<int64_t>(H) * W * (1 + 4 * P);
  at::parallel_for(0, B * C, grain(plane_work), [&](int64_t begin, int64_t end) {
    std::vector<T> part(static_cast<size_t>(P) * H * W), acc(W);
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      for (int64_t p = 0; p < P; ++p) {  // pass 1
        const int64_t n = b * P + p;
        const TransposedAxis<T>& tx = cols[n];
        const scalar_t* gn = gp + (first_crop_row + n) * gs.n + c * gs.c;
        T* part_p = part.data() + p * H * W;
        if (tx.lo >= tx.hi || rows[n].lo >= rows[n].hi) continue;
        for (int i = 0; i < H; ++i) {
          const scalar_t* g_row = gn + i * gs.h;
          T* part_row = part_p + static_cast<int64_t>(i) * W;
          for (int x = tx.lo; x < tx.hi; ++x) {
            const T* wts = tx.weight.data() + tx.offset[x];
            const int count = static_cast<int>(tx.offset[x + 1] - tx.offset[x]);
            const scalar_t* gj = g_row + tx.first[x] * gs.w;
            T sum = static_cast<T>(0);
            for (int k = 0; k < count; ++k) sum += wts[k] * static_cast<T>(gj[k * gs.w]);
            part_row[x] = sum;
          }
        }
      }
      const scalar_t* src = gp + b * gs.n + c * gs.c;
      scalar_t* out = o + b * os.n + c * os.c;
      for (int y = 0; y < H; ++y) {  // pass 2
        if (g.with_source) {
          for (int x = 0; x < W; ++x) acc[x] = static_cast<T>(src[y * gs.h + x * gs.w]);
        } else {
          std::fill(acc.begin(), acc.end(), static_cast<T>(0));
        }
        for (int64_t p = 0; p < P; ++p) {
          const int64_t n = b * P + p;
          const TransposedAxis<T>& ty = rows[n];
          const TransposedAxis<T>& tx = cols[n];
          if (tx.lo >= tx.hi) continue;
          const T* wts = ty.weight.data() + ty.offset[y];
          const int count = static_cast<int>(ty.offset[y + 1] - ty.offset[y]);
          const T* part_p = part.data() + p * H * W;
          for (int k = 0; k < count; ++k) {
            const T wy = wts[k];
            const T* part_row = part_p + static_cast<int64_t>(ty.first[y] + k) * W;
            for (int x = tx.lo; x < tx.hi; ++x) acc[x] += wy * part_row[x];
          }
        }
        scalar_t* out_row = out + y * os.h;
        for (int x = 0; x < W; ++x) out_row[x * os.w] = static_cast<scalar_t>(acc[x]);
      }
    }
  });
}

at::Tensor crop_resize_cpu(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index,
                           bool with_source) {
  const Geometry g = checked_geometry(images, windows, index, with_source, Pass::kForward);
  at::Tensor out = forward_output(images, g);
  if (out.numel() == 0) return out;
  const at::Tensor win = prepared_windows(windows, images.scalar_type());
  const at::Tensor idx = prepared_index(index);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, images.scalar_type(), "crop_resize_cpu",
                                  [&] { forward_kernel<scalar_t>(images, win, idx, g, out); });
  return out;
}

at::Tensor crop_resize_backward_cpu(const at::Tensor& grad, const at::Tensor& windows, const at::Tensor& index,
                                    bool with_source) {
  const Geometry g = checked_geometry(grad, windows, index, with_source, Pass::kBackward);
  at::Tensor grad_images = backward_output(grad, g);
  if (grad_images.numel() == 0) return grad_images;
  const at::Tensor win = prepared_windows(windows, grad.scalar_type());
  const at::Tensor idx = prepared_index(index);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "crop_resize_backward_cpu",
                                  [&] { backward_kernel<scalar_t>(grad, win, idx, g, grad_images); });
  return grad_images;
}

}  // namespace

TORCH_LIBRARY_IMPL(udd_fast, CPU, m) {
  m.impl("crop_resize", TORCH_FN(crop_resize_cpu));
  m.impl("crop_resize_backward", TORCH_FN(crop_resize_backward_cpu));
}

}  // namespace udd_fast
