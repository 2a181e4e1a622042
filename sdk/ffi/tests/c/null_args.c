/* Every exported function with NULL and invalid arguments: each must return an error status with a
 * message, never crash. Usage: null_args BUNDLE_DIR HISTORY_DIR */
#include <stdio.h>
#include <string.h>

#include "navigen.h"

static int failures = 0;

static void expect(const char *what, enum navigen_status got, enum navigen_status want) {
    if (got != want) {
        fprintf(stderr, "FAIL %s: got %s, want %s\n", what, navigen_status_string((int)got), navigen_status_string((int)want));
        failures++;
    } else if (want != NAVIGEN_OK && strlen(navigen_last_error()) == 0) {
        fprintf(stderr, "FAIL %s: no error message\n", what);
        failures++;
    }
}

static bool stop_now(const char *piece, size_t len, void *user) {
    (void)piece;
    (void)len;
    (void)user;
    return false;
}

int main(int argc, char **argv) {
    const enum navigen_status BAD = NAVIGEN_ERR_INVALID_ARGUMENT;
    struct navigen_engine *engine = NULL;
    struct navigen_history *history = NULL;
    struct navigen_engine_params ep;
    struct navigen_instruction_params ip;
    struct navigen_history_params hp;
    char *json = NULL;
    const char *items[] = {"1", "2", "3"};
    const char *bad_items[] = {"1", NULL};
    const char bad_utf8[] = {(char)0xff, (char)0xfe, 0};

    if (argc < 3) return 2;
    expect("engine_default_params(NULL)", navigen_engine_default_params(NULL), BAD);
    expect("instruction_default_params(NULL)", navigen_instruction_default_params(NULL), BAD);
    expect("history_default_params(NULL)", navigen_history_default_params(NULL), BAD);
    expect("engine_open(NULL dir)", navigen_engine_open(NULL, NULL, &engine), BAD);
    expect("engine_open(NULL out)", navigen_engine_open(argv[1], NULL, NULL), BAD);
    expect("engine_open(bad utf8)", navigen_engine_open(bad_utf8, NULL, &engine), BAD);
    expect("engine_open(missing dir)", navigen_engine_open("/nonexistent/navigen", NULL, &engine), NAVIGEN_ERR_IO);
    if (engine != NULL) { fprintf(stderr, "FAIL out not NULL after error\n"); failures++; }
    expect("cancel(NULL)", navigen_cancel(NULL), BAD);
    expect("predict(NULL engine)", navigen_predict_next(NULL, items, 3, 5, &json), BAD);
    expect("instruction(NULL engine)", navigen_generate_instruction(NULL, items, 3, NULL, NULL, NULL, &json), BAD);
    expect("register(NULL engine)", navigen_register_item(NULL, "a film", &json), BAD);
    navigen_engine_free(NULL);
    navigen_string_free(NULL);
    if (strcmp(navigen_status_string(12345), "NAVIGEN_UNKNOWN_STATUS") != 0) failures++;

    navigen_engine_default_params(&ep);
    expect("engine_open", navigen_engine_open(argv[1], &ep, &engine), NAVIGEN_OK);
    expect("predict(NULL out)", navigen_predict_next(engine, items, 3, 5, NULL), BAD);
    expect("predict(NULL items)", navigen_predict_next(engine, NULL, 3, 5, &json), BAD);
    expect("predict(NULL item)", navigen_predict_next(engine, bad_items, 2, 5, &json), BAD);
    expect("predict(k = 0)", navigen_predict_next(engine, items, 3, 0, &json), BAD);
    expect("predict(empty history)", navigen_predict_next(engine, items, 0, 5, &json), BAD);
    expect("register(NULL text)", navigen_register_item(engine, NULL, &json), BAD);
    expect("register(bad utf8)", navigen_register_item(engine, bad_utf8, &json), BAD);
    expect("register(NULL out)", navigen_register_item(engine, "a film", NULL), BAD);
    navigen_instruction_default_params(&ip);
    ip.max_answer_tokens = 0;
    expect("instruction(bad params)", navigen_generate_instruction(engine, items, 3, &ip, NULL, NULL, &json), BAD);
    navigen_instruction_default_params(&ip);
    expect("instruction(callback stops)", navigen_generate_instruction(engine, items, 3, &ip, stop_now, NULL, &json), NAVIGEN_ERR_CANCELLED);
    expect("instruction(NULL out)", navigen_generate_instruction(engine, items, 3, NULL, NULL, NULL, NULL), BAD);

    expect("history_open(NULL)", navigen_history_open(NULL, NULL, &history), BAD);
    expect("history_open(NULL out)", navigen_history_open(argv[2], NULL, NULL), BAD);
    navigen_history_default_params(&hp);
    hp.max_age_ms = -1;
    expect("history_open(bad params)", navigen_history_open(argv[2], &hp, &history), BAD);
    expect("history_open", navigen_history_open(argv[2], NULL, &history), NAVIGEN_OK);
    expect("append(NULL history)", navigen_history_append(NULL, "p", "1", 0, 1), BAD);
    expect("append(NULL profile)", navigen_history_append(history, NULL, "1", 0, 1), BAD);
    expect("append(NULL item)", navigen_history_append(history, "p", NULL, 0, 1), BAD);
    expect("append(bad kind)", navigen_history_append(history, "p", "1", 77, 1), BAD);
    expect("append(empty item)", navigen_history_append(history, "p", "", 0, 1), BAD);
    expect("append", navigen_history_append(history, "p", "1", 0, 1), NAVIGEN_OK);
    expect("append(not in catalog)", navigen_history_append(history, "p", "no-such-item", 0, 2), NAVIGEN_OK);
    expect("items(NULL out)", navigen_history_items(history, "p", NULL), BAD);
    expect("items(NULL profile)", navigen_history_items(history, NULL, &json), BAD);
    expect("forget(NULL)", navigen_history_forget(NULL, "p"), BAD);
    expect("export(NULL out)", navigen_history_export(history, "p", engine, NULL), BAD);
    /* Handles of the wrong kind are recognised. */
    expect("predict(history as engine)", navigen_predict_next((const struct navigen_engine *)history, items, 3, 5, &json), BAD);
    expect("register(history as engine)", navigen_register_item((const struct navigen_engine *)history, "a film", &json), BAD);
    expect("append(engine as history)", navigen_history_append((const struct navigen_history *)engine, "p", "1", 0, 1), BAD);
    /* The conveniences: predict/instruct straight from a profile, the beam width as a parameter. */
    {
        struct navigen_predict_params pp;
        expect("predict_default_params(NULL)", navigen_predict_default_params(NULL), BAD);
        navigen_predict_default_params(&pp);
        if (pp.k != 10 || pp.beams != 20 || pp.exclude_history) { fprintf(stderr, "FAIL predict defaults\n"); failures++; }
        pp.beams = 0;
        expect("predict(beams = 0)", navigen_predict(engine, items, 3, &pp, &json), BAD);
        pp.beams = 257;
        expect("predict(beams = 257)", navigen_predict(engine, items, 3, &pp, &json), BAD);
        expect("predict(NULL engine)", navigen_predict(NULL, items, 3, NULL, &json), BAD);
        expect("predict_for_profile(NULL history)", navigen_predict_for_profile(engine, NULL, "p", NULL, &json), BAD);
        expect("predict_for_profile(NULL profile)", navigen_predict_for_profile(engine, history, NULL, NULL, &json), BAD);
        expect("predict_for_profile(no events)", navigen_predict_for_profile(engine, history, "nobody", NULL, &json), BAD);
        expect("predict_for_profile(NULL out)", navigen_predict_for_profile(engine, history, "p", NULL, NULL), BAD);
        expect("predict_for_profile(engine as history)", navigen_predict_for_profile(engine, (const struct navigen_history *)engine, "p", NULL, &json), BAD);
        expect("instruction_for_profile(no events)", navigen_generate_instruction_for_profile(engine, history, "nobody", NULL, NULL, NULL, &json), BAD);
        expect("instruction_for_profile(NULL history)", navigen_generate_instruction_for_profile(engine, NULL, "p", NULL, NULL, NULL, &json), BAD);
        expect("instruction_for_profile(callback stops)", navigen_generate_instruction_for_profile(engine, history, "p", NULL, stop_now, NULL, &json), NAVIGEN_ERR_CANCELLED);
    }
    expect("export", navigen_history_export(history, "p", engine, &json), NAVIGEN_OK);
    if (json == NULL || strstr(json, "\"in_catalog\":false") == NULL) { fprintf(stderr, "FAIL export flags: %s\n", json ? json : "(null)"); failures++; }
    navigen_string_free(json);
    expect("forget", navigen_history_forget(history, "p"), NAVIGEN_OK);
    navigen_history_free(history);
    navigen_history_free(NULL);
    navigen_engine_free(engine);
    printf("%d failures\n", failures);
    return failures == 0 ? 0 : 1;
}
