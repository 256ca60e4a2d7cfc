/*
 * kvtorch.h: a plain C ABI over libtorch, for kvtorch's Go package `torch`.
 *
 * Rules that hold for every function below:
 *  - Types are opaque handles (kvt_tensor, kvt_module, kvt_value) and C scalars.
 *  - A fallible call returns a kvt_err: NULL on success, otherwise a
 *    NUL-terminated message allocated with malloc that the CALLER owns and
 *    frees with kvt_err_free (or free). There is no thread-local "last error":
 *    a goroutine may move between OS threads between two calls.
 *  - Results are written to out-parameters only on success. The caller owns
 *    every handle written to an out-parameter and frees it with the matching
 *    *_free function. Every *_free accepts NULL.
 *  - Every call that runs tensor operations enters c10::InferenceMode itself.
 *  - Input handles are borrowed: a call never frees or keeps an argument,
 *    except where it says so.
 */
#ifndef KVTORCH_H
#define KVTORCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef char *kvt_err;

typedef struct kvt_tensor kvt_tensor;
typedef struct kvt_module kvt_module;
typedef struct kvt_value kvt_value;

/* Element types. The numbering is kvtorch's own, stable across libtorch versions. */
enum kvt_dtype {
  KVT_FLOAT32 = 0,
  KVT_FLOAT16 = 1,
  KVT_BFLOAT16 = 2,
  KVT_FLOAT64 = 3,
  KVT_INT64 = 4,
  KVT_INT32 = 5,
  KVT_INT8 = 6,
  KVT_UINT8 = 7,
  KVT_BOOL = 8,
};

/* Device types; a device is a (type, index) pair, index -1 meaning "current". */
enum kvt_device_type {
  KVT_CPU = 0,
  KVT_CUDA = 1,
};

/* Kinds of kvt_value, the result of a TorchScript forward call. */
enum kvt_value_kind {
  KVT_VALUE_NONE = 0,
  KVT_VALUE_TENSOR = 1,
  KVT_VALUE_TUPLE = 2,
  KVT_VALUE_LIST = 3,
  KVT_VALUE_INT = 4,
  KVT_VALUE_DOUBLE = 5,
  KVT_VALUE_BOOL = 6,
  KVT_VALUE_STRING = 7,
  KVT_VALUE_OTHER = 8, /* anything else; kvt_value_type_name says what */
};

void kvt_err_free(kvt_err err);

/* ---- library and devices ---- */

/* The libtorch version this library was built against, e.g. "2.11.0". Static string. */
const char *kvt_torch_version(void);
int kvt_cuda_is_available(void);
int kvt_cuda_device_count(void);
/* Seeds libtorch's random generators (CPU and CUDA). */
void kvt_manual_seed(uint64_t seed);
/* Fails when the device does not exist (e.g. CUDA without a GPU, or index out of range). */
kvt_err kvt_device_check(int device_type, int device_index);
/* Waits for all work queued on a CUDA device; a no-op for CPU. */
kvt_err kvt_device_synchronize(int device_type, int device_index);

/* ---- tensors ---- */

void kvt_tensor_free(kvt_tensor *t);

/* Copies nbytes from data (C-contiguous, element type dtype) into a new CPU tensor of
 * the given shape. nbytes must equal numel * element size. */
kvt_err kvt_tensor_from_data(const void *data, size_t nbytes, const int64_t *shape, int ndim,
                             int dtype, kvt_tensor **out);
/* Copies the tensor's elements, in C-contiguous order, to dst (moved to CPU first if
 * needed). nbytes must equal numel * element size. */
kvt_err kvt_tensor_copy_to(const kvt_tensor *t, void *dst, size_t nbytes);

/* Shape queries never fail on a live handle. */
int kvt_tensor_dtype(const kvt_tensor *t); /* -1 for a dtype kvtorch does not know */
int kvt_tensor_ndim(const kvt_tensor *t);
/* Writes ndim sizes into shape. */
void kvt_tensor_shape(const kvt_tensor *t, int64_t *shape);
void kvt_tensor_device(const kvt_tensor *t, int *device_type, int *device_index);
/* A description such as "Float[2, 3] on cpu"; caller frees with free(). */
char *kvt_tensor_describe(const kvt_tensor *t);

kvt_err kvt_zeros(const int64_t *shape, int ndim, int dtype, int device_type, int device_index,
                  kvt_tensor **out);
kvt_err kvt_randn(const int64_t *shape, int ndim, int dtype, int device_type, int device_index,
                  kvt_tensor **out);
kvt_err kvt_to(const kvt_tensor *t, int dtype, int device_type, int device_index, kvt_tensor **out);
kvt_err kvt_clone(const kvt_tensor *t, kvt_tensor **out);
kvt_err kvt_reshape(const kvt_tensor *t, const int64_t *shape, int ndim, kvt_tensor **out);
kvt_err kvt_transpose(const kvt_tensor *t, int64_t dim0, int64_t dim1, kvt_tensor **out);
kvt_err kvt_permute(const kvt_tensor *t, const int64_t *dims, int ndim, kvt_tensor **out);
kvt_err kvt_narrow(const kvt_tensor *t, int64_t dim, int64_t start, int64_t length,
                   kvt_tensor **out);
kvt_err kvt_flip(const kvt_tensor *t, const int64_t *dims, int ndims, kvt_tensor **out);
kvt_err kvt_matmul(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out);
kvt_err kvt_add(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out);
kvt_err kvt_sub(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out);
kvt_err kvt_mul(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out);
kvt_err kvt_mul_scalar(const kvt_tensor *a, double s, kvt_tensor **out);
/* a += b in place (broadcasting b). */
kvt_err kvt_add_(kvt_tensor *a, const kvt_tensor *b);
/* dst.copy_(src): same shape; dtype and device converted. */
kvt_err kvt_copy_(kvt_tensor *dst, const kvt_tensor *src);
kvt_err kvt_sum(const kvt_tensor *t, const int64_t *dims, int ndims, int keepdim, kvt_tensor **out);
kvt_err kvt_mean(const kvt_tensor *t, const int64_t *dims, int ndims, int keepdim,
                 kvt_tensor **out);
/* log_softmax along dim, computed in float32 at least (float64 stays float64). */
kvt_err kvt_log_softmax(const kvt_tensor *t, int64_t dim, kvt_tensor **out);
/* Elementwise exp. */
kvt_err kvt_exp(const kvt_tensor *t, kvt_tensor **out);
/* torch.gather(t, dim, index); index is int64. */
kvt_err kvt_gather(const kvt_tensor *t, int64_t dim, const kvt_tensor *index, kvt_tensor **out);
kvt_err kvt_isfinite(const kvt_tensor *t, kvt_tensor **out);
/* *all_finite = 1 when every element is finite (integer tensors always are). */
kvt_err kvt_all_finite(const kvt_tensor *t, int *all_finite);
/* Symmetric eigendecomposition of the last two dims (lower triangle used):
 * eigenvalues ascending, eigenvectors as columns. */
kvt_err kvt_eigh(const kvt_tensor *t, kvt_tensor **eigenvalues, kvt_tensor **eigenvectors);
/* Reduced SVD of the last two dims: A = U diag(S) Vh, S descending. */
kvt_err kvt_svd(const kvt_tensor *t, kvt_tensor **u, kvt_tensor **s, kvt_tensor **vh);

/* Makes the C allocator (glibc malloc, which libtorch's CPU tensors use)
 * serve allocations of at least bytes with mmap, returned to the system when
 * freed, instead of its dynamic threshold (which rises to 32 MB and lets
 * tensors of a few MB fragment the heap). Process-wide: for main to call.
 * Returns 0 where it is not supported. */
int kvt_map_large_allocations(size_t bytes);

/* ---- TorchScript modules ---- */

void kvt_module_free(kvt_module *m);
/* Loads a TorchScript file onto a device, in eval mode. */
kvt_err kvt_module_load(const char *path, int device_type, int device_index, kvt_module **out);
/* Names of the extra files stored in a TorchScript file, '\n'-separated; caller frees
 * *names with free(). Works without loading the model. */
kvt_err kvt_extra_file_names(const char *path, char **names);
/* Contents of one extra file; caller frees *data with free(). */
kvt_err kvt_extra_file(const char *path, const char *name, char **data, size_t *len);
/* Runs forward(inputs...), with TorchScript's graph executor optimizations
 * (the profiling executor, which re-specialises a graph for every new input
 * shape) on when optimize is non-zero. libtorch keeps that switch per thread,
 * so it is set here, around each call, for the calling thread only. */
kvt_err kvt_module_forward(kvt_module *m, kvt_tensor *const *inputs, int ninputs, int optimize,
                           kvt_value **out);
/* Runs the module's method name(inputs...) (forward included), as kvt_module_forward. */
kvt_err kvt_module_run_method(kvt_module *m, const char *name, kvt_tensor *const *inputs, int ninputs,
                              int optimize, kvt_value **out);
/* Names of the module's own methods ("forward", ...), '\n'-separated; caller frees. */
kvt_err kvt_module_method_names(kvt_module *m, char **names);
/* Names of all buffers, recursively ("layers.0.attn.k_up"), '\n'-separated; caller frees. */
kvt_err kvt_module_buffer_names(kvt_module *m, char **names);
/* The named buffer (sharing storage with the module's). */
kvt_err kvt_module_buffer(kvt_module *m, const char *name, kvt_tensor **out);
/* Copies src into the named buffer; shapes must be equal (dtype and device converted). */
kvt_err kvt_module_set_buffer(kvt_module *m, const char *name, const kvt_tensor *src);

/* ---- values returned by forward ---- */

void kvt_value_free(kvt_value *v);
int kvt_value_kind(const kvt_value *v);
/* The TorchScript type, e.g. "Tuple[Tensor, Tensor]"; caller frees with free(). */
char *kvt_value_type_name(const kvt_value *v);
/* Elements of a tuple or list (0 for other kinds). */
int64_t kvt_value_len(const kvt_value *v);
kvt_err kvt_value_at(const kvt_value *v, int64_t i, kvt_value **out);
kvt_err kvt_value_tensor(const kvt_value *v, kvt_tensor **out);
kvt_err kvt_value_int(const kvt_value *v, int64_t *out);
kvt_err kvt_value_double(const kvt_value *v, double *out);
/* Caller frees *out with free(). */
kvt_err kvt_value_string(const kvt_value *v, char **out);

#ifdef __cplusplus
}
#endif

#endif /* KVTORCH_H */
