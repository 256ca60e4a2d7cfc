// kvtorch.cpp: the implementation of kvtorch.h over libtorch.
//
// Every entry point catches c10::Error, std::exception and anything else and turns it
// into a malloc'd message (see kvtorch.h), so no C++ exception ever crosses into Go.

#include "kvtorch.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <cstdlib>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

struct kvt_tensor {
  at::Tensor t;
};

struct kvt_module {
  torch::jit::Module m;
};

struct kvt_value {
  c10::IValue v;
};

namespace {

char *dup_string(const std::string &s) {
  char *p = static_cast<char *>(std::malloc(s.size() + 1));
  if (p == nullptr) return nullptr;
  std::memcpy(p, s.data(), s.size());
  p[s.size()] = '\0';
  return p;
}

kvt_err make_err(const std::string &msg) {
  char *p = dup_string(msg.empty() ? std::string("unknown libtorch error") : msg);
  // Out of memory while reporting an error: still report failure.
  return p != nullptr ? p : const_cast<char *>("");
}

#define KVT_TRY try {
#define KVT_CATCH                                      \
  }                                                    \
  catch (const c10::Error &e) {                        \
    return make_err(e.what_without_backtrace());       \
  }                                                    \
  catch (const std::exception &e) {                    \
    return make_err(e.what());                         \
  }                                                    \
  catch (...) {                                        \
    return make_err("unknown C++ exception");          \
  }                                                    \
  return nullptr;

at::ScalarType to_scalar_type(int dtype) {
  switch (dtype) {
    case KVT_FLOAT32: return at::kFloat;
    case KVT_FLOAT16: return at::kHalf;
    case KVT_BFLOAT16: return at::kBFloat16;
    case KVT_FLOAT64: return at::kDouble;
    case KVT_INT64: return at::kLong;
    case KVT_INT32: return at::kInt;
    case KVT_INT8: return at::kChar;
    case KVT_UINT8: return at::kByte;
    case KVT_BOOL: return at::kBool;
  }
  throw std::invalid_argument("unknown kvtorch dtype code " + std::to_string(dtype));
}

int from_scalar_type(at::ScalarType st) {
  switch (st) {
    case at::kFloat: return KVT_FLOAT32;
    case at::kHalf: return KVT_FLOAT16;
    case at::kBFloat16: return KVT_BFLOAT16;
    case at::kDouble: return KVT_FLOAT64;
    case at::kLong: return KVT_INT64;
    case at::kInt: return KVT_INT32;
    case at::kChar: return KVT_INT8;
    case at::kByte: return KVT_UINT8;
    case at::kBool: return KVT_BOOL;
    default: return -1;
  }
}

at::Device to_device(int type, int index) {
  switch (type) {
    case KVT_CPU: return at::Device(at::kCPU);
    case KVT_CUDA: return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  throw std::invalid_argument("unknown kvtorch device type " + std::to_string(type));
}

void check_device(int type, int index) {
  at::Device d = to_device(type, index);
  if (d.is_cuda()) {
    if (!torch::cuda::is_available()) {
      throw std::runtime_error("CUDA is not available (libtorch " TORCH_VERSION
                               " sees no CUDA device)");
    }
    int64_t n = static_cast<int64_t>(torch::cuda::device_count());
    if (index >= n) {
      throw std::runtime_error("no CUDA device cuda:" + std::to_string(index) + " (" +
                               std::to_string(n) + " device(s) present)");
    }
  }
}

std::vector<int64_t> dims_of(const int64_t *p, int n) {
  if (n < 0) throw std::invalid_argument("negative number of dimensions");
  return std::vector<int64_t>(p, p + n);
}

const at::Tensor &tensor_of(const kvt_tensor *t) {
  if (t == nullptr) throw std::invalid_argument("null tensor handle");
  return t->t;
}

kvt_tensor *wrap(at::Tensor t) { return new kvt_tensor{std::move(t)}; }

at::Tensor find_buffer(torch::jit::Module &m, const std::string &name) {
  for (const auto &b : m.named_buffers(/*recurse=*/true)) {
    if (b.name == name) return b.value;
  }
  throw std::invalid_argument("module has no buffer named \"" + name + "\"");
}

std::string join_lines(const std::vector<std::string> &xs) {
  std::string s;
  for (size_t i = 0; i < xs.size(); i++) {
    if (i > 0) s += '\n';
    s += xs[i];
  }
  return s;
}

}  // namespace

extern "C" {

void kvt_err_free(kvt_err err) {
  if (err != nullptr && err[0] != '\0') std::free(err);
}

// ---- library and devices ----

const char *kvt_torch_version(void) { return TORCH_VERSION; }

int kvt_cuda_is_available(void) {
  try {
    return torch::cuda::is_available() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int kvt_cuda_device_count(void) {
  try {
    return static_cast<int>(torch::cuda::device_count());
  } catch (...) {
    return 0;
  }
}

void kvt_manual_seed(uint64_t seed) {
  try {
    torch::manual_seed(seed);
  } catch (...) {
  }
}

kvt_err kvt_device_check(int device_type, int device_index) {
  KVT_TRY
  check_device(device_type, device_index);
  KVT_CATCH
}

kvt_err kvt_device_synchronize(int device_type, int device_index) {
  KVT_TRY
  check_device(device_type, device_index);
  if (device_type == KVT_CUDA) torch::cuda::synchronize(device_index);
  KVT_CATCH
}

// ---- tensors ----

void kvt_tensor_free(kvt_tensor *t) { delete t; }

kvt_err kvt_tensor_from_data(const void *data, size_t nbytes, const int64_t *shape, int ndim,
                             int dtype, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  auto opts = at::TensorOptions().dtype(to_scalar_type(dtype));
  at::Tensor t = at::empty(dims_of(shape, ndim), opts);
  size_t want = static_cast<size_t>(t.numel()) * t.element_size();
  if (want != nbytes) {
    throw std::invalid_argument("data has " + std::to_string(nbytes) + " bytes, shape needs " +
                                std::to_string(want));
  }
  if (nbytes > 0) std::memcpy(t.data_ptr(), data, nbytes);
  *out = wrap(std::move(t));
  KVT_CATCH
}

kvt_err kvt_tensor_copy_to(const kvt_tensor *t, void *dst, size_t nbytes) {
  KVT_TRY
  c10::InferenceMode guard;
  at::Tensor c = tensor_of(t).to(at::kCPU).contiguous();
  size_t have = static_cast<size_t>(c.numel()) * c.element_size();
  if (have != nbytes) {
    throw std::invalid_argument("tensor has " + std::to_string(have) + " bytes, buffer has " +
                                std::to_string(nbytes));
  }
  if (nbytes > 0) std::memcpy(dst, c.data_ptr(), nbytes);
  KVT_CATCH
}

int kvt_tensor_dtype(const kvt_tensor *t) { return from_scalar_type(t->t.scalar_type()); }

int kvt_tensor_ndim(const kvt_tensor *t) { return static_cast<int>(t->t.dim()); }

void kvt_tensor_shape(const kvt_tensor *t, int64_t *shape) {
  auto sizes = t->t.sizes();
  for (size_t i = 0; i < sizes.size(); i++) shape[i] = sizes[i];
}

void kvt_tensor_device(const kvt_tensor *t, int *device_type, int *device_index) {
  at::Device d = t->t.device();
  *device_type = d.is_cuda() ? KVT_CUDA : KVT_CPU;
  *device_index = d.has_index() ? d.index() : -1;
}

char *kvt_tensor_describe(const kvt_tensor *t) {
  try {
    std::ostringstream os;
    os << t->t.toString() << t->t.sizes() << " on " << t->t.device();
    return dup_string(os.str());
  } catch (...) {
    return dup_string("<tensor>");
  }
}

kvt_err kvt_zeros(const int64_t *shape, int ndim, int dtype, int device_type, int device_index,
                  kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  check_device(device_type, device_index);
  auto opts =
      at::TensorOptions().dtype(to_scalar_type(dtype)).device(to_device(device_type, device_index));
  *out = wrap(at::zeros(dims_of(shape, ndim), opts));
  KVT_CATCH
}

kvt_err kvt_randn(const int64_t *shape, int ndim, int dtype, int device_type, int device_index,
                  kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  check_device(device_type, device_index);
  auto opts =
      at::TensorOptions().dtype(to_scalar_type(dtype)).device(to_device(device_type, device_index));
  *out = wrap(at::randn(dims_of(shape, ndim), opts));
  KVT_CATCH
}

kvt_err kvt_to(const kvt_tensor *t, int dtype, int device_type, int device_index,
               kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  check_device(device_type, device_index);
  *out = wrap(tensor_of(t).to(to_device(device_type, device_index), to_scalar_type(dtype)));
  KVT_CATCH
}

kvt_err kvt_clone(const kvt_tensor *t, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(t).clone());
  KVT_CATCH
}

kvt_err kvt_reshape(const kvt_tensor *t, const int64_t *shape, int ndim, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(t).reshape(dims_of(shape, ndim)));
  KVT_CATCH
}

kvt_err kvt_transpose(const kvt_tensor *t, int64_t dim0, int64_t dim1, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(t).transpose(dim0, dim1));
  KVT_CATCH
}

kvt_err kvt_permute(const kvt_tensor *t, const int64_t *dims, int ndim, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(t).permute(dims_of(dims, ndim)));
  KVT_CATCH
}

kvt_err kvt_narrow(const kvt_tensor *t, int64_t dim, int64_t start, int64_t length,
                   kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(t).narrow(dim, start, length));
  KVT_CATCH
}

kvt_err kvt_flip(const kvt_tensor *t, const int64_t *dims, int ndims, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(t).flip(dims_of(dims, ndims)));
  KVT_CATCH
}

kvt_err kvt_matmul(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(at::matmul(tensor_of(a), tensor_of(b)));
  KVT_CATCH
}

kvt_err kvt_add(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(a) + tensor_of(b));
  KVT_CATCH
}

kvt_err kvt_sub(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(a) - tensor_of(b));
  KVT_CATCH
}

kvt_err kvt_mul(const kvt_tensor *a, const kvt_tensor *b, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(a) * tensor_of(b));
  KVT_CATCH
}

kvt_err kvt_mul_scalar(const kvt_tensor *a, double s, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(tensor_of(a) * s);
  KVT_CATCH
}

kvt_err kvt_add_(kvt_tensor *a, const kvt_tensor *b) {
  KVT_TRY
  c10::InferenceMode guard;
  if (a == nullptr) throw std::invalid_argument("null tensor handle");
  a->t.add_(tensor_of(b));
  KVT_CATCH
}

kvt_err kvt_copy_(kvt_tensor *dst, const kvt_tensor *src) {
  KVT_TRY
  c10::InferenceMode guard;
  if (dst == nullptr) throw std::invalid_argument("null tensor handle");
  const at::Tensor &s = tensor_of(src);
  if (dst->t.sizes() != s.sizes()) {
    std::ostringstream os;
    os << "copy: shape " << s.sizes() << " does not match " << dst->t.sizes();
    throw std::invalid_argument(os.str());
  }
  dst->t.copy_(s);
  KVT_CATCH
}

kvt_err kvt_sum(const kvt_tensor *t, const int64_t *dims, int ndims, int keepdim,
                kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  const at::Tensor &x = tensor_of(t);
  *out = wrap(ndims == 0 ? x.sum() : x.sum(dims_of(dims, ndims), keepdim != 0));
  KVT_CATCH
}

kvt_err kvt_mean(const kvt_tensor *t, const int64_t *dims, int ndims, int keepdim,
                 kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  const at::Tensor &x = tensor_of(t);
  *out = wrap(ndims == 0 ? x.mean() : x.mean(dims_of(dims, ndims), keepdim != 0));
  KVT_CATCH
}

int kvt_map_large_allocations(size_t bytes) {
#if defined(__GLIBC__) && defined(M_MMAP_THRESHOLD)
  return mallopt(M_MMAP_THRESHOLD, static_cast<int>(bytes));
#else
  (void)bytes;
  return 0;
#endif
}

kvt_err kvt_exp(const kvt_tensor *t, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(at::exp(tensor_of(t)));
  KVT_CATCH
}

kvt_err kvt_log_softmax(const kvt_tensor *t, int64_t dim, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  const at::Tensor &x = tensor_of(t);
  auto st = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  *out = wrap(at::log_softmax(x, dim, st));
  KVT_CATCH
}

kvt_err kvt_gather(const kvt_tensor *t, int64_t dim, const kvt_tensor *index, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(at::gather(tensor_of(t), dim, tensor_of(index)));
  KVT_CATCH
}

kvt_err kvt_isfinite(const kvt_tensor *t, kvt_tensor **out) {
  KVT_TRY
  c10::InferenceMode guard;
  *out = wrap(at::isfinite(tensor_of(t)));
  KVT_CATCH
}

kvt_err kvt_all_finite(const kvt_tensor *t, int *all_finite) {
  KVT_TRY
  c10::InferenceMode guard;
  const at::Tensor &x = tensor_of(t);
  if (!at::isFloatingType(x.scalar_type()) && !at::isComplexType(x.scalar_type())) {
    *all_finite = 1;
  } else {
    *all_finite = at::isfinite(x).all().item<bool>() ? 1 : 0;
  }
  KVT_CATCH
}

kvt_err kvt_eigh(const kvt_tensor *t, kvt_tensor **eigenvalues, kvt_tensor **eigenvectors) {
  KVT_TRY
  c10::InferenceMode guard;
  auto r = torch::linalg_eigh(tensor_of(t), "L");
  kvt_tensor *w = wrap(std::get<0>(r));
  *eigenvectors = wrap(std::get<1>(r));
  *eigenvalues = w;
  KVT_CATCH
}

kvt_err kvt_svd(const kvt_tensor *t, kvt_tensor **u, kvt_tensor **s, kvt_tensor **vh) {
  KVT_TRY
  c10::InferenceMode guard;
  auto r = torch::linalg_svd(tensor_of(t), /*full_matrices=*/false);
  std::unique_ptr<kvt_tensor> uu(wrap(std::get<0>(r)));
  std::unique_ptr<kvt_tensor> ss(wrap(std::get<1>(r)));
  *vh = wrap(std::get<2>(r));
  *u = uu.release();
  *s = ss.release();
  KVT_CATCH
}

// ---- TorchScript modules ----


void kvt_module_free(kvt_module *m) { delete m; }

kvt_err kvt_module_load(const char *path, int device_type, int device_index, kvt_module **out) {
  KVT_TRY
  check_device(device_type, device_index);
  auto mod = std::make_unique<kvt_module>();
  mod->m = torch::jit::load(std::string(path), to_device(device_type, device_index));
  mod->m.eval();
  *out = mod.release();
  KVT_CATCH
}

kvt_err kvt_extra_file_names(const char *path, char **names) {
  KVT_TRY
  caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
  std::vector<std::string> found;
  const std::string prefix = "extra/";
  for (const auto &r : reader.getAllRecords()) {
    if (r.rfind(prefix, 0) == 0) found.push_back(r.substr(prefix.size()));
  }
  char *s = dup_string(join_lines(found));
  if (s == nullptr) throw std::bad_alloc();
  *names = s;
  KVT_CATCH
}

kvt_err kvt_extra_file(const char *path, const char *name, char **data, size_t *len) {
  KVT_TRY
  caffe2::serialize::PyTorchStreamReader reader{std::string(path)};
  std::string rec = std::string("extra/") + name;
  if (!reader.hasRecord(rec)) {
    throw std::invalid_argument(std::string("no extra file \"") + name + "\" in " + path);
  }
  auto [ptr, n] = reader.getRecord(rec);
  char *p = static_cast<char *>(std::malloc(n + 1));
  if (p == nullptr) throw std::bad_alloc();
  if (n > 0) std::memcpy(p, ptr.get(), n);
  p[n] = '\0';
  *data = p;
  *len = n;
  KVT_CATCH
}

kvt_err kvt_module_forward(kvt_module *m, kvt_tensor *const *inputs, int ninputs, int optimize,
                           kvt_value **out) {
  KVT_TRY
  c10::InferenceMode guard;
  torch::jit::GraphOptimizerEnabledGuard optimize_guard(optimize != 0);
  if (m == nullptr) throw std::invalid_argument("null module handle");
  std::vector<c10::IValue> args;
  args.reserve(static_cast<size_t>(ninputs));
  for (int i = 0; i < ninputs; i++) args.emplace_back(tensor_of(inputs[i]));
  *out = new kvt_value{m->m.forward(std::move(args))};
  KVT_CATCH
}

kvt_err kvt_module_run_method(kvt_module *m, const char *name, kvt_tensor *const *inputs, int ninputs,
                              int optimize, kvt_value **out) {
  KVT_TRY
  c10::InferenceMode guard;
  torch::jit::GraphOptimizerEnabledGuard optimize_guard(optimize != 0);
  if (m == nullptr) throw std::invalid_argument("null module handle");
  if (name == nullptr) throw std::invalid_argument("null method name");
  auto method = m->m.find_method(name);
  if (!method) throw std::invalid_argument(std::string("the module has no method ") + name);
  std::vector<c10::IValue> args;
  args.reserve(static_cast<size_t>(ninputs));
  for (int i = 0; i < ninputs; i++) args.emplace_back(tensor_of(inputs[i]));
  *out = new kvt_value{(*method)(std::move(args))};
  KVT_CATCH
}

kvt_err kvt_module_method_names(kvt_module *m, char **names) {
  KVT_TRY
  if (m == nullptr) throw std::invalid_argument("null module handle");
  std::vector<std::string> found;
  for (const auto &method : m->m.get_methods()) found.push_back(method.name());
  char *s = dup_string(join_lines(found));
  if (s == nullptr) throw std::bad_alloc();
  *names = s;
  KVT_CATCH
}

kvt_err kvt_module_buffer_names(kvt_module *m, char **names) {
  KVT_TRY
  if (m == nullptr) throw std::invalid_argument("null module handle");
  std::vector<std::string> found;
  for (const auto &b : m->m.named_buffers(/*recurse=*/true)) found.push_back(b.name);
  char *s = dup_string(join_lines(found));
  if (s == nullptr) throw std::bad_alloc();
  *names = s;
  KVT_CATCH
}

kvt_err kvt_module_buffer(kvt_module *m, const char *name, kvt_tensor **out) {
  KVT_TRY
  if (m == nullptr) throw std::invalid_argument("null module handle");
  *out = wrap(find_buffer(m->m, name));
  KVT_CATCH
}

kvt_err kvt_module_set_buffer(kvt_module *m, const char *name, const kvt_tensor *src) {
  KVT_TRY
  c10::InferenceMode guard;
  if (m == nullptr) throw std::invalid_argument("null module handle");
  at::Tensor buf = find_buffer(m->m, name);
  const at::Tensor &s = tensor_of(src);
  if (buf.sizes() != s.sizes()) {
    std::ostringstream os;
    os << "buffer \"" << name << "\" has shape " << buf.sizes() << ", got " << s.sizes();
    throw std::invalid_argument(os.str());
  }
  buf.copy_(s);
  KVT_CATCH
}

// ---- values ----

void kvt_value_free(kvt_value *v) { delete v; }

int kvt_value_kind(const kvt_value *v) {
  const c10::IValue &x = v->v;
  if (x.isNone()) return KVT_VALUE_NONE;
  if (x.isTensor()) return KVT_VALUE_TENSOR;
  if (x.isTuple()) return KVT_VALUE_TUPLE;
  if (x.isList()) return KVT_VALUE_LIST;
  if (x.isInt()) return KVT_VALUE_INT;
  if (x.isDouble()) return KVT_VALUE_DOUBLE;
  if (x.isBool()) return KVT_VALUE_BOOL;
  if (x.isString()) return KVT_VALUE_STRING;
  return KVT_VALUE_OTHER;
}

char *kvt_value_type_name(const kvt_value *v) {
  try {
    return dup_string(v->v.type()->str());
  } catch (...) {
    return dup_string(v->v.tagKind());
  }
}

int64_t kvt_value_len(const kvt_value *v) {
  if (v->v.isTuple()) return static_cast<int64_t>(v->v.toTupleRef().elements().size());
  if (v->v.isList()) return static_cast<int64_t>(v->v.toListRef().size());
  return 0;
}

kvt_err kvt_value_at(const kvt_value *v, int64_t i, kvt_value **out) {
  KVT_TRY
  int64_t n = kvt_value_len(v);
  if (!v->v.isTuple() && !v->v.isList()) {
    throw std::invalid_argument("value of type " + v->v.type()->str() + " has no elements");
  }
  if (i < 0 || i >= n) {
    throw std::out_of_range("index " + std::to_string(i) + " out of range for " +
                            std::to_string(n) + " elements");
  }
  if (v->v.isTuple()) {
    *out = new kvt_value{v->v.toTupleRef().elements()[static_cast<size_t>(i)]};
  } else {
    *out = new kvt_value{v->v.toListRef()[static_cast<size_t>(i)]};
  }
  KVT_CATCH
}

kvt_err kvt_value_tensor(const kvt_value *v, kvt_tensor **out) {
  KVT_TRY
  if (!v->v.isTensor()) throw std::invalid_argument("value is " + v->v.type()->str() + ", not Tensor");
  *out = wrap(v->v.toTensor());
  KVT_CATCH
}

kvt_err kvt_value_int(const kvt_value *v, int64_t *out) {
  KVT_TRY
  if (v->v.isBool()) {
    *out = v->v.toBool() ? 1 : 0;
  } else {
    *out = v->v.toInt();
  }
  KVT_CATCH
}

kvt_err kvt_value_double(const kvt_value *v, double *out) {
  KVT_TRY
  *out = v->v.toDouble();
  KVT_CATCH
}

kvt_err kvt_value_string(const kvt_value *v, char **out) {
  KVT_TRY
  char *s = dup_string(v->v.toStringRef());
  if (s == nullptr) throw std::bad_alloc();
  *out = s;
  KVT_CATCH
}

}  // extern "C"
