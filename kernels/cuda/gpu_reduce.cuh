/* Block-wide reductions shared by the kernels: one value per thread,
 * folded in an order fixed by blockDim alone (any block size: the upper
 * half folds onto the lower), so results repeat bit for bit. Barriers
 * throughout, so nothing assumes a warp width. `red` holds blockDim values
 * in shared memory; every thread of the block must call, and every thread
 * gets the result. */
#ifndef MOECTL_KERNELS_GPU_REDUCE_CUH
#define MOECTL_KERNELS_GPU_REDUCE_CUH

struct gpu_add {
    template <typename T> __device__ T operator()(T a, T b) const
    {
        return a + b;
    }
};

struct gpu_max {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

template <typename T, typename Op>
static __device__ T gpu_block_reduce(T x, T *red, Op op)
{
    int tid = threadIdx.x;
    red[tid] = x;
    __syncthreads();
    for (int n = blockDim.x; n > 1;) {
        int half = (n + 1) / 2;
        if (tid < n - half)
            red[tid] = op(red[tid], red[tid + half]);
        __syncthreads();
        n = half;
    }
    T result = red[0];
    __syncthreads(); /* red may be reused at once */
    return result;
}

template <typename T>
static __device__ T gpu_block_sum(T x, T *red)
{
    return gpu_block_reduce(x, red, gpu_add());
}

static inline __device__ float gpu_block_max(float x, float *red)
{
    return gpu_block_reduce(x, red, gpu_max());
}

#endif
