// A small persistent thread pool for the CPU kernels.
// Why not OpenMP: torch wheels ship their own OpenMP runtime; a second one in the same process
// oversubscribes cores and can deadlock after fork. Plain std::thread avoids both.
#pragma once

#include <cstdint>
#include <functional>

namespace deformdetr {

// Calls fn(begin, end) over [0, n) split into contiguous chunks of at least `grain` items, on at
// most `num_threads` threads (the calling thread included). num_threads <= 0 means all hardware
// threads, and so does a larger number. Blocks until every chunk is done; the first exception
// thrown by fn is rethrown.
void parallel_for(int64_t n, int64_t grain, int num_threads,
                  const std::function<void(int64_t, int64_t)>& fn);

int hardware_threads();

// The threads parallel_for really uses for a request of num_threads: all hardware threads for
// num_threads <= 0, and at most that many.
int usable_threads(int num_threads);

}  // namespace deformdetr
