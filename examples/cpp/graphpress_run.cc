// graphpress_run: run a graphpress artifact with the TVM runtime alone (no Python).
//
//   graphpress_run ARTIFACT_DIR OUTPUT_DIR INPUT.npy [INPUT.npy ...]
//
// ARTIFACT_DIR is what `graphpress compile` or `graphpress compress --target x86|aarch64`
// wrote: model.so (the Relax VM executable, weights inside) and graphpress.json (input and
// output names, shapes, dtypes). The inputs are .npy files (numpy's np.save) in the order of
// graphpress.json's "inputs". Each output is written to OUTPUT_DIR/<name>.npy (characters other
// than letters, digits, '.', '_' and '-' in the name become '_') and summarized on stdout.
// Threads: TVM_NUM_THREADS (default: the CPUs this process may use; TVM's own default is half
// the logical CPUs on x86). Parallel loops run on graphpress's work-sharing launcher, linked into
// model.so, as in graphpress's Python runtime: the caller runs every share of a loop that no
// worker has started, so a worker whose CPU another process keeps busy delays nobody.
// GRAPHPRESS_THREAD_POOL=tvm keeps TVM's thread pool; TVM_BIND_THREADS=1 does too, and pins each
// of its workers to one CPU, as TVM does by default (unset here: a pinned worker waits out any
// process that keeps its CPU busy, at every parallel kernel).
//
// Exit codes: 0 done, 2 bad input (one line on stderr naming the file), 1 anything else.

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;

namespace {

// A bad input: reported as one line, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DType {
  const char* name;   // graphpress.json's spelling (numpy's dtype name)
  const char* descr;  // the .npy header's spelling (little-endian)
  DLDataType dl;
};

const DType kDTypes[] = {
    {"float32", "<f4", {kDLFloat, 32, 1}}, {"float64", "<f8", {kDLFloat, 64, 1}},
    {"float16", "<f2", {kDLFloat, 16, 1}}, {"int64", "<i8", {kDLInt, 64, 1}},
    {"int32", "<i4", {kDLInt, 32, 1}},     {"int16", "<i2", {kDLInt, 16, 1}},
    {"int8", "|i1", {kDLInt, 8, 1}},       {"uint8", "|u1", {kDLUInt, 8, 1}},
    {"bool", "|b1", {kDLBool, 8, 1}},
};

const DType& DTypeByName(const std::string& name) {
  for (const DType& d : kDTypes) {
    if (name == d.name) return d;
  }
  throw UsageError("graphpress.json: dtype '" + name + "' is not supported by this example");
}

const DType& DTypeOf(const DLDataType& dl) {
  for (const DType& d : kDTypes) {
    if (d.dl.code == dl.code && d.dl.bits == dl.bits && d.dl.lanes == dl.lanes) return d;
  }
  throw std::runtime_error("an output has a dtype this example cannot write");
}

struct Array {
  std::string descr;
  std::vector<int64_t> shape;
  std::vector<char> bytes;
};

// Host memory for the input tensors, 64-byte aligned as TVM's kernels assume.
struct CPUAlloc {
  void AllocData(DLTensor* t) {
    size_t bytes = std::max<size_t>(ffi::GetDataSize(*t), 1);
    t->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (t->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(path + ": cannot be read");
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

// The value of key 'name' in a .npy header dict, e.g. "'<f4'" or "(1, 64)".
std::string HeaderField(const std::string& header, const std::string& name, const std::string& path) {
  size_t at = header.find("'" + name + "'");
  if (at == std::string::npos) throw UsageError(path + ": not a .npy file (no '" + name + "' in its header)");
  at = header.find(':', at) + 1;
  while (at < header.size() && header[at] == ' ') ++at;
  size_t end = header[at] == '(' ? header.find(')', at) + 1 : header.find_first_of(",}", at);
  return header.substr(at, end - at);
}

Array ReadNpy(const std::string& path) {
  std::string raw = ReadFile(path);
  if (raw.size() < 10 || raw.compare(0, 6, "\x93NUMPY") != 0) {
    throw UsageError(path + ": not a .npy file; write inputs with numpy.save");
  }
  size_t header_len, offset;
  if (raw[6] == 1) {
    header_len = static_cast<uint8_t>(raw[8]) | static_cast<uint8_t>(raw[9]) << 8;
    offset = 10;
  } else {
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<uint8_t>(raw[8 + i])) << (8 * i);
    offset = 12;
  }
  std::string header = raw.substr(offset, header_len);
  Array a;
  std::string descr = HeaderField(header, "descr", path);
  a.descr = descr.substr(1, descr.size() - 2);
  if (HeaderField(header, "fortran_order", path) != "False") {
    throw UsageError(path + ": Fortran-ordered array; save a C-ordered one (numpy.ascontiguousarray)");
  }
  std::string dims = HeaderField(header, "shape", path);
  std::stringstream ss(dims.substr(1, dims.size() - 2));
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.find_first_not_of(' ') != std::string::npos) a.shape.push_back(std::stoll(item));
  }
  a.bytes.assign(raw.begin() + offset + header_len, raw.end());
  return a;
}

void WriteNpy(const std::string& path, const Array& a) {
  std::string shape = "(";
  for (size_t i = 0; i < a.shape.size(); ++i) shape += std::to_string(a.shape[i]) + (a.shape.size() == 1 ? "," : i + 1 < a.shape.size() ? ", " : "");
  shape += ")";
  std::string header = "{'descr': '" + a.descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
  header.append(64 - (10 + header.size() + 1) % 64, ' ');  // the data starts 64-byte aligned
  header += '\n';
  std::string tmp = path + ".tmp";  // written whole, then renamed into place
  {
    std::ofstream out(tmp, std::ios::binary);
    const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
    const uint16_t len = static_cast<uint16_t>(header.size());
    out.write(magic, 8);
    out.put(static_cast<char>(len & 0xff)).put(static_cast<char>(len >> 8));
    out << header;
    out.write(a.bytes.data(), static_cast<std::streamsize>(a.bytes.size()));
    if (!out) throw std::runtime_error(path + ": cannot be written");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": cannot be written");
}

std::string SafeName(std::string name) {
  for (char& c : name) {
    if (!isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
  }
  return name;
}

// The VM's result: one tensor, or a (nested) tuple of them, in graph output order.
void Flatten(const ffi::Any& value, std::vector<ffi::Tensor>* out) {
  if (auto tensor = value.as<ffi::Tensor>()) {
    out->push_back(*tensor);
  } else if (auto items = value.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) Flatten(item, out);
  } else {
    throw std::runtime_error("the model returned something other than tensors");
  }
}

// Point the loaded library's parallel loops at graphpress's launcher (graphpress_parallel_install
// in model.so; an artifact saved before it existed has none and keeps TVM's pool), unless
// GRAPHPRESS_THREAD_POOL=tvm or TVM_BIND_THREADS=1 asks for TVM's pool.
void InstallLauncher(const std::string& library) {
  const char* pool = std::getenv("GRAPHPRESS_THREAD_POOL");
  const char* bind = std::getenv("TVM_BIND_THREADS");
  if ((pool != nullptr && std::string(pool) == "tvm") || (bind != nullptr && std::string(bind) == "1")) return;
  void* handle = dlopen(library.c_str(), RTLD_LAZY | RTLD_NOLOAD);  // the copy TVM loaded
  if (handle == nullptr) return;
  if (auto install = reinterpret_cast<int (*)(int)>(dlsym(handle, "graphpress_parallel_install"))) install(0);
  dlclose(handle);  // TVM's reference keeps it loaded
}

// TVM's runtime logs a "Scope Loaded" warning per kernel group while it loads an executable;
// this keeps stderr for errors (which arrive as exceptions anyway) while the library loads.
class QuietStderr {
 public:
  QuietStderr() : saved_(dup(2)) {
    int null = open("/dev/null", O_WRONLY);
    if (saved_ >= 0 && null >= 0) dup2(null, 2);
    if (null >= 0) close(null);
  }
  ~QuietStderr() {
    if (saved_ >= 0) {
      dup2(saved_, 2);
      close(saved_);
    }
  }

 private:
  int saved_;
};

int Run(int argc, char** argv) {
  if (argc < 3) throw UsageError("usage: graphpress_run ARTIFACT_DIR OUTPUT_DIR INPUT.npy [INPUT.npy ...]");
  const std::string artifact = argv[1], output_dir = argv[2];
  const std::string meta_path = artifact + "/graphpress.json";
  ffi::String error;
  ffi::json::Object meta = ffi::json::Parse(ReadFile(meta_path), &error).cast<ffi::json::Object>();
  if (!error.empty()) throw UsageError(meta_path + ": not valid JSON (" + std::string(error) + ")");
  if (std::string(meta["target"].cast<ffi::json::Object>()["kind"].cast<ffi::String>()) != "llvm") {
    throw UsageError(artifact + ": not a CPU artifact; this example runs artifacts compiled for x86 or aarch64");
  }
  ffi::json::Array inputs = meta["inputs"].cast<ffi::json::Array>();
  ffi::json::Array outputs = meta["outputs"].cast<ffi::json::Array>();
  if (static_cast<size_t>(argc - 3) != inputs.size()) {
    std::string names;
    for (const ffi::Any& spec : inputs) names += " " + std::string(spec.cast<ffi::json::Object>()["name"].cast<ffi::String>());
    throw UsageError(artifact + ": the model takes " + std::to_string(inputs.size()) + " input(s) (" + names.substr(1) + "), " +
                     std::to_string(argc - 3) + " .npy file(s) given");
  }

  if (access(output_dir.c_str(), W_OK) != 0) throw UsageError(output_dir + ": not a writable directory; create it first");
  DLDevice cpu{kDLCPU, 0};
  std::vector<ffi::AnyView> args;
  std::vector<ffi::Tensor> tensors;
  for (int i = 0; i < static_cast<int>(inputs.size()); ++i) {
    ffi::json::Object spec = inputs[i].cast<ffi::json::Object>();
    const std::string name = std::string(spec["name"].cast<ffi::String>()), path = argv[3 + i];
    const DType& dtype = DTypeByName(std::string(spec["dtype"].cast<ffi::String>()));
    Array a = ReadNpy(path);
    if (a.descr != dtype.descr) {
      throw UsageError(path + ": input '" + name + "' wants " + dtype.name + " (.npy descr " + dtype.descr + "), the file holds " + a.descr);
    }
    ffi::json::Array want = spec["shape"].cast<ffi::json::Array>();
    bool fits = want.size() == a.shape.size();
    for (size_t d = 0; fits && d < want.size(); ++d) {
      if (auto fixed = want[d].as<int64_t>()) fits = *fixed == a.shape[d];  // a named dim takes any size
    }
    int64_t count = 1;
    for (int64_t d : a.shape) count *= d;
    if (!fits || static_cast<size_t>(count * dtype.dl.bits / 8) != a.bytes.size()) {
      throw UsageError(path + ": input '" + name + "' has the wrong shape or is truncated; graphpress.json gives its shape");
    }
    ffi::Tensor t = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::Shape(a.shape), dtype.dl, cpu);
    std::memcpy(t.data_ptr(), a.bytes.data(), a.bytes.size());
    tensors.push_back(t);
  }
  for (const auto& t : tensors) args.emplace_back(t);

  // The executable and a VM on the CPU (device type 1, id 0, the pooled allocator: 2), as
  // tvm.relax.VirtualMachine(lib, tvm.cpu()) does in Python.
  ffi::Module vm = [&] {
    QuietStderr quiet;
    ffi::Module lib = ffi::Module::LoadFromFile(artifact + "/model.so");
    InstallLauncher(artifact + "/model.so");
    return lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  }();
  vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();

  ffi::Any result;
  main_fn.CallPacked(args.data(), static_cast<int>(args.size()), &result);
  std::vector<ffi::Tensor> results;
  Flatten(result, &results);
  if (results.size() != outputs.size()) throw std::runtime_error("the model returned a different number of outputs than graphpress.json lists");

  for (size_t i = 0; i < results.size(); ++i) {
    const DLTensor* t = results[i].GetDLTensorPtr();
    if (t->device.device_type != kDLCPU || !ffi::IsContiguous(*t)) throw std::runtime_error("an output is not a contiguous host tensor");
    Array a;
    a.descr = DTypeOf(t->dtype).descr;
    a.shape.assign(t->shape, t->shape + t->ndim);
    a.bytes.resize(ffi::GetDataSize(*t));
    std::memcpy(a.bytes.data(), static_cast<const char*>(t->data) + t->byte_offset, a.bytes.size());
    std::string name = std::string(outputs[i].cast<ffi::json::Object>()["name"].cast<ffi::String>());
    std::string path = output_dir + "/" + SafeName(name) + ".npy";
    WriteNpy(path, a);
    std::cout << name << " " << DTypeOf(t->dtype).name << "[";
    for (size_t d = 0; d < a.shape.size(); ++d) std::cout << (d ? "," : "") << a.shape[d];
    std::cout << "] -> " << path;
    if (t->dtype.code == kDLFloat && t->dtype.bits == 32 && !a.bytes.empty()) {
      const float* v = reinterpret_cast<const float*>(a.bytes.data());
      std::cout << " first:";
      for (size_t k = 0; k < std::min<size_t>(4, a.bytes.size() / 4); ++k) std::cout << " " << v[k];
    }
    std::cout << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // before the first kernel starts TVM's thread pool, which reads both variables then
  cpu_set_t cpus;
  if (std::getenv("TVM_NUM_THREADS") == nullptr && sched_getaffinity(0, sizeof(cpus), &cpus) == 0) {
    setenv("TVM_NUM_THREADS", std::to_string(CPU_COUNT(&cpus)).c_str(), 0);
  }
  setenv("TVM_BIND_THREADS", "0", 0);
  try {
    return Run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "graphpress_run: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::string what = e.what();
    std::cerr << "graphpress_run: " << what.substr(0, what.find('\n')) << "\n";
    return 1;
  }
}
