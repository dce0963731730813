/* Tests of every function in fisherkernels.h and its error paths, run from two threads at once.
   Results are checked against float64 references computed here, independently of the library.
     abi_test                    the whole suite (the managed files sit beside libfisherkernels.so)
     abi_test --missing-runtime TEXT  the runtime cannot start: every call must fail with FK_ERR_BACKEND
                                      and a message containing TEXT */
#include "fisherkernels.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static atomic_int failures;
static atomic_int checks;

#define CHECK(cond, ...)                                                                                               \
    do {                                                                                                               \
        atomic_fetch_add(&checks, 1);                                                                                  \
        if (!(cond)) {                                                                                                 \
            atomic_fetch_add(&failures, 1);                                                                            \
            flockfile(stderr);                                                                                         \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                                           \
            fprintf(stderr, __VA_ARGS__);                                                                              \
            fprintf(stderr, " (last error: %s)\n", fk_last_error());                                                  \
            funlockfile(stderr);                                                                                       \
        }                                                                                                              \
    } while (0)

/* status must be `expected` and, for a failure, the message must mention `needle`. */
#define EXPECT_STATUS(call, expected, needle)                                                                          \
    do {                                                                                                               \
        fk_status got_ = (call);                                                                                       \
        CHECK(got_ == (expected), "%s returned %d (%s), expected %d", #call, (int)got_, fk_status_string(got_),       \
              (int)(expected));                                                                                        \
        if ((expected) != FK_OK)                                                                                       \
            CHECK(strstr(fk_last_error(), (needle)) != NULL, "message of %s lacks '%s'", #call, (needle));            \
        else if (got_ == FK_OK)                                                                                        \
            CHECK(fk_last_error()[0] == '\0', "%s succeeded but left an error message", #call);                       \
    } while (0)

/* ---- random inputs (xorshift64*, one state per caller) ---- */

static double uniform(uint64_t* state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (double)((*state * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static void fill(float* values, int64_t count, double low, double high, uint64_t* state)
{
    for (int64_t i = 0; i < count; i++) values[i] = (float)(low + (high - low) * uniform(state));
}

/* A well-conditioned symmetric positive definite n × n matrix: B Bᵀ / n + 0.1 I. */
static void random_spd(float* m, int64_t n, uint64_t* state)
{
    float* b = malloc(sizeof(float) * n * n);
    fill(b, n * n, -1, 1, state);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double sum = 0;
            for (int64_t k = 0; k < n; k++) sum += (double)b[i * n + k] * b[j * n + k];
            m[i * n + j] = (float)(sum / n + (i == j ? 0.1 : 0));
        }
    free(b);
}

/* ‖got − ref‖ / ‖ref‖ */
static double relative_error(const float* got, const double* ref, int64_t count)
{
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < count; i++) {
        diff += (got[i] - ref[i]) * (got[i] - ref[i]);
        norm += ref[i] * ref[i];
    }
    return norm > 0 ? sqrt(diff / norm) : sqrt(diff);
}

/* ---- float64 references ---- */

/* Solves m y = b in place for an SPD m [n × n] (Cholesky; m is overwritten), b [n × k]. */
static void cholesky_solve(double* m, int64_t n, double* b, int64_t k)
{
    for (int64_t j = 0; j < n; j++) {
        for (int64_t p = 0; p < j; p++) m[j * n + j] -= m[j * n + p] * m[j * n + p];
        m[j * n + j] = sqrt(m[j * n + j]);
        for (int64_t i = j + 1; i < n; i++) {
            for (int64_t p = 0; p < j; p++) m[i * n + j] -= m[i * n + p] * m[j * n + p];
            m[i * n + j] /= m[j * n + j];
        }
    }
    for (int64_t c = 0; c < k; c++) {
        for (int64_t i = 0; i < n; i++) {
            for (int64_t p = 0; p < i; p++) b[i * k + c] -= m[i * n + p] * b[p * k + c];
            b[i * k + c] /= m[i * n + i];
        }
        for (int64_t i = n - 1; i >= 0; i--) {
            for (int64_t p = i + 1; p < n; p++) b[i * k + c] -= m[p * n + i] * b[p * k + c];
            b[i * k + c] /= m[i * n + i];
        }
    }
}

static void kfac_reference(const float* x, int64_t rows, int64_t cols, int append_one, float weight,
                           const float* factor, double* out)
{
    int64_t dim = cols + append_one;
    for (int64_t i = 0; i < dim; i++)
        for (int64_t j = 0; j < dim; j++) {
            double sum = 0;
            for (int64_t r = 0; r < rows; r++)
                sum += (i < cols ? x[r * cols + i] : 1.0) * (j < cols ? x[r * cols + j] : 1.0);
            out[i * dim + j] = factor[i * dim + j] + (double)weight * sum;
        }
}

static void woodbury_reference(const float* d, const float* u, const float* s, int64_t n, int64_t r, const float* b,
                               int64_t k, double* out)
{
    double* m = malloc(sizeof(double) * n * n);
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            double sum = i == j ? d[i] : 0;
            for (int64_t p = 0; p < r; p++) sum += (double)u[i * r + p] * s[p] * u[j * r + p];
            m[i * n + j] = sum;
        }
    for (int64_t i = 0; i < n * k; i++) out[i] = b[i];
    cholesky_solve(m, n, out, k);
    free(m);
}

/* The operator X ↦ M·G X A + τ X on row-major X [g × a] is M·A⊗G + τI (A, G symmetric). */
static void kron_reference(const float* a_factor, int64_t a, const float* g_factor, int64_t g, double positions,
                           double tau, const float* xs, int64_t count, double* out)
{
    int64_t n = a * g;
    double* m = malloc(sizeof(double) * n * n);
    double* y = malloc(sizeof(double) * n);
    for (int64_t c = 0; c < count; c++) {
        for (int64_t i = 0; i < g; i++)
            for (int64_t j = 0; j < a; j++)
                for (int64_t k = 0; k < g; k++)
                    for (int64_t l = 0; l < a; l++)
                        m[(i * a + j) * n + k * a + l] = positions * g_factor[i * g + k] * a_factor[l * a + j]
                                                         + (i == k && j == l ? tau : 0);
        const float* x = xs + c * n;
        for (int64_t i = 0; i < n; i++) y[i] = x[i];
        cholesky_solve(m, n, y, 1);
        double sum = 0;
        for (int64_t i = 0; i < n; i++) sum += x[i] * y[i];
        out[c] = sum;
    }
    free(m);
    free(y);
}

/* ---- the kernel functions ---- */

static void test_kfac_accumulate(fk_engine* engine, uint64_t* state)
{
    const int64_t rows = 37, cols = 13;
    float x[37 * 13], factor[14 * 14];
    double ref[14 * 14];
    fill(x, rows * cols, -1, 1, state);
    for (int append_one = 0; append_one <= 1; append_one++) {
        int64_t dim = cols + append_one;
        random_spd(factor, dim, state);
        kfac_reference(x, rows, cols, append_one, 0.25f, factor, ref);
        EXPECT_STATUS(fk_kfac_accumulate(engine, x, rows, cols, append_one, 0.25f, factor), FK_OK, "");
        double err = relative_error(factor, ref, dim * dim);
        CHECK(err <= 1e-5, "kfac_accumulate (append_one=%d): relative error %g > 1e-5", append_one, err);
    }
    EXPECT_STATUS(fk_kfac_accumulate(NULL, x, rows, cols, 0, 1, factor), FK_ERR_INVALID_ARGUMENT, "fk_engine");
    EXPECT_STATUS(fk_kfac_accumulate(engine, NULL, rows, cols, 0, 1, factor), FK_ERR_INVALID_ARGUMENT, "x is NULL");
    EXPECT_STATUS(fk_kfac_accumulate(engine, x, rows, cols, 0, 1, NULL), FK_ERR_INVALID_ARGUMENT, "factor is NULL");
    EXPECT_STATUS(fk_kfac_accumulate(engine, x, -1, cols, 0, 1, factor), FK_ERR_INVALID_ARGUMENT, "rows");
    EXPECT_STATUS(fk_kfac_accumulate(engine, x, rows, -3, 0, 1, factor), FK_ERR_INVALID_ARGUMENT, "cols");
    EXPECT_STATUS(fk_kfac_accumulate(engine, x, rows, cols, 2, 1, factor), FK_ERR_INVALID_ARGUMENT, "append_one");
    EXPECT_STATUS(fk_kfac_accumulate(engine, x, (int64_t)1 << 40, cols, 0, 1, factor), FK_ERR_INVALID_ARGUMENT,
                  "at most");
    EXPECT_STATUS(fk_kfac_accumulate(engine, x, (int64_t)1 << 40, (int64_t)1 << 40, 0, 1, factor),
                  FK_ERR_INVALID_ARGUMENT, "at most"); /* rows·cols overflows int64 */
}

static void test_woodbury_apply(fk_engine* engine, uint64_t* state)
{
    enum { n = 24, r = 5, k = 3 };
    float d[n], u[n * r], s[r], b[n * k], out[n * k] = { 0 };
    double ref[n * k];
    fill(d, n, 1, 2, state);
    fill(u, n * r, -0.5, 0.5, state);
    fill(s, r, 0.5, 1.5, state);
    fill(b, n * k, -1, 1, state);
    woodbury_reference(d, u, s, n, r, b, k, ref);
    EXPECT_STATUS(fk_woodbury_apply(engine, d, u, s, n, r, b, k, out), FK_OK, "");
    double err = relative_error(out, ref, n * k);
    CHECK(err <= 1e-5, "woodbury_apply: relative error %g > 1e-5", err);

    EXPECT_STATUS(fk_woodbury_apply(NULL, d, u, s, n, r, b, k, out), FK_ERR_INVALID_ARGUMENT, "fk_engine");
    EXPECT_STATUS(fk_woodbury_apply(engine, NULL, u, s, n, r, b, k, out), FK_ERR_INVALID_ARGUMENT, "d is NULL");
    EXPECT_STATUS(fk_woodbury_apply(engine, d, NULL, s, n, r, b, k, out), FK_ERR_INVALID_ARGUMENT, "u is NULL");
    EXPECT_STATUS(fk_woodbury_apply(engine, d, u, NULL, n, r, b, k, out), FK_ERR_INVALID_ARGUMENT, "s is NULL");
    EXPECT_STATUS(fk_woodbury_apply(engine, d, u, s, n, r, NULL, k, out), FK_ERR_INVALID_ARGUMENT, "b is NULL");
    EXPECT_STATUS(fk_woodbury_apply(engine, d, u, s, n, r, b, k, NULL), FK_ERR_INVALID_ARGUMENT, "out is NULL");
    EXPECT_STATUS(fk_woodbury_apply(engine, d, u, s, 0, r, b, k, out), FK_ERR_INVALID_ARGUMENT, "n must be positive");
    EXPECT_STATUS(fk_woodbury_apply(engine, d, u, s, n, -1, b, k, out), FK_ERR_INVALID_ARGUMENT, "r must be");
    EXPECT_STATUS(fk_woodbury_apply(engine, d, u, s, n, r, b, -2, out), FK_ERR_INVALID_ARGUMENT, "k must be");
}

static void test_kron_quadratic(fk_engine* engine, uint64_t* state)
{
    enum { a = 5, g = 4, count = 3 };
    float af[a * a], gf[g * g], xs[count * g * a], out[count] = { 0 };
    double ref[count];
    random_spd(af, a, state);
    random_spd(gf, g, state);
    fill(xs, count * g * a, -1, 1, state);
    const double settings[][2] = { { 24, 1.0 }, { 24, 0.0 }, { 0, 0.5 } }; /* positions, prior precision */
    for (int t = 0; t < 3; t++) {
        kron_reference(af, a, gf, g, settings[t][0], settings[t][1], xs, count, ref);
        EXPECT_STATUS(fk_kron_quadratic(engine, af, a, gf, g, settings[t][0], settings[t][1], xs, count, out), FK_OK,
                      "");
        double err = relative_error(out, ref, count);
        CHECK(err <= 1e-4, "kron_quadratic (M=%g, tau=%g): relative error %g > 1e-4", settings[t][0], settings[t][1],
              err);
    }
    EXPECT_STATUS(fk_kron_quadratic(NULL, af, a, gf, g, 24, 1, xs, count, out), FK_ERR_INVALID_ARGUMENT, "fk_engine");
    EXPECT_STATUS(fk_kron_quadratic(engine, NULL, a, gf, g, 24, 1, xs, count, out), FK_ERR_INVALID_ARGUMENT,
                  "a_factor is NULL");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, a, NULL, g, 24, 1, xs, count, out), FK_ERR_INVALID_ARGUMENT,
                  "g_factor is NULL");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, a, gf, g, 24, 1, NULL, count, out), FK_ERR_INVALID_ARGUMENT,
                  "xs is NULL");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, a, gf, g, 24, 1, xs, count, NULL), FK_ERR_INVALID_ARGUMENT,
                  "out is NULL");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, 0, gf, g, 24, 1, xs, count, out), FK_ERR_INVALID_ARGUMENT, "a must");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, a, gf, -1, 24, 1, xs, count, out), FK_ERR_INVALID_ARGUMENT, "g must");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, a, gf, g, -1, 1, xs, count, out), FK_ERR_INVALID_ARGUMENT,
                  "positions");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, a, gf, g, 24, NAN, xs, count, out), FK_ERR_INVALID_ARGUMENT,
                  "prior_precision");
    EXPECT_STATUS(fk_kron_quadratic(engine, af, a, gf, g, 0, 0, xs, count, out), FK_ERR_INVALID_ARGUMENT,
                  "positive prior precision");
}

/* ---- the model functions ---- */

/* Reads a little-endian C-order .npy of the given dtype ("<i8", "<f8") into a malloc'd buffer. */
static void* read_npy(const char* path, const char* dtype, int64_t* count)
{
    FILE* file = fopen(path, "rb");
    if (file == NULL) return NULL;
    unsigned char preamble[10];
    void* data = NULL;
    if (fread(preamble, 1, 10, file) == 10 && memcmp(preamble, "\x93NUMPY\x01", 7) == 0) {
        size_t header_length = preamble[8] | (size_t)preamble[9] << 8;
        char* header = calloc(header_length + 1, 1);
        if (fread(header, 1, header_length, file) == header_length && strstr(header, dtype) != NULL
            && strstr(header, "'fortran_order': False") != NULL) {
            long start = ftell(file);
            fseek(file, 0, SEEK_END);
            *count = (ftell(file) - start) / 8;
            fseek(file, start, SEEK_SET);
            data = malloc(8 * (size_t)*count);
            if (fread(data, 8, (size_t)*count, file) != (size_t)*count) {
                free(data);
                data = NULL;
            }
        }
        free(header);
    }
    fclose(file);
    return data;
}

enum { BATCH = 2, SEQ = 12, VOCAB = 64 };
static int64_t fixture_tokens[BATCH * SEQ];
static double fixture_jvp[BATCH * SEQ * VOCAB];
static float single_thread_p[BATCH * SEQ], single_thread_epistemic[BATCH * SEQ];

static int load_fixtures(void)
{
    int64_t count = 0;
    int64_t* tokens = read_npy(FK_FIXTURES "/gpt2_tiny.tokens.npy", "<i8", &count);
    CHECK(tokens != NULL && count == BATCH * SEQ, "cannot read gpt2_tiny.tokens.npy");
    if (tokens == NULL || count != BATCH * SEQ) return 0;
    memcpy(fixture_tokens, tokens, sizeof fixture_tokens);
    free(tokens);
    double* jvp = read_npy(FK_FIXTURES "/gpt2_tiny.jvp.npy", "<f8", &count);
    CHECK(jvp != NULL && count == BATCH * SEQ * VOCAB, "cannot read gpt2_tiny.jvp.npy");
    if (jvp == NULL || count != BATCH * SEQ * VOCAB) return 0;
    memcpy(fixture_jvp, jvp, sizeof fixture_jvp);
    free(jvp);
    return 1;
}

/* Scores the fixture tokens: next-token targets, so the last position of each sequence has none. */
static int check_scores(fk_model* model, float* p, float* epistemic)
{
    float aleatoric[BATCH * SEQ];
    fk_status status = fk_model_score(model, fixture_tokens, BATCH, SEQ, NULL, 1.0, p, aleatoric, epistemic);
    CHECK(status == FK_OK, "fk_model_score on the fixture: %s", fk_status_string(status));
    if (status != FK_OK) return 0;
    for (int i = 0; i < BATCH * SEQ; i++) {
        if (i % SEQ == SEQ - 1) {
            CHECK(isnan(p[i]) && isnan(aleatoric[i]) && isnan(epistemic[i]), "position %d has no target but a score", i);
            continue;
        }
        CHECK(p[i] > 0 && p[i] < 1, "p[%d] = %g", i, p[i]);
        CHECK(fabs(aleatoric[i] - (double)p[i] * (1 - p[i])) <= 1e-6, "aleatoric[%d] = %g, p = %g", i, aleatoric[i],
              p[i]);
        CHECK(epistemic[i] > 0 && isfinite(epistemic[i]), "epistemic[%d] = %g", i, epistemic[i]);
    }
    return 1;
}

static void check_jvp(fk_model* model)
{
    static __thread float out[BATCH * SEQ * VOCAB];
    const char* direction = FK_FIXTURES "/gpt2_tiny.direction.safetensors";
    EXPECT_STATUS(fk_model_jvp(model, fixture_tokens, BATCH, SEQ, direction, out, BATCH * SEQ * VOCAB - 1),
                  FK_ERR_BUFFER_TOO_SMALL, "needs 1536");
    if (fk_model_jvp(model, fixture_tokens, BATCH, SEQ, direction, out, BATCH * SEQ * VOCAB) != FK_OK) {
        CHECK(0, "fk_model_jvp on the fixture failed");
        return;
    }
    double err = relative_error(out, fixture_jvp, BATCH * SEQ * VOCAB);
    CHECK(err <= 1e-3, "jvp against the torch float64 golden: relative error %g > 1e-3", err);
}

/* Copies the file `from` over `to`; 0 on failure. */
static int copy_file(const char* from, const char* to)
{
    FILE* in = fopen(from, "rb");
    FILE* out = in != NULL ? fopen(to, "wb") : NULL;
    int ok = in != NULL && out != NULL;
    char buffer[1 << 16];
    size_t n;
    while (ok && (n = fread(buffer, 1, sizeof buffer, in)) > 0) ok = fwrite(buffer, 1, n, out) == n;
    if (in != NULL) fclose(in);
    if (out != NULL && fclose(out) != 0) ok = 0;
    return ok;
}

/* The K-FAC posterior is built once per curvature file: a repeated call (served from the cache) gives the scores of a
   fresh build bit for bit, and a file rewritten with other factors is reloaded rather than served stale. */
static void check_curvature_reload(fk_model* model, const float* fresh_epistemic)
{
    char copy[] = "/tmp/fk_abi_curvature_XXXXXX";
    int fd = mkstemp(copy);
    CHECK(fd >= 0, "mkstemp failed");
    if (fd < 0) return;
    close(fd);
    float p[BATCH * SEQ], aleatoric[BATCH * SEQ], first[BATCH * SEQ], repeat[BATCH * SEQ], reloaded[BATCH * SEQ];
    CHECK(copy_file(FK_FIXTURES "/gpt2_tiny.kfac.safetensors", copy), "cannot write %s", copy);
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, copy, 1.0, p, aleatoric, first), FK_OK, "");
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, copy, 1.0, p, aleatoric, repeat), FK_OK, "");
    CHECK(copy_file(FK_FIXTURES "/gpt2_tiny.kfac_targets.safetensors", copy), "cannot write %s", copy);
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, copy, 1.0, p, aleatoric, reloaded), FK_OK, "");
    int changed = 0;
    for (int i = 0; i < BATCH * SEQ; i++) {
        if (i % SEQ == SEQ - 1) continue;
        CHECK(first[i] == fresh_epistemic[i] && repeat[i] == first[i], "K-FAC epistemic[%d]: %g, repeated %g, fresh %g", i,
              first[i], repeat[i], fresh_epistemic[i]);
        changed |= reloaded[i] != first[i];
    }
    CHECK(changed, "the rewritten curvature file %s was not reloaded", copy);
    remove(copy);
}

/* Every model call and its error paths; the scores must repeat the single-threaded ones bit for bit. */
static void test_models(fk_engine* engine)
{
    const char* onnx = FK_FIXTURES "/gpt2_tiny.onnx";
    fk_model* model = (fk_model*)1;
    EXPECT_STATUS(fk_model_load(engine, NULL, &model), FK_ERR_INVALID_ARGUMENT, "onnx_path is NULL");
    CHECK(model == NULL, "fk_model_load left *out set on failure");
    EXPECT_STATUS(fk_model_load(engine, onnx, NULL), FK_ERR_INVALID_ARGUMENT, "out is NULL");
    EXPECT_STATUS(fk_model_load(NULL, onnx, &model), FK_ERR_INVALID_ARGUMENT, "fk_engine");
    EXPECT_STATUS(fk_model_load(engine, FK_FIXTURES "/no_such_model.onnx", &model), FK_ERR_IO, "no_such_model.onnx");
    EXPECT_STATUS(fk_model_load(engine, FK_FIXTURES "/gpt2_tiny.tokens.npy", &model), FK_ERR_FORMAT,
                  "gpt2_tiny.tokens.npy");
    EXPECT_STATUS(fk_model_load(engine, onnx, &model), FK_OK, "");
    if (model == NULL) return;

    float p[BATCH * SEQ], aleatoric[BATCH * SEQ], epistemic[BATCH * SEQ];
    int scored = check_scores(model, p, epistemic);
    for (int i = 0; scored && i < BATCH * SEQ; i++) {
        if (i % SEQ == SEQ - 1) continue;
        CHECK(p[i] == single_thread_p[i] && epistemic[i] == single_thread_epistemic[i],
              "position %d scores differently from two threads: p %g vs %g, epistemic %g vs %g", i, p[i],
              single_thread_p[i], epistemic[i], single_thread_epistemic[i]);
    }
    check_jvp(model);

    int64_t bad_tokens[2] = { 5, 1000 };
    EXPECT_STATUS(fk_model_score(model, bad_tokens, 1, 2, NULL, 1.0, p, aleatoric, epistemic), FK_ERR_INVALID_ARGUMENT,
                  "token id 1000");
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, NULL, 0.0, p, aleatoric, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "prior_precision");
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, 0, SEQ, NULL, 1.0, p, aleatoric, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "batch");
    /* K-FAC: p and aleatoric do not depend on the method; the epistemic score does. */
    float kfac_p[BATCH * SEQ], kfac_epistemic[BATCH * SEQ];
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, FK_FIXTURES "/gpt2_tiny.kfac.safetensors", 1.0,
                                 kfac_p, aleatoric, kfac_epistemic),
                  FK_OK, "");
    for (int i = 0; scored && i < BATCH * SEQ; i++) {
        if (i % SEQ == SEQ - 1) {
            CHECK(isnan(kfac_p[i]) && isnan(kfac_epistemic[i]), "K-FAC: position %d has no target but a score", i);
            continue;
        }
        CHECK(kfac_p[i] == p[i], "K-FAC p[%d] = %g, isotropic %g", i, kfac_p[i], p[i]);
        CHECK(kfac_epistemic[i] > 0 && kfac_epistemic[i] < epistemic[i], "K-FAC epistemic[%d] = %g, isotropic %g", i,
              kfac_epistemic[i], epistemic[i]);
    }
    if (scored) check_curvature_reload(model, kfac_epistemic);
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, FK_FIXTURES "/llama_tiny.kfac.safetensors", 1.0, p,
                                 aleatoric, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "llama_tiny.kfac.safetensors' was fitted on a different model");
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, FK_FIXTURES "/missing.safetensors", 1.0, p,
                                 aleatoric, epistemic),
                  FK_ERR_IO, "missing.safetensors");
    EXPECT_STATUS(fk_model_score(NULL, fixture_tokens, BATCH, SEQ, NULL, 1.0, p, aleatoric, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "fk_model");
    EXPECT_STATUS(fk_model_score((fk_model*)engine, fixture_tokens, BATCH, SEQ, NULL, 1.0, p, aleatoric, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "not a live fk_model");
    EXPECT_STATUS(fk_model_score(model, NULL, BATCH, SEQ, NULL, 1.0, p, aleatoric, epistemic), FK_ERR_INVALID_ARGUMENT,
                  "tokens is NULL");
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, NULL, 1.0, p, NULL, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "aleatoric is NULL");
    float jvp[4];
    EXPECT_STATUS(fk_model_jvp(NULL, fixture_tokens, BATCH, SEQ, "v.safetensors", jvp, 4), FK_ERR_INVALID_ARGUMENT,
                  "fk_model");
    EXPECT_STATUS(fk_model_jvp(model, fixture_tokens, BATCH, SEQ, NULL, jvp, 4), FK_ERR_INVALID_ARGUMENT,
                  "direction_path is NULL");
    EXPECT_STATUS(fk_model_jvp(model, fixture_tokens, BATCH, SEQ, FK_FIXTURES "/missing.safetensors", jvp, 4), FK_ERR_IO,
                  "missing.safetensors");
    EXPECT_STATUS(fk_model_jvp(model, fixture_tokens, BATCH, SEQ, FK_FIXTURES "/gpt2_tiny.direction.safetensors", jvp,
                               -1),
                  FK_ERR_INVALID_ARGUMENT, "out_len");
    fk_model_destroy(model);
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, NULL, 1.0, p, aleatoric, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "not a live fk_model");
    fk_model_destroy(NULL);
}

/* A model outliving its engine fails cleanly. */
static void test_model_after_engine(void)
{
    fk_engine* engine = NULL;
    fk_model* model = NULL;
    float p[BATCH * SEQ], aleatoric[BATCH * SEQ], epistemic[BATCH * SEQ];
    EXPECT_STATUS(fk_engine_create("cpu", &engine), FK_OK, "");
    EXPECT_STATUS(fk_model_load(engine, FK_FIXTURES "/gpt2_tiny.onnx", &model), FK_OK, "");
    fk_engine_destroy(engine);
    EXPECT_STATUS(fk_model_score(model, fixture_tokens, BATCH, SEQ, NULL, 1.0, p, aleatoric, epistemic),
                  FK_ERR_INVALID_ARGUMENT, "the one this model was loaded on");
    fk_model_destroy(model);
}

/* ---- engines, handles, threads ---- */

static void test_engines(void)
{
    fk_engine* engine = (fk_engine*)1;
    EXPECT_STATUS(fk_engine_create("tpu", &engine), FK_ERR_INVALID_ARGUMENT, "unknown backend 'tpu'");
    CHECK(engine == NULL, "fk_engine_create left *out set on failure");
    EXPECT_STATUS(fk_engine_create("cpu", NULL), FK_ERR_INVALID_ARGUMENT, "out is NULL");
    fk_status cuda = fk_engine_create("cuda", &engine); /* no GPU here: unavailable, never a crash */
    CHECK(cuda == FK_OK || cuda == FK_ERR_BACKEND, "cuda engine: status %d", (int)cuda);
    CHECK(cuda == FK_OK || strstr(fk_last_error(), "cuda") != NULL, "cuda failure does not name the backend");
    fk_engine_destroy(engine);

    EXPECT_STATUS(fk_engine_create(NULL, &engine), FK_OK, "");
    CHECK(engine != NULL, "best engine is NULL");
    fk_engine_destroy(engine);
    /* Stale and foreign handles are errors, not crashes. */
    float x[4] = { 1, 2, 3, 4 }, factor[4] = { 0 };
    EXPECT_STATUS(fk_kfac_accumulate(engine, x, 2, 2, 0, 1, factor), FK_ERR_INVALID_ARGUMENT, "not a live fk_engine");
    fk_engine_destroy(engine); /* double destroy: ignored with a message */
    CHECK(strstr(fk_last_error(), "fk_engine") != NULL, "double destroy left no message");
    EXPECT_STATUS(fk_kfac_accumulate((fk_engine*)0x1230, x, 2, 2, 0, 1, factor), FK_ERR_INVALID_ARGUMENT,
                  "not a live fk_engine");
    fk_engine_destroy(NULL);
}

struct worker {
    fk_engine* shared;
    uint64_t seed;
    int use_emulator;
};

static void* work(void* argument)
{
    struct worker* w = argument;
    uint64_t state = w->seed;
    fk_engine* own = NULL;
    EXPECT_STATUS(fk_engine_create("cpu", &own), FK_OK, "");
    for (int round = 0; round < 20; round++) {
        fk_engine* engine = round % 2 ? own : w->shared;
        test_kfac_accumulate(engine, &state);
        test_woodbury_apply(engine, &state);
        test_kron_quadratic(engine, &state);
        if (round < 2) test_models(engine); /* scoring runs a backward pass per position: twice is enough */
        if (round == 0) test_engines(); /* an unknown name probes every backend: slow */
    }
    /* The ILGPU kernels on ILGPU's CPU emulator, through the same calls (one thread: the emulator is slow). */
    fk_engine* emulator = NULL;
    if (w->use_emulator) EXPECT_STATUS(fk_engine_create("ilgpu-cpu", &emulator), FK_OK, "");
    if (emulator != NULL) {
        test_kfac_accumulate(emulator, &state);
        test_woodbury_apply(emulator, &state);
        test_kron_quadratic(emulator, &state);
        fk_engine_destroy(emulator);
    }
    fk_engine_destroy(own);
    return NULL;
}

static int run_suite(void)
{
    fk_engine* shared = NULL;
    EXPECT_STATUS(fk_engine_create("cpu", &shared), FK_OK, "");
    if (shared == NULL || !load_fixtures()) return 1;
    fk_model* model = NULL;
    EXPECT_STATUS(fk_model_load(shared, FK_FIXTURES "/gpt2_tiny.onnx", &model), FK_OK, "");
    if (model == NULL) return 1;
    check_scores(model, single_thread_p, single_thread_epistemic);
    fk_model_destroy(model);
    test_model_after_engine();
    struct worker workers[2] = { { shared, 0x9e3779b97f4a7c15ULL, 1 }, { shared, 0x2545f4914f6cdd1dULL, 0 } };
    pthread_t threads[2];
    for (int t = 0; t < 2; t++) pthread_create(&threads[t], NULL, work, &workers[t]);
    for (int t = 0; t < 2; t++) pthread_join(threads[t], NULL);
    fk_engine_destroy(shared);
    return 0;
}

/* Without the managed files every call fails cleanly, on every thread, with the reason. */
static void* expect_missing_runtime(void* expected_message)
{
    const char* needle = expected_message;
    fk_engine* engine = (fk_engine*)1;
    fk_model* model = (fk_model*)1;
    float f[4] = { 0 };
    int64_t tokens[1] = { 0 };
    EXPECT_STATUS(fk_engine_create("cpu", &engine), FK_ERR_BACKEND, needle);
    CHECK(engine == NULL, "engine set although the runtime is missing");
    EXPECT_STATUS(fk_kfac_accumulate(engine, f, 1, 1, 0, 1, f), FK_ERR_BACKEND, needle);
    EXPECT_STATUS(fk_woodbury_apply(engine, f, f, f, 1, 1, f, 1, f), FK_ERR_BACKEND, needle);
    EXPECT_STATUS(fk_kron_quadratic(engine, f, 1, f, 1, 1, 1, f, 1, f), FK_ERR_BACKEND, needle);
    EXPECT_STATUS(fk_model_load(engine, "m.onnx", &model), FK_ERR_BACKEND, needle);
    CHECK(model == NULL, "model set although the runtime is missing");
    EXPECT_STATUS(fk_model_score(model, tokens, 1, 1, NULL, 1, f, f, f), FK_ERR_BACKEND, needle);
    EXPECT_STATUS(fk_model_jvp(model, tokens, 1, 1, "v.safetensors", f, 4), FK_ERR_BACKEND, needle);
    fk_engine_destroy((fk_engine*)0x10);
    fk_model_destroy((fk_model*)0x10);
    fk_engine_destroy(NULL);
    fk_model_destroy(NULL);
    return NULL;
}

int main(int argc, char** argv)
{
    CHECK(fk_abi_version() == FK_ABI_VERSION, "abi version %u", fk_abi_version());
    CHECK(strcmp(fk_status_string(FK_ERR_BUFFER_TOO_SMALL), "buffer too small") == 0, "status string");
    CHECK(strcmp(fk_status_string((fk_status)12345), "unknown status") == 0, "unknown status string");
    CHECK(fk_last_error()[0] == '\0', "error before any call");

    if (argc > 2 && strcmp(argv[1], "--missing-runtime") == 0) {
        pthread_t threads[2];
        for (int t = 0; t < 2; t++) pthread_create(&threads[t], NULL, expect_missing_runtime, argv[2]);
        for (int t = 0; t < 2; t++) pthread_join(threads[t], NULL);
    } else {
        run_suite();
    }
    printf("%d checks, %d failures\n", atomic_load(&checks), atomic_load(&failures));
    return atomic_load(&failures) == 0 ? 0 : 1;
}
