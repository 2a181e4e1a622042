/* One engine shared by 8 threads (predict, streamed instruct, register, cancel) while another
 * thread appends to, reads and exports a history with that engine. Every call must return OK or,
 * where a cancel can reach it, NAVIGEN_ERR_CANCELLED; every worker keeps calling until it has one
 * success (the canceller stops after a few cancels), so the verdict does not depend on speed.
 * Built plainly in the test command and under ThreadSanitizer by scripts/sanitizers.sh.
 * Usage: threads BUNDLE_DIR HISTORY_DIR ITEM_ID... */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "navigen.h"

#define WORKERS 8
#define EVENTS 200
#define MAX_TRIES 50

static struct navigen_engine *engine;
static const char *const *items;
static size_t n_items;
static const char *history_dir;

struct worker {
    int role; /* 0 predict, 1 instruct, 2 register, 3 cancel */
    int ok, cancelled, failed;
};

static void sleep_ms(long ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

static bool count_piece(const char *piece, size_t len, void *user) {
    (void)piece;
    *(size_t *)user += len;
    return true;
}

static void record(struct worker *w, const char *what, enum navigen_status s) {
    if (s == NAVIGEN_OK) {
        w->ok++;
    } else if (s == NAVIGEN_ERR_CANCELLED && (w->role == 0 || w->role == 1)) {
        w->cancelled++;
    } else {
        w->failed++;
        fprintf(stderr, "FAIL %s: %s: %s\n", what, navigen_status_string((int)s), navigen_last_error());
    }
}

static void *work(void *arg) {
    struct worker *w = arg;
    struct navigen_instruction_params ip;
    char *json = NULL;
    size_t streamed = 0;
    int tries;
    navigen_instruction_default_params(&ip);
    ip.max_think_tokens = 16;
    ip.max_answer_tokens = 32;
    if (w->role == 3) {
        for (tries = 0; tries < 5; tries++) {
            sleep_ms(20);
            record(w, "cancel", navigen_cancel(engine));
        }
        return NULL;
    }
    for (tries = 0; tries < MAX_TRIES && w->ok == 0 && w->failed == 0; tries++) {
        enum navigen_status s;
        if (w->role == 0) {
            s = navigen_predict_next(engine, items, n_items, 5, &json);
        } else if (w->role == 1) {
            s = navigen_generate_instruction(engine, items, n_items, &ip, count_piece, &streamed, &json);
        } else {
            s = navigen_register_item(engine, "A quiet film about a lighthouse keeper and her cat.", &json);
        }
        if (s == NAVIGEN_OK && (json == NULL || json[0] == '\0')) {
            fprintf(stderr, "FAIL role %d: OK without a result\n", w->role);
            w->failed++;
        }
        record(w, w->role == 0 ? "predict" : w->role == 1 ? "instruct" : "register", s);
        navigen_string_free(json);
        json = NULL;
    }
    return NULL;
}

static int history_failures = 0;

static void *history_work(void *arg) {
    struct navigen_history *h = NULL;
    char *json = NULL;
    char id[32];
    int i;
    (void)arg;
    if (navigen_history_open(history_dir, NULL, &h) != NAVIGEN_OK) {
        fprintf(stderr, "FAIL history_open: %s\n", navigen_last_error());
        history_failures++;
        return NULL;
    }
    for (i = 0; i < EVENTS; i++) {
        snprintf(id, sizeof id, "%s", items[(size_t)i % n_items]);
        if (navigen_history_append(h, "tsan", id, 0, 1700000000000LL + i) != NAVIGEN_OK) {
            fprintf(stderr, "FAIL append %d: %s\n", i, navigen_last_error());
            history_failures++;
        }
        if (i % 20 == 19) {
            if (navigen_history_items(h, "tsan", &json) != NAVIGEN_OK) history_failures++;
            navigen_string_free(json);
            if (navigen_history_export(h, "tsan", engine, &json) != NAVIGEN_OK) history_failures++;
            else if (strstr(json, "\"in_catalog\":true") == NULL) {
                fprintf(stderr, "FAIL export: no event found in the catalog\n");
                history_failures++;
            }
            navigen_string_free(json);
            json = NULL;
        }
    }
    /* Every acknowledged append is there, in order. */
    if (navigen_history_items(h, "tsan", &json) == NAVIGEN_OK) {
        size_t commas = 0;
        const char *p;
        for (p = json; *p; p++) commas += *p == ',';
        if (commas + 1 != EVENTS) {
            fprintf(stderr, "FAIL history holds %zu events, %d appended\n", commas + 1, EVENTS);
            history_failures++;
        }
        navigen_string_free(json);
    } else {
        history_failures++;
    }
    navigen_history_free(h);
    return NULL;
}

int main(int argc, char **argv) {
    pthread_t threads[WORKERS], hist;
    struct worker w[WORKERS];
    int i, failed = 0;
    if (argc < 4) return 2;
    history_dir = argv[2];
    items = (const char *const *)(argv + 3);
    n_items = (size_t)(argc - 3);
    if (navigen_engine_open(argv[1], NULL, &engine) != NAVIGEN_OK) {
        fprintf(stderr, "engine_open: %s\n", navigen_last_error());
        return 1;
    }
    pthread_create(&hist, NULL, history_work, NULL);
    for (i = 0; i < WORKERS; i++) {
        memset(&w[i], 0, sizeof w[i]);
        w[i].role = i % 4;
        pthread_create(&threads[i], NULL, work, &w[i]);
    }
    for (i = 0; i < WORKERS; i++) {
        pthread_join(threads[i], NULL);
        printf("worker %d role %d: ok %d cancelled %d failed %d\n", i, w[i].role, w[i].ok, w[i].cancelled, w[i].failed);
        if (w[i].failed || w[i].ok == 0) failed++;
    }
    pthread_join(hist, NULL);
    navigen_engine_free(engine);
    printf("history failures %d\n", history_failures);
    return failed || history_failures ? 1 : 0;
}
