#include "arena.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <sstream>

namespace aegaeon {

namespace {

int64_t checked_slab_count(int64_t total_bytes, int64_t slab_bytes) {
  if (slab_bytes < 1 || total_bytes < slab_bytes) {
    std::ostringstream msg;
    msg << "arena of " << total_bytes << " bytes cannot hold one slab of " << slab_bytes
        << " bytes: give a larger arena or smaller slabs";
    throw ArenaTooSmallError(msg.str());
  }
  return total_bytes / slab_bytes;
}

}  // namespace

Arena::Arena(int64_t total_bytes, int64_t slab_bytes, const c10::Device& device)
    : allocator_(checked_slab_count(total_bytes, slab_bytes), slab_bytes),
      buffer_(at::empty({allocator_.num_slabs() * slab_bytes},
                           at::TensorOptions().dtype(at::kByte).device(device))) {}

int64_t Arena::reserve_weights(int64_t weight_bytes) {
  const int64_t slab = allocator_.slab_bytes();
  if (weight_bytes < 0 || weight_bytes > total_bytes()) {
    std::ostringstream msg;
    msg << "weights of " << weight_bytes << " bytes do not fit the arena of " << total_bytes()
        << " bytes: give the device a larger arena or place a smaller model";
    throw ArenaTooSmallError(msg.str());
  }
  const int64_t draining = allocator_.set_reserved_slabs((weight_bytes + slab - 1) / slab);
  weight_bytes_ = weight_bytes;
  return draining;
}

std::vector<std::pair<int64_t, int64_t>> Arena::relocate_draining() {
  std::vector<std::pair<int64_t, int64_t>> moved;
  for (int64_t old_handle : allocator_.draining_handles()) {
    const int64_t nbytes = allocator_.block_bytes_of(old_handle);
    int64_t new_handle;
    try {
      new_handle = allocator_.allocate(nbytes);
    } catch (const OutOfBlocksError&) {
      break;  // the rest must be swapped out by the caller
    }
    buffer_.narrow(0, new_handle, nbytes).copy_(buffer_.narrow(0, old_handle, nbytes));
    allocator_.free(old_handle);
    moved.emplace_back(old_handle, new_handle);
  }
  return moved;
}

bool Arena::weights_ready() const { return allocator_.stats().draining_slabs == 0; }

at::Tensor Arena::weight_bytes_view(int64_t offset, int64_t nbytes) const {
  if (offset < 0 || nbytes < 0 || offset + nbytes > weight_bytes_) {
    std::ostringstream msg;
    msg << "weight view [" << offset << ", " << offset + nbytes << ") is outside the weight region of "
        << weight_bytes_ << " bytes";
    throw std::out_of_range(msg.str());
  }
  if (!weights_ready()) {
    throw std::runtime_error("the weight region still overlaps live KV blocks: relocate or swap them out first");
  }
  return buffer_.narrow(0, offset, nbytes);
}

at::Tensor Arena::run_bytes_view(int64_t first_slab, int64_t nbytes) const {
  const int64_t slab = allocator_.slab_bytes();
  const int64_t slabs = (nbytes + slab - 1) / slab;
  for (int64_t j = first_slab; j < first_slab + std::max<int64_t>(slabs, 1); ++j) {
    if (!allocator_.is_resident(j)) {
      std::ostringstream msg;
      msg << "run view [slab " << first_slab << ", " << nbytes << " bytes): slab " << j
          << " is not resident (claim the run first)";
      throw std::out_of_range(msg.str());
    }
  }
  return buffer_.narrow(0, first_slab * slab, nbytes);
}

at::Tensor Arena::block_bytes_view(int64_t handle) const {
  return buffer_.narrow(0, handle, allocator_.block_bytes_of(handle));
}

}  // namespace aegaeon
