/* Decode attention straight from the paged KV cache: every sequence's keys and values are read
 * once, where they lie, instead of being gathered into a contiguous copy first.
 *
 * Layout (one layer): k_cache, v_cache [kv_heads][num_blocks][block_size][head_dim], fp32.
 * q, out [batch][heads][head_dim]; tables [batch][max_blocks]; lens [batch] (context length,
 * the new token included). Rows run in parallel on OpenMP threads; linked against the same
 * libgomp.so.1 that torch loads, they share torch's thread pool instead of fighting it. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int decode_row(const float *q, const float *k_cache, const float *v_cache,
                      const int32_t *table, int len, float *out, int heads, int kv_heads,
                      int head_dim, int num_blocks, int block_size, float scale) {
    const int group = heads / kv_heads;
    const int64_t head_stride = (int64_t)num_blocks * block_size * head_dim;
    float *scores = malloc(sizeof(float) * group * len);
    if (!scores) return -1;
    {
        for (int h = 0; h < kv_heads; h++) {
            const float *kh = k_cache + h * head_stride;
            const float *vh = v_cache + h * head_stride;
            const float *qh = q + (int64_t)h * group * head_dim;
            float *oh = out + (int64_t)h * group * head_dim;
            for (int t = 0; t < len; t++) {
                const float *kt = kh + ((int64_t)table[t / block_size] * block_size
                                        + t % block_size) * head_dim;
                for (int g = 0; g < group; g++) {
                    const float *qg = qh + g * head_dim;
                    float s = 0.0f;
                    for (int d = 0; d < head_dim; d++) s += qg[d] * kt[d];
                    scores[g * len + t] = s * scale;
                }
            }
            for (int g = 0; g < group; g++) {
                float *sg = scores + g * len;
                float mx = sg[0];
                for (int t = 1; t < len; t++) mx = sg[t] > mx ? sg[t] : mx;
                float sum = 0.0f;
                for (int t = 0; t < len; t++) { sg[t] = expf(sg[t] - mx); sum += sg[t]; }
                const float inv = 1.0f / sum;
                for (int t = 0; t < len; t++) sg[t] *= inv;
            }
            memset(oh, 0, sizeof(float) * group * head_dim);
            for (int t = 0; t < len; t++) {
                const float *vt = vh + ((int64_t)table[t / block_size] * block_size
                                        + t % block_size) * head_dim;
                for (int g = 0; g < group; g++) {
                    const float p = scores[g * len + t];
                    float *og = oh + g * head_dim;
                    for (int d = 0; d < head_dim; d++) og[d] += p * vt[d];
                }
            }
        }
    }
    free(scores);
    return 0;
}

int paged_decode_attention(const float *q, const float *k_cache, const float *v_cache,
                           const int32_t *tables, const int32_t *lens, float *out, int batch,
                           int heads, int kv_heads, int head_dim, int num_blocks, int block_size,
                           int max_blocks, float scale) {
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(| : failed)
    for (int b = 0; b < batch; b++) {
        const int64_t row = (int64_t)b * heads * head_dim;
        failed |= decode_row(q + row, k_cache, v_cache, tables + (int64_t)b * max_blocks, lens[b],
                             out + row, heads, kv_heads, head_dim, num_blocks, block_size, scale);
    }
    return failed ? -1 : 0;
}
