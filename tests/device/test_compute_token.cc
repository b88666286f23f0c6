// The compute token grants one network at a time: by priority, then earliest deadline, then
// arrival.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "device/compute_token.h"

using namespace edgesplit::device;
using Clock = std::chrono::steady_clock;

TEST_CASE("compute token: waiters run by priority, then deadline, one at a time") {
  ComputeToken token;
  std::mutex mu;
  std::vector<int> order;
  std::atomic<int> inside{0};
  std::atomic<int> most_inside{0};
  const auto now = Clock::now();
  auto at = [&](int ms) { return now + std::chrono::milliseconds(ms); };
  std::vector<std::thread> threads;
  {
    // Hold the token while the others queue up, so the order is decided among all of them.
    ComputeToken::Hold first(token, 0, at(0));
    struct Job {
      int id, priority, deadline_ms;
    };
    for (Job j : {Job{1, 0, 50}, Job{2, 2, 90}, Job{3, 0, 10}, Job{4, 2, 30}, Job{5, 1, 5}}) {
      threads.emplace_back([&, j] {
        ComputeToken::Hold hold(token, j.priority, at(j.deadline_ms));
        const int n = ++inside;
        int seen = most_inside.load();
        while (n > seen && !most_inside.compare_exchange_weak(seen, n)) {
        }
        {
          std::lock_guard<std::mutex> lock(mu);
          order.push_back(j.id);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
        --inside;
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  for (auto& t : threads) t.join();
  CHECK(order == std::vector<int>{4, 2, 5, 3, 1});
  CHECK(most_inside.load() == 1);
}
