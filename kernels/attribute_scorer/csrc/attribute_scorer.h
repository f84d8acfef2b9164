// Shared declarations of the compiled ExIQA attribute scorer (CPU kernel in attribute_scorer.cpp,
// CUDA kernel in attribute_scorer_cuda.cu).
//
// Semantics (see kernels/attribute_scorer/reference.py for the literal PyTorch form):
//   z[b,a]    = scale * <e_b, t_a> / (normalize ? max(||e_b||, 1e-12) : 1)      t_a = t_pos_a - t_neg_a
//   attr[b,a] = sigmoid(z[b,a])                                                  (ExIQA Eq. 6)
//   w_a       = softmax of weight_logits over the attributes of group(a)
//   dist[b,g] = min(1, sum_{a : group(a) = g} w_a * attr[b,a])  (ExIQA Eq. 7; the min only absorbs rounding)
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace iqa_plugins {

// Same eps as torch.nn.functional.normalize.
constexpr double kNormEps = 1e-12;

// Shape/dtype/device checks shared by every backend; errors name the offending argument.
void check_attribute_scores_inputs(const at::Tensor& image_emb, const at::Tensor& text_diff,
                                   const at::Tensor& group_index, const at::Tensor& weight_logits,
                                   double scale, int64_t num_groups);

#ifdef IQA_WITH_CUDA
std::tuple<at::Tensor, at::Tensor> attribute_scores_cuda(const at::Tensor& image_emb,
                                                         const at::Tensor& text_diff,
                                                         const at::Tensor& group_index,
                                                         const at::Tensor& weight_logits,
                                                         double scale, int64_t num_groups,
                                                         bool normalize);
#endif

}  // namespace iqa_plugins
