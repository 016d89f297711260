// KV block swap between the arena and host memory, and page-locking of host
// memory for DMA. The CPU path copies in the calling thread; the CUDA path
// (built with AEGAEON_WITH_CUDA) launches one gather/scatter kernel on the
// caller's current stream, so a side stream plus an event overlaps it with
// compute. Both paths check every offset against its buffer first.
#pragma once

#include <ATen/core/Tensor.h>

namespace aegaeon {

// Copies block i of block_bytes from src[src_offsets[i]] to dst[dst_offsets[i]].
// src and dst are 1-D uint8 tensors; offsets are 1-D int64 tensors of equal length.
void copy_blocks(const at::Tensor& src, const at::Tensor& src_offsets, at::Tensor& dst,
                 const at::Tensor& dst_offsets, int64_t block_bytes);

// Page-locks [ptr, ptr + nbytes) for DMA and maps it for device access.
// Throws std::runtime_error in a build without CUDA.
void register_host_memory(uintptr_t ptr, int64_t nbytes);
void unregister_host_memory(uintptr_t ptr);
bool built_with_cuda();

}  // namespace aegaeon
