/* A desktop program that uses only include/navigen.h and the navigen library:
 *   navigen_demo BUNDLE_DIR ITEM_ID [ITEM_ID...]
 * predicts the next items after the given history, streams a creation instruction, and registers a
 * new item (gives its text a CID on the device). */
#include <stdio.h>
#include <string.h>

#include "navigen.h"

static bool print_piece(const char *piece, size_t len, void *user) {
    size_t *count = (size_t *)user;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    *count += 1;
    return true;
}

static int fail(const char *what, enum navigen_status s) {
    fprintf(stderr, "%s failed: %s: %s\n", what, navigen_status_string((int)s), navigen_last_error());
    return 1;
}

int main(int argc, char **argv) {
    struct navigen_engine_params params;
    struct navigen_instruction_params iparams;
    struct navigen_engine *engine = NULL;
    char *json = NULL;
    size_t pieces = 0;
    enum navigen_status s;

    if (argc < 3) {
        fprintf(stderr, "usage: %s BUNDLE_DIR ITEM_ID...\n", argv[0]);
        return 2;
    }
    if (navigen_abi_version() != NAVIGEN_ABI_VERSION) {
        fprintf(stderr, "header ABI %d, library ABI %u\n", NAVIGEN_ABI_VERSION, navigen_abi_version());
        return 3;
    }
    printf("navigen %s, ABI %u\n", navigen_version(), navigen_abi_version());
    navigen_engine_default_params(&params);
    s = navigen_engine_open(argv[1], &params, &engine);
    if (s != NAVIGEN_OK) return fail("navigen_engine_open", s);

    s = navigen_predict_next(engine, (const char *const *)(argv + 2), (size_t)(argc - 2), 5, &json);
    if (s != NAVIGEN_OK) return fail("navigen_predict_next", s);
    printf("predictions: %s\n", json);
    navigen_string_free(json);
    json = NULL;

    navigen_instruction_default_params(&iparams);
    iparams.max_think_tokens = 64;
    iparams.max_answer_tokens = 96;
    printf("streaming: ");
    s = navigen_generate_instruction(engine, (const char *const *)(argv + 2), (size_t)(argc - 2), &iparams, print_piece, &pieces, &json);
    if (s != NAVIGEN_OK) return fail("navigen_generate_instruction", s);
    printf("\ninstruction: %s\npieces streamed: %zu\n", json, pieces);
    navigen_string_free(json);
    json = NULL;

    s = navigen_register_item(engine, "Moonlit Harbour (2026). A slow, tender drama about a lighthouse keeper.", &json);
    if (s != NAVIGEN_OK) return fail("navigen_register_item", s);
    printf("registered: %s\n", json);
    navigen_string_free(json);
    navigen_engine_free(engine);
    return pieces > 0 ? 0 : 4;
}
