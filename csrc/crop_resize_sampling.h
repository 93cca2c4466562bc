// Sampling geometry of crop_resize, shared by the CPU and CUDA kernels (host/device inline functions).
//
// A window (y0, x0, y1, x1) in [0, 1] is scaled to pixels and sampled exactly as torchvision
// roi_align(aligned=True, sampling_ratio=1, output size = input size): along an axis of length L,
//   start = lo * L - 0.5,  bin = (hi * L - 0.5 - start) / L,  y_i = start + i * bin + 0.5 * bin,
// a sample outside [-1, L] contributes nothing, one in [-1, 0] is clamped to 0, one at or past L - 1 is
// clamped to L - 1, and otherwise reads rows floor(y) and floor(y) + 1 with weights (1 - frac, frac).
// The op is separable: output(i, j) = sum over the two row taps and two column taps of wy * wx * input.
//
// Backward as a gather (no atomics). grad_input(b, c, y, x) = [with_source] grad_out(b, c, y, x)
//   + sum_p sum_i sum_j wy_p(i -> y) * wx_p(j -> x) * grad_out(B + b*P + p, c, i, j),
// where wy_p(i -> y) = (low(i) == y ? w_low(i) : 0) + (high(i) == y ? w_high(i) : 0).
// * Window borders: the clamped samples are what makes the transpose non-trivial. Every output row whose
//   sample clamps to the edge (y_i <= 0, or y_i >= L - 1) has low == high == the edge row, so the edge row
//   receives w_low + w_high = 1 from each of them, and all of them lie in the edge row's range. A sample
//   whose low and high neighbour coincide is handled by the same sum: both taps are matched against y, so
//   nothing is counted twice or dropped. Samples outside [-1, L] carry sentinel rows -1 / L and weight 0,
//   so they are in no input row's range.
// * Ranges: y_i is non-decreasing in i (it is computed as start + i*bin + 0.5*bin, each step rounded
//   monotonically, and bin >= 0), hence so are low(i) and high(i) (with the sentinels -1 before and L
//   after the valid samples). Since high - low is 0 or 1, the output rows touching input row y form one
//   contiguous range [first i with high(i) >= y, first i with low(i) > y), found by binary search (on CPU
//   by one sweep over all y). If bin is negative or NaN (an inverted or invalid window) the range is the
//   whole axis and the equality tests above still select exactly the right taps.
// * Overlapping windows: each chosen window of image b is a separate output row b*P + p, so overlaps need
//   no special care; the input pixel sums over p = 0..P-1 in a fixed order, then i, then j, after the
//   identity term of with_source. The order depends only on (b, c, y, x), never on how the work is split
//   across threads or blocks, so the result is bit-identical run to run and for any thread count.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define UDD_HD __host__ __device__ __forceinline__
#else
#define UDD_HD inline
#endif

namespace udd_fast {

// Products that feed an addition are rounded on their own, so the device never contracts them into a
// fused multiply-add: sample positions are then identical on CPU and GPU and in forward and backward.
UDD_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

UDD_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// One axis of one window in pixels.
template <typename T>
struct AxisBox {
  T start;
  T bin;
};

template <typename T>
UDD_HD AxisBox<T> axis_box(T lo, T hi, int length) {
  const T scale = static_cast<T>(length);
  const T start = mul_rn(lo, scale) - static_cast<T>(0.5);
  const T end = mul_rn(hi, scale) - static_cast<T>(0.5);
  return {start, (end - start) / scale};
}

// The two taps of output index i along one axis. Invalid samples have low == high == -1 or == length.
template <typename T>
struct Sample {
  int low;
  int high;
  T w_low;
  T w_high;
};

template <typename T>
UDD_HD bool valid(const Sample<T>& s, int length) {
  return s.low >= 0 && s.low < length;
}

template <typename T>
UDD_HD Sample<T> sample_at(const AxisBox<T>& box, int i, int length) {
  T y = (box.start + mul_rn(static_cast<T>(i), box.bin)) + mul_rn(static_cast<T>(0.5), box.bin);
  Sample<T> s;
  if (!(y >= static_cast<T>(-1) && y <= static_cast<T>(length))) {
    s.low = s.high = y > static_cast<T>(length) ? length : -1;
    s.w_low = s.w_high = static_cast<T>(0);
    return s;
  }
  if (y <= static_cast<T>(0)) y = static_cast<T>(0);
  s.low = static_cast<int>(y);
  if (s.low >= length - 1) {
    s.low = s.high = length - 1;
    y = static_cast<T>(s.low);
  } else {
    s.high = s.low + 1;
  }
  const T frac = y - static_cast<T>(s.low);
  s.w_low = static_cast<T>(1) - frac;
  s.w_high = frac;
  return s;
}

// Weight with which output index i (sample s) reads input index r along one axis.
template <typename T>
UDD_HD T tap_weight(const Sample<T>& s, int r) {
  return (s.low == r ? s.w_low : static_cast<T>(0)) + (s.high == r ? s.w_high : static_cast<T>(0));
}

// The output indices [begin, end) whose samples read input index r (see the comment at the top).
struct Range {
  int begin;
  int end;
};

template <typename T>
UDD_HD Range range_of(const AxisBox<T>& box, int r, int length) {
  if (!(box.bin >= static_cast<T>(0))) return {0, length};
  int lo = 0, hi = length;  // first i with high(i) >= r
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (sample_at(box, mid, length).high >= r) hi = mid; else lo = mid + 1;
  }
  const int begin = lo;
  hi = length;  // first i with low(i) > r
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (sample_at(box, mid, length).low > r) hi = mid; else lo = mid + 1;
  }
  return {begin, lo};
}

// Table entry for position a of one axis of one crop: the sample of output index a and the range of
// output indices that read input index a.
template <typename T>
struct AxisEntry {
  Sample<T> sample;
  Range range;
};

template <typename T>
UDD_HD AxisEntry<T> axis_entry(const AxisBox<T>& box, int a, int length, bool with_range) {
  AxisEntry<T> e;
  e.sample = sample_at(box, a, length);
  e.range = with_range ? range_of(box, a, length) : Range{0, 0};
  return e;
}

// Bilinear value of one output pixel, in the same operation order as roi_align. Offsets are computed in
// index_t: the CUDA kernels pass uint32_t when every offset of the call fits in 31 bits (cheaper products).
template <typename T, typename scalar_t, typename index_t>
UDD_HD T bilinear(const scalar_t* plane, index_t stride_h, index_t stride_w, const Sample<T>& sy,
                  const Sample<T>& sx, int height, int width) {
  if (!valid(sy, height) || !valid(sx, width)) return static_cast<T>(0);
  const T w1 = sy.w_low * sx.w_low, w2 = sy.w_low * sx.w_high;
  const T w3 = sy.w_high * sx.w_low, w4 = sy.w_high * sx.w_high;
  const scalar_t* row_low = plane + static_cast<index_t>(sy.low) * stride_h;
  const scalar_t* row_high = plane + static_cast<index_t>(sy.high) * stride_h;
  const index_t x_low = static_cast<index_t>(sx.low) * stride_w, x_high = static_cast<index_t>(sx.high) * stride_w;
  const T v1 = static_cast<T>(row_low[x_low]), v2 = static_cast<T>(row_low[x_high]);
  const T v3 = static_cast<T>(row_high[x_low]), v4 = static_cast<T>(row_high[x_high]);
  return w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4;
}

// Strides of a 4-d tensor (N, C, H, W), in elements, in the index type of the kernel that reads them.
template <typename index_t>
struct Strides {
  index_t n, c, h, w;
};
using Strides4 = Strides<int64_t>;

// Gradient of input pixel (b, c, y, x). `table` holds, per crop n = b*P + p, height + width entries
// (rows, then columns) with ranges; `grad` is the gradient of the whole output. Offsets in index_t, as in
// bilinear().
template <typename T, typename scalar_t, typename index_t>
UDD_HD T gather_grad(const scalar_t* grad, const Strides<index_t>& gs, const AxisEntry<T>* table, index_t b,
                     index_t c, int y, int x, index_t P, int height, int width, bool with_source, index_t B) {
  const index_t yy = static_cast<index_t>(y), xx = static_cast<index_t>(x);
  T acc = with_source ? static_cast<T>(grad[b * gs.n + c * gs.c + yy * gs.h + xx * gs.w]) : static_cast<T>(0);
  const index_t first_crop_row = with_source ? B : 0;
  const index_t span = static_cast<index_t>(height) + static_cast<index_t>(width);
  for (index_t p = 0; p < P; ++p) {
    const index_t n = b * P + p;
    const AxisEntry<T>* rows = table + n * span;
    const AxisEntry<T>* cols = rows + height;
    const Range ry = rows[y].range, rx = cols[x].range;
    if (ry.begin >= ry.end || rx.begin >= rx.end) continue;
    const scalar_t* g = grad + (first_crop_row + n) * gs.n + c * gs.c;
    for (int i = ry.begin; i < ry.end; ++i) {
      const T wy = tap_weight(rows[i].sample, y);
      const scalar_t* g_row = g + static_cast<index_t>(i) * gs.h;
      T row_sum = static_cast<T>(0);
      for (int j = rx.begin; j < rx.end; ++j) {
        row_sum += tap_weight(cols[j].sample, x) * static_cast<T>(g_row[static_cast<index_t>(j) * gs.w]);
      }
      acc += wy * row_sum;
    }
  }
  return acc;
}

}  // namespace udd_fast
