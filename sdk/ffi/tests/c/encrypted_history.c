/* An encrypted history from C: a key store of the app's (here a table in memory, as a Keychain or
 * Keystore wrapper would be), events that never reach the disk in the clear, a wrong store refused,
 * forget destroying the key. Usage: encrypted_history HISTORY_DIR */
#include <stdio.h>
#include <string.h>

#include "navigen.h"

#define SLOTS 8

struct store {
    char profile[SLOTS][101];
    unsigned char key[SLOTS][32];
    int used[SLOTS];
    int next_key; /* distinct keys per store and creation */
    int destroyed;
};

static int find(struct store *s, const char *profile) {
    int i;
    for (i = 0; i < SLOTS; i++)
        if (s->used[i] && strcmp(s->profile[i], profile) == 0) return i;
    return -1;
}

static bool get_key(const char *profile, bool create, uint8_t *key_out, void *user) {
    struct store *s = user;
    int i = find(s, profile), j;
    if (i < 0 && create) {
        for (i = 0; i < SLOTS && s->used[i]; i++) {
        }
        if (i == SLOTS || strlen(profile) > 100) return false;
        s->used[i] = 1;
        strcpy(s->profile[i], profile);
        for (j = 0; j < 32; j++) s->key[i][j] = (unsigned char)(s->next_key * 31 + j * 7 + 1);
        s->next_key++;
    }
    if (i < 0) return false;
    memcpy(key_out, s->key[i], 32);
    return true;
}

static bool destroy_key(const char *profile, void *user) {
    struct store *s = user;
    int i = find(s, profile);
    if (i >= 0) {
        memset(s->key[i], 0, 32);
        s->used[i] = 0;
        s->destroyed++;
    }
    return true;
}

static int failures = 0;

static void expect(const char *what, enum navigen_status got, enum navigen_status want) {
    if (got != want) {
        fprintf(stderr, "FAIL %s: got %s, want %s (%s)\n", what, navigen_status_string((int)got),
                navigen_status_string((int)want), navigen_last_error());
        failures++;
    }
}

/* Whether the file holds `needle`. */
static int file_contains(const char *path, const char *needle) {
    static char buf[1 << 16];
    size_t n, k = strlen(needle), i;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    for (i = 0; i + k <= n; i++)
        if (memcmp(buf + i, needle, k) == 0) return 1;
    return 0;
}

int main(int argc, char **argv) {
    struct store mine, other;
    struct navigen_key_store keys, wrong, half;
    struct navigen_history *h = NULL;
    char *json = NULL;
    char log[4096];
    if (argc < 2) return 2;
    memset(&mine, 0, sizeof mine);
    memset(&other, 0, sizeof other);
    other.next_key = 100;
    keys.get_key = get_key;
    keys.destroy_key = destroy_key;
    keys.user = &mine;
    wrong = keys;
    wrong.user = &other;
    half = keys;
    half.destroy_key = NULL;
    /* "alice" is 616c696365 in hex: the log's file name. */
    snprintf(log, sizeof log, "%s/616c696365.nvh", argv[1]);

    expect("open_encrypted(keys NULL)", navigen_history_open_encrypted(argv[1], NULL, NULL, &h), NAVIGEN_ERR_INVALID_ARGUMENT);
    expect("open_encrypted(no destroy_key)", navigen_history_open_encrypted(argv[1], NULL, &half, &h), NAVIGEN_ERR_INVALID_ARGUMENT);

    expect("open_encrypted", navigen_history_open_encrypted(argv[1], NULL, &keys, &h), NAVIGEN_OK);
    expect("append 1", navigen_history_append(h, "alice", "secret-film-1", 3, 1700000000000LL), NAVIGEN_OK);
    expect("append 2", navigen_history_append(h, "alice", "secret-film-2", 3, 1700000000001LL), NAVIGEN_OK);
    navigen_history_free(h);
    h = NULL;
    if (file_contains(log, "secret-film") != 0) {
        fprintf(stderr, "FAIL the log is missing or holds an item id in the clear\n");
        failures++;
    }

    /* Another store's key for alice, and no store at all: refused, the log untouched. */
    {
        unsigned char k[32];
        get_key("alice", true, k, &other);
    }
    expect("open_encrypted (other store)", navigen_history_open_encrypted(argv[1], NULL, &wrong, &h), NAVIGEN_OK);
    expect("items with another store's key", navigen_history_items(h, "alice", &json), NAVIGEN_ERR_MISMATCH);
    navigen_history_free(h);
    expect("open (plain)", navigen_history_open(argv[1], NULL, &h), NAVIGEN_OK);
    expect("items without a key store", navigen_history_items(h, "alice", &json), NAVIGEN_ERR_MISMATCH);
    navigen_history_free(h);

    expect("reopen with the right store", navigen_history_open_encrypted(argv[1], NULL, &keys, &h), NAVIGEN_OK);
    expect("items", navigen_history_items(h, "alice", &json), NAVIGEN_OK);
    if (json == NULL || strcmp(json, "[\"secret-film-1\",\"secret-film-2\"]") != 0) {
        fprintf(stderr, "FAIL items: %s\n", json ? json : "(null)");
        failures++;
    }
    navigen_string_free(json);
    json = NULL;
    expect("forget", navigen_history_forget(h, "alice"), NAVIGEN_OK);
    if (mine.destroyed != 1 || find(&mine, "alice") >= 0) {
        fprintf(stderr, "FAIL forget did not destroy alice's key\n");
        failures++;
    }
    if (file_contains(log, "") != -1) {
        fprintf(stderr, "FAIL alice's log is still there\n");
        failures++;
    }
    navigen_history_free(h);
    printf("encrypted history: %d failures\n", failures);
    return failures ? 1 : 0;
}
