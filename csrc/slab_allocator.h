// Slab allocator: bookkeeping for the KV region of an arena.
//
// The managed range [0, num_slabs * slab_bytes) is cut into fixed-size slabs.
// A slab serves blocks of exactly one size at a time (the bytes of one KV block
// of one model shape); when its last block is freed it returns to the pool, so
// models of different shapes share the range without external fragmentation
// beyond one partly used slab per shape.
//
// Handles are byte offsets into the managed range. The allocator never touches
// memory: the arena turns handles into tensor views.
//
// Costs: block alloc/free is O(1) while a slab of that size has room; taking a
// new slab from (or returning one to) the pool is O(log num_slabs) because free
// slabs are kept ordered, highest index first, so KV slabs gather at the end of
// the arena and the weight region at its start can grow.
//
// Slabs below the reservation boundary belong to the weight region. Growing the
// boundary over slabs that still hold blocks marks them "draining": they take
// no new blocks and join the weight region when their last block is freed.
//
// Resident runs: a contiguous run of free slabs above the boundary can be
// claimed for a model's weights kept in device memory (a resident model). Its
// slabs take no blocks until the run is released; the caller releases runs
// when KV needs the room (KV has priority) and before growing the weight
// region over them (that throws otherwise).
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace aegaeon {

// Raised when no slab can serve a request. The allocator state is unchanged.
class OutOfBlocksError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Raised for handles the allocator did not hand out (foreign, misaligned,
// already freed) and for bad sizes. The allocator state is unchanged.
class InvalidHandleError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

struct BlockSizeStats {
  int64_t block_bytes = 0;
  int64_t slabs = 0;            // slabs currently serving this size
  int64_t blocks_used = 0;      // allocated blocks of this size
  int64_t blocks_capacity = 0;  // blocks the slabs above can hold
};

struct AllocatorStats {
  int64_t slab_bytes = 0;
  int64_t num_slabs = 0;
  int64_t free_slabs = 0;      // in the pool, usable by any size
  int64_t reserved_slabs = 0;  // below the boundary and empty (weight region)
  int64_t draining_slabs = 0;  // below the boundary, still holding blocks
  int64_t resident_slabs = 0;  // in claimed runs (resident model weights)
  int64_t used_bytes = 0;      // sum of allocated block bytes
  // Bytes at the tail of assigned slabs that no block of their size can use.
  int64_t internal_fragmentation_bytes = 0;
  // Free blocks inside assigned slabs: held by one size, unusable by others.
  int64_t external_fragmentation_bytes = 0;
  std::vector<BlockSizeStats> per_block_size;  // sorted by block_bytes
};

class SlabAllocator {
 public:
  // num_slabs >= 1, slab_bytes >= 1.
  SlabAllocator(int64_t num_slabs, int64_t slab_bytes);

  // Returns the handle (byte offset) of a block of block_bytes bytes.
  // Throws InvalidHandleError for block_bytes <= 0 or > slab_bytes and
  // OutOfBlocksError when no slab has room.
  int64_t allocate(int64_t block_bytes);
  // Frees a handle returned by allocate. Throws InvalidHandleError for any
  // other handle, including one already freed.
  void free(int64_t handle);
  // Block size of a live handle; throws InvalidHandleError otherwise.
  int64_t block_bytes_of(int64_t handle) const;
  bool is_allocated(int64_t handle) const noexcept;

  // Moves the weight-region boundary to `num_slabs` slabs. Shrinking returns
  // slabs to the pool; growing takes free slabs and drains occupied ones.
  // Returns the number of slabs still draining (0 when the region is ready).
  int64_t set_reserved_slabs(int64_t num_slabs);
  int64_t reserved_boundary() const noexcept { return boundary_; }
  // Live handles in draining slabs: what must move or be swapped out before
  // the weight region is whole.
  std::vector<int64_t> draining_handles() const;
  // Live handles of one slab, in ascending order.
  std::vector<int64_t> handles_in_slab(int64_t slab) const;

  // Claims the lowest run of `num_slabs` contiguous free slabs for resident
  // weights and returns its first slab. Throws OutOfBlocksError when no such
  // run exists and InvalidHandleError for num_slabs < 1; the state is then
  // unchanged.
  int64_t claim_run(int64_t num_slabs);
  // Returns a run claimed by claim_run to the pool. Throws InvalidHandleError
  // unless [first_slab, first_slab + num_slabs) are all resident slabs.
  void release_run(int64_t first_slab, int64_t num_slabs);
  bool is_resident(int64_t slab) const noexcept;
  // Whether claim_run(num_slabs) would succeed once the resident runs `first_slabs[i]`,
  // `run_slabs[i]` were released (nothing changes): lets the caller evict only when
  // evicting can make a run, since KV blocks between runs can leave none.
  bool run_fits_after_release(int64_t num_slabs, const std::vector<int64_t>& first_slabs,
                              const std::vector<int64_t>& run_slabs) const;

  AllocatorStats stats() const;
  // Recomputes every counter from the per-slab state and throws
  // std::logic_error naming the first inconsistency.
  void check_integrity() const;

  int64_t num_slabs() const noexcept { return static_cast<int64_t>(slabs_.size()); }
  int64_t slab_bytes() const noexcept { return slab_bytes_; }

 private:
  static constexpr int32_t kNone = -1;

  enum class SlabState : uint8_t { kFree, kActive, kDraining, kReserved, kResident };

  struct SizeClass;

  struct Slab {
    SlabState state = SlabState::kFree;
    SizeClass* size_class = nullptr;  // stable: unordered_map never moves values
    int64_t block_bytes = 0;
    int32_t capacity = 0;    // blocks that fit
    int32_t used = 0;        // allocated blocks
    int32_t bump = 0;        // blocks never handed out start here
    int32_t prev = kNone;    // links in the size class's list of slabs with room
    int32_t next = kNone;
    bool in_partial_list = false;
    std::vector<int32_t> free_stack;  // freed block indices, LIFO
    std::vector<uint8_t> allocated;   // 1 per live block; all 0 when slab empty
  };

  struct SizeClass {
    int32_t head = kNone;  // slabs with room, most recently touched first
    int64_t slabs = 0;
    int64_t blocks_used = 0;
    int64_t blocks_capacity = 0;
  };

  void link_partial(SizeClass& sc, int32_t slab);
  void unlink_partial(SizeClass& sc, int32_t slab);
  int32_t take_free_slab();
  void assign_slab(int32_t slab, int64_t block_bytes, SizeClass& sc);
  void release_slab(int32_t slab);
  // Returns (slab, block index) of a live handle or throws.
  std::pair<int32_t, int32_t> locate(int64_t handle) const;

  int64_t slab_bytes_;
  int64_t boundary_ = 0;
  int64_t used_bytes_ = 0;
  std::vector<Slab> slabs_;
  std::set<int32_t> free_slabs_;
  std::unordered_map<int64_t, SizeClass> classes_;
};

}  // namespace aegaeon
