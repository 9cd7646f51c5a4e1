// The threads kernels run on: a spinning pool for Offload's own kernels (decode
// issues a parallel region per matrix, ~150 per token, so dispatch must cost
// microseconds) and OpenBLAS's thread count, set to the same number.

import CBLAS
import CKernels

public final class ComputePool: @unchecked Sendable {
    public let threads: Int
    let pool: OpaquePointer?

    public init(threads: Int) {
        self.threads = max(1, threads)
        pool = ck_pool_create(Int32(self.threads))
        openblas_set_num_threads(Int32(self.threads))
    }

    deinit { ck_pool_destroy(pool) }
}
