/* Shared helpers of the C tests: CHECK aborts the test with a message (exit 1). */
#ifndef PITH_TEST_COMMON_H
#define PITH_TEST_COMMON_H
#include "pith.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_checks = 0;

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        g_checks++;                                                                          \
        if (!(cond)) {                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n  ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fprintf(stderr, "\n");                                                           \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

/* A call that must return `want`; prints pith_last_error(handle) if not. */
#define EXPECT(want, handle, call)                                                           \
    do {                                                                                     \
        PithStatus st_ = (call);                                                             \
        CHECK(st_ == (want), "%s returned %d (%s), expected %d; last error: %s", #call,      \
              (int)st_, pith_status_string(st_), (int)(want),                                \
              pith_last_error((const void *)(handle)));                                      \
    } while (0)

#define OK(handle, call) EXPECT(PITH_OK, handle, call)

/* Is s[0..len) well-formed UTF-8? */
static inline int valid_utf8(const unsigned char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        if (n == 0 || i + n > len) return 0;
        for (size_t k = 1; k < n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += n;
    }
    return 1;
}

/* A growing text buffer the streaming callback appends to. */
typedef struct {
    char text[8192];
    size_t len;
    int pieces;
    int stop_after; /* return non-zero from the callback after this many pieces (0 = never) */
    int bad_utf8;
} Collect;

static inline int32_t collect_cb(const char *text, size_t len, void *user) {
    Collect *c = (Collect *)user;
    if (!valid_utf8((const unsigned char *)text, len) || strlen(text) != len) c->bad_utf8++;
    if (c->len + len < sizeof c->text) {
        memcpy(c->text + c->len, text, len);
        c->len += len;
        c->text[c->len] = 0;
    }
    c->pieces++;
    return c->stop_after > 0 && c->pieces >= c->stop_after;
}

static inline const char *model_path(void) {
    const char *p = getenv("PITH_MODEL");
    CHECK(p && *p, "set PITH_MODEL to the default model's path (test.sh does)");
    return p;
}

#endif
