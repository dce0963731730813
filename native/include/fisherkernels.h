/* FisherKernels C ABI (SPEC §8). Plain C, row-major float32, caller-owned buffers, no callbacks.
   Every function that can fail returns fk_status; fk_last_error() then gives a UTF-8 message
   (thread-local, valid until the next call on that thread). Handles are opaque; destroy functions
   accept NULL. Enum values are append-only; FK_ABI_VERSION changes when a signature does. */
#ifndef FISHERKERNELS_H
#define FISHERKERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FK_ABI_VERSION 1
typedef struct fk_engine fk_engine;
typedef struct fk_model  fk_model;
typedef enum fk_status { FK_OK = 0, FK_ERR_INVALID_ARGUMENT = 1, FK_ERR_IO = 2,
  FK_ERR_FORMAT = 3, FK_ERR_UNSUPPORTED = 4, FK_ERR_BUFFER_TOO_SMALL = 5,
  FK_ERR_BACKEND = 6, FK_ERR_OUT_OF_MEMORY = 7, FK_ERR_INTERNAL = 99 } fk_status;

uint32_t    fk_abi_version(void);
const char* fk_last_error(void);
const char* fk_status_string(fk_status status);

fk_status fk_engine_create(const char* backend /* "cpu", "cuda", "opencl", "ilgpu-cpu", NULL = best */,
                           fk_engine** out);
void      fk_engine_destroy(fk_engine* engine);

/* factor += weight * x~ᵀ x~, x: [rows × cols], x~ = [x | 1] when append_one;
   factor: [(cols + append_one)²], updated in place (full symmetric matrix). */
fk_status fk_kfac_accumulate(fk_engine* e, const float* x, int64_t rows, int64_t cols,
                             int32_t append_one, float weight, float* factor);

/* out = (diag(d) + U diag(s) Uᵀ)⁻¹ b;  d: [n], u: [n × r], s: [r], b and out: [n × k]. */
fk_status fk_woodbury_apply(fk_engine* e, const float* d, const float* u, const float* s,
                            int64_t n, int64_t r, const float* b, int64_t k, float* out);

/* out[i] = vec(X_i)ᵀ (positions · A ⊗ G + prior_precision · I)⁻¹ vec(X_i),
   A: [a × a], G: [g × g], xs: count matrices [g × a]. */
fk_status fk_kron_quadratic(fk_engine* e, const float* a_factor, int64_t a, const float* g_factor,
                            int64_t g, double positions, double prior_precision,
                            const float* xs, int64_t count, float* out);

fk_status fk_model_load(fk_engine* e, const char* onnx_path, fk_model** out);
void      fk_model_destroy(fk_model* model);

/* Per position, for the next-token targets (SPEC §1): p, aleatoric and epistemic
   (isotropic when curvature_path is NULL, else K-FAC). Each output: [batch × seq],
   NaN where a position has no target. */
fk_status fk_model_score(fk_model* m, const int64_t* tokens, int64_t batch, int64_t seq,
                         const char* curvature_path, double prior_precision,
                         float* p, float* aleatoric, float* epistemic);

/* J·V for the direction in a safetensors file (SPEC §4); out: [batch × seq × vocab]. */
fk_status fk_model_jvp(fk_model* m, const int64_t* tokens, int64_t batch, int64_t seq,
                       const char* direction_path, float* out, int64_t out_len);

#ifdef __cplusplus
}
#endif

#endif /* FISHERKERNELS_H */
