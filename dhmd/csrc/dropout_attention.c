/* Attention with hashed attention dropout, forward and backward, fused row by row (float32, CPU).
 *
 * Built and loaded at run time by dhmd/native.py (the system C compiler, -O3 -march=native; plain C,
 * no Python or torch headers), called from dhmd/fused_attention.py through ctypes over a block of
 * (batch x heads) rows per thread.
 *
 * Why: at the paper's settings (head size 5, sequences of 50 to 500 frames) attention is a stream of
 * (T_q x T_k) matrices with only 5 multiply-adds an entry.  Done with torch's bmm and softmax, every
 * entry makes about ten round trips to memory (scores, softmax, mask, output; again in backward);
 * here each query's row of T_k scores lives in a few kilobytes of L1 cache while it is scored,
 * normalised, dropped and applied, and no T_q x T_k matrix ever exists.
 *
 * Mathematics (the same as dhmd/dropout_attention.py's chunked path, whose tests define it):
 *   s_ij  = q_i . k_j + bias_j                 (q already scaled by 1/sqrt(d); bias 0 or -inf)
 *   p_ij  = softmax_j(s_ij),  lse_i = log sum_j exp(s_ij)
 *   out_i = sum_j p_ij keep_ij v'_j            (v' = v / keep probability)
 *   keep_ij: top 16 bits of SplitMix64(key + n * GAMMA) >= thr, n = (row * T_q + i) * T_k + j,
 *            exactly dhmd/keep_hash.py's mask (the last xor-shift of SplitMix64 does not touch the top
 *            16 bits, so it is left out).
 * Backward, flash-attention style, from lse and delta_i = dO_i . out_i:
 *   dp_ij = keep_ij (dO_i . v'_j),  ds_ij = p_ij (dp_ij - delta_i)
 *   dq_i  = sum_j ds_ij k_j,  dk_j += ds_ij q_i,  dv_j += p_ij keep_ij dO_i / keep probability
 * k, v and their gradients are laid out (row, d, T_k) so that every loop below runs over keys, with
 * unit stride, and vectorises.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GAMMA 0x9E3779B97F4A7C15ULL
#define MIX1 0xBF58476D1CE4E5B9ULL
#define MIX2 0x94D049BB133111EBULL

/* the kept / dropped test of one entry: its hash's top 16 bits against thr */
static inline int kept(uint64_t z, uint32_t thr) {
    z = (z ^ (z >> 30)) * MIX1;
    z = (z ^ (z >> 27)) * MIX2;
    return (uint32_t)(z >> 48) >= thr;
}

/* exp(x) for the x <= 0 of a softmax (x - max or x - lse), vectorisable: Cephes' expf (range
 * reduction by ln 2, degree-7 polynomial, 2^n from the exponent bits); below -87 (and for -inf, a
 * masked key) it is 0, where float32 has only denormals left. */
static inline float exp_neg(float x) {
    float xc = x > -87.0f ? x : -87.0f;
    float fx = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - fx * 0.693359375f;
    r = r + fx * 2.12194440e-4f;
    float y = 1.9875691500e-4f;
    y = y * r + 1.3981999507e-3f;
    y = y * r + 8.3334519073e-3f;
    y = y * r + 4.1665795894e-2f;
    y = y * r + 1.6666665459e-1f;
    y = y * r + 5.0000001201e-1f;
    y = y * (r * r) + r + 1.0f;
    int32_t n = (int32_t)fx;
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x > -87.0f ? y * scale : 0.0f;
}

/* s[j] = bias[j] + sum_c a[c] * m[c * tk + j] */
static inline void scores(float *restrict s, const float *restrict a, const float *restrict m,
                          const float *restrict bias, int64_t tk, int64_t d) {
    if (bias)
        memcpy(s, bias, (size_t)tk * sizeof *s);
    else
        memset(s, 0, (size_t)tk * sizeof *s);
    for (int64_t c = 0; c < d; c++) {
        const float ac = a[c];
        const float *restrict mc = m + c * tk;
#pragma omp simd
        for (int64_t j = 0; j < tk; j++)
            s[j] += ac * mc[j];
    }
}

/* rows [r0, r1): out (R, tq, d), lse (R, tq) from q (R, tq, d), kT and vT (R, d, tk), bias (R, tk)
 * or NULL.  Returns 0, or -1 when scratch memory could not be had. */
int dhmd_attention_forward(int64_t r0, int64_t r1, int64_t tq, int64_t tk, int64_t d,
                           const float *q, const float *kT, const float *vT, const float *bias,
                           uint64_t key, uint32_t thr, float *out, float *lse) {
    float *s = malloc(2 * (size_t)tk * sizeof *s);
    if (!s)
        return -1;
    float *w = s + tk;
    for (int64_t r = r0; r < r1; r++) {
        const float *K = kT + r * d * tk, *V = vT + r * d * tk;
        const float *B = bias ? bias + r * tk : NULL;
        for (int64_t i = 0; i < tq; i++) {
            const int64_t row = r * tq + i;
            scores(s, q + row * d, K, B, tk, d);
            float m = -INFINITY;
#pragma omp simd reduction(max : m)
            for (int64_t j = 0; j < tk; j++)
                m = s[j] > m ? s[j] : m;
            const uint64_t z0 = key + (uint64_t)(row * tk) * GAMMA;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < tk; j++) {
                const float e = exp_neg(s[j] - m);
                sum += e;
                w[j] = kept(z0 + (uint64_t)j * GAMMA, thr) ? e : 0.0f;
            }
            const float inv = 1.0f / sum;
            for (int64_t c = 0; c < d; c++) {
                const float *restrict vc = V + c * tk;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t j = 0; j < tk; j++)
                    acc += w[j] * vc[j];
                out[row * d + c] = acc * inv;
            }
            lse[row] = m + logf(sum);
        }
    }
    free(s);
    return 0;
}

/* rows [r0, r1): dq (R, tq, d), dkT and dvT (R, d, tk) (overwritten) from the forward's inputs, its
 * out and lse, and dout (R, tq, d); dv_scale = 1 / keep probability.  Returns 0 or -1 (no memory). */
int dhmd_attention_backward(int64_t r0, int64_t r1, int64_t tq, int64_t tk, int64_t d,
                            const float *q, const float *kT, const float *vT, const float *bias,
                            uint64_t key, uint32_t thr, const float *out, const float *lse,
                            const float *dout, float dv_scale, float *dq, float *dkT, float *dvT) {
    float *s = malloc(3 * (size_t)tk * sizeof *s);
    if (!s)
        return -1;
    float *dp = s + tk, *w = s + 2 * tk;
    for (int64_t r = r0; r < r1; r++) {
        const float *K = kT + r * d * tk, *V = vT + r * d * tk;
        const float *B = bias ? bias + r * tk : NULL;
        float *dK = dkT + r * d * tk, *dV = dvT + r * d * tk;
        memset(dK, 0, (size_t)(d * tk) * sizeof *dK);
        memset(dV, 0, (size_t)(d * tk) * sizeof *dV);
        for (int64_t i = 0; i < tq; i++) {
            const int64_t row = r * tq + i;
            const float *qi = q + row * d, *gi = dout + row * d;
            float delta = 0.0f;
            for (int64_t c = 0; c < d; c++)
                delta += gi[c] * out[row * d + c];
            scores(s, qi, K, B, tk, d);
            scores(dp, gi, V, NULL, tk, d);
            const float l = lse[row];
            const uint64_t z0 = key + (uint64_t)(row * tk) * GAMMA;
#pragma omp simd
            for (int64_t j = 0; j < tk; j++) {
                const float p = exp_neg(s[j] - l);
                const float pk = kept(z0 + (uint64_t)j * GAMMA, thr) ? p : 0.0f;
                w[j] = pk;
                s[j] = pk * dp[j] - p * delta;          /* ds */
            }
            for (int64_t c = 0; c < d; c++) {
                const float *restrict kc = K + c * tk;
                float *restrict dkc = dK + c * tk, *restrict dvc = dV + c * tk;
                const float qc = qi[c], gc = gi[c] * dv_scale;
                float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
                for (int64_t j = 0; j < tk; j++) {
                    acc += s[j] * kc[j];
                    dkc[j] += s[j] * qc;
                    dvc[j] += w[j] * gc;
                }
                dq[row * d + c] = acc;
            }
        }
    }
    free(s);
    return 0;
}
