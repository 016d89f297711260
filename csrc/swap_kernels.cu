// One launch copies many KV blocks between the arena and host KV memory.
// Grid: x = block index, y = chunk of the block; each thread moves 16-byte
// words when both sides are 16-byte aligned, bytes otherwise.
#include "swap_kernels.h"

namespace aegaeon {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kChunkBytes = kThreads * 16 * 4;  // bytes one CUDA block moves per y index

__global__ void copy_blocks_kernel(const uint8_t* __restrict__ src, const int64_t* __restrict__ src_offsets,
                                   uint8_t* __restrict__ dst, const int64_t* __restrict__ dst_offsets,
                                   int64_t block_bytes) {
  const int64_t block = blockIdx.x;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kChunkBytes;
  const int64_t end = begin + kChunkBytes < block_bytes ? begin + kChunkBytes : block_bytes;
  const uint8_t* from = src + src_offsets[block];
  uint8_t* to = dst + dst_offsets[block];
  const bool aligned = ((reinterpret_cast<uintptr_t>(from) | reinterpret_cast<uintptr_t>(to) | begin) % 16) == 0;
  if (aligned) {
    const int64_t words_end = begin + (end - begin) / 16 * 16;
    for (int64_t i = begin + threadIdx.x * 16; i < words_end; i += kThreads * 16) {
      *reinterpret_cast<uint4*>(to + i) = *reinterpret_cast<const uint4*>(from + i);
    }
    for (int64_t i = words_end + threadIdx.x; i < end; i += kThreads) to[i] = from[i];
  } else {
    for (int64_t i = begin + threadIdx.x; i < end; i += kThreads) to[i] = from[i];
  }
}

}  // namespace

cudaError_t launch_copy_blocks(const uint8_t* src, const int64_t* src_offsets, uint8_t* dst,
                               const int64_t* dst_offsets, int64_t num_blocks, int64_t block_bytes,
                               cudaStream_t stream) {
  if (num_blocks == 0 || block_bytes == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(num_blocks), static_cast<unsigned>((block_bytes + kChunkBytes - 1) / kChunkBytes));
  copy_blocks_kernel<<<grid, kThreads, 0, stream>>>(src, src_offsets, dst, dst_offsets, block_bytes);
  return cudaGetLastError();
}

}  // namespace aegaeon
