// Autograd of crop_resize. The op is linear in the images, so its backward is the adjoint op
// crop_resize_backward, and the backward of that (double backward) is crop_resize again. Windows and
// index are not differentiable.
#include <torch/autograd.h>
#include <torch/library.h>

#include "../crop_resize.h"

namespace udd_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::Variable;
using torch::autograd::variable_list;

class CropResizeFunction;

class CropResizeBackwardFunction : public torch::autograd::Function<CropResizeBackwardFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& grad, const Variable& windows,
                          const Variable& index, bool with_source) {
    ctx->saved_data["with_source"] = with_source;
    ctx->save_for_backward({windows, index});
    at::AutoDispatchBelowADInplaceOrView guard;
    return crop_resize_backward(grad, windows, index, with_source);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_output);
};

class CropResizeFunction : public torch::autograd::Function<CropResizeFunction> {
 public:
  static Variable forward(AutogradContext* ctx, const Variable& images, const Variable& windows,
                          const Variable& index, bool with_source) {
    ctx->saved_data["with_source"] = with_source;
    ctx->save_for_backward({windows, index});
    at::AutoDispatchBelowADInplaceOrView guard;
    return crop_resize(images, windows, index, with_source);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_output) {
    const auto saved = ctx->get_saved_variables();
    const bool with_source = ctx->saved_data["with_source"].toBool();
    Variable grad_images = CropResizeBackwardFunction::apply(grad_output[0], saved[0], saved[1], with_source);
    return {grad_images, Variable(), Variable(), Variable()};
  }
};

variable_list CropResizeBackwardFunction::backward(AutogradContext* ctx, const variable_list& grad_output) {
  const auto saved = ctx->get_saved_variables();
  const bool with_source = ctx->saved_data["with_source"].toBool();
  Variable grad_grad = CropResizeFunction::apply(grad_output[0], saved[0], saved[1], with_source);
  return {grad_grad, Variable(), Variable(), Variable()};
}

at::Tensor crop_resize_autograd(const at::Tensor& images, const at::Tensor& windows, const at::Tensor& index,
                                bool with_source) {
  return CropResizeFunction::apply(images, windows, index, with_source);
}

at::Tensor crop_resize_backward_autograd(const at::Tensor& grad, const at::Tensor& windows,
                                         const at::Tensor& index, bool with_source) {
  return CropResizeBackwardFunction::apply(grad, windows, index, with_source);
}

}  // namespace

TORCH_LIBRARY_IMPL(udd_fast, Autograd, m) {
  m.impl("crop_resize", TORCH_FN(crop_resize_autograd));
  m.impl("crop_resize_backward", TORCH_FN(crop_resize_backward_autograd));
}

}  // namespace udd_fast
