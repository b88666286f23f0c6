// MemoryBudget: reservations within the limit, leases that give their bytes back however they end
// (destroyed, moved, released early), concurrent reservations never past the limit; receive_hwm.
#include <doctest/doctest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "server/memory_budget.h"

using edgesplit::server::MemoryBudget;
using edgesplit::server::receive_hwm;

TEST_CASE("memory budget: reservations fit the limit and leases give the bytes back") {
  MemoryBudget budget(100);
  auto a = budget.try_reserve(60);
  REQUIRE(a.has_value());
  CHECK(a->bytes() == 60);
  CHECK(budget.used() == 60);
  CHECK_FALSE(budget.try_reserve(41).has_value());  // 101 would pass the limit
  CHECK(budget.used() == 60);
  {
    auto b = budget.try_reserve(40);  // exactly up to the limit
    REQUIRE(b.has_value());
    CHECK(budget.used() == 100);
    CHECK_FALSE(budget.try_reserve(1).has_value());
  }
  CHECK(budget.used() == 60);
  MemoryBudget::Lease moved = std::move(*a);
  CHECK(a->bytes() == 0);
  a.reset();  // the moved-from lease gives nothing back
  CHECK(budget.used() == 60);
  moved.release();
  CHECK(budget.used() == 0);
  moved.release();  // twice is harmless
  CHECK(budget.used() == 0);
  CHECK_FALSE(budget.try_reserve(101).has_value());
  CHECK(budget.try_reserve(0).has_value());
}

TEST_CASE("memory budget: a lease assigned over another gives the old bytes back") {
  MemoryBudget budget(100);
  auto a = budget.try_reserve(30);
  auto b = budget.try_reserve(50);
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  *a = std::move(*b);
  CHECK(budget.used() == 50);
  CHECK(a->bytes() == 50);
}

TEST_CASE("memory budget: concurrent reservations never pass the limit") {
  MemoryBudget budget(1000);
  std::atomic<size_t> peak{0};
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 20000; ++i) {
        auto lease = budget.try_reserve(static_cast<size_t>(1 + (i * 37) % 300));
        const size_t used = budget.used();
        if (used > budget.limit()) over.store(true);
        size_t p = peak.load();
        while (used > p && !peak.compare_exchange_weak(p, used)) {
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK_FALSE(over.load());
  CHECK(budget.used() == 0);
  CHECK(peak.load() <= 1000);
}

TEST_CASE("receive_hwm: whole messages of one connection stay within the budget") {
  const size_t mib = size_t{1} << 20;
  CHECK(receive_hwm(1000, 256 * mib, 64 * mib) == 4);
  CHECK(receive_hwm(1000, 64 * mib, 8 * mib) == 8);
  CHECK(receive_hwm(2, 256 * mib, 1 * mib) == 2);     // a lower setting stays
  CHECK(receive_hwm(1000, 64 * mib, 64 * mib) == 1);  // at least one message
  CHECK(receive_hwm(1000, 1 * mib, 64 * mib) == 1);
  CHECK(receive_hwm(0, 256 * mib, 1 * mib) == 1);
  CHECK(receive_hwm(1000, size_t{1} << 40, 1 * mib) == 1000);
}
