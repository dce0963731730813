/* The smallest FisherKernels program: accumulate a Kronecker factor, then turn it into a
   Laplace variance for one gradient. Build: cc example.c -I<include> -L<lib> -lfisherkernels */
#include <stdio.h>

#include "fisherkernels.h"

static int fail(const char* what, fk_status status)
{
    fprintf(stderr, "%s failed: %s: %s\n", what, fk_status_string(status), fk_last_error());
    return 1;
}

int main(void)
{
    fk_engine* engine = NULL;
    fk_status status = fk_engine_create(NULL, &engine); /* NULL: the best backend available */
    if (status != FK_OK) return fail("fk_engine_create", status);

    /* Layer inputs at 4 positions, 2 features, plus the bias column: A = (1/4) Σ ã ãᵀ. */
    const float x[4 * 2] = { 1, 0, 0, 1, 1, 1, -1, 2 };
    float a_factor[3 * 3] = { 0 };
    status = fk_kfac_accumulate(engine, x, 4, 2, 1, 0.25f, a_factor);
    if (status != FK_OK) return fail("fk_kfac_accumulate", status);

    /* One output feature, G = [1]: the variance of a gradient X [1 × 3] under M·A⊗G + τI. */
    const float g_factor[1] = { 1 };
    const float gradient[3] = { 0.5f, -0.25f, 1 };
    float variance = 0;
    status = fk_kron_quadratic(engine, a_factor, 3, g_factor, 1, 4.0, 1.0, gradient, 1, &variance);
    if (status != FK_OK) return fail("fk_kron_quadratic", status);

    printf("A = [%.4f %.4f %.4f; %.4f %.4f %.4f; %.4f %.4f %.4f]\n", a_factor[0], a_factor[1], a_factor[2],
           a_factor[3], a_factor[4], a_factor[5], a_factor[6], a_factor[7], a_factor[8]);
    printf("gradient variance = %.6f\n", variance);
    fk_engine_destroy(engine);
    return 0;
}
