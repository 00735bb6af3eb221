/*
 * Conv and ConvTranspose, float32, 1-D to 3-D spatial.
 *
 * Conv picks one of these algorithms per node and shape:
 *   depthwise  one input channel per group: a direct kernel (kernels/depthwise.c)
 *   stem       a network's first conv (few input channels, stride 2): direct,
 *              many output channels per input load (mk_stem_conv_rows)
 *   pointwise  1x1, stride 1, no padding: sgemm straight on the input
 *   winograd   3x3 stride 1, one group, dilation up to 4, where it saves enough
 *              multiply-adds over im2col (kernels/winograd.c, see winograd_pays)
 *   im2col     everything else: column tiles of the output, sgemm per tile;
 *              2-D stride-1 convs on small maps read a padded copy of the
 *              input window instead of im2col columns (see plan_padded)
 * Work items are (batch, group, output tile, output-channel chunk) spread over
 * the pool; every sgemm is single-threaded.  The sgemm is kernels/sgemm.c's,
 * with the weights packed once at load into its panel layout (at run time,
 * into scratch, when W is not an initializer).  Bias and a Relu or Clip are
 * applied by the sgemm as it stores the tile; other fused activations run
 * over the tile right after, while it is still in cache.
 *
 * im2col keeps only the taps that land in the input for some position of the
 * tile (see mk_conv_live_taps): the packed weights' K order is [tap][cin], so
 * that a run of live taps is one contiguous K range of the weights, and the
 * tile costs one sgemm per such run.  Tiles are normally runs of output rows, so
 * whole kernel rows in padding drop out.  When the kernel's columns also fall
 * in padding often enough to matter (atrous convs on small maps: DeepLab's
 * ASPP), the output is cut into zones where the set of landing taps is
 * constant, and each tile (a rectangle inside one zone) multiplies only the
 * taps that land; its result goes through a staging buffer when it is not
 * contiguous in the output.  Taps that land for part of a tile still multiply
 * zeros for the rest; 3-D convs are zoned only when their depth is trivial.
 *
 * ConvTranspose is the same sgemm (W^T x X, per output-channel chunk, W^T
 * packed at load) then col2im.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/kernels.h"
#include "common.h"

enum { MAX_SPATIAL = MK_CONV_DIMS };

/* Column buffers are sized so a tile's columns stay in L2 beside sgemm's
 * packed panels; tiles are not made narrower than MIN_TILE columns, below
 * which the sgemm's per-call costs (packing B, revisiting C per K block)
 * start to show. */
enum { COL_BUDGET_BYTES = 512 << 10, MIN_TILE = 64, TILE_ALIGN = 8 };

/* Splitting for threads: tiles not below SPLIT_TILE positions, channel
 * chunks not below MIN_MCHUNK rows (see split_work). */
enum { SPLIT_TILE = 16, MIN_MCHUNK = 32 };

/* Zoning: at most this many zones per dim (kernels up to 8 wide), and only
 * when it saves at least a tenth of the multiply-adds.  Zone tiles that the
 * sgemm reads in place (no column buffer to bound them) aim at
 * DIRECT_ZONE_TILE positions: wide enough that the weights stream once per
 * that many columns, small enough for the sgemm's B panels to stay in L2. */
enum { MAX_ZONES = 17, MAX_ZONED_KERNEL = 8, DIRECT_ZONE_TILE = 256 };

/* Channels per sgemm call of a direct zone tile: 128 planes of a small map
 * stay in L2 for all the taps (see direct_zone_gemm). */
enum { DIRECT_CHANNEL_BLOCK = 128 };
/* Output rows per item of a stem conv (ALGO_STEM). */
enum { STEM_ROWS = 4 };

typedef struct conv_attrs {
    bool transpose;
    int n_kernel, n_strides, n_dilations, n_pads, n_out_pad, n_out_shape; /* -1: absent */
    int64_t kernel[MAX_SPATIAL], strides[MAX_SPATIAL], dilations[MAX_SPATIAL];
    int64_t pads[2 * MAX_SPATIAL], out_pad[MAX_SPATIAL], out_shape[MAX_SPATIAL + 2];
    int64_t group;
    mk_auto_pad auto_pad;
} conv_attrs;

typedef struct conv_state {
    conv_attrs attrs;
    /* Conv weights packed for mk_sgemm_packed at load when W is an
     * initializer (not depthwise): group after group, K in [tap][cin] order. */
    float *packed_w;
    const void *packed_from;
    int64_t packed_numel;
    /* A conv Winograd may serve (see winograd_pays) packs nothing at load:
     * the first infer or run with shapes packs U or the im2col weights,
     * whichever the shape picks, under lazy_lock. */
    bool wino_ok;
    float *wino_u;
    pthread_mutex_t lazy_lock;
} conv_state;

/* A packed weight pointer of the shared state: lazily packed ones are
 * published by pack_lazily while other sessions may be planning. */
static float *packed_weights(float *const *slot) { return __atomic_load_n(slot, __ATOMIC_ACQUIRE); }

typedef enum conv_algo {
    ALGO_DEPTHWISE,
    ALGO_POINTWISE,
    ALGO_IM2COL,
    ALGO_TRANSPOSE,
    ALGO_WINOGRAD,
    ALGO_STEM, /* few input channels, stride 2: kernels' mk_stem_conv_rows */
} conv_algo;

typedef struct conv_plan {
    conv_algo algo;
    int rank;
    int64_t batch, c_in, c_out, group, cin_g, cout_g;
    int64_t out_dims[MAX_SPATIAL]; /* output spatial dims, rank of them */
    mk_conv_geom geom;             /* conv: iter = output; transpose: iter = input */
    int64_t taps, s_in, s_out;
    int64_t tile, n_tiles;         /* positions of the iterated grid per item */
    int64_t m_chunk, n_mchunks;    /* output channels per item */
    int64_t dw_run;                /* depthwise: output channels per item */
    /* Zoned im2col: rows hz[i]..hz[i+1] by columns wz[j]..wz[j+1] are zones;
     * tiles of zone (i, j) take zone_rows[j] rows; cell_first[i * n_wz + j]
     * is the zone's first tile. */
    bool zoned;
    bool zone_direct;              /* zone tiles read x in place (unit stride along W) */
    int n_hz, n_wz;
    int64_t hz[MAX_ZONES + 1], wz[MAX_ZONES + 1], zone_rows[MAX_ZONES];
    int64_t cell_first[MAX_ZONES * MAX_ZONES + 1];
    size_t stage_offset;           /* of the staging buffer inside a slot */
    size_t gemm_offset;            /* of the sgemm's B panels inside a slot */
    bool pack_weights;             /* pointwise and im2col run on packed weights */
    int64_t a_group_floats;        /* packed weights of one group */
    int slots;
    size_t slot_bytes;             /* per thread: columns or row pointers, staging, sgemm B panels */
    size_t pack_bytes;             /* weights packed at run time (0 when prepacked) */
    /* Winograd, threads sharing V (shared_bytes != 0): the tiles go by in
     * spans of wino_span, each transformed into a V all threads share, then
     * multiplied in blocks of `tile` tiles (n_tiles blocks per span) and
     * output-channel chunks.  Otherwise each item transforms its own block
     * of `tile` tiles (n_tiles blocks per image) into its slot. */
    mk_winograd_geom wino;
    int64_t wino_span;
    size_t shared_bytes;
    /* Small maps without im2col (see plan_padded): tiles are whole output rows. */
    bool padded;
    int64_t padded_w, padded_rows; /* of a tile's padded window, per channel */
    size_t padded_ptrs_offset, padded_stage_offset, padded_gemm_offset; /* inside a slot */
    bool scatter;                  /* ConvTranspose whose taps tile the output */
    size_t row_bias_offset;        /* its sgemm's bias per (channel, tap) row, in a slot */
} conv_plan;


/* ---- attributes ---------------------------------------------------------- */

static int read_ints(mk_ctx *ctx, const char *name, int64_t *out, int cap, int *count)
{
    int n = mk_attr_ints(ctx->node, name, out, cap);
    if (n > cap)
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                          "attribute %s has %d values; at most %d spatial dims are supported", name,
                          n, MAX_SPATIAL);
    *count = n;
    return MASKD_OK;
}

static int parse_attrs(mk_ctx *ctx, bool transpose, conv_attrs *a)
{
    const mk_node *node = ctx->node;
    memset(a, 0, sizeof *a);
    a->transpose = transpose;
    int rc;
    if ((rc = read_ints(ctx, "kernel_shape", a->kernel, MAX_SPATIAL, &a->n_kernel)) ||
        (rc = read_ints(ctx, "strides", a->strides, MAX_SPATIAL, &a->n_strides)) ||
        (rc = read_ints(ctx, "dilations", a->dilations, MAX_SPATIAL, &a->n_dilations)) ||
        (rc = read_ints(ctx, "pads", a->pads, 2 * MAX_SPATIAL, &a->n_pads)))
        return rc;
    a->n_out_pad = a->n_out_shape = -1;
    if (transpose &&
        ((rc = read_ints(ctx, "output_padding", a->out_pad, MAX_SPATIAL, &a->n_out_pad)) ||
         (rc = read_ints(ctx, "output_shape", a->out_shape, MAX_SPATIAL + 2, &a->n_out_shape))))
        return rc;
    a->group = mk_attr_int(node, "group", 1);
    if (a->group < 1)
        return mk_op_fail(ctx, MASKD_ERR_INVALID, "group %lld must be >= 1", (long long)a->group);
    if ((rc = mk_parse_auto_pad(ctx, &a->auto_pad))) return rc;
    for (int i = 0; i < a->n_strides; i++)
        if (a->strides[i] < 1)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "strides must be >= 1");
    for (int i = 0; i < a->n_dilations; i++)
        if (a->dilations[i] < 1)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "dilations must be >= 1");
    if (!transpose)
        for (int i = 0; i < a->n_pads; i++)
            if (a->pads[i] < 0)
                return mk_op_fail(ctx, MASKD_ERR_INVALID, "pads must be >= 0");
    for (int i = 0; i < a->n_out_pad; i++)
        if (a->out_pad[i] < 0)
            return mk_op_fail(ctx, MASKD_ERR_INVALID, "output_padding must be >= 0");
    return MASKD_OK;
}

/* ---- planning ------------------------------------------------------------ */

/*
 * Work items are (batch x group, tile, channel chunk); the pool hands them
 * out one by one.  With several threads there should be at least two items
 * per thread, and when there are only a few they should split evenly, or one
 * thread finishes a whole item after the others (small maps at 2 threads:
 * 14x14 as tiles of 64, 64, 64 and 4 columns kept the second thread mostly
 * idle).  Here channels are split first: a chunk keeps its sgemm's columns
 * whole, which small maps need to fill the vectors, and only repeats the
 * tile's B packing (im2col).  Chunks are whole weight panels and at least
 * MIN_MCHUNK rows, below which that repeated work stops paying.  Where B
 * costs more than that, split_tiles_first cuts positions first instead.
 */
static int64_t wanted_items(const conv_plan *p) { return p->slots > 1 ? 2 * (int64_t)p->slots : 1; }

/* Whether `items` leaves a thread idle at the end: few, and not a multiple
 * of the threads. */
static bool uneven(const conv_plan *p, int64_t items)
{
    return p->slots > 1 && items < 4 * (int64_t)p->slots && items % p->slots != 0;
}

/* Channel chunks for `items` (batch x group x tile) items of m channels. */
static int64_t channel_chunks(const conv_plan *p, int64_t items, int64_t m)
{
    if (p->slots <= 1 || items <= 0) return 1;
    const int64_t cap = m / MIN_MCHUNK > 1 ? m / MIN_MCHUNK : 1;
    int64_t chunks = items < wanted_items(p) ? mk_ceil_div(wanted_items(p), items) : 1;
    if (chunks > cap) chunks = cap;
    while (chunks < cap && uneven(p, items * chunks)) chunks++;
    return chunks;
}

/* m channels in `chunks` chunks of whole sgemm panels. */
static void set_channel_chunks(conv_plan *p, int64_t m, int64_t chunks)
{
    int64_t chunk = mk_ceil_div(mk_ceil_div(m, chunks), MK_SGEMM_MR) * MK_SGEMM_MR;
    if (chunk > m) chunk = m;
    p->m_chunk = chunk;
    p->n_mchunks = chunk > 0 ? mk_ceil_div(m, chunk) : 0;
}

/*
 * Splits `positions` into tiles of about `tile` and `m` output channels into
 * chunks so that outer × tiles × chunks gives every thread work (see above),
 * tiles being whole steps of `align` and not split below min_split.  Shared
 * by the sgemm paths (tiles of output positions) and Winograd (of 4x4 tiles).
 */
static void split_tiles(conv_plan *p, int64_t positions, int64_t tile, int64_t outer, int64_t m,
                        int64_t min_split, int64_t align)
{
    int64_t n_tiles = mk_ceil_div(positions, tile);
    const int64_t chunks = channel_chunks(p, outer * n_tiles, m);
    /* Then more tiles, down to min_split positions, when channels alone do
     * not make enough items, or make an uneven few. */
    const int64_t max_tiles = mk_ceil_div(positions, min_split);
    if (outer * n_tiles * chunks < wanted_items(p))
        n_tiles = mk_ceil_div(wanted_items(p), outer * chunks);
    if (n_tiles > max_tiles) n_tiles = max_tiles;
    while (n_tiles < max_tiles && uneven(p, outer * n_tiles * chunks)) n_tiles++;
    /* Even tiles, in whole steps of the kernels' vectors. */
    tile = mk_ceil_div(mk_ceil_div(positions, n_tiles), align) * align;
    if (tile > positions) tile = positions;
    p->tile = tile;
    p->n_tiles = mk_ceil_div(positions, tile);
    set_channel_chunks(p, m, chunks);
}

/* The busiest thread's positions when `slots` threads take n_tiles tiles
 * of `tile` (the last one short) in turn, each to the least loaded: a model
 * of the pool's home ranges with stealing, good enough to rank counts. */
static int64_t busiest(int slots, int64_t positions, int64_t tile, int64_t n_tiles)
{
    int64_t load[64] = {0};
    if (slots > 64) slots = 64;
    const int64_t last = positions - (n_tiles - 1) * tile;
    for (int64_t t = 0; t < n_tiles; t++) {
        int least = 0;
        for (int i = 1; i < slots; i++)
            if (load[i] < load[least]) least = i;
        load[least] += t == n_tiles - 1 ? last : tile;
    }
    int64_t most = 0;
    for (int i = 0; i < slots; i++) most = load[i] > most ? load[i] : most;
    return most;
}

/*
 * The split for threads when positions, not channels, should go first: a
 * channel chunk packs its tile's whole B again (K x tile), a tile reads all
 * of A (m x K) again.  With chunks, each of T threads packs B about twice
 * and reads A / T; with tiles, it reads A and packs B / T: tiles cost less
 * when m < 3 x positions (at T = 2; ResNet-50's 1x1 convs at 14x14: 256 or
 * 1024 channels by 196 positions, each chunk packing up to 4 MB of B).
 * Needs a whole sgemm panel (48 columns) per thread at least.
 */
enum { TILES_FIRST_RATIO = 3, MIN_THREAD_TILE = 48 };

static bool split_tiles_first(conv_plan *p, int64_t positions, int64_t budget_tile, int64_t outer,
                              int64_t m)
{
    if (p->slots <= 1 || outer != 1 || m >= TILES_FIRST_RATIO * positions ||
        positions < MIN_THREAD_TILE * p->slots)
        return false;
    /* Between one and four tiles per thread, in whole steps of the
     * vectors, the count whose busiest thread has least to do. */
    int64_t best_tile = 0, best_n = 0, best_load = 0;
    for (int64_t per = 1; per <= 4; per++) {
        const int64_t want = per * p->slots;
        if (positions / want < MIN_THREAD_TILE) break;
        int64_t tile = mk_ceil_div(mk_ceil_div(positions, want), TILE_ALIGN) * TILE_ALIGN;
        if (tile > budget_tile) continue;
        const int64_t n = mk_ceil_div(positions, tile), load = busiest(p->slots, positions, tile, n);
        if (!best_n || load < best_load) best_tile = tile, best_n = n, best_load = load;
    }
    if (!best_n) return false;
    p->tile = best_tile;
    p->n_tiles = best_n;
    set_channel_chunks(p, m, 1);
    return true;
}

/* split_tiles for the sgemm paths: a tile's per-thread buffer
 * (bytes_per_position each) near the budget. */
static void split_work(conv_plan *p, int64_t positions, int64_t bytes_per_position,
                       int64_t outer, int64_t m)
{
    p->tile = p->n_tiles = 0;
    p->m_chunk = p->n_mchunks = 0;
    if (positions <= 0 || m <= 0 || outer <= 0) return;
    int64_t tile = bytes_per_position > 0 ? COL_BUDGET_BYTES / bytes_per_position : positions;
    if (tile < MIN_TILE) tile = MIN_TILE;
    if (tile > positions) tile = positions;
    if (split_tiles_first(p, positions, tile, outer, m)) return;
    /* Tiles in whole 8-column steps of the sgemm's vectors. */
    split_tiles(p, positions, tile, outer, m, SPLIT_TILE, TILE_ALIGN);
}

/* Where along iterated dim `dim` the set of landing taps changes: sorted,
 * distinct cuts from 0 to the dim's size.  Returns the number of zones. */
static int zone_cuts(const mk_conv_geom *g, int dim, int64_t cuts[MAX_ZONES + 1])
{
    const int64_t n = g->iter[dim];
    int count = 0;
    cuts[count++] = 0;
    cuts[count++] = n;
    for (int64_t k = 0; k < g->kernel[dim]; k++) {
        int64_t lo, hi;
        mk_conv_tap_span(g, dim, k, &lo, &hi);
        if (lo > 0 && lo < n) cuts[count++] = lo;
        if (hi > 0 && hi < n) cuts[count++] = hi;
    }
    for (int i = 1; i < count; i++)
        for (int j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
            int64_t t = cuts[j];
            cuts[j] = cuts[j - 1];
            cuts[j - 1] = t;
        }
    int distinct = 1;
    for (int i = 1; i < count; i++)
        if (cuts[i] != cuts[distinct - 1]) cuts[distinct++] = cuts[i];
    return distinct - 1;
}

/* Taps along dim that land for every index of the zone starting at z0 (the
 * set is constant over a zone). */
static int64_t landing_taps(const mk_conv_geom *g, int dim, int64_t z0)
{
    int64_t count = 0;
    for (int64_t k = 0; k < g->kernel[dim]; k++) {
        int64_t lo, hi;
        mk_conv_tap_span(g, dim, k, &lo, &hi);
        count += lo <= z0 && z0 < hi;
    }
    return count;
}

/*
 * Zoned tiling for 1-D / 2-D im2col (see the top of the file): taken when it
 * saves at least a tenth of the tap columns over row tiles and its tiles stay
 * near the column budget.  Returns whether the plan is now zoned.
 *
 * Every tap of a zone's live box lands for every position of the zone, so
 * with stride 1 along the rows a tap's window over a tile is a rectangle of
 * the input plane: its rows go to the sgemm by pointer (zone_direct) and
 * there is no im2col copy, only an array of row pointers per slot (see
 * direct_zone_gemm).
 */
static bool plan_zones(conv_plan *p, int64_t k_rows, int64_t outer)
{
    const mk_conv_geom *g = &p->geom;
    if (g->iter[0] != 1 || g->kernel[0] != 1 || g->kernel[1] > MAX_ZONED_KERNEL ||
        g->kernel[2] > MAX_ZONED_KERNEL || mk_conv_iter_size(g) == 0 || outer <= 0 ||
        p->cout_g <= 0)
        return false;
    p->n_wz = zone_cuts(g, 2, p->wz);
    p->n_hz = zone_cuts(g, 1, p->hz);
    int64_t zoned_cols = 0, any = 0;
    for (int j = 0; j < p->n_wz; j++)
        zoned_cols += (p->wz[j + 1] - p->wz[j]) * landing_taps(g, 2, p->wz[j]);
    for (int64_t k = 0; k < g->kernel[2]; k++) {
        int64_t lo, hi;
        mk_conv_tap_span(g, 2, k, &lo, &hi);
        any += lo < hi;
    }
    if (zoned_cols * 10 > any * g->iter[2] * 9) return false;

    p->zone_direct = g->stride[2] == 1;
    int64_t target = COL_BUDGET_BYTES / (k_rows * (int64_t)sizeof(float));
    if (p->zone_direct) target = DIRECT_ZONE_TILE;
    if (target < MIN_TILE) target = MIN_TILE;
    int64_t widest = 0, tiles = 0;
    for (int j = 0; j < p->n_wz; j++) {
        const int64_t width = p->wz[j + 1] - p->wz[j];
        p->zone_rows[j] = mk_ceil_div(target, width);
        if (p->zone_rows[j] > g->iter[1]) p->zone_rows[j] = g->iter[1];
    }
    for (int i = 0; i < p->n_hz; i++)
        for (int j = 0; j < p->n_wz; j++) {
            const int64_t height = p->hz[i + 1] - p->hz[i];
            const int64_t rows = p->zone_rows[j] < height ? p->zone_rows[j] : height;
            const int64_t n = rows * (p->wz[j + 1] - p->wz[j]);
            if (n > widest) widest = n;
            p->cell_first[i * p->n_wz + j] = tiles;
            tiles += mk_ceil_div(height, p->zone_rows[j]);
        }
    /* A zone wider than the budget would need a column buffer far past it. */
    if (widest > 4 * target) return false;
    p->cell_first[p->n_hz * p->n_wz] = tiles;
    p->zoned = true;
    p->tile = widest;
    p->n_tiles = tiles;
    set_channel_chunks(p, p->cout_g, channel_chunks(p, outer * tiles, p->cout_g));
    const int64_t direct_rows = p->cin_g < DIRECT_CHANNEL_BLOCK ? p->cin_g : DIRECT_CHANNEL_BLOCK;
    const size_t col = p->zone_direct ? mk_align64((size_t)direct_rows * sizeof(const float *))
                                      : mk_align64((size_t)(k_rows * widest) * sizeof(float));
    p->stage_offset = col;
    p->slot_bytes = col + mk_align64((size_t)(p->m_chunk * widest) * sizeof(float));
    return true;
}

/*
 * Small maps without im2col.  A detector's mask head runs 3x3 convs on 100
 * ROIs of 14x14: im2col there wrote each tile's 9 shifted copies of the
 * input and the sgemm packed them again, and those two passes cost as much
 * as the product.  Instead a tile's window of the input is copied once, with
 * its padding, into a buffer where every tap lands, and the product is
 * computed on the padded width: output row r, column j of tap (kh, kw) reads
 * buffer row r + kh, column j + kw, so over a whole tile each tap's B row is
 * one contiguous run of the buffer (the sgemm takes them by pointer, one per
 * tap and channel, in the packed weights' [tap][cin] K order).  The columns
 * past the output's width are computed and dropped as the result is copied
 * out: (kw - 1) / W more multiply-adds (a sixth at 14x14) for a B packed by
 * plain copies; packing it as 14-wide segments cost twice im2col's pass.
 * Taken for 2-D stride-1 convs whose padded input (all channels of a group)
 * stays well inside L2.
 */
enum { PADDED_BUDGET_BYTES = 256 << 10 };

static void plan_padded(conv_plan *p, int64_t outer)
{
    const mk_conv_geom *g = &p->geom;
    if (g->iter[0] != 1 || g->kernel[0] != 1 || g->stride[1] != 1 || g->stride[2] != 1 ||
        p->cin_g <= 0 || p->cout_g <= 0 || p->s_out <= 0 || outer <= 0)
        return;
    const int64_t out_h = g->iter[1], out_w = g->iter[2];
    const int64_t pw = out_w + (g->kernel[2] - 1) * g->dilation[2];
    const int64_t extra_rows = (g->kernel[1] - 1) * g->dilation[1];
    if (p->cin_g * (out_h + extra_rows) * pw * (int64_t)sizeof(float) > PADDED_BUDGET_BYTES)
        return;
    /* Whole rows, as many tiles as split_work wants for the threads. */
    split_work(p, p->s_out, 0, outer, p->cout_g);
    const int64_t tile_rows = mk_ceil_div(p->tile, out_w);
    p->tile = tile_rows * out_w;
    p->n_tiles = mk_ceil_div(out_h, tile_rows);
    p->padded = true;
    p->padded_w = pw;
    p->padded_rows = tile_rows + extra_rows;
    /* The last tap's run reads past its channel's window into the next
     * one's (dropped columns); one more row keeps the last channel's inside. */
    const int64_t cols = tile_rows * pw;
    size_t at = mk_align64((size_t)((p->cin_g * p->padded_rows + 1) * pw) * sizeof(float));
    p->padded_ptrs_offset = at;
    at += mk_align64((size_t)(p->taps * p->cin_g) * sizeof(const float *));
    p->padded_stage_offset = at;
    at += mk_align64((size_t)(p->m_chunk * cols) * sizeof(float));
    p->padded_gemm_offset = at;
    p->slot_bytes = at + mk_align64(mk_sgemm_scratch_bytes(cols));
}

static int bad_shape(mk_ctx *ctx, const char *what)
{
    char xs[96], ws[96];
    return mk_op_fail(ctx, MASKD_ERR_SHAPE, "%s (X %s, W %s)", what,
                      mk_shape_str(ctx->in[0], xs, sizeof xs),
                      mk_shape_str(ctx->in[1], ws, sizeof ws));
}

/* Output size and begin pad of one spatial dim of a Conv. */
static int conv_dim(mk_ctx *ctx, const conv_attrs *a, int i, int rank, int64_t in,
                    int64_t k, int64_t s, int64_t d, int64_t *out, int64_t *pad_begin)
{
    int64_t pe = 0;
    *pad_begin = 0;
    if (a->n_pads > 0) {
        *pad_begin = a->pads[i];
        pe = a->pads[i + rank];
    }
    if (!mk_window_axis(a->auto_pad, in, (k - 1) * d + 1, s, false, pad_begin, &pe, out))
        return bad_shape(ctx, a->auto_pad == MK_PAD_VALID
                                  ? "the input is smaller than the kernel"
                                  : "the padded input is smaller than the kernel");
    return MASKD_OK;
}

/* Output size and begin pad of one spatial dim of a ConvTranspose. */
static int transpose_dim(mk_ctx *ctx, const conv_attrs *a, int i, int rank, int64_t in,
                         int64_t k, int64_t s, int64_t d, int64_t *out, int64_t *pad_begin)
{
    const int64_t eff = (k - 1) * d + 1;
    const int64_t op = a->n_out_pad > 0 ? a->out_pad[i] : 0;
    const int64_t full = s * (in - 1) + op + eff; /* the output with no padding */
    int64_t target = -1;
    if (a->n_out_shape > 0) target = a->out_shape[a->n_out_shape - rank + i];
    else if (a->auto_pad == MK_PAD_SAME_UPPER || a->auto_pad == MK_PAD_SAME_LOWER) target = in * s;
    if (target >= 0) {
        /* Pads split the difference; an output larger than `full` grows at the
         * end, as output_padding does (ONNX's output_shape tests expect that). */
        int64_t total = full - target;
        int64_t pb = 0;
        if (total > 0)
            pb = mk_same_pad_begin(a->auto_pad, total);
        *out = target;
        *pad_begin = pb;
        return MASKD_OK;
    }
    int64_t pb = 0, pe = 0;
    if (a->auto_pad == MK_PAD_NOTSET && a->n_pads > 0) {
        pb = a->pads[i];
        pe = a->pads[i + rank];
    }
    *out = full - pb - pe;
    *pad_begin = pb;
    if (*out < 0) return bad_shape(ctx, "pads are larger than the output");
    return MASKD_OK;
}

/* ---- Winograd planning ---------------------------------------------------- */

/*
 * Winograd F(4x4, 3x3) (kernels/winograd.c) for 3x3 stride-1 2-D convs of
 * one group, dense or dilated.  Its U is 4x the weights (36 points for 9
 * taps), so only convs with enough channels qualify at load, and dilations
 * up to WINO_MAX_DILATION.  At plan time the shape decides: Winograd when
 * its multiply-adds, transforms and the 4x4 tiles' overhang on each
 * dilation's sub-grids included, are fewer enough than those im2col does
 * (which skips the taps in padding), and U is packed then, lazily.  On
 * DeepLabV3-ResNet50's 64x64 ASPP that takes the rate-12 conv (sub-grids
 * of 5 and 6 outputs a side: 319 -> 247 ms at 1 thread, for 75 MB of U in
 * place of 19 MB of packed weights) and leaves rates 24 and 36 on im2col.
 */
enum { WINO_MIN_CHANNELS = 16, WINO_MAX_DILATION = 36 };
/* Fewer tiles per image than this and each point's GEMM streams its U for
 * too few columns: bound by memory, not FMAs (ResNet-50's 7x7 maps, 4
 * tiles: 3.4 ms with im2col, 4.1 to 5.3 ms with Winograd). */
enum { WINO_MIN_TILES = 16 };
/* Tiles per block: a block's V and M ([36][channels][block]) near the
 * budget, in whole 16-lane steps of the transforms.  With threads, V is
 * shared and a span's V alone is held to the budget. */
enum { WINO_BUDGET_BYTES = 4 << 20, WINO_MIN_BLOCK = 32, WINO_MAX_BLOCK = 96, WINO_STEP = 16 };
/* Blocks per thread below which threads share a span's V (plan_winograd). */
enum { WINO_OWN_BLOCKS = 3 };
/* The transforms' cost per tile, point and channel (input, output) in
 * multiply-adds of the GEMM, and how much fewer Winograd's must be. */
#define WINO_TX_IN 16.0
#define WINO_TX_OUT 9.0
#define WINO_MARGIN 0.8

/* Whether the weights at load admit Winograd. */
static bool winograd_eligible(const conv_attrs *a, const mk_tensor *w)
{
    if (a->transpose || a->group != 1 || w->ndim != 4 || w->dims[2] != 3 || w->dims[3] != 3 ||
        w->dims[0] < WINO_MIN_CHANNELS || w->dims[1] < WINO_MIN_CHANNELS)
        return false;
    for (int i = 0; i < a->n_strides; i++)
        if (a->strides[i] != 1) return false;
    for (int i = 0; i < a->n_dilations; i++)
        if (a->dilations[i] > WINO_MAX_DILATION) return false;
    return true;
}

/* Multiply-adds per input x output channel pair im2col does along iterated
 * dim `dim`: the positions where each tap lands, summed over taps. */
static int64_t landing_pairs(const mk_conv_geom *g, int dim)
{
    int64_t pairs = 0;
    for (int64_t k = 0; k < g->kernel[dim]; k++) {
        int64_t lo, hi;
        mk_conv_tap_span(g, dim, k, &lo, &hi);
        pairs += hi > lo ? hi - lo : 0;
    }
    return pairs;
}

/* Whether this node, at this shape, runs Winograd (fills p->wino if so). */
static bool winograd_pays(const conv_state *st, const mk_tensor *w, conv_plan *p)
{
    if (!st || !st->wino_ok || !w->data || w->data != st->packed_from || p->rank != 2 ||
        p->group != 1 || p->batch <= 0)
        return false;
    const mk_conv_geom *g = &p->geom;
    if (mk_conv_iter_size(g) == 0) return false;
    mk_winograd_axis_init(&p->wino.h, g->touch[1], g->iter[1], g->pad[1], g->dilation[1]);
    mk_winograd_axis_init(&p->wino.w, g->touch[2], g->iter[2], g->pad[2], g->dilation[2]);
    const int64_t tiles = p->wino.h.tiles * p->wino.w.tiles;
    if (tiles < WINO_MIN_TILES) return false;
    const double im2col = (double)landing_pairs(g, 1) * (double)landing_pairs(g, 2);
    const double wino = MK_WINO_POINTS * (double)tiles *
                        (1.0 + WINO_TX_IN / (double)p->cout_g + WINO_TX_OUT / (double)p->cin_g);
    return wino < WINO_MARGIN * im2col;
}

/* Tiles per block (budget / per_tile bytes), in whole WINO_STEPs, between
 * lo and hi. */
static int64_t wino_block(int64_t per_tile, int64_t lo, int64_t hi)
{
    int64_t block = WINO_BUDGET_BYTES / per_tile / WINO_STEP * WINO_STEP;
    return block < lo ? lo : block > hi ? hi : block;
}

/*
 * Spans, blocks of tiles and output-channel chunks for the pool.  A thread
 * transforms a block's input and multiplies it at once, while it is in
 * cache: the span is the block.  On a map of few tiles the threads would
 * have to share blocks by output channels and each transform the input of
 * every block it shares (a 14x14 map is one block, cut in four chunks at 2
 * threads: the transform ran four times and took 40% of the time), so
 * there they transform a whole span's input first, split by input
 * channels, and then multiply it in blocks and chunks (as split_work).
 * That moves V between the cores, so maps with blocks enough for every
 * thread keep to blocks of their own (56x56, 64 channels, 2 threads: 0.53
 * ms so, 1.06 sharing, 0.75 in chunks; 28x28, 128 channels: 0.50 sharing,
 * 0.69 in chunks, when the two vCPUs share a core complex).
 */
static void plan_winograd(conv_plan *p)
{
    p->algo = ALGO_WINOGRAD;
    const int64_t tiles = p->wino.h.tiles * p->wino.w.tiles;
    const int64_t point_bytes = MK_WINO_POINTS * sizeof(float);
    const int64_t own_block = wino_block(point_bytes * (p->cin_g + p->cout_g), WINO_MIN_BLOCK, WINO_MAX_BLOCK);
    if (p->slots <= 1 || p->batch * tiles >= WINO_OWN_BLOCKS * p->slots * WINO_MIN_BLOCK) {
        /* Blocks of their own: about WINO_OWN_BLOCKS per thread (fewer when
         * whole steps round them up), no chunks. */
        int64_t blocks = mk_ceil_div(tiles, own_block);
        while (p->slots > 1 && p->batch * blocks < WINO_OWN_BLOCKS * p->slots) blocks++;
        p->tile = mk_ceil_div(mk_ceil_div(tiles, blocks), WINO_STEP) * WINO_STEP;
        if (p->tile > tiles) p->tile = tiles;
        p->n_tiles = mk_ceil_div(tiles, p->tile);
        set_channel_chunks(p, p->cout_g, 1);
        p->wino_span = p->tile;
        p->slot_bytes = mk_align64(mk_winograd_output_bytes(p->m_chunk, p->tile)) +
                        mk_align64(mk_winograd_v_floats(p->cin_g, p->tile) * sizeof(float));
        return;
    }
    /* Even spans of whole steps, each V near the budget. */
    const int64_t most = wino_block(point_bytes * p->cin_g, WINO_STEP, tiles);
    const int64_t spans = mk_ceil_div(tiles, most);
    p->wino_span = mk_ceil_div(mk_ceil_div(tiles, spans), WINO_STEP) * WINO_STEP;
    if (p->wino_span > tiles) p->wino_span = tiles;
    split_tiles(p, p->wino_span, wino_block(point_bytes * p->cout_g, WINO_MIN_BLOCK, WINO_MAX_BLOCK), 1,
                p->cout_g, WINO_STEP, WINO_STEP);
    p->shared_bytes = mk_align64(mk_winograd_v_floats(p->cin_g, p->wino_span) * sizeof(float));
    p->slot_bytes = mk_align64(mk_winograd_output_bytes(p->m_chunk, p->tile));
}

/* ---- ConvTranspose's sgemm ---------------------------------------------------
 *
 * Per group, col = W_g^T X: W_g ([cin_g][cout_g][taps]) transposed is the
 * sgemm's packed A, (cout_g * taps) x cin_g, packed once at load like Conv's
 * weights; its rows are (output channel, tap) pairs, so an item's channel
 * chunk is a contiguous row range. */

static void pack_transpose_weights(const float *w, int64_t group, int64_t cout_g, int64_t cin_g,
                                   int64_t taps, float *out)
{
    const int64_t rows = cout_g * taps;
    const size_t group_floats = mk_sgemm_packed_a_floats(rows, cin_g);
    for (int64_t g = 0; g < group; g++)
        mk_sgemm_pack_a_t(w + g * cin_g * rows, rows, rows, cin_g, out + (size_t)g * group_floats);
}

static int prepack_transpose_weights(mk_ctx *ctx, conv_state *st, const mk_tensor *w)
{
    const int64_t group = st->attrs.group;
    if (!w || !w->data || w->dtype != MASKD_FLOAT || w->ndim < 3 || w->ndim > MAX_SPATIAL + 2 ||
        w->dims[0] % group != 0)
        return MASKD_OK;
    const int64_t cin_g = w->dims[0] / group, cout_g = w->dims[1];
    const int64_t taps = mk_dims_product(w->dims, 2, w->ndim);
    const size_t floats = (size_t)group * mk_sgemm_packed_a_floats(cout_g * taps, cin_g);
    if (floats == 0) return MASKD_OK;
    if (!(st->packed_w = mk_aligned_alloc(floats * sizeof(float))))
        return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
    pack_transpose_weights(w->data, group, cout_g, cin_g, taps, st->packed_w);
    st->packed_from = w->data;
    st->packed_numel = mk_numel(w);
    return MASKD_OK;
}

/* The packed weights and the sgemm's scratch of a ConvTranspose plan (its
 * column buffers already sized). */
static void plan_transpose_gemm(conv_plan *p, const conv_state *st, const mk_tensor *w)
{
    if (p->cin_g <= 0 || p->cout_g <= 0) return;
    const mk_conv_geom *g = &p->geom;
    p->scatter = g->iter[0] == 1 && g->kernel[0] == 1;
    for (int d = 1; d < MK_CONV_DIMS; d++)
        p->scatter = p->scatter && g->kernel[d] == g->stride[d] && g->dilation[d] == 1 &&
                     g->pad[d] == 0 && g->touch[d] == g->iter[d] * g->stride[d];
    p->gemm_offset = p->slot_bytes;
    p->slot_bytes += mk_align64(mk_sgemm_scratch_bytes(p->tile));
    p->row_bias_offset = p->slot_bytes;
    if (p->scatter) p->slot_bytes += mk_align64((size_t)(p->m_chunk * p->taps) * sizeof(float));
    p->pack_weights = true;
    p->a_group_floats = (int64_t)mk_sgemm_packed_a_floats(p->cout_g * p->taps, p->cin_g);
    if (!st || !st->packed_w || !w->data || st->packed_from != w->data ||
        st->packed_numel != mk_numel(w))
        p->pack_bytes = mk_align64((size_t)(p->group * p->a_group_floats) * sizeof(float));
}

static int make_plan(mk_ctx *ctx, const conv_attrs *a, conv_plan *p)
{
    const mk_node *node = ctx->node;
    memset(p, 0, sizeof *p);
    mk_tensor *x, *w, *b = mk_input(ctx, 2);
    int rc;
    if ((rc = mk_need_input(ctx, 0, &x)) || (rc = mk_need_input(ctx, 1, &w))) return rc;
    if (x->ndim < 0 || w->ndim < 0 || (b && b->ndim < 0)) return MK_DYNAMIC;
    if (x->dtype != MASKD_FLOAT || w->dtype != MASKD_FLOAT || (b && b->dtype != MASKD_FLOAT))
        return mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                          "only float32 is supported (X is %s, W is %s)",
                          maskd_dtype_name(x->dtype), maskd_dtype_name(w->dtype));
    if (x->ndim < 3 || x->ndim > MAX_SPATIAL + 2)
        return x->ndim < 3 ? bad_shape(ctx, "X must be [N, C, spatial...]")
                           : mk_op_fail(ctx, MASKD_ERR_UNSUPPORTED,
                                        "%d spatial dims; at most %d are supported", x->ndim - 2,
                                        MAX_SPATIAL);
    if (w->ndim != x->ndim) return bad_shape(ctx, "W must have the rank of X");
    const int rank = x->ndim - 2;
    p->rank = rank;
    if ((a->n_kernel >= 0 && a->n_kernel != rank) || (a->n_strides >= 0 && a->n_strides != rank) ||
        (a->n_dilations >= 0 && a->n_dilations != rank) ||
        (a->n_pads >= 0 && a->n_pads != 2 * rank) ||
        (a->n_out_pad >= 0 && a->n_out_pad != rank) ||
        (a->n_out_shape >= 0 && a->n_out_shape != rank && a->n_out_shape != rank + 2))
        return bad_shape(ctx, "kernel_shape/strides/dilations/pads/output_* do not match "
                              "the number of spatial dims");
    for (int i = 0; i < rank; i++) {
        if (w->dims[2 + i] < 1) return bad_shape(ctx, "W has an empty kernel dim");
        if (a->n_kernel > 0 && a->kernel[i] != w->dims[2 + i])
            return bad_shape(ctx, "kernel_shape does not match W");
    }
    p->batch = x->dims[0];
    p->c_in = x->dims[1];
    p->group = a->group;
    if (p->c_in % p->group) return bad_shape(ctx, "channels are not divisible by group");
    p->cin_g = p->c_in / p->group;
    if (!a->transpose) {
        if (w->dims[1] != p->cin_g) return bad_shape(ctx, "W's dim 1 must be C / group");
        p->c_out = w->dims[0];
        if (p->c_out % p->group) return bad_shape(ctx, "W's dim 0 is not divisible by group");
        p->cout_g = p->c_out / p->group;
    } else {
        if (w->dims[0] != p->c_in) return bad_shape(ctx, "W's dim 0 must be C");
        p->cout_g = w->dims[1];
        p->c_out = p->cout_g * p->group;
    }
    if (b && (b->ndim != 1 || b->dims[0] != p->c_out))
        return bad_shape(ctx, "B must be [M], M being the output channels");

    /* Spatial dims go right-aligned into the three the kernels see. */
    mk_conv_geom *g = &p->geom;
    const int off = MAX_SPATIAL - rank;
    for (int d = 0; d < MAX_SPATIAL; d++) {
        g->iter[d] = g->touch[d] = g->kernel[d] = g->stride[d] = g->dilation[d] = 1;
        g->pad[d] = 0;
    }
    for (int i = 0; i < rank; i++) {
        const int64_t in = x->dims[2 + i], k = w->dims[2 + i];
        const int64_t s = a->n_strides > 0 ? a->strides[i] : 1;
        const int64_t dil = a->n_dilations > 0 ? a->dilations[i] : 1;
        int64_t out = 0, pb = 0;
        rc = a->transpose ? transpose_dim(ctx, a, i, rank, in, k, s, dil, &out, &pb)
                          : conv_dim(ctx, a, i, rank, in, k, s, dil, &out, &pb);
        if (rc) return rc;
        p->out_dims[i] = out;
        g->kernel[off + i] = k;
        g->stride[off + i] = s;
        g->dilation[off + i] = dil;
        g->pad[off + i] = pb;
        g->iter[off + i] = a->transpose ? in : out;
        g->touch[off + i] = a->transpose ? out : in;
    }
    p->taps = mk_conv_tap_count(g);
    p->s_in = a->transpose ? mk_conv_iter_size(g) : mk_conv_touch_size(g);
    p->s_out = a->transpose ? mk_conv_touch_size(g) : mk_conv_iter_size(g);

    p->slots = ctx->pool ? mk_pool_slots(ctx->pool) : 1;
    if (p->slots < 1) p->slots = 1;
    const int64_t outer = p->batch * p->group;
    if (a->transpose) {
        p->algo = ALGO_TRANSPOSE;
        /* Items own whole output channels (col2im of neighbouring input tiles
         * overlaps); tiles walk the input inside an item. */
        int64_t want = p->slots > 1 ? 2 * (int64_t)p->slots : 1, chunks = 1;
        if (outer > 0 && outer < want) chunks = mk_ceil_div(want, outer);
        if (chunks > p->cout_g) chunks = p->cout_g;
        if (chunks < 1) chunks = 1;
        p->m_chunk = p->cout_g > 0 ? mk_ceil_div(p->cout_g, chunks) : 0;
        p->n_mchunks = p->m_chunk > 0 ? mk_ceil_div(p->cout_g, p->m_chunk) : 0;
        int64_t rows = p->m_chunk * p->taps;
        p->tile = rows > 0 ? COL_BUDGET_BYTES / (rows * (int64_t)sizeof(float)) : p->s_in;
        if (p->tile < 8) p->tile = 8;
        if (p->tile > p->s_in) p->tile = p->s_in;
        p->n_tiles = p->tile > 0 ? mk_ceil_div(p->s_in, p->tile) : 0;
        if (p->cin_g > 0) p->slot_bytes = mk_align64((size_t)(rows * p->tile) * sizeof(float));
        plan_transpose_gemm(p, node->state, w);
        return MASKD_OK;
    }

    bool unit = true;
    for (int d = 0; d < MAX_SPATIAL; d++)
        unit = unit && g->kernel[d] == 1 && g->stride[d] == 1 && g->pad[d] == 0 &&
               g->iter[d] == g->touch[d];
    if (p->cin_g == 1) {
        p->algo = ALGO_DEPTHWISE;
        p->dw_run = p->cout_g == 1 ? mk_depthwise_run(g) : 1;
        return MASKD_OK;
    }
    /* A network's stem (3 -> 16 or 32, stride 2) goes direct: items are
     * blocks of STEM_ROWS output rows with every output channel. */
    if (p->group == 1 && mk_stem_conv_takes(g, p->cin_g, p->cout_g)) {
        p->algo = ALGO_STEM;
        p->tile = STEM_ROWS;
        p->n_tiles = mk_ceil_div(g->iter[1], STEM_ROWS);
        p->n_mchunks = 1;
        return MASKD_OK;
    }
    if (!unit && winograd_pays(node->state, w, p)) {
        plan_winograd(p);
        return MASKD_OK;
    }
    if (unit) {
        p->algo = ALGO_POINTWISE;
        split_work(p, p->s_out, p->cout_g * (int64_t)sizeof(float), outer, p->cout_g);
    } else {
        p->algo = ALGO_IM2COL;
        const int64_t k_rows = p->cin_g * p->taps;
        if (k_rows == 0 || !plan_zones(p, k_rows, outer)) {
            p->zoned = false;
            split_work(p, p->s_out, k_rows * (int64_t)sizeof(float), outer, p->cout_g);
            p->slot_bytes = mk_align64((size_t)(k_rows * p->tile) * sizeof(float));
            plan_padded(p, outer);
        }
    }
    /* The sgemm's B panels follow the column (and staging) buffers. */
    p->gemm_offset = p->slot_bytes;
    p->slot_bytes += mk_align64(mk_sgemm_scratch_bytes(p->tile));
    p->pack_weights = p->cin_g > 0;
    p->a_group_floats = (int64_t)mk_sgemm_packed_a_floats(p->cout_g, p->cin_g * p->taps);
    const conv_state *st = node->state;
    const bool prepacked = st && packed_weights(&st->packed_w) && w->data && st->packed_from == w->data &&
                           st->packed_numel == mk_numel(w);
    if (p->pack_weights && !prepacked)
        p->pack_bytes = mk_align64((size_t)(p->group * p->a_group_floats) * sizeof(float));
    return MASKD_OK;
}

static size_t plan_scratch(const conv_plan *p)
{
    return p->pack_bytes + p->shared_bytes + (size_t)p->slots * p->slot_bytes;
}

static int set_output(mk_ctx *ctx, const conv_plan *p)
{
    mk_tensor *y = mk_output(ctx, 0);
    if (!y) return MASKD_OK;
    y->dtype = MASKD_FLOAT;
    y->ndim = p->rank + 2;
    y->dims[0] = p->batch;
    y->dims[1] = p->c_out;
    for (int i = 0; i < p->rank; i++) y->dims[2 + i] = p->out_dims[i];
    return MASKD_OK;
}

/* ---- weights ------------------------------------------------------------- */

/* W ([cout][cin][tap]) into the sgemm's panels, one group after another, K
 * reordered to [tap][cin] so that a run of taps is one K range. */
static void pack_weights(const float *w, int64_t group, int64_t cout_g, int64_t cin_g,
                         int64_t taps, float *out)
{
    const int64_t k = cin_g * taps;
    const size_t group_floats = mk_sgemm_packed_a_floats(cout_g, k);
    for (int64_t g = 0; g < group; g++)
        mk_sgemm_pack_a(w + g * cout_g * k, k, cout_g, k, taps, out + (size_t)g * group_floats);
}

/* ---- run ----------------------------------------------------------------- */

typedef struct conv_job {
    const conv_plan *p;
    const float *x, *w, *bias; /* w: packed for the sgemm unless depthwise */
    float *y;
    char *slots;
    size_t slot_stride;
    float *shared;             /* Winograd's V, when the threads share it */
    int64_t image, span0, span_n; /* Winograd: the span the threads are on */
    mk_act act;
    float act_alpha, act_beta;
    /* What the sgemm applies as it stores (bias set per item), and whether
     * the activation still has to run over the tile after it. */
    mk_sgemm_epilogue ep;
    bool act_after;
} conv_job;

static void fill_rows(float *y, int64_t rows, int64_t cols, int64_t ld, float v)
{
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < cols; i++) y[r * ld + i] = v;
}

/* Depthwise items are runs of up to p->dw_run output channels of one
 * image: where the kernel interleaves whole groups of sixteen planes
 * (kernels/depthwise.c) a thread's share is whole groups; elsewhere single
 * channels, which spread over any number of threads. */
static int64_t depthwise_item_count(const conv_plan *p)
{
    return p->batch * mk_ceil_div(p->c_out, p->dw_run);
}

static void depthwise_items(const conv_job *job, int64_t begin, int64_t end)
{
    const conv_plan *p = job->p;
    /* The kernel stores through the activation when it can (every one the
     * graph fuses, today); any other runs over each plane while it is still
     * in cache. */
    const bool fused = mk_act_span_supports(job->act);
    const mk_act_spec ep = {fused ? job->act : MK_ACT_NONE, job->act_alpha, job->act_beta};
    const int64_t per_image = mk_ceil_div(p->c_out, p->dw_run);
    for (int64_t it = begin; it < end;) {
        const int64_t n = it / per_image, r0 = it % per_image;
        const int64_t r1 = r0 + (end - it) < per_image ? r0 + (end - it) : per_image;
        const int64_t oc1 = r1 * p->dw_run < p->c_out ? r1 * p->dw_run : p->c_out;
        /* With one output per input channel, plane oc of x feeds plane oc
         * of y, and the whole run goes at once; otherwise one at a time. */
        const int64_t run = p->cout_g == 1 ? oc1 - r0 * p->dw_run : 1;
        for (int64_t oc = r0 * p->dw_run; oc < oc1; oc += run) {
            const int64_t g = oc / p->cout_g; /* its only input channel */
            float *y = job->y + (n * p->c_out + oc) * p->s_out;
            mk_depthwise_planes(job->x + (n * p->c_in + g) * p->s_in, p->s_in,
                                job->w + oc * p->taps, p->taps,
                                job->bias ? job->bias + oc : NULL, run, &p->geom, &ep, y,
                                p->s_out);
            if (!fused) mk_apply_act(y, run * p->s_out, job->act, job->act_alpha, job->act_beta);
        }
        it += r1 - r0;
    }
}

/* Stem items: output rows [t * tile, ...) of image n, all channels. */
static void stem_items(const conv_job *job, int64_t begin, int64_t end)
{
    const conv_plan *p = job->p;
    const bool fused = mk_act_span_supports(job->act);
    const mk_act_spec ep = {fused ? job->act : MK_ACT_NONE, job->act_alpha, job->act_beta};
    const int64_t rows = p->geom.iter[1], width = p->geom.iter[2];
    for (int64_t it = begin; it < end; it++) {
        const int64_t n = it / p->n_tiles, oh0 = it % p->n_tiles * p->tile;
        const int64_t oh1 = oh0 + p->tile < rows ? oh0 + p->tile : rows;
        float *y = job->y + n * p->c_out * p->s_out;
        mk_stem_conv_rows(job->x + n * p->c_in * p->s_in, p->s_in, p->cin_g, job->w, job->bias,
                          p->c_out, &p->geom, &ep, y, p->s_out, oh0, oh1);
        if (!fused)
            for (int64_t m = 0; m < p->c_out; m++)
                mk_apply_act(y + m * p->s_out + oh0 * width, (oh1 - oh0) * width, job->act,
                             job->act_alpha, job->act_beta);
    }
}

/* A tile of the output: flattened positions [p0, p1), or for zoned plans the
 * rectangle rows [r0, r1) x columns [c0, c1). */
typedef struct tile_span {
    bool rect;
    int64_t p0, p1, r0, r1, c0, c1;
} tile_span;

static void tile_of(const conv_plan *p, int64_t t, tile_span *ts)
{
    memset(ts, 0, sizeof *ts);
    if (!p->zoned) {
        ts->rect = false;
        ts->p0 = t * p->tile;
        ts->p1 = ts->p0 + p->tile < p->s_out ? ts->p0 + p->tile : p->s_out;
        return;
    }
    int cell = 0;
    while (p->cell_first[cell + 1] <= t) cell++;
    const int i = cell / p->n_wz, j = cell % p->n_wz;
    ts->rect = true;
    ts->r0 = p->hz[i] + (t - p->cell_first[cell]) * p->zone_rows[j];
    ts->r1 = ts->r0 + p->zone_rows[j] < p->hz[i + 1] ? ts->r0 + p->zone_rows[j] : p->hz[i + 1];
    ts->c0 = p->wz[j];
    ts->c1 = p->wz[j + 1];
}

/* One item's share of the product: output channels [m0, m0 + m_n) of group g
 * into out (ld_out apart), with the epilogue and the sgemm's scratch. */
typedef struct gemm_target {
    mk_packed_a a;
    int64_t m0, m_n;
    float *out;
    int64_t ld_out;
    const mk_sgemm_epilogue *ep;
    void *scratch;
} gemm_target;

/* The sgemm of one run of live taps [t0, t0 + len) of a tile, on its im2col
 * rows from col_row on.  The epilogue goes with the last run. */
static void tap_run_gemm(const conv_job *job, const gemm_target *gt, const float *col,
                         int64_t cols, int64_t t0, int64_t len, int64_t col_row, bool first,
                         bool last)
{
    const int64_t cin = job->p->cin_g;
    mk_sgemm_packed(&gt->a, gt->m0, gt->m_n, t0 * cin, len * cin, col + col_row * cols, cols,
                    cols, gt->out, gt->ld_out, !first, last ? gt->ep : NULL, gt->scratch);
}

/*
 * A direct zone tile: each live tap's window of x goes to the sgemm as row
 * pointers, one per channel, with no im2col copy.  The calls go channel
 * block by channel block, every live tap of a block before the next block,
 * so the taps after the first find the block's planes in L2; tap after tap
 * over all channels read x from L3 once per tap, and that packing was a
 * sixth of an ASPP conv's time.
 */
static void direct_zone_gemm(const conv_job *job, const tile_span *ts, const float *x,
                             const gemm_target *gt, const float **rows, int64_t cols,
                             const mk_tap_box *live)
{
    const conv_plan *p = job->p;
    const mk_conv_geom *g = &p->geom;
    const int64_t kh_n = g->kernel[1], kw_n = g->kernel[2], in_w = g->touch[2];
    const mk_sgemm_b b = {.rows = rows, .seg_w = ts->c1 - ts->c0,
                          .seg_stride = g->stride[1] * in_w};
    const int64_t calls = mk_tap_box_count(live) * mk_ceil_div(p->cin_g, DIRECT_CHANNEL_BLOCK);
    int64_t call = 0;
    for (int64_t c0 = 0; c0 < p->cin_g; c0 += DIRECT_CHANNEL_BLOCK) {
        const int64_t cn = p->cin_g - c0 < DIRECT_CHANNEL_BLOCK ? p->cin_g - c0
                                                                : DIRECT_CHANNEL_BLOCK;
        for (int64_t kd = live->lo[0]; kd < live->hi[0]; kd++)
            for (int64_t kh = live->lo[1]; kh < live->hi[1]; kh++)
                for (int64_t kw = live->lo[2]; kw < live->hi[2]; kw++, call++) {
                    const int64_t tap = (kd * kh_n + kh) * kw_n + kw;
                    const int64_t ih = ts->r0 * g->stride[1] - g->pad[1] + kh * g->dilation[1];
                    const int64_t iw = ts->c0 - g->pad[2] + kw * g->dilation[2];
                    const float *window = x + c0 * p->s_in + ih * in_w + iw;
                    for (int64_t c = 0; c < cn; c++) rows[c] = window + c * p->s_in;
                    mk_sgemm_packed_b(&gt->a, gt->m0, gt->m_n, tap * p->cin_g + c0, cn, &b, cols,
                                      gt->out, gt->ld_out, call > 0,
                                      call == calls - 1 ? gt->ep : NULL, gt->scratch);
                }
    }
}

/* A tile of a padded plan (see plan_padded): its input window into the
 * slot, zeros where the taps read padding, one sgemm over all taps on the
 * padded width, then the output's columns out of the staging buffer. */
static void padded_gemm(const conv_job *job, const tile_span *ts, const float *x,
                        const gemm_target *gt, char *slot)
{
    const conv_plan *p = job->p;
    const mk_conv_geom *g = &p->geom;
    const int64_t out_w = g->iter[2], in_h = g->touch[1], in_w = g->touch[2];
    const int64_t pw = p->padded_w, left = g->pad[2];
    const int64_t r0 = ts->p0 / out_w, out_rows = mk_ceil_div(ts->p1, out_w) - r0;
    const int64_t top = r0 - g->pad[1];
    const int64_t rows = out_rows + (g->kernel[1] - 1) * g->dilation[1];
    /* Input columns [c_lo, c_hi) land in the window, at column c + left. */
    const int64_t c_lo = left < 0 ? -left : 0;
    const int64_t c_hi = in_w < pw - left ? in_w : pw - left;
    float *buf = (float *)slot;
    for (int64_t c = 0; c < p->cin_g; c++)
        for (int64_t r = 0; r < rows; r++) {
            float *dst = buf + (c * rows + r) * pw;
            const int64_t ir = top + r;
            if (ir < 0 || ir >= in_h || c_lo >= c_hi) {
                for (int64_t i = 0; i < pw; i++) dst[i] = 0.0f;
                continue;
            }
            const float *src = x + c * p->s_in + ir * in_w;
            for (int64_t i = 0; i < c_lo + left; i++) dst[i] = 0.0f;
            for (int64_t i = c_lo; i < c_hi; i++) dst[i + left] = src[i];
            for (int64_t i = c_hi + left; i < pw; i++) dst[i] = 0.0f;
        }
    for (int64_t i = 0; i < pw; i++) buf[p->cin_g * rows * pw + i] = 0.0f;
    const float **ptrs = (const float **)(slot + p->padded_ptrs_offset);
    const int64_t kh_n = g->kernel[1], kw_n = g->kernel[2];
    for (int64_t kh = 0; kh < kh_n; kh++)
        for (int64_t kw = 0; kw < kw_n; kw++)
            for (int64_t c = 0; c < p->cin_g; c++)
                ptrs[(kh * kw_n + kw) * p->cin_g + c] =
                    buf + (c * rows + kh * g->dilation[1]) * pw + kw * g->dilation[2];
    const int64_t cols = out_rows * pw;
    float *stage = (float *)(slot + p->padded_stage_offset);
    const mk_sgemm_b b = {.rows = ptrs};
    mk_sgemm_packed_b(&gt->a, gt->m0, gt->m_n, 0, p->taps * p->cin_g, &b, cols, stage, cols,
                      false, gt->ep, slot + p->padded_gemm_offset);
    for (int64_t m = 0; m < gt->m_n; m++)
        for (int64_t r = 0; r < out_rows; r++)
            memcpy(gt->out + m * gt->ld_out + r * out_w, stage + m * cols + r * pw,
                   (size_t)out_w * sizeof(float));
}

/* im2col then one sgemm per run of consecutive live taps, into out (or the
 * direct path for zone tiles that have one). */
static void im2col_gemm(const conv_job *job, const tile_span *ts, const float *x,
                        const gemm_target *gt, void *col, int64_t cols)
{
    const conv_plan *p = job->p;
    mk_tap_box live;
    if (ts->rect) mk_conv_live_taps_rect(&p->geom, ts->r0, ts->r1, ts->c0, ts->c1, &live);
    else mk_conv_live_taps(&p->geom, ts->p0, ts->p1, &live);
    if (mk_tap_box_count(&live) == 0) { /* all padding: the output is the bias */
        mk_sgemm_packed(&gt->a, gt->m0, gt->m_n, 0, 0, NULL, 0, cols, gt->out, gt->ld_out,
                        false, gt->ep, gt->scratch);
        return;
    }
    if (ts->rect && p->zone_direct) {
        direct_zone_gemm(job, ts, x, gt, col, cols, &live);
        return;
    }
    if (ts->rect) mk_im2col_rect(x, p->cin_g, &p->geom, ts->r0, ts->r1, ts->c0, ts->c1, &live, col);
    else mk_im2col_tile(x, p->cin_g, &p->geom, ts->p0, ts->p1, &live, col);
    /* Consecutive live taps are contiguous in the packed weights. */
    const int64_t kh_n = p->geom.kernel[1], kw_n = p->geom.kernel[2];
    const int64_t run_w = live.hi[2] - live.lo[2];
    int64_t run_start = -1, run_len = 0, row = 0;
    bool first = true;
    for (int64_t kd = live.lo[0]; kd < live.hi[0]; kd++)
        for (int64_t kh = live.lo[1]; kh < live.hi[1]; kh++) {
            const int64_t t0 = (kd * kh_n + kh) * kw_n + live.lo[2];
            if (run_len > 0 && t0 == run_start + run_len) {
                run_len += run_w;
                continue;
            }
            if (run_len > 0) {
                tap_run_gemm(job, gt, col, cols, run_start, run_len, row, first, false);
                row += run_len * p->cin_g;
                first = false;
            }
            run_start = t0;
            run_len = run_w;
        }
    tap_run_gemm(job, gt, col, cols, run_start, run_len, row, first, true);
}

static void gemm_items(const conv_job *job, int64_t begin, int64_t end, int slot)
{
    const conv_plan *p = job->p;
    char *slot_mem = job->slots + (size_t)slot * job->slot_stride;
    void *col = slot_mem;
    float *stage = (float *)(slot_mem + p->stage_offset);
    void *gemm_scratch = slot_mem + p->gemm_offset;
    const int64_t width = p->geom.iter[2];
    const int64_t k_full = p->cin_g * p->taps;
    for (int64_t it = begin; it < end; it++) {
        const int64_t mc = it % p->n_mchunks;
        const int64_t t = (it / p->n_mchunks) % p->n_tiles;
        const int64_t rest = it / p->n_mchunks / p->n_tiles;
        const int64_t g = rest % p->group, n = rest / p->group;
        const int64_t m0 = mc * p->m_chunk;
        const int64_t m_n = m0 + p->m_chunk < p->cout_g ? p->m_chunk : p->cout_g - m0;
        const float *x = job->x + (n * p->c_in + g * p->cin_g) * p->s_in;
        float *y = job->y + (n * p->c_out + g * p->cout_g + m0) * p->s_out;
        mk_sgemm_epilogue ep = job->ep;
        ep.bias = job->bias ? job->bias + g * p->cout_g + m0 : NULL;

        tile_span ts;
        tile_of(p, t, &ts);
        /* Where the tile's result goes: straight into y when its positions
         * are contiguous there, else into the staging buffer. */
        int64_t cols, ld_out = p->s_out;
        float *out;
        bool staged = false;
        if (!ts.rect) {
            cols = ts.p1 - ts.p0;
            out = y + ts.p0;
        } else {
            cols = (ts.r1 - ts.r0) * (ts.c1 - ts.c0);
            out = y + ts.r0 * width + ts.c0;
            if (ts.r1 - ts.r0 > 1 && ts.c1 - ts.c0 < width) {
                out = stage;
                ld_out = cols;
                staged = true;
            }
        }

        const gemm_target gt = {
            .a = {p->cin_g > 0 ? job->w + g * p->a_group_floats : NULL, p->cout_g, k_full},
            .m0 = m0,
            .m_n = m_n,
            .out = out,
            .ld_out = ld_out,
            .ep = &ep,
            .scratch = gemm_scratch,
        };
        if (p->cin_g == 0) /* no input channels: the output is the bias */
            mk_sgemm_packed(&gt.a, m0, m_n, 0, 0, NULL, 0, cols, out, ld_out, false, &ep,
                            gemm_scratch);
        else if (p->algo == ALGO_POINTWISE)
            mk_sgemm_packed(&gt.a, m0, m_n, 0, p->cin_g, x + ts.p0, p->s_in, cols, out, ld_out,
                            false, &ep, gemm_scratch);
        else if (p->padded)
            padded_gemm(job, &ts, x, &gt, slot_mem);
        else
            im2col_gemm(job, &ts, x, &gt, col, cols);
        if (job->act_after)
            for (int64_t m = 0; m < m_n; m++)
                mk_apply_act(out + m * ld_out, cols, job->act, job->act_alpha, job->act_beta);
        if (staged) {
            const int64_t w = ts.c1 - ts.c0;
            for (int64_t m = 0; m < m_n; m++)
                for (int64_t r = ts.r0; r < ts.r1; r++)
                    memcpy(y + m * p->s_out + r * width + ts.c0,
                           stage + m * cols + (r - ts.r0) * w, (size_t)w * sizeof *y);
        }
    }
}

/* col2im of a plan whose taps tile the output (kernel == stride, no
 * dilation or padding: the mask head's 2x2 stride-2 upsampling): every
 * output element is one col value, already biased and clamped by the
 * sgemm's store, so it is copied, not added onto a map filled beforehand. */
static void scatter_taps(const conv_plan *p, const float *col, int64_t c_n, int64_t p0,
                         int64_t p1, float *y)
{
    const mk_conv_geom *g = &p->geom;
    const int64_t in_w = g->iter[2], out_w = g->touch[2];
    const int64_t kh_n = g->kernel[1], kw_n = g->kernel[2], n = p1 - p0;
    for (int64_t c = 0; c < c_n; c++)
        for (int64_t kh = 0; kh < kh_n; kh++) {
            /* The kw taps' rows of col, interleaved into contiguous output rows. */
            const float *src = col + (c * p->taps + kh * kw_n) * n - p0;
            for (int64_t pos = p0; pos < p1;) {
                const int64_t ih = pos / in_w, iw0 = pos % in_w;
                const int64_t iw1 = in_w < iw0 + p1 - pos ? in_w : iw0 + p1 - pos;
                float *restrict out = y + c * p->s_out + (ih * kh_n + kh) * out_w;
                const float *restrict in = src + ih * in_w;
                if (kw_n == 2)
                    for (int64_t iw = iw0; iw < iw1; iw++) {
                        out[2 * iw] = in[iw];
                        out[2 * iw + 1] = in[n + iw];
                    }
                else
                    for (int64_t iw = iw0; iw < iw1; iw++)
                        for (int64_t kw = 0; kw < kw_n; kw++)
                            out[iw * kw_n + kw] = in[kw * n + iw];
                pos += iw1 - iw0;
            }
        }
}

static void transpose_items(const conv_job *job, int64_t begin, int64_t end, int slot)
{
    const conv_plan *p = job->p;
    char *slot_mem = job->slots + (size_t)slot * job->slot_stride;
    float *col = (float *)slot_mem;
    void *gemm_scratch = slot_mem + p->gemm_offset;
    float *row_bias = (float *)(slot_mem + p->row_bias_offset);
    for (int64_t it = begin; it < end; it++) {
        const int64_t mc = it % p->n_mchunks;
        const int64_t rest = it / p->n_mchunks;
        const int64_t g = rest % p->group, n = rest / p->group;
        const int64_t c0 = mc * p->m_chunk;
        const int64_t c_n = c0 + p->m_chunk < p->cout_g ? p->m_chunk : p->cout_g - c0;
        const int64_t oc0 = g * p->cout_g + c0;
        float *y = job->y + (n * p->c_out + oc0) * p->s_out;
        const bool scatter = p->scatter && p->cin_g > 0;
        /* Scattered, col rows are final: the sgemm adds the bias (one per
         * (channel, tap) row) and Relu / Clip as it stores them. */
        mk_sgemm_epilogue ep = job->ep;
        if (scatter) {
            for (int64_t r = 0; r < c_n * p->taps; r++)
                row_bias[r] = job->bias ? job->bias[oc0 + r / p->taps] : 0.0f;
            ep.bias = row_bias;
        }
        if (!scatter)
            for (int64_t c = 0; c < c_n; c++)
                fill_rows(y + c * p->s_out, 1, p->s_out, 0, job->bias ? job->bias[oc0 + c] : 0.0f);
        if (p->cin_g > 0) {
            const float *x = job->x + (n * p->c_in + g * p->cin_g) * p->s_in;
            const mk_packed_a a = {job->w + g * p->a_group_floats, p->cout_g * p->taps, p->cin_g};
            for (int64_t t = 0; t < p->n_tiles; t++) {
                const int64_t p0 = t * p->tile;
                const int64_t p1 = p0 + p->tile < p->s_in ? p0 + p->tile : p->s_in;
                mk_sgemm_packed(&a, c0 * p->taps, c_n * p->taps, 0, p->cin_g, x + p0, p->s_in,
                                p1 - p0, col, p1 - p0, false, scatter ? &ep : NULL, gemm_scratch);
                if (scatter)
                    scatter_taps(p, col, c_n, p0, p1, y);
                else
                    mk_col2im_tile_add(col, c_n, &p->geom, p0, p1, y);
            }
        }
        if (job->act != MK_ACT_NONE && (!scatter || job->act_after))
            mk_apply_act(y, c_n * p->s_out, job->act, job->act_alpha, job->act_beta);
    }
}

/* ---- Winograd run ---------------------------------------------------------- */

static void winograd_post(float *v, int64_t n, const void *arg)
{
    const conv_job *job = arg;
    mk_apply_act(v, n, job->act, job->act_alpha, job->act_beta);
}

static mk_winograd_store winograd_store(const conv_job *job, int64_t m0)
{
    return (mk_winograd_store){
        .bias = job->bias ? job->bias + m0 : NULL,
        .clamp = job->ep.clamp,
        .lo = job->ep.lo,
        .hi = job->ep.hi,
        .post = job->act_after ? winograd_post : NULL,
        .post_arg = job,
    };
}

/* Items are (image, block of tiles, output-channel chunk) when each thread
 * transforms the input of its own blocks (one thread, or maps of many
 * blocks: see plan_winograd), or (block of the current span, chunk) when
 * the threads share the span's V. */
static void winograd_items(const conv_job *job, int64_t begin, int64_t end, int slot)
{
    const conv_plan *p = job->p;
    char *scratch = job->slots + (size_t)slot * job->slot_stride;
    const int64_t tiles = p->wino.h.tiles * p->wino.w.tiles;
    for (int64_t it = begin; it < end; it++) {
        const int64_t mc = it % p->n_mchunks;
        const int64_t b = job->shared ? it / p->n_mchunks : (it / p->n_mchunks) % p->n_tiles;
        const int64_t n = job->shared ? job->image : it / p->n_mchunks / p->n_tiles;
        const int64_t m0 = mc * p->m_chunk;
        const int64_t m_n = m0 + p->m_chunk < p->cout_g ? p->m_chunk : p->cout_g - m0;
        const mk_winograd_store store = winograd_store(job, m0);
        float *y = job->y + (n * p->c_out + m0) * p->s_out;
        if (job->shared) {
            const int64_t j0 = b * p->tile;
            mk_winograd_output(job->shared, p->cin_g, job->span_n, j0,
                               j0 + p->tile < job->span_n ? p->tile : job->span_n - j0, job->w,
                               p->cout_g, m0, m_n, &p->wino, job->span0, &store, y, scratch);
            continue;
        }
        const int64_t t0 = b * p->tile, nt = t0 + p->tile < tiles ? p->tile : tiles - t0;
        float *v = (float *)(scratch + mk_align64(mk_winograd_output_bytes(p->m_chunk, p->tile)));
        mk_winograd_input(job->x + n * p->c_in * p->s_in, p->cin_g, 0, p->cin_g, &p->wino, t0, nt, v);
        mk_winograd_output(v, p->cin_g, nt, 0, nt, job->w, p->cout_g, m0, m_n, &p->wino, t0, &store, y,
                           scratch);
    }
}

/* Input channels [begin, end) of the current span into the shared V. */
static void winograd_input_items(void *arg, int64_t begin, int64_t end, int slot)
{
    (void)slot;
    const conv_job *job = arg;
    const conv_plan *p = job->p;
    mk_winograd_input(job->x + job->image * p->c_in * p->s_in, p->cin_g, begin, end - begin,
                      &p->wino, job->span0, job->span_n, job->shared);
}

/* Input channels per item of a span's transform: enough to amortize
 * working out the lanes' addresses. */
enum { WINO_INPUT_GRAIN = 4 };

static void conv_items(void *arg, int64_t begin, int64_t end, int slot);

/* Threads sharing V: span by span, its input transform, then its blocks. */
static void run_winograd_spans(mk_pool *pool, conv_job *job)
{
    const conv_plan *p = job->p;
    const int64_t tiles = p->wino.h.tiles * p->wino.w.tiles;
    for (job->image = 0; job->image < p->batch; job->image++)
        for (job->span0 = 0; job->span0 < tiles; job->span0 += p->wino_span) {
            job->span_n = job->span0 + p->wino_span < tiles ? p->wino_span : tiles - job->span0;
            mk_parallel_for(pool, p->cin_g, WINO_INPUT_GRAIN, winograd_input_items, job);
            mk_parallel_for(pool, mk_ceil_div(job->span_n, p->tile) * p->n_mchunks, 1, conv_items, job);
        }
}

static int plan_of(mk_ctx *ctx, bool transpose, conv_plan *p);

/*
 * Packs, once, the weights the plan runs on when load left that to the
 * first shapes (see conv_state): U for Winograd, the sgemm panels for
 * im2col.  Then plans again, so that the plan sees them packed.
 */
static int pack_lazily(mk_ctx *ctx, bool transpose, conv_plan *p)
{
    conv_state *st = ctx->node->state;
    const mk_tensor *w = ctx->in[1];
    if (!st || !st->wino_ok || !w || w->data != st->packed_from ||
        (p->algo != ALGO_WINOGRAD && p->algo != ALGO_IM2COL))
        return MASKD_OK;
    int rc = MASKD_OK;
    pthread_mutex_lock(&st->lazy_lock);
    /* Published with release stores: other sessions' plans read the
     * pointers without the lock (packed_weights). */
    if (p->algo == ALGO_WINOGRAD && !packed_weights(&st->wino_u)) {
        float *u = mk_aligned_alloc(mk_winograd_u_floats(p->cout_g, p->cin_g) * sizeof(float));
        if (u) mk_winograd_pack_u(w->data, p->cout_g, p->cin_g, u);
        else rc = MASKD_ERR_NOMEM;
        __atomic_store_n(&st->wino_u, u, __ATOMIC_RELEASE);
    } else if (p->algo == ALGO_IM2COL && !packed_weights(&st->packed_w)) {
        float *a = mk_aligned_alloc(mk_sgemm_packed_a_floats(p->cout_g, p->cin_g * p->taps) *
                                    sizeof(float));
        if (a) pack_weights(w->data, 1, p->cout_g, p->cin_g, p->taps, a);
        else rc = MASKD_ERR_NOMEM;
        __atomic_store_n(&st->packed_w, a, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&st->lazy_lock);
    if (rc) return mk_op_fail(ctx, rc, "out of memory packing the weights");
    return plan_of(ctx, transpose, p);
}

static void conv_items(void *arg, int64_t begin, int64_t end, int slot)
{
    const conv_job *job = arg;
    switch (job->p->algo) {
    case ALGO_DEPTHWISE: depthwise_items(job, begin, end); break;
    case ALGO_POINTWISE:
    case ALGO_IM2COL: gemm_items(job, begin, end, slot); break;
    case ALGO_TRANSPOSE: transpose_items(job, begin, end, slot); break;
    case ALGO_WINOGRAD: winograd_items(job, begin, end, slot); break;
    case ALGO_STEM: stem_items(job, begin, end); break;
    }
}

/* The plan for the node's attributes (parsed at load, or now when prepare
 * did not run) and its inputs' current shapes. */
static int plan_of(mk_ctx *ctx, bool transpose, conv_plan *p)
{
    const conv_state *st = ctx->node->state;
    if (st) return make_plan(ctx, &st->attrs, p);
    conv_attrs local;
    int rc = parse_attrs(ctx, transpose, &local);
    return rc ? rc : make_plan(ctx, &local, p);
}

static int run_common(mk_ctx *ctx, bool transpose)
{
    conv_plan p;
    int rc = plan_of(ctx, transpose, &p);
    if (rc == MK_DYNAMIC)
        return mk_op_fail(ctx, MASKD_ERR_RUNTIME, "input shapes unknown at run");
    if (rc) return rc;
    mk_tensor *yt = ctx->out[0];
    if (!yt || mk_numel(yt) == 0) return MASKD_OK;
    if ((rc = pack_lazily(ctx, transpose, &p))) return rc;

    int64_t items;
    switch (p.algo) {
    case ALGO_DEPTHWISE: items = depthwise_item_count(&p); break;
    case ALGO_TRANSPOSE: items = p.batch * p.group * p.n_mchunks; break;
    default: items = p.batch * p.group * p.n_tiles * p.n_mchunks; break;
    }

    /* Scratch comes sized by infer; a plan that needs more than was reserved
     * (a pool with more threads than at infer, weights that moved since
     * prepare) still runs, from a buffer of its own. */
    const size_t need = plan_scratch(&p);
    char *scratch = ctx->scratch;
    void *owned = NULL;
    if (need > 0 && (!scratch || ctx->scratch_bytes < need)) {
        owned = mk_aligned_alloc(need);
        if (!owned)
            return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory (%zu bytes)", need);
        scratch = owned;
    }

    const mk_tensor *w = ctx->in[1];
    const mk_tensor *b = mk_input(ctx, 2);
    conv_job job = {
        .p = &p,
        .x = ctx->in[0]->data,
        .w = w->data,
        .bias = b ? b->data : NULL,
        .y = yt->data,
        .slots = scratch + p.pack_bytes + p.shared_bytes,
        .shared = p.shared_bytes ? (float *)(scratch + p.pack_bytes) : NULL,
        .slot_stride = p.slot_bytes,
        .act = ctx->node->act,
        .act_alpha = ctx->node->act_alpha,
        .act_beta = ctx->node->act_beta,
        .ep = {NULL, MK_SGEMM_CLAMP_NONE, 0.0f, 0.0f},
    };
    /* Relu and Clip go into the sgemm's store; the others run after it. */
    switch (job.act) {
    case MK_ACT_NONE: break;
    case MK_ACT_RELU: job.ep.clamp = MK_SGEMM_CLAMP_RELU; break;
    case MK_ACT_CLIP:
        job.ep.clamp = MK_SGEMM_CLAMP_CLIP;
        job.ep.lo = job.act_alpha;
        job.ep.hi = job.act_beta;
        break;
    default: job.act_after = true; break;
    }
    if (p.algo == ALGO_WINOGRAD) job.w = packed_weights(&((conv_state *)ctx->node->state)->wino_u);
    if (p.pack_weights) {
        const conv_state *st = ctx->node->state;
        if (p.pack_bytes) {
            (p.algo == ALGO_TRANSPOSE ? pack_transpose_weights : pack_weights)(
                w->data, p.group, p.cout_g, p.cin_g, p.taps, (float *)scratch);
            job.w = (const float *)scratch;
        } else {
            job.w = packed_weights(&st->packed_w);
        }
    }
    if (items > 0 && job.shared)
        run_winograd_spans(ctx->pool, &job);
    else if (items > 0)
        mk_parallel_for(ctx->pool, items, 1, conv_items, &job);
    mk_aligned_free(owned);
    return MASKD_OK;
}

/* ---- op entry points ----------------------------------------------------- */

static void conv_release(void *state)
{
    conv_state *st = state;
    if (!st) return;
    mk_aligned_free(st->packed_w);
    mk_aligned_free(st->wino_u);
    pthread_mutex_destroy(&st->lazy_lock);
    free(st);
}

static int prepare_common(mk_ctx *ctx, bool transpose)
{
    conv_state *st = calloc(1, sizeof *st);
    if (!st)
        return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
    int rc = parse_attrs(ctx, transpose, &st->attrs);
    if (rc) {
        free(st);
        return rc;
    }
    pthread_mutex_init(&st->lazy_lock, NULL);
    const mk_tensor *w = mk_input(ctx, 1);
    /* Pack once at load what every run would otherwise pack (all but
     * depthwise convs, whose kernel reads W as it is).  A W that does not
     * fit its group is left for infer to reject. */
    const int64_t group = st->attrs.group;
    if (!transpose && w && w->data && w->dtype == MASKD_FLOAT &&
        winograd_eligible(&st->attrs, w)) {
        st->wino_ok = true;
        st->packed_from = w->data;
        st->packed_numel = mk_numel(w);
    } else if (!transpose && w && w->data && w->dtype == MASKD_FLOAT && w->ndim >= 3 &&
        w->ndim <= MAX_SPATIAL + 2 && w->dims[0] > 0 && w->dims[0] % group == 0 &&
        w->dims[1] > 1) {
        const int64_t cout_g = w->dims[0] / group, cin_g = w->dims[1];
        int64_t taps = 1;
        for (int i = 2; i < w->ndim; i++) taps *= w->dims[i];
        const size_t floats = (size_t)group * mk_sgemm_packed_a_floats(cout_g, cin_g * taps);
        if (floats > 0) {
            st->packed_w = mk_aligned_alloc(floats * sizeof(float));
            if (!st->packed_w) {
                pthread_mutex_destroy(&st->lazy_lock);
                free(st);
                return mk_op_fail(ctx, MASKD_ERR_NOMEM, "out of memory");
            }
            pack_weights(w->data, group, cout_g, cin_g, taps, st->packed_w);
            st->packed_from = w->data;
            st->packed_numel = mk_numel(w);
        }
    }
    if (transpose && (rc = prepack_transpose_weights(ctx, st, w))) {
        pthread_mutex_destroy(&st->lazy_lock);
        free(st);
        return rc;
    }
    ctx->node->state = st;
    return MASKD_OK;
}

static int infer_common(mk_ctx *ctx, bool transpose)
{
    conv_plan p;
    int rc = plan_of(ctx, transpose, &p);
    if (rc || (rc = pack_lazily(ctx, transpose, &p))) return rc;
    ctx->scratch_bytes = plan_scratch(&p);
    return set_output(ctx, &p);
}

static int conv_prepare(mk_ctx *ctx) { return prepare_common(ctx, false); }
static int conv_infer(mk_ctx *ctx) { return infer_common(ctx, false); }
static int conv_run(mk_ctx *ctx) { return run_common(ctx, false); }
static int convt_prepare(mk_ctx *ctx) { return prepare_common(ctx, true); }
static int convt_infer(mk_ctx *ctx) { return infer_common(ctx, true); }
static int convt_run(mk_ctx *ctx) { return run_common(ctx, true); }

MK_OP_FAMILY(conv,
    {.domain = "", .op_type = "Conv", .since_version = 1, .prepare = conv_prepare,
     .infer = conv_infer, .run = conv_run, .release = conv_release, .fuse_act = 1},
    {.domain = "", .op_type = "ConvTranspose", .since_version = 1, .prepare = convt_prepare,
     .infer = convt_infer, .run = convt_run, .release = conv_release, .fuse_act = 1});
