"""Numba CUDA kernels for sparse dispatch: dispatch_backend='cuda' (chapter 07).

The GPU execution model, in the words the kernels' comments use:

- A KERNEL is a function that runs on the GPU once per THREAD. `kernel[grid, block](args)`
  launches a GRID of BLOCKS, each block a group of threads (grid and block are up to 3-D). Every
  thread runs the same code and tells itself apart by cuda.blockIdx, cuda.blockDim and
  cuda.threadIdx; the first lines of every kernel turn them into "my row, my column" once.
- The hardware runs a block's threads in WARPS of 32 that execute in lockstep. When the 32
  threads of a warp read 32 neighbouring addresses, the reads merge into one memory transaction
  (COALESCED); scattered reads cost one each. So threadIdx.x runs along the contiguous axis.
- GLOBAL memory (the GPU's DRAM, where the arrays live) is large and slow: hundreds of cycles a
  load. SHARED memory (cuda.shared.array) is a small on-chip scratchpad shared by the threads
  of one block, about as fast as registers. The tiled matmul loads a tile once into shared
  memory and every thread of the block reuses it.
- cuda.syncthreads() is a barrier for the threads of one block: none passes until all have
  reached it. It orders writes to shared memory before other threads' reads. Every thread of
  the block must reach the same barriers (never put one inside a branch that only some take).
  Blocks cannot wait for each other; a kernel launch ends only when all its blocks have.
- Threads that write the same address RACE. Atomics (cuda.atomic.add) make such updates safe,
  but floating-point atomics add in arrival order, which changes every run, and so do the last
  bits of the sum. These kernels use none: every output element has one owner thread, which sums
  its terms in a fixed order. Same inputs, same bits, every run.

Files, one concept each:

    host.py           arrays in (CuPy zero-copy, NumPy copied), arrays out; launch geometry
    plan.py           histogram, scans and stable ranks: the dispatch plan, integers only
    permute.py        gather the token rows into the buffer; scatter (its backward)
    matmul_naive.py   grouped matmul, one thread per output element: forward, dX, dW, db
    matmul_tiled.py   the same with shared-memory tiles (the fast one, the default)
    combine.py        un-permute and combine with the gates, and its backward
    gelu.py           GELU forward and backward, one thread per element (the engine's, on a GPU)
    layer_norm.py     layer norm forward and its input gradient, a block per 8 rows (likewise)

They know arrays and launches only: no autograd, nothing imported from tinysparse. The adapter
that gives the MoE layer its dispatch_backend='cuda' is tinysparse/moe/cuda_dispatch.py
(CudaDispatch); the engine's GELU and LayerNorm Functions call gelu.py and layer_norm.py on CuPy
arrays (tinysparse/engine/compiled.py, gpu()), and `make gpu-check` is
tinysparse/bench/gpu_check.py.

Without a GPU, Numba's CUDA simulator runs every kernel on the CPU, one Python thread per GPU
thread: set NUMBA_ENABLE_CUDASIM=1 before numba is first imported (tests/conftest.py does).
Nothing is imported here, so `import cuda_kernels` never loads numba before that choice is made.
"""
