// Hot CPU kernels Swift cannot express well: SIMD dot products that read
// quantized ggml blocks directly (AVX2+FMA+F16C, chosen at run time, with a
// portable scalar path), and a small spinning thread pool that runs them on
// all cores with microsecond dispatch (decode issues ~150 parallel regions per token).
#pragma once
#include <stddef.h>
#include <stdint.h>

// Element types, by ggml's ids (block layouts as in ggml-common.h). CK_Q4_1_SPLIT is
// Offload's own in-memory layout of Q4_1 for decode (see ck_split_q4_1); only
// ck_matvec/ck_matmat with n = 1 read it.
enum {
    CK_F32 = 0, CK_F16 = 1, CK_Q4_0 = 2, CK_Q4_1 = 3, CK_Q5_0 = 6, CK_Q5_1 = 7, CK_Q8_0 = 8,
    CK_Q2_K = 10, CK_Q3_K = 11, CK_Q4_K = 12, CK_Q5_K = 13, CK_Q6_K = 14, CK_IQ4_NL = 20, CK_IQ4_XS = 23,
    CK_BF16 = 30, CK_Q4_1_SPLIT = 1003
};

typedef struct ck_pool ck_pool;
ck_pool *ck_pool_create(int threads);
void ck_pool_destroy(ck_pool *pool);
int ck_pool_threads(const ck_pool *pool);

/// A task over items [begin, end), run by pool thread `thread` (0 ..< ck_pool_threads).
typedef void (*ck_task_fn)(void *ctx, int begin, int end, int thread);
/// Runs fn over items [0, items) in chunks of `chunk` on every thread of the pool; returns
/// when all are done. Threads claim chunks one at a time, so a descheduled thread delays
/// nothing. `pool` may be NULL (runs on the calling thread, as thread 0).
void ck_pool_for(ck_pool *pool, ck_task_fn fn, void *ctx, int items, int chunk);

/// One matrix-vector product y[0..rows) = W[rows, cols] · x. W's rows are
/// contiguous in `dtype` (cols a multiple of 32 for quantized types).
typedef struct {
    const void *w;
    int dtype;
    float *y;
    int rows;
} ck_matvec_job;

/// Runs `njobs` products that share the input x (cols values), splitting all
/// rows across the pool. `pool` may be NULL (runs on the calling thread).
void ck_matvec(ck_pool *pool, const ck_matvec_job *jobs, int njobs, const float *x, int cols);

/// Same products with `n` input vectors (x: n × cols, row-major; y of job j:
/// n × rows, row-major). Each weight row is read once for all n inputs.
void ck_matmat(ck_pool *pool, const ck_matvec_job *jobs, int njobs, const float *x, int n, int cols);

/// ck_matmat where input vector k's outputs are bit-identical to ck_matvec on
/// that vector alone (any n): batched decode of independent sequences shares
/// each weight row's read (it stays in cache) without changing any sequence's bits.
void ck_matmat_exact(ck_pool *pool, const ck_matvec_job *jobs, int njobs, const float *x, int n, int cols);

/// Q4_1 rows re-laid out for the decode kernel, same 20 bytes per block: all
/// nibbles (rows × nb × 16 bytes), then every block's scale d (rows × nb fp16),
/// then every min m (rows × nb fp16). Reading 16 scales at once takes the
/// per-block scalar conversions off the kernel's critical path. dst holds
/// rows × cols / 32 × 20 bytes.
void ck_split_q4_1(const void *src, void *dst, int rows, int cols);

/// ck_split_q4_1 of `data` in place, through `staging` (as large as the matrix), on the pool.
void ck_split_q4_1_inplace(ck_pool *pool, void *data, void *staging, int rows, int cols);

/// Plain scalar reference: y = W · x, for tests of the fast paths.
void ck_matvec_reference(const void *w, int dtype, float *y, int rows, const float *x, int cols);

/// Rows [0, rows) of W (dtype) to fp32 dst (rows × cols), split across the pool.
void ck_dequantize_rows(ck_pool *pool, const void *w, int dtype, float *dst, int rows, int cols);

/* 8-bit optimizer state: the codes of x[0..n) / scale in the sorted 256-value map q (torchao's rule). */
void ck_quantize_dynamic(const float *x, float scale, const float *q, uint8_t *codes, int n);

/// Bytes in one row of `cols` values of `dtype` (cols a whole number of blocks); 0 for an unknown type.
size_t ck_row_bytes(int dtype, int cols);
/// Values per block of `dtype` (1 for plain floats, 32 or 256 for the block formats); 0 for an unknown type.
int ck_block_values(int dtype);
/// Bytes per block of `dtype`; 0 for an unknown type.
int ck_block_bytes(int dtype);

/// The SIMD level in use: 0 scalar, 1 AVX2+FMA+F16C, 2 AVX-512 (F, BW, VL, DQ).
int ck_simd_enabled(void);
/// The best level this CPU supports.
int ck_simd_best(void);
/// Sets the level (clamped to what the CPU supports; tests compare the paths); returns the previous one.
int ck_set_simd(int level);

/// One query row of one head against `nb` keys (rows `ld` floats apart) with a running softmax:
/// m, l the row's largest score and sum of e^(score − m) so far, o its unnormalized output (d
/// floats), all updated; s: scratch of nb floats. Scores are scaled by `scale`.
void ck_attend_row_block(float *o, const float *q, const float *k, const float *v, int ld, int nb, int d,
                         float scale, float *m, float *l, float *s);

/// The running-softmax step for `rows` rows of scores (nb keys, rows lds apart): row i sees the
/// first first + i + 1 keys (none when ≤ 0, all when ≥ nb). In place, s becomes e^(s − m_new)
/// (zero past the row's keys); m, l (stride mls) are updated and alpha[i] = e^(m_old − m_new),
/// the factor the row's output so far is to be scaled by (1 when it sees no key here).
void ck_online_softmax_rows(float *s, int rows, int nb, int lds, int first, float *m, float *l, int mls,
                            float *alpha);

/// The training attention's backward step for `rows` rows of one band × key block (nb keys, rows
/// lds apart; row i sees the first first + i + 1 keys): s (scores) becomes P = e^(s − lse_i) and dp
/// (dO·Vᵀ) becomes P ⊙ (dp − delta_i), both zero past the row's keys. lse: a row's every lses.
void ck_attention_backward_rows(float *s, float *dp, int rows, int nb, int lds, int first, const float *lse, int lses,
                                const float *delta);

/// o_i = o_i · alpha_i + pv_i for rows of d floats (o rows ldo apart, pv rows d apart).
void ck_rescale_add(float *o, int ldo, const float *alpha, const float *pv, int rows, int d);

/// Largest of s[0..n).
float ck_max(const float *s, int n);
/// s[j] = e^(s[j] − m) in place for j < n; returns their sum, added in double in a fixed order
/// (AVX-512: the softmax's e^x, 16 lanes; else expf). The same call gives the same bits every time.
double ck_exp_sum(float *s, int n, float m);

/// SwiGLU: out[i] = g / (1 + e^-g) · up[i], g = gate[i]; out may alias gate.
/// AVX-512 uses the same e^x as the softmax (relative error ≈ 2e-7).
void ck_swiglu(float *out, const float *gate, const float *up, long n);

/// Gemma's gate: out[i] = gelu_tanh(gate[i]) · up[i] (PyTorch's tanh approximation, computed as
/// g / (1 + e^(-2u))); out may alias gate. AVX-512 uses the softmax's e^x.
void ck_gelu_tanh_gate(float *out, const float *gate, const float *up, long n);

/// 1 when ck_quantize_rows writes `dtype` (Q8_0, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K), else 0.
int ck_can_quantize(int dtype);
/// fp32 rows (rows × cols) to `dtype` blocks at dst (rows × ck_row_bytes(dtype, cols) bytes), as
/// ggml's reference quantizers write them (no importance matrix), rows split across the pool.
/// Returns the bytes written, or 0 (writing nothing) for a type it cannot write or cols not a
/// whole number of blocks.
size_t ck_quantize_rows(ck_pool *pool, const float *src, int dtype, void *dst, int rows, int cols);

/// Zeroth-order training's z (the generator Sources/Runtime/ZerothOrder.swift documents) for elements
/// [start, start + n) of a tensor with `key` (p points at element start), by `mode`:
/// 0: p[j] += b · (a · z_j) (a perturbation);  1: p[j] = a · z_j;
/// 2: p[j] −= b · ((a · z_j) + c · p[j]) (SGD with gradient a·z, learning rate b, weight decay c).
/// Float32, no fused multiply-add: the same bits at every SIMD level.
void ck_zo_apply(float *p, uint64_t key, int64_t start, int64_t n, float a, float b, float c, int mode);
