// See ckernels.h. Scalar code is the reference; the AVX2 functions carry their
// own target attribute so the file builds for baseline x86-64 and dispatches at
// run time.
#define _GNU_SOURCE
#include "ckernels.h"
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// ---------------------------------------------------------------- fp16 / bf16

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else { // subnormal
            float f = (float)man * (1.0f / 16777216.0f);
            uint32_t fb; memcpy(&fb, &f, 4); bits = sign | fb;
        }
    } else if (exp == 31) bits = sign | 0x7F800000u | (man << 13);
    else bits = sign | ((exp + 112) << 23) | (man << 13);
    float f; memcpy(&f, &bits, 4); return f;
}
static inline float bf16_to_f32(uint16_t h) { uint32_t b = (uint32_t)h << 16; float f; memcpy(&f, &b, 4); return f; }
static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

int ck_block_values(int dtype) {
    switch (dtype) {
    case CK_F32: case CK_F16: case CK_BF16: return 1;
    case CK_Q4_0: case CK_Q4_1: case CK_Q4_1_SPLIT: case CK_Q5_0: case CK_Q5_1: case CK_Q8_0: case CK_IQ4_NL: return 32;
    case CK_Q2_K: case CK_Q3_K: case CK_Q4_K: case CK_Q5_K: case CK_Q6_K: case CK_IQ4_XS: return 256;
    default: return 0;
    }
}

int ck_block_bytes(int dtype) {
    switch (dtype) {
    case CK_F32: return 4;
    case CK_F16: case CK_BF16: return 2;
    case CK_Q4_0: return 18;                 // d, 16 bytes of nibbles
    case CK_Q4_1: case CK_Q4_1_SPLIT: return 20; // d, m, nibbles
    case CK_Q5_0: return 22;                 // d, qh[4], qs[16]
    case CK_Q5_1: return 24;                 // d, m, qh[4], qs[16]
    case CK_Q8_0: return 34;                 // d, 32 × int8
    case CK_IQ4_NL: return 18;               // d, qs[16] (indices into kvalues_iq4nl)
    case CK_Q2_K: return 84;                 // scales[16], qs[64], d, dmin
    case CK_Q3_K: return 110;                // hmask[32], qs[64], scales[12], d
    case CK_Q4_K: return 144;                // d, dmin, scales[12], qs[128]
    case CK_Q5_K: return 176;                // d, dmin, scales[12], qh[32], qs[128]
    case CK_Q6_K: return 210;                // ql[128], qh[64], scales[16] (int8), d
    case CK_IQ4_XS: return 136;              // d, scales_h (u16), scales_l[4], qs[128]
    default: return 0;
    }
}

size_t ck_row_bytes(int dtype, int cols) {
    int values = ck_block_values(dtype);
    return values ? (size_t)cols / values * ck_block_bytes(dtype) : 0;
}

// ------------------------------------------------- blocks of the other formats
// One block to fp32, written as ggml's dequantize_row_* (ggml-quants.c) writes it, so that
// the values are the same ones llama.cpp and the gguf package compute. Always inlined: the
// SIMD paths below call them inside their own target attribute, where the compiler
// vectorizes the loops for that instruction set.

#define INLINE static inline __attribute__((always_inline))

static const int8_t kvalues_iq4nl[16] = { -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113 };

INLINE void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m) {
    if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
    else { *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4); *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4); }
}

INLINE void dq_q5_0(const uint8_t *b, float *y) {
    float d = f16_to_f32(load_u16(b));
    uint32_t qh; memcpy(&qh, b + 2, 4);
    const uint8_t *qs = b + 6;
    for (int j = 0; j < 16; j++) {
        int x0 = ((qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10)) - 16;
        int x1 = ((qs[j] >> 4) | ((qh >> (j + 12)) & 0x10)) - 16;
        y[j] = x0 * d; y[j + 16] = x1 * d;
    }
}

INLINE void dq_q5_1(const uint8_t *b, float *y) {
    float d = f16_to_f32(load_u16(b)), m = f16_to_f32(load_u16(b + 2));
    uint32_t qh; memcpy(&qh, b + 4, 4);
    const uint8_t *qs = b + 8;
    for (int j = 0; j < 16; j++) {
        int x0 = (qs[j] & 0x0F) | (((qh >> j) << 4) & 0x10);
        int x1 = (qs[j] >> 4) | ((qh >> (j + 12)) & 0x10);
        y[j] = x0 * d + m; y[j + 16] = x1 * d + m;
    }
}

INLINE void dq_iq4_nl(const uint8_t *b, float *y) {
    float d = f16_to_f32(load_u16(b));
    const uint8_t *qs = b + 2;
    for (int j = 0; j < 16; j++) { y[j] = d * kvalues_iq4nl[qs[j] & 0xF]; y[j + 16] = d * kvalues_iq4nl[qs[j] >> 4]; }
}

INLINE void dq_q2_K(const uint8_t *b, float *y) {
    const uint8_t *sc = b, *q = b + 16;
    float d = f16_to_f32(load_u16(b + 80)), min = f16_to_f32(load_u16(b + 82));
    int is = 0;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                uint8_t s = sc[is++];
                float dl = d * (s & 0xF), ml = min * (s >> 4);
                for (int l = 0; l < 16; l++) *y++ = dl * ((q[l + 16 * half] >> shift) & 3) - ml;
            }
        }
        q += 32;
    }
}

INLINE void dq_q3_K(const uint8_t *b, float *y) {
    const uint8_t *hm = b, *q = b + 32;
    float d_all = f16_to_f32(load_u16(b + 108));
    uint32_t aux[4];
    memcpy(aux, b + 96, 12);
    uint32_t tmp = aux[2];
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    int8_t scales[16]; memcpy(scales, aux, 16);
    int is = 0; uint8_t m = 1;
    for (int n = 0; n < 256; n += 128) {
        for (int shift = 0; shift < 8; shift += 2) {
            for (int half = 0; half < 2; half++) {
                float dl = d_all * (scales[is++] - 32);
                for (int l = 0; l < 16; l++) {
                    int i = l + 16 * half;
                    *y++ = dl * (((q[i] >> shift) & 3) - ((hm[i] & m) ? 0 : 4));
                }
            }
            m <<= 1;
        }
        q += 32;
    }
}

INLINE void dq_q4_K(const uint8_t *b, float *y) {
    float d = f16_to_f32(load_u16(b)), min = f16_to_f32(load_u16(b + 2));
    const uint8_t *scales = b + 4, *q = b + 16;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, q += 32) {
        uint8_t sc, m;
        get_scale_min_k4(is, scales, &sc, &m);
        float d1 = d * sc, m1 = min * m;
        get_scale_min_k4(is + 1, scales, &sc, &m);
        float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; l++) *y++ = d1 * (q[l] & 0xF) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * (q[l] >> 4) - m2;
    }
}

INLINE void dq_q5_K(const uint8_t *b, float *y) {
    float d = f16_to_f32(load_u16(b)), min = f16_to_f32(load_u16(b + 2));
    const uint8_t *scales = b + 4, *qh = b + 16, *ql = b + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int j = 0, is = 0; j < 256; j += 64, is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
        uint8_t sc, m;
        get_scale_min_k4(is, scales, &sc, &m);
        float d1 = d * sc, m1 = min * m;
        get_scale_min_k4(is + 1, scales, &sc, &m);
        float d2 = d * sc, m2 = min * m;
        for (int l = 0; l < 32; l++) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
        for (int l = 0; l < 32; l++) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
    }
}

INLINE void dq_q6_K(const uint8_t *b, float *y) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = f16_to_f32(load_u16(b + 208));
    for (int n = 0; n < 256; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = (int8_t)((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = (int8_t)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            y[l] = d * sc[is] * q1;
            y[l + 32] = d * sc[is + 2] * q2;
            y[l + 64] = d * sc[is + 4] * q3;
            y[l + 96] = d * sc[is + 6] * q4;
        }
    }
}

INLINE void dq_iq4_xs(const uint8_t *b, float *y) {
    float d = f16_to_f32(load_u16(b));
    uint16_t scales_h = load_u16(b + 2);
    const uint8_t *scales_l = b + 4, *qs = b + 8;
    for (int ib = 0; ib < 8; ib++, y += 32, qs += 16) {
        int ls = ((scales_l[ib / 2] >> 4 * (ib % 2)) & 0xF) | (((scales_h >> 2 * ib) & 3) << 4);
        float dl = d * (ls - 32);
        for (int j = 0; j < 16; j++) { y[j] = dl * kvalues_iq4nl[qs[j] & 0xF]; y[j + 16] = dl * kvalues_iq4nl[qs[j] >> 4]; }
    }
}

// True for the formats handled block by block through dequant_block (everything but the
// plain floats and the three types with hand-written kernels).
static inline int is_block_format(int dtype) {
    switch (dtype) {
    case CK_Q5_0: case CK_Q5_1: case CK_IQ4_NL: case CK_Q2_K: case CK_Q3_K: case CK_Q4_K: case CK_Q5_K:
    case CK_Q6_K: case CK_IQ4_XS: return 1;
    default: return 0;
    }
}

INLINE void dequant_block(int dtype, const uint8_t *b, float *y) {
    switch (dtype) {
    case CK_Q5_0: dq_q5_0(b, y); break;
    case CK_Q5_1: dq_q5_1(b, y); break;
    case CK_IQ4_NL: dq_iq4_nl(b, y); break;
    case CK_Q2_K: dq_q2_K(b, y); break;
    case CK_Q3_K: dq_q3_K(b, y); break;
    case CK_Q4_K: dq_q4_K(b, y); break;
    case CK_Q5_K: dq_q5_K(b, y); break;
    case CK_Q6_K: dq_q6_K(b, y); break;
    case CK_IQ4_XS: dq_iq4_xs(b, y); break;
    }
}

// A whole row of a block format; `dtype` is a compile-time constant after inlining into the
// per-type callers below, so each type gets its own vectorized loop.
INLINE void dequant_blocks(int dtype, const uint8_t *row, float *dst, int cols) {
    int qk = ck_block_values(dtype), bb = ck_block_bytes(dtype);
    for (int b = 0; b < cols / qk; b++) dequant_block(dtype, row + (size_t)b * bb, dst + (size_t)b * qk);
}

// ------------------------------------------------------------------ quantizers
// fp32 to the block layouts above, following ggml's reference quantizers (ggml-quants.c:
// quantize_row_*_ref, make_qkx2_quants, make_qx_quants; no importance matrix), step for
// step, so a file Offload writes holds the blocks llama-quantize writes from the same
// fp32 values. Not a hot path: a tensor is quantized once, when a file is written.

// fp32 to fp16 bits, rounding to nearest even: ggml_compute_fp32_to_fp16.
static inline uint16_t f32_to_f16(float f) {
    float base = (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
    uint32_t w; memcpy(&w, &f, 4);
    uint32_t shl1_w = w + w, sign = w & 0x80000000u, bias = shl1_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    uint32_t bb = (bias >> 1) + 0x07800000u; float fb; memcpy(&fb, &bb, 4);
    base = fb + base;
    uint32_t bits; memcpy(&bits, &base, 4);
    uint32_t nonsign = ((bits >> 13) & 0x00007C00u) + (bits & 0x00000FFFu);
    return (uint16_t)((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}
static inline void store_u16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

#define QMIN(a, b) ((a) < (b) ? (a) : (b))
#define QMAX(a, b) ((a) > (b) ? (a) : (b))
#define GROUP_MAX_EPS 1e-15f

static inline int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i; memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

static void q_q8_0(const float *x, uint8_t *b) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = QMAX(amax, fabsf(x[j]));
    float d = amax / 127, id = d ? 1.0f / d : 0.0f;
    store_u16(b, f32_to_f16(d));
    for (int j = 0; j < 32; j++) b[2 + j] = (uint8_t)(int8_t)roundf(x[j] * id);
}

// ggml's quantize_row_q4_0_ref / q4_1_ref.
static void q_q4_0(const float *x, uint8_t *b) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++) if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    float d = max / -8, id = d ? 1.0f / d : 0.0f;
    store_u16(b, f32_to_f16(d));
    for (int j = 0; j < 16; j++) {
        float x0 = x[j] * id, x1 = x[j + 16] * id;   // two statements, as ggml's (no fused multiply-add)
        uint8_t xi0 = QMIN(15, (int8_t)(x0 + 8.5f)), xi1 = QMIN(15, (int8_t)(x1 + 8.5f));
        b[2 + j] = xi0 | (uint8_t)(xi1 << 4);
    }
}

static void q_q4_1(const float *x, uint8_t *b) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) { if (x[j] < min) min = x[j]; if (x[j] > max) max = x[j]; }
    float d = (max - min) / 15, id = d ? 1.0f / d : 0.0f;
    store_u16(b, f32_to_f16(d)); store_u16(b + 2, f32_to_f16(min));
    for (int j = 0; j < 16; j++) {
        float x0 = (x[j] - min) * id, x1 = (x[j + 16] - min) * id;
        uint8_t xi0 = QMIN(15, (int8_t)(x0 + 0.5f)), xi1 = QMIN(15, (int8_t)(x1 + 0.5f));
        b[4 + j] = xi0 | (uint8_t)(xi1 << 4);
    }
}

static void q_q5_0(const float *x, uint8_t *b) {
    float amax = 0, max = 0;
    for (int j = 0; j < 32; j++) if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
    float d = max / -16, id = d ? 1.0f / d : 0.0f;
    store_u16(b, f32_to_f16(d));
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        uint8_t xi0 = QMIN(31, (int8_t)(x[j] * id + 16.5f)), xi1 = QMIN(31, (int8_t)(x[j + 16] * id + 16.5f));
        b[6 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 & 0x10u) >> 4) << j;
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    memcpy(b + 2, &qh, 4);
}

static void q_q5_1(const float *x, uint8_t *b) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < 32; j++) { if (x[j] < min) min = x[j]; if (x[j] > max) max = x[j]; }
    float d = (max - min) / 31, id = d ? 1.0f / d : 0.0f;
    store_u16(b, f32_to_f16(d)); store_u16(b + 2, f32_to_f16(min));
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        uint8_t xi0 = (uint8_t)((x[j] - min) * id + 0.5f), xi1 = (uint8_t)((x[j + 16] - min) * id + 0.5f);
        b[8 + j] = (xi0 & 0x0F) | ((xi1 & 0x0F) << 4);
        qh |= ((xi0 & 0x10u) >> 4) << j;
        qh |= ((xi1 & 0x10u) >> 4) << (j + 16);
    }
    memcpy(b + 4, &qh, 4);
}

// ggml's make_qkx2_quants: a scale and min for n values in [0, nmax], searched over nstep
// candidate scales by weighted least squares.
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L, float *the_min,
                              uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0], sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; ++i) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += weights[i]; sum_x += weights[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) { for (int i = 0; i < n; ++i) L[i] = 0; *the_min = -min; return 0.f; }
    float iscale = nmax / (max - min), scale = 1 / iscale, best_error = 0;
    for (int i = 0; i < n; ++i) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = QMAX(0, QMIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        best_error += weights[i] * diff * diff;
    }
    for (int is = 0; is <= nstep; ++is) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; ++i) {
            int l = nearest_int(iscale * (x[i] - min));
            l = QMAX(0, QMIN(nmax, l));
            Laux[i] = l;
            float w = weights[i];
            sum_l += w * l; sum_l2 += w * l * l; sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; }
            float cur_error = 0;
            for (int i = 0; i < n; ++i) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                cur_error += weights[i] * diff * diff;
            }
            if (cur_error < best_error) {
                for (int i = 0; i < n; ++i) L[i] = Laux[i];
                best_error = cur_error; scale = this_scale; min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// Q4_K (nmax 15) and Q5_K (nmax 31) share everything up to the packing of the values:
// 8 sub-blocks of 32 with 6-bit scales and mins relative to the f16 d and dmin.
static void q_k_scales_mins(const float *x, uint8_t *b, int nmax, float rmin, int nstep, uint8_t *L) {
    uint8_t Laux[32];
    float weights[32], mins[8], scales[8], max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    uint8_t *sc = b + 4;
    memset(sc, 0, 12);
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f, inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; ++j) {
        uint8_t ls = QMIN(63, (uint8_t)nearest_int(inv_scale * scales[j]));
        uint8_t lm = QMIN(63, (uint8_t)nearest_int(inv_min * mins[j]));
        if (j < 4) { sc[j] = ls; sc[j + 4] = lm; }
        else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= ((ls >> 4) << 6);
            sc[j - 0] |= ((lm >> 4) << 6);
        }
    }
    store_u16(b, f32_to_f16(max_scale / 63.f));
    store_u16(b + 2, f32_to_f16(max_min / 63.f));
    float d_all = f16_to_f32(load_u16(b)), dmin_all = f16_to_f32(load_u16(b + 2));
    for (int j = 0; j < 8; ++j) {
        uint8_t s, m;
        get_scale_min_k4(j, sc, &s, &m);
        float d = d_all * s;
        if (!d) continue;
        float dm = dmin_all * m;
        for (int ii = 0; ii < 32; ++ii) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = QMAX(0, QMIN(nmax, l));
        }
    }
}

static void q_q4_K(const float *x, uint8_t *b) {
    uint8_t L[256];
    q_k_scales_mins(x, b, 15, -1.f, 20, L);
    uint8_t *q = b + 16;
    for (int j = 0; j < 256; j += 64, q += 32)
        for (int l = 0; l < 32; ++l) q[l] = L[j + l] | (L[j + l + 32] << 4);
}

static void q_q5_K(const float *x, uint8_t *b) {
    uint8_t L[256];
    q_k_scales_mins(x, b, 31, -0.5f, 15, L);
    uint8_t *qh = b + 16, *ql = b + 48;
    memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < 256; n += 64, m1 <<= 2, m2 <<= 2, ql += 32) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = l1 | (l2 << 4);
        }
    }
}

// ggml's make_qx_quants with rmse_type 1 and no weights (what Q6_K's reference uses):
// a signed scale for n values in [-nmax, nmax), the best of 19 candidates by x²-weighted error.
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; ++i) { float ax = fabsf(x[i]); if (ax > amax) { amax = ax; max = x[i]; } }
    if (amax < GROUP_MAX_EPS) { for (int i = 0; i < n; ++i) L[i] = 0; return 0.f; }
    float iscale = -nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; ++i) {
        int l = QMAX(-nmax, QMIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = l + nmax;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l; suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; ++i) {
            int l = QMAX(-nmax, QMIN(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l; suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; ++i) L[i] = nmax + QMAX(-nmax, QMIN(nmax - 1, nearest_int(iscale * x[i])));
            scale = sumlx / suml2; best = scale * sumlx;
        }
    }
    return scale;
}

static void q_q6_K(const float *x, uint8_t *b) {
    int8_t L[256];
    float scales[16], max_scale = 0, max_abs_scale = 0;
    uint8_t *ql = b, *qh = b + 128;
    int8_t *sc = (int8_t *)(b + 192);
    for (int ib = 0; ib < 16; ++ib) {
        float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
        scales[ib] = scale;
        if (fabsf(scale) > max_abs_scale) { max_abs_scale = fabsf(scale); max_scale = scale; }
    }
    if (max_abs_scale < GROUP_MAX_EPS) { memset(b, 0, 210); return; }
    float iscale = -128.f / max_scale;
    store_u16(b + 208, f32_to_f16(1 / iscale));
    for (int ib = 0; ib < 16; ++ib) sc[ib] = (int8_t)QMIN(127, nearest_int(iscale * scales[ib]));
    float d_all = f16_to_f32(load_u16(b + 208));
    for (int j = 0; j < 16; ++j) {
        float d = d_all * sc[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ++ii) {
            int l = QMAX(-32, QMIN(31, nearest_int(x[16 * j + ii] / d)));
            L[16 * j + ii] = l + 32;
        }
    }
    for (int j = 0; j < 256; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; ++l) {
            uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF, q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
            ql[l] = q1 | (q3 << 4);
            ql[l + 32] = q2 | (q4 << 4);
            qh[l] = (L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6);
        }
    }
}

int ck_can_quantize(int dtype) {
    switch (dtype) {
    case CK_Q8_0: case CK_Q5_0: case CK_Q5_1: case CK_Q4_0: case CK_Q4_1: case CK_Q4_K: case CK_Q5_K: case CK_Q6_K:
        return 1;
    default: return 0;
    }
}

typedef struct { const float *src; int dtype; uint8_t *dst; int cols; } qz_ctx;

static void qz_task(void *p, int begin, int end, int thread) {
    (void)thread;
    const qz_ctx *c = p;
    int qk = ck_block_values(c->dtype), bb = ck_block_bytes(c->dtype), nb = c->cols / qk;
    for (int r = begin; r < end; r++) {
        const float *x = c->src + (size_t)r * c->cols;
        uint8_t *row = c->dst + (size_t)r * nb * bb;
        for (int i = 0; i < nb; i++) {
            const float *xb = x + (size_t)i * qk;
            uint8_t *b = row + (size_t)i * bb;
            switch (c->dtype) {
            case CK_Q8_0: q_q8_0(xb, b); break;
            case CK_Q5_0: q_q5_0(xb, b); break;
            case CK_Q4_0: q_q4_0(xb, b); break;
            case CK_Q4_1: q_q4_1(xb, b); break;
            case CK_Q5_1: q_q5_1(xb, b); break;
            case CK_Q4_K: q_q4_K(xb, b); break;
            case CK_Q5_K: q_q5_K(xb, b); break;
            case CK_Q6_K: q_q6_K(xb, b); break;
            }
        }
    }
}

size_t ck_quantize_rows(ck_pool *pool, const float *src, int dtype, void *dst, int rows, int cols) {
    int qk = ck_block_values(dtype);
    if (!ck_can_quantize(dtype) || qk == 0 || cols % qk != 0 || rows < 0) return 0;
    qz_ctx c = { src, dtype, dst, cols };
    ck_pool_for(pool, qz_task, &c, rows, 16);
    return (size_t)rows * ck_row_bytes(dtype, cols);
}

// ------------------------------------------------------------ scalar reference

static void dequant_row_scalar(const uint8_t *r, int dtype, float *dst, int cols) {
    switch (dtype) {
    case CK_F32: memcpy(dst, r, (size_t)cols * 4); break;
    case CK_F16: for (int i = 0; i < cols; i++) dst[i] = f16_to_f32(load_u16(r + 2 * i)); break;
    case CK_BF16: for (int i = 0; i < cols; i++) dst[i] = bf16_to_f32(load_u16(r + 2 * i)); break;
    case CK_Q8_0:
        for (int b = 0; b < cols / 32; b++) {
            const uint8_t *blk = r + b * 34; float d = f16_to_f32(load_u16(blk));
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (float)(int8_t)blk[2 + j];
        }
        break;
    case CK_Q4_0:
        for (int b = 0; b < cols / 32; b++) {
            const uint8_t *blk = r + b * 18; float d = f16_to_f32(load_u16(blk));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)((blk[2 + j] & 15) - 8);
                dst[b * 32 + j + 16] = d * (float)((blk[2 + j] >> 4) - 8);
            }
        }
        break;
    case CK_Q4_1:
        for (int b = 0; b < cols / 32; b++) {
            const uint8_t *blk = r + b * 20;
            float d = f16_to_f32(load_u16(blk)), m = f16_to_f32(load_u16(blk + 2));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)(blk[4 + j] & 15) + m;
                dst[b * 32 + j + 16] = d * (float)(blk[4 + j] >> 4) + m;
            }
        }
        break;
    default:
        dequant_blocks(dtype, r, dst, cols);
        break;
    }
}

void ck_split_q4_1(const void *src, void *dst, int rows, int cols) {
    int nb = cols / 32;
    const uint8_t *s = src;
    uint8_t *nib = dst;
    uint8_t *dp = nib + (size_t)rows * nb * 16, *mp = dp + (size_t)rows * nb * 2;
    for (size_t i = 0; i < (size_t)rows * nb; i++) {
        const uint8_t *blk = s + i * 20;
        memcpy(nib + i * 16, blk + 4, 16);
        memcpy(dp + i * 2, blk, 2);
        memcpy(mp + i * 2, blk + 2, 2);
    }
}

// One split-layout row back to the Q4_1 block layout (scalar paths only).
static void split_row_to_q4_1(const uint8_t *base, int rows, int r, int cols, uint8_t *blocks) {
    int nb = cols / 32;
    const uint8_t *nib = base + (size_t)r * nb * 16;
    const uint8_t *dp = base + (size_t)rows * nb * 16 + (size_t)r * nb * 2, *mp = dp + (size_t)rows * nb * 2;
    for (int b = 0; b < nb; b++) {
        memcpy(blocks + b * 20, dp + b * 2, 2);
        memcpy(blocks + b * 20 + 2, mp + b * 2, 2);
        memcpy(blocks + b * 20 + 4, nib + b * 16, 16);
    }
}

void ck_matvec_reference(const void *w, int dtype, float *y, int rows, const float *x, int cols) {
    float *tmp = malloc((size_t)cols * sizeof(float));
    size_t rb = ck_row_bytes(dtype, cols);
    for (int r = 0; r < rows; r++) {
        dequant_row_scalar((const uint8_t *)w + rb * r, dtype, tmp, cols);
        double s = 0;
        for (int c = 0; c < cols; c++) s += (double)tmp[c] * x[c];
        y[r] = (float)s;
    }
    free(tmp);
}

// Scalar fast-path stand-in: dot of one stored row with n inputs.
static void dot_rows_scalar(const uint8_t *row, int dtype, const float *x, int n, int cols, float *tmp,
                            float *out, int out_stride) {
    dequant_row_scalar(row, dtype, tmp, cols);
    for (int k = 0; k < n; k++) {
        const float *xk = x + (size_t)k * cols;
        float s = 0;
        for (int c = 0; c < cols; c++) s += tmp[c] * xk[c];
        out[(size_t)k * out_stride] = s;
    }
}

// ---------------------------------------------------------------------- AVX2

#if defined(__x86_64__)
#define AVX2 __attribute__((target("avx2,fma,f16c")))

// Decode reads every weight once per token from memory (a 135M model's 90 MB is far
// beyond the caches), and the hardware prefetcher alone kept one core at ~8.5 GB/s, half
// of what the kernel computes in cache. Asking for the line PREFETCH_AHEAD bytes ahead
// of the one in use (rows are contiguous, so this runs into the next rows) doubled it:
// 2.3 -> 1.25 ns per 32-weight block on one thread, 1.6 -> 0.85 on two (BENCHMARKS.md).
// A prefetch past the end of a matrix is harmless: it never faults.
#define PREFETCH_AHEAD 2048
#define PREFETCH(p) _mm_prefetch((const char *)(p) + PREFETCH_AHEAD, _MM_HINT_T0)

AVX2 static inline float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
}

AVX2 static inline float h2f(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }

// 32 unsigned nibbles of a q4 block as four vectors of 8 floats (elements 0..31).
AVX2 static inline void nibbles(const uint8_t *q, __m256 v[4]) {
    __m128i b = _mm_loadu_si128((const __m128i *)q);
    __m128i lo = _mm_and_si128(b, _mm_set1_epi8(15));
    __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
    v[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    v[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    v[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    v[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}
AVX2 static inline void bytes_i8(const uint8_t *q, __m256 v[4]) {
    for (int i = 0; i < 4; i++)
        v[i] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8 * i))));
}

// acc + d · (q · x) for one 32-value block: the step every quantized type shares.
AVX2 static inline __m256 block_fma_avx2(const __m256 q[4], __m256 d, const float *xb, __m256 acc) {
    __m256 s = _mm256_mul_ps(q[0], _mm256_loadu_ps(xb));
    s = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xb + 8), s);
    s = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xb + 16), s);
    s = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xb + 24), s);
    return _mm256_fmadd_ps(d, s, acc);
}

// Dot products of one stored row with n inputs (n ≤ 8), written to out[k * out_stride].
// xsum[k * nb + b] holds the sum of block b of input k (used by Q4_1's min term).
AVX2 static void dot_rows_blocks_avx2(const uint8_t *row, int dtype, const float *x, int n, int cols,
                                      float *out, int out_stride);
AVX2 static void dot_rows_avx2(const uint8_t *row, int dtype, const float *x, int n, int cols,
                               const float *xsum, float *out, int out_stride) {
    if (is_block_format(dtype)) { dot_rows_blocks_avx2(row, dtype, x, n, cols, out, out_stride); return; }
    int nb = cols / 32;
    __m256 acc[8];
    float macc[8] = {0};
    for (int k = 0; k < n; k++) acc[k] = _mm256_setzero_ps();
    switch (dtype) {
    case CK_Q4_1:
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 20;
            PREFETCH(blk);
            __m256 q[4]; nibbles(blk + 4, q);
            __m256 d = _mm256_set1_ps(h2f(blk)); float m = h2f(blk + 2);
            for (int k = 0; k < n; k++) {
                acc[k] = block_fma_avx2(q, d, x + (size_t)k * cols + b * 32, acc[k]);
                macc[k] += m * xsum[k * nb + b];
            }
        }
        break;
    case CK_Q4_0:
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 18;
            PREFETCH(blk);
            __m256 q[4]; nibbles(blk + 2, q);
            __m256 eight = _mm256_set1_ps(8.0f);
            for (int i = 0; i < 4; i++) q[i] = _mm256_sub_ps(q[i], eight);
            __m256 d = _mm256_set1_ps(h2f(blk));
            for (int k = 0; k < n; k++) {
                acc[k] = block_fma_avx2(q, d, x + (size_t)k * cols + b * 32, acc[k]);
            }
        }
        break;
    case CK_Q8_0:
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 34;
            PREFETCH(blk);
            __m256 q[4]; bytes_i8(blk + 2, q);
            __m256 d = _mm256_set1_ps(h2f(blk));
            for (int k = 0; k < n; k++) {
                acc[k] = block_fma_avx2(q, d, x + (size_t)k * cols + b * 32, acc[k]);
            }
        }
        break;
    case CK_F32: {
        const float *w = (const float *)row;
        int c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m256 wv = _mm256_loadu_ps(w + c);
            for (int k = 0; k < n; k++) acc[k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)k * cols + c), acc[k]);
        }
        for (; c < cols; c++) for (int k = 0; k < n; k++) macc[k] += w[c] * x[(size_t)k * cols + c];
        break;
    }
    case CK_F16: case CK_BF16: {
        int c = 0;
        for (; c + 8 <= cols; c += 8) {
            __m128i h = _mm_loadu_si128((const __m128i *)(row + 2 * c));
            __m256 wv = dtype == CK_F16 ? _mm256_cvtph_ps(h)
                : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            for (int k = 0; k < n; k++) acc[k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (size_t)k * cols + c), acc[k]);
        }
        for (; c < cols; c++) {
            float wv = dtype == CK_F16 ? f16_to_f32(load_u16(row + 2 * c)) : bf16_to_f32(load_u16(row + 2 * c));
            for (int k = 0; k < n; k++) macc[k] += wv * x[(size_t)k * cols + c];
        }
        break;
    }
    }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = hsum256(acc[k]) + macc[k];
}

// The block formats (Q5_*, K-quants, IQ4_*) on AVX2, and prefill's dequantization of the types
// without a hand-written AVX-512 dequantizer: each block is dequantized by the plain code above,
// vectorized by the compiler under the caller's target (AVX2 dot products: into a buffer in L1,
// then multiplied with the n inputs). One switch per row, so each type runs its own loop.
#define BLOCK_ROW_CASES(DQ) \
    case CK_Q5_0: DQ(dq_q5_0, 32, 22); break; \
    case CK_Q5_1: DQ(dq_q5_1, 32, 24); break; \
    case CK_IQ4_NL: DQ(dq_iq4_nl, 32, 18); break; \
    case CK_Q2_K: DQ(dq_q2_K, 256, 84); break; \
    case CK_Q3_K: DQ(dq_q3_K, 256, 110); break; \
    case CK_Q4_K: DQ(dq_q4_K, 256, 144); break; \
    case CK_Q5_K: DQ(dq_q5_K, 256, 176); break; \
    case CK_Q6_K: DQ(dq_q6_K, 256, 210); break; \
    case CK_IQ4_XS: DQ(dq_iq4_xs, 256, 136); break;

#define DEQUANT_ROW(fn, QK, BB) \
    for (int b = 0; b < cols / QK; b++) fn(row + (size_t)b * BB, dst + (size_t)b * QK)

AVX2 static void dequant_row_blocks_avx2(const uint8_t *row, int dtype, float *dst, int cols) {
    switch (dtype) { BLOCK_ROW_CASES(DEQUANT_ROW) }
}

#define DOT_BLOCKS_AVX2(fn, QK, BB) \
    for (int b = 0; b < cols / QK; b++) { \
        const uint8_t *blk = row + (size_t)b * BB; \
        PREFETCH(blk); \
        fn(blk, t); \
        for (int k = 0; k < n; k++) { \
            const float *xb = x + (size_t)k * cols + b * QK; \
            for (int i = 0; i < QK; i += 16) { \
                acc[k] = _mm256_fmadd_ps(_mm256_load_ps(t + i), _mm256_loadu_ps(xb + i), acc[k]); \
                acc2[k] = _mm256_fmadd_ps(_mm256_load_ps(t + i + 8), _mm256_loadu_ps(xb + i + 8), acc2[k]); \
            } \
        } \
    }

AVX2 static void dot_rows_blocks_avx2(const uint8_t *row, int dtype, const float *x, int n, int cols,
                                      float *out, int out_stride) {
    float t[256] __attribute__((aligned(64)));
    __m256 acc[8], acc2[8];
    for (int k = 0; k < n; k++) acc[k] = acc2[k] = _mm256_setzero_ps();
    switch (dtype) { BLOCK_ROW_CASES(DOT_BLOCKS_AVX2) }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = hsum256(_mm256_add_ps(acc[k], acc2[k]));
}

// -------------------------------------------------------------------- AVX-512
// Zen 5 and recent Intel parts run 512-bit FMAs at full rate: twice the work
// per instruction of the AVX2 path, which is what decode is bound by.
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

AVX512 static inline void nibbles16(const uint8_t *q, __m512 *lo, __m512 *hi) {
    __m128i b = _mm_loadu_si128((const __m128i *)q);
    __m128i l = _mm_and_si128(b, _mm_set1_epi8(15));
    __m128i h = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(15));
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(l));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(h));
}

// One input (decode): two blocks per iteration into independent accumulators, so
// the loop is bound by throughput rather than by the 4-cycle FMA latency chain.
AVX512 static float dot_row1_avx512(const uint8_t *row, int dtype, const float *x, int cols, const float *xsum) {
    int nb = cols / 32, b = 0;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    float m0 = 0, m1 = 0;
    if (dtype == CK_Q4_1) {
        __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        float m2 = 0, m3 = 0;
        for (; b + 4 <= nb; b += 4) {
            const uint8_t *k0 = row + b * 20, *k1 = k0 + 20, *k2 = k0 + 40, *k3 = k0 + 60;
            PREFETCH(k0); PREFETCH(k0 + 64);
            __m512 l0, h0, l1, h1, l2, h2, l3, h3;
            nibbles16(k0 + 4, &l0, &h0); nibbles16(k1 + 4, &l1, &h1);
            nibbles16(k2 + 4, &l2, &h2); nibbles16(k3 + 4, &l3, &h3);
            const float *x0 = x + b * 32;
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            __m512 s1 = _mm512_fmadd_ps(h1, _mm512_loadu_ps(x0 + 48), _mm512_mul_ps(l1, _mm512_loadu_ps(x0 + 32)));
            __m512 s2 = _mm512_fmadd_ps(h2, _mm512_loadu_ps(x0 + 80), _mm512_mul_ps(l2, _mm512_loadu_ps(x0 + 64)));
            __m512 s3 = _mm512_fmadd_ps(h3, _mm512_loadu_ps(x0 + 112), _mm512_mul_ps(l3, _mm512_loadu_ps(x0 + 96)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k0)), s0, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k1)), s1, a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k2)), s2, a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k3)), s3, a3);
            m0 += h2f(k0 + 2) * xsum[b]; m1 += h2f(k1 + 2) * xsum[b + 1];
            m2 += h2f(k2 + 2) * xsum[b + 2]; m3 += h2f(k3 + 2) * xsum[b + 3];
        }
        a0 = _mm512_add_ps(a0, a2); a1 = _mm512_add_ps(a1, a3); m0 += m2; m1 += m3;
        for (; b + 2 <= nb; b += 2) {
            const uint8_t *k0 = row + b * 20, *k1 = k0 + 20;
            __m512 l0, h0, l1, h1;
            nibbles16(k0 + 4, &l0, &h0); nibbles16(k1 + 4, &l1, &h1);
            const float *x0 = x + b * 32;
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            __m512 s1 = _mm512_fmadd_ps(h1, _mm512_loadu_ps(x0 + 48), _mm512_mul_ps(l1, _mm512_loadu_ps(x0 + 32)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k0)), s0, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k1)), s1, a1);
            m0 += h2f(k0 + 2) * xsum[b]; m1 += h2f(k1 + 2) * xsum[b + 1];
        }
        for (; b < nb; b++) {
            const uint8_t *k0 = row + b * 20;
            __m512 l0, h0; nibbles16(k0 + 4, &l0, &h0);
            const float *x0 = x + b * 32;
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k0)), s0, a0);
            m0 += h2f(k0 + 2) * xsum[b];
        }
    } else { // CK_Q8_0
        for (; b + 2 <= nb; b += 2) {
            const uint8_t *k0 = row + b * 34, *k1 = k0 + 34;
            PREFETCH(k0); PREFETCH(k0 + 64);
            const float *x0 = x + b * 32;
            __m512 l0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 2))));
            __m512 h0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 18))));
            __m512 l1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k1 + 2))));
            __m512 h1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k1 + 18))));
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            __m512 s1 = _mm512_fmadd_ps(h1, _mm512_loadu_ps(x0 + 48), _mm512_mul_ps(l1, _mm512_loadu_ps(x0 + 32)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k0)), s0, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k1)), s1, a1);
        }
        for (; b < nb; b++) {
            const uint8_t *k0 = row + b * 34;
            const float *x0 = x + b * 32;
            __m512 l0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 2))));
            __m512 h0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 18))));
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k0)), s0, a0);
        }
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)) + (m0 + m1);
}


// Decode kernel over the split Q4_1 layout (ck_split_q4_1), one input vector.
AVX512 static float dot_row1_q4_1_split(const uint8_t *base, int rows, int r, const float *x, int cols,
                                        const float *xsum) {
    int nb = cols / 32;
    const uint8_t *nib = base + (size_t)r * nb * 16;
    const uint16_t *dp = (const uint16_t *)(base + (size_t)rows * nb * 16) + (size_t)r * nb;
    const uint16_t *mp = dp + (size_t)rows * nb;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    __m512 macc = _mm512_setzero_ps();
    float d[16] __attribute__((aligned(64)));
    for (int g = 0; g < nb; g += 16) {
        int cnt = nb - g < 16 ? nb - g : 16;
        __mmask16 mask = (__mmask16)((1u << cnt) - 1);
        __m512 dv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, dp + g));
        __m512 mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, mp + g));
        macc = _mm512_fmadd_ps(mv, _mm512_maskz_loadu_ps(mask, xsum + g), macc);
        _mm512_store_ps(d, dv);
        // The scales run 8× slower than the nibbles: the same lead in rows is an eighth of the bytes.
        _mm_prefetch((const char *)(dp + g) + PREFETCH_AHEAD / 8, _MM_HINT_T0);
        _mm_prefetch((const char *)(mp + g) + PREFETCH_AHEAD / 8, _MM_HINT_T0);
        int b = 0;
        for (; b + 4 <= cnt; b += 4) {
            const uint8_t *q = nib + (size_t)(g + b) * 16;
            PREFETCH(q);
            const float *x0 = x + (size_t)(g + b) * 32;
            __m512 l0, h0, l1, h1, l2, h2, l3, h3;
            nibbles16(q, &l0, &h0); nibbles16(q + 16, &l1, &h1);
            nibbles16(q + 32, &l2, &h2); nibbles16(q + 48, &l3, &h3);
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            __m512 s1 = _mm512_fmadd_ps(h1, _mm512_loadu_ps(x0 + 48), _mm512_mul_ps(l1, _mm512_loadu_ps(x0 + 32)));
            __m512 s2 = _mm512_fmadd_ps(h2, _mm512_loadu_ps(x0 + 80), _mm512_mul_ps(l2, _mm512_loadu_ps(x0 + 64)));
            __m512 s3 = _mm512_fmadd_ps(h3, _mm512_loadu_ps(x0 + 112), _mm512_mul_ps(l3, _mm512_loadu_ps(x0 + 96)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(d[b]), s0, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(d[b + 1]), s1, a1);
            a2 = _mm512_fmadd_ps(_mm512_set1_ps(d[b + 2]), s2, a2);
            a3 = _mm512_fmadd_ps(_mm512_set1_ps(d[b + 3]), s3, a3);
        }
        for (; b < cnt; b++) {
            const uint8_t *q = nib + (size_t)(g + b) * 16;
            const float *x0 = x + (size_t)(g + b) * 32;
            __m512 l0, h0; nibbles16(q, &l0, &h0);
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(d[b]), s0, a0);
        }
    }
    __m512 a = _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    return _mm512_reduce_add_ps(a) + _mm512_reduce_add_ps(macc);
}

// dot_row1_avx512's Q8_0 path for up to 8 input vectors at once (y: out_stride apart), each
// vector's arithmetic exactly that one's (two interleaved accumulators, the same final sum), so
// results are bit-identical; each block's bytes are widened once for all of them.
AVX512 static void dot_rowsN_q8_0(const uint8_t *row, const float *x, int kn, int cols, float *y, size_t out_stride) {
    int nb = cols / 32, b = 0;
    __m512 a0[8], a1[8];
    for (int k = 0; k < kn; k++) { a0[k] = _mm512_setzero_ps(); a1[k] = _mm512_setzero_ps(); }
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *k0 = row + b * 34, *k1 = k0 + 34;
        PREFETCH(k0); PREFETCH(k0 + 64);
        __m512 l0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 2))));
        __m512 h0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 18))));
        __m512 l1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k1 + 2))));
        __m512 h1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k1 + 18))));
        __m512 d0 = _mm512_set1_ps(h2f(k0)), d1 = _mm512_set1_ps(h2f(k1));
        for (int k = 0; k < kn; k++) {
            const float *x0 = x + (size_t)k * cols + b * 32;
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            __m512 s1 = _mm512_fmadd_ps(h1, _mm512_loadu_ps(x0 + 48), _mm512_mul_ps(l1, _mm512_loadu_ps(x0 + 32)));
            a0[k] = _mm512_fmadd_ps(d0, s0, a0[k]);
            a1[k] = _mm512_fmadd_ps(d1, s1, a1[k]);
        }
    }
    for (; b < nb; b++) {
        const uint8_t *k0 = row + b * 34;
        __m512 l0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 2))));
        __m512 h0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(k0 + 18))));
        __m512 d0 = _mm512_set1_ps(h2f(k0));
        for (int k = 0; k < kn; k++) {
            const float *x0 = x + (size_t)k * cols + b * 32;
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            a0[k] = _mm512_fmadd_ps(d0, s0, a0[k]);
        }
    }
    float m0 = 0, m1 = 0;   // dot_row1_avx512 adds its (zero) min terms for Q8_0 too
    for (int k = 0; k < kn; k++) y[(size_t)k * out_stride] = _mm512_reduce_add_ps(_mm512_add_ps(a0[k], a1[k])) + (m0 + m1);
}

// dot_row1_q4_1_split for up to 4 input vectors at once (x: kn × cols, xsum: kn × nb, y: out_stride
// apart), each vector's arithmetic exactly that of dot_row1_q4_1_split (same operations, same order,
// same accumulators), so results are bit-identical; the nibbles are unpacked once for all of them.
AVX512 static void dot_rowsN_q4_1_split(const uint8_t *base, int rows, int r, const float *x, int kn, int cols,
                                        const float *xsum, float *y, size_t out_stride) {
    int nb = cols / 32;
    const uint8_t *nib = base + (size_t)r * nb * 16;
    const uint16_t *dp = (const uint16_t *)(base + (size_t)rows * nb * 16) + (size_t)r * nb;
    const uint16_t *mp = dp + (size_t)rows * nb;
    __m512 a0[4], a1[4], a2[4], a3[4], macc[4];
    for (int k = 0; k < kn; k++) {
        a0[k] = _mm512_setzero_ps(); a1[k] = _mm512_setzero_ps(); a2[k] = _mm512_setzero_ps();
        a3[k] = _mm512_setzero_ps(); macc[k] = _mm512_setzero_ps();
    }
    float d[16] __attribute__((aligned(64)));
    for (int g = 0; g < nb; g += 16) {
        int cnt = nb - g < 16 ? nb - g : 16;
        __mmask16 mask = (__mmask16)((1u << cnt) - 1);
        __m512 dv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, dp + g));
        __m512 mv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, mp + g));
        for (int k = 0; k < kn; k++)
            macc[k] = _mm512_fmadd_ps(mv, _mm512_maskz_loadu_ps(mask, xsum + (size_t)k * nb + g), macc[k]);
        _mm512_store_ps(d, dv);
        int b = 0;
        for (; b + 4 <= cnt; b += 4) {
            const uint8_t *q = nib + (size_t)(g + b) * 16;
            PREFETCH(q);
            __m512 l0, h0, l1, h1, l2, h2, l3, h3;
            nibbles16(q, &l0, &h0); nibbles16(q + 16, &l1, &h1);
            nibbles16(q + 32, &l2, &h2); nibbles16(q + 48, &l3, &h3);
            __m512 d0 = _mm512_set1_ps(d[b]), d1 = _mm512_set1_ps(d[b + 1]);
            __m512 d2 = _mm512_set1_ps(d[b + 2]), d3 = _mm512_set1_ps(d[b + 3]);
            for (int k = 0; k < kn; k++) {
                const float *x0 = x + (size_t)k * cols + (size_t)(g + b) * 32;
                __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
                __m512 s1 = _mm512_fmadd_ps(h1, _mm512_loadu_ps(x0 + 48), _mm512_mul_ps(l1, _mm512_loadu_ps(x0 + 32)));
                __m512 s2 = _mm512_fmadd_ps(h2, _mm512_loadu_ps(x0 + 80), _mm512_mul_ps(l2, _mm512_loadu_ps(x0 + 64)));
                __m512 s3 = _mm512_fmadd_ps(h3, _mm512_loadu_ps(x0 + 112), _mm512_mul_ps(l3, _mm512_loadu_ps(x0 + 96)));
                a0[k] = _mm512_fmadd_ps(d0, s0, a0[k]);
                a1[k] = _mm512_fmadd_ps(d1, s1, a1[k]);
                a2[k] = _mm512_fmadd_ps(d2, s2, a2[k]);
                a3[k] = _mm512_fmadd_ps(d3, s3, a3[k]);
            }
        }
        for (; b < cnt; b++) {
            const uint8_t *q = nib + (size_t)(g + b) * 16;
            __m512 l0, h0; nibbles16(q, &l0, &h0);
            __m512 d0 = _mm512_set1_ps(d[b]);
            for (int k = 0; k < kn; k++) {
                const float *x0 = x + (size_t)k * cols + (size_t)(g + b) * 32;
                __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
                a0[k] = _mm512_fmadd_ps(d0, s0, a0[k]);
            }
        }
    }
    for (int k = 0; k < kn; k++) {
        __m512 a = _mm512_add_ps(_mm512_add_ps(a0[k], a1[k]), _mm512_add_ps(a2[k], a3[k]));
        y[(size_t)k * out_stride] = _mm512_reduce_add_ps(a) + _mm512_reduce_add_ps(macc[k]);
    }
}

// acc + d · (q · x) for one 32-value block (lo: values 0–15, hi: 16–31).
AVX512 static inline __m512 block_fma_avx512(__m512 lo, __m512 hi, __m512 d, const float *xb, __m512 acc) {
    __m512 s = _mm512_mul_ps(lo, _mm512_loadu_ps(xb));
    s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), s);
    return _mm512_fmadd_ps(d, s, acc);
}

AVX512 static void dequant_row_blocks_avx512(const uint8_t *row, int dtype, float *dst, int cols) {
    switch (dtype) { BLOCK_ROW_CASES(DEQUANT_ROW) }
}

// Hand-written kernels for the types of the common mixes (Q4_K_M, Q5_K_M, Q6_K: Q4_K, Q6_K,
// Q5_0 and Q5_K), which decode spends nearly all its time in: the quantized values go from the
// block to registers without the L1 round trip of the generic path. Q4_K's and Q5_K's min terms
// use the 32-value sums of x (xsum) as Q4_1's do. Results differ from the generic path only by
// the order of float additions.

// 16 unsigned bytes as 16 floats.
AVX512 static inline __m512 u8x16_ps(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b)); }

// One 64-value chunk j of super-block s of a Q4_K or Q5_K row (dot_rows_q45_K_avx512): values l0, l1 (sub-block 2j) and
// h0, h1 (2j + 1), their scales dl, dh and mins ml, mh, into the accumulators of n inputs (decode:
// four independent ones, a1, against the FMA latency).
AVX512 static inline void kquant_chunk(__m512 l0, __m512 l1, __m512 h0, __m512 h1, __m512 dl, __m512 dh,
                                       float ml, float mh, const float *x, int n, int cols, const float *xsum,
                                       int s, int j, __m512 a1[4], __m512 *acc, float *macc) {
    int nb = cols / 32;
    for (int k = 0; k < n; k++) {
        const float *xb = x + (size_t)k * cols + s * 256 + 64 * j;
        __m512 sl = _mm512_fmadd_ps(l1, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(xb)));
        __m512 sh = _mm512_fmadd_ps(h1, _mm512_loadu_ps(xb + 48), _mm512_mul_ps(h0, _mm512_loadu_ps(xb + 32)));
        const float *xs = xsum + (size_t)k * nb + s * 8 + 2 * j;
        macc[k] += ml * xs[0] + mh * xs[1];
        if (n == 1) {
            a1[2 * (j & 1)] = _mm512_fmadd_ps(dl, sl, a1[2 * (j & 1)]);
            a1[2 * (j & 1) + 1] = _mm512_fmadd_ps(dh, sh, a1[2 * (j & 1) + 1]);
        } else {
            acc[k] = _mm512_fmadd_ps(dh, sh, _mm512_fmadd_ps(dl, sl, acc[k]));
        }
    }
}

// Q4_K and Q5_K share everything but Q5_K's fifth bits (`fifth`: 176-byte blocks with qh[32]
// before the nibbles; else 144-byte blocks). Inlined into one wrapper per type, so that for Q4_K
// `fifth` is the constant 0 and the fifth-bit work folds away.
AVX512 static inline __attribute__((always_inline)) void dot_rows_q45_K_avx512(const uint8_t *row, const float *x, int n, int cols, const float *xsum,
                                         float *out, int out_stride, int fifth) {
    int nsb = cols / 256, bb = fifth ? 176 : 144;
    __m512 acc[8], a1[4] = { _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps() };
    float macc[8] = {0};
    for (int k = 0; k < n; k++) acc[k] = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(15), one = _mm_set1_epi8(1), zero = _mm_setzero_si128();
    for (int s = 0; s < nsb; s++) {
        const uint8_t *blk = row + (size_t)s * bb, *q = blk + (fifth ? 48 : 16);
        PREFETCH(blk); PREFETCH(blk + 64); PREFETCH(blk + 128);
        float d = h2f(blk), dmin = h2f(blk + 2);
        uint8_t sc[8], mn[8];
        for (int j = 0; j < 8; j++) get_scale_min_k4(j, blk + 4, &sc[j], &mn[j]);
        __m128i h0b = fifth ? _mm_loadu_si128((const __m128i *)(blk + 16)) : zero;
        __m128i h1b = fifth ? _mm_loadu_si128((const __m128i *)(blk + 32)) : zero;
        for (int j = 0; j < 4; j++) {
            // Fifth bits (zero for Q4_K): bit 2j of qh[l] for the low nibbles, bit 2j+1 for the high ones.
            __m128i bl0 = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h0b, 2 * j), one), 4);
            __m128i bl1 = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h1b, 2 * j), one), 4);
            __m128i bh0 = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h0b, 2 * j + 1), one), 4);
            __m128i bh1 = _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h1b, 2 * j + 1), one), 4);
            __m128i b0 = _mm_loadu_si128((const __m128i *)(q + 32 * j)), b1 = _mm_loadu_si128((const __m128i *)(q + 32 * j + 16));
            __m512 l0 = u8x16_ps(_mm_or_si128(_mm_and_si128(b0, m4), bl0));
            __m512 l1 = u8x16_ps(_mm_or_si128(_mm_and_si128(b1, m4), bl1));
            __m512 h0 = u8x16_ps(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(b0, 4), m4), bh0));
            __m512 h1 = u8x16_ps(_mm_or_si128(_mm_and_si128(_mm_srli_epi16(b1, 4), m4), bh1));
            __m512 dl = _mm512_set1_ps(d * sc[2 * j]), dh = _mm512_set1_ps(d * sc[2 * j + 1]);
            float ml = dmin * mn[2 * j], mh = dmin * mn[2 * j + 1];
            kquant_chunk(l0, l1, h0, h1, dl, dh, ml, mh, x, n, cols, xsum, s, j, a1, acc, macc);
        }
    }
    if (n == 1) acc[0] = _mm512_add_ps(_mm512_add_ps(a1[0], a1[1]), _mm512_add_ps(a1[2], a1[3]));
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(acc[k]) - macc[k];
}

AVX512 static void dot_rows_q4_K_avx512(const uint8_t *row, const float *x, int n, int cols, const float *xsum,
                                        float *out, int out_stride) {
    dot_rows_q45_K_avx512(row, x, n, cols, xsum, out, out_stride, 0);
}
AVX512 static void dot_rows_q5_K_avx512(const uint8_t *row, const float *x, int n, int cols, const float *xsum,
                                        float *out, int out_stride) {
    dot_rows_q45_K_avx512(row, x, n, cols, xsum, out, out_stride, 1);
}

AVX512 static void dot_rows_q6_K_avx512(const uint8_t *row, const float *x, int n, int cols, float *out, int out_stride) {
    int nsb = cols / 256;
    __m512 acc[8];
    for (int k = 0; k < n; k++) acc[k] = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(15), m3 = _mm_set1_epi8(3);
    const __m512i off = _mm512_set1_epi32(32);
    for (int s = 0; s < nsb; s++) {
        const uint8_t *blk = row + (size_t)s * 210;
        PREFETCH(blk); PREFETCH(blk + 64); PREFETCH(blk + 128); PREFETCH(blk + 192);
        const int8_t *sc = (const int8_t *)(blk + 192);
        float d = h2f(blk + 208);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
            for (int l0 = 0; l0 < 32; l0 += 16) {
                __m128i a = _mm_loadu_si128((const __m128i *)(ql + l0)), b = _mm_loadu_si128((const __m128i *)(ql + l0 + 32));
                __m128i hb = _mm_loadu_si128((const __m128i *)(qh + l0));
                __m128i q1 = _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(hb, m3), 4));
                __m128i q2 = _mm_or_si128(_mm_and_si128(b, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 2), m3), 4));
                __m128i q3 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4),
                                          _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 4), m3), 4));
                __m128i q4 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(b, 4), m4),
                                          _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 6), m3), 4));
                __m512 v1 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q1), off));
                __m512 v2 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q2), off));
                __m512 v3 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q3), off));
                __m512 v4 = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q4), off));
                int is = 8 * h + l0 / 16;
                __m512 s1 = _mm512_set1_ps(d * sc[is]), s2 = _mm512_set1_ps(d * sc[is + 2]);
                __m512 s3 = _mm512_set1_ps(d * sc[is + 4]), s4 = _mm512_set1_ps(d * sc[is + 6]);
                for (int k = 0; k < n; k++) {
                    const float *xb = x + (size_t)k * cols + s * 256 + 128 * h + l0;
                    __m512 t = _mm512_mul_ps(s1, _mm512_mul_ps(v1, _mm512_loadu_ps(xb)));
                    t = _mm512_fmadd_ps(s2, _mm512_mul_ps(v2, _mm512_loadu_ps(xb + 32)), t);
                    t = _mm512_fmadd_ps(s3, _mm512_mul_ps(v3, _mm512_loadu_ps(xb + 64)), t);
                    acc[k] = _mm512_add_ps(acc[k], _mm512_fmadd_ps(s4, _mm512_mul_ps(v4, _mm512_loadu_ps(xb + 96)), t));
                }
            }
        }
    }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(acc[k]);
}

// One Q5_0 block as 32 signed values in two vectors: (nibble | fifth bit << 4) - 16, built in
// bytes (the fifth bits come from qh as a 32-bit lane mask) and widened once.
AVX512 static inline void q5_0_values(const uint8_t *blk, __m512 *lo, __m512 *hi) {
    uint32_t qh; memcpy(&qh, blk + 2, 4);
    __m128i q = _mm_loadu_si128((const __m128i *)(blk + 6)), m4 = _mm_set1_epi8(15), s16 = _mm_set1_epi8(16);
    __m128i l = _mm_or_si128(_mm_and_si128(q, m4), _mm_maskz_mov_epi8(_cvtu32_mask16(qh & 0xFFFF), s16));
    __m128i h = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_maskz_mov_epi8(_cvtu32_mask16(qh >> 16), s16));
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(l, s16)));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_sub_epi8(h, s16)));
}

AVX512 static void dot_rows_q5_0_avx512(const uint8_t *row, const float *x, int n, int cols, float *out, int out_stride) {
    int nb = cols / 32, b = 0;
    if (n == 1) {   // decode: two blocks per step into independent accumulators (FMA latency, not throughput)
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (; b + 2 <= nb; b += 2) {
            const uint8_t *k0 = row + (size_t)b * 22, *k1 = k0 + 22;
            PREFETCH(k0); PREFETCH(k0 + 64);
            __m512 l0, h0, l1, h1;
            q5_0_values(k0, &l0, &h0); q5_0_values(k1, &l1, &h1);
            const float *x0 = x + b * 32;
            __m512 s0 = _mm512_fmadd_ps(h0, _mm512_loadu_ps(x0 + 16), _mm512_mul_ps(l0, _mm512_loadu_ps(x0)));
            __m512 s1 = _mm512_fmadd_ps(h1, _mm512_loadu_ps(x0 + 48), _mm512_mul_ps(l1, _mm512_loadu_ps(x0 + 32)));
            a0 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k0)), s0, a0);
            a1 = _mm512_fmadd_ps(_mm512_set1_ps(h2f(k1)), s1, a1);
        }
        for (; b < nb; b++) {
            const uint8_t *k0 = row + (size_t)b * 22;
            __m512 l0, h0; q5_0_values(k0, &l0, &h0);
            a0 = block_fma_avx512(l0, h0, _mm512_set1_ps(h2f(k0)), x + b * 32, a0);
        }
        out[0] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
        return;
    }
    __m512 acc[8];
    for (int k = 0; k < n; k++) acc[k] = _mm512_setzero_ps();
    for (; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * 22;
        PREFETCH(blk);
        __m512 vl, vh; q5_0_values(blk, &vl, &vh);
        __m512 d = _mm512_set1_ps(h2f(blk));
        for (int k = 0; k < n; k++) acc[k] = block_fma_avx512(vl, vh, d, x + (size_t)k * cols + b * 32, acc[k]);
    }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(acc[k]);
}

// Q2_K and Q3_K: 2-bit values (Q3_K: plus a high bit from hmask) in groups of 16 with their own
// scale (Q2_K: and min), built in bytes and widened once per group. Q2_K's mins multiply the
// input itself (a vector accumulator), since its groups are 16 values, not xsum's 32.
AVX512 static void dot_rows_q2_K_avx512(const uint8_t *row, const float *x, int n, int cols, float *out, int out_stride) {
    __m512 acc[2][8], macc[8];   // two accumulators per input: the 16-value groups alternate (FMA latency)
    for (int k = 0; k < n; k++) acc[0][k] = acc[1][k] = macc[k] = _mm512_setzero_ps();
    __m512 r0 = _mm512_setzero_ps(), r1 = r0, rm0 = r0, rm1 = r0;
    const __m128i m3 = _mm_set1_epi8(3);
    for (int s = 0; s < cols / 256; s++) {
        const uint8_t *blk = row + (size_t)s * 84, *sc = blk;
        PREFETCH(blk); PREFETCH(blk + 64);
        float d = h2f(blk + 80), dmin = h2f(blk + 82);
        for (int h = 0; h < 2; h++) {
            __m128i q0 = _mm_loadu_si128((const __m128i *)(blk + 16 + 32 * h));
            __m128i q1 = _mm_loadu_si128((const __m128i *)(blk + 32 + 32 * h));
            for (int j = 0; j < 4; j++) {
                for (int g = 0; g < 2; g++) {
                    int is = 8 * h + 2 * j + g;
                    __m128i v = _mm_and_si128(_mm_srli_epi16(g ? q1 : q0, 2 * j), m3);
                    __m512 vf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
                    __m512 dl = _mm512_set1_ps(d * (sc[is] & 0xF)), ml = _mm512_set1_ps(dmin * (sc[is] >> 4));
                    if (n == 1) {   // decode: accumulators in registers, alternating by group
                        __m512 xv = _mm512_loadu_ps(x + s * 256 + 128 * h + 32 * j + 16 * g);
                        if (g) { r1 = _mm512_fmadd_ps(dl, _mm512_mul_ps(vf, xv), r1); rm1 = _mm512_fmadd_ps(ml, xv, rm1); }
                        else { r0 = _mm512_fmadd_ps(dl, _mm512_mul_ps(vf, xv), r0); rm0 = _mm512_fmadd_ps(ml, xv, rm0); }
                        continue;
                    }
                    for (int k = 0; k < n; k++) {
                        __m512 xv = _mm512_loadu_ps(x + (size_t)k * cols + s * 256 + 128 * h + 32 * j + 16 * g);
                        acc[g][k] = _mm512_fmadd_ps(dl, _mm512_mul_ps(vf, xv), acc[g][k]);
                        macc[k] = _mm512_fmadd_ps(ml, xv, macc[k]);
                    }
                }
            }
        }
    }
    if (n == 1) { acc[0][0] = r0; acc[1][0] = r1; macc[0] = _mm512_add_ps(rm0, rm1); }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(_mm512_sub_ps(_mm512_add_ps(acc[0][k], acc[1][k]), macc[k]));
}

AVX512 static void dot_rows_q3_K_avx512(const uint8_t *row, const float *x, int n, int cols, float *out, int out_stride) {
    __m512 acc[2][8];   // two accumulators per input: the 16-value groups alternate (FMA latency)
    for (int k = 0; k < n; k++) acc[0][k] = acc[1][k] = _mm512_setzero_ps();
    __m512 r0 = _mm512_setzero_ps(), r1 = r0;
    const __m128i m3 = _mm_set1_epi8(3), four = _mm_set1_epi8(4);
    const uint32_t kmask1 = 0x03030303, kmask2 = 0x0f0f0f0f;
    for (int s = 0; s < cols / 256; s++) {
        const uint8_t *blk = row + (size_t)s * 110, *hm = blk, *q = blk + 32;
        PREFETCH(blk); PREFETCH(blk + 64);
        float d = h2f(blk + 108);
        uint32_t aux[4];
        memcpy(aux, blk + 96, 12);
        uint32_t tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
        aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
        aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
        aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
        const int8_t *scales = (const int8_t *)aux;
        __m128i hm0 = _mm_loadu_si128((const __m128i *)hm), hm1 = _mm_loadu_si128((const __m128i *)(hm + 16));
        for (int h = 0; h < 2; h++) {
            __m128i q0 = _mm_loadu_si128((const __m128i *)(q + 32 * h)), q1 = _mm_loadu_si128((const __m128i *)(q + 32 * h + 16));
            for (int j = 0; j < 4; j++) {
                __m128i bit = _mm_set1_epi8((char)(1 << (4 * h + j)));
                for (int g = 0; g < 2; g++) {
                    int is = 8 * h + 2 * j + g;
                    __m128i v = _mm_and_si128(_mm_srli_epi16(g ? q1 : q0, 2 * j), m3);
                    // A clear hmask bit subtracts 4.
                    __mmask16 high = _mm_test_epi8_mask(g ? hm1 : hm0, bit);
                    v = _mm_sub_epi8(v, _mm_maskz_mov_epi8((__mmask16)~high, four));
                    __m512 vf = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(v));
                    __m512 dl = _mm512_set1_ps(d * (scales[is] - 32));
                    if (n == 1) {   // decode: accumulators in registers, alternating by group
                        __m512 xv = _mm512_loadu_ps(x + s * 256 + 128 * h + 32 * j + 16 * g);
                        if (g) r1 = _mm512_fmadd_ps(dl, _mm512_mul_ps(vf, xv), r1);
                        else r0 = _mm512_fmadd_ps(dl, _mm512_mul_ps(vf, xv), r0);
                        continue;
                    }
                    for (int k = 0; k < n; k++) {
                        __m512 xv = _mm512_loadu_ps(x + (size_t)k * cols + s * 256 + 128 * h + 32 * j + 16 * g);
                        acc[g][k] = _mm512_fmadd_ps(dl, _mm512_mul_ps(vf, xv), acc[g][k]);
                    }
                }
            }
        }
    }
    if (n == 1) { acc[0][0] = r0; acc[1][0] = r1; }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][k], acc[1][k]));
}

// IQ4_NL / IQ4_XS: each nibble indexes kvalues_iq4nl; one byte shuffle looks all 16 up at once.
AVX512 static inline void iq4_values(const uint8_t *qs, __m512 *lo, __m512 *hi) {
    const __m128i table = _mm_loadu_si128((const __m128i *)kvalues_iq4nl), m4 = _mm_set1_epi8(15);
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    *lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(table, _mm_and_si128(q, m4))));
    *hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_shuffle_epi8(table, _mm_and_si128(_mm_srli_epi16(q, 4), m4))));
}

AVX512 static void dot_rows_iq4_avx512(const uint8_t *row, int dtype, const float *x, int n, int cols, float *out,
                                       int out_stride) {
    __m512 acc[8], a1 = _mm512_setzero_ps();
    for (int k = 0; k < n; k++) acc[k] = _mm512_setzero_ps();
    int nb = cols / 32;
    for (int b = 0; b < nb; b++) {   // 32-value groups: an IQ4_NL block, or an eighth of an IQ4_XS one
        const uint8_t *qs;
        float d;
        if (dtype == CK_IQ4_NL) {
            const uint8_t *blk = row + (size_t)b * 18;
            PREFETCH(blk);
            qs = blk + 2; d = h2f(blk);
        } else {
            const uint8_t *blk = row + (size_t)(b / 8) * 136;
            int ib = b % 8;
            if (ib == 0) { PREFETCH(blk); PREFETCH(blk + 64); }
            int ls = ((blk[4 + ib / 2] >> 4 * (ib % 2)) & 0xF) | (((load_u16(blk + 2) >> 2 * ib) & 3) << 4);
            qs = blk + 8 + 16 * ib; d = h2f(blk) * (ls - 32);
        }
        __m512 vl, vh; iq4_values(qs, &vl, &vh);
        __m512 dv = _mm512_set1_ps(d);
        if (n == 1 && (b & 1)) { a1 = block_fma_avx512(vl, vh, dv, x + b * 32, a1); continue; }
        for (int k = 0; k < n; k++) acc[k] = block_fma_avx512(vl, vh, dv, x + (size_t)k * cols + b * 32, acc[k]);
    }
    if (n == 1) acc[0] = _mm512_add_ps(acc[0], a1);
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(acc[k]);
}

// Prefill dequantizes slices of rows for sgemm: the common mixes' types from the decode
// kernels' value builders (the generic loops ran Q4_K at 11.5 and Q6_K at 26 ns per 32 values).
AVX512 static void dequant_row_q5_0_avx512(const uint8_t *row, float *dst, int cols) {
    for (int b = 0; b < cols / 32; b++) {
        const uint8_t *blk = row + (size_t)b * 22;
        __m512 lo, hi; q5_0_values(blk, &lo, &hi);
        __m512 d = _mm512_set1_ps(h2f(blk));
        _mm512_storeu_ps(dst + b * 32, _mm512_mul_ps(lo, d));
        _mm512_storeu_ps(dst + b * 32 + 16, _mm512_mul_ps(hi, d));
    }
}

AVX512 static void dequant_row_q4_K_avx512(const uint8_t *row, float *dst, int cols) {
    const __m128i m4 = _mm_set1_epi8(15);
    for (int s = 0; s < cols / 256; s++) {
        const uint8_t *blk = row + (size_t)s * 144, *q = blk + 16;
        float d = h2f(blk), dmin = h2f(blk + 2);
        for (int j = 0; j < 4; j++) {
            uint8_t sc, m;
            float *y = dst + s * 256 + 64 * j;
            __m128i b0 = _mm_loadu_si128((const __m128i *)(q + 32 * j)), b1 = _mm_loadu_si128((const __m128i *)(q + 32 * j + 16));
            get_scale_min_k4(2 * j, blk + 4, &sc, &m);
            __m512 dl = _mm512_set1_ps(d * sc), ml = _mm512_set1_ps(dmin * m);
            _mm512_storeu_ps(y, _mm512_sub_ps(_mm512_mul_ps(dl, u8x16_ps(_mm_and_si128(b0, m4))), ml));
            _mm512_storeu_ps(y + 16, _mm512_sub_ps(_mm512_mul_ps(dl, u8x16_ps(_mm_and_si128(b1, m4))), ml));
            get_scale_min_k4(2 * j + 1, blk + 4, &sc, &m);
            __m512 dh = _mm512_set1_ps(d * sc), mh = _mm512_set1_ps(dmin * m);
            _mm512_storeu_ps(y + 32, _mm512_sub_ps(_mm512_mul_ps(dh, u8x16_ps(_mm_and_si128(_mm_srli_epi16(b0, 4), m4))), mh));
            _mm512_storeu_ps(y + 48, _mm512_sub_ps(_mm512_mul_ps(dh, u8x16_ps(_mm_and_si128(_mm_srli_epi16(b1, 4), m4))), mh));
        }
    }
}

AVX512 static void dequant_row_q6_K_avx512(const uint8_t *row, float *dst, int cols) {
    const __m128i m4 = _mm_set1_epi8(15), m3 = _mm_set1_epi8(3);
    const __m512i off = _mm512_set1_epi32(32);
    for (int s = 0; s < cols / 256; s++) {
        const uint8_t *blk = row + (size_t)s * 210;
        const int8_t *sc = (const int8_t *)(blk + 192);
        float d = h2f(blk + 208);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = blk + 64 * h, *qh = blk + 128 + 32 * h;
            for (int l0 = 0; l0 < 32; l0 += 16) {
                __m128i a = _mm_loadu_si128((const __m128i *)(ql + l0)), b = _mm_loadu_si128((const __m128i *)(ql + l0 + 32));
                __m128i hb = _mm_loadu_si128((const __m128i *)(qh + l0));
                __m128i q[4] = {
                    _mm_or_si128(_mm_and_si128(a, m4), _mm_slli_epi16(_mm_and_si128(hb, m3), 4)),
                    _mm_or_si128(_mm_and_si128(b, m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 2), m3), 4)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 4), m3), 4)),
                    _mm_or_si128(_mm_and_si128(_mm_srli_epi16(b, 4), m4), _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(hb, 6), m3), 4)),
                };
                int is = 8 * h + l0 / 16;
                for (int t = 0; t < 4; t++) {
                    // As ggml: (d · scale) · q, in that order.
                    __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(q[t]), off));
                    _mm512_storeu_ps(dst + s * 256 + 128 * h + 32 * t + l0, _mm512_mul_ps(_mm512_set1_ps(d * sc[is + 2 * t]), v));
                }
            }
        }
    }
}

// Q5_1: Q5_0's values unsigned (no -16), times d, plus the block's min m times the input's block sum.
AVX512 static void dot_rows_q5_1_avx512(const uint8_t *row, const float *x, int n, int cols, const float *xsum,
                                        float *out, int out_stride) {
    int nb = cols / 32;
    __m512 acc[8], a1 = _mm512_setzero_ps();
    float macc[8] = {0}, m1 = 0;
    for (int k = 0; k < n; k++) acc[k] = _mm512_setzero_ps();
    const __m128i m4 = _mm_set1_epi8(15), s16 = _mm_set1_epi8(16);
    for (int b = 0; b < nb; b++) {
        const uint8_t *blk = row + (size_t)b * 24;
        PREFETCH(blk);
        uint32_t qh; memcpy(&qh, blk + 4, 4);
        __m128i q = _mm_loadu_si128((const __m128i *)(blk + 8));
        __m128i l = _mm_or_si128(_mm_and_si128(q, m4), _mm_maskz_mov_epi8(_cvtu32_mask16(qh & 0xFFFF), s16));
        __m128i h = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_maskz_mov_epi8(_cvtu32_mask16(qh >> 16), s16));
        __m512 vl = u8x16_ps(l), vh = u8x16_ps(h), d = _mm512_set1_ps(h2f(blk));
        float m = h2f(blk + 2);
        if (n == 1 && (b & 1)) {   // decode: odd blocks into a second accumulator (FMA latency)
            a1 = block_fma_avx512(vl, vh, d, x + b * 32, a1);
            m1 += m * xsum[b];
            continue;
        }
        for (int k = 0; k < n; k++) {
            acc[k] = block_fma_avx512(vl, vh, d, x + (size_t)k * cols + b * 32, acc[k]);
            macc[k] += m * xsum[(size_t)k * nb + b];
        }
    }
    if (n == 1) { acc[0] = _mm512_add_ps(acc[0], a1); macc[0] += m1; }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(acc[k]) + macc[k];
}

AVX512 static void dot_rows_avx512(const uint8_t *row, int dtype, const float *x, int n, int cols,
                                   const float *xsum, float *out, int out_stride) {
    switch (dtype) {
    case CK_Q4_K: dot_rows_q4_K_avx512(row, x, n, cols, xsum, out, out_stride); return;
    case CK_Q5_K: dot_rows_q5_K_avx512(row, x, n, cols, xsum, out, out_stride); return;
    case CK_Q6_K: dot_rows_q6_K_avx512(row, x, n, cols, out, out_stride); return;
    case CK_Q5_0: dot_rows_q5_0_avx512(row, x, n, cols, out, out_stride); return;
    case CK_Q5_1: dot_rows_q5_1_avx512(row, x, n, cols, xsum, out, out_stride); return;
    case CK_IQ4_NL: case CK_IQ4_XS: dot_rows_iq4_avx512(row, dtype, x, n, cols, out, out_stride); return;
    case CK_Q2_K: dot_rows_q2_K_avx512(row, x, n, cols, out, out_stride); return;
    case CK_Q3_K: dot_rows_q3_K_avx512(row, x, n, cols, out, out_stride); return;
    }
    if (n == 1 && (dtype == CK_Q4_1 || dtype == CK_Q8_0)) {
        out[0] = dot_row1_avx512(row, dtype, x, cols, xsum);
        return;
    }
    int nb = cols / 32;
    __m512 acc[8];
    float macc[8] = {0};
    for (int k = 0; k < n; k++) acc[k] = _mm512_setzero_ps();
    switch (dtype) {
    case CK_Q4_1:
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 20;
            __m512 lo, hi; nibbles16(blk + 4, &lo, &hi);
            __m512 d = _mm512_set1_ps(h2f(blk)); float m = h2f(blk + 2);
            for (int k = 0; k < n; k++) {
                acc[k] = block_fma_avx512(lo, hi, d, x + (size_t)k * cols + b * 32, acc[k]);
                macc[k] += m * xsum[k * nb + b];
            }
        }
        break;
    case CK_Q4_0:
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 18;
            __m512 lo, hi; nibbles16(blk + 2, &lo, &hi);
            lo = _mm512_sub_ps(lo, _mm512_set1_ps(8.0f)); hi = _mm512_sub_ps(hi, _mm512_set1_ps(8.0f));
            __m512 d = _mm512_set1_ps(h2f(blk));
            for (int k = 0; k < n; k++) {
                acc[k] = block_fma_avx512(lo, hi, d, x + (size_t)k * cols + b * 32, acc[k]);
            }
        }
        break;
    case CK_Q8_0:
        for (int b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 34;
            __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2))));
            __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18))));
            __m512 d = _mm512_set1_ps(h2f(blk));
            for (int k = 0; k < n; k++) {
                acc[k] = block_fma_avx512(lo, hi, d, x + (size_t)k * cols + b * 32, acc[k]);
            }
        }
        break;
    default: // plain floating-point rows: the AVX2 path is as fast (bound by bytes, not by math)
        dot_rows_avx2(row, dtype, x, n, cols, xsum, out, out_stride);
        return;
    }
    for (int k = 0; k < n; k++) out[(size_t)k * out_stride] = _mm512_reduce_add_ps(acc[k]) + macc[k];
}

AVX512 static void dequant_row_avx512(const uint8_t *row, int dtype, float *d, int cols) {
    for (int b = 0; b < cols / 32; b++) {
        __m512 lo, hi;
        if (dtype == CK_Q4_1) {
            const uint8_t *blk = row + b * 20;
            nibbles16(blk + 4, &lo, &hi);
            __m512 s = _mm512_set1_ps(h2f(blk)), m = _mm512_set1_ps(h2f(blk + 2));
            _mm512_storeu_ps(d + b * 32, _mm512_fmadd_ps(lo, s, m));
            _mm512_storeu_ps(d + b * 32 + 16, _mm512_fmadd_ps(hi, s, m));
        } else {
            const uint8_t *blk = row + b * 34;
            lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 2))));
            hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(blk + 18))));
            __m512 s = _mm512_set1_ps(h2f(blk));
            _mm512_storeu_ps(d + b * 32, _mm512_mul_ps(lo, s));
            _mm512_storeu_ps(d + b * 32 + 16, _mm512_mul_ps(hi, s));
        }
    }
}

static int cpu_has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
        && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}

static int cpu_has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int cpu_has_avx2(void) { return 0; }
static int cpu_has_avx512(void) { return 0; }
#endif

// 0: scalar, 1: AVX2+FMA+F16C, 2: AVX-512. -1 until first asked.
static int simd_state = -1;
static int simd_best(void) { return cpu_has_avx512() ? 2 : cpu_has_avx2() ? 1 : 0; }
int ck_simd_enabled(void) {
    if (simd_state < 0) simd_state = simd_best();
    return simd_state;
}
int ck_set_simd(int level) {
    int prev = ck_simd_enabled(), best = simd_best();
    simd_state = level < 0 ? 0 : level > best ? best : level;
    return prev;
}
int ck_simd_best(void) { return simd_best(); }

// ------------------------------------------------------------------ the pool
// Work is cut into chunks that threads claim one at a time from a shared counter,
// so a thread the OS has descheduled (these machines are shared) delays nothing:
// the others take its chunks. Which thread computes a chunk never changes the
// result: each output element is computed by one thread, the same way.
// Workers spin on the work word for a short while, then sleep on a condition
// variable, so they cost nothing while OpenBLAS runs its own threads.

typedef void (*ck_range_fn)(void *ctx, int begin, int end);

struct ck_pool {
    int n;
    pthread_t *threads;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t work;      // generation << 32 | next chunk index
    _Atomic int inflight;       // threads inside a claim loop
    _Atomic int stop;
    ck_range_fn fn;
    void *ctx;
    int items, chunk, chunks;
};

// Claims and runs chunks of generation `gen` until none are left.
static void run_chunks(ck_pool *pool, uint32_t gen) {
    atomic_fetch_add_explicit(&pool->inflight, 1, memory_order_acq_rel);
    for (;;) {
        uint64_t w = atomic_load_explicit(&pool->work, memory_order_acquire);
        if ((uint32_t)(w >> 32) != gen || (int)(uint32_t)w >= pool->chunks) break;
        if (!atomic_compare_exchange_weak_explicit(&pool->work, &w, w + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        // A successful claim means the owner is still in this generation: fn, ctx,
        // items and chunk are this generation's.
        int c = (int)(uint32_t)w, begin = c * pool->chunk, end = begin + pool->chunk;
        pool->fn(pool->ctx, begin, end < pool->items ? end : pool->items);
    }
    atomic_fetch_sub_explicit(&pool->inflight, 1, memory_order_acq_rel);
}

// The index of the pool thread running this code: 0 for the thread that calls pool_run,
// 1..n-1 for the workers (per-thread scratch in ck_pool_for's tasks).
static _Thread_local int pool_thread_index = 0;

typedef struct { ck_pool *pool; int index; } worker_arg;

static void *worker_main(void *p) {
    worker_arg arg = *(worker_arg *)p;
    free(p);
    ck_pool *pool = arg.pool;
    pool_thread_index = arg.index;
    uint32_t seen = 0;
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = (uint32_t)(atomic_load_explicit(&pool->work, memory_order_acquire) >> 32)) == seen) {
            if (atomic_load(&pool->stop)) return NULL;
            if (++spins < 4000) { _mm_pause(); continue; }
            pthread_mutex_lock(&pool->mu);
            while ((uint32_t)(atomic_load(&pool->work) >> 32) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->cv, &pool->mu);
            pthread_mutex_unlock(&pool->mu);
            spins = 0;
        }
        seen = g;
        run_chunks(pool, g);
    }
}

ck_pool *ck_pool_create(int threads) {
    if (threads < 1) threads = 1;
    ck_pool *pool = calloc(1, sizeof(ck_pool));
    pool->n = threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pool->threads = calloc((size_t)threads, sizeof(pthread_t));
    for (int i = 1; i < threads; i++) {
        worker_arg *arg = malloc(sizeof(worker_arg));
        arg->pool = pool; arg->index = i;
        pthread_create(&pool->threads[i], NULL, worker_main, arg);
    }
    return pool;
}

void ck_pool_destroy(ck_pool *pool) {
    if (!pool) return;
    atomic_store(&pool->stop, 1);
    pthread_mutex_lock(&pool->mu); pthread_cond_broadcast(&pool->cv); pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->threads[i], NULL);
    free(pool->threads);
    free(pool);
}

int ck_pool_threads(const ck_pool *pool) { return pool ? pool->n : 1; }

/// Runs fn over items [0, items) in chunks of `chunk`, on every thread of the pool.
static void pool_run(ck_pool *pool, ck_range_fn fn, void *ctx, int items, int chunk) {
    if (items <= 0) return;
    if (chunk < 1) chunk = 1;
    if (!pool || pool->n == 1 || items <= chunk) { fn(ctx, 0, items); return; }
    pool->fn = fn; pool->ctx = ctx; pool->items = items; pool->chunk = chunk;
    pool->chunks = (items + chunk - 1) / chunk;
    uint32_t gen = (uint32_t)(atomic_load(&pool->work) >> 32) + 1;
    pthread_mutex_lock(&pool->mu);
    atomic_store_explicit(&pool->work, (uint64_t)gen << 32, memory_order_release);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    run_chunks(pool, gen);
    // Every chunk is claimed; wait for the ones other threads are still running.
    for (int spins = 0; atomic_load_explicit(&pool->inflight, memory_order_acquire) > 0; spins++) {
        if (spins < 20000) _mm_pause(); else sched_yield();
    }
}

typedef struct { ck_task_fn fn; void *ctx; } for_ctx;

static void for_task(void *p, int begin, int end) {
    for_ctx *c = p;
    c->fn(c->ctx, begin, end, pool_thread_index);
}

void ck_pool_for(ck_pool *pool, ck_task_fn fn, void *ctx, int items, int chunk) {
    for_ctx c = { fn, ctx };
    pool_run(pool, for_task, &c, items, chunk);
}

// ------------------------------------------------------------ matvec / matmat

typedef struct {
    const ck_matvec_job *jobs;
    int njobs, n, cols, total_rows;
    const float *x;
    const float *xsum;
    int exact; // each input vector through the one-vector kernels (ck_matmat_exact)
} mv_ctx;

static void mv_task(void *p, int begin, int end) {
    mv_ctx *c = p;
    int simd = ck_simd_enabled();
    float *tmp = simd ? NULL : malloc((size_t)c->cols * sizeof(float));
    int base = 0;
    for (int j = 0; j < c->njobs; j++) {
        const ck_matvec_job *job = &c->jobs[j];
        int lo = begin > base ? begin - base : 0, hi = end - base < job->rows ? end - base : job->rows;
        if (job->dtype == CK_Q4_1_SPLIT) { // one-vector kernel (decode), once per input vector
            uint8_t *blocks = NULL;
            int nb = c->cols / 32;
            for (int r = lo; r < hi; r++) {
                for (int k = 0; k < c->n; k++) {
                    const float *x = c->x + (size_t)k * c->cols;
                    float *y = job->y + (size_t)k * job->rows + r;
#if defined(__x86_64__)
                    if (simd == 2 && c->n > 1) {   // exact: several vectors, each as dot_row1_q4_1_split
                        int kn = c->n - k < 4 ? c->n - k : 4;
                        dot_rowsN_q4_1_split(job->w, job->rows, r, x, kn, c->cols, c->xsum + (size_t)k * nb, y,
                                             (size_t)job->rows);
                        k += kn - 1;
                        continue;
                    }
                    if (simd == 2) {
                        *y = dot_row1_q4_1_split(job->w, job->rows, r, x, c->cols, c->xsum + (size_t)k * nb);
                        continue;
                    }
#endif
                    // Without AVX-512 (only when a test lowers the level): back to blocks, then the plain path.
                    if (!blocks) blocks = malloc(ck_row_bytes(CK_Q4_1, c->cols));
                    if (!tmp) tmp = malloc((size_t)c->cols * sizeof(float));
                    split_row_to_q4_1(job->w, job->rows, r, c->cols, blocks);
                    dot_rows_scalar(blocks, CK_Q4_1, x, 1, c->cols, tmp, y, job->rows);
                }
            }
            free(blocks);
            base += job->rows;
            if (base >= end) break;
            continue;
        }
        size_t rb = ck_row_bytes(job->dtype, c->cols);
        for (int r = lo; r < hi; r++) {
            const uint8_t *row = (const uint8_t *)job->w + rb * r;
            // Exact: one vector at a time, the row still in L1 for the next (the kernels
            // specialize n = 1, so a row's result with n > 1 can differ in its last bits).
            for (int k0 = 0; k0 < c->n; k0 += c->exact ? 1 : 8) {
                int kn = c->exact ? 1 : c->n - k0 < 8 ? c->n - k0 : 8;
#if defined(__x86_64__)
                if (c->exact && simd == 2 && job->dtype == CK_Q8_0 && c->n > 1) {   // each vector as dot_row1_avx512
                    int m = c->n - k0 < 8 ? c->n - k0 : 8;
                    dot_rowsN_q8_0(row, c->x + (size_t)k0 * c->cols, m, c->cols, job->y + (size_t)k0 * job->rows + r,
                                   (size_t)job->rows);
                    k0 += m - 1;
                    continue;
                }
                if (simd == 2) {
                    dot_rows_avx512(row, job->dtype, c->x + (size_t)k0 * c->cols, kn, c->cols,
                                    c->xsum + (size_t)k0 * (c->cols / 32), job->y + (size_t)k0 * job->rows + r, job->rows);
                    continue;
                }
                if (simd) {
                    dot_rows_avx2(row, job->dtype, c->x + (size_t)k0 * c->cols, kn, c->cols,
                                  c->xsum + (size_t)k0 * (c->cols / 32), job->y + (size_t)k0 * job->rows + r, job->rows);
                    continue;
                }
#endif
                dot_rows_scalar(row, job->dtype, c->x + (size_t)k0 * c->cols, kn, c->cols, tmp,
                                job->y + (size_t)k0 * job->rows + r, job->rows);
            }
        }
        base += job->rows;
        if (base >= end) break;
    }
    free(tmp);
}

static void matmat(ck_pool *pool, const ck_matvec_job *jobs, int njobs, const float *x, int n, int cols, int exact) {
    int total = 0;
    for (int j = 0; j < njobs; j++) total += jobs[j].rows;
    int nb = cols / 32;
    float stack_sum[4096];
    float *xsum = (size_t)n * nb <= 4096 ? stack_sum : malloc((size_t)n * nb * sizeof(float));
    for (int k = 0; k < n; k++)
        for (int b = 0; b < nb; b++) {
            float s = 0;
            for (int i = 0; i < 32; i++) s += x[(size_t)k * cols + b * 32 + i];
            xsum[k * nb + b] = s;
        }
    mv_ctx c = { jobs, njobs, n, cols, total, x, xsum, exact };
    pool_run(pool, mv_task, &c, total, 32);
    if (xsum != stack_sum) free(xsum);
}

void ck_matmat(ck_pool *pool, const ck_matvec_job *jobs, int njobs, const float *x, int n, int cols) {
    matmat(pool, jobs, njobs, x, n, cols, 0);
}

void ck_matmat_exact(ck_pool *pool, const ck_matvec_job *jobs, int njobs, const float *x, int n, int cols) {
    matmat(pool, jobs, njobs, x, n, cols, 1);
}

typedef struct { const uint8_t *src; uint8_t *nib, *dp, *mp; } split_ctx;

static void split_task(void *p, int begin, int end) {
    split_ctx *c = p;
    for (size_t i = (size_t)begin; i < (size_t)end; i++) {
        const uint8_t *blk = c->src + i * 20;
        memcpy(c->nib + i * 16, blk + 4, 16);
        memcpy(c->dp + i * 2, blk, 2);
        memcpy(c->mp + i * 2, blk + 2, 2);
    }
}

typedef struct { uint8_t *dst; const uint8_t *src; size_t bytes; } copy_ctx;
#define COPY_CHUNK 65536

static void copy_task(void *p, int begin, int end) {
    copy_ctx *c = p;
    size_t a = (size_t)begin * COPY_CHUNK, e = (size_t)end * COPY_CHUNK;
    if (e > c->bytes) e = c->bytes;
    memcpy(c->dst + a, c->src + a, e - a);
}

void ck_split_q4_1_inplace(ck_pool *pool, void *data, void *staging, int rows, int cols) {
    size_t nb = (size_t)cols / 32, blocks = (size_t)rows * nb;
    uint8_t *nib = staging, *dp = nib + blocks * 16, *mp = dp + blocks * 2;
    split_ctx sc = { data, nib, dp, mp };
    pool_run(pool, split_task, &sc, (int)blocks, 4096);
    copy_ctx cc = { data, staging, blocks * 20 };
    pool_run(pool, copy_task, &cc, (int)((cc.bytes + COPY_CHUNK - 1) / COPY_CHUNK), 4);
}

void ck_matvec(ck_pool *pool, const ck_matvec_job *jobs, int njobs, const float *x, int cols) {
    ck_matmat(pool, jobs, njobs, x, 1, cols);
}

// ---------------------------------------------------------------- dequantize

typedef struct { const uint8_t *w; int dtype; float *dst; int rows, cols; } dq_ctx;

static void dq_task(void *p, int begin, int end) {
    dq_ctx *c = p;
    size_t rb = ck_row_bytes(c->dtype, c->cols);
    for (int r = begin; r < end; r++) {
        const uint8_t *row = c->w + rb * r;
        float *d = c->dst + (size_t)r * c->cols;
#if defined(__x86_64__)
        if (ck_simd_enabled() == 2 && c->dtype == CK_Q5_0) { dequant_row_q5_0_avx512(row, d, c->cols); continue; }
        if (ck_simd_enabled() == 2 && c->dtype == CK_Q4_K) { dequant_row_q4_K_avx512(row, d, c->cols); continue; }
        if (ck_simd_enabled() == 2 && c->dtype == CK_Q6_K) { dequant_row_q6_K_avx512(row, d, c->cols); continue; }
        if (ck_simd_enabled() == 2 && is_block_format(c->dtype)) { dequant_row_blocks_avx512(row, c->dtype, d, c->cols); continue; }
        if (ck_simd_enabled() && is_block_format(c->dtype)) { dequant_row_blocks_avx2(row, c->dtype, d, c->cols); continue; }
        if (ck_simd_enabled() == 2 && (c->dtype == CK_Q4_1 || c->dtype == CK_Q8_0)) {
            dequant_row_avx512(row, c->dtype, d, c->cols);
            continue;
        }
        if (ck_simd_enabled() && (c->dtype == CK_Q4_1 || c->dtype == CK_Q8_0)) {
            extern void ck_dequant_row_avx2(const uint8_t *, int, float *, int);
            ck_dequant_row_avx2(row, c->dtype, d, c->cols);
            continue;
        }
#endif
        dequant_row_scalar(row, c->dtype, d, c->cols);
    }
}

#if defined(__x86_64__)
AVX2 void ck_dequant_row_avx2(const uint8_t *row, int dtype, float *d, int cols) {
    for (int b = 0; b < cols / 32; b++) {
        __m256 q[4];
        if (dtype == CK_Q4_1) {
            const uint8_t *blk = row + b * 20;
            nibbles(blk + 4, q);
            __m256 s = _mm256_set1_ps(h2f(blk)), m = _mm256_set1_ps(h2f(blk + 2));
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(d + b * 32 + 8 * i, _mm256_fmadd_ps(q[i], s, m));
        } else {
            const uint8_t *blk = row + b * 34;
            bytes_i8(blk + 2, q);
            __m256 s = _mm256_set1_ps(h2f(blk));
            for (int i = 0; i < 4; i++) _mm256_storeu_ps(d + b * 32 + 8 * i, _mm256_mul_ps(q[i], s));
        }
    }
}
#endif

void ck_dequantize_rows(ck_pool *pool, const void *w, int dtype, float *dst, int rows, int cols) {
    dq_ctx c = { w, dtype, dst, rows, cols };
    pool_run(pool, dq_task, &c, rows, 16);
}

// ---------------------------------------------------------------- attention

static float dot_f32(const float *a, const float *b, int n) {
#if defined(__x86_64__)
    extern float ck_dot_avx2(const float *, const float *, int);
    if (ck_simd_enabled()) return ck_dot_avx2(a, b, n);
#endif
    float s = 0;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
static void axpy_f32(float *y, float a, const float *x, int n) {
#if defined(__x86_64__)
    extern void ck_axpy_avx2(float *, float, const float *, int);
    if (ck_simd_enabled()) { ck_axpy_avx2(y, a, x, n); return; }
#endif
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}
#if defined(__x86_64__)
AVX2 float ck_dot_avx2(const float *a, const float *b, int n) {
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum256(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
AVX2 void ck_axpy_avx2(float *y, float a, const float *x, int n) {
    __m256 av = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}
#endif

// Attention over one block of keys with a running (online) softmax: the row's state is its
// largest score so far m, the sum of e^(score − m) so far l, and its output o, which holds the
// values weighted by e^(score − m) (divided by l once every block is in).

void ck_attend_row_block(float *o, const float *q, const float *k, const float *v, int ld, int nb, int d,
                         float scale, float *m, float *l, float *s) {
    float mb = -INFINITY;
    for (int j = 0; j < nb; j++) {
        s[j] = dot_f32(q, k + (size_t)j * ld, d) * scale;
        if (s[j] > mb) mb = s[j];
    }
    float mn = mb > *m ? mb : *m;
    float alpha = *m == -INFINITY ? 0.0f : expf(*m - mn);
    float sum = 0;
    for (int j = 0; j < nb; j++) { s[j] = expf(s[j] - mn); sum += s[j]; }
    *l = *l * alpha + sum;
    *m = mn;
    for (int t = 0; t < d; t++) o[t] *= alpha;
    for (int j = 0; j < nb; j++) axpy_f32(o, s[j], v + (size_t)j * ld, d);
}

// ------------------------------------------------------------------- softmax

#if defined(__x86_64__)
// e^x for 16 lanes: x = k·ln2 + r, |r| ≤ ln2/2, e^r by a degree-6 polynomial
// (Cephes' expf coefficients), 2^k by exponent arithmetic. Relative error ≈ 2e-7.
AVX512 static inline __m512 exp512(__m512 x) {
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-87.3365478515625f));
    __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, k);
}

#endif


#if defined(__x86_64__)
AVX512 static float max_avx512(const float *s, int n) {
    __m512 mv = _mm512_set1_ps(-INFINITY);
    int j = 0;
    for (; j + 16 <= n; j += 16) mv = _mm512_max_ps(mv, _mm512_loadu_ps(s + j));
    float m = _mm512_reduce_max_ps(mv);
    for (; j < n; j++) if (s[j] > m) m = s[j];
    return m;
}

AVX512 static double exp_sum_avx512(float *s, int n, float m) {
    __m512 mb = _mm512_set1_ps(m);
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    int j = 0;
    for (; j + 16 <= n; j += 16) {
        __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), mb));
        _mm512_storeu_ps(s + j, e);
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    double sum = _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
    for (; j < n; j++) {
        __m512 e = exp512(_mm512_set1_ps(s[j] - m));
        s[j] = _mm512_cvtss_f32(e);
        sum += (double)s[j];
    }
    return sum;
}
#endif

float ck_max(const float *s, int n) {
#if defined(__x86_64__)
    if (ck_simd_enabled() == 2) return max_avx512(s, n);
#endif
    float m = -INFINITY;
    for (int j = 0; j < n; j++) if (s[j] > m) m = s[j];
    return m;
}

double ck_exp_sum(float *s, int n, float m) {
#if defined(__x86_64__)
    if (ck_simd_enabled() == 2) return exp_sum_avx512(s, n, m);
#endif
    double sum = 0;
    for (int j = 0; j < n; j++) { s[j] = expf(s[j] - m); sum += (double)s[j]; }
    return sum;
}

void ck_online_softmax_rows(float *s, int rows, int nb, int lds, int first, float *m, float *l, int mls,
                            float *alpha) {
    for (int i = 0; i < rows; i++) {
        float *si = s + (size_t)i * lds;
        int n = first + i + 1;
        if (n > nb) n = nb;
        if (n <= 0) {   // every key of the block is after this row
            memset(si, 0, (size_t)nb * sizeof(float));
            alpha[i] = 1;
            continue;
        }
        float *mi = m + (size_t)i * mls, *li = l + (size_t)i * mls;
        float mb = ck_max(si, n);
        float mn = mb > *mi ? mb : *mi;
        alpha[i] = *mi == -INFINITY ? 0.0f : expf(*mi - mn);
        float sum = (float)ck_exp_sum(si, n, mn);
        if (n < nb) memset(si + n, 0, (size_t)(nb - n) * sizeof(float));
        *li = *li * alpha[i] + sum;
        *mi = mn;
    }
}

#if defined(__x86_64__)
AVX512 static void attention_backward_row_avx512(float *s, float *dp, int n, float lse, float delta) {
    int j = 0;
    __m512 vl = _mm512_set1_ps(lse), vd = _mm512_set1_ps(delta);
    for (; j + 16 <= n; j += 16) {
        __m512 p = exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), vl));
        _mm512_storeu_ps(s + j, p);
        _mm512_storeu_ps(dp + j, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_loadu_ps(dp + j), vd)));
    }
    if (j < n) {
        __mmask16 k = (__mmask16)((1u << (n - j)) - 1);
        __m512 p = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vl));
        _mm512_mask_storeu_ps(s + j, k, p);
        _mm512_mask_storeu_ps(dp + j, k, _mm512_mul_ps(p, _mm512_sub_ps(_mm512_maskz_loadu_ps(k, dp + j), vd)));
    }
}
#endif

void ck_attention_backward_rows(float *s, float *dp, int rows, int nb, int lds, int first, const float *lse, int lses,
                                const float *delta) {
    for (int i = 0; i < rows; i++) {
        float *si = s + (size_t)i * lds, *di = dp + (size_t)i * lds;
        int n = first + i + 1;
        if (n > nb) n = nb;
        if (n < 0) n = 0;
        float li = lse[(size_t)i * lses], dl = delta[i];
#if defined(__x86_64__)
        if (ck_simd_enabled() == 2) attention_backward_row_avx512(si, di, n, li, dl);
        else
#endif
        for (int j = 0; j < n; j++) {
            float p = expf(si[j] - li);
            si[j] = p;
            di[j] = p * (di[j] - dl);
        }
        if (n < nb) {
            memset(si + n, 0, (size_t)(nb - n) * sizeof(float));
            memset(di + n, 0, (size_t)(nb - n) * sizeof(float));
        }
    }
}

void ck_rescale_add(float *o, int ldo, const float *alpha, const float *pv, int rows, int d) {
    for (int i = 0; i < rows; i++) {
        float *oi = o + (size_t)i * ldo, a = alpha[i];
        const float *pi = pv + (size_t)i * d;
        for (int t = 0; t < d; t++) oi[t] = oi[t] * a + pi[t];
    }
}

// -------------------------------------------------------------------- SwiGLU

#if defined(__x86_64__)
AVX512 static void swiglu_avx512(float *out, const float *gate, const float *up, long n) {
    long i = 0;
    __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i);
        __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
    }
    for (; i < n; i++) out[i] = gate[i] / (1 + expf(-gate[i])) * up[i];
}
#endif

void ck_swiglu(float *out, const float *gate, const float *up, long n) {
#if defined(__x86_64__)
    if (ck_simd_enabled() == 2) { swiglu_avx512(out, gate, up, n); return; }
#endif
    for (long i = 0; i < n; i++) out[i] = gate[i] / (1 + expf(-gate[i])) * up[i];
}

// GELU with PyTorch's tanh approximation, as a sigmoid: 0.5·(1 + tanh(u)) = 1 / (1 + e^(-2u)),
// u = √(2/π)·(g + 0.044715·g³).
#define GELU_2BETA 1.5957691216057308f   // 2·√(2/π)
#define GELU_KAPPA 0.044715f
#if defined(__x86_64__)
AVX512 static void gelu_tanh_gate_avx512(float *out, const float *gate, const float *up, long n) {
    long i = 0;
    __m512 one = _mm512_set1_ps(1.0f), b2 = _mm512_set1_ps(-GELU_2BETA), kappa = _mm512_set1_ps(GELU_KAPPA);
    for (; i + 16 <= n; i += 16) {
        __m512 g = _mm512_loadu_ps(gate + i);
        __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(kappa, g), _mm512_mul_ps(g, g), g);
        __m512 e = exp512(_mm512_mul_ps(b2, inner));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1 + expf(-GELU_2BETA * (g + GELU_KAPPA * g * g * g))) * up[i];
    }
}
#endif

void ck_gelu_tanh_gate(float *out, const float *gate, const float *up, long n) {
#if defined(__x86_64__)
    if (ck_simd_enabled() == 2) { gelu_tanh_gate_avx512(out, gate, up, n); return; }
#endif
    for (long i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = g / (1 + expf(-GELU_2BETA * (g + GELU_KAPPA * g * g * g))) * up[i];
    }
}

// ------------------------------------------------------------------ zeroth-order z
// splitmix64 of key ^ j; four 16-bit lanes as uniforms (u + 0.5) / 65536; z = (Σu − 2)·√3. Every
// float step is exact but the last product, and contraction into FMA is off, so the scalar and the
// AVX-512 loop (the same code, vectorized by the compiler) give the same bits.
static inline uint64_t zo_mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

#define ZO_BODY                                                                         \
    _Pragma("clang fp contract(off)")                                                  \
    const float sqrt3 = 1.7320508075688772f;                                           \
    for (int64_t i = 0; i < n; i++) {                                                  \
        uint64_t x = zo_mix(key ^ (uint64_t)(start + i));                              \
        float u0 = ((float)(int32_t)(x & 0xFFFF) + 0.5f) / 65536.0f;                   \
        float u1 = ((float)(int32_t)((x >> 16) & 0xFFFF) + 0.5f) / 65536.0f;           \
        float u2 = ((float)(int32_t)((x >> 32) & 0xFFFF) + 0.5f) / 65536.0f;           \
        float u3 = ((float)(int32_t)((x >> 48) & 0xFFFF) + 0.5f) / 65536.0f;           \
        float z = ((((u0 + u1) + u2) + u3) - 2.0f) * sqrt3;                            \
        if (mode == 0) p[i] += b * (a * z);                                            \
        else if (mode == 1) p[i] = a * z;                                              \
        else p[i] -= b * ((a * z) + c * p[i]);                                         \
    }

static void zo_apply_scalar(float *p, uint64_t key, int64_t start, int64_t n, float a, float b, float c, int mode) {
    ZO_BODY
}

#if defined(__x86_64__)
AVX512 static void zo_apply_avx512(float *p, uint64_t key, int64_t start, int64_t n, float a, float b, float c, int mode) {
    ZO_BODY
}
#endif

void ck_zo_apply(float *p, uint64_t key, int64_t start, int64_t n, float a, float b, float c, int mode) {
#if defined(__x86_64__)
    if (ck_simd_enabled() == 2) { zo_apply_avx512(p, key, start, n, a, b, c, mode); return; }
#endif
    zo_apply_scalar(p, key, start, n, a, b, c, mode);
}

/* 8-bit optimizer state: codes[i] for x[i] / scale in the sorted 256-value map q, as torchao's
 * quantize_8bit_with_qmap: the largest c with q[c] <= v (0 below the map) by an 8-step binary search,
 * then c + 1 when v - q[c] >= (q[c+1] - q[c]) * 0.5 (c = 255 stays). Plain fp32 operations, none fused. */
static void quantize_dynamic_scalar(const float *x, float scale, const float *q, uint8_t *codes, int n) {
    for (int i = 0; i < n; i++) {
        const float v = x[i] / scale;
        int c = v >= q[128] ? 128 : 0;
        c += v >= q[c + 64] ? 64 : 0;
        c += v >= q[c + 32] ? 32 : 0;
        c += v >= q[c + 16] ? 16 : 0;
        c += v >= q[c + 8] ? 8 : 0;
        c += v >= q[c + 4] ? 4 : 0;
        c += v >= q[c + 2] ? 2 : 0;
        c += v >= q[c + 1] ? 1 : 0;
        const int up = c < 255 ? c + 1 : 255;
        const float down = q[c], half = (q[up] - down) * 0.5f;
        codes[i] = (uint8_t)(v - down >= half ? up : c);
    }
}

#if defined(__x86_64__)
/* The same search, 8 values to a vector: each step gathers q[c + step] per lane and takes the step
 * where v >= it, then the same rounding; the same comparisons after the same fp32 operations (the
 * division, the subtraction and the halving apart, none fused), so the same codes. AVX2 (the
 * AVX-512 machines run it too): the search is gather-bound, and wider gathers gain little. */
AVX2 static inline __m256i quantize8_avx2(__m256 v, const float *q) {
    __m256i c = _mm256_setzero_si256();
    for (int step = 128; step >= 1; step >>= 1) {
        const __m256i probe = _mm256_add_epi32(c, _mm256_set1_epi32(step));
        const __m256 ge = _mm256_cmp_ps(v, _mm256_i32gather_ps(q, probe, 4), _CMP_GE_OQ);
        c = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(c), _mm256_castsi256_ps(probe), ge));
    }
    const __m256i up = _mm256_min_epi32(_mm256_add_epi32(c, _mm256_set1_epi32(1)), _mm256_set1_epi32(255));
    const __m256 down = _mm256_i32gather_ps(q, c, 4), next = _mm256_i32gather_ps(q, up, 4);
    const __m256 half = _mm256_mul_ps(_mm256_sub_ps(next, down), _mm256_set1_ps(0.5f));
    const __m256 round = _mm256_cmp_ps(_mm256_sub_ps(v, down), half, _CMP_GE_OQ);
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(c), _mm256_castsi256_ps(up), round));
}

AVX2 static void quantize_dynamic_avx2(const float *x, float scale, const float *q, uint8_t *codes, int n) {
    const __m256 s = _mm256_set1_ps(scale);
    int i = 0;
    // Four vectors at a time: each search is a chain of dependent gathers, so independent ones overlap.
    for (; i + 32 <= n; i += 32) {
        __m256i c[4];
        for (int k = 0; k < 4; k++) c[k] = quantize8_avx2(_mm256_div_ps(_mm256_loadu_ps(x + i + 8 * k), s), q);
        // 32 codes of 0…255 to bytes: pack to 16 bits, then to 8, and undo the packs' lane interleave.
        const __m256i w01 = _mm256_packus_epi32(c[0], c[1]), w23 = _mm256_packus_epi32(c[2], c[3]);
        const __m256i b = _mm256_packus_epi16(w01, w23);
        _mm256_storeu_si256((__m256i *)(codes + i),
                            _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
    if (i < n) quantize_dynamic_scalar(x + i, scale, q, codes + i, n - i);
}
#endif

void ck_quantize_dynamic(const float *x, float scale, const float *q, uint8_t *codes, int n) {
#if defined(__x86_64__)
    if (ck_simd_enabled() >= 1) { quantize_dynamic_avx2(x, scale, q, codes, n); return; }
#endif
    quantize_dynamic_scalar(x, scale, q, codes, n);
}
