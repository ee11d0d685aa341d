/* Every function of pith.h, with good and bad input, on the default model. */
#include "common.h"

static int g_progress_calls = 0;
static float g_progress_last = -1.0f;

static bool progress_cb(float f, void *user) {
    (void)user;
    g_progress_calls++;
    g_progress_last = f;
    return true;
}

static bool cancel_at_half(float f, void *user) {
    (void)user;
    return f < 0.5f;
}

static PithModel *load_ok(void) {
    PithModelParams mp = pith_model_params_default();
    mp.n_threads = 1;
    mp.progress = progress_cb;
    PithModel *m = NULL;
    OK(NULL, pith_model_load(model_path(), &mp, &m));
    CHECK(m != NULL, "model is NULL");
    CHECK(g_progress_calls >= 2 && g_progress_last == 1.0f, "progress: %d calls, last %f", g_progress_calls,
          (double)g_progress_last);
    return m;
}

static void test_versions_and_statuses(void) {
    CHECK(pith_abi_version() == PITH_ABI_VERSION, "abi %x vs header %x", pith_abi_version(), PITH_ABI_VERSION);
    CHECK((pith_abi_version() >> 16) == PITH_ABI_VERSION_MAJOR, "major");
    for (int s = PITH_OK; s <= PITH_ERR_OTHER; s++) {
        const char *msg = pith_status_string((PithStatus)s);
        CHECK(msg && *msg, "status %d has no string", s);
    }
    CHECK(strcmp(pith_last_error(NULL), "") == 0 || pith_last_error(NULL) != NULL, "last error");
}

static void test_load_errors(void) {
    PithModelParams mp = pith_model_params_default();
    PithModel *m = (PithModel *)0x1; /* must be reset to NULL on failure */

    /* Another major version: refused with a message. */
    PithModelParams other = mp;
    other.abi_version = (PITH_ABI_VERSION_MAJOR + 1) << 16;
    EXPECT(PITH_ERR_ABI_MISMATCH, NULL, pith_model_load(model_path(), &other, &m));
    CHECK(m == NULL, "out not reset");
    CHECK(strstr(pith_last_error(NULL), "ABI") != NULL, "message: %s", pith_last_error(NULL));
    /* A newer minor of the same major is fine (checked by loading below). */

    /* struct_size too small. */
    PithModelParams tiny = mp;
    tiny.struct_size = 4;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_load(model_path(), &tiny, &m));

    /* NULLs. */
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_load(NULL, &mp, &m));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_load(model_path(), NULL, &m));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_load(model_path(), &mp, NULL));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_load_from_buffer(NULL, 10, &mp, &m));

    /* Invalid UTF-8 path, missing file, a directory. */
    EXPECT(PITH_ERR_INVALID_UTF8, NULL, pith_model_load("/tmp/\xff\xfe.gguf", &mp, &m));
    EXPECT(PITH_ERR_IO, NULL, pith_model_load("/nonexistent/model.gguf", &mp, &m));
    CHECK(strstr(pith_last_error(NULL), "/nonexistent/model.gguf") != NULL, "%s", pith_last_error(NULL));
    EXPECT(PITH_ERR_IO, NULL, pith_model_load("/tmp", &mp, &m));

    /* Progress callback cancels. */
    PithModelParams cp = mp;
    cp.progress = cancel_at_half;
    EXPECT(PITH_ERR_CANCELLED, NULL, pith_model_load(model_path(), &cp, &m));
    CHECK(m == NULL, "out not NULL after cancel");

    /* Negative thread count. */
    PithModelParams tp = mp;
    tp.n_threads = -3;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_load(model_path(), &tp, &m));
}

static void test_buffer_load(void) {
    FILE *f = fopen(model_path(), "rb");
    CHECK(f != NULL, "open model");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)n);
    CHECK(buf && fread(buf, 1, (size_t)n, f) == (size_t)n, "read model");
    fclose(f);

    PithModelParams mp = pith_model_params_default();
    mp.n_threads = 1;
    PithModel *m = NULL;
    /* Truncated model buffers: the header only, then all but the last byte. */
    EXPECT(PITH_ERR_BAD_MODEL, NULL, pith_model_load_from_buffer(buf, 1000, &mp, &m));
    EXPECT(PITH_ERR_BAD_MODEL, NULL, pith_model_load_from_buffer(buf, (size_t)n - 1, &mp, &m));
    EXPECT(PITH_ERR_BAD_MODEL, NULL, pith_model_load_from_buffer(buf, 0, &mp, &m));
    /* Garbage. */
    unsigned char junk[64];
    memset(junk, 0xAB, sizeof junk);
    EXPECT(PITH_ERR_BAD_MODEL, NULL, pith_model_load_from_buffer(junk, sizeof junk, &mp, &m));
    CHECK(m == NULL, "out not NULL");

    OK(NULL, pith_model_load_from_buffer(buf, (size_t)n, &mp, &m));
    free(buf); /* the model holds a copy */
    PithSession *s = NULL;
    PithSessionParams sp = pith_session_params_default();
    sp.n_ctx = 64;
    OK(m, pith_session_new(m, &sp, &s));
    PithGenParams gp = pith_gen_params_default();
    gp.temperature = 0;
    gp.max_tokens = 3;
    Collect c = {0};
    gp.on_text = collect_cb;
    gp.user_data = &c;
    OK(s, pith_session_generate(s, "The capital of France is", &gp, NULL));
    CHECK(strncmp(c.text, " Paris", 6) == 0, "from a buffer: %s", c.text);
    OK(s, pith_session_free(s));
    OK(m, pith_model_free(m));
}

static void test_model_functions(PithModel *m) {
    PithModelInfo info = pith_model_info_init();
    OK(m, pith_model_info(m, &info));
    CHECK(info.n_vocab == 49152 && info.n_layer == 30 && info.n_embd == 576, "info %u %u %u", info.n_vocab,
          info.n_layer, info.n_embd);
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_model_info(m, NULL));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_info(NULL, &info));

    /* Tokenize: size query, then the ids. */
    size_t n = 0;
    EXPECT(PITH_ERR_BUFFER_TOO_SMALL, m, pith_tokenize(m, "Hello world, héllo!", false, true, NULL, 0, &n));
    CHECK(n > 0 && n < 20, "n = %zu", n);
    uint32_t ids[32];
    size_t n2 = 0;
    EXPECT(PITH_ERR_BUFFER_TOO_SMALL, m, pith_tokenize(m, "Hello world, héllo!", false, true, ids, n - 1, &n2));
    OK(m, pith_tokenize(m, "Hello world, héllo!", false, true, ids, 32, &n2));
    CHECK(n2 == n, "%zu vs %zu", n2, n);
    char text[64];
    size_t tl = 0;
    OK(m, pith_detokenize(m, ids, n2, false, text, sizeof text, &tl));
    CHECK(strcmp(text, "Hello world, héllo!") == 0 && tl == strlen(text), "round trip: '%s'", text);
    EXPECT(PITH_ERR_BUFFER_TOO_SMALL, m, pith_detokenize(m, ids, n2, false, text, 5, &tl));
    CHECK(tl == strlen("Hello world, héllo!"), "needed %zu", tl);
    EXPECT(PITH_ERR_BUFFER_TOO_SMALL, m, pith_detokenize(m, ids, n2, false, NULL, 0, &tl));
    /* Special tokens parsed or not; BOS. */
    size_t ns = 0, np = 0;
    OK(m, pith_tokenize(m, "<|im_start|>", false, true, ids, 32, &ns));
    OK(m, pith_tokenize(m, "<|im_start|>", false, false, ids, 32, &np));
    CHECK(ns == 1 && np > 1, "special %zu, plain %zu", ns, np);
    OK(m, pith_tokenize(m, "", true, true, ids, 32, &ns));
    /* Bad input. */
    EXPECT(PITH_ERR_INVALID_UTF8, m, pith_tokenize(m, "bad \xc3\x28 utf8", false, true, ids, 32, &n));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_tokenize(m, NULL, false, true, ids, 32, &n));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_tokenize(m, "x", false, true, ids, 32, NULL));
    uint32_t bad_id = 1000000;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_detokenize(m, &bad_id, 1, false, text, sizeof text, &tl));
    CHECK(strstr(pith_last_error(m), "1000000") != NULL, "%s", pith_last_error(m));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_detokenize(m, NULL, 3, false, text, sizeof text, &tl));
    OK(m, pith_detokenize(m, NULL, 0, false, text, sizeof text, &tl));
    CHECK(tl == 0 && text[0] == 0, "empty");

    /* Threads. */
    OK(m, pith_model_set_threads(m, 1));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_model_set_threads(m, -1));
}

static void test_wrong_handles(PithModel *m, PithSession *s) {
    uint64_t not_a_handle[4] = {1, 2, 3, 4};
    size_t n;
    uint32_t ids[4];
    /* A session where a model is expected, a model where a session is, and random memory. */
    EXPECT(PITH_ERR_WRONG_HANDLE, s, pith_tokenize((const PithModel *)s, "x", false, true, ids, 4, &n));
    CHECK(strstr(pith_last_error(s), "not a model") != NULL, "%s", pith_last_error(s));
    EXPECT(PITH_ERR_WRONG_HANDLE, m, pith_session_generate((PithSession *)m, "x", NULL, NULL));
    EXPECT(PITH_ERR_WRONG_HANDLE, m, pith_session_cancel((const PithSession *)m));
    EXPECT(PITH_ERR_WRONG_HANDLE, not_a_handle, pith_model_set_threads((PithModel *)not_a_handle, 1));
    EXPECT(PITH_ERR_WRONG_HANDLE, not_a_handle, pith_session_free((PithSession *)not_a_handle));
    EXPECT(PITH_ERR_WRONG_HANDLE, not_a_handle, pith_model_free((PithModel *)not_a_handle));
    /* NULL handles. */
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_session_generate(NULL, "x", NULL, NULL));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_session_cancel(NULL));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_session_reset(NULL));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_session_set_threads(NULL, 1));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_model_set_threads(NULL, 1));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, NULL, pith_session_new(NULL, NULL, NULL));
    OK(NULL, pith_session_free(NULL));
    OK(NULL, pith_model_free(NULL));
}

static void test_generation(PithModel *m) {
    PithSession *s = NULL;
    PithSessionParams sp = pith_session_params_default();
    sp.n_ctx = 128;
    sp.n_threads = 1;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_session_new(m, &sp, NULL));
    PithSessionParams zero = sp;
    zero.n_ctx = 0;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, m, pith_session_new(m, &zero, &s));
    CHECK(s == NULL, "s not NULL");
    OK(m, pith_session_new(m, &sp, &s));
    OK(s, pith_session_set_threads(s, 2));
    OK(s, pith_session_set_threads(s, 1));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_set_threads(s, -2));

    /* Greedy, streamed as whole UTF-8 pieces. */
    PithGenParams gp = pith_gen_params_default();
    CHECK(gp.max_tokens == 128 && gp.top_k == 40, "defaults");
    gp.temperature = 0;
    gp.max_tokens = 6;
    Collect c = {0};
    gp.on_text = collect_cb;
    gp.user_data = &c;
    PithGenResult r = pith_gen_result_init();
    OK(s, pith_session_generate(s, "The capital of France is", &gp, &r));
    CHECK(strncmp(c.text, " Paris.", 7) == 0, "text: '%s'", c.text);
    CHECK(c.bad_utf8 == 0 && c.pieces >= 1, "pieces %d, bad %d", c.pieces, c.bad_utf8);
    CHECK(r.n_tokens == 6 && r.stop_reason == PITH_STOP_LENGTH && r.n_prompt_tokens == 5, "result %u %d %u",
          r.n_tokens, (int)r.stop_reason, r.n_prompt_tokens);
    size_t past = 0;
    OK(s, pith_session_n_past(s, &past));
    CHECK(past == 5 + 5, "n_past %zu", past);

    /* A stop string: the text ends before it. */
    OK(s, pith_session_reset(s));
    const char *stops[] = {"."};
    gp.stop = stops;
    gp.n_stop = 1;
    memset(&c, 0, sizeof c);
    OK(s, pith_session_generate(s, "The capital of France is", &gp, &r));
    CHECK(strcmp(c.text, " Paris") == 0 && r.stop_reason == PITH_STOP_STRING, "stop: '%s' %d", c.text,
          (int)r.stop_reason);
    const char *bad_stops[] = {"\xff"};
    gp.stop = bad_stops;
    EXPECT(PITH_ERR_INVALID_UTF8, s, pith_session_generate(s, "x", &gp, &r));
    gp.stop = NULL;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_generate(s, "x", &gp, &r));
    gp.n_stop = 0;

    /* The callback stops it. */
    OK(s, pith_session_reset(s));
    memset(&c, 0, sizeof c);
    c.stop_after = 1;
    gp.max_tokens = 20;
    OK(s, pith_session_generate(s, "The capital of France is", &gp, &r));
    CHECK(c.pieces == 1 && r.stop_reason == PITH_STOP_CALLBACK, "pieces %d, reason %d", c.pieces, (int)r.stop_reason);
    c.stop_after = 0;

    /* Bad input. */
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_generate(s, NULL, &gp, &r));
    EXPECT(PITH_ERR_INVALID_UTF8, s, pith_session_generate(s, "\xe2\x82", &gp, &r));
    PithGenParams bad = gp;
    bad.top_p = 7.0f;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_generate(s, "x", &bad, &r));
    bad = gp;
    bad.struct_size = 3;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_generate(s, "x", &bad, &r));
    PithGenResult small = r;
    small.struct_size = 2;
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_generate(s, "x", &gp, &small));
    /* Too long for the context: an error, and the session is still usable. */
    OK(s, pith_session_reset(s));
    static char longp[4000];
    for (size_t i = 0; i + 6 < sizeof longp; i += 6) memcpy(longp + i, "hello ", 6);
    longp[sizeof longp - 1] = 0;
    EXPECT(PITH_ERR_CONTEXT_FULL, s, pith_session_generate(s, longp, &gp, &r));
    /* Empty prompt on an empty session: nothing to continue. */
    OK(s, pith_session_reset(s));
    PithGenParams nobos = gp;
    (void)nobos;
    gp.max_tokens = 2;
    memset(&c, 0, sizeof c);
    OK(s, pith_session_generate(s, "Hi", &gp, &r));
    /* NULL params and result: defaults (128 tokens would be slow: cap via a new call). */
    OK(s, pith_session_reset(s));

    /* Chat. */
    PithMessage msgs[2] = {{"system", "You are a helpful assistant."}, {"user", "What is the capital of France?"}};
    memset(&c, 0, sizeof c);
    gp.max_tokens = 8;
    OK(s, pith_session_chat(s, msgs, 2, &gp, &r));
    CHECK(c.len > 0 && c.bad_utf8 == 0, "chat reply: '%s'", c.text);
    CHECK(strstr(c.text, "Paris") != NULL, "chat reply: '%s'", c.text);
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_chat(s, NULL, 2, &gp, &r));
    PithMessage badm[1] = {{"user", NULL}};
    EXPECT(PITH_ERR_INVALID_ARGUMENT, s, pith_session_chat(s, badm, 1, &gp, &r));
    PithMessage badu[1] = {{"user", "\xff"}};
    EXPECT(PITH_ERR_INVALID_UTF8, s, pith_session_chat(s, badu, 1, &gp, &r));

    /* Cancel while idle: no effect on the next generation. */
    OK(s, pith_session_cancel(s));
    OK(s, pith_session_reset(s));
    memset(&c, 0, sizeof c);
    gp.max_tokens = 2;
    OK(s, pith_session_generate(s, "The capital of France is", &gp, &r));
    CHECK(r.n_tokens == 2 && r.stop_reason == PITH_STOP_LENGTH, "after idle cancel: %u %d", r.n_tokens,
          (int)r.stop_reason);
    OK(s, pith_session_free(s));
}

/* Save after a few sampled tokens, go on; a restored session gives the same continuation. */
static void test_state(PithModel *m) {
    PithSessionParams sp = pith_session_params_default();
    sp.n_ctx = 96;
    sp.n_threads = 1;
    PithSession *a = NULL, *b = NULL, *c = NULL;
    OK(m, pith_session_new(m, &sp, &a));
    PithGenParams gp = pith_gen_params_default();
    gp.temperature = 0.9f;
    gp.seed = 1234;
    gp.max_tokens = 4;
    gp.repeat_penalty = 1.1f;
    OK(a, pith_session_generate(a, "Once upon a time", &gp, NULL));

    size_t need = 0;
    EXPECT(PITH_ERR_BUFFER_TOO_SMALL, a, pith_session_save_state(a, NULL, 0, &need));
    CHECK(need > 1000, "state size %zu", need);
    unsigned char *buf = malloc(need);
    size_t got = 0;
    EXPECT(PITH_ERR_BUFFER_TOO_SMALL, a, pith_session_save_state(a, buf, need - 1, &got));
    OK(a, pith_session_save_state(a, buf, need, &got));
    CHECK(got == need, "%zu vs %zu", got, need);
    const char *path = "pith-test-state.bin";
    OK(a, pith_session_save_file(a, path));

    Collect ca = {0}, cb = {0}, cc = {0};
    gp.max_tokens = 6;
    gp.on_text = collect_cb;
    gp.user_data = &ca;
    OK(a, pith_session_generate(a, "", &gp, NULL));
    CHECK(ca.len > 0, "continuation empty");

    OK(m, pith_session_new(m, &sp, &b));
    /* Corrupt and truncated states are refused, the session unchanged. */
    unsigned char saved0 = buf[0];
    buf[0] = 'X';
    EXPECT(PITH_ERR_BAD_STATE, b, pith_session_load_state(b, buf, need));
    buf[0] = saved0;
    EXPECT(PITH_ERR_BAD_STATE, b, pith_session_load_state(b, buf, need - 7));
    EXPECT(PITH_ERR_BAD_STATE, b, pith_session_load_state(b, buf, 3));
    EXPECT(PITH_ERR_INVALID_ARGUMENT, b, pith_session_load_state(b, NULL, 3));
    EXPECT(PITH_ERR_IO, b, pith_session_load_file(b, "/nonexistent/state.bin"));
    OK(b, pith_session_load_state(b, buf, need));
    gp.user_data = &cb;
    OK(b, pith_session_generate(b, "", &gp, NULL));
    CHECK(strcmp(ca.text, cb.text) == 0, "restored from buffer: '%s' vs original '%s'", cb.text, ca.text);

    OK(m, pith_session_new(m, &sp, &c));
    OK(c, pith_session_load_file(c, path));
    gp.user_data = &cc;
    OK(c, pith_session_generate(c, "", &gp, NULL));
    CHECK(strcmp(ca.text, cc.text) == 0, "restored from file: '%s' vs original '%s'", cc.text, ca.text);
    printf("state: %zu bytes; continuation after restore: '%s'\n", need, ca.text);

    /* A context too small for the saved tokens. */
    PithSession *tiny = NULL;
    PithSessionParams tp = sp;
    tp.n_ctx = 2;
    OK(m, pith_session_new(m, &tp, &tiny));
    EXPECT(PITH_ERR_CONTEXT_FULL, tiny, pith_session_load_state(tiny, buf, need));
    OK(tiny, pith_session_free(tiny));

    remove(path);
    free(buf);
    OK(a, pith_session_free(a));
    OK(b, pith_session_free(b));
    OK(c, pith_session_free(c));
}

int main(void) {
    test_versions_and_statuses();
    test_load_errors();
    PithModel *m = load_ok();
    PithSession *s = NULL;
    OK(m, pith_session_new(m, NULL, &s));
    test_model_functions(m);
    test_wrong_handles(m, s);
    OK(s, pith_session_free(s));
    test_generation(m);
    test_state(m);
    OK(m, pith_model_free(m));
    test_buffer_load();
    printf("test_basic: %d checks passed\n", g_checks);
    return 0;
}
