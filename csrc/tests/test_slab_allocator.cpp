// C++-level tests of the slab allocator, built and run by
// tests/csrc/test_cpp_binary.py (g++ -std=c++17, no torch needed).
// Prints "N passed, 0 failed" and exits 0 when every check holds.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "../slab_allocator.h"

using aegaeon::InvalidHandleError;
using aegaeon::OutOfBlocksError;
using aegaeon::SlabAllocator;

static int passed = 0;
static int failed = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (cond) {                                                            \
      ++passed;                                                            \
    } else {                                                               \
      ++failed;                                                            \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

template <typename Error, typename Fn>
static bool throws(Fn fn) {
  try {
    fn();
  } catch (const Error&) {
    return true;
  }
  return false;
}

static void test_one_size_per_slab() {
  SlabAllocator a(4, 1000);
  int64_t h1 = a.allocate(100);
  int64_t h2 = a.allocate(300);
  CHECK(h1 / 1000 != h2 / 1000);  // different sizes never share a slab
  CHECK(a.stats().per_block_size.size() == 2);
  a.free(h2);
  CHECK(a.stats().free_slabs == 3);  // the emptied slab went back
  a.free(h1);
  CHECK(a.stats().free_slabs == 4);
  a.check_integrity();
}

static void test_exhaustion_leaves_state_intact() {
  SlabAllocator a(2, 1000);
  std::vector<int64_t> hs;
  for (int i = 0; i < 20; ++i) hs.push_back(a.allocate(100));
  const auto before = a.stats();
  CHECK(throws<OutOfBlocksError>([&] { a.allocate(100); }));
  CHECK(throws<OutOfBlocksError>([&] { a.allocate(7); }));
  CHECK(a.stats().used_bytes == before.used_bytes);
  a.check_integrity();
  for (int64_t h : hs) a.free(h);
  CHECK(a.stats().free_slabs == 2);
}

static void test_bad_handles_rejected() {
  SlabAllocator a(2, 1000);
  int64_t h = a.allocate(100);
  CHECK(throws<InvalidHandleError>([&] { a.free(h + 1); }));     // misaligned
  CHECK(throws<InvalidHandleError>([&] { a.free(-5); }));        // out of range
  CHECK(throws<InvalidHandleError>([&] { a.free(5000); }));      // out of range
  CHECK(throws<InvalidHandleError>([&] { a.free(h + 200); }));   // never handed out
  CHECK(throws<InvalidHandleError>([&] { a.allocate(0); }));
  CHECK(throws<InvalidHandleError>([&] { a.allocate(1001); }));
  a.free(h);
  CHECK(throws<InvalidHandleError>([&] { a.free(h); }));         // double free
  a.check_integrity();
}

static void test_reservation_drains_and_releases() {
  SlabAllocator a(4, 1000);
  std::vector<int64_t> hs;
  for (int i = 0; i < 40; ++i) hs.push_back(a.allocate(100));  // fills all four slabs
  CHECK(a.set_reserved_slabs(2) == 2);
  CHECK(a.draining_handles().size() == 20);
  for (int64_t h : a.draining_handles()) a.free(h);
  CHECK(a.stats().reserved_slabs == 2);
  CHECK(a.stats().draining_slabs == 0);
  CHECK(a.set_reserved_slabs(0) == 0);
  CHECK(a.stats().free_slabs == 2);
  a.check_integrity();
}

static void test_random_operations() {
  for (unsigned seed = 0; seed < 5; ++seed) {
    std::mt19937_64 rng(seed);
    SlabAllocator a(16, 4096);
    const int64_t sizes[] = {64, 96, 1000, 4096};
    std::vector<int64_t> live;
    std::set<int64_t> unique;
    for (int op = 0; op < 20000; ++op) {
      if (!live.empty() && rng() % 2) {
        size_t i = rng() % live.size();
        a.free(live[i]);
        unique.erase(live[i]);
        live[i] = live.back();
        live.pop_back();
      } else {
        try {
          int64_t h = a.allocate(sizes[rng() % 4]);
          CHECK(unique.insert(h).second);
          live.push_back(h);
        } catch (const OutOfBlocksError&) {
        }
      }
      if (op % 997 == 0) a.check_integrity();
    }
    a.check_integrity();
    CHECK(static_cast<int64_t>(live.size()) ==
          [&] { int64_t n = 0; for (auto& s : a.stats().per_block_size) n += s.blocks_used; return n; }());
  }
}

static void test_resident_runs() {
  SlabAllocator a(8, 1024);
  const int64_t top = a.allocate(512);  // KV takes the highest slab
  CHECK(top / 1024 == 7);
  const int64_t run = a.claim_run(3);  // runs take the lowest
  CHECK(run == 0);
  CHECK(a.is_resident(0) && a.is_resident(2) && !a.is_resident(3));
  CHECK(a.stats().resident_slabs == 3 && a.stats().free_slabs == 4);
  CHECK(throws<OutOfBlocksError>([&] { a.claim_run(5); }));  // only 4 free (3-6)
  CHECK(!a.run_fits_after_release(5, {}, {}));
  CHECK(a.run_fits_after_release(7, {0}, {3}));  // 0-6; slab 7 holds KV
  CHECK(!a.run_fits_after_release(8, {0}, {3}));
  CHECK(a.stats().resident_slabs == 3);  // nothing released
  CHECK(a.claim_run(4) == 3);
  CHECK(throws<OutOfBlocksError>([&] { a.allocate(512); a.allocate(512); }));  // slab 7 has 2 blocks
  CHECK(throws<InvalidHandleError>([&] { a.set_reserved_slabs(1); }));  // a run is in the way
  CHECK(a.reserved_boundary() == 0);
  a.release_run(0, 3);
  CHECK(throws<InvalidHandleError>([&] { a.release_run(0, 3); }));
  CHECK(a.set_reserved_slabs(2) == 0);
  a.check_integrity();
}

int main() {
  test_one_size_per_slab();
  test_exhaustion_leaves_state_intact();
  test_bad_handles_rejected();
  test_reservation_drains_and_releases();
  test_random_operations();
  test_resident_runs();
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
