// Fused CPU kernels of the Partial FC head and the backbones' PReLU and BatchNorm, loaded into MXNet as an extension library.
//
// Each operator replaces several stock operators that each make one pass over
// an (N, S) or (S, D) array: reading the data once instead of three or four
// times is what keeps the head close to the cost of its matrix products.
// The math is the one pfc_mx/fc_math.py documents; pfc_mx/kernels.py builds
// this file (g++ -O3 -fopenmp against the installed MXNet's lib_api) and
// pfc_mx/head/fused.py calls the operators on CPU contexts only.
//
//   pfc_gather_normalize(weight (C,D), index (S,) int64) -> rows (S,D), norm (S,)
//       rows[j] = weight[index[j]] / norm[j], norm[j] = sqrt(sum_d w^2 + 1e-10)
//   pfc_margin_softmax(logits (N,S), target (N,) int64; m1, m2, m3, scale, filter, threshold)
//       -> expo (N,S) (may be the logits themselves), parts (2,N), stats (3,N)
//       logits are s*cos; target[i] is the row's target column (-1: none here). The target logit is
//       s*f(cos_t) with the combined margin f (pfc_mx/margin.py: clamp, arccos, the theta + m2 > pi
//       fallback), f' its derivative; effective logit e: that at the target column, 0 where filter
//       and logit > threshold, else the logit; rowmax = max_j e, lse = rowmax + log sum_j exp(e - rowmax),
//       expo = exp(e - rowmax) where the logit is free (0 at the target and where filtered: there
//       dL/dcos is not a multiple of it), parts = (lse, target logit or 0), stats = (rowmax, cos_t, f'),
//       the last two 0 without a target (NaN when a logit is NaN or, unfiltered, +inf)
//   pfc_softmax_loss(parts (W,2,N) of every rank) -> lse (N,), loss (1,)
//       lse = log sum_r exp(lse_r), loss = mean_i (lse_i - sum_r target_r,i), summed in double
//   pfc_softmax_scale(expo_rows (N,D), rows (S,D), xn (N,D), parts (2,N), stats (3,N), lse (N,), target (N,) int64;
//       scale) -> dxn (N,D), xs (N,D), tcoef (N,)
//       dL/dcos = g_i expo off the target with g_i = (s/N) exp(rowmax_i - lse_i) (this rank's parts/stats,
//       the global lse) and tcoef_i = (s/N) f'_i (exp(target logit_i - lse_i) - 1) on it. Given
//       expo_rows = expo . rows (the product runs while the ranks gather their parts):
//       dxn = dL/dcos . rows = g * expo_rows + tcoef * rows[target], and xs = g * xn, so that
//       expo^T . xs is the center gradient G = dL/dcos^T . xn without its target entries
//   pfc_normalize_grad(dy (B,D), y (B,D), norm (B,)) -> dx (B,D)
//       gradient through y = x / norm: dx = (dy - y <y, dy>) / norm
//   pfc_sparse_sgd(weight (C,D), grad (S,D), mom (C,D), index (S,) int64, norm (S,), xn (N,D), target (N,) int64,
//       tcoef (N,); lr, momentum, wd, normalize) -> weight (pass the weight as out); rows index[j] only (unique).
//       Row j's gradient: G = grad[j] + sum_{i: target[i] = j} tcoef[i] xn[i]; with normalize, through
//       the center's normalisation w / norm: g = G / norm - w <w, G> / norm^3, else g = G.
//       MXNet's sgd_mom_update: mom = momentum mom - lr wd w - lr g; w = w + mom (mom updated in place),
//       or with momentum 0 its sgd_update: w = (1 - lr wd) w - lr g (mom untouched).
//
// And two operators of the backbones (symbols/prelu.py, symbols/batchnorm.py), with their backward:
//   pfc_prelu(x (B,C,...), alpha (C,) or (1,)) -> y (B,C,...): y = x > 0 ? x : x * alpha[c], MXNet's
//       LeakyReLU(act_type='prelu') bit for bit. Backward (inputs dy, x, alpha, y) -> dx, dalpha:
//       dx = x > 0 ? dy : dy * alpha[c] (bit for bit), dalpha[c] = sum over B and the spatial axes of
//       dy * x where x <= 0: float sums over blocks of 64 elements, the blocks summed in double (MXNet
//       sums in float with Kahan compensation: both within a few float roundings of the exact sum
//       of the products' magnitudes). MXNet passes no write
//       request to library operators: both gradients are always written, never added to, so the
//       block uses this operator only where they are written (grad_req 'write').
//   pfc_batchnorm(x (B,C,...), gamma, beta, moving_mean, moving_var (C,); eps, momentum, fix_gamma)
//       -> y, mean (C,), invstd (C,): MXNet's BatchNorm in training mode (symbols/batchnorm.py), the
//       moving statistics updated in place; backward dx, dgamma, dbeta (always written). Below.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using Attrs = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int>>;

namespace {

constexpr float kL2Eps = 1e-10f;  // MXNet L2Normalization's eps

// a float attribute, NaN when it is not a finite number (callers fail with a message then);
// no exception may cross the library's C interface
// attrs[key] parsed whole as a T (float: strtof, double: strtod); fallback when absent, NaN when not a finite number
template <typename T>
T attr_number(const Attrs& attrs, const char* key, T fallback) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  const char* text = it->second.c_str();
  char* end = nullptr;
  T value;
  if constexpr (std::is_same<T, float>::value) {
    value = std::strtof(text, &end);
  } else {
    value = std::strtod(text, &end);
  }
  while (end != nullptr && *end == ' ') ++end;
  const bool whole = end != text && end != nullptr && *end == '\0';
  return whole && std::isfinite(value) ? value : std::numeric_limits<T>::quiet_NaN();
}

float attr_float(const Attrs& attrs, const char* key, float fallback) { return attr_number(attrs, key, fallback); }

MXReturnValue fail(const std::string& msg) {
  MX_ERROR_MSG << msg;
  return mxnet::ext::MX_FAIL;
}

// every named attribute parsed to a finite float, else a failure naming the first bad one
bool finite_attrs(const char* op, const Attrs& attrs, std::initializer_list<const char*> keys) {
  for (const char* key : keys) {
    if (!std::isfinite(attr_float(attrs, key, 0.0f))) {
      fail(std::string(op) + ": attribute " + key + " must be a finite number, got '" + attrs.at(key) + "'");
      return false;
    }
  }
  return true;
}

bool attr_flag(const Attrs& attrs, const char* key) {
  auto it = attrs.find(key);
  return it != attrs.end() && (it->second == "1" || it->second == "True" || it->second == "true");
}

// exp(x) for x <= 0 in plain float arithmetic the compiler vectorises: 2^k * e^t with
// k = round(x / ln 2), |t| <= ln2 / 2 and a degree-7 Taylor polynomial (relative error ~1e-7);
// x below -87 gives exp(-87) ~ 1.6e-38 (a normal float, negligible in a sum >= 1); NaN stays NaN.
inline float exp_nonpositive(float x) {
  const float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723e-6f;
  const float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer in the low mantissa bits
  x = x < -87.0f ? -87.0f : x;
  const float shifted = std::fma(x, kLog2e, kRound);
  const float k = shifted - kRound;
  const float t = std::fma(-k, kLn2Lo, std::fma(-k, kLn2Hi, x));
  float p = 1.0f / 5040;
  p = std::fma(p, t, 1.0f / 720);
  p = std::fma(p, t, 1.0f / 120);
  p = std::fma(p, t, 1.0f / 24);
  p = std::fma(p, t, 1.0f / 6);
  p = std::fma(p, t, 0.5f);
  p = std::fma(p, t, 1.0f);
  p = std::fma(p, t, 1.0f);
  uint32_t bits;  // unsigned: a NaN's bits wrap around instead of overflowing (p is NaN then anyway)
  std::memcpy(&bits, &shifted, 4);
  const uint32_t e = (bits - 0x4B400000u + 127u) << 23;  // k + 127 into the exponent field
  float two_k;
  std::memcpy(&two_k, &e, 4);
  return p * two_k;
}

// Loops over rows hand out small chunks (schedule(dynamic)): a thread that shares its core with
// another busy thread (Python queueing the next operators, Horovod) then does less of the work
// instead of holding the others at the end of the loop.
//
// Threads per kernel: MXNet runs operators on engine worker threads whose OpenMP default is
// one thread, so the count is set explicitly: OMP_NUM_THREADS when given, else the processors
// shared out among the ranks on this host (HOROVOD_LOCAL_SIZE), at least one.
int threads() {
  static const int count = [] {
    const char* env = std::getenv("OMP_NUM_THREADS");
    const int n = env != nullptr ? std::atoi(env) : 0;
    if (n > 0) return n;
    const char* local = std::getenv("HOROVOD_LOCAL_SIZE");
    const int ranks = local != nullptr ? std::max(1, std::atoi(local)) : 1;
    return std::max(1, omp_get_num_procs() / ranks);
  }();
  return count;
}

// Threads for a pass over this many elements: one below 2^20 (an (N, D) batch array, say), where
// waking a second thread costs more than it saves.
int threads_for(int64_t elements) { return elements >= (int64_t{1} << 20) ? threads() : 1; }

// ---------------------------------------------------------------- gather_normalize
constexpr int64_t kGatherAhead = 8;  // rows prefetched ahead (10-15% faster cold, 1 or 2 threads)

MXReturnValue gather_normalize_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                       const OpResource&) {
  MXTensor& w = (*in)[0];
  MXTensor& idx = (*in)[1];
  const int64_t c = w.shape[0], d = w.shape[1], s = idx.shape[0];
  const float* wp = w.data<float>();
  const int64_t* ip = idx.data<int64_t>();
  float* rows = (*out)[0].data<float>();
  float* norm = (*out)[1].data<float>();
  int64_t bad = -1;
#pragma omp parallel for schedule(dynamic, 32) num_threads(threads()) reduction(max : bad)
  for (int64_t j = 0; j < s; ++j) {
    const int64_t src = ip[j];
    if (src < 0 || src >= c) {
      bad = j;
      continue;
    }
    const float* row = wp + src * d;
    if (j + kGatherAhead < s && ip[j + kGatherAhead] >= 0 && ip[j + kGatherAhead] < c) {
      const float* ahead = wp + ip[j + kGatherAhead] * d;  // random rows: the prefetcher cannot guess them
      for (int64_t k = 0; k < d; k += 16) __builtin_prefetch(ahead + k, 0);
    }
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t k = 0; k < d; ++k) acc += row[k] * row[k];
    const float nu = std::sqrt(acc + kL2Eps);
    const float inv = 1.0f / nu;
    float* dst = rows + j * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) dst[k] = row[k] * inv;
    norm[j] = nu;
  }
  if (bad >= 0) return fail("pfc_gather_normalize: index " + std::to_string(ip[bad]) + " at position " +
                            std::to_string(bad) + " is outside [0, " + std::to_string(c) + ")");
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue gather_normalize_shape(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 2 || (*in)[1].size() != 1) return fail("pfc_gather_normalize: need weight (C, D), index (S,)");
  (*out)[0] = {(*in)[1][0], (*in)[0][1]};
  (*out)[1] = {(*in)[1][0]};
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- margin_softmax
// The combined margin of pfc_mx/margin.py on one target cosine: f = cos(m1 theta + m2) - m3 with
// theta = arccos of cos clamped to [-1 + 1e-6, 1 - 1e-6] (straight through: the derivative is taken
// at the clamped value, its own derivative counts as 1), the linear fallback cos - m2 sin(m2) - m3
// where m1 theta + m2 > pi, and cos - m3 exactly for CosFace-type margins (m1 = 1, m2 = 0).
struct Margin {
  float m1, m2, m3, fallback;  // fallback: m2 sin(m2)
  bool plain;                  // m1 = 1 and m2 = 0: no arccos
};

inline void margin_value(const Margin& m, float c, float* f, float* df) {
  if (m.plain) {
    *f = c - m.m3;
    *df = 1.0f;
    return;
  }
  const float lo = -1.0f + 1e-6f, hi = 1.0f - 1e-6f;
  const float x = c + ((c < lo ? lo : (c > hi ? hi : c)) - c);  // NaN stays NaN
  const float phi = std::acos(x) * m.m1 + m.m2;
  if (phi <= static_cast<float>(M_PI)) {
    *f = std::cos(phi) - m.m3;
    *df = std::sin(phi) * m.m1 / std::sqrt(1.0f - x * x);
  } else {
    *f = (c - m.fallback) - m.m3;
    *df = 1.0f;
  }
}

// Filtered: a logit above the threshold counts as 0 (inter-class filtering)
template <bool Filtered>
inline float effective(float x, float threshold) {
  return Filtered && x > threshold ? 0.0f : x;
}

// max of the effective logits over [lo, hi) (a NaN is skipped here and reaches the sum below)
template <bool Filtered>
inline float row_max(const float* __restrict x, int64_t lo, int64_t hi, float threshold, float m) {
#pragma omp simd reduction(max : m)
  for (int64_t j = lo; j < hi; ++j) {
    const float v = effective<Filtered>(x[j], threshold);
    m = v > m ? v : m;
  }
  return m;
}

template <bool Filtered>
inline float exp_row(const float* x, float* e, int64_t lo, int64_t hi, float threshold,
                     float m) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = lo; j < hi; ++j) {
    const float v = exp_nonpositive(effective<Filtered>(x[j], threshold) - m);
    e[j] = Filtered && x[j] > threshold ? 0.0f : v;
    sum += v;
  }
  return sum;
}

template <bool Filtered>
void margin_softmax_rows(const float* x, const int64_t* tgt, const Margin& margin, float scale, float* e,
                         float* parts, float* stats, int64_t n, int64_t s, float threshold) {
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads())
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * s;
    float* ei = e + i * s;
    const int64_t t = tgt[i] >= 0 && tgt[i] < s ? tgt[i] : -1;
    float m = -std::numeric_limits<float>::infinity(), sum, tlogit = 0.0f, cos_t = 0.0f, df = 0.0f;
    if (t < 0) {
      m = row_max<Filtered>(xi, 0, s, threshold, m);
      sum = exp_row<Filtered>(xi, ei, 0, s, threshold, m);
    } else {
      float f;
      cos_t = xi[t] / scale;
      margin_value(margin, cos_t, &f, &df);
      tlogit = f * scale;
      m = row_max<Filtered>(xi, t + 1, s, threshold, row_max<Filtered>(xi, 0, t, threshold, m));
      m = tlogit > m ? tlogit : m;
      sum = exp_row<Filtered>(xi, ei, 0, t, threshold, m) + exp_row<Filtered>(xi, ei, t + 1, s, threshold, m);
      ei[t] = 0.0f;
      sum += exp_nonpositive(tlogit - m);
    }
    parts[i] = m + std::log(sum);
    parts[n + i] = tlogit;
    stats[i] = m;
    stats[n + i] = cos_t;
    stats[2 * n + i] = df;
  }
}

MXReturnValue margin_softmax_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                     const OpResource&) {
  const int64_t n = (*in)[0].shape[0], s = (*in)[0].shape[1];
  const float* x = (*in)[0].data<float>();
  const int64_t* tgt = (*in)[1].data<int64_t>();
  float* e = (*out)[0].data<float>();
  float* parts = (*out)[1].data<float>();
  float* stats = (*out)[2].data<float>();
  if (!finite_attrs("pfc_margin_softmax", attrs, {"m1", "m2", "m3", "scale", "threshold"}))
    return mxnet::ext::MX_FAIL;
  const float m1 = attr_float(attrs, "m1", 1.0f), m2 = attr_float(attrs, "m2", 0.0f);
  const Margin margin{m1, m2, attr_float(attrs, "m3", 0.0f), static_cast<float>(double{m2} * std::sin(double{m2})),
                      m1 == 1.0f && m2 == 0.0f};
  const float scale = attr_float(attrs, "scale", 1.0f);
  const float threshold = attr_float(attrs, "threshold", 0.0f);
  if (attr_flag(attrs, "filter")) {
    margin_softmax_rows<true>(x, tgt, margin, scale, e, parts, stats, n, s, threshold);
  } else {
    margin_softmax_rows<false>(x, tgt, margin, scale, e, parts, stats, n, s, threshold);
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue margin_softmax_shape(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 2) return fail("pfc_margin_softmax: logits must be (N, S)");
  const unsigned n = (*in)[0][0];
  if ((*in)[1] != std::vector<unsigned>{n}) return fail("pfc_margin_softmax: target must be (N,)");
  (*out)[0] = (*in)[0];
  (*out)[1] = {2, n};
  (*out)[2] = {3, n};
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- softmax_loss
MXReturnValue softmax_loss_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                   const OpResource&) {
  const int64_t w = (*in)[0].shape[0], n = (*in)[0].shape[2];
  const float* parts = (*in)[0].data<float>();  // rank r: lse at [2 r n], target logit at [(2 r + 1) n]
  float* lse = (*out)[0].data<float>();
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) {  // serial and in a fixed order: every rank gets the same bits
    float top = -std::numeric_limits<float>::infinity();
    bool nan = false;
    for (int64_t r = 0; r < w; ++r) {
      const float v = parts[2 * r * n + i];
      nan = nan || std::isnan(v);
      top = v > top ? v : top;
    }
    double sum = 0.0, target = 0.0;
    for (int64_t r = 0; r < w; ++r) {
      sum += std::exp(static_cast<double>(parts[2 * r * n + i]) - top);
      target += parts[(2 * r + 1) * n + i];
    }
    const double value = nan ? std::numeric_limits<double>::quiet_NaN() : top + std::log(sum);
    lse[i] = static_cast<float>(value);
    total += value - target;
  }
  (*out)[1].data<float>()[0] = n > 0 ? static_cast<float>(total / n) : 0.0f;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue softmax_loss_shape(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 3 || (*in)[0][1] != 2) return fail("pfc_softmax_loss: parts must be (W, 2, N)");
  (*out)[0] = {(*in)[0][2]};
  (*out)[1] = {1};
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- softmax_scale
MXReturnValue softmax_scale_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                    const OpResource&) {
  const int64_t n = (*in)[0].shape[0], d = (*in)[0].shape[1], s = (*in)[1].shape[0];
  const float* er = (*in)[0].data<float>();     // expo . rows
  const float* rows = (*in)[1].data<float>();   // the normalised centers
  const float* xn = (*in)[2].data<float>();
  const float* parts = (*in)[3].data<float>();  // this rank's (lse, target logit)
  const float* stats = (*in)[4].data<float>();  // (rowmax, cos_t, f')
  const float* lse = (*in)[5].data<float>();    // over every rank
  const int64_t* tgt = (*in)[6].data<int64_t>();
  float* dxn = (*out)[0].data<float>();
  float* xs = (*out)[1].data<float>();
  float* tcoef = (*out)[2].data<float>();
  if (!finite_attrs("pfc_softmax_scale", attrs, {"scale"})) return mxnet::ext::MX_FAIL;
  const float per_row = attr_float(attrs, "scale", 1.0f) / static_cast<float>(n);
#pragma omp parallel for schedule(static) num_threads(threads_for(n * d))
  for (int64_t i = 0; i < n; ++i) {
    const float g = std::exp(stats[i] - lse[i]) * per_row;
    const int64_t t = tgt[i] >= 0 && tgt[i] < s ? tgt[i] : -1;
    const float tc = t < 0 ? 0.0f : stats[2 * n + i] * (std::exp(parts[n + i] - lse[i]) - 1.0f) * per_row;
    tcoef[i] = tc;
    const float* eri = er + i * d;
    const float* xi = xn + i * d;
    float* dxi = dxn + i * d;
    float* xsi = xs + i * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      dxi[k] = g * eri[k];
      xsi[k] = g * xi[k];
    }
    if (t >= 0) {
      const float* rt = rows + t * d;
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) dxi[k] += tc * rt[k];
    }
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue softmax_scale_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& er = (*in)[0];
  if (er.size() != 2 || (*in)[1].size() != 2 || (*in)[1][1] != er[1] || (*in)[2] != er)
    return fail("pfc_softmax_scale: need expo_rows (N, D), rows (S, D), xn (N, D)");
  const unsigned n = er[0];
  if ((*in)[3] != std::vector<unsigned>{2, n} || (*in)[4] != std::vector<unsigned>{3, n} ||
      (*in)[5] != std::vector<unsigned>{n} || (*in)[6] != std::vector<unsigned>{n})
    return fail("pfc_softmax_scale: need parts (2, N), stats (3, N), lse (N,), target (N,)");
  (*out)[0] = er;
  (*out)[1] = er;
  (*out)[2] = {n};
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- normalize_grad
MXReturnValue normalize_grad_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                     const OpResource&) {
  const int64_t rows = (*in)[0].shape[0], d = (*in)[0].shape[1];
  const float* dy = (*in)[0].data<float>();
  const float* y = (*in)[1].data<float>();
  const float* norm = (*in)[2].data<float>();
  float* dx = (*out)[0].data<float>();
#pragma omp parallel for schedule(static) num_threads(threads_for(rows * d))
  for (int64_t i = 0; i < rows; ++i) {
    const float* dyi = dy + i * d;
    const float* yi = y + i * d;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t k = 0; k < d; ++k) dot += yi[k] * dyi[k];
    float* dxi = dx + i * d;
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) dxi[k] = (dyi[k] - yi[k] * dot) / norm[i];
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue normalize_grad_shape(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 2 || (*in)[1] != (*in)[0] || (*in)[2] != std::vector<unsigned>{(*in)[0][0]})
    return fail("pfc_normalize_grad: need dy (B, D), y (B, D), norm (B,)");
  (*out)[0] = (*in)[0];
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- sparse_sgd
// Row j's gradient is assembled inside the update's own pass over the rows: the product result,
// the target entries of the rows whose target is j (linked in ascending order by `next`), and
// with Normalize the term through w / norm, from <w, G> while the row is in cache.
constexpr int64_t kSgdAhead = 1;  // rows prefetched ahead: <w, G> reads w before the update reads mom
template <bool Momentum, bool Normalize>
void sparse_sgd_rows(const float* wp, const float* gp, const float* norm, const float* xn, const float* tcoef,
                     const int64_t* first, const int64_t* next, float* mp, const int64_t* ip, float* op, int64_t s,
                     int64_t d, float lr, float mu, float rate) {
  const float decay = 1.0f - rate;
#pragma omp parallel num_threads(threads())
  {
    std::vector<float> buf(d);  // a row with target entries: its gradient assembled here
#pragma omp for schedule(dynamic, 32)
    for (int64_t j = 0; j < s; ++j) {
      const int64_t row = ip[j];
      const float* wr = wp + row * d;
      const float* gr = gp + j * d;
      float* mr = mp + row * d;
      float* orow = op + row * d;
      if (j + kSgdAhead < s) {  // the next rows in flight while this one is worked on
        const float* wn = wp + ip[j + kSgdAhead] * d;
        float* mn = mp + ip[j + kSgdAhead] * d;
        for (int64_t k = 0; k < d; k += 16) {
          __builtin_prefetch(wn + k, 0);
          __builtin_prefetch(mn + k, 1);
        }
      }
      const float* gj = gr;
      if (first[j] >= 0) {
        std::memcpy(buf.data(), gr, sizeof(float) * d);
        gj = buf.data();
      }
      for (int64_t i = first[j]; i >= 0; i = next[i]) {
        const float c = tcoef[i];
        const float* xi = xn + i * d;
        float* acc = buf.data();
#pragma omp simd
        for (int64_t k = 0; k < d; ++k) acc[k] += c * xi[k];
      }
      float a = 1.0f, b = 0.0f;
      if (Normalize) {
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < d; ++k) dot += wr[k] * gj[k];
        a = 1.0f / norm[j];
        b = -dot * a * a * a;
      }
#pragma omp simd
      for (int64_t k = 0; k < d; ++k) {
        const float g = Normalize ? a * gj[k] + b * wr[k] : gj[k];
        if (Momentum) {  // MXNet sgd_mom_update (lazy, row-sparse gradient)
          const float m = mu * mr[k] - rate * wr[k] - lr * g;
          mr[k] = m;
          orow[k] = wr[k] + m;
        } else {  // MXNet sgd_update (lazy, row-sparse gradient)
          orow[k] = decay * wr[k] - lr * g;
        }
      }
    }
  }
}

MXReturnValue sparse_sgd_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                 const OpResource&) {
  const int64_t c = (*in)[0].shape[0], d = (*in)[0].shape[1], s = (*in)[3].shape[0], n = (*in)[6].shape[0];
  const float* wp = (*in)[0].data<float>();
  const float* gp = (*in)[1].data<float>();
  float* mp = (*in)[2].data<float>();
  const int64_t* ip = (*in)[3].data<int64_t>();
  const float* norm = (*in)[4].data<float>();
  const float* xn = (*in)[5].data<float>();
  const int64_t* tgt = (*in)[6].data<int64_t>();
  const float* tcoef = (*in)[7].data<float>();
  float* op = (*out)[0].data<float>();
  if (!finite_attrs("pfc_sparse_sgd", attrs, {"lr", "momentum", "wd"})) return mxnet::ext::MX_FAIL;
  const float lr = attr_float(attrs, "lr", 0.0f), mu = attr_float(attrs, "momentum", 0.0f);
  const float rate = lr * attr_float(attrs, "wd", 0.0f);  // as MXNet: lr·wd rounded once
  for (int64_t j = 0; j < s; ++j)
    if (ip[j] < 0 || ip[j] >= c)
      return fail("pfc_sparse_sgd: index " + std::to_string(ip[j]) + " is outside [0, " + std::to_string(c) + ")");
  std::vector<int64_t> first(s, -1), next(n, -1);
  for (int64_t i = n - 1; i >= 0; --i) {  // walked from first[j]: the rows with target j in ascending order
    if (tgt[i] < -1 || tgt[i] >= s)
      return fail("pfc_sparse_sgd: target " + std::to_string(tgt[i]) + " of row " + std::to_string(i) +
                  " is outside [-1, " + std::to_string(s) + ")");
    if (tgt[i] >= 0) {
      next[i] = first[tgt[i]];
      first[tgt[i]] = i;
    }
  }
  if (op != wp) std::memcpy(op, wp, sizeof(float) * c * d);  // a separate output: untouched rows are the input's
  auto run = [&](auto momentum, auto normalize) {
    sparse_sgd_rows<decltype(momentum)::value, decltype(normalize)::value>(
        wp, gp, norm, xn, tcoef, first.data(), next.data(), mp, ip, op, s, d, lr, mu, rate);
  };
  const bool normalize = attr_flag(attrs, "normalize");
  if (mu != 0.0f) {
    normalize ? run(std::true_type{}, std::true_type{}) : run(std::true_type{}, std::false_type{});
  } else {
    normalize ? run(std::false_type{}, std::true_type{}) : run(std::false_type{}, std::false_type{});
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue sparse_sgd_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& w = (*in)[0];
  const std::vector<unsigned> rows{(*in)[1].empty() ? 0u : (*in)[1][0]};
  const std::vector<unsigned> batch{(*in)[5].empty() ? 0u : (*in)[5][0]};
  if (w.size() != 2 || (*in)[2] != w || (*in)[1].size() != 2 || (*in)[1][1] != w[1] || (*in)[3] != rows ||
      (*in)[4] != rows || (*in)[5].size() != 2 || (*in)[5][1] != w[1] || (*in)[6] != batch || (*in)[7] != batch)
    return fail("pfc_sparse_sgd: need weight (C, D), grad (S, D), mom (C, D), index (S,), norm (S,), xn (N, D), "
                "target (N,), tcoef (N,)");
  (*out)[0] = w;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue mutate_mom(const Attrs&, std::vector<int>* inputs) {
  inputs->push_back(2);
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- prelu
// (planes, plane size, channels) of x (B, C, ...): plane p = (b, c) is x[b, c] flattened
struct Planes {
  int64_t count, size, channels;
};

Planes planes_of(const MXTensor& x) {
  int64_t size = 1;
  for (size_t k = 2; k < x.shape.size(); ++k) size *= x.shape[k];
  return {x.shape[0] * x.shape[1], size, x.shape[1]};
}

// The slope gradient is summed in float over blocks of this many elements (a few per SIMD lane),
// the blocks in double: as fast as a pass without the sum (a double accumulator in the loop made
// the backward 6x slower), about as accurate as MXNet's compensated float sum.
constexpr int64_t kSlopeBlock = 64;

MXReturnValue prelu_forward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                            const OpResource&) {
  const Planes pl = planes_of((*in)[0]);
  const float* x = (*in)[0].data<float>();
  const float* alpha = (*in)[1].data<float>();
  const bool shared = (*in)[1].shape[0] == 1;
  float* y = (*out)[0].data<float>();
#pragma omp parallel for schedule(static) num_threads(threads_for(pl.count * pl.size))
  for (int64_t p = 0; p < pl.count; ++p) {
    const float a = alpha[shared ? 0 : p % pl.channels];
    const float* xp = x + p * pl.size;
    float* yp = y + p * pl.size;
#pragma omp simd
    for (int64_t k = 0; k < pl.size; ++k) yp[k] = xp[k] > 0.0f ? xp[k] : xp[k] * a;
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue prelu_backward(const Attrs&, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                             const OpResource&) {
  const Planes pl = planes_of((*in)[1]);
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[1].data<float>();
  const float* alpha = (*in)[2].data<float>();
  const int64_t slopes = (*in)[2].shape[0];
  float* dx = (*out)[0].data<float>();
  float* dalpha = (*out)[1].data<float>();
  std::vector<double> partial(pl.count);  // plane p's share of dalpha: summed below in a fixed order
#pragma omp parallel for schedule(static) num_threads(threads_for(pl.count * pl.size))
  for (int64_t p = 0; p < pl.count; ++p) {
    const float a = alpha[slopes == 1 ? 0 : p % pl.channels];
    const float* xp = x + p * pl.size;
    const float* dyp = dy + p * pl.size;
    float* dxp = dx != nullptr ? dx + p * pl.size : nullptr;
    double acc = 0.0;
    for (int64_t lo = 0; lo < pl.size; lo += kSlopeBlock) {
      const int64_t hi = std::min(lo + kSlopeBlock, pl.size);
      float block = 0.0f;
      if (dxp != nullptr) {
#pragma omp simd reduction(+ : block)
        for (int64_t k = lo; k < hi; ++k) {
          const bool positive = xp[k] > 0.0f;
          dxp[k] = positive ? dyp[k] : dyp[k] * a;
          block += positive ? 0.0f : dyp[k] * xp[k];
        }
      } else {
#pragma omp simd reduction(+ : block)
        for (int64_t k = lo; k < hi; ++k) block += xp[k] > 0.0f ? 0.0f : dyp[k] * xp[k];
      }
      acc += block;
    }
    partial[p] = acc;
  }
  if (dalpha != nullptr) {
    std::vector<double> sums(pl.channels, 0.0);
    for (int64_t p = 0; p < pl.count; ++p) sums[p % pl.channels] += partial[p];
    if (slopes == 1) {
      double total = 0.0;
      for (double v : sums) total += v;
      dalpha[0] = static_cast<float>(total);
    } else {
      for (int64_t c = 0; c < pl.channels; ++c) dalpha[c] = static_cast<float>(sums[c]);
    }
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue prelu_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& x = (*in)[0];
  if (x.size() < 2) return fail("pfc_prelu: x must be (B, C, ...) with at least 2 axes");
  auto& alpha = (*in)[1];
  if (alpha.empty()) alpha = {x[1]};
  if (alpha.size() != 1 || (alpha[0] != 1 && alpha[0] != x[1]))
    return fail("pfc_prelu: alpha must be (C,) = (" + std::to_string(x[1]) + ",) or (1,)");
  (*out)[0] = x;
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- batchnorm
// MXNet's training-mode BatchNorm over axis 1 (symbols/batchnorm.py runs it only where autograd
// trains: a library operator is not told whether it does). Per channel c, over the batch and the
// spatial axes (n elements): mean, biased variance var, invstd = 1 / sqrt(var + eps) rounded as
// MXNet does; y = (x - mean) * (gamma / sqrt(var + eps)) + beta, gamma read as 1 with fix_gamma.
// Outputs y, mean, invstd. The moving statistics (inputs 3 and 4, declared mutable) are updated in
// the forward with MXNet's rule and roundings: moving = moving * momentum + batch * (1 - momentum)
// in float, the batch variance recovered from invstd as MXNet does (1 / invstd^2 - eps). MXNet's
// CPU BatchNorm updates them in its backward instead, which a library operator cannot (its backward
// may not declare them written, and readers would race with it): the same values whenever a
// backward follows the forward, as in training.
// The sums: float over blocks of kSlopeBlock elements, the blocks in double; the variance from
// the sums of x - x[0, c, 0] and its square (the shift keeps the two sums from cancelling).
// One parallel loop over the (b, c) planes per pass (schedule dynamic) and no barrier inside a
// pass: oneDNN's BatchNorm synchronises its threads inside the pass, and a thread that waits for a
// descheduled partner there costs a scheduler time slice on a shared machine (docs/performance.md).
struct BnAttrs {
  double eps;
  float momentum;
  bool fix_gamma;
};

bool bn_attrs(const Attrs& attrs, BnAttrs* a) {
  a->eps = attr_number(attrs, "eps", 1e-3);
  a->momentum = attr_float(attrs, "momentum", 0.9f);
  a->fix_gamma = attr_flag(attrs, "fix_gamma");
  if (!std::isfinite(a->eps) || a->eps <= 0.0 || !std::isfinite(a->momentum)) {
    fail("pfc_batchnorm: eps must be a positive number and momentum a finite one");
    return false;
  }
  return true;
}

// Per channel c, two sums over its planes p = (b, c) of f(k) for k in the plane: float blocks of
// kSlopeBlock, the blocks in double, the planes added in batch order (a fixed order).
template <typename F>
void channel_sums(const Planes& pl, std::vector<double>* c1, std::vector<double>* c2, F f) {
  std::vector<double> s1(pl.count), s2(pl.count);
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_for(pl.count * pl.size))
  for (int64_t p = 0; p < pl.count; ++p) {
    const int64_t base = p * pl.size;
    double a1 = 0.0, a2 = 0.0;
    for (int64_t lo = 0; lo < pl.size; lo += kSlopeBlock) {
      const int64_t hi = std::min(lo + kSlopeBlock, pl.size);
      float b1 = 0.0f, b2 = 0.0f;
#pragma omp simd reduction(+ : b1, b2)
      for (int64_t k = base + lo; k < base + hi; ++k) {
        float u, v;
        f(k, p, &u, &v);
        b1 += u;
        b2 += v;
      }
      a1 += b1;
      a2 += b2;
    }
    s1[p] = a1;
    s2[p] = a2;
  }
  c1->assign(pl.channels, 0.0);
  c2->assign(pl.channels, 0.0);
  for (int64_t p = 0; p < pl.count; ++p) {
    (*c1)[p % pl.channels] += s1[p];
    (*c2)[p % pl.channels] += s2[p];
  }
}

// elements per channel: batch × spatial size
double elements_per_channel(const Planes& pl) {
  return static_cast<double>(pl.count / pl.channels) * static_cast<double>(pl.size);
}

MXReturnValue batchnorm_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                const OpResource&) {
  BnAttrs a;
  if (!bn_attrs(attrs, &a)) return mxnet::ext::MX_FAIL;
  const Planes pl = planes_of((*in)[0]);
  const int64_t c = pl.channels;
  const float* x = (*in)[0].data<float>();
  const float* gamma = (*in)[1].data<float>();
  const float* beta = (*in)[2].data<float>();
  float* moving_mean = (*in)[3].data<float>();
  float* moving_var = (*in)[4].data<float>();
  float* y = (*out)[0].data<float>();
  float* mean = (*out)[1].data<float>();
  float* invstd = (*out)[2].data<float>();
  const double n = elements_per_channel(pl);
  if (n == 0) return fail("pfc_batchnorm: x has no elements per channel");
  std::vector<float> shift(c);
  for (int64_t ch = 0; ch < c; ++ch) shift[ch] = x[ch * pl.size];
  std::vector<double> c1, c2;
  const float* sh = shift.data();
  channel_sums(pl, &c1, &c2, [=](int64_t k, int64_t p, float* u, float* v) {
    const float d = x[k] - sh[p % c];
    *u = d;
    *v = d * d;
  });
  std::vector<float> scale(c);
  const float eps = static_cast<float>(a.eps);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double m = c1[ch] / n;
    const float var = static_cast<float>(std::max(0.0, c2[ch] / n - m * m));
    mean[ch] = static_cast<float>(shift[ch] + m);
    invstd[ch] = static_cast<float>(1.0 / std::sqrt(var + eps));  // MXNet's VARIANCE_TO_INVSTD
    const double g = a.fix_gamma ? 1.0 : gamma[ch];
    const float minus_mom = 1.0f - a.momentum;
    const float variance = static_cast<float>(1.0 / (invstd[ch] * invstd[ch]) - a.eps);
    moving_mean[ch] = moving_mean[ch] * a.momentum + mean[ch] * minus_mom;
    moving_var[ch] = moving_var[ch] * a.momentum + variance * minus_mom;
    scale[ch] = static_cast<float>(g / std::sqrt(static_cast<double>(var) + a.eps));
  }
  const float* sc = scale.data();
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_for(pl.count * pl.size))
  for (int64_t p = 0; p < pl.count; ++p) {
    const int64_t ch = p % c;
    const float s = sc[ch], m = mean[ch], b = beta[ch];
    const float* xp = x + p * pl.size;
    float* yp = y + p * pl.size;
#pragma omp simd
    for (int64_t k = 0; k < pl.size; ++k) yp[k] = (xp[k] - m) * s + b;
  }
  return mxnet::ext::MX_SUCCESS;
}

// Backward inputs: dy, dmean, dinvstd, x, gamma, beta, moving_mean, moving_var, y, mean, invstd;
// outputs dx, dgamma, dbeta (and the moving statistics' gradients: none, left unwritten).
// With k = gamma * invstd: dbeta = sum dy, dgamma = invstd * sum dy (x - mean) (0 with fix_gamma),
// dx = k (dy - dbeta / n - (x - mean) invstd^2 sum dy (x - mean) / n).
MXReturnValue batchnorm_backward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                 const OpResource&) {
  BnAttrs a;
  if (!bn_attrs(attrs, &a)) return mxnet::ext::MX_FAIL;
  const Planes pl = planes_of((*in)[3]);
  const int64_t c = pl.channels;
  const float* dy = (*in)[0].data<float>();
  const float* x = (*in)[3].data<float>();
  const float* gamma = (*in)[4].data<float>();
  const float* mean = (*in)[9].data<float>();
  const float* invstd = (*in)[10].data<float>();
  float* dx = (*out)[0].data<float>();
  float* dgamma = (*out)[1].data<float>();
  float* dbeta = (*out)[2].data<float>();
  const double n = elements_per_channel(pl);
  std::vector<double> c1, c2;
  channel_sums(pl, &c1, &c2, [=](int64_t k, int64_t p, float* u, float* v) {
    *u = dy[k];
    *v = dy[k] * (x[k] - mean[p % c]);
  });
  std::vector<float> ka(c), kb(c), kc(c);
  for (int64_t ch = 0; ch < c; ++ch) {
    const double is = invstd[ch];
    const double k = (a.fix_gamma ? 1.0 : gamma[ch]) * is;
    ka[ch] = static_cast<float>(k);
    kb[ch] = static_cast<float>(k * c1[ch] / n);
    kc[ch] = static_cast<float>(k * is * is * c2[ch] / n);
    if (dbeta != nullptr) dbeta[ch] = static_cast<float>(c1[ch]);
    if (dgamma != nullptr) dgamma[ch] = a.fix_gamma ? 0.0f : static_cast<float>(c2[ch] * is);
  }
  if (dx != nullptr) {
    const float *pa = ka.data(), *pb = kb.data(), *pc = kc.data();
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads_for(pl.count * pl.size))
    for (int64_t p = 0; p < pl.count; ++p) {
      const int64_t ch = p % c;
      const float ak = pa[ch], bk = pb[ch], ck = pc[ch], m = mean[ch];
      const float* xp = x + p * pl.size;
      const float* dyp = dy + p * pl.size;
      float* dxp = dx + p * pl.size;
#pragma omp simd
      for (int64_t k = 0; k < pl.size; ++k) dxp[k] = ak * dyp[k] - bk - (xp[k] - m) * ck;
    }
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue batchnorm_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& x = (*in)[0];
  if (x.size() < 2) return fail("pfc_batchnorm: x must be (B, C, ...) with at least 2 axes");
  const std::vector<unsigned> per_channel{x[1]};
  for (size_t k = 1; k < 5; ++k) {
    if ((*in)[k].empty()) (*in)[k] = per_channel;
    if ((*in)[k] != per_channel)
      return fail("pfc_batchnorm: gamma, beta, moving_mean, moving_var must be (C,) = (" + std::to_string(x[1]) + ",)");
  }
  (*out)[0] = x;
  (*out)[1] = per_channel;
  (*out)[2] = per_channel;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue mutate_moving(const Attrs&, std::vector<int>* inputs) {
  inputs->push_back(3);
  inputs->push_back(4);
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- registration helpers
template <int In, int Out>
MXReturnValue parse_counts(const Attrs&, int* num_in, int* num_out) {
  *num_in = In;
  *num_out = Out;
  return mxnet::ext::MX_SUCCESS;
}

// dtypes of the inputs, in order: 'f' float32, 'i' int64; outputs are float32
template <const char* Sig>
MXReturnValue check_types(const Attrs&, std::vector<int>* in, std::vector<int>* out) {
  for (size_t k = 0; k < in->size(); ++k) {
    const int want = Sig[k] == 'i' ? mxnet::ext::kInt64 : mxnet::ext::kFloat32;
    if ((*in)[k] != want)
      return fail(std::string("pfc kernels: input ") + std::to_string(k) + " must be " +
                  (Sig[k] == 'i' ? "int64" : "float32"));
  }
  for (auto& t : *out) t = mxnet::ext::kFloat32;
  return mxnet::ext::MX_SUCCESS;
}

constexpr char kSigGather[] = "fi";
constexpr char kSigSoftmax[] = "fi";
constexpr char kSigLoss[] = "f";
constexpr char kSigScale[] = "ffffffi";
constexpr char kSigNormGrad[] = "fff";
constexpr char kSigSgd[] = "fffiffif";
constexpr char kSigPrelu[] = "ff";
constexpr char kSigBatchnorm[] = "fffff";

}  // namespace

REGISTER_OP(pfc_gather_normalize)
    .setParseAttrs(parse_counts<2, 2>)
    .setInferType(check_types<kSigGather>)
    .setInferShape(gather_normalize_shape)
    .setForward(gather_normalize_forward, "cpu");

REGISTER_OP(pfc_margin_softmax)
    .setParseAttrs(parse_counts<2, 3>)
    .setInferType(check_types<kSigSoftmax>)
    .setInferShape(margin_softmax_shape)
    .setForward(margin_softmax_forward, "cpu");

REGISTER_OP(pfc_softmax_loss)
    .setParseAttrs(parse_counts<1, 2>)
    .setInferType(check_types<kSigLoss>)
    .setInferShape(softmax_loss_shape)
    .setForward(softmax_loss_forward, "cpu");

REGISTER_OP(pfc_softmax_scale)
    .setParseAttrs(parse_counts<7, 3>)
    .setInferType(check_types<kSigScale>)
    .setInferShape(softmax_scale_shape)
    .setForward(softmax_scale_forward, "cpu");

REGISTER_OP(pfc_normalize_grad)
    .setParseAttrs(parse_counts<3, 1>)
    .setInferType(check_types<kSigNormGrad>)
    .setInferShape(normalize_grad_shape)
    .setForward(normalize_grad_forward, "cpu");

REGISTER_OP(pfc_sparse_sgd)
    .setParseAttrs(parse_counts<8, 1>)
    .setInferType(check_types<kSigSgd>)
    .setInferShape(sparse_sgd_shape)
    .setMutateInputs(mutate_mom)
    .setForward(sparse_sgd_forward, "cpu");

REGISTER_OP(pfc_prelu)
    .setParseAttrs(parse_counts<2, 1>)
    .setInferType(check_types<kSigPrelu>)
    .setInferShape(prelu_shape)
    .setForward(prelu_forward, "cpu")
    .setBackward(prelu_backward, "cpu");

REGISTER_OP(pfc_batchnorm)
    .setParseAttrs(parse_counts<5, 3>)
    .setInferType(check_types<kSigBatchnorm>)
    .setInferShape(batchnorm_shape)
    .setMutateInputs(mutate_moving)
    .setForward(batchnorm_forward, "cpu")
    .setBackward(batchnorm_backward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10900) return mxnet::ext::MX_SUCCESS;
  MX_ERROR_MSG << "pfc kernels need MXNet >= 1.9, got version code " << version;
  return mxnet::ext::MX_FAIL;
}
