#include "deformdetr/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace deformdetr {

namespace {

// One job at a time: workers pull chunk indices from a shared counter. Callers are serialised by
// job_mutex, so concurrent Python threads calling kernels simply take turns on the pool.
class ThreadPool {
 public:
  // Leaked on purpose: detached workers must never see a destroyed pool at exit. After fork()
  // the child has none of the parent's threads, so it starts from a fresh pool.
  static ThreadPool& instance() {
    static bool registered = [] {
      pthread_atfork(nullptr, nullptr, [] { pool_ = nullptr; });
      return true;
    }();
    (void)registered;
    static std::mutex creation_mutex;
    std::lock_guard<std::mutex> lock(creation_mutex);
    if (pool_ == nullptr) pool_ = new ThreadPool();
    return *pool_;
  }

  void run(int64_t num_chunks, int num_threads, const std::function<void(int64_t)>& chunk_fn) {
    std::lock_guard<std::mutex> job_lock(job_mutex_);
    ensure_workers(num_threads - 1);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      chunk_fn_ = &chunk_fn;
      num_chunks_ = num_chunks;
      next_chunk_.store(0);
      pending_chunks_ = num_chunks;
      error_ = nullptr;
      active_workers_ = std::min<int64_t>(num_threads - 1, (int64_t)workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    work_on_chunks(true);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_chunks_ == 0 && running_workers_ == 0; });
    chunk_fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void ensure_workers(int wanted) {
    while ((int)workers_.size() < wanted) {
      int index = (int)workers_.size();
      workers_.emplace_back([this, index] { worker_loop(index); });
      workers_.back().detach();
    }
  }

  void worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (index >= active_workers_ || chunk_fn_ == nullptr) continue;
        ++running_workers_;
      }
      work_on_chunks(false);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --running_workers_;
      }
      done_.notify_all();
    }
  }

  void work_on_chunks(bool /*is_caller*/) {
    for (;;) {
      int64_t chunk = next_chunk_.fetch_add(1);
      if (chunk >= num_chunks_) return;
      try {
        (*chunk_fn_)(chunk);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
      bool last;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        last = (--pending_chunks_ == 0);
      }
      if (last) done_.notify_all();
    }
  }

  std::mutex job_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::vector<std::thread> workers_;
  const std::function<void(int64_t)>* chunk_fn_ = nullptr;
  int64_t num_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  int64_t pending_chunks_ = 0;
  int running_workers_ = 0;
  int64_t active_workers_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;
  static ThreadPool* pool_;
};

ThreadPool* ThreadPool::pool_ = nullptr;

}  // namespace

int hardware_threads() {
  unsigned n = std::thread::hardware_concurrency();
  return n == 0 ? 1 : (int)n;
}

int usable_threads(int num_threads) {
  // More threads than hardware threads never speed these kernels up, and pool threads live as
  // long as the process: a request for thousands must not create thousands.
  const int available = hardware_threads();
  return num_threads <= 0 || num_threads > available ? available : num_threads;
}

void parallel_for(int64_t n, int64_t grain, int num_threads,
                  const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  num_threads = usable_threads(num_threads);
  grain = std::max<int64_t>(grain, 1);
  int64_t max_chunks_by_grain = (n + grain - 1) / grain;
  int threads = (int)std::min<int64_t>(num_threads, max_chunks_by_grain);
  if (threads <= 1) {
    fn(0, n);
    return;
  }
  // A few chunks per thread balance uneven work (e.g. queries near padded borders).
  int64_t num_chunks = std::min<int64_t>(max_chunks_by_grain, (int64_t)threads * 4);
  int64_t chunk_size = (n + num_chunks - 1) / num_chunks;
  num_chunks = (n + chunk_size - 1) / chunk_size;
  ThreadPool::instance().run(num_chunks, threads, [&](int64_t chunk) {
    int64_t begin = chunk * chunk_size;
    fn(begin, std::min(n, begin + chunk_size));
  });
}

}  // namespace deformdetr
