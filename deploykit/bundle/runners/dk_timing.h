// deploykit bundle timing for the C++ runner: the same methodology and the same JSON as the ORT
// bundles' dk_timing.py (deploykit/bundle/runners/timing.py), with nothing but libc and the C++
// standard library, so a board without Python can time its bundle.
//
// Session setup timed (init), the first inference timed alone, warm-up until the running median
// of ~50 ms windows settles (2%), then timed blocks of ~0.5 s keeping every per-iteration sample
// and the foreign CPU load of each block (/proc/stat minus this process's own CPU time), until
// the 95% order-statistic CI of the median of the clean block medians is within rel_ci or
// max_time is spent. Statistics are NOT reported from here: deploykit reads the raw samples back
// (bundle/device_timing.py) and derives them as for a local run. The document also carries the
// peak RSS (VmHWM) and the device fingerprint. The constants and rules are those of timing.py;
// keep both in step (tests/tvm/test_tvm_device_timing.py runs this on a real bundle).
#pragma once

#include <sched.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__clang__)
#define DK_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define DK_COMPILER "gcc " __VERSION__
#else
#define DK_COMPILER "unknown compiler"
#endif

namespace dk {

constexpr const char* kSchema = "deploykit-device-timing/1";

inline int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

inline double now_s() { return now_ns() / 1e9; }

inline std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return "";
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

inline std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// Foreign CPU share (0..1 of all cores) between start() and stop(), from /proc/stat.
class LoadMonitor {
 public:
  LoadMonitor() {
    long n = sysconf(_SC_NPROCESSORS_ONLN), hz = sysconf(_SC_CLK_TCK);
    ncpu_ = n > 0 ? n : 1;
    hz_ = hz > 0 ? hz : 100;
  }
  void start() {
    t0_ = now_s();
    double b;
    busy0_ = busy_s(&b) ? b : 0.0;
    own0_ = own_s();
  }
  double stop() const {
    double wall = now_s() - t0_, busy;
    if (!busy_s(&busy) || wall < 2.0 / hz_) return 0.0;
    double foreign = (busy - busy0_) - (own_s() - own0_);
    return std::min(std::max(foreign / (wall * ncpu_), 0.0), 1.0);
  }

 private:
  bool busy_s(double* out) const {
    std::ifstream f("/proc/stat");
    std::string cpu;
    if (!(f >> cpu) || cpu != "cpu") return false;
    std::vector<double> v;
    double x;
    while (v.size() < 8 && f >> x) v.push_back(x);
    if (v.size() < 4) return false;
    double idle = v[3] + (v.size() > 4 ? v[4] : 0.0), sum = 0.0;
    for (double y : v) sum += y;
    *out = (sum - idle) / hz_;
    return true;
  }
  static double own_s() {  // this process, all its threads (the runtime's pool included)
    rusage r{};
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_stime.tv_sec + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
  }
  double ncpu_, hz_, t0_ = 0, busy0_ = 0, own0_ = 0;
};

inline double median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  size_t n = x.size();
  return n % 2 ? x[n / 2] : (x[n / 2 - 1] + x[n / 2]) / 2;
}

inline double median_of(const std::vector<double>& x, size_t from, size_t to) {
  return median(std::vector<double>(x.begin() + from, x.begin() + to));
}

// Order-statistic 95% CI of the median (timing.py's median_ci; the binomial in log space).
inline std::pair<double, double> median_ci(std::vector<double> s, double conf = 0.95) {
  std::sort(s.begin(), s.end());
  size_t n = s.size();
  if (n < 6) return {s.front(), s.back()};
  double alpha = 1 - conf, cdf = 0.0;
  size_t j = 0;
  while (true) {
    double p = std::exp(std::lgamma(n + 1.0) - std::lgamma(j + 1.0) - std::lgamma(n - j + 1.0) -
                        n * std::log(2.0));
    if (cdf + p > alpha / 2) break;
    cdf += p;
    ++j;
  }
  if (cdf > alpha / 2) j = j > 0 ? j - 1 : 0;
  return {s[j], s[n - 1 - j]};
}

inline double time_once(const std::function<void()>& fn) {
  int64_t t0 = now_ns();
  fn();
  return (now_ns() - t0) / 1e6;
}

// Calls until the median of the last ~50 ms window is within `tol` of the one before.
inline size_t warm_up(const std::function<void()>& fn, double min_s = 0.2, double max_s = 5.0,
                      double tol = 0.02) {
  std::vector<double> d;
  double t_start = now_s();
  while (true) {
    d.push_back(time_once(fn));
    double elapsed = now_s() - t_start;
    if (elapsed >= max_s) break;
    size_t k = std::min<size_t>(5, d.size());
    double recent = median_of(d, d.size() - k, d.size());
    size_t w = std::max<size_t>(5, static_cast<size_t>(0.05 / std::max(recent / 1e3, 1e-6)));
    if (elapsed >= min_s && d.size() >= 2 * w) {
      double last = median_of(d, d.size() - w, d.size());
      double prev = median_of(d, d.size() - 2 * w, d.size() - w);
      if (std::fabs(last - prev) <= tol * prev) break;
    }
  }
  return d.size();
}

struct Block {
  size_t start, n;
  double foreign;
};

struct Timing {
  std::vector<double> samples_ms;
  std::vector<Block> blocks;
  std::string stop_reason;
};

inline Timing time_blocks(const std::function<void()>& fn, double block_s, double max_time_s,
                          double rel_ci, size_t min_samples = 30, size_t min_blocks = 8,
                          size_t max_samples = 100000, double threshold = 0.25) {
  LoadMonitor mon;
  Timing t;
  double t_start = now_s();
  while (true) {
    size_t start = t.samples_ms.size();
    int64_t end = now_ns() + static_cast<int64_t>(block_s * 1e9);
    mon.start();
    while (true) {
      int64_t a = now_ns();
      fn();
      int64_t b = now_ns();
      t.samples_ms.push_back((b - a) / 1e6);
      if (b >= end) break;
    }
    t.blocks.push_back({start, t.samples_ms.size() - start, mon.stop()});
    std::vector<double> meds;
    for (const Block& bl : t.blocks)
      if (bl.foreign <= threshold && bl.n > 0)
        meds.push_back(median_of(t.samples_ms, bl.start, bl.start + bl.n));
    if (t.samples_ms.size() >= min_samples && meds.size() >= min_blocks) {
      auto ci = median_ci(meds);
      if ((ci.second - ci.first) / 2 <= rel_ci * median(meds)) {
        t.stop_reason = "ci-reached";
        return t;
      }
    }
    if (now_s() - t_start >= max_time_s) {
      t.stop_reason = "time-cap";
      return t;
    }
    if (t.samples_ms.size() >= max_samples) {
      t.stop_reason = "sample-cap";
      return t;
    }
  }
}

// VmHWM of this process in kB (Linux / Android), or -1.
inline long peak_rss_kb() {
  std::istringstream s(read_file("/proc/self/status"));
  std::string line;
  while (std::getline(s, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return -1;
}

// ---- a small JSON writer and a reader just big enough for a few manifest fields ----

inline std::string quote(const std::string& s) {
  std::string o = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      o += '\\';
      o += static_cast<char>(c);
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      o += buf;
    } else {
      o += static_cast<char>(c);
    }
  }
  return o + "\"";
}

inline std::string num(double x) {
  if (!std::isfinite(x)) throw std::runtime_error("non-finite number in the timing document");
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

// Reads the scalar at a key path of a JSON document (strings unquoted; \u escapes beyond
// ASCII become '?'). Enough for manifest.json's digest, ids, versions and thread count.
class JsonReader {
 public:
  explicit JsonReader(std::string text) : s_(std::move(text)) {}
  bool find(const std::vector<std::string>& path, std::string* out) {
    i_ = 0;
    try {
      return find_in(path, 0, out);
    } catch (const std::exception&) {  // malformed: the field is not there
      return false;
    }
  }

 private:
  void ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  char peek() {
    ws();
    return s_.at(i_);
  }
  std::string str() {
    if (peek() != '"') throw std::out_of_range("string expected");
    std::string o;
    for (++i_;; ++i_) {
      char c = s_.at(i_);
      if (c == '"') break;
      if (c != '\\') {
        o += c;
        continue;
      }
      char e = s_.at(++i_);
      switch (e) {
        case 'n': o += '\n'; break;
        case 't': o += '\t'; break;
        case 'r': o += '\r'; break;
        case 'b': o += '\b'; break;
        case 'f': o += '\f'; break;
        case 'u': {
          unsigned v = std::stoul(s_.substr(i_ + 1, 4), nullptr, 16);
          o += v < 0x80 ? static_cast<char>(v) : '?';
          i_ += 4;
          break;
        }
        default: o += e;
      }
    }
    ++i_;
    return o;
  }
  void skip() {
    char c = peek();
    if (c == '"') {
      str();
    } else if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      ++i_;
      if (peek() == close) {
        ++i_;
        return;
      }
      while (true) {
        if (c == '{') {
          str();
          if (peek() != ':') throw std::out_of_range("':' expected");
          ++i_;
        }
        skip();
        char d = peek();
        ++i_;
        if (d == close) return;
        if (d != ',') throw std::out_of_range("',' expected");
      }
    } else {
      while (i_ < s_.size() && std::string(",}] \t\r\n").find(s_[i_]) == std::string::npos) ++i_;
    }
  }
  std::string scalar() {
    if (peek() == '"') return str();
    size_t a = i_;
    skip();
    return s_.substr(a, i_ - a);
  }
  bool find_in(const std::vector<std::string>& path, size_t depth, std::string* out) {
    if (peek() != '{') return false;
    ++i_;
    if (peek() == '}') return false;
    while (true) {
      std::string key = str();
      if (peek() != ':') return false;
      ++i_;
      if (key == path[depth]) {
        if (depth + 1 == path.size()) {
          char c = peek();
          if (c == '{' || c == '[') return false;
          *out = scalar();
          return true;
        }
        return find_in(path, depth + 1, out);
      }
      skip();
      char d = peek();
      ++i_;
      if (d != ',') return false;
    }
  }
  std::string s_;
  size_t i_ = 0;
};

// ---- what this device is ----

inline std::string fingerprint_json(const std::string& tvm_version) {
  std::map<std::string, std::string> info;
  std::istringstream cpuinfo(read_file("/proc/cpuinfo"));
  std::string line;
  const std::set<std::string> wanted = {"model name", "Hardware", "CPU implementer", "CPU part",
                                        "Features", "flags"};
  while (std::getline(cpuinfo, line)) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = trim(line.substr(0, colon));
    if (wanted.count(k) && !info.count(k)) info[k] = trim(line.substr(colon + 1));
  }
  utsname u{};
  uname(&u);
  std::string cpu = info.count("model name")   ? info["model name"]
                    : info.count("Hardware")   ? info["Hardware"]
                    : info.count("CPU part")   ? "implementer " + info["CPU implementer"] +
                                                     " part " + info["CPU part"]
                                               : std::string(u.machine);
  std::set<std::string> flags;
  std::istringstream fl(info.count("flags") ? info["flags"] : info["Features"]);
  for (std::string w; fl >> w;) flags.insert(w);
  const std::string cpufreq = "/sys/devices/system/cpu/cpu0/cpufreq/";
  auto sys = [&](const char* name) { return trim(read_file(cpufreq + name)); };
  auto mhz = [&](const char* name) {
    std::string v = sys(name);
    bool digits = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
    return digits ? num(std::stod(v) / 1000) : std::string("null");
  };
  cpu_set_t set;
  CPU_ZERO(&set);
  std::string affinity =
      sched_getaffinity(0, sizeof set, &set) == 0 ? std::to_string(CPU_COUNT(&set)) : "null";
  std::string gov = sys("scaling_governor");
  std::ostringstream o;
  o << "{\"cpu_model\": " << quote(cpu) << ", \"machine\": " << quote(u.machine)
    << ", \"cpu_count\": " << sysconf(_SC_NPROCESSORS_ONLN) << ", \"cpu_affinity\": " << affinity
    << ", \"cpu_flags\": [";
  bool first = true;
  for (const std::string& f : flags) {
    o << (first ? "" : ", ") << quote(f);
    first = false;
  }
  o << "], \"governor\": " << (gov.empty() ? "null" : quote(gov))
    << ", \"cur_freq_mhz\": " << mhz("scaling_cur_freq")
    << ", \"max_freq_mhz\": " << mhz("cpuinfo_max_freq") << ", \"os\": "
    << quote(std::string(u.sysname) + " " + u.release) << ", \"hostname\": " << quote(u.nodename)
    << ", \"runtime\": \"tvm\", \"tvm\": " << (tvm_version.empty() ? "null" : quote(tvm_version))
    << ", \"runner\": " << quote("dk_runner (C++, " DK_COMPILER ")")
    << "}";
  return o.str();
}

struct Options {
  std::string out;  // --time OUT.json
  double max_time_s = 30.0, block_s = 0.5, rel_ci = 0.01;
  int threads = 0;  // 0: the target's from the manifest, else $TVM_NUM_THREADS, else all cores
  std::string manifest = "manifest.json";
};

struct Phases {
  double init_ms, first_inference_ms;
  size_t warmup_samples;
};

// The whole document, written beside `out` and renamed into place (whole or not at all).
inline void write_document(const Options& opt, JsonReader& manifest, int threads, long batch,
                           const Phases& ph, const Timing& t) {
  std::string digest, artifact, model_sha, tvm_version;
  if (!manifest.find({"manifest_sha256"}, &digest))
    throw std::runtime_error(opt.manifest + " has no manifest_sha256");
  manifest.find({"artifact_id"}, &artifact);
  manifest.find({"model", "sha256"}, &model_sha);
  manifest.find({"tvm", "tvm_version"}, &tvm_version);
  std::ostringstream o;
  o << "{\"schema\": " << quote(kSchema) << ", \"manifest_sha256\": " << quote(digest)
    << ", \"artifact_id\": " << quote(artifact) << ", \"model_sha256\": " << quote(model_sha)
    << ", \"threads\": " << threads << ", \"plan\": {\"block_s\": " << num(opt.block_s)
    << ", \"max_time_s\": " << num(opt.max_time_s) << ", \"rel_ci\": " << num(opt.rel_ci)
    << "}, \"phases\": {\"init_ms\": " << num(ph.init_ms)
    << ", \"first_inference_ms\": " << num(ph.first_inference_ms)
    << ", \"warmup_samples\": " << ph.warmup_samples << "}, \"batch\": " << batch
    << ", \"samples_ms\": [";
  for (size_t i = 0; i < t.samples_ms.size(); ++i) o << (i ? ", " : "") << num(t.samples_ms[i]);
  o << "], \"blocks\": [";
  for (size_t i = 0; i < t.blocks.size(); ++i)
    o << (i ? ", " : "") << "[" << t.blocks[i].start << ", " << t.blocks[i].n << ", "
      << num(t.blocks[i].foreign) << "]";
  long rss = peak_rss_kb();
  o << "], \"stop_reason\": " << quote(t.stop_reason)
    << ", \"peak_rss_kb\": " << (rss > 0 ? std::to_string(rss) : "null")
    << ", \"device\": " << fingerprint_json(tvm_version)
    << ", \"created\": " << num(static_cast<double>(std::time(nullptr))) << "}\n";
  std::string tmp = opt.out + ".tmp." + std::to_string(getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << o.str();
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write " + tmp);
    }
  }
  if (std::rename(tmp.c_str(), opt.out.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + opt.out);
  }
}

}  // namespace dk
