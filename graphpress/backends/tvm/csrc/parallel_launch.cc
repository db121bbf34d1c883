// graphpress's parallel launcher for TVM's CPU kernels, linked into every CPU artifact's model.so.
//
// TVM's generated code runs each parallel loop through the function pointer
// __TVMBackendParallelLaunch (a data symbol of the library that TVM's loader fills with its own
// thread pool's launch). That pool gives each thread one fixed share of the loop and waits for
// all of them: a worker whose CPU another process keeps busy finishes its share late, and every
// kernel waits for it (MobileNetV2 int8 with a busy loop on one of 2 CPUs: 1.4 ms a call against
// 0.7 quiet; ONNX Runtime's pool 1.0). Here the calling thread and the workers take the shares
// from one atomic ticket, and the caller runs every share no worker has started: a worker that
// is not running delays nobody. The shares are the ones TVM's pool would make (one per thread),
// so every kernel computes exactly what it computes there.
//
// graphpress_parallel_install() points the library's __TVMBackendParallelLaunch here; the
// runtime (runtime.py, the C++ runner) calls it after TVM has loaded the library.
//
// Linux only (futex).

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>

extern "C" {
// TVM's closure ABI (tvm/runtime/c_backend_api.h)
struct GraphpressParallelEnv {
  void* sync_handle;
  int32_t num_task;
};
typedef int (*GraphpressParallelLambda)(int task_id, GraphpressParallelEnv* penv, void* cdata);
// defined (weak) by TVM's code generator in a library with parallel loops; absent otherwise
extern __attribute__((weak)) void* __TVMBackendParallelLaunch;
// TVM-FFI's C API (libtvm_ffi, loaded before any library): a share's error is moved from the
// thread that ran it to the caller's, where TVM reads it
extern __attribute__((weak)) void TVMFFIErrorMoveFromRaised(void** result);
extern __attribute__((weak)) void TVMFFIErrorSetRaised(void* error);
extern __attribute__((weak)) int TVMFFIObjectDecRef(void* obj);
}

namespace {

constexpr int kMaxWorkers = 255;

// Waiting (a worker for work, the caller for the shares workers hold) yields the CPU at every
// turn, as TVM's pool does. Spinning on the CPU's pause hint instead was slower under load:
// MobileNetV2 fp32 with a busy loop pinned to one of 2 CPUs took 6.6 ms a call against 3.7
// (the scheduler charges a spinning thread for its time, and a pool thread that shares a CPU
// then runs late when its share comes), and no faster on a quiet machine.
inline void Wait() { sched_yield(); }

inline int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

inline void FutexWait(std::atomic<uint32_t>* word, uint32_t expected) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

inline void FutexWakeAll(std::atomic<uint32_t>* word) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

struct Pool {
  // (generation << 32) | the next share to take: a share is taken by one compare-and-swap, and a
  // thread still holding an earlier generation's ticket can never take a share of this one
  std::atomic<uint64_t> ticket{0};
  std::atomic<uint32_t> generation{0};  // the launch in flight; workers sleep on it (futex)
  std::atomic<int> done{0};             // shares of this launch finished
  std::atomic<int> failed{0};
  std::atomic<int> sleepers{0};
  std::atomic<int> rest{0};    // another library's model runs: idle workers sleep at once
  std::atomic<int> active{0};  // threads (caller included) that take shares
  std::atomic<int> busy{0};    // a launch is in flight (one caller at a time)
  std::atomic<bool> stopping{false};
  std::atomic<void*> error{nullptr};  // the first error a worker's share raised (owned)
  // the job: written by the caller before the generation is published
  GraphpressParallelLambda job = nullptr;
  void* cdata = nullptr;
  GraphpressParallelEnv env{nullptr, 1};
  int shares = 0;
  // the workers; the mutex guards starting and stopping them
  pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
  pthread_t ids[kMaxWorkers];
  int workers = 0;
  int threads = 0;        // caller + workers wanted (0: not yet decided)
  int64_t spin_ns = -1;   // how long an idle worker keeps yielding before it sleeps (-1: not yet read)
};

Pool pool;
thread_local bool in_worker = false;

int DefaultThreads() {
  if (const char* s = std::getenv("TVM_NUM_THREADS")) {
    int n = std::atoi(s);
    if (n >= 1) return n;
  }
  cpu_set_t cpus;
  if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0) return CPU_COUNT(&cpus);
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n >= 1 ? static_cast<int>(n) : 1;
}

// A worker's share failed: its error (in this thread's TLS) kept for the caller, the first one only.
void KeepError() {
  if (TVMFFIErrorMoveFromRaised == nullptr) return;
  void* error = nullptr;
  TVMFFIErrorMoveFromRaised(&error);
  void* none = nullptr;
  if (error != nullptr && !pool.error.compare_exchange_strong(none, error) && TVMFFIObjectDecRef != nullptr) TVMFFIObjectDecRef(error);
}

// Take and run shares of launch `generation` until none is left; whether one of them failed.
bool RunShares(uint32_t generation) {
  bool failed = false;
  uint64_t t = pool.ticket.load(std::memory_order_acquire);
  for (;;) {
    if (static_cast<uint32_t>(t >> 32) != generation || static_cast<int>(static_cast<uint32_t>(t)) >= pool.shares) return failed;
    if (pool.ticket.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) {
      // after a failure this thread runs no more shares (the call fails; its first error stands)
      if (!failed && pool.job(static_cast<int>(static_cast<uint32_t>(t)), &pool.env, pool.cdata) != 0) {
        failed = true;
        pool.failed.store(1, std::memory_order_relaxed);
        if (in_worker) KeepError();
      }
      pool.done.fetch_add(1, std::memory_order_release);
      t = pool.ticket.load(std::memory_order_acquire);
    }
  }
}

struct WorkerArg {
  int index;       // 1.. (the caller is 0)
  uint32_t seen;   // the generation when it was started
};
WorkerArg worker_args[kMaxWorkers];

void* Work(void* raw) {
  in_worker = true;
  const WorkerArg arg = *static_cast<WorkerArg*>(raw);
  uint32_t seen = arg.seen;
  for (;;) {
    uint32_t g;
    int64_t deadline = -1;
    unsigned spins = 0;
    while ((g = pool.generation.load(std::memory_order_acquire)) == seen) {
      if (pool.stopping.load(std::memory_order_relaxed)) return nullptr;
      Wait();
      if (!pool.rest.load(std::memory_order_relaxed)) {
        if ((++spins & 63) != 0) continue;
        int64_t now = NowNs();
        if (deadline < 0) deadline = now + pool.spin_ns;
        if (now < deadline) continue;
      }
      pool.sleepers.fetch_add(1, std::memory_order_seq_cst);
      FutexWait(&pool.generation, seen);
      pool.sleepers.fetch_sub(1, std::memory_order_seq_cst);
      deadline = -1;
    }
    seen = g;
    if (pool.stopping.load(std::memory_order_relaxed)) return nullptr;
    if (arg.index < pool.active.load(std::memory_order_relaxed)) RunShares(g);
  }
}

void SetThreadsLocked(int n) {
  pool.threads = n < 1 ? 1 : n;
  if (pool.spin_ns < 0) {
    const char* s = std::getenv("GRAPHPRESS_SPIN_US");
    long us = s ? std::atol(s) : 2000;
    pool.spin_ns = (us < 0 ? 0 : us) * 1000;
  }
  int want = pool.threads - 1 < kMaxWorkers ? pool.threads - 1 : kMaxWorkers;
  while (pool.workers < want) {
    WorkerArg* arg = &worker_args[pool.workers];
    arg->index = pool.workers + 1;
    arg->seen = pool.generation.load(std::memory_order_acquire);
    if (pthread_create(&pool.ids[pool.workers], nullptr, Work, arg) != 0) break;  // fewer workers: the caller takes their shares
    ++pool.workers;
  }
}

void StopWorkers() {
  pthread_mutex_lock(&pool.lock);
  pool.stopping.store(true);
  pool.generation.fetch_add(1, std::memory_order_seq_cst);
  FutexWakeAll(&pool.generation);
  for (int i = 0; i < pool.workers; ++i) pthread_join(pool.ids[i], nullptr);
  pool.workers = 0;
  pool.stopping.store(false);
  pthread_mutex_unlock(&pool.lock);
}

// A forked child has the caller's thread only: its workers are started again on its first launch.
void AfterFork() {
  pthread_mutex_init(&pool.lock, nullptr);
  pool.workers = 0;
  pool.sleepers.store(0);
  pool.busy.store(0);
  pool.stopping.store(false);
}

__attribute__((constructor)) void RegisterFork() { pthread_atfork(nullptr, nullptr, AfterFork); }

// the library is being unloaded: its workers must not run its code any more
__attribute__((destructor)) void Unload() { StopWorkers(); }

int RunInline(GraphpressParallelLambda f, void* cdata) {
  GraphpressParallelEnv env{nullptr, 1};
  return f(0, &env, cdata);
}

int Launch(GraphpressParallelLambda f, void* cdata, int num_task) {
  // a launch from a worker, or while another thread's launch holds the pool: the whole loop here
  if (in_worker) return RunInline(f, cdata);
  int expected = 0;
  if (!pool.busy.compare_exchange_strong(expected, 1, std::memory_order_acquire)) return RunInline(f, cdata);
  pthread_mutex_lock(&pool.lock);
  if (pool.threads == 0 || pool.workers + 1 < pool.threads) SetThreadsLocked(pool.threads == 0 ? DefaultThreads() : pool.threads);
  int threads = pool.threads;
  pthread_mutex_unlock(&pool.lock);
  if (threads <= 1) {
    pool.busy.store(0, std::memory_order_release);
    return RunInline(f, cdata);
  }
  pool.job = f;
  pool.cdata = cdata;
  // one share per thread, as TVM's pool makes them: 2 or 4 per thread measured the same under a
  // busy CPU (MobileNetV2 int8, a busy loop pinned to one of 2 CPUs: 1.37 ms with 1, 1.38 with 2,
  // 1.34 with 4)
  pool.shares = num_task > 0 ? num_task : threads;
  pool.env.sync_handle = nullptr;
  pool.env.num_task = pool.shares;
  pool.done.store(0, std::memory_order_relaxed);
  pool.failed.store(0, std::memory_order_relaxed);
  pool.active.store(threads, std::memory_order_relaxed);
  pool.rest.store(0, std::memory_order_relaxed);
  uint32_t g = pool.generation.load(std::memory_order_relaxed) + 1;
  pool.ticket.store(static_cast<uint64_t>(g) << 32, std::memory_order_release);
  pool.generation.store(g, std::memory_order_seq_cst);
  if (pool.sleepers.load(std::memory_order_seq_cst) > 0) FutexWakeAll(&pool.generation);
  bool caller_failed = RunShares(g);
  // every share is taken now; wait only for those a worker is still running
  while (pool.done.load(std::memory_order_acquire) < pool.shares) Wait();
  int rc = pool.failed.load(std::memory_order_relaxed) ? -1 : 0;
  if (void* error = pool.error.exchange(nullptr)) {  // a worker's error, raised here (unless the caller has its own)
    if (!caller_failed && TVMFFIErrorSetRaised != nullptr) TVMFFIErrorSetRaised(error);  // takes a reference of its own
    if (TVMFFIObjectDecRef != nullptr) TVMFFIObjectDecRef(error);
  }
  pool.busy.store(0, std::memory_order_release);
  return rc;
}

}  // namespace

extern "C" {

// TVM's signature: int TVMBackendParallelLaunch(FTVMParallelLambda, void* cdata, int num_task)
__attribute__((visibility("hidden"))) int graphpress_parallel_launch(GraphpressParallelLambda f, void* cdata, int num_task) { return Launch(f, cdata, num_task); }

// Point this library's parallel loops at the launcher, with `threads` threads (0: TVM_NUM_THREADS,
// else the CPUs this process may use). 1 when installed, 0 when the library has no parallel loop.
int graphpress_parallel_install(int threads) {
  if (&__TVMBackendParallelLaunch == nullptr) return 0;
  pthread_mutex_lock(&pool.lock);
  if (threads > 0 || pool.threads == 0) SetThreadsLocked(threads > 0 ? threads : DefaultThreads());
  pthread_mutex_unlock(&pool.lock);
  __TVMBackendParallelLaunch = reinterpret_cast<void*>(&graphpress_parallel_launch);
  return 1;
}

// Threads the launcher runs a parallel loop on from now on (the caller included; at least 1).
void graphpress_parallel_set_threads(int threads) {
  pthread_mutex_lock(&pool.lock);
  SetThreadsLocked(threads);
  pthread_mutex_unlock(&pool.lock);
}

// Another library's model runs now (each library has a launcher of its own): this one's idle
// workers sleep at once instead of yielding for GRAPHPRESS_SPIN_US, which took CPU time from
// the other model's threads (MobileNetV2 fp32 and int8 called in turn on 2 CPUs: 3.46 ms a pair
// without this call, 3.09 with it). Its next launch wakes them.
void graphpress_parallel_rest(void) { pool.rest.store(1, std::memory_order_relaxed); }

// Idle workers asleep now (on the futex).
int graphpress_parallel_sleepers(void) { return pool.sleepers.load(std::memory_order_relaxed); }

// Threads a launch uses now (the caller included; 0 before the first launch or install).
int graphpress_parallel_threads(void) { return pool.threads; }

// 1 when this library's parallel loops run on the launcher, 0 when on TVM's thread pool.
int graphpress_parallel_installed(void) {
  return &__TVMBackendParallelLaunch != nullptr && __TVMBackendParallelLaunch == reinterpret_cast<void*>(&graphpress_parallel_launch);
}

}  // extern "C"
