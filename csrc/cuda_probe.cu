// Smallest CUDA translation unit of the extension: proves the nvcc leg of the
// build works. The real kernels (KV swap) are added beside it.
#include <cuda_runtime.h>

namespace aegaeon {

__global__ void fill_bytes_kernel(unsigned char* out, unsigned char value, long long n) {
  const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = value;
}

}  // namespace aegaeon
