// Backward and double backward of instance norm (GroupNorm(C, C)) on CPU, each in one kernel.
//
// Gradient matching differentiates the network twice, so every norm layer of every class step runs its
// backward with a graph and then the backward of that. ATen's twice-differentiable group-norm backward is a
// composite of some twenty map-sized elementwise ops and reductions (about 20 `mul` calls per layer); here
// each derivative is two passes over a row (one image, one channel: H * W values, in cache): the row's sums,
// then the row's outputs. The formulas, with x^ = (x - mean) * r, r = 1 / sqrt(var + eps), M = H * W, and
// sums over the row:
//
//   backward of y = w x^ + b, given g:
//     dx = r w (g - sum(g) / M - x^ sum(g x^) / M),  dw = sum over images of sum(g x^),  db = ... of sum(g)
//   double backward, given u (for dx), uw, ub (for dw, db; optional):
//     P(v)  = r (v - sum(v) / M - x^ sum(v x^) / M)   (the Jacobian of x^, symmetric)
//     d/dg  = w P(u) + uw x^ + ub
//     d/dw  = sum over images of sum(g P(u)) = r (sum(u g) - sum(u) sum(g) / M - sum(u x^) sum(g x^) / M)
//     d/dx  = -(r^2 / M) [x^ (w (sum(u g) - sum(u) sum(g) / M) - 3 w sum(u x^) sum(g x^) / M)
//                        + w sum(g x^) (u - sum(u) / M) + sum(u x^) w (g - sum(g) / M)] + uw P(g)
//
// With ReLU fused after the norm (`relu_out`, the block's output y = max(w x^ + b, 0), given): the backward
// takes g = g_y [y > 0] and the double backward is the norm's with that g, its d/dg masked the same way (the
// mask is constant almost everywhere, so it adds no term); ATen's ReLU would run two more map-sized passes
// (threshold_backward in the backward and again in its double backward) and keep one more map.
//
// Every row is computed in at::opmath_type (float for bf16: a bf16 row is converted into a float buffer first,
// and its results rounded once on the way out), so each loop is plain float arithmetic that the compiler
// vectorizes; `omp simd reduction` lets it reassociate the sums under the build's strict floating point.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>
#include <vector>
#include <tuple>

namespace {

// The row loops are compiled for AVX-512, AVX2 and the baseline, and the loader picks the best the CPU has
// (the extension's flags target the baseline, which is SSE2 on x86-64: a quarter of an AVX-512 vector).
#if defined(__x86_64__) && defined(__GNUC__)
#define UDD_ROW_LOOP __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define UDD_ROW_LOOP
#endif

// A row of T as acc_t values: the row itself when T is acc_t, else its converted copy in `buf`.
template <typename T, typename acc_t>
UDD_ROW_LOOP const acc_t* load_row(const T* row, int64_t m, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return row;
  } else {
    buf.resize(m);
    for (int64_t i = 0; i < m; ++i) buf[i] = static_cast<acc_t>(row[i]);
    return buf.data();
  }
}

// Where a row's acc_t results go: the output row itself when T is acc_t, else `buf` (then store_row).
template <typename T, typename acc_t>
acc_t* out_row(T* row, int64_t m, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<T, acc_t>) {
    return row;
  } else {
    buf.resize(m);
    return buf.data();
  }
}

template <typename T, typename acc_t>
UDD_ROW_LOOP void store_row(T* row, const acc_t* values, int64_t m) {
  if constexpr (!std::is_same_v<T, acc_t>) {
    for (int64_t i = 0; i < m; ++i) row[i] = static_cast<T>(values[i]);
  }
}

// g [y > 0] into `buf`, returned: the gradient that reaches the norm through the ReLU whose output is y.
template <typename acc_t>
UDD_ROW_LOOP const acc_t* relu_masked(const acc_t* g, const acc_t* y, int64_t m, std::vector<acc_t>& buf) {
  buf.resize(m);
  acc_t* out = buf.data();
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) out[i] = y[i] > 0 ? g[i] : acc_t(0);
  return out;
}

template <typename acc_t>
UDD_ROW_LOOP void relu_mask_in_place(acc_t* v, const acc_t* y, int64_t m) {
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) v[i] = y[i] > 0 ? v[i] : acc_t(0);
}

// One row of the backward: writes dx, returns (sum(g x^), sum(g)).
template <typename acc_t>
UDD_ROW_LOOP std::pair<acc_t, acc_t> backward_row(const acc_t* x, const acc_t* g, acc_t mu, acc_t r, acc_t w, int64_t m,
                                     acc_t* dx) {
  acc_t s_gx = 0, s_g = 0;
#pragma omp simd reduction(+ : s_gx, s_g)
  for (int64_t i = 0; i < m; ++i) {
    s_gx += g[i] * ((x[i] - mu) * r);
    s_g += g[i];
  }
  const acc_t scale = r * w, g_mean = s_g / m, gx_mean = s_gx / m;
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) dx[i] = scale * (g[i] - g_mean - (x[i] - mu) * r * gx_mean);
  return {s_gx, s_g};
}

// One row of the double backward: writes d/dx and d/dg, returns the row's share of d/dw.
template <typename acc_t>
UDD_ROW_LOOP acc_t double_backward_row(const acc_t* x, const acc_t* g, const acc_t* u, acc_t mu, acc_t r, acc_t w, acc_t uw,
                          acc_t ub, int64_t m, acc_t* gx, acc_t* gg) {
  acc_t s_g = 0, s_gx = 0, s_u = 0, s_ux = 0, s_ug = 0;
#pragma omp simd reduction(+ : s_g, s_gx, s_u, s_ux, s_ug)
  for (int64_t i = 0; i < m; ++i) {
    const acc_t xh = (x[i] - mu) * r;
    s_g += g[i];
    s_gx += g[i] * xh;
    s_u += u[i];
    s_ux += u[i] * xh;
    s_ug += u[i] * g[i];
  }
  const acc_t g_mean = s_g / m, gx_mean = s_gx / m, u_mean = s_u / m, ux_mean = s_ux / m;
  const acc_t ug_centred = s_ug - s_u * g_mean;  // sum((u - mean u) g)
  // d/dx = coef (x^ k_x + k_u (u - mean u) + k_g (g - mean g)) + uw P(g)
  const acc_t coef = -r * r / m;
  const acc_t k_x = w * ug_centred - 3 * w * s_ux * gx_mean, k_u = w * s_gx, k_g = w * s_ux;
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) {
    const acc_t xh = (x[i] - mu) * r, gc = g[i] - g_mean, uc = u[i] - u_mean;
    gx[i] = coef * (xh * k_x + k_u * uc + k_g * gc) + uw * r * (gc - xh * gx_mean);
    gg[i] = w * r * (uc - xh * ux_mean) + uw * xh + ub;
  }
  return r * (ug_centred - s_ux * gx_mean);
}

void check_args(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd, const at::Tensor& weight,
                const std::optional<at::Tensor>& relu_out, const char* name) {
  TORCH_CHECK(x.dim() >= 2, name, ": x must be (N, C, ...), got ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), name, ": CPU tensors only");
  const int64_t n = x.size(0), c = x.size(1);
  TORCH_CHECK(mean.numel() == n * c && rstd.numel() == n * c, name, ": mean and rstd must hold N * C = ", n * c,
              " values");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == c, name, ": weight must be (C,) with C = ", c);
  TORCH_CHECK(!relu_out.has_value() || relu_out->sizes() == x.sizes(), name,
              ": relu_out (the ReLU's output) must have x's shape");
}

// The ReLU's output as x's dtype, contiguous; undefined without one.
at::Tensor relu_rows(const std::optional<at::Tensor>& relu_out, const at::Tensor& x) {
  return relu_out.has_value() && relu_out->defined() ? relu_out->to(x.scalar_type()).contiguous() : at::Tensor();
}

// The statistics and per-channel values in the accumulation type, contiguous.
at::Tensor as_acc(const at::Tensor& t, at::ScalarType acc) { return t.to(acc).contiguous(); }

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_backward_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                                          const at::Tensor& mean, const at::Tensor& rstd,
                                                                          const at::Tensor& weight,
                                                                          const std::optional<at::Tensor>& relu_out) {
  check_args(x, mean, rstd, weight, relu_out, "instance_norm_backward");
  TORCH_CHECK(grad.sizes() == x.sizes(), "instance_norm_backward: grad and x must have one shape");
  const at::Tensor xc = x.contiguous(), gc = grad.to(x.scalar_type()).contiguous(), yc = relu_rows(relu_out, x);
  const int64_t n = x.size(0), c = x.size(1), m = n * c == 0 ? 0 : x.numel() / (n * c);
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor mu = as_acc(mean, acc_type), rs = as_acc(rstd, acc_type), wt = as_acc(weight, acc_type);
  at::Tensor dx = at::empty_like(xc);
  at::Tensor sums = at::empty({2, n, c}, x.options().dtype(acc_type));  // per row: sum(g x^), sum(g)
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "instance_norm_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *X = xc.const_data_ptr<scalar_t>(), *G = gc.const_data_ptr<scalar_t>();
    const scalar_t* Y = yc.defined() ? yc.const_data_ptr<scalar_t>() : nullptr;
    const acc_t *MU = mu.const_data_ptr<acc_t>(), *R = rs.const_data_ptr<acc_t>(), *W = wt.const_data_ptr<acc_t>();
    scalar_t* DX = dx.data_ptr<scalar_t>();
    acc_t* S = sums.data_ptr<acc_t>();
    at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> xb, gb, yb, mb, db;
      for (int64_t row = begin; row < end; ++row) {
        acc_t* out = out_row(DX + row * m, m, db);
        const acc_t* g = load_row(G + row * m, m, gb);
        if (Y) g = relu_masked(g, load_row(Y + row * m, m, yb), m, mb);
        const auto [s_gx, s_g] = backward_row(load_row(X + row * m, m, xb), g, MU[row], R[row], W[row % c], m, out);
        store_row(DX + row * m, out, m);
        S[row] = s_gx;
        S[n * c + row] = s_g;
      }
    });
  });
  // over images, each its own tensor (outputs must not alias)
  return {dx, sums[0].sum(0).to(weight.scalar_type()), sums[1].sum(0).to(weight.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> instance_norm_double_backward_cpu(
    const at::Tensor& u, const std::optional<at::Tensor>& uw, const std::optional<at::Tensor>& ub,
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, const std::optional<at::Tensor>& relu_out) {
  check_args(x, mean, rstd, weight, relu_out, "instance_norm_double_backward");
  TORCH_CHECK(grad.sizes() == x.sizes() && u.sizes() == x.sizes(),
              "instance_norm_double_backward: u, grad and x must have one shape");
  const at::Tensor xc = x.contiguous(), gc = grad.to(x.scalar_type()).contiguous();
  const at::Tensor uc = u.to(x.scalar_type()).contiguous(), yc = relu_rows(relu_out, x);
  const int64_t n = x.size(0), c = x.size(1), m = n * c == 0 ? 0 : x.numel() / (n * c);
  const at::ScalarType acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor mu = as_acc(mean, acc_type), rs = as_acc(rstd, acc_type), wt = as_acc(weight, acc_type);
  const auto per_channel_or_zeros = [&](const std::optional<at::Tensor>& t) {
    return t.has_value() && t->defined() ? as_acc(*t, acc_type) : at::zeros({c}, x.options().dtype(acc_type));
  };
  const at::Tensor uwt = per_channel_or_zeros(uw), ubt = per_channel_or_zeros(ub);
  at::Tensor gx = at::empty_like(xc), gg = at::empty_like(xc);
  at::Tensor gw_rows = at::empty({n, c}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "instance_norm_double_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t *X = xc.const_data_ptr<scalar_t>(), *G = gc.const_data_ptr<scalar_t>();
    const scalar_t* U = uc.const_data_ptr<scalar_t>();
    const scalar_t* Y = yc.defined() ? yc.const_data_ptr<scalar_t>() : nullptr;
    const acc_t *MU = mu.const_data_ptr<acc_t>(), *R = rs.const_data_ptr<acc_t>(), *W = wt.const_data_ptr<acc_t>();
    const acc_t *UW = uwt.const_data_ptr<acc_t>(), *UB = ubt.const_data_ptr<acc_t>();
    scalar_t *GX = gx.data_ptr<scalar_t>(), *GG = gg.data_ptr<scalar_t>();
    acc_t* GW = gw_rows.data_ptr<acc_t>();
    at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> xb, gb, yb, mb, ubuf, gxb, ggb;
      for (int64_t row = begin; row < end; ++row) {
        const int64_t ch = row % c;
        acc_t* gx_out = out_row(GX + row * m, m, gxb);
        acc_t* gg_out = out_row(GG + row * m, m, ggb);
        const acc_t* g = load_row(G + row * m, m, gb);
        const acc_t* y = Y ? load_row(Y + row * m, m, yb) : nullptr;
        if (y) g = relu_masked(g, y, m, mb);
        GW[row] = double_backward_row(load_row(X + row * m, m, xb), g, load_row(U + row * m, m, ubuf), MU[row], R[row],
                                      W[ch], UW[ch], UB[ch], m, gx_out, gg_out);
        if (y) relu_mask_in_place(gg_out, y, m);
        store_row(GX + row * m, gx_out, m);
        store_row(GG + row * m, gg_out, m);
      }
    });
  });
  return {gx, gg, gw_rows.sum(0).to(weight.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(udd_fast, m) {
  // relu_out: the output of a ReLU fused after the norm (None: the norm alone)
  m.def("instance_norm_backward(Tensor grad, Tensor x, Tensor mean, Tensor rstd, Tensor weight, "
        "Tensor? relu_out=None) -> (Tensor, Tensor, Tensor)");
  m.def("instance_norm_double_backward(Tensor u, Tensor? uw, Tensor? ub, Tensor grad, Tensor x, Tensor mean, "
        "Tensor rstd, Tensor weight, Tensor? relu_out=None) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(udd_fast, CPU, m) {
  m.impl("instance_norm_backward", TORCH_FN(instance_norm_backward_cpu));
  m.impl("instance_norm_double_backward", TORCH_FN(instance_norm_double_backward_cpu));
}
