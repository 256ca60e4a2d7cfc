/*
 * Attention products on stored latents, read as they are stored: float16,
 * int8, or 4-bit packed two per byte, int8 and 4-bit with a float16 scale
 * per token. PyTorch on the CPU has no product of int8 (or packed 4-bit)
 * data with float32 queries, so without these kernels every decoding step
 * converts each layer's latents to float32 in memory and reads them again.
 * Here 16 tokens of one coordinate at a time are converted in registers,
 * and a step reads the latents' bytes once.
 *
 * Plain C (no Python or torch headers), called through ctypes by
 * kvtorch.latent with tensors' data pointers. Threads: OpenMP, which in a
 * process with torch is torch's own libgomp and its thread pool.
 *
 * Layout (kvtorch.latent.Store): tiles of TILE tokens, coordinate-major
 * within a tile, so that a tile is one contiguous block and a coordinate's
 * tokens are contiguous in it. Latents of one (batch row b, group g):
 * coordinate j of token t = TILE*i + k at z[b*zs[0] + g*zs[1] + i*zs[2] +
 * j*TILE + k] (elements of the stored type), j < w (packed 4-bit: w bytes,
 * coordinates 2j in the low nibble and 2j+1 in the high one, stored value
 * minus 8); scales at scale[b*ss[0] + g*ss[1] + t].
 * Queries and sums use the coordinates' order of kvtorch.latent.layout:
 * n = wp floats (w rounded up to 16), for 4 bits 2 wp: the even
 * coordinates at 0 .., the odd ones at wp ...
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef uint8_t vu8 __attribute__((vector_size(LANES)));
typedef uint16_t vu16 __attribute__((vector_size(2 * LANES)));
typedef int32_t vi32 __attribute__((vector_size(4 * LANES)));

/* Bytes to floats through int32 (GCC converts 8-bit vectors to float one
 * element at a time). */
#define FLOATS(x) __builtin_convertvector(__builtin_convertvector((x), vi32), vf)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif
#define INLINE static inline __attribute__((always_inline))

#define TILE 32  /* tokens per tile (a multiple of 2 LANES) */
#define UNIT 256 /* tokens per unit of work (a multiple of TILE) */
#define MT 12    /* query rows scored together */
#define MW 4     /* query rows weighed together */

typedef struct {
    int kind; /* 16: float16, 8: int8, 4: packed 4-bit */
    const void *z;
    int64_t zs[3];
    const void *scale; /* float16, or NULL (float16 latents) */
    int64_t ss[3];
    int64_t batch, groups, tokens, w;
} kvt_latents;

INLINE vf load(const float *p) {
    vf v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* float16 bits to floats, exactly (subnormals, infinities and NaN
 * included; GCC 12 converts _Float16 vectors one element at a time). */
INLINE vf halfs(vu16 x) {
    vi32 h = __builtin_convertvector(x, vi32);
    vi32 o = (h & 0x7fff) << 13, exp = o & (0x7c00 << 13);
    o += (127 - 15) << 23;
    o += (exp == (0x7c00 << 13)) & ((128 - 16) << 23); /* infinities, NaN */
    vi32 sub = exp == 0, m = sub & (113 << 23);         /* zero, subnormals: renormalised */
    o += sub & (1 << 23);
    vf f, magic;
    memcpy(&f, &o, sizeof f);
    memcpy(&magic, &m, sizeof magic);
    f -= magic;
    memcpy(&o, &f, sizeof o);
    o |= (h & 0x8000) << 16;
    memcpy(&f, &o, sizeof f);
    return f;
}

INLINE float hsum(vf v) {
    typedef float v8 __attribute__((vector_size(32)));
    typedef float v4 __attribute__((vector_size(16)));
    v8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
           __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
    v4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}

/* k (≤ LANES) values of a row from p as floats, zero past k; for 4 bits the
 * low nibbles, and the high ones in *hi. */
INLINE vf row(int kind, const uint8_t *p, int k, vf *hi) {
    if (kind == 16) {
        vu16 x = {0};
        if (k >= LANES)
            memcpy(&x, p, sizeof x);
        else
            memcpy(&x, p, 2 * k);
        return halfs(x);
    }
    if (kind == 8) { /* as unsigned bytes, offset by 128 (GCC widens signed ones slowly here) */
        vu8 x = {0};
        if (k >= LANES)
            memcpy(&x, p, sizeof x);
        else
            memcpy(&x, p, k);
        return FLOATS(x ^ 0x80) - ((vf){0} + 128.0f);
    }
    vu8 x;
    memset(&x, 0x88, sizeof x); /* past k: 0 after the offset */
    if (k >= LANES)
        memcpy(&x, p, sizeof x);
    else
        memcpy(&x, p, k);
    vf eight = (vf){0} + 8.0f;
    *hi = FLOATS(x >> 4) - eight;
    return FLOATS(x & 0x0F) - eight;
}

/* k (≤ LANES) float16 scales from s as floats; ones where there are none. */
INLINE vf scales(const uint8_t *s, int k) {
    return s ? row(16, s, k, NULL) : (vf){0} + 1.0f;
}

typedef struct {
    int kind;
    const uint8_t *z;      /* coordinate 0 of token 0 */
    int64_t rowstride;     /* bytes between coordinates (in a tile) */
    int64_t tilestride;    /* bytes between tiles */
    const uint8_t *scale;  /* float16 of token 0, or NULL */
    int64_t w, wp;
} side;

/* Tile `tile` of batch row b, group g. */
static side at(const kvt_latents *z, int64_t b, int64_t g, int64_t tile) {
    int64_t size = z->kind == 16 ? 2 : 1;
    side s = {z->kind, (const uint8_t *)z->z + (b * z->zs[0] + g * z->zs[1] + tile * z->zs[2]) * size, TILE * size,
              z->zs[2] * size, NULL, z->w, (z->w + LANES - 1) / LANES * LANES};
    if (z->scale)
        s.scale = (const uint8_t *)z->scale + (b * z->ss[0] + g * z->ss[1] + tile * TILE) * 2;
    return s;
}

static int64_t width(const kvt_latents *z) {
    int64_t wp = (z->w + LANES - 1) / LANES * LANES;
    return z->kind == 4 ? 2 * wp : wp;
}

/* out[i, t] = scale_t · Σ_j pt[j, i] · z[j, t] for MT query rows (pt: the
 * tile's queries, coordinate-major) and tokens start .. stop-1; rows ≥ mt
 * are not written. */
INLINE void scores_body(const side *s, int64_t start, int64_t stop, const float *pt, int64_t mt, float *out,
                        int64_t ldo, int kind, int full) {
    const int64_t size = kind == 16 ? 2 : 1;
    for (int64_t t = start; t < stop; t += 2 * LANES) {
        int k0 = full || stop - t >= LANES ? LANES : (int)(stop - t);
        int k1 = full || stop - t - LANES >= LANES ? LANES : (int)(stop - t - LANES);
        if (k1 < 0)
            k1 = 0;
        /* MT rows x 2 vectors of tokens, named (an array of vectors would
         * live in memory). */
#define ZERO(i) vf a##i##0 = {0}, a##i##1 = {0};
        ZERO(0) ZERO(1) ZERO(2) ZERO(3) ZERO(4) ZERO(5) ZERO(6) ZERO(7) ZERO(8) ZERO(9) ZERO(10) ZERO(11)
        const uint8_t *zt = s->z + t / TILE * s->tilestride + t % TILE * size; /* blocks lie in one tile */
        for (int64_t j = 0; j < s->w; j++) {
            const uint8_t *r = zt + j * s->rowstride;
            vf h0 = {0}, h1 = {0};
            vf z0 = row(kind, r, k0, &h0), z1 = k1 ? row(kind, r + LANES * size, k1, &h1) : (vf){0};
            const float *p = pt + j * MT, *q = pt + (s->wp + j) * MT;
#define FMA(i)                                                                                                     \
    a##i##0 += p[i] * z0;                                                                                          \
    a##i##1 += p[i] * z1;                                                                                          \
    if (kind == 4) {                                                                                               \
        a##i##0 += q[i] * h0;                                                                                      \
        a##i##1 += q[i] * h1;                                                                                      \
    }
            FMA(0) FMA(1) FMA(2) FMA(3) FMA(4) FMA(5) FMA(6) FMA(7) FMA(8) FMA(9) FMA(10) FMA(11)
        }
        vf s0 = scales(s->scale ? s->scale + 2 * t : NULL, k0);
        vf s1 = k1 ? scales(s->scale ? s->scale + 2 * (t + LANES) : NULL, k1) : (vf){0};
#define OUT(i)                                                                                                     \
    if (i < mt) {                                                                                                  \
        vf a = a##i##0 * s0, b = a##i##1 * s1;                                                                     \
        float *o = out + i * ldo + t;                                                                              \
        if (k0 == LANES && k1 == LANES) {                                                                          \
            memcpy(o, &a, sizeof a);                                                                               \
            memcpy(o + LANES, &b, sizeof b);                                                                       \
        } else {                                                                                                   \
            memcpy(o, &a, 4 * k0);                                                                                 \
            memcpy(o + LANES, &b, 4 * k1);                                                                         \
        }                                                                                                          \
    }
        OUT(0) OUT(1) OUT(2) OUT(3) OUT(4) OUT(5) OUT(6) OUT(7) OUT(8) OUT(9) OUT(10) OUT(11)
#undef ZERO
#undef FMA
#undef OUT
    }
}

CLONES static void scores_unit(const side *s, int64_t start, int64_t stop, const float *pt, int64_t mt, float *out,
                               int64_t ldo) {
    int64_t whole = start + (stop - start) / (2 * LANES) * (2 * LANES); /* blocks of 2 LANES, then the rest */
    if (s->kind == 16) {
        scores_body(s, start, whole, pt, mt, out, ldo, 16, 1);
        scores_body(s, whole, stop, pt, mt, out, ldo, 16, 0);
    } else if (s->kind == 8) {
        scores_body(s, start, whole, pt, mt, out, ldo, 8, 1);
        scores_body(s, whole, stop, pt, mt, out, ldo, 8, 0);
    } else {
        scores_body(s, start, whole, pt, mt, out, ldo, 4, 1);
        scores_body(s, whole, stop, pt, mt, out, ldo, 4, 0);
    }
}

/* acc[i, :] += Σ_t c[i, t] · z[:, t] over tokens start .. stop-1 (c: MW
 * rows of UNIT weights, scales applied, zero past stop). */
INLINE void weigh_body(const side *s, int64_t start, int64_t stop, const float *c, float *acc, int64_t n, int kind,
                       int full) {
    const int64_t size = kind == 16 ? 2 : 1;
    for (int64_t j = 0; j < s->w; j += 2) {
        int two = j + 1 < s->w;
#define ZERO(i) vf a##i##0 = {0}, a##i##1 = {0}, a##i##2 = {0}, a##i##3 = {0};
        ZERO(0) ZERO(1) ZERO(2) ZERO(3)
        for (int64_t t = 0; t < stop - start; t += LANES) {
            int k = full || stop - start - t >= LANES ? LANES : (int)(stop - start - t);
            vf h0 = {0}, h1 = {0};
            const uint8_t *r = s->z + (start + t) / TILE * s->tilestride + j * s->rowstride + (start + t) % TILE * size;
            vf z0 = row(kind, r, k, &h0), z1 = two ? row(kind, r + s->rowstride, k, &h1) : (vf){0};
#define FMA(i)                                                                                                     \
    {                                                                                                              \
        vf ci = load(c + i * UNIT + t);                                                                            \
        a##i##0 += ci * z0;                                                                                        \
        a##i##1 += ci * z1;                                                                                        \
        if (kind == 4) {                                                                                           \
            a##i##2 += ci * h0;                                                                                    \
            a##i##3 += ci * h1;                                                                                    \
        }                                                                                                          \
    }
            FMA(0) FMA(1) FMA(2) FMA(3)
        }
#define OUT(i)                                                                                                     \
    {                                                                                                              \
        float *o = acc + i * n;                                                                                    \
        o[j] += hsum(a##i##0);                                                                                     \
        if (two)                                                                                                   \
            o[j + 1] += hsum(a##i##1);                                                                             \
        if (kind == 4) {                                                                                           \
            o[s->wp + j] += hsum(a##i##2);                                                                         \
            if (two)                                                                                               \
                o[s->wp + j + 1] += hsum(a##i##3);                                                                 \
        }                                                                                                          \
    }
        OUT(0) OUT(1) OUT(2) OUT(3)
#undef ZERO
#undef FMA
#undef OUT
    }
}

CLONES static void weigh_unit(const side *s, int64_t start, int64_t stop, const float *c, float *acc, int64_t n) {
    int full = (stop - start) % LANES == 0;
    if (s->kind == 16)
        full ? weigh_body(s, start, stop, c, acc, n, 16, 1) : weigh_body(s, start, stop, c, acc, n, 16, 0);
    else if (s->kind == 8)
        full ? weigh_body(s, start, stop, c, acc, n, 8, 1) : weigh_body(s, start, stop, c, acc, n, 8, 0);
    else
        full ? weigh_body(s, start, stop, c, acc, n, 4, 1) : weigh_body(s, start, stop, c, acc, n, 4, 0);
}

static int too_small(const kvt_latents *z, int64_t m_count) {
    return z->batch * z->groups * z->tokens * m_count * z->w < (1 << 18);
}

/* out [B, G, M, ldo] (columns 0 .. T-1) = the scores of queries p [B, G,
 * M, n]. Returns 0, or -1 where memory ran out. */
int kvt_scores(const kvt_latents *z, const float *p, int64_t m_count, float *out, int64_t ldo) {
    const int64_t n = width(z), tiles = (m_count + MT - 1) / MT, bgs = z->batch * z->groups;
    const int64_t units = (z->tokens + UNIT - 1) / UNIT, total = bgs * tiles * units;
    /* The queries tile by tile, coordinate-major, zero past the last row. */
    float *pt = calloc((size_t)(bgs * tiles * n * MT), sizeof(float));
    if (!pt)
        return -1;
    for (int64_t bg = 0; bg < bgs; bg++)
        for (int64_t m = 0; m < m_count; m++)
            for (int64_t j = 0; j < n; j++)
                pt[((bg * tiles + m / MT) * n + j) * MT + m % MT] = p[(bg * m_count + m) * n + j];
#pragma omp parallel for schedule(static) if (!too_small(z, m_count))
    for (int64_t u = 0; u < total; u++) {
        int64_t bg = u / (tiles * units), tile = u / units % tiles, start = u % units * UNIT;
        int64_t stop = start + UNIT < z->tokens ? start + UNIT : z->tokens, m0 = tile * MT;
        side s = at(z, bg / z->groups, bg % z->groups, start / TILE);
        scores_unit(&s, 0, stop - start, pt + (bg * tiles + tile) * n * MT, m_count - m0 < MT ? m_count - m0 : MT,
                    out + (bg * m_count + m0) * ldo + start, ldo);
    }
    free(pt);
    return 0;
}

/* acc [B, G, M, n] = Σ_t a[.., t] · scale_t · z_t for weights a [B, G, M, T]
 * (strides as[0..2] between batch rows, groups and query rows; tokens
 * contiguous). Returns 0, or -1 where memory ran out. */
int kvt_weigh(const kvt_latents *z, const float *a, const int64_t as[3], int64_t m_count, float *acc) {
    const int64_t n = width(z), bgs = z->batch * z->groups;
    const int64_t units = (z->tokens + UNIT - 1) / UNIT, size = bgs * m_count * n;
    int threads = 1;
#ifdef _OPENMP
    if (!too_small(z, m_count))
        threads = omp_get_max_threads();
#endif
    float *sums = calloc((size_t)(threads * (size + MW * n)), sizeof(float));
    if (!sums)
        return -1;
#pragma omp parallel num_threads(threads) if (threads > 1)
    {
        int id = 0;
#ifdef _OPENMP
        id = omp_get_thread_num();
#endif
        float *mine = sums + id * size, *spare = sums + threads * size + id * MW * n, c[MW * UNIT];
#pragma omp for schedule(static)
        for (int64_t u = 0; u < bgs * units; u++) {
            int64_t bg = u / units, b = bg / z->groups, g = bg % z->groups, start = u % units * UNIT;
            int64_t stop = start + UNIT < z->tokens ? start + UNIT : z->tokens;
            side s = at(z, b, g, start / TILE);
            const float *ab = a + b * as[0] + g * as[1] + start;
            for (int64_t m0 = 0; m0 < m_count; m0 += MW) {
                int64_t mw = m_count - m0 < MW ? m_count - m0 : MW;
                /* This unit's weights for rows m0 .. times the scales, zero past the tokens and rows. */
                memset(c, 0, sizeof c);
                for (int64_t t = 0; t < stop - start; t += LANES) {
                    int k = stop - start - t < LANES ? (int)(stop - start - t) : LANES;
                    vf sc = scales(s.scale ? s.scale + 2 * t : NULL, k);
                    for (int64_t i = 0; i < mw; i++) {
                        vf x = {0};
                        if (k == LANES)
                            memcpy(&x, ab + (m0 + i) * as[2] + t, sizeof x);
                        else
                            memcpy(&x, ab + (m0 + i) * as[2] + t, 4 * k);
                        x *= sc;
                        memcpy(c + i * UNIT + t, &x, sizeof x);
                    }
                }
                float *rows = mine + (bg * m_count + m0) * n;
                if (mw == MW) {
                    weigh_unit(&s, 0, stop - start, c, rows, n);
                    continue;
                }
                /* Fewer rows than MW left: summed in this thread's spare rows, then added. */
                memset(spare, 0, MW * n * sizeof(float));
                weigh_unit(&s, 0, stop - start, c, spare, n);
                for (int64_t i = 0; i < mw * n; i++)
                    rows[i] += spare[i];
            }
        }
    }
    memcpy(acc, sums, size * sizeof(float));
    for (int i = 1; i < threads; i++)
        for (int64_t j = 0; j < size; j++)
            acc[j] += sums[i * size + j];
    free(sums);
    return 0;
}

/* x / step rounded half to even, within ±levels (torch.round, then clamp). */
INLINE float level(float x, float step, float levels) {
    float q = nearbyintf(x / step);
    return q < -levels ? -levels : q > levels ? levels : q;
}

/* Writes z [B, G, t, r] (float32, contiguous; r coordinates, w = r, or
 * (r + 1) / 2 bytes when packed) at tokens start .. start+t-1 of dst, stored
 * as kvtorch.preset's compress stores it: rounded to float16, or quantized
 * by the rule stated in kvtorch/preset.py's docs (per token, absmax: step =
 * max |z| / levels in float32, the values rounded half to even, the step
 * kept as float16). */
void kvt_store(const kvt_latents *dst, const float *z, int64_t t, int64_t r, int64_t start) {
    const int64_t size = dst->kind == 16 ? 2 : 1, bgs = dst->batch * dst->groups;
    const float levels = dst->kind == 8 ? 127.0f : 7.0f;
#pragma omp parallel for schedule(static) if (bgs * t * r > (1 << 18))
    for (int64_t u = 0; u < bgs * t; u++) {
        int64_t bg = u / t, i = u % t, b = bg / dst->groups, g = bg % dst->groups, pos = start + i;
        const float *x = z + u * r;
        uint8_t *o = (uint8_t *)dst->z + (b * dst->zs[0] + g * dst->zs[1] + pos / TILE * dst->zs[2] + pos % TILE) * size;
        if (dst->kind == 16) {
            for (int64_t j = 0; j < r; j++) {
                _Float16 h = (_Float16)x[j];
                memcpy(o + j * TILE * 2, &h, 2);
            }
            continue;
        }
        float amax = 0, step;
        for (int64_t j = 0; j < r; j++) {
            float a = fabsf(x[j]);
            if (!(a <= amax)) /* NaN is kept, as torch's amax keeps it */
                amax = a;
        }
        if (amax < 1e-30f)
            amax = 1e-30f;
        step = amax / levels;
        _Float16 h = (_Float16)step;
        memcpy((uint8_t *)dst->scale + (b * dst->ss[0] + g * dst->ss[1] + pos) * 2, &h, 2);
        if (dst->kind == 8)
            for (int64_t j = 0; j < r; j++)
                o[j * TILE] = (uint8_t)(int8_t)level(x[j], step, levels);
        else /* even coordinates in the low nibble; an odd rank's pad nibble holds 0 */
            for (int64_t j = 0; j < r; j += 2)
                o[j / 2 * TILE] = (uint8_t)((int)level(x[j], step, levels) + 8) |
                                  (uint8_t)(((j + 1 < r ? (int)level(x[j + 1], step, levels) : 0) + 8) << 4);
    }
}

/* Tokens per tile (kvtorch.latent checks it is its own). */
int kvt_tile(void) { return TILE; }
