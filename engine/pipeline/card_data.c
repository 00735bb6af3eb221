/* The model card as plain data: defaults, deep copy, names of the enums. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "maskd/pipeline.h"
#include "mk.h"

void maskd_card_init(maskd_card *card)
{
    memset(card, 0, sizeof *card);
    card->pipeline = MASKD_PIPELINE_SEGMENT;
    card->input.scale = 1.0f;
    for (int c = 0; c < 3; c++) card->input.std[c] = 1.0f;
    card->background_class = -1;
    card->segment.crop_valid_region = 1;

    maskd_nms_options_init(&card->nms.defaults, MASKD_NMS_HARD);
    card->nms.defaults.score_threshold = 0.05;
    card->nms.defaults.max_detections = 100;

    card->dense.activation = MASKD_SCORES_AS_IS;

    card->nms.iou_min = 0.0;
    card->nms.iou_max = 1.0;

    /* torchvision's Faster/Mask R-CNN test-time values. */
    maskd_card_detect *d = &card->detect;
    d->rpn_coder = (maskd_box_coder){1, 1, 1, 1, (float)MASKD_BOX_CODER_CLIP};
    d->rpn_pre_nms_top_n = 1000;
    d->rpn_post_nms_top_n = 1000;
    d->rpn_nms_iou = 0.7f;
    d->rpn_min_size = 1e-3f;
    d->box_roi = (maskd_roi_align_options){7, 7, 0.0f, 2, 0, MASKD_ROI_AVG};
    d->box_coder = (maskd_box_coder){10, 10, 5, 5, (float)MASKD_BOX_CODER_CLIP};
    d->box_score_threshold = 0.05f;
    d->box_min_size = 1e-2f;
    d->mask_threshold_logit = 0.0f;
}

#define CARD_STRINGS(X)                                                          \
    X(name) X(model_path) X(model2_path) X(input.name) X(segment.logits)         \
    X(dense.output) X(dense.boxes) X(dense.scores) X(detect.features)            \
    X(detect.objectness) X(detect.rpn_deltas) X(detect.box_input)                \
    X(detect.class_logits) X(detect.box_deltas) X(detect.mask_logits)            \
    X(detect.variances) X(detect.densities)

void maskd_card_free(maskd_card *card)
{
    if (!card) return;
#define FREE_STRING(f) free(card->f);
    CARD_STRINGS(FREE_STRING)
#undef FREE_STRING
    for (int i = 0; i < card->n_labels; i++) free(card->labels[i]);
    free(card->labels);
    free(card->detect.anchor_sizes);
    free(card->detect.aspect_ratios);
    free(card->detect.anchor_base);
    maskd_card_init(card);
}

static int dup_string(char **dst, const char *src)
{
    *dst = NULL;
    if (!src) return 0;
    *dst = strdup(src);
    return *dst ? 0 : -1;
}

static int dup_floats(float **dst, const float *src, int n)
{
    *dst = NULL;
    if (!src || n <= 0) return 0;
    *dst = malloc((size_t)n * sizeof(float));
    if (!*dst) return -1;
    memcpy(*dst, src, (size_t)n * sizeof(float));
    return 0;
}

int maskd_card_copy(maskd_card *dst, const maskd_card *src, maskd_error *err)
{
    *dst = *src;
    /* Null every pointer first so that a failure half-way frees only copies. */
#define NULL_STRING(f) dst->f = NULL;
    CARD_STRINGS(NULL_STRING)
#undef NULL_STRING
    dst->labels = NULL;
    dst->n_labels = 0;
    dst->detect.anchor_sizes = dst->detect.aspect_ratios = dst->detect.anchor_base = NULL;

    int bad = 0;
#define COPY_STRING(f) bad |= dup_string(&dst->f, src->f);
    CARD_STRINGS(COPY_STRING)
#undef COPY_STRING
    bad |= dup_floats(&dst->detect.anchor_sizes, src->detect.anchor_sizes,
                      src->detect.n_anchor_sizes);
    bad |= dup_floats(&dst->detect.aspect_ratios, src->detect.aspect_ratios,
                      src->detect.n_aspect_ratios);
    bad |= dup_floats(&dst->detect.anchor_base, src->detect.anchor_base,
                      4 * src->detect.n_anchor_base);
    if (!bad && src->n_labels > 0) {
        dst->labels = calloc((size_t)src->n_labels, sizeof(char *));
        if (!dst->labels) {
            bad = 1;
        } else {
            dst->n_labels = src->n_labels;
            for (int i = 0; i < src->n_labels; i++)
                bad |= dup_string(&dst->labels[i], src->labels[i] ? src->labels[i] : "");
        }
    }
    if (bad) {
        maskd_card_free(dst);
        return mk_fail(err, MASKD_ERR_NOMEM, "model card: out of memory");
    }
    return MASKD_OK;
}

const char *maskd_pipeline_kind_name(maskd_pipeline_kind kind)
{
    switch (kind) {
    case MASKD_PIPELINE_SEGMENT: return "segment";
    case MASKD_PIPELINE_DETECT: return "detect-two-stage";
    case MASKD_PIPELINE_DETECT_DENSE: return "detect-dense";
    }
    return "?";
}

const char *maskd_upsample_name(maskd_upsample_mode mode)
{
    return mode == MASKD_UPSAMPLE_ARGMAX_NEAREST ? "argmax-nearest" : "bilinear-logits";
}

int maskd_upsample_parse(const char *name, maskd_upsample_mode *out, maskd_error *err)
{
    if (name && !strcmp(name, "bilinear-logits")) {
        *out = MASKD_UPSAMPLE_BILINEAR_LOGITS;
        return MASKD_OK;
    }
    if (name && !strcmp(name, "argmax-nearest")) {
        *out = MASKD_UPSAMPLE_ARGMAX_NEAREST;
        return MASKD_OK;
    }
    return mk_fail(err, MASKD_ERR_INVALID,
                   "upsample '%s' is not one of bilinear-logits, argmax-nearest",
                   name ? name : "");
}

static const char *const format_names[] = {"rle", "png", "polygons", "none"};

const char *maskd_mask_format_name(maskd_mask_format f)
{
    return (unsigned)f < 4 ? format_names[f] : "?";
}

int maskd_mask_format_parse(const char *name, maskd_mask_format *out, maskd_error *err)
{
    for (int i = 0; name && i < 4; i++)
        if (!strcmp(name, format_names[i])) {
            *out = (maskd_mask_format)i;
            return MASKD_OK;
        }
    return mk_fail(err, MASKD_ERR_INVALID,
                   "format '%s' is not one of rle, png, polygons, none", name ? name : "");
}
