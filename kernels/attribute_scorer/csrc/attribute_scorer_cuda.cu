// CUDA kernel of iqa_plugins::attribute_scores (compiled only with IQA_PLUGINS_BUILD_CUDA=1).
//
// cuBLAS computes E @ T^T straight into the attribute output; one block per image row then applies
// the optional L2 normalisation (as a row scale), the sigmoid and the grouped weighted sum, the
// group sums accumulating in shared memory. The within-group softmax of the (A,) logits uses a few
// ATen ops (no host synchronisation).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>

#include <limits>

#include "attribute_scorer.h"

namespace iqa_plugins {
namespace {

constexpr int kThreads = 256;
// Above this many groups the shared-memory accumulator would not fit: use a dense (A, G) GEMM.
constexpr int64_t kSharedBytesMax = 32 * 1024;

template <typename scalar_t>
__device__ scalar_t block_sum(scalar_t value, scalar_t* scratch) {
  for (int offset = warpSize / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x % warpSize, warp = threadIdx.x / warpSize;
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int num_warps = blockDim.x / warpSize;
  value = threadIdx.x < num_warps ? scratch[threadIdx.x] : scalar_t(0);
  if (warp == 0) {
    for (int offset = warpSize / 2; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
    if (lane == 0) scratch[0] = value;
  }
  __syncthreads();
  return scratch[0];
}

__device__ inline float sigmoid_of(float z) { return 1.0f / (1.0f + expf(-z)); }
__device__ inline double sigmoid_of(double z) { return 1.0 / (1.0 + exp(-z)); }

// attr holds the raw dot products on entry. When group_sums is false, dist is left to the caller.
template <typename scalar_t, bool group_sums>
__global__ void score_rows_kernel(const scalar_t* __restrict__ emb, int64_t D, scalar_t* __restrict__ attr,
                                  int64_t A, const int64_t* __restrict__ group, const scalar_t* __restrict__ weights,
                                  scalar_t* __restrict__ dist, int64_t G, scalar_t scale, bool normalize) {
  extern __shared__ unsigned char shared_raw[];
  scalar_t* scratch = reinterpret_cast<scalar_t*>(shared_raw);  // kThreads / warpSize entries
  scalar_t* sums = scratch + kThreads / 32;                      // G entries
  const int64_t b = blockIdx.x;

  scalar_t c = scale;
  if (normalize) {
    scalar_t sq = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
      const scalar_t x = emb[b * D + j];
      sq += x * x;
    }
    const scalar_t norm = sqrt(block_sum(sq, scratch));
    c = scale / max(norm, static_cast<scalar_t>(kNormEps));
  }
  if (group_sums) {
    for (int64_t g = threadIdx.x; g < G; g += blockDim.x) sums[g] = 0;
    __syncthreads();
  }
  scalar_t* row = attr + b * A;
  for (int64_t a = threadIdx.x; a < A; a += blockDim.x) {
    const scalar_t p = sigmoid_of(c * row[a]);
    row[a] = p;
    if (group_sums) {
      const int64_t g = group[a];
      CUDA_KERNEL_ASSERT(g >= 0 && g < G && "attribute_scores: group_index out of [0, num_groups)");
      atomicAdd(&sums[g], weights[a] * p);
    }
  }
  if (group_sums) {
    __syncthreads();
    for (int64_t g = threadIdx.x; g < G; g += blockDim.x) dist[b * G + g] = min(sums[g], static_cast<scalar_t>(1));
  }
}

// (A,) softmax of the logits within each group.
at::Tensor group_softmax(const at::Tensor& logits, const at::Tensor& group, int64_t G) {
  const at::Tensor group_max =
      at::full({G}, -std::numeric_limits<double>::infinity(), logits.options())
          .scatter_reduce(0, group, logits, "amax", /*include_self=*/true);
  const at::Tensor expd = (logits - group_max.index_select(0, group)).exp();
  const at::Tensor denom = at::zeros({G}, logits.options()).index_add(0, group, expd);
  return expd / denom.index_select(0, group);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attribute_scores_cuda(const at::Tensor& image_emb, const at::Tensor& text_diff,
                                                         const at::Tensor& group_index,
                                                         const at::Tensor& weight_logits, double scale,
                                                         int64_t num_groups, bool normalize) {
  check_attribute_scores_inputs(image_emb, text_diff, group_index, weight_logits, scale, num_groups);
  TORCH_CHECK(image_emb.is_cuda(), "attribute_scores (CUDA kernel): image_emb must be on a CUDA device");
  const auto dtype = image_emb.scalar_type();
  if (dtype == at::kHalf || dtype == at::kBFloat16) {
    auto [attr, dist] = attribute_scores_cuda(image_emb.to(at::kFloat), text_diff.to(at::kFloat), group_index,
                                              weight_logits.to(at::kFloat), scale, num_groups, normalize);
    return {attr.to(dtype), dist.to(dtype)};
  }
  const c10::cuda::CUDAGuard device_guard(image_emb.device());
  at::AutoDispatchBelowADInplaceOrView below_autograd;

  const at::Tensor emb = image_emb.contiguous();
  const at::Tensor group = group_index.contiguous();
  const int64_t B = emb.size(0), D = emb.size(1), A = text_diff.size(0), G = num_groups;
  at::Tensor attr = at::empty({B, A}, emb.options());
  at::Tensor dist = at::empty({B, G}, emb.options());
  if (B == 0) return {attr, dist};
  at::mm_out(attr, emb, text_diff.t());
  const at::Tensor weights = group_softmax(weight_logits.contiguous(), group, G);

  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(dtype, "attribute_scores_cuda", [&] {
    const int64_t scratch_bytes = (kThreads / 32) * sizeof(scalar_t);
    const int64_t sums_bytes = G * sizeof(scalar_t);
    const bool shared_sums = sums_bytes <= kSharedBytesMax;
    const auto launch = [&](auto kernel, int64_t shared_bytes) {
      kernel<<<B, kThreads, shared_bytes, stream>>>(emb.data_ptr<scalar_t>(), D, attr.data_ptr<scalar_t>(), A,
                                                    group.data_ptr<int64_t>(), weights.data_ptr<scalar_t>(),
                                                    dist.data_ptr<scalar_t>(), G, static_cast<scalar_t>(scale),
                                                    normalize);
    };
    if (shared_sums) {
      launch(score_rows_kernel<scalar_t, true>, scratch_bytes + sums_bytes);
    } else {
      launch(score_rows_kernel<scalar_t, false>, scratch_bytes);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!shared_sums) {
      const at::Tensor dense = at::zeros({A, G}, emb.options()).scatter_(1, group.unsqueeze(1), weights.unsqueeze(1));
      at::mm_out(dist, attr, dense);
      dist.clamp_max_(1);
    }
  });
  return {attr, dist};
}

}  // namespace iqa_plugins
