#include "swap.h"

#include <cstring>
#include <sstream>
#include <stdexcept>

#ifdef AEGAEON_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include "swap_kernels.h"
#endif

namespace aegaeon {
namespace {

void check_buffer(const at::Tensor& t, const char* what) {
  if (t.dim() != 1 || t.scalar_type() != at::kByte || !t.is_contiguous()) {
    std::ostringstream msg;
    msg << what << " must be a contiguous 1-D uint8 tensor, got " << t.sizes() << " " << t.scalar_type();
    throw std::invalid_argument(msg.str());
  }
}

void check_offsets(const at::Tensor& offsets, int64_t limit, int64_t block_bytes, const char* what) {
  auto cpu = offsets.cpu();
  const int64_t* data = cpu.data_ptr<int64_t>();
  for (int64_t i = 0; i < cpu.numel(); ++i) {
    if (data[i] < 0 || data[i] + block_bytes > limit) {
      std::ostringstream msg;
      msg << what << " offset " << data[i] << " (block " << i << ") plus " << block_bytes
          << " bytes exceeds the buffer of " << limit << " bytes";
      throw std::out_of_range(msg.str());
    }
  }
}

void copy_blocks_cpu(const uint8_t* src, const int64_t* src_off, uint8_t* dst, const int64_t* dst_off,
                     int64_t n, int64_t block_bytes) {
  // One thread on purpose: the copy runs beside the compute (on the swapper's
  // worker thread) and must not take the intra-op threads the forward uses.
  for (int64_t i = 0; i < n; ++i) std::memcpy(dst + dst_off[i], src + src_off[i], block_bytes);
}

}  // namespace

void copy_blocks(const at::Tensor& src, const at::Tensor& src_offsets, at::Tensor& dst,
                 const at::Tensor& dst_offsets, int64_t block_bytes) {
  check_buffer(src, "source buffer");
  check_buffer(dst, "destination buffer");
  if (block_bytes <= 0) throw std::invalid_argument("block_bytes must be positive, got " + std::to_string(block_bytes));
  if (src_offsets.scalar_type() != at::kLong || dst_offsets.scalar_type() != at::kLong ||
      src_offsets.dim() != 1 || src_offsets.numel() != dst_offsets.numel()) {
    throw std::invalid_argument("offsets must be two 1-D int64 tensors of equal length");
  }
  check_offsets(src_offsets, src.numel(), block_bytes, "source");
  check_offsets(dst_offsets, dst.numel(), block_bytes, "destination");
  const int64_t n = src_offsets.numel();
  if (!src.is_cuda() && !dst.is_cuda()) {
    auto so = src_offsets.contiguous(), dof = dst_offsets.contiguous();
    copy_blocks_cpu(src.data_ptr<uint8_t>(), so.data_ptr<int64_t>(), dst.data_ptr<uint8_t>(), dof.data_ptr<int64_t>(),
                    n, block_bytes);
    return;
  }
#ifdef AEGAEON_WITH_CUDA
  const auto device = src.is_cuda() ? src.device() : dst.device();
  auto stream = c10::cuda::getCurrentCUDAStream(device.index());
  auto so = src_offsets.to(device, /*non_blocking=*/true).contiguous();
  auto dof = dst_offsets.to(device, /*non_blocking=*/true).contiguous();
  // A host side must be pinned: under UVA its pointer is valid in the kernel.
  for (const at::Tensor* t : {&src, static_cast<const at::Tensor*>(&dst)}) {
    if (!t->is_cuda() && !t->is_pinned()) {
      throw std::invalid_argument("the host side of a GPU block copy must be pinned (registered) memory");
    }
  }
  const cudaError_t err = launch_copy_blocks(src.data_ptr<uint8_t>(), so.data_ptr<int64_t>(), dst.data_ptr<uint8_t>(),
                                             dof.data_ptr<int64_t>(), n, block_bytes, stream.stream());
  if (err != cudaSuccess) throw std::runtime_error(std::string("copy_blocks kernel: ") + cudaGetErrorString(err));
#else
  throw std::runtime_error("copy_blocks on a CUDA tensor, but aegaeon._C was built without CUDA: rebuild with nvcc");
#endif
}

bool built_with_cuda() {
#ifdef AEGAEON_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void register_host_memory(uintptr_t ptr, int64_t nbytes) {
#ifdef AEGAEON_WITH_CUDA
  const cudaError_t err = cudaHostRegister(reinterpret_cast<void*>(ptr), static_cast<size_t>(nbytes),
                                           cudaHostRegisterPortable | cudaHostRegisterMapped);
  if (err != cudaSuccess) throw std::runtime_error(std::string("cudaHostRegister: ") + cudaGetErrorString(err));
#else
  (void)ptr;
  (void)nbytes;
  throw std::runtime_error("page-locking host memory needs a CUDA build of aegaeon._C");
#endif
}

void unregister_host_memory(uintptr_t ptr) {
#ifdef AEGAEON_WITH_CUDA
  const cudaError_t err = cudaHostUnregister(reinterpret_cast<void*>(ptr));
  if (err != cudaSuccess) throw std::runtime_error(std::string("cudaHostUnregister: ") + cudaGetErrorString(err));
#else
  (void)ptr;
  throw std::runtime_error("page-locking host memory needs a CUDA build of aegaeon._C");
#endif
}

}  // namespace aegaeon
