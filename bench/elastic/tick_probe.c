// A periodic task beside a busy process on the same core: how late does each frame finish?
//
//   cc -O2 -o /tmp/tick_probe bench/elastic/tick_probe.c
//   taskset -c 0 stress-ng --cpu 1 --timeout 60 &
//   taskset -c 0 /tmp/tick_probe SLICE_US WORK_MS FRAMES
//
// Every 33.3 ms (30 fps) the task wakes and burns WORK_MS of its own CPU time (measured with
// CLOCK_THREAD_CPUTIME_ID, so the work is the same whatever the contention), then records the
// time from its wake-up to the end of the work. SLICE_US > 0 first asks the kernel for that
// scheduling slice (sched_setattr's sched_runtime for SCHED_OTHER: kernels 6.12 and later, EEVDF;
// an older kernel ignores it). Prints the latency's p50/p90/p99/max and the share of frames
// finished within 1.2 x WORK_MS + 0.3 ms. The device's frames meet the same scheduler
// (docs/results/elastic/README.md, Contention).
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

struct sched_attr_v1 {
  uint32_t size, sched_policy;
  uint64_t sched_flags;
  int32_t sched_nice;
  uint32_t sched_priority;
  uint64_t sched_runtime, sched_deadline, sched_period;
  uint32_t sched_util_min, sched_util_max;
};

static double now_ms(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: tick_probe SLICE_US WORK_MS FRAMES (SLICE_US 0: the kernel's)\n");
    return 2;
  }
  const long slice_us = atol(argv[1]);
  const double work_ms = atof(argv[2]);
  const int n = atoi(argv[3]);
  if (slice_us < 0 || !(work_ms > 0) || n < 10) {
    fprintf(stderr, "tick_probe: SLICE_US >= 0, WORK_MS > 0 and FRAMES >= 10\n");
    return 2;
  }
  if (slice_us > 0) {
    struct sched_attr_v1 a;
    memset(&a, 0, sizeof a);
    a.size = sizeof a;
    a.sched_policy = SCHED_OTHER;
    a.sched_runtime = (uint64_t)slice_us * 1000;
    if (syscall(SYS_sched_setattr, 0, &a, 0) != 0) {
      perror("tick_probe: sched_setattr");
      return 1;
    }
  }
  double* late = malloc(sizeof(double) * (size_t)n);
  volatile double sink = 0;
  double next = now_ms(CLOCK_MONOTONIC) + 33.3;
  for (int i = 0; i < n; ++i) {
    struct timespec at = {(time_t)(next / 1e3), (long)((next - (time_t)(next / 1e3) * 1e3) * 1e6)};
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL);
    const double cpu0 = now_ms(CLOCK_THREAD_CPUTIME_ID);
    double x = 0;
    while (now_ms(CLOCK_THREAD_CPUTIME_ID) - cpu0 < work_ms) {
      for (int k = 0; k < 1000; ++k) x += k * 0.5;
    }
    sink = x;
    late[i] = now_ms(CLOCK_MONOTONIC) - next;
    next += 33.3;
  }
  (void)sink;
  qsort(late, (size_t)n, sizeof(double), by_value);
  int within = 0;
  for (int i = 0; i < n; ++i) within += late[i] <= 1.2 * work_ms + 0.3;
  printf("slice %ld us, work %.2f ms: latency p50 %.2f p90 %.2f p99 %.2f max %.2f ms; within "
         "1.2x + 0.3 ms: %.1f%%\n",
         slice_us, work_ms, late[n / 2], late[n * 9 / 10], late[n * 99 / 100], late[n - 1],
         100.0 * within / n);
  free(late);
  return 0;
}
