// ClientTable: the per-device in-flight limit, and which devices count as gone after a monitor's
// disconnect event or a failed reply, with file descriptors reused across connections.
#include <doctest/doctest.h>

#include "server/client_table.h"

using namespace edgesplit::server;

TEST_CASE("in-flight slots per device and the entry goes when all are released") {
  ClientTable t;
  auto a1 = t.try_acquire("a", 7, 2);
  auto a2 = t.try_acquire("a", 7, 2);
  REQUIRE(static_cast<bool>(a1));
  REQUIRE(static_cast<bool>(a2));
  CHECK(a1.get() == a2.get());  // one flag per device
  CHECK(!t.try_acquire("a", 7, 2));
  CHECK(static_cast<bool>(t.try_acquire("b", 8, 2)));  // others are not affected
  CHECK(t.in_flight("a") == 2);
  t.release("a");
  CHECK(static_cast<bool>(t.try_acquire("a", 7, 2)));
  t.release("a");
  t.release("a");
  CHECK(!t.knows("a"));
  t.release("a");  // releasing an unknown device is harmless
  CHECK(t.size() == 1);
}

TEST_CASE("a disconnect marks the devices of that connection only") {
  ClientTable t;
  t.on_accepted(5);
  t.on_accepted(6);
  auto a = t.try_acquire("a", 5, 4);
  auto b = t.try_acquire("b", 6, 4);
  CHECK(t.on_disconnected(5) == 1);
  CHECK(a->load());
  CHECK(!b->load());
  CHECK(t.on_disconnected(5) == 0);  // already marked
}

TEST_CASE("a reused descriptor does not mark the new connection's device") {
  ClientTable t;
  t.on_accepted(5);
  auto a = t.try_acquire("a", 5, 4);
  // The old connection on fd 5 closes and a new one is accepted on the same number; the new
  // device's first message is read after both events were drained.
  CHECK(t.on_disconnected(5) == 1);
  t.on_accepted(5);
  auto c = t.try_acquire("c", 5, 4);
  CHECK(a->load());
  CHECK(!c->load());
  // A late second disconnect event for fd 5 belongs to c's connection.
  CHECK(t.on_disconnected(5) == 1);
  CHECK(c->load());
}

TEST_CASE("mark_gone after an unroutable reply") {
  ClientTable t;
  auto a = t.try_acquire("a", -1, 4);
  CHECK(t.mark_gone("a"));
  CHECK(a->load());
  CHECK(!t.mark_gone("zzz"));
}

TEST_CASE("connections with the same authenticated key share one in-flight limit") {
  ClientTable t;
  // Three connections of one device (one CURVE key), limit 2: two slots in all.
  CHECK(static_cast<bool>(t.try_acquire("conn-a", 5, 2, "KEY1")));
  CHECK(static_cast<bool>(t.try_acquire("conn-b", 6, 2, "KEY1")));
  CHECK_FALSE(static_cast<bool>(t.try_acquire("conn-c", 7, 2, "KEY1")));
  CHECK(t.key_in_flight("KEY1") == 2);
  // Another key, and a connection without one, keep their own limits.
  CHECK(static_cast<bool>(t.try_acquire("conn-d", 8, 2, "KEY2")));
  CHECK(static_cast<bool>(t.try_acquire("conn-e", 9, 2)));
  CHECK(static_cast<bool>(t.try_acquire("conn-e", 9, 2)));
  // A released slot is free again for any connection of that key.
  t.release("conn-a");
  CHECK(t.key_in_flight("KEY1") == 1);
  CHECK(static_cast<bool>(t.try_acquire("conn-c", 7, 2, "KEY1")));
  t.release("conn-b");
  t.release("conn-c");
  CHECK(t.key_in_flight("KEY1") == 0);
}
