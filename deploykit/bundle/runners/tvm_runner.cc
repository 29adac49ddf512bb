// deploykit bundle runner: loads a TVM Relax library (model.so), runs it on the golden inputs and
// compares with the golden outputs, with nothing but libtvm_runtime + libtvm_ffi on the device.
//
//   dk_runner MODEL.so INPUTS.npz OUTPUTS.npz [--tol NAME:ATOL:RTOL]... [--repeat N]
//   dk_runner MODEL.so INPUTS.npz OUTPUTS.npz [--tol ...]... --time OUT.json [--max-time S]
//             [--block S] [--rel-ci X] [--threads N] [--manifest manifest.json]
//
// With --time, after the self-test passed (a bundle that fails it is not timed), the bundle
// times itself with deploykit's methodology (dk_timing.h, beside this file) and writes the
// deploykit-device-timing/1 JSON that `deploykit profile --device ssh://...` reads back. The
// thread count (--threads, else $TVM_NUM_THREADS, else the manifest's target threads, else all
// online cores) is set as TVM_NUM_THREADS before the runtime starts, so the one reported is the
// one used.
//
// INPUTS.npz holds the model inputs in argument order; OUTPUTS.npz the expected outputs in
// return order. Both must be uncompressed (numpy.savez). An element passes when
// |got - expected| <= atol + rtol * |expected| (numpy.allclose). Exit 0 on pass, 1 on mismatch,
// 2 on unusable inputs (missing file, bad archive, shape or count mismatch).
// Only the tvm-ffi headers are used: the apache-tvm wheel ships those complete (not all of
// tvm/runtime's), and libtvm_runtime is linked so that the Relax VM loader is registered.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "dk_timing.h"

namespace {

struct Array {
  std::string name;
  std::vector<int64_t> shape;
  DLDataType dtype;
  std::vector<char> data;
};

struct Usage : std::runtime_error {
  using std::runtime_error::runtime_error;
};

uint32_t le32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
uint16_t le16(const char* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}

DLDataType parse_descr(const std::string& d, const std::string& where) {
  // numpy descr like '<f4', '|u1', '|b1'; only little-endian / byte-order-free types.
  if (d.size() < 3 || (d[0] != '<' && d[0] != '|'))
    throw Usage(where + ": unsupported dtype " + d);
  int bytes = std::stoi(d.substr(2));
  uint8_t code;
  switch (d[1]) {
    case 'f': code = kDLFloat; break;
    case 'i': code = kDLInt; break;
    case 'u': code = kDLUInt; break;
    case 'b': code = kDLBool; break;
    default: throw Usage(where + ": unsupported dtype " + d);
  }
  return DLDataType{code, static_cast<uint8_t>(bytes * 8), 1};
}

std::string dict_value(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) throw Usage("npy header lacks " + key);
  size_t colon = header.find(':', k);
  size_t start = header.find_first_not_of(' ', colon + 1);
  if (header[start] == '(') return header.substr(start + 1, header.find(')', start) - start - 1);
  if (header[start] == '\'') return header.substr(start + 1, header.find('\'', start + 1) - start - 1);
  return header.substr(start, header.find(',', start) - start);
}

// numpy.savez writes a zip of .npy members, stored (uncompressed). Each .npy header gives the
// shape and dtype, hence the data size, so only the zip local headers need walking.
std::vector<Array> read_npz(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Usage("cannot open " + path);
  std::vector<char> buf((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<Array> arrays;
  size_t pos = 0;
  while (pos + 30 <= buf.size() && le32(&buf[pos]) == 0x04034b50u) {
    const char* h = &buf[pos];
    if (le16(h + 8) != 0) throw Usage(path + ": compressed member (write it with numpy.savez)");
    size_t name_len = le16(h + 26), extra_len = le16(h + 28);
    std::string name(h + 30, name_len);
    size_t p = pos + 30 + name_len + extra_len;
    if (p + 10 > buf.size() || std::memcmp(&buf[p], "\x93NUMPY", 6) != 0)
      throw Usage(path + ": member " + name + " is not a .npy array");
    int major = static_cast<unsigned char>(buf[p + 6]);
    size_t hlen = major == 1 ? le16(&buf[p + 8]) : le32(&buf[p + 8]);
    size_t hstart = p + (major == 1 ? 10 : 12);
    std::string header(&buf[hstart], hlen);
    if (dict_value(header, "fortran_order").find("True") != std::string::npos)
      throw Usage(path + ": " + name + " is Fortran-ordered");
    Array a;
    a.name = name.size() > 4 ? name.substr(0, name.size() - 4) : name;
    a.dtype = parse_descr(dict_value(header, "descr"), path + ":" + a.name);
    std::stringstream dims(dict_value(header, "shape"));
    std::string dim;
    size_t count = 1;
    while (std::getline(dims, dim, ',')) {
      if (dim.find_first_not_of(' ') == std::string::npos) continue;
      a.shape.push_back(std::stoll(dim));
      count *= static_cast<size_t>(a.shape.back());
    }
    size_t nbytes = count * (a.dtype.bits / 8);
    size_t dstart = hstart + hlen;
    if (dstart + nbytes > buf.size()) throw Usage(path + ": " + a.name + " is truncated");
    a.data.assign(buf.begin() + dstart, buf.begin() + dstart + nbytes);
    arrays.push_back(std::move(a));
    pos = dstart + nbytes;
  }
  if (arrays.empty()) throw Usage(path + ": not an .npz archive");
  return arrays;
}

double element(const char* p, DLDataType t) {
  switch (t.code) {
    case kDLFloat:
      if (t.bits == 32) return *reinterpret_cast<const float*>(p);
      if (t.bits == 64) return *reinterpret_cast<const double*>(p);
      break;
    case kDLInt:
      if (t.bits == 8) return *reinterpret_cast<const int8_t*>(p);
      if (t.bits == 32) return *reinterpret_cast<const int32_t*>(p);
      if (t.bits == 64) return static_cast<double>(*reinterpret_cast<const int64_t*>(p));
      break;
    case kDLUInt:
    case kDLBool:
      if (t.bits == 8) return *reinterpret_cast<const uint8_t*>(p);
      break;
  }
  throw Usage("unsupported output dtype");
}

// Host memory, aligned as TVM's generated kernels expect (kAllocAlignment = 64).
struct AlignedCPUAlloc {
  void AllocData(DLTensor* t) {
    size_t n = (tvm::ffi::GetDataSize(*t) + 63) / 64 * 64;
    t->data = std::aligned_alloc(64, n ? n : 64);
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

tvm::ffi::Tensor to_tensor(const Array& a) {
  tvm::ffi::Tensor t = tvm::ffi::Tensor::FromNDAlloc(
      AlignedCPUAlloc(), tvm::ffi::Shape(a.shape), a.dtype, DLDevice{kDLCPU, 0});
  std::memcpy(t.data_ptr(), a.data.data(), a.data.size());
  return t;
}

void flatten(const tvm::ffi::Any& ret, std::vector<tvm::ffi::Tensor>* out) {
  if (auto t = ret.try_cast<tvm::ffi::Tensor>()) {
    out->push_back(*t);
  } else if (auto arr = ret.try_cast<tvm::ffi::Array<tvm::ffi::Any>>()) {
    for (const tvm::ffi::Any& item : *arr) flatten(item, out);
  } else {
    throw Usage("model returned something other than tensors");
  }
}

double number(const std::string& flag, const char* v) {
  char* end = nullptr;
  double x = std::strtod(v, &end);
  if (end == v || *end || !(x > 0) || !std::isfinite(x)) throw Usage(flag + " must be a positive number");
  return x;
}

// --threads, else $TVM_NUM_THREADS, else the target's threads in the manifest, else all cores.
int choose_threads(int given, dk::JsonReader& manifest) {
  if (given > 0) return given;
  const char* env = std::getenv("TVM_NUM_THREADS");
  if (env && std::atoi(env) > 0) return std::atoi(env);
  std::string t;
  if (manifest.find({"target", "config", "threads"}, &t) && std::atoi(t.c_str()) > 0)
    return std::atoi(t.c_str());
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : 1;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::vector<std::string> pos;
    std::map<std::string, std::pair<double, double>> tol;
    int repeat = 1;
    dk::Options topt;
    bool timing = false;
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      bool has = i + 1 < argc;
      if (a == "--tol" && has) {
        std::string v = argv[++i];
        size_t c2 = v.rfind(':'), c1 = c2 == std::string::npos || c2 == 0 ? std::string::npos
                                                                          : v.rfind(':', c2 - 1);
        if (c1 == std::string::npos || c2 == std::string::npos) throw Usage("bad --tol " + v);
        tol[v.substr(0, c1)] = {std::stod(v.substr(c1 + 1, c2 - c1 - 1)), std::stod(v.substr(c2 + 1))};
      } else if (a == "--repeat" && has) {
        repeat = std::max(1, std::stoi(argv[++i]));
      } else if (a == "--time" && has) {
        topt.out = argv[++i];
        timing = true;
      } else if (a == "--max-time" && has) {
        topt.max_time_s = number(a, argv[++i]);
      } else if (a == "--block" && has) {
        topt.block_s = number(a, argv[++i]);
      } else if (a == "--rel-ci" && has) {
        topt.rel_ci = number(a, argv[++i]);
      } else if (a == "--threads" && has) {
        topt.threads = static_cast<int>(number(a, argv[++i]));
        if (topt.threads < 1) throw Usage("--threads must be a positive integer");
      } else if (a == "--manifest" && has) {
        topt.manifest = argv[++i];
      } else if (a.rfind("--", 0) == 0) {
        throw Usage("unknown option or missing value: " + a);
      } else {
        pos.push_back(a);
      }
    }
    if (pos.size() != 3)
      throw Usage("usage: dk_runner MODEL.so INPUTS.npz OUTPUTS.npz [--tol NAME:ATOL:RTOL]... "
                  "[--repeat N] [--time OUT.json [--max-time S] [--threads N]]");
    if (timing && repeat != 1) throw Usage("--time and --repeat do not go together");
    std::string manifest_text;
    int threads = 0;
    if (timing) {
      manifest_text = dk::read_file(topt.manifest);
      if (manifest_text.empty()) throw Usage("--time needs the bundle's " + topt.manifest);
      dk::JsonReader m(manifest_text);
      threads = choose_threads(topt.threads, m);
      // read by the runtime's thread pool when it starts, i.e. after this
      setenv("TVM_NUM_THREADS", std::to_string(threads).c_str(), 1);
    }
    std::vector<Array> inputs = read_npz(pos[1]);
    std::vector<Array> golden = read_npz(pos[2]);

    // init: the library loaded and the VM made ready, as a session is created
    int64_t t_init = dk::now_ns();
    // dlopen searches the library path for a bare file name: make it a path.
    std::string lib_path = pos[0].find('/') == std::string::npos ? "./" + pos[0] : pos[0];
    tvm::ffi::Module lib = tvm::ffi::Module::LoadFromFile(lib_path);
    tvm::ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<tvm::ffi::Module>();
    // One CPU device with the pooled allocator, as tvm.relax.VirtualMachine(lib, tvm.cpu()) does.
    vm->GetFunction("vm_initialization").value()(static_cast<int>(kDLCPU), 0, 2);
    tvm::ffi::Function entry = vm->GetFunction("main").value();
    double init_ms = (dk::now_ns() - t_init) / 1e6;

    std::vector<tvm::ffi::Tensor> args;
    for (const Array& a : inputs) args.push_back(to_tensor(a));
    std::vector<tvm::ffi::AnyView> views(args.begin(), args.end());
    std::vector<double> ms;
    tvm::ffi::Any ret;
    auto run = [&]() { entry.CallPacked(views.data(), static_cast<int32_t>(views.size()), &ret); };
    for (int r = 0; r < repeat; ++r) ms.push_back(dk::time_once(run));  // the first: cold
    std::vector<tvm::ffi::Tensor> outs;
    flatten(ret, &outs);
    if (outs.size() != golden.size())
      throw Usage("model returned " + std::to_string(outs.size()) + " outputs, golden has " +
                  std::to_string(golden.size()));

    bool ok = true;
    for (size_t i = 0; i < outs.size(); ++i) {
      const Array& g = golden[i];
      std::vector<int64_t> shape(outs[i].shape().begin(), outs[i].shape().end());
      if (shape != g.shape) {
        std::printf("output %s shape mismatch\n", g.name.c_str());
        ok = false;
        continue;
      }
      if (outs[i].device().device_type != kDLCPU || !outs[i].IsContiguous() ||
          outs[i].dtype().bits != g.dtype.bits)
        throw Usage("output " + g.name + " is not a contiguous CPU tensor of the golden dtype");
      const char* got = static_cast<const char*>(outs[i].data_ptr());
      auto it = tol.find(g.name);
      double atol = it == tol.end() ? 0.0 : it->second.first;
      double rtol = it == tol.end() ? 0.0 : it->second.second;
      size_t step = g.dtype.bits / 8, bad = 0;
      double max_abs = 0.0;
      for (size_t k = 0; k < g.data.size(); k += step) {
        double x = element(got + k, outs[i].dtype()), y = element(&g.data[k], g.dtype);
        double d = std::fabs(x - y);
        if (!(d <= atol + rtol * std::fabs(y))) ++bad;  // NaN counts as a mismatch
        if (!(d <= max_abs)) max_abs = d;
      }
      std::printf("output %s max_abs_err=%.3g atol=%.3g rtol=%.3g mismatched=%zu/%zu %s\n",
                  g.name.c_str(), max_abs, atol, rtol, bad, g.data.size() / step,
                  bad ? "FAIL" : "ok");
      ok = ok && bad == 0;
    }
    outs.clear();
    std::vector<double> sorted = ms;
    std::sort(sorted.begin(), sorted.end());
    std::printf("runs=%d median_ms=%.3f first_ms=%.3f\n", repeat, sorted[sorted.size() / 2], ms[0]);
    std::printf("%s\n", ok ? "PASS" : "FAIL");
    std::fflush(stdout);
    if (!ok || !timing) return ok ? 0 : 1;  // a bundle that fails its self-test is not timed

    size_t warm = dk::warm_up(run);
    dk::Timing t = dk::time_blocks(run, topt.block_s, topt.max_time_s, topt.rel_ci);
    long batch = inputs.empty() || inputs[0].shape.empty() ? 1 : static_cast<long>(inputs[0].shape[0]);
    dk::JsonReader m(manifest_text);
    dk::write_document(topt, m, threads, batch, {init_ms, ms[0], warm}, t);
    std::printf("timed: %zu samples in %zu blocks (%s), median %.4g ms -> %s\n", t.samples_ms.size(),
                t.blocks.size(), t.stop_reason.c_str(), dk::median(t.samples_ms), topt.out.c_str());
    return 0;
  } catch (const Usage& e) {
    std::fprintf(stderr, "dk_runner: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dk_runner: %s\n", e.what());
    return 2;
  }
}
