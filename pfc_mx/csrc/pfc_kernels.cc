// Fused CPU kernels of the Partial FC head, loaded into MXNet as an extension library.
//
// Each operator replaces several stock operators that each make one pass over
// an (N, S) or (S, D) array: reading the data once instead of three or four
// times is what keeps the head close to the cost of its matrix products.
// The math is the one pfc_mx/fc_math.py documents; pfc_mx/kernels.py builds
// this file (g++ -O3 -fopenmp against the installed MXNet's lib_api) and
// pfc_mx/partial_fc.py calls the operators on CPU contexts only.
//
//   pfc_gather_normalize(weight (C,D), index (S,) int64) -> rows (S,D), norm (S,)
//       rows[j] = weight[index[j]] / norm[j], norm[j] = sqrt(sum_d w^2 + 1e-10)
//   pfc_margin_softmax(logits (N,S), target (N,) int64, target_logit (N,); filter, threshold)
//       -> expo (N,S), lse (N,), rowmax (N,)
//       effective logit e: target_logit[i] at column target[i] (-1: none), 0 where
//       filter and logit > threshold, else the logit; rowmax = max_j e, expo = exp(e - rowmax),
//       lse = rowmax + log sum_j expo (NaN when a logit is NaN or, unfiltered, +inf)
//   pfc_softmax_grad(logits (N,S), expo (N,S), rowscale (N,), target (N,) int64, dtarget (N,), cos_t (N,);
//       scale, filter, threshold) -> grad (N,S) (may be expo itself), r (S,)
//       grad = rowscale[i] * expo (0 where filtered), dtarget[i] at the target column;
//       r[j] = sum_i grad[i,j] * cos[i,j], cos = logits / scale off the target, cos_t[i] on it
//   pfc_sparse_sgd(weight (C,D), grad (S,D), mom (C,D), index (S,) int64, a (S,), b (S,); lr, momentum, wd)
//       -> weight (pass the weight as out); rows index[j] only (unique), with g = a[j] grad[j] + b[j] weight[index[j]]
//       MXNet's sgd_mom_update: mom = momentum mom - lr wd w - lr g; w = w + mom (mom updated in place),
//       or with momentum 0 its sgd_update: w = (1 - lr wd) w - lr g (mom untouched).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
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
float attr_float(const Attrs& attrs, const char* key, float fallback) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return fallback;
  const char* text = it->second.c_str();
  char* end = nullptr;
  const float value = std::strtof(text, &end);
  while (end != nullptr && *end == ' ') ++end;
  const bool whole = end != text && end != nullptr && *end == '\0';
  return whole && std::isfinite(value) ? value : std::numeric_limits<float>::quiet_NaN();
}

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

// ---------------------------------------------------------------- gather_normalize
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
#pragma omp parallel for schedule(static) num_threads(threads()) reduction(max : bad)
  for (int64_t j = 0; j < s; ++j) {
    const int64_t src = ip[j];
    if (src < 0 || src >= c) {
      bad = j;
      continue;
    }
    const float* row = wp + src * d;
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
inline float exp_row(const float* __restrict x, float* __restrict e, int64_t lo, int64_t hi, float threshold,
                     float m) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = lo; j < hi; ++j) {
    const float v = exp_nonpositive(effective<Filtered>(x[j], threshold) - m);
    e[j] = v;
    sum += v;
  }
  return sum;
}

template <bool Filtered>
void margin_softmax_rows(const float* x, const int64_t* tgt, const float* tlogit, float* e, float* lse,
                         float* rowmax, int64_t n, int64_t s, float threshold) {
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t i = 0; i < n; ++i) {
    const float* xi = x + i * s;
    float* ei = e + i * s;
    const int64_t t = tgt[i] >= 0 && tgt[i] < s ? tgt[i] : -1;
    float m = -std::numeric_limits<float>::infinity(), sum;
    if (t < 0) {
      m = row_max<Filtered>(xi, 0, s, threshold, m);
      sum = exp_row<Filtered>(xi, ei, 0, s, threshold, m);
    } else {
      m = row_max<Filtered>(xi, t + 1, s, threshold, row_max<Filtered>(xi, 0, t, threshold, m));
      m = tlogit[i] > m ? tlogit[i] : m;
      sum = exp_row<Filtered>(xi, ei, 0, t, threshold, m) + exp_row<Filtered>(xi, ei, t + 1, s, threshold, m);
      ei[t] = exp_nonpositive(tlogit[i] - m);
      sum += ei[t];
    }
    rowmax[i] = m;
    lse[i] = m + std::log(sum);
  }
}

MXReturnValue margin_softmax_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                     const OpResource&) {
  const int64_t n = (*in)[0].shape[0], s = (*in)[0].shape[1];
  const float* x = (*in)[0].data<float>();
  const int64_t* tgt = (*in)[1].data<int64_t>();
  const float* tlogit = (*in)[2].data<float>();
  float* e = (*out)[0].data<float>();
  float* lse = (*out)[1].data<float>();
  float* rowmax = (*out)[2].data<float>();
  if (!finite_attrs("pfc_margin_softmax", attrs, {"threshold"})) return mxnet::ext::MX_FAIL;
  const float threshold = attr_float(attrs, "threshold", 0.0f);
  if (attr_flag(attrs, "filter")) {
    margin_softmax_rows<true>(x, tgt, tlogit, e, lse, rowmax, n, s, threshold);
  } else {
    margin_softmax_rows<false>(x, tgt, tlogit, e, lse, rowmax, n, s, threshold);
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue margin_softmax_shape(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 2) return fail("pfc_margin_softmax: logits must be (N, S)");
  const unsigned n = (*in)[0][0];
  if ((*in)[1] != std::vector<unsigned>{n} || (*in)[2] != std::vector<unsigned>{n})
    return fail("pfc_margin_softmax: target and target_logit must be (N,)");
  (*out)[0] = (*in)[0];
  (*out)[1] = {n};
  (*out)[2] = {n};
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- softmax_grad
// columns [lo, hi) of one row off the target: g = c * e (0 where filtered), r[j] += g * cos
template <bool Filtered>
inline void grad_segment(const float* __restrict x, const float* e, float* g, float* __restrict r, int64_t lo,
                         int64_t hi, float c, float inv_scale, float threshold) {
#pragma omp simd
  for (int64_t j = lo; j < hi; ++j) {
    const float v = (Filtered && x[j] > threshold ? 0.0f : c) * e[j];
    g[j] = v;
    r[j] += v * (x[j] * inv_scale);
  }
}

template <bool Filtered>
void softmax_grad_columns(const float* x, const float* e, const float* rowscale, const int64_t* tgt,
                          const float* dtarget, const float* cos_t, float* g, float* r, int64_t n, int64_t s,
                          float inv_scale, float threshold) {
  // columns split between threads (each owns its r[j]); every thread walks all rows of its block
#pragma omp parallel num_threads(threads())
  {
    const int nt = omp_get_num_threads(), me = omp_get_thread_num();
    const int64_t per = (s + nt - 1) / nt;
    const int64_t lo = std::min<int64_t>(s, me * per), hi = std::min<int64_t>(s, lo + per);
    std::fill(r + lo, r + hi, 0.0f);
    for (int64_t i = 0; i < n && lo < hi; ++i) {
      const float* xi = x + i * s;
      const float* ei = e + i * s;
      float* gi = g + i * s;
      const int64_t t = tgt[i];
      if (t >= lo && t < hi) {
        grad_segment<Filtered>(xi, ei, gi, r, lo, t, rowscale[i], inv_scale, threshold);
        grad_segment<Filtered>(xi, ei, gi, r, t + 1, hi, rowscale[i], inv_scale, threshold);
        gi[t] = dtarget[i];
        r[t] += dtarget[i] * cos_t[i];
      } else {
        grad_segment<Filtered>(xi, ei, gi, r, lo, hi, rowscale[i], inv_scale, threshold);
      }
    }
  }
}

MXReturnValue softmax_grad_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                   const OpResource&) {
  const int64_t n = (*in)[0].shape[0], s = (*in)[0].shape[1];
  const float* x = (*in)[0].data<float>();
  const float* e = (*in)[1].data<float>();
  const float* rowscale = (*in)[2].data<float>();
  const int64_t* tgt = (*in)[3].data<int64_t>();
  const float* dtarget = (*in)[4].data<float>();
  const float* cos_t = (*in)[5].data<float>();
  float* g = (*out)[0].data<float>();
  float* r = (*out)[1].data<float>();
  if (!finite_attrs("pfc_softmax_grad", attrs, {"scale", "threshold"})) return mxnet::ext::MX_FAIL;
  const float inv_scale = 1.0f / attr_float(attrs, "scale", 1.0f);
  const float threshold = attr_float(attrs, "threshold", 0.0f);
  if (attr_flag(attrs, "filter")) {
    softmax_grad_columns<true>(x, e, rowscale, tgt, dtarget, cos_t, g, r, n, s, inv_scale, threshold);
  } else {
    softmax_grad_columns<false>(x, e, rowscale, tgt, dtarget, cos_t, g, r, n, s, inv_scale, threshold);
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue softmax_grad_shape(const Attrs&, Shapes* in, Shapes* out) {
  if ((*in)[0].size() != 2 || (*in)[1] != (*in)[0]) return fail("pfc_softmax_grad: logits and expo must be (N, S)");
  const unsigned n = (*in)[0][0];
  for (int k = 2; k < 6; ++k)
    if ((*in)[k] != std::vector<unsigned>{n}) return fail("pfc_softmax_grad: row vectors must be (N,)");
  (*out)[0] = (*in)[0];
  (*out)[1] = {(*in)[0][1]};
  return mxnet::ext::MX_SUCCESS;
}

// ---------------------------------------------------------------- sparse_sgd
// Row j of the center gradient is g = a[j] * grad[j] + b[j] * weight[index[j]]: the product
// result and the norm terms are combined here, inside the update's own pass over the rows.
template <bool Momentum>
void sparse_sgd_rows(const float* wp, const float* gp, const float* a, const float* b, float* mp, const int64_t* ip,
                     float* op, int64_t s, int64_t d, float lr, float mu, float rate) {
  const float decay = 1.0f - rate;
#pragma omp parallel for schedule(static) num_threads(threads())
  for (int64_t j = 0; j < s; ++j) {
    const int64_t row = ip[j];
    const float* wr = wp + row * d;
    const float* gr = gp + j * d;
    float* mr = mp + row * d;
    float* orow = op + row * d;
    const float aj = a[j], bj = b[j];
#pragma omp simd
    for (int64_t k = 0; k < d; ++k) {
      const float g = aj * gr[k] + bj * wr[k];
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

MXReturnValue sparse_sgd_forward(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                                 const OpResource&) {
  const int64_t c = (*in)[0].shape[0], d = (*in)[0].shape[1], s = (*in)[3].shape[0];
  const float* wp = (*in)[0].data<float>();
  const float* gp = (*in)[1].data<float>();
  float* mp = (*in)[2].data<float>();
  const int64_t* ip = (*in)[3].data<int64_t>();
  const float* a = (*in)[4].data<float>();
  const float* b = (*in)[5].data<float>();
  float* op = (*out)[0].data<float>();
  if (!finite_attrs("pfc_sparse_sgd", attrs, {"lr", "momentum", "wd"})) return mxnet::ext::MX_FAIL;
  const float lr = attr_float(attrs, "lr", 0.0f), mu = attr_float(attrs, "momentum", 0.0f);
  const float rate = lr * attr_float(attrs, "wd", 0.0f);  // as MXNet: lr·wd rounded once
  for (int64_t j = 0; j < s; ++j)
    if (ip[j] < 0 || ip[j] >= c)
      return fail("pfc_sparse_sgd: index " + std::to_string(ip[j]) + " is outside [0, " + std::to_string(c) + ")");
  if (op != wp) std::memcpy(op, wp, sizeof(float) * c * d);  // a separate output: untouched rows are the input's
  if (mu != 0.0f) {
    sparse_sgd_rows<true>(wp, gp, a, b, mp, ip, op, s, d, lr, mu, rate);
  } else {
    sparse_sgd_rows<false>(wp, gp, a, b, mp, ip, op, s, d, lr, mu, rate);
  }
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue sparse_sgd_shape(const Attrs&, Shapes* in, Shapes* out) {
  const auto& w = (*in)[0];
  const std::vector<unsigned> rows{(*in)[1].empty() ? 0u : (*in)[1][0]};
  if (w.size() != 2 || (*in)[2] != w || (*in)[1].size() != 2 || (*in)[1][1] != w[1] || (*in)[3] != rows ||
      (*in)[4] != rows || (*in)[5] != rows)
    return fail("pfc_sparse_sgd: need weight (C, D), grad (S, D), mom (C, D), index (S,), a (S,), b (S,)");
  (*out)[0] = w;
  return mxnet::ext::MX_SUCCESS;
}

MXReturnValue mutate_mom(const Attrs&, std::vector<int>* inputs) {
  inputs->push_back(2);
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
constexpr char kSigSoftmax[] = "fif";
constexpr char kSigGrad[] = "fffiff";
constexpr char kSigSgd[] = "fffiff";

}  // namespace

REGISTER_OP(pfc_gather_normalize)
    .setParseAttrs(parse_counts<2, 2>)
    .setInferType(check_types<kSigGather>)
    .setInferShape(gather_normalize_shape)
    .setForward(gather_normalize_forward, "cpu");

REGISTER_OP(pfc_margin_softmax)
    .setParseAttrs(parse_counts<3, 3>)
    .setInferType(check_types<kSigSoftmax>)
    .setInferShape(margin_softmax_shape)
    .setForward(margin_softmax_forward, "cpu");

REGISTER_OP(pfc_softmax_grad)
    .setParseAttrs(parse_counts<6, 2>)
    .setInferType(check_types<kSigGrad>)
    .setInferShape(softmax_grad_shape)
    .setForward(softmax_grad_forward, "cpu");

REGISTER_OP(pfc_sparse_sgd)
    .setParseAttrs(parse_counts<6, 1>)
    .setInferType(check_types<kSigSgd>)
    .setInferShape(sparse_sgd_shape)
    .setMutateInputs(mutate_mom)
    .setForward(sparse_sgd_forward, "cpu");

MXReturnValue initialize(int version) {
  if (version >= 10900) return mxnet::ext::MX_SUCCESS;
  MX_ERROR_MSG << "pfc kernels need MXNet >= 1.9, got version code " << version;
  return mxnet::ext::MX_FAIL;
}
