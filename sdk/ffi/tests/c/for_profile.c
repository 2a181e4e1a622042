/* Predicting and instructing straight from a stored profile: the same answers as passing the
 * profile's item ids by hand, the beam width and history exclusion as parameters.
 * Usage: for_profile BUNDLE_DIR HISTORY_DIR ITEM_ID... */
#include <stdio.h>
#include <string.h>

#include "navigen.h"

static int failures = 0;

static int ok(const char *what, enum navigen_status s) {
    if (s == NAVIGEN_OK) return 1;
    fprintf(stderr, "FAIL %s: %s: %s\n", what, navigen_status_string((int)s), navigen_last_error());
    failures++;
    return 0;
}

static bool count(const char *piece, size_t len, void *user) {
    (void)piece;
    *(size_t *)user += len;
    return true;
}

int main(int argc, char **argv) {
    struct navigen_engine *engine = NULL;
    struct navigen_history *history = NULL;
    struct navigen_predict_params pp;
    struct navigen_instruction_params ip;
    char *by_profile = NULL, *by_hand = NULL, *ins = NULL, *ins_hand = NULL;
    const char *const *items = (const char *const *)(argv + 3);
    size_t n = (size_t)(argc - 3), streamed = 0, i;
    if (argc < 4) return 2;
    if (!ok("engine_open", navigen_engine_open(argv[1], NULL, &engine))) return 1;
    if (!ok("history_open", navigen_history_open(argv[2], NULL, &history))) return 1;
    for (i = 0; i < n; i++) ok("append", navigen_history_append(history, "u", items[i], 3, 1700000000000LL + (int64_t)i));

    navigen_predict_default_params(&pp);
    pp.k = 7;
    pp.beams = 8;
    pp.exclude_history = true;
    ok("predict_for_profile", navigen_predict_for_profile(engine, history, "u", &pp, &by_profile));
    ok("predict", navigen_predict(engine, items, n, &pp, &by_hand));
    if (by_profile && by_hand && strcmp(by_profile, by_hand) != 0) {
        fprintf(stderr, "FAIL the profile's predictions differ from the same ids by hand:\n%s\n%s\n", by_profile, by_hand);
        failures++;
    }
    printf("predictions: %s\n", by_profile ? by_profile : "null");

    navigen_instruction_default_params(&ip);
    ip.max_think_tokens = 16;
    ip.max_answer_tokens = 48;
    ok("instruction_for_profile", navigen_generate_instruction_for_profile(engine, history, "u", &ip, count, &streamed, &ins));
    ok("instruction", navigen_generate_instruction(engine, items, n, &ip, NULL, NULL, &ins_hand));
    /* Greedy decoding: the same answer both ways (everything before the timings, which differ). */
    if (ins && ins_hand) {
        const char *ta = strstr(ins, "\"timings\""), *tb = strstr(ins_hand, "\"timings\"");
        if (!ta || !tb || (ta - ins) != (tb - ins_hand) || strncmp(ins, ins_hand, (size_t)(ta - ins)) != 0) {
            fprintf(stderr, "FAIL the profile's instruction differs:\n%s\n%s\n", ins, ins_hand);
            failures++;
        }
    }
    if (streamed == 0) { fprintf(stderr, "FAIL nothing streamed\n"); failures++; }
    printf("instruction: %s\n", ins ? ins : "null");
    navigen_string_free(by_profile);
    navigen_string_free(by_hand);
    navigen_string_free(ins);
    navigen_string_free(ins_hand);
    navigen_history_free(history);
    navigen_engine_free(engine);
    return failures ? 1 : 0;
}
