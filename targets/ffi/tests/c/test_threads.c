#define _POSIX_C_SOURCE 200809L
/* Two sessions on one model at once, on two threads; the main thread cancels one of them
 * and checks that it stopped within one token, and that a session in use by one thread is
 * refused (PITH_ERR_BUSY) to another. */
#include "common.h"
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

typedef struct {
    PithModel *model;
    PithSession *session;
    const char *prompt;
    int max_tokens;
    atomic_int pieces;
    char text[4096];
    size_t len;
    PithStatus status;
    PithGenResult result;
} Job;

static int32_t job_cb(const char *text, size_t len, void *user) {
    Job *j = (Job *)user;
    if (j->len + len < sizeof j->text) {
        memcpy(j->text + j->len, text, len);
        j->len += len;
        j->text[j->len] = 0;
    }
    atomic_fetch_add(&j->pieces, 1);
    return 0;
}

static void *run_job(void *arg) {
    Job *j = (Job *)arg;
    PithGenParams gp = pith_gen_params_default();
    gp.temperature = 0;
    gp.max_tokens = j->max_tokens;
    gp.on_text = job_cb;
    gp.user_data = j;
    j->result = pith_gen_result_init();
    j->status = pith_session_generate(j->session, j->prompt, &gp, &j->result);
    return NULL;
}

static void sleep_ms(int ms) {
    struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

int main(void) {
    PithModelParams mp = pith_model_params_default();
    mp.n_threads = 1;
    PithModel *m = NULL;
    OK(NULL, pith_model_load(model_path(), &mp, &m));
    PithSessionParams sp = pith_session_params_default();
    sp.n_ctx = 256;
    Job a = {.model = m, .prompt = "The capital of France is", .max_tokens = 8};
    Job b = {.model = m, .prompt = "Once upon a time", .max_tokens = 200};
    OK(m, pith_session_new(m, &sp, &a.session));
    OK(m, pith_session_new(m, &sp, &b.session));

    pthread_t ta, tb;
    CHECK(pthread_create(&ta, NULL, run_job, &a) == 0, "thread a");
    CHECK(pthread_create(&tb, NULL, run_job, &b) == 0, "thread b");

    /* Wait until b is streaming. */
    for (int i = 0; atomic_load(&b.pieces) < 3; i++) {
        CHECK(i < 600000, "session b produced no text in 10 minutes");
        sleep_ms(1);
    }
    /* b is in use by its thread: another thread's calls are refused, not raced. */
    EXPECT(PITH_ERR_BUSY, b.session, pith_session_generate(b.session, "x", NULL, NULL));
    CHECK(strstr(pith_last_error(b.session), "another thread") != NULL, "%s", pith_last_error(b.session));
    EXPECT(PITH_ERR_BUSY, b.session, pith_session_free(b.session));
    EXPECT(PITH_ERR_BUSY, b.session, pith_session_reset(b.session));

    OK(b.session, pith_session_cancel(b.session));
    /* Once the cancel is visible, at most the token already past the check may still arrive. */
    int at_cancel = atomic_load(&b.pieces);
    CHECK(pthread_join(tb, NULL) == 0, "join b");
    int after = atomic_load(&b.pieces);
    CHECK(b.status == PITH_OK, "b status %d: %s", (int)b.status, pith_last_error(b.session));
    CHECK(b.result.stop_reason == PITH_STOP_CANCELLED, "b stop reason %d", (int)b.result.stop_reason);
    CHECK(after - at_cancel <= 1, "b went on for %d pieces after the cancel", after - at_cancel);
    CHECK(b.result.n_tokens < 200, "b generated %u tokens", b.result.n_tokens);

    CHECK(pthread_join(ta, NULL) == 0, "join a");
    CHECK(a.status == PITH_OK, "a status %d: %s", (int)a.status, pith_last_error(a.session));
    CHECK(strncmp(a.text, " Paris.", 7) == 0, "a text: '%s'", a.text);
    CHECK(a.result.stop_reason == PITH_STOP_LENGTH || a.result.stop_reason == PITH_STOP_EOG, "a stop %d",
          (int)a.result.stop_reason);

    /* The cancelled session is usable again, from this thread. */
    Job b2 = {.model = m, .session = b.session, .prompt = " The end", .max_tokens = 2};
    run_job(&b2);
    CHECK(b2.status == PITH_OK && b2.result.n_tokens == 2, "b after cancel: %d, %u tokens", (int)b2.status,
          b2.result.n_tokens);

    printf("test_threads: a = '%s'; b cancelled after %d pieces (%u tokens), %d piece(s) after the cancel\n", a.text,
           at_cancel, b.result.n_tokens, after - at_cancel);
    OK(a.session, pith_session_free(a.session));
    OK(b.session, pith_session_free(b.session));
    OK(m, pith_model_free(m));
    printf("test_threads: %d checks passed\n", g_checks);
    return 0;
}
