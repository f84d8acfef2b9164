// Compiled ExIQA attribute scorer: schema of iqa_plugins::attribute_scores and its CPU kernel.
//
// One parallel pass over blocks of image rows: a GEMM block (E @ T^T, written straight into the
// attribute-probability output), then, while it is in cache, the optional L2 normalisation (as a
// row scale), the sigmoid and the grouped softmax-weighted sum. No (B, 2A) similarity matrix, no
// normalised copy of E, no (A, G) weight matrix, one fork/join.
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attribute_scorer.h"

// The extension is built without -mavx2 (it must run on any x86-64); function multi-versioning
// gives the two hot loops an AVX2 clone picked at load time, plus the portable default.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define IQA_VEC_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define IQA_VEC_CLONES
#endif

namespace iqa_plugins {

void check_attribute_scores_inputs(const at::Tensor& image_emb, const at::Tensor& text_diff,
                                   const at::Tensor& group_index, const at::Tensor& weight_logits,
                                   double scale, int64_t num_groups) {
  TORCH_CHECK(image_emb.dim() == 2, "attribute_scores: image_emb must be 2-D (B, D), got shape ",
              image_emb.sizes());
  TORCH_CHECK(text_diff.dim() == 2 && text_diff.size(1) == image_emb.size(1) && text_diff.size(0) > 0,
              "attribute_scores: text_diff must be (A, D) with A >= 1 and D = ", image_emb.size(1),
              ", got shape ", text_diff.sizes());
  TORCH_CHECK(image_emb.size(1) > 0, "attribute_scores: image_emb must have D >= 1");
  const int64_t A = text_diff.size(0);
  TORCH_CHECK(weight_logits.dim() == 1 && weight_logits.size(0) == A,
              "attribute_scores: weight_logits must be (A,) with A = ", A, ", got shape ",
              weight_logits.sizes());
  TORCH_CHECK(group_index.dim() == 1 && group_index.size(0) == A,
              "attribute_scores: group_index must be (A,) with A = ", A, ", got shape ",
              group_index.sizes());
  TORCH_CHECK(group_index.scalar_type() == at::kLong,
              "attribute_scores: group_index must be int64, got ", group_index.scalar_type());
  const auto dtype = image_emb.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16,
              "attribute_scores: image_emb must be float16, bfloat16, float32 or float64, got ", dtype);
  TORCH_CHECK(text_diff.scalar_type() == dtype, "attribute_scores: text_diff dtype ",
              text_diff.scalar_type(), " differs from image_emb dtype ", dtype);
  TORCH_CHECK(weight_logits.scalar_type() == dtype, "attribute_scores: weight_logits dtype ",
              weight_logits.scalar_type(), " differs from image_emb dtype ", dtype);
  const auto device = image_emb.device();
  TORCH_CHECK(text_diff.device() == device, "attribute_scores: text_diff is on ", text_diff.device(),
              " but image_emb is on ", device);
  TORCH_CHECK(group_index.device() == device, "attribute_scores: group_index is on ",
              group_index.device(), " but image_emb is on ", device);
  TORCH_CHECK(weight_logits.device() == device, "attribute_scores: weight_logits is on ",
              weight_logits.device(), " but image_emb is on ", device);
  TORCH_CHECK(num_groups >= 1, "attribute_scores: num_groups must be >= 1, got ", num_groups);
  TORCH_CHECK(std::isfinite(scale), "attribute_scores: scale must be finite, got ", scale);
}

namespace {

// Rows per GEMM call when parallel: a (128, A) block of similarities (64 KiB at A = 125) stays in
// L2 for the epilogue, the GEMM still runs near BLAS speed (64-row blocks measured ~10% slower
// than 256), and B = 1024 gives 8 blocks to balance between workers.
constexpr int64_t kParallelRowBlock = 128;

// The clamps below are compares: under the default -ftrapping-math GCC keeps them as branches and
// the loop stays scalar. FP exceptions are never trapped here, so drop that for these two functions.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif

// exp(x) for float, branch-free so that the loop calling it vectorises. x is clamped to
// [-87, 88] (2^n stays a normal float); Cephes-style polynomial on |r| <= ln2/2, rel. error ~1e-7.
inline float exp_clamped(float x) {
  x = x < -87.0f ? -87.0f : x;  // plain compares: std::min/max would not inline under the pragma
  x = x > 88.0f ? 88.0f : x;
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding and subtracting it rounds to an integer
  const float n = (x * kLog2e + kRound) - kRound;
  const float r = (x - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// x[i] <- sigmoid(c * x[i]). 1 / (1 + exp(-z)) never divides 0 by 0: for huge |z| it gives 0 or 1.
IQA_VEC_CLONES void sigmoid_scaled_inplace(float* x, int64_t n, float c) {
  for (int64_t i = 0; i < n; ++i) {
    const float z = c * x[i];
    const float p = 1.0f / (1.0f + exp_clamped(-z));
    x[i] = (z == z) ? p : z;  // keep NaN inputs visible (the clamp would hide them)
  }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

void sigmoid_scaled_inplace(double* x, int64_t n, double c) {
  for (int64_t i = 0; i < n; ++i) {
    x[i] = 1.0 / (1.0 + std::exp(-c * x[i]));
  }
}

template <typename T>
inline T sum_squares_impl(const T* x, int64_t n) {
  // Independent partial sums: hides the add latency and lets the compiler use SIMD lanes.
  constexpr int kLanes = 16;
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += x[i + j] * x[i + j];
  }
  T total = 0;
  for (int j = 0; j < kLanes; ++j) total += acc[j];
  for (; i < n; ++i) total += x[i] * x[i];
  return total;
}

IQA_VEC_CLONES float sum_squares(const float* x, int64_t n) { return sum_squares_impl(x, n); }
IQA_VEC_CLONES double sum_squares(const double* x, int64_t n) { return sum_squares_impl(x, n); }

// Attributes sorted by group (CSR layout) with their within-group softmax weights.
template <typename scalar_t>
struct GroupLayout {
  std::vector<int64_t> offsets;  // (G + 1,)
  std::vector<int64_t> members;  // (A,) attribute indices, group by group
  std::vector<scalar_t> weights;  // (A,) softmax weight of members[k] within its group
};

template <typename scalar_t>
GroupLayout<scalar_t> build_groups(const int64_t* group, const scalar_t* logits, int64_t A, int64_t G) {
  GroupLayout<scalar_t> out;
  out.offsets.assign(G + 1, 0);
  for (int64_t a = 0; a < A; ++a) {
    const int64_t g = group[a];
    TORCH_CHECK(g >= 0 && g < G, "attribute_scores: group_index values must lie in [0, num_groups = ", G,
                "), got ", g, " at position ", a);
    ++out.offsets[g + 1];
  }
  for (int64_t g = 0; g < G; ++g) out.offsets[g + 1] += out.offsets[g];
  out.members.resize(A);
  std::vector<int64_t> fill(out.offsets.begin(), out.offsets.end() - 1);
  for (int64_t a = 0; a < A; ++a) out.members[fill[group[a]]++] = a;

  out.weights.resize(A);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t lo = out.offsets[g], hi = out.offsets[g + 1];
    if (lo == hi) continue;
    scalar_t mx = logits[out.members[lo]];
    for (int64_t k = lo + 1; k < hi; ++k) mx = std::max(mx, logits[out.members[k]]);
    scalar_t denom = 0;
    for (int64_t k = lo; k < hi; ++k) {
      out.weights[k] = std::exp(logits[out.members[k]] - mx);
      denom += out.weights[k];
    }
    for (int64_t k = lo; k < hi; ++k) out.weights[k] /= denom;
  }
  return out;
}

// Rows [b0, b1): attr holds the raw dot products on entry and the probabilities on exit.
template <typename scalar_t>
void score_rows(const scalar_t* emb, int64_t D, scalar_t* attr, int64_t A, scalar_t* dist, int64_t G,
                const GroupLayout<scalar_t>& groups, scalar_t scale, bool normalize, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    scalar_t c = scale;
    if (normalize) {
      const scalar_t norm = std::sqrt(sum_squares(emb + b * D, D));
      c = scale / std::max(norm, static_cast<scalar_t>(kNormEps));
    }
    scalar_t* p = attr + b * A;
    sigmoid_scaled_inplace(p, A, c);
    scalar_t* d = dist + b * G;
    for (int64_t g = 0; g < G; ++g) {
      scalar_t acc = 0;
      for (int64_t k = groups.offsets[g]; k < groups.offsets[g + 1]; ++k) {
        acc += groups.weights[k] * p[groups.members[k]];
      }
      // The rounded weights of a group may sum to 1 + ulp: keep P(d|I) a probability.
      d[g] = std::min(acc, static_cast<scalar_t>(1));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> attribute_scores_cpu(const at::Tensor& image_emb, const at::Tensor& text_diff,
                                                        const at::Tensor& group_index,
                                                        const at::Tensor& weight_logits, double scale,
                                                        int64_t num_groups, bool normalize) {
  check_attribute_scores_inputs(image_emb, text_diff, group_index, weight_logits, scale, num_groups);
  TORCH_CHECK(image_emb.device().is_cpu(), "attribute_scores (CPU kernel): image_emb must be on the CPU");
  const auto dtype = image_emb.scalar_type();
  if (dtype == at::kHalf || dtype == at::kBFloat16) {
    // Reduced precision is computed in float32 and cast back.
    auto [attr, dist] = attribute_scores_cpu(image_emb.to(at::kFloat), text_diff.to(at::kFloat), group_index,
                                             weight_logits.to(at::kFloat), scale, num_groups, normalize);
    return {attr.to(dtype), dist.to(dtype)};
  }
  at::AutoDispatchBelowADInplaceOrView below_autograd;

  const at::Tensor emb = image_emb.contiguous();
  const at::Tensor diff = text_diff.contiguous();
  const at::Tensor groups_idx = group_index.contiguous();
  const at::Tensor logits = weight_logits.contiguous();
  const int64_t B = emb.size(0), D = emb.size(1), A = diff.size(0), G = num_groups;
  at::Tensor attr = at::empty({B, A}, emb.options());
  at::Tensor dist = at::empty({B, G}, emb.options());

  AT_DISPATCH_FLOATING_TYPES(dtype, "attribute_scores_cpu", [&] {
    const auto groups =
        build_groups<scalar_t>(groups_idx.data_ptr<int64_t>(), logits.data_ptr<scalar_t>(), A, G);
    const scalar_t* emb_ptr = emb.data_ptr<scalar_t>();
    scalar_t* attr_ptr = attr.data_ptr<scalar_t>();
    scalar_t* dist_ptr = dist.data_ptr<scalar_t>();
    const at::Tensor diff_t = diff.t();
    const auto score_range = [&](int64_t b0, int64_t b1, int64_t max_rows) {
      for (int64_t r0 = b0; r0 < b1; r0 += max_rows) {
        const int64_t r1 = std::min(r0 + max_rows, b1);
        if (r1 - r0 == B) {
          at::mm_out(attr, emb, diff_t);
        } else {
          at::Tensor attr_block = attr.narrow(0, r0, r1 - r0);
          at::mm_out(attr_block, emb.narrow(0, r0, r1 - r0), diff_t);
        }
        score_rows<scalar_t>(emb_ptr, D, attr_ptr, A, dist_ptr, G, groups, static_cast<scalar_t>(scale),
                             normalize, r0, r1);
      }
    };
    // Small batches run inline (no thread pool, no copy of the thread state): a task should hold
    // ~4M multiply-adds (~0.1 ms) so that the fork/join, and on a busy machine the wait for a
    // descheduled worker at the join, stay small next to it. At A = 125, D = 512: B <= 65 inline.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 22) / (A * D));
    if (B <= grain) {
      score_range(0, B, B);
      return;
    }
    // One parallel region. Workers take row blocks from a shared counter rather than one static
    // share each: on a loaded machine a descheduled worker then delays nothing (the others take
    // its blocks). Each block is a GEMM (ATen's BLAS, single-threaded inside the region) finished
    // while it is still in cache.
    const int64_t num_threads = at::get_num_threads();
    const int64_t block = std::max(grain, std::min(kParallelRowBlock, (B + num_threads - 1) / num_threads));
    const int64_t num_blocks = (B + block - 1) / block;
    std::atomic<int64_t> next_block{0};
    const at::ThreadLocalState caller_state;  // workers need the caller's dispatch state
    at::parallel_for(0, std::min(num_blocks, num_threads), 1, [&](int64_t, int64_t) {
      const at::ThreadLocalStateGuard state_guard(caller_state);
      for (int64_t i = next_block++; i < num_blocks; i = next_block++) {
        score_range(i * block, std::min(B, (i + 1) * block), block);
      }
    });
  });
  return {attr, dist};
}

}  // namespace

TORCH_LIBRARY(iqa_plugins, m) {
  m.def(
      "attribute_scores(Tensor image_emb, Tensor text_diff, Tensor group_index, Tensor weight_logits, "
      "float scale, int num_groups, bool normalize) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(iqa_plugins, CPU, m) { m.impl("attribute_scores", &attribute_scores_cpu); }

#ifdef IQA_WITH_CUDA
TORCH_LIBRARY_IMPL(iqa_plugins, CUDA, m) { m.impl("attribute_scores", &attribute_scores_cuda); }
#endif

}  // namespace iqa_plugins

// Importing the module loads the library, whose static initialisers register the op; the module
// itself has no Python-level contents.
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
