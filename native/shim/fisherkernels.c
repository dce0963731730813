/* libfisherkernels.so: the C ABI of native/include/fisherkernels.h (SPEC §8).
   The kernels need a JIT (ILGPU), so this small shim hosts .NET through nethost/hostfxr and forwards
   each call to the [UnmanagedCallersOnly] method of the same name in FisherKernels.Native.dll
   (native/FisherKernels.Native/Exports.cs), which it loads from the folder this library lives in.
   The runtime is loaded by the first call that needs it; when that fails, that call and every later
   one return FK_ERR_BACKEND with the reason, and nothing aborts the process. */
#define _GNU_SOURCE
#include "fisherkernels.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <coreclr_delegates.h>
#include <hostfxr.h>
#include <nethost.h>

#define FK_API __attribute__((visibility("default")))
#define MANAGED_ASSEMBLY "FisherKernels.Native"
#define MANAGED_TYPE "FisherKernels.Native.Exports, " MANAGED_ASSEMBLY

/* ---- fk_last_error: one growable buffer per thread ---- */

static __thread char* error_text;
static __thread size_t error_capacity;
static pthread_key_t error_key; /* frees a thread's buffer when the thread exits */
static pthread_once_t error_key_once = PTHREAD_ONCE_INIT;

static void create_error_key(void) { pthread_key_create(&error_key, free); }

static void set_error_text(const char* message)
{
    size_t length = strlen(message);
    if (length + 1 > error_capacity) {
        char* grown = realloc(error_text, length + 1);
        if (grown == NULL) return; /* keep the old text rather than lose the call's status */
        error_text = grown;
        error_capacity = length + 1;
        pthread_once(&error_key_once, create_error_key);
        pthread_setspecific(error_key, error_text);
    }
    memcpy(error_text, message, length + 1);
}

static void clear_error(void)
{
    if (error_text != NULL) error_text[0] = '\0';
}

/* The managed side reports its messages through this (passed to Exports.Initialize). */
static void managed_set_error(const char* message) { set_error_text(message); }

/* ---- the managed entry points ---- */

typedef fk_status (*engine_create_fn)(const char*, fk_engine**);
typedef void (*engine_destroy_fn)(fk_engine*);
typedef fk_status (*kfac_accumulate_fn)(fk_engine*, const float*, int64_t, int64_t, int32_t, float, float*);
typedef fk_status (*woodbury_apply_fn)(fk_engine*, const float*, const float*, const float*, int64_t, int64_t,
                                       const float*, int64_t, float*);
typedef fk_status (*kron_quadratic_fn)(fk_engine*, const float*, int64_t, const float*, int64_t, double, double,
                                       const float*, int64_t, float*);
typedef fk_status (*model_load_fn)(fk_engine*, const char*, fk_model**);
typedef void (*model_destroy_fn)(fk_model*);
typedef fk_status (*model_score_fn)(fk_model*, const int64_t*, int64_t, int64_t, const char*, double, float*, float*,
                                    float*);
typedef fk_status (*model_jvp_fn)(fk_model*, const int64_t*, int64_t, int64_t, const char*, float*, int64_t);
typedef int (*initialize_fn)(void (*)(const char*));

static struct {
    engine_create_fn engine_create;
    engine_destroy_fn engine_destroy;
    kfac_accumulate_fn kfac_accumulate;
    woodbury_apply_fn woodbury_apply;
    kron_quadratic_fn kron_quadratic;
    model_load_fn model_load;
    model_destroy_fn model_destroy;
    model_score_fn model_score;
    model_jvp_fn model_jvp;
} managed;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static int loaded;
static char load_error[4096];
static char hostfxr_messages[2048];

static void load_failed(const char* format, ...)
{
    va_list args;
    va_start(args, format);
    size_t used = strlen(load_error);
    vsnprintf(load_error + used, sizeof load_error - used, format, args);
    va_end(args);
}

/* hostfxr's own diagnostics, quoted in the load error (it calls this on the loading thread). */
static void hostfxr_error_writer(const char_t* message)
{
    size_t used = strlen(hostfxr_messages);
    snprintf(hostfxr_messages + used, sizeof hostfxr_messages - used, "%s%s", used ? " " : "", message);
}

static int file_exists(const char* path) { return access(path, R_OK) == 0; }

/* Fills dir with the folder holding this library (where its managed files live). */
static int library_folder(char* dir, size_t size)
{
    Dl_info info;
    if (dladdr((void*)&library_folder, &info) == 0 || info.dli_fname == NULL) return 0;
    char* resolved = realpath(info.dli_fname, NULL);
    const char* path = resolved != NULL ? resolved : info.dli_fname;
    const char* slash = strrchr(path, '/');
    int ok = 0;
    if (slash == NULL) ok = snprintf(dir, size, ".") < (int)size;
    else ok = snprintf(dir, size, "%.*s", (int)(slash - path), path) < (int)size;
    free(resolved);
    return ok;
}

static void* managed_function(load_assembly_and_get_function_pointer_fn load, const char* assembly, const char* name)
{
    void* function = NULL;
    int rc = load(assembly, MANAGED_TYPE, name, UNMANAGEDCALLERSONLY_METHOD, NULL, &function);
    if (rc != 0 || function == NULL) {
        load_failed("%scannot bind %s in %s (hostfxr status 0x%x)", load_error[0] ? "; " : "", name, assembly,
                    (unsigned)rc);
        return NULL;
    }
    return function;
}

static void load_runtime(void)
{
    char dir[4096], assembly[4200], config[4200], hostfxr_path[4096];
    if (!library_folder(dir, sizeof dir)) {
        load_failed("cannot find the folder that holds libfisherkernels.so (dladdr failed)");
        return;
    }
    snprintf(assembly, sizeof assembly, "%s/%s.dll", dir, MANAGED_ASSEMBLY);
    snprintf(config, sizeof config, "%s/%s.runtimeconfig.json", dir, MANAGED_ASSEMBLY);
    if (!file_exists(assembly) || !file_exists(config)) {
        load_failed("the managed part of FisherKernels is missing: %s and %s must sit beside libfisherkernels.so "
                    "(copy the whole folder that `dotnet cake --target=Native` writes)",
                    assembly, config);
        return;
    }

    size_t hostfxr_size = sizeof hostfxr_path;
    struct get_hostfxr_parameters parameters = { sizeof parameters, assembly, NULL };
    int rc = get_hostfxr_path(hostfxr_path, &hostfxr_size, &parameters);
    if (rc != 0) {
        load_failed("no .NET runtime found (hostfxr status 0x%x): install the .NET 10 runtime or set DOTNET_ROOT",
                    (unsigned)rc);
        return;
    }
    void* hostfxr = dlopen(hostfxr_path, RTLD_NOW | RTLD_LOCAL);
    if (hostfxr == NULL) {
        load_failed("cannot load %s: %s", hostfxr_path, dlerror());
        return;
    }
    hostfxr_initialize_for_runtime_config_fn initialize =
        (hostfxr_initialize_for_runtime_config_fn)dlsym(hostfxr, "hostfxr_initialize_for_runtime_config");
    hostfxr_get_runtime_delegate_fn get_delegate =
        (hostfxr_get_runtime_delegate_fn)dlsym(hostfxr, "hostfxr_get_runtime_delegate");
    hostfxr_close_fn close_context = (hostfxr_close_fn)dlsym(hostfxr, "hostfxr_close");
    hostfxr_set_error_writer_fn set_error_writer = (hostfxr_set_error_writer_fn)dlsym(hostfxr, "hostfxr_set_error_writer");
    if (initialize == NULL || get_delegate == NULL || close_context == NULL) {
        load_failed("%s lacks the hosting exports FisherKernels needs (.NET 6 or newer)", hostfxr_path);
        return;
    }

    hostfxr_error_writer_fn previous_writer = set_error_writer != NULL ? set_error_writer(hostfxr_error_writer) : NULL;
    hostfxr_handle context = NULL;
    load_assembly_and_get_function_pointer_fn load = NULL;
    rc = initialize(config, NULL, &context);
    /* 0: initialized; 1 and 2: a runtime already runs in this process and is reused. */
    if (rc < 0 || rc > 2 || context == NULL) {
        load_failed("cannot start the .NET runtime for %s (hostfxr status 0x%x): %s", config, (unsigned)rc,
                    hostfxr_messages);
    } else {
        rc = get_delegate(context, hdt_load_assembly_and_get_function_pointer, (void**)&load);
        if (rc != 0 || load == NULL)
            load_failed("cannot get the .NET loader delegate (hostfxr status 0x%x): %s", (unsigned)rc,
                        hostfxr_messages);
    }
    if (context != NULL) close_context(context);
    if (load != NULL) {
        initialize_fn initialize_managed = (initialize_fn)managed_function(load, assembly, "Initialize");
        managed.engine_create = (engine_create_fn)managed_function(load, assembly, "EngineCreate");
        managed.engine_destroy = (engine_destroy_fn)managed_function(load, assembly, "EngineDestroy");
        managed.kfac_accumulate = (kfac_accumulate_fn)managed_function(load, assembly, "KfacAccumulate");
        managed.woodbury_apply = (woodbury_apply_fn)managed_function(load, assembly, "WoodburyApply");
        managed.kron_quadratic = (kron_quadratic_fn)managed_function(load, assembly, "KronQuadratic");
        managed.model_load = (model_load_fn)managed_function(load, assembly, "ModelLoad");
        managed.model_destroy = (model_destroy_fn)managed_function(load, assembly, "ModelDestroy");
        managed.model_score = (model_score_fn)managed_function(load, assembly, "ModelScore");
        managed.model_jvp = (model_jvp_fn)managed_function(load, assembly, "ModelJvp");
        if (load_error[0] == '\0' && initialize_managed(managed_set_error) == 0) loaded = 1;
    }
    if (set_error_writer != NULL) set_error_writer(previous_writer);
    if (!loaded && load_error[0] == '\0') load_failed("the .NET runtime did not start (no reason given)");
}

/* Clears this thread's error and makes sure the runtime is up; FK_ERR_BACKEND (with the reason) when it is not. */
static fk_status begin_call(void)
{
    clear_error();
    pthread_once(&load_once, load_runtime);
    if (loaded) return FK_OK;
    char message[sizeof load_error + 64];
    snprintf(message, sizeof message, "FisherKernels runtime unavailable: %s", load_error);
    set_error_text(message);
    return FK_ERR_BACKEND;
}

/* ---- the public functions ---- */

FK_API uint32_t fk_abi_version(void) { return FK_ABI_VERSION; }

FK_API const char* fk_last_error(void) { return error_text != NULL ? error_text : ""; }

FK_API const char* fk_status_string(fk_status status)
{
    switch (status) {
    case FK_OK: return "ok";
    case FK_ERR_INVALID_ARGUMENT: return "invalid argument";
    case FK_ERR_IO: return "I/O error";
    case FK_ERR_FORMAT: return "bad file format";
    case FK_ERR_UNSUPPORTED: return "unsupported";
    case FK_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case FK_ERR_BACKEND: return "backend unavailable";
    case FK_ERR_OUT_OF_MEMORY: return "out of memory";
    case FK_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

FK_API fk_status fk_engine_create(const char* backend, fk_engine** out)
{
    if (out != NULL) *out = NULL;
    fk_status status = begin_call();
    return status != FK_OK ? status : managed.engine_create(backend, out);
}

FK_API void fk_engine_destroy(fk_engine* engine)
{
    if (engine != NULL && begin_call() == FK_OK) managed.engine_destroy(engine);
}

FK_API fk_status fk_kfac_accumulate(fk_engine* e, const float* x, int64_t rows, int64_t cols, int32_t append_one,
                                    float weight, float* factor)
{
    fk_status status = begin_call();
    return status != FK_OK ? status : managed.kfac_accumulate(e, x, rows, cols, append_one, weight, factor);
}

FK_API fk_status fk_woodbury_apply(fk_engine* e, const float* d, const float* u, const float* s, int64_t n, int64_t r,
                                   const float* b, int64_t k, float* out)
{
    fk_status status = begin_call();
    return status != FK_OK ? status : managed.woodbury_apply(e, d, u, s, n, r, b, k, out);
}

FK_API fk_status fk_kron_quadratic(fk_engine* e, const float* a_factor, int64_t a, const float* g_factor, int64_t g,
                                   double positions, double prior_precision, const float* xs, int64_t count,
                                   float* out)
{
    fk_status status = begin_call();
    return status != FK_OK
        ? status
        : managed.kron_quadratic(e, a_factor, a, g_factor, g, positions, prior_precision, xs, count, out);
}

FK_API fk_status fk_model_load(fk_engine* e, const char* onnx_path, fk_model** out)
{
    if (out != NULL) *out = NULL;
    fk_status status = begin_call();
    return status != FK_OK ? status : managed.model_load(e, onnx_path, out);
}

FK_API void fk_model_destroy(fk_model* model)
{
    if (model != NULL && begin_call() == FK_OK) managed.model_destroy(model);
}

FK_API fk_status fk_model_score(fk_model* m, const int64_t* tokens, int64_t batch, int64_t seq,
                                const char* curvature_path, double prior_precision, float* p, float* aleatoric,
                                float* epistemic)
{
    fk_status status = begin_call();
    return status != FK_OK
        ? status
        : managed.model_score(m, tokens, batch, seq, curvature_path, prior_precision, p, aleatoric, epistemic);
}

FK_API fk_status fk_model_jvp(fk_model* m, const int64_t* tokens, int64_t batch, int64_t seq,
                              const char* direction_path, float* out, int64_t out_len)
{
    fk_status status = begin_call();
    return status != FK_OK ? status : managed.model_jvp(m, tokens, batch, seq, direction_path, out, out_len);
}
