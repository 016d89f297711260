// Block gather/scatter kernel launcher (CUDA). Plain CUDA, no torch headers,
// so nvcc compiles it on any machine with the toolkit.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace aegaeon {

// Copies num_blocks blocks of block_bytes each: block i goes from
// src + src_offsets[i] to dst + dst_offsets[i]. src and dst are device
// pointers or mapped host pointers (pinned, registered memory under UVA); the
// offset arrays live in device memory. One launch on `stream`.
cudaError_t launch_copy_blocks(const uint8_t* src, const int64_t* src_offsets, uint8_t* dst,
                               const int64_t* dst_offsets, int64_t num_blocks, int64_t block_bytes,
                               cudaStream_t stream);

}  // namespace aegaeon
