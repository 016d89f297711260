#include "slab_allocator.h"

#include <algorithm>
#include <sstream>

namespace aegaeon {

namespace {

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

}  // namespace

SlabAllocator::SlabAllocator(int64_t num_slabs, int64_t slab_bytes) : slab_bytes_(slab_bytes) {
  if (num_slabs < 1 || num_slabs > INT32_MAX) {
    throw InvalidHandleError(concat("num_slabs=", num_slabs, " is invalid: it must be between 1 and ", INT32_MAX));
  }
  if (slab_bytes < 1) {
    throw InvalidHandleError(concat("slab_bytes=", slab_bytes, " is invalid: it must be at least 1"));
  }
  slabs_.resize(static_cast<size_t>(num_slabs));
  for (int32_t i = 0; i < static_cast<int32_t>(num_slabs); ++i) free_slabs_.insert(i);
}

void SlabAllocator::link_partial(SizeClass& sc, int32_t slab) {
  Slab& s = slabs_[slab];
  s.prev = kNone;
  s.next = sc.head;
  if (sc.head != kNone) slabs_[sc.head].prev = slab;
  sc.head = slab;
  s.in_partial_list = true;
}

void SlabAllocator::unlink_partial(SizeClass& sc, int32_t slab) {
  Slab& s = slabs_[slab];
  if (!s.in_partial_list) return;
  if (s.prev != kNone) slabs_[s.prev].next = s.next; else sc.head = s.next;
  if (s.next != kNone) slabs_[s.next].prev = s.prev;
  s.prev = s.next = kNone;
  s.in_partial_list = false;
}

int32_t SlabAllocator::take_free_slab() {
  auto highest = std::prev(free_slabs_.end());
  int32_t slab = *highest;
  free_slabs_.erase(highest);
  return slab;
}

void SlabAllocator::assign_slab(int32_t slab, int64_t block_bytes, SizeClass& sc) {
  Slab& s = slabs_[slab];
  s.state = SlabState::kActive;
  s.size_class = &sc;
  s.block_bytes = block_bytes;
  s.capacity = static_cast<int32_t>(slab_bytes_ / block_bytes);
  s.used = 0;
  s.bump = 0;
  s.free_stack.clear();
  // Entries are all 0 while a slab is empty, so growing is the only cost.
  if (s.allocated.size() < static_cast<size_t>(s.capacity)) s.allocated.resize(s.capacity, 0);
  sc.slabs += 1;
  sc.blocks_capacity += s.capacity;
}

void SlabAllocator::release_slab(int32_t slab) {
  Slab& s = slabs_[slab];
  SizeClass& sc = *s.size_class;
  sc.slabs -= 1;
  sc.blocks_capacity -= s.capacity;
  const bool below_boundary = slab < boundary_;
  s.state = below_boundary ? SlabState::kReserved : SlabState::kFree;
  s.size_class = nullptr;
  s.block_bytes = 0;
  s.capacity = 0;
  s.bump = 0;
  s.free_stack.clear();
  if (!below_boundary) free_slabs_.insert(slab);
}

int64_t SlabAllocator::allocate(int64_t block_bytes) {
  if (block_bytes < 1 || block_bytes > slab_bytes_) {
    throw InvalidHandleError(concat("block size ", block_bytes, " bytes is invalid: it must be between 1 and the slab size ",
                                    slab_bytes_, " bytes"));
  }
  SizeClass& sc = classes_[block_bytes];
  int32_t slab = sc.head;
  if (slab == kNone) {
    if (free_slabs_.empty()) {
      throw OutOfBlocksError(concat("no room for a block of ", block_bytes, " bytes: all ", slabs_.size(),
                                    " slabs of ", slab_bytes_, " bytes are in use (", boundary_,
                                    " by the weight region); free or swap out KV blocks first"));
    }
    slab = take_free_slab();
    assign_slab(slab, block_bytes, sc);
    link_partial(sc, slab);
  }
  Slab& s = slabs_[slab];
  int32_t index;
  if (!s.free_stack.empty()) {
    index = s.free_stack.back();
    s.free_stack.pop_back();
  } else {
    index = s.bump++;
  }
  s.allocated[index] = 1;
  s.used += 1;
  sc.blocks_used += 1;
  used_bytes_ += block_bytes;
  if (s.used == s.capacity) unlink_partial(sc, slab);
  return static_cast<int64_t>(slab) * slab_bytes_ + static_cast<int64_t>(index) * block_bytes;
}

std::pair<int32_t, int32_t> SlabAllocator::locate(int64_t handle) const {
  const int64_t limit = static_cast<int64_t>(slabs_.size()) * slab_bytes_;
  if (handle < 0 || handle >= limit) {
    throw InvalidHandleError(concat("handle ", handle, " is outside the managed range [0, ", limit, ")"));
  }
  const auto slab = static_cast<int32_t>(handle / slab_bytes_);
  const Slab& s = slabs_[slab];
  if (s.state != SlabState::kActive && s.state != SlabState::kDraining) {
    throw InvalidHandleError(concat("handle ", handle, " points into slab ", slab,
                                    ", which holds no KV blocks (free or weight region)"));
  }
  const int64_t offset = handle % slab_bytes_;
  if (offset % s.block_bytes != 0 || offset / s.block_bytes >= s.capacity) {
    throw InvalidHandleError(concat("handle ", handle, " is not at a block boundary of slab ", slab, " (blocks of ",
                                    s.block_bytes, " bytes)"));
  }
  const auto index = static_cast<int32_t>(offset / s.block_bytes);
  if (!s.allocated[index]) {
    throw InvalidHandleError(concat("handle ", handle, " is not allocated (double free or stale handle)"));
  }
  return {slab, index};
}

void SlabAllocator::free(int64_t handle) {
  const auto [slab, index] = locate(handle);
  Slab& s = slabs_[slab];
  SizeClass& sc = *s.size_class;
  s.allocated[index] = 0;
  s.used -= 1;
  s.free_stack.push_back(index);
  sc.blocks_used -= 1;
  used_bytes_ -= s.block_bytes;
  if (s.used == 0) {
    unlink_partial(sc, slab);
    release_slab(slab);
  } else if (s.state == SlabState::kActive && !s.in_partial_list) {
    link_partial(sc, slab);
  }
}

int64_t SlabAllocator::block_bytes_of(int64_t handle) const {
  return slabs_[locate(handle).first].block_bytes;
}

bool SlabAllocator::is_allocated(int64_t handle) const noexcept {
  try {
    locate(handle);
    return true;
  } catch (const InvalidHandleError&) {
    return false;
  }
}

int64_t SlabAllocator::set_reserved_slabs(int64_t num_slabs) {
  if (num_slabs < 0 || num_slabs > static_cast<int64_t>(slabs_.size())) {
    throw InvalidHandleError(concat("weight region of ", num_slabs, " slabs is invalid: the arena has ", slabs_.size(),
                                    " slabs"));
  }
  const auto target = static_cast<int32_t>(num_slabs);
  for (int32_t i = static_cast<int32_t>(boundary_); i < target; ++i) {  // checked before any change
    if (slabs_[i].state == SlabState::kResident) {
      throw InvalidHandleError(concat("weight region of ", num_slabs, " slabs would cover slab ", i,
                                      ", which holds resident weights: release that run first"));
    }
  }
  for (int32_t i = target; i < boundary_; ++i) {  // shrinking
    Slab& s = slabs_[i];
    if (s.state == SlabState::kReserved) {
      s.state = SlabState::kFree;
      free_slabs_.insert(i);
    } else if (s.state == SlabState::kDraining) {
      s.state = SlabState::kActive;
      if (s.used < s.capacity) link_partial(*s.size_class, i);
    }
  }
  for (int32_t i = static_cast<int32_t>(boundary_); i < target; ++i) {  // growing
    Slab& s = slabs_[i];
    if (s.state == SlabState::kFree) {
      s.state = SlabState::kReserved;
      free_slabs_.erase(i);
    } else if (s.state == SlabState::kActive) {
      unlink_partial(*s.size_class, i);
      s.state = SlabState::kDraining;
    }
  }
  boundary_ = target;
  int64_t draining = 0;
  for (int32_t i = 0; i < target; ++i) draining += slabs_[i].state == SlabState::kDraining;
  return draining;
}

int64_t SlabAllocator::claim_run(int64_t num_slabs) {
  if (num_slabs < 1 || num_slabs > static_cast<int64_t>(slabs_.size())) {
    throw InvalidHandleError(concat("a resident run of ", num_slabs, " slabs is invalid: the arena has ",
                                    slabs_.size(), " slabs"));
  }
  // first fit from the lowest free slab: KV takes the highest ones, so runs and KV meet last
  int32_t start = kNone;
  int32_t previous = kNone;
  for (int32_t i : free_slabs_) {  // ascending
    if (start == kNone || i != previous + 1) start = i;
    previous = i;
    if (i - start + 1 == num_slabs) {
      for (int32_t j = start; j <= i; ++j) {
        slabs_[j].state = SlabState::kResident;
        free_slabs_.erase(j);
      }
      return start;
    }
  }
  throw OutOfBlocksError(concat("no run of ", num_slabs, " contiguous free slabs for resident weights"));
}

bool SlabAllocator::run_fits_after_release(int64_t num_slabs, const std::vector<int64_t>& first_slabs,
                                           const std::vector<int64_t>& run_slabs) const {
  if (first_slabs.size() != run_slabs.size()) {
    throw InvalidHandleError(concat("run_fits_after_release: ", first_slabs.size(), " first slabs for ",
                                    run_slabs.size(), " run lengths"));
  }
  if (num_slabs < 1) return false;
  std::vector<char> released(slabs_.size(), 0);
  for (size_t r = 0; r < first_slabs.size(); ++r) {
    const int64_t end = std::min<int64_t>(first_slabs[r] + run_slabs[r], static_cast<int64_t>(slabs_.size()));
    for (int64_t j = std::max<int64_t>(first_slabs[r], 0); j < end; ++j) {
      released[j] = slabs_[j].state == SlabState::kResident;
    }
  }
  int64_t length = 0;
  for (size_t j = 0; j < slabs_.size(); ++j) {
    const bool free = slabs_[j].state == SlabState::kFree || released[j];
    length = free ? length + 1 : 0;
    if (length == num_slabs) return true;
  }
  return false;
}

void SlabAllocator::release_run(int64_t first_slab, int64_t num_slabs) {
  if (num_slabs < 1 || first_slab < 0 || first_slab + num_slabs > static_cast<int64_t>(slabs_.size())) {
    throw InvalidHandleError(concat("run [", first_slab, ", ", first_slab + num_slabs, ") is outside the arena of ",
                                    slabs_.size(), " slabs"));
  }
  for (int64_t j = first_slab; j < first_slab + num_slabs; ++j) {
    if (slabs_[j].state != SlabState::kResident) {
      throw InvalidHandleError(concat("slab ", j, " of run [", first_slab, ", ", first_slab + num_slabs,
                                      ") is not resident: it was never claimed or is already released"));
    }
  }
  for (int64_t j = first_slab; j < first_slab + num_slabs; ++j) {
    slabs_[j].state = SlabState::kFree;
    free_slabs_.insert(static_cast<int32_t>(j));
  }
}

bool SlabAllocator::is_resident(int64_t slab) const noexcept {
  return slab >= 0 && slab < static_cast<int64_t>(slabs_.size()) && slabs_[slab].state == SlabState::kResident;
}

std::vector<int64_t> SlabAllocator::handles_in_slab(int64_t slab) const {
  if (slab < 0 || slab >= static_cast<int64_t>(slabs_.size())) {
    throw InvalidHandleError(concat("slab ", slab, " does not exist: the arena has ", slabs_.size(), " slabs"));
  }
  std::vector<int64_t> handles;
  const Slab& s = slabs_[slab];
  if (s.state != SlabState::kActive && s.state != SlabState::kDraining) return handles;
  for (int32_t i = 0; i < s.bump; ++i) {
    if (s.allocated[i]) handles.push_back(slab * slab_bytes_ + static_cast<int64_t>(i) * s.block_bytes);
  }
  return handles;
}

std::vector<int64_t> SlabAllocator::draining_handles() const {
  std::vector<int64_t> handles;
  for (int32_t i = 0; i < boundary_; ++i) {
    auto in_slab = handles_in_slab(i);
    handles.insert(handles.end(), in_slab.begin(), in_slab.end());
  }
  return handles;
}

AllocatorStats SlabAllocator::stats() const {
  AllocatorStats st;
  st.slab_bytes = slab_bytes_;
  st.num_slabs = static_cast<int64_t>(slabs_.size());
  st.free_slabs = static_cast<int64_t>(free_slabs_.size());
  st.used_bytes = used_bytes_;
  for (const Slab& s : slabs_) {
    st.reserved_slabs += s.state == SlabState::kReserved;
    st.draining_slabs += s.state == SlabState::kDraining;
    st.resident_slabs += s.state == SlabState::kResident;
    if (s.state == SlabState::kActive || s.state == SlabState::kDraining) {
      st.internal_fragmentation_bytes += slab_bytes_ - s.capacity * s.block_bytes;
      st.external_fragmentation_bytes += static_cast<int64_t>(s.capacity - s.used) * s.block_bytes;
    }
  }
  for (const auto& [block_bytes, sc] : classes_) {
    if (sc.slabs == 0) continue;
    st.per_block_size.push_back({block_bytes, sc.slabs, sc.blocks_used, sc.blocks_capacity});
  }
  std::sort(st.per_block_size.begin(), st.per_block_size.end(),
            [](const BlockSizeStats& a, const BlockSizeStats& b) { return a.block_bytes < b.block_bytes; });
  return st;
}

void SlabAllocator::check_integrity() const {
  auto fail = [](const std::string& what) { throw std::logic_error("slab allocator integrity: " + what); };
  std::unordered_map<int64_t, SizeClass> expected;
  int64_t used_bytes = 0;
  for (int32_t i = 0; i < static_cast<int32_t>(slabs_.size()); ++i) {
    const Slab& s = slabs_[i];
    const bool below = i < boundary_;
    const bool in_free_set = free_slabs_.count(i) > 0;
    if ((s.state == SlabState::kFree) != in_free_set) fail(concat("slab ", i, " free-set membership disagrees with state"));
    if (below && (s.state == SlabState::kFree || s.state == SlabState::kActive)) fail(concat("slab ", i, " below boundary is not reserved/draining"));
    if (!below && (s.state == SlabState::kReserved || s.state == SlabState::kDraining)) fail(concat("slab ", i, " above boundary is reserved/draining"));
    if (below && s.state == SlabState::kResident) fail(concat("resident slab ", i, " is below the boundary"));
    if (s.state != SlabState::kActive && s.state != SlabState::kDraining) {
      if (s.in_partial_list) fail(concat("unassigned slab ", i, " is in a partial list"));
      continue;
    }
    int32_t live = 0;
    for (int32_t b = 0; b < s.capacity; ++b) live += s.allocated[b];
    if (live != s.used || s.used == 0) fail(concat("slab ", i, " used=", s.used, " but ", live, " live blocks"));
    if (static_cast<int32_t>(s.free_stack.size()) != s.bump - s.used) fail(concat("slab ", i, " free stack size wrong"));
    if (s.bump > s.capacity || s.capacity != slab_bytes_ / s.block_bytes) fail(concat("slab ", i, " capacity/bump wrong"));
    const bool should_list = s.state == SlabState::kActive && s.used < s.capacity;
    if (should_list != s.in_partial_list) fail(concat("slab ", i, " partial-list membership wrong"));
    if (s.size_class != &classes_.at(s.block_bytes)) fail(concat("slab ", i, " points at the wrong size class"));
    SizeClass& sc = expected[s.block_bytes];
    sc.slabs += 1;
    sc.blocks_used += s.used;
    sc.blocks_capacity += s.capacity;
    used_bytes += static_cast<int64_t>(s.used) * s.block_bytes;
  }
  if (used_bytes != used_bytes_) fail("used_bytes counter drifted");
  for (const auto& [block_bytes, sc] : classes_) {
    const SizeClass& want = expected[block_bytes];
    if (sc.slabs != want.slabs || sc.blocks_used != want.blocks_used || sc.blocks_capacity != want.blocks_capacity) {
      fail(concat("size class ", block_bytes, " counters drifted"));
    }
    int32_t listed = 0;
    int32_t prev = kNone;
    for (int32_t cur = sc.head; cur != kNone; cur = slabs_[cur].next) {
      if (slabs_[cur].prev != prev || slabs_[cur].block_bytes != block_bytes) fail(concat("size class ", block_bytes, " list broken"));
      prev = cur;
      if (++listed > static_cast<int32_t>(slabs_.size())) fail("partial list has a cycle");
    }
  }
}

}  // namespace aegaeon
