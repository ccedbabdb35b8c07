/*
 * packed.c -- pack a row-layout weight into the prepacked layout of packed.h,
 * and rebuild the row layout from it (bit for bit: the two hold the same bytes,
 * rearranged).  Plain C, run once per layer (construction, pickling, export).
 */
#include <string.h>

#include "internal.h"
#include "packed.h"

/* Row-layout facts of a packable weight. */
typedef struct {
    qc_kind kind;
    int64_t nb, ng, rb, bpb, ssize, zsize, nscales, panels;
} pk_geom;

static int geom(const qc_qweight *w, pk_geom *g) {
#if !(defined(__x86_64__) || defined(_M_X64))
    (void)w;
    (void)g;
    return 0; /* the packed kernels are x86's; other builds keep the row layout */
#else
    if (!w || (unsigned)w->kind >= QC_NUM_KINDS || w->n < QC_PANEL || w->k < QC_QK ||
        w->k % QC_QK || !w->data || !w->scales || (QC_KINDS[w->kind].has_zero && !w->zeros) ||
        (w->scale_dtype != QC_F32 && w->scale_dtype != QC_F16))
        return 0;
    const int whole = w->per_tensor || w->group <= 0 || w->group >= w->k;
    if (!whole && (w->group % QC_QK || (w->group & (w->group - 1))))
        return 0;
    g->kind = w->kind;
    g->nb = w->k / QC_QK;
    g->ng = w->per_tensor ? 1 : qc_num_groups(w->k, w->group);
    g->bpb = qc_packed_bpb(w->kind);
    g->rb = g->nb * g->bpb;
    g->ssize = w->scale_dtype == QC_F16 ? 2 : 4;
    g->zsize = QC_KINDS[w->kind].has_zero == 2 ? g->ssize : QC_KINDS[w->kind].has_zero ? 1 : 0;
    g->nscales = w->per_tensor ? 1 : w->n * g->ng;
    g->panels = w->n / QC_PANEL;
    return g->rb == qc_row_bytes(w->kind, w->k);
#endif
}

int64_t qc_packed_bytes(const qc_qweight *w) {
    pk_geom g;
    if (!geom(w, &g))
        return 0;
    return w->n * g.rb + g.nscales * (g.ssize + g.zsize);
}

/* Byte offset, in the codes section, of code e (0..31) of block b of row j, and
 * whether it is the high nibble (4-bit). */
static int64_t code_pos(const pk_geom *g, int64_t j, int64_t b, int e, int *high) {
    *high = 0;
    if (j >= g->panels * QC_PANEL) { /* tail rows: the row layout */
        *high = g->bpb == 16 && (e & 1);
        return j * g->rb + b * g->bpb + (g->bpb == 32 ? e : e >> 1);
    }
    const int64_t p = j / QC_PANEL, r = j % QC_PANEL;
    const int64_t base = qc_packed_block_off(g->kind, g->nb, p, b) + 4 * r;
    if (g->bpb == 32)
        return base + (e / 4) * QC_PSTEP + e % 4;
    *high = e >= 16;
    const int ee = e & 15;
    return base + (ee / 4) * QC_PSTEP + ee % 4;
}

/* Index of row j's group gi parameter in the packed scales / zeros sections. */
static int64_t param_pos(const qc_qweight *w, const pk_geom *g, int64_t j, int64_t gi) {
    if (w->per_tensor)
        return 0;
    if (j >= g->panels * QC_PANEL)
        return j * g->ng + gi;
    return ((j / QC_PANEL) * g->ng + gi) * QC_PANEL + j % QC_PANEL;
}

/* Move row j's codes and parameters between the row layout (row, sc, zp: that
 * row's bytes, ng scales and zeros) and the packed buffer; to_packed selects the
 * direction. */
static void move_row(const qc_qweight *w, const pk_geom *g, int64_t j, uint8_t *codes,
                     uint8_t *scales, uint8_t *zeros, uint8_t *row, uint8_t *sc, uint8_t *zp,
                     int to_packed) {
    const int sym8 = g->kind == QC_SYM8;
    const int tail = j >= g->panels * QC_PANEL;
    for (int64_t b = 0; b < g->nb; b++)
        for (int e = 0; e < QC_QK; e++) {
            int high, rhigh = 0;
            const int64_t pos = code_pos(g, j, b, e, &high);
            /* the row layout: 8-bit byte b*32+e; 4-bit byte b*16+e/2, odd e high */
            const int64_t rpos = g->bpb == 32 ? b * 32 + e : b * 16 + (e >> 1);
            if (g->bpb == 16)
                rhigh = e & 1;
            if (g->bpb == 32) {
                const uint8_t flip = sym8 && !tail ? 0x80 : 0;
                if (to_packed)
                    codes[pos] = row[rpos] ^ flip;
                else
                    row[rpos] = codes[pos] ^ flip;
                continue;
            }
            if (to_packed) {
                const uint8_t v = rhigh ? row[rpos] >> 4 : row[rpos] & 15;
                codes[pos] = high ? (uint8_t)((codes[pos] & 0x0f) | v << 4)
                                  : (uint8_t)((codes[pos] & 0xf0) | v);
            } else {
                const uint8_t v = high ? codes[pos] >> 4 : codes[pos] & 15;
                row[rpos] = rhigh ? (uint8_t)((row[rpos] & 0x0f) | v << 4)
                                  : (uint8_t)((row[rpos] & 0xf0) | v);
            }
        }
    if (w->per_tensor)
        return; /* the one scale (and zero) is copied once by the caller */
    for (int64_t gi = 0; gi < g->ng; gi++) {
        const int64_t q = param_pos(w, g, j, gi);
        if (to_packed) {
            memcpy(scales + q * g->ssize, sc + gi * g->ssize, (size_t)g->ssize);
            if (g->zsize)
                memcpy(zeros + q * g->zsize, zp + gi * g->zsize, (size_t)g->zsize);
        } else {
            memcpy(sc + gi * g->ssize, scales + q * g->ssize, (size_t)g->ssize);
            if (g->zsize)
                memcpy(zp + gi * g->zsize, zeros + q * g->zsize, (size_t)g->zsize);
        }
    }
}

/* Pointers to the sections of a packed buffer. */
static void sections(const qc_qweight *w, const pk_geom *g, uint8_t *buf, uint8_t **codes,
                     uint8_t **scales, uint8_t **zeros) {
    *codes = buf;
    *scales = buf + w->n * g->rb;
    *zeros = g->zsize ? *scales + g->nscales * g->ssize : NULL;
}

qc_status qc_pack_weight(const qc_qweight *w, uint8_t *dst, int64_t dst_bytes, qc_qweight *pw) {
    pk_geom g;
    if (!dst || !pw || !geom(w, &g) || dst_bytes != qc_packed_bytes(w))
        return QC_ERR_ARG;
    uint8_t *codes, *scales, *zeros;
    sections(w, &g, dst, &codes, &scales, &zeros);
    memset(codes, 0, (size_t)(w->n * g.rb)); /* nibbles are or-ed in */
    for (int64_t j = 0; j < w->n; j++) {
        const int64_t gi0 = w->per_tensor ? 0 : j * g.ng;
        move_row(w, &g, j, codes, scales, zeros, (uint8_t *)w->data + j * g.rb,
                 (uint8_t *)w->scales + gi0 * g.ssize,
                 g.zsize ? (uint8_t *)w->zeros + gi0 * g.zsize : NULL, 1);
    }
    if (w->per_tensor) {
        memcpy(scales, w->scales, (size_t)g.ssize);
        if (g.zsize)
            memcpy(zeros, w->zeros, (size_t)g.zsize);
    }
    *pw = qc_packed_twin(w);
    pw->data = codes;
    pw->scales = scales;
    pw->zeros = zeros;
    return QC_OK;
}

/* The row-layout twin of a packed weight (kind and geometry; no pointers). */
static int base_of(const qc_qweight *pw, qc_qweight *w, pk_geom *g) {
    if (!pw || !qc_is_packed_kind(pw->kind))
        return 0;
    *w = qc_packed_twin(pw);
    return geom(w, g);
}

qc_status qc_unpack_rows(const qc_qweight *pw, int64_t j0, int64_t j1, uint8_t *data,
                         void *scales, void *zeros) {
    qc_qweight w;
    pk_geom g;
    if (!base_of(pw, &w, &g) || j0 < 0 || j1 > pw->n || j0 > j1 || !data || !scales ||
        (g.zsize && !zeros))
        return QC_ERR_ARG;
    uint8_t *codes = (uint8_t *)pw->data, *ps = (uint8_t *)pw->scales, *pz = (uint8_t *)pw->zeros;
    for (int64_t j = j0; j < j1; j++) {
        const int64_t gi0 = w.per_tensor ? 0 : (j - j0) * g.ng;
        uint8_t *row = data + (j - j0) * g.rb;
        if (g.bpb == 16)
            memset(row, 0, (size_t)g.rb);
        move_row(&w, &g, j, codes, ps, pz, row, (uint8_t *)scales + gi0 * g.ssize,
                 g.zsize ? (uint8_t *)zeros + gi0 * g.zsize : NULL, 0);
    }
    if (w.per_tensor) {
        memcpy(scales, ps, (size_t)g.ssize);
        if (g.zsize)
            memcpy(zeros, pz, (size_t)g.zsize);
    }
    return QC_OK;
}

qc_status qc_unpack_weight(const qc_qweight *pw, uint8_t *data, void *scales, void *zeros) {
    return qc_unpack_rows(pw, 0, pw ? pw->n : 0, data, scales, zeros);
}

int64_t qc_packed_tail_bytes(const qc_qweight *pw) {
    qc_qweight w;
    pk_geom g;
    if (!base_of(pw, &w, &g))
        return 0;
    w.n = QC_PANEL;
    return qc_packed_bytes(&w);
}

qc_status qc_pack_tail(const qc_qweight *pw, uint8_t *dst, qc_qweight *tw) {
    qc_qweight w, w2;
    pk_geom g, g2;
    if (!dst || !tw || !base_of(pw, &w, &g))
        return QC_ERR_ARG;
    w2 = w;
    w2.n = QC_PANEL;
    if (!geom(&w2, &g2))
        return QC_ERR_ARG;
    uint8_t *codes, *scales, *zeros;
    sections(&w2, &g2, dst, &codes, &scales, &zeros);
    memset(dst, 0, (size_t)qc_packed_bytes(&w2)); /* rows past the tail: zero codes and scales */
    const int64_t j0 = g.panels * QC_PANEL;
    for (int64_t j = j0; j < w.n; j++) {
        const int64_t gi0 = w.per_tensor ? 0 : j * g.ng; /* tail rows: the row layout */
        move_row(&w2, &g2, j - j0, codes, scales, zeros, (uint8_t *)w.data + j * g.rb,
                 (uint8_t *)w.scales + gi0 * g.ssize,
                 g.zsize ? (uint8_t *)w.zeros + gi0 * g.zsize : NULL, 1);
    }
    if (w.per_tensor) {
        memcpy(scales, w.scales, (size_t)g.ssize);
        if (g.zsize)
            memcpy(zeros, w.zeros, (size_t)g.zsize);
    }
    *tw = qc_packed_twin(&w2);
    tw->data = codes;
    tw->scales = scales;
    tw->zeros = zeros;
    return QC_OK;
}
