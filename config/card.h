/* Model cards: JSON -> maskd_card (engine/include/maskd/pipeline.h).
 *
 * A card names the pipeline, the graph file(s), the input contract (size,
 * resize, mean/std), the labels and the NMS defaults and limits; keys a card
 * carries for people (description, training, accuracy, ...) are ignored.
 * Errors name the offending key: "card shapes-seg.json: input.mean: ...".
 * The full key list is in models/SERVING.md. */
#ifndef MASKD_CARD_H
#define MASKD_CARD_H

#include <jansson.h>

#include "maskd/pipeline.h"

/* Reads and parses a card file; relative model paths are taken relative to
 * the card's directory.  On failure *out is left freed (maskd_card_init). */
int maskd_card_load_file(const char *path, maskd_card *out, maskd_error *err);

/* The same from a parsed document; base_dir (may be NULL: the working
 * directory) resolves relative paths, `where` prefixes messages. */
int maskd_card_from_json(const json_t *root, const char *base_dir, const char *where,
                         maskd_card *out, maskd_error *err);

#endif
