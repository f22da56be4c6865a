// Runs a TVM relax executable on the device (or under qemu-user): params + inputs in, outputs + latency out.
//
//   usage: runner MODULE.so PARAMS.bin INPUTS.bin OUTPUTS.bin WARMUP ITERS
//
// All .bin files are TVM param dicts (tvm.runtime.save_param_dict_to_file / runtime.LoadParamsFromFile).
//   PARAMS.bin   keys p0..pN, the model weights in "main" argument order (ordered by the integer suffix).
//                If the executable has "main_transform_params", it is called once with the weights as one
//                tuple (ffi Array) and its outputs are the weights passed to "main".
//   INPUTS.bin   keys s{i}_in{j}: input j of sample i. "main" is called once per sample as main(inputs..., weights...).
//   OUTPUTS.bin  keys s{i}_out{k}: output k of sample i (a tensor or nested tuple, flattened in order).
// If ITERS > 0: WARMUP untimed and ITERS timed calls on sample 0, printed as one stdout line "latency_ms v1 v2 ...".
// Threads: the TVM runtime reads TVM_NUM_THREADS.
// On failure the last stderr line is a one-line "runner: ..." summary and the exit code is nonzero:
//   1 usage, 2 missing or malformed file, 3 module load failure, 4 run failure.
// Built against libtvm_runtime.so + libtvm_ffi.so only (scripts/install_tvm_aarch64_runtime.sh).
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

using namespace tvm::ffi;

namespace {

constexpr int kUsage = 1, kBadFile = 2, kLoad = 3, kRun = 4;

struct Fail {
  int code;
  std::string message;
};

// One line: runtimes put tracebacks and newlines into their messages.
std::string OneLine(const std::string& s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (c == '\n' || c == '\r' || c == '\t' || c == ' ') {
      space = !out.empty();
    } else {
      if (space) out += ' ';
      out += c;
      space = false;
    }
  }
  return out;
}

std::string Describe(const Error& e) { return OneLine(e.kind() + ": " + e.message()); }

void RequireFile(const char* path, const char* what) {
  std::FILE* f = std::fopen(path, "rb");
  if (!f) throw Fail{kBadFile, std::string(what) + " not found or unreadable: " + path};
  std::fclose(f);
}

long ParseCount(const char* s, const char* what) {
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < 0) {
    throw Fail{kUsage, std::string(what) + " must be a non-negative integer, got '" + s + "'"};
  }
  return v;
}

Map<String, Tensor> LoadDict(const char* path, const char* what) {
  static Function load = Function::GetGlobalRequired("runtime.LoadParamsFromFile");
  try {
    return load(String(path)).cast<Map<String, Tensor>>();
  } catch (const Error& e) {
    throw Fail{kBadFile, std::string("cannot read ") + what + " " + path + ": " + Describe(e)};
  }
}

// Parses "p<n>" into n; false if the key has another form.
bool ParseParamKey(const std::string& key, long* n) {
  int used = 0;
  return std::sscanf(key.c_str(), "p%ld%n", n, &used) == 1 && used == static_cast<int>(key.size()) && *n >= 0;
}

// Parses "s<i>_in<j>" into (i, j).
bool ParseInputKey(const std::string& key, long* i, long* j) {
  int used = 0;
  return std::sscanf(key.c_str(), "s%ld_in%ld%n", i, j, &used) == 2 && used == static_cast<int>(key.size()) &&
         *i >= 0 && *j >= 0;
}

std::vector<Any> LoadParams(const char* path) {
  std::map<long, Tensor> by_index;
  for (const auto& kv : LoadDict(path, "params")) {
    long n;
    if (!ParseParamKey(std::string(kv.first), &n)) {
      throw Fail{kBadFile, std::string("params key '") + std::string(kv.first) + "' is not of the form p<n>"};
    }
    by_index[n] = kv.second;
  }
  std::vector<Any> params;
  for (const auto& kv : by_index) {
    if (kv.first != static_cast<long>(params.size())) {
      throw Fail{kBadFile, "params keys are not p0..p" + std::to_string(by_index.size() - 1) + ": p" +
                               std::to_string(params.size()) + " is missing"};
    }
    params.push_back(kv.second);
  }
  return params;
}

std::vector<std::vector<Any>> LoadInputs(const char* path) {
  std::map<long, std::map<long, Tensor>> by_sample;
  for (const auto& kv : LoadDict(path, "inputs")) {
    long i, j;
    if (!ParseInputKey(std::string(kv.first), &i, &j)) {
      throw Fail{kBadFile, std::string("inputs key '") + std::string(kv.first) + "' is not of the form s<i>_in<j>"};
    }
    by_sample[i][j] = kv.second;
  }
  std::vector<std::vector<Any>> samples;
  for (const auto& s : by_sample) {
    if (s.first != static_cast<long>(samples.size())) {
      throw Fail{kBadFile, "inputs: sample s" + std::to_string(samples.size()) + " is missing"};
    }
    std::vector<Any> inputs;
    for (const auto& kv : s.second) {
      if (kv.first != static_cast<long>(inputs.size())) {
        throw Fail{kBadFile, "inputs: s" + std::to_string(s.first) + "_in" + std::to_string(inputs.size()) +
                                 " is missing"};
      }
      inputs.push_back(kv.second);
    }
    if (!samples.empty() && inputs.size() != samples[0].size()) {
      throw Fail{kBadFile, "inputs: sample s" + std::to_string(s.first) + " has " + std::to_string(inputs.size()) +
                               " inputs, s0 has " + std::to_string(samples[0].size())};
    }
    samples.push_back(std::move(inputs));
  }
  if (samples.empty()) throw Fail{kBadFile, std::string("inputs file has no samples: ") + path};
  return samples;
}

void Flatten(const Any& v, std::vector<Tensor>* out) {
  if (auto t = v.try_cast<Tensor>()) {
    out->push_back(*t);
  } else if (auto a = v.try_cast<Array<Any>>()) {
    for (const Any& e : *a) Flatten(e, out);
  } else {
    throw Fail{kRun, "unsupported output type " + v.GetTypeKey() + " (expected tensors or tuples of tensors)"};
  }
}

Any Call(const Function& f, const std::vector<Any>& args) {
  std::vector<AnyView> views(args.begin(), args.end());
  Any result;
  f.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
  return result;
}

int Run(int argc, char** argv) {
  if (argc != 7) {
    throw Fail{kUsage, "expected 6 arguments, got " + std::to_string(argc - 1) +
                           "; usage: runner MODULE.so PARAMS.bin INPUTS.bin OUTPUTS.bin WARMUP ITERS"};
  }
  const char *mod_path = argv[1], *params_path = argv[2], *inputs_path = argv[3], *outputs_path = argv[4];
  const long warmup = ParseCount(argv[5], "WARMUP"), iters = ParseCount(argv[6], "ITERS");
  RequireFile(mod_path, "module");
  RequireFile(params_path, "params file");
  RequireFile(inputs_path, "inputs file");
  // dlopen searches the library path for a name without '/': give it the real path.
  char real_mod[PATH_MAX];
  if (!realpath(mod_path, real_mod)) throw Fail{kBadFile, std::string("cannot resolve module path ") + mod_path};

  std::vector<Any> params = LoadParams(params_path);
  std::vector<std::vector<Any>> samples = LoadInputs(inputs_path);

  Optional<Module> vm;  // keeps the executable loaded
  Optional<Function> fmain, ftransform;
  try {
    Module lib = Module::LoadFromFile(String(real_mod));
    Optional<Function> load_exec = lib->GetFunction("vm_load_executable", true);
    if (!load_exec) throw Fail{kLoad, std::string("not a relax VM executable (no vm_load_executable): ") + mod_path};
    Module m = (*load_exec)().cast<Module>();
    vm = m;
    // (device_type, device_id, allocator): kDLCPU = 1, pooled allocator = 2.
    m->GetFunction("vm_initialization", false).value()(1, 0, 2);
    fmain = m->GetFunction("main", false);
    if (!fmain) throw Fail{kLoad, std::string("executable has no function 'main': ") + mod_path};
    ftransform = m->GetFunction("main_transform_params", false);
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    throw Fail{kLoad, std::string("cannot load module ") + mod_path + ": " + Describe(e)};
  }

  try {
    if (ftransform) {
      // Same as Python's vm["main_transform_params"](list_of_params): the list arrives as one ffi Array.
      Array<Any> packed(params.begin(), params.end());
      Any transformed = (*ftransform)(packed);
      auto arr = transformed.try_cast<Array<Any>>();
      if (!arr) throw Fail{kRun, "main_transform_params returned " + transformed.GetTypeKey() + ", expected a tuple"};
      params.assign(arr->begin(), arr->end());
    }

    Map<String, Tensor> out_map;
    for (size_t i = 0; i < samples.size(); ++i) {
      std::vector<Any> args = samples[i];
      args.insert(args.end(), params.begin(), params.end());
      std::vector<Tensor> outs;
      Flatten(Call(*fmain, args), &outs);
      for (size_t k = 0; k < outs.size(); ++k) {
        out_map.Set(String("s" + std::to_string(i) + "_out" + std::to_string(k)), outs[k]);
      }
    }
    Function::GetGlobalRequired("runtime.SaveParamsToFile")(out_map, String(outputs_path));

    if (iters > 0) {
      std::vector<Any> args = samples[0];
      args.insert(args.end(), params.begin(), params.end());
      for (long r = 0; r < warmup; ++r) Call(*fmain, args);
      std::ostringstream line;
      line << "latency_ms";
      for (long r = 0; r < iters; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        Call(*fmain, args);
        auto t1 = std::chrono::steady_clock::now();
        line << ' ' << std::chrono::duration<double, std::milli>(t1 - t0).count();
      }
      std::printf("%s\n", line.str().c_str());
      std::fflush(stdout);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    throw Fail{kRun, "run failed: " + Describe(e)};
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(argc, argv);
  } catch (const Fail& f) {
    std::fprintf(stderr, "runner: %s\n", OneLine(f.message).c_str());
    return f.code;
  } catch (const Error& e) {
    std::fprintf(stderr, "%s\nrunner: %s\n", e.what(), Describe(e).c_str());
    return kRun;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "runner: %s\n", OneLine(e.what()).c_str());
    return kRun;
  }
}
