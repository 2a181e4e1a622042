/* Soak of the C ABI: CYCLES rounds of open engine, predict, instruct cancelled mid-stream from the
 * callback, register, open history, append, read, forget, free both. Prints one line per cycle
 * with the resident set (KiB, /proc/self/statm) and the open file descriptors, so the test can
 * check that neither grows once the first cycles have warmed the allocator up. The resident set is
 * read after malloc_trim (glibc): without it, memory freed into the per-thread arenas stays resident
 * until glibc trims it at moments of its own, and the samples saw-tooth by 10 MiB with no leak.
 * Usage: soak BUNDLE_DIR HISTORY_DIR CYCLES ITEM_ID... */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "navigen.h"

static long rss_kib(void) {
    long pages = 0, resident = 0;
#ifdef __GLIBC__
    malloc_trim(0);
#endif
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = -1;
    fclose(f);
    return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static int open_fds(void) {
    int n = 0;
    struct dirent *e;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    while ((e = readdir(d)) != NULL) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

static bool stop_after_three(const char *piece, size_t len, void *user) {
    (void)piece;
    (void)len;
    return ++*(int *)user < 3;
}

static int check(const char *what, enum navigen_status got, enum navigen_status want) {
    if (got == want) return 0;
    fprintf(stderr, "FAIL %s: %s: %s\n", what, navigen_status_string((int)got), navigen_last_error());
    return 1;
}

int main(int argc, char **argv) {
    const char *const *items;
    size_t n_items;
    int cycles, c, failures = 0;
    if (argc < 5) return 2;
    cycles = atoi(argv[3]);
    items = (const char *const *)(argv + 4);
    n_items = (size_t)(argc - 4);
    for (c = 0; c < cycles && failures == 0; c++) {
        struct navigen_engine *engine = NULL;
        struct navigen_history *history = NULL;
        struct navigen_instruction_params ip;
        char *json = NULL;
        int pieces = 0;
        failures += check("engine_open", navigen_engine_open(argv[1], NULL, &engine), NAVIGEN_OK);
        if (failures) break;
        failures += check("predict", navigen_predict_next(engine, items, n_items, 10, &json), NAVIGEN_OK);
        navigen_string_free(json);
        json = NULL;
        navigen_instruction_default_params(&ip);
        ip.max_think_tokens = 16;
        ip.max_answer_tokens = 32;
        failures += check("instruct (stopped by the callback)",
                          navigen_generate_instruction(engine, items, n_items, &ip, stop_after_three, &pieces, &json),
                          NAVIGEN_ERR_CANCELLED);
        navigen_string_free(json); /* NULL after a cancel; freeing NULL is allowed */
        json = NULL;
        failures += check("register", navigen_register_item(engine, "A quiet film about a harbour.", &json), NAVIGEN_OK);
        navigen_string_free(json);
        json = NULL;
        failures += check("history_open", navigen_history_open(argv[2], NULL, &history), NAVIGEN_OK);
        failures += check("append", navigen_history_append(history, "soak", items[0], 0, 1700000000000LL + c), NAVIGEN_OK);
        failures += check("items", navigen_history_items(history, "soak", &json), NAVIGEN_OK);
        navigen_string_free(json);
        json = NULL;
        failures += check("export", navigen_history_export(history, "soak", engine, &json), NAVIGEN_OK);
        navigen_string_free(json);
        failures += check("forget", navigen_history_forget(history, "soak"), NAVIGEN_OK);
        navigen_history_free(history);
        navigen_engine_free(engine);
        printf("cycle %d rss_kib %ld fds %d\n", c, rss_kib(), open_fds());
        fflush(stdout);
    }
    return failures ? 1 : 0;
}
