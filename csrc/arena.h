// Arena: memory unification for one device.
//
// One byte buffer (a torch tensor on CPU or GPU) cut into slabs. The first
// slabs form the weight region of the model in place; the rest is the KV
// region, managed block by block by the SlabAllocator. Placing a model of
// another size moves the boundary: KV blocks in the way are relocated to free
// slabs when there is room, and otherwise reported so the caller can swap them
// out to host memory.
#pragma once

#include <ATen/core/Tensor.h>

#include <utility>
#include <vector>

#include "slab_allocator.h"

namespace aegaeon {

class ArenaTooSmallError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class Arena {
 public:
  Arena(int64_t total_bytes, int64_t slab_bytes, const c10::Device& device);

  // Reserves the first ceil(weight_bytes / slab_bytes) slabs for weights.
  // Returns the number of slabs still draining (0: the region is ready).
  int64_t reserve_weights(int64_t weight_bytes);
  // Moves every block it can out of draining slabs. Returns (old, new) pairs;
  // blocks that found no room stay where they are (see draining_handles).
  std::vector<std::pair<int64_t, int64_t>> relocate_draining();
  bool weights_ready() const;
  // A byte view of [offset, offset + nbytes) of the weight region.
  at::Tensor weight_bytes_view(int64_t offset, int64_t nbytes) const;

  // A byte view of the first nbytes of the resident run starting at first_slab
  // (claimed with allocator().claim_run); throws unless those slabs are resident.
  at::Tensor run_bytes_view(int64_t first_slab, int64_t nbytes) const;

  int64_t allocate_block(int64_t block_bytes) { return allocator_.allocate(block_bytes); }
  void free_block(int64_t handle) { allocator_.free(handle); }
  // A byte view of one live block.
  at::Tensor block_bytes_view(int64_t handle) const;

  const SlabAllocator& allocator() const { return allocator_; }
  SlabAllocator& allocator() { return allocator_; }
  const at::Tensor& buffer() const { return buffer_; }
  int64_t weight_bytes() const { return weight_bytes_; }
  int64_t total_bytes() const { return buffer_.numel(); }

 private:
  SlabAllocator allocator_;
  at::Tensor buffer_;
  int64_t weight_bytes_ = 0;
};

}  // namespace aegaeon
