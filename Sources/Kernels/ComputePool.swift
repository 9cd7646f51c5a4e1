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

    /// Runs `body(begin, end, thread)` over items `0..<items` in chunks of `chunk`, on every
    /// thread of the pool (`thread` in `0..<threads`, for per-thread scratch), and returns when
    /// all are done. OpenBLAS runs single-threaded meanwhile, so an sgemm inside `body` computes
    /// on the pool thread that calls it. Two thread pools taking turns on the same cores cost
    /// more than they gave: each spun while the other worked (prefill with 2 threads was slower
    /// than with 1; BENCHMARKS.md).
    public func forEach(items: Int, chunk: Int = 1, _ body: (_ begin: Int, _ end: Int, _ thread: Int) -> Void) {
        guard items > 0 else { return }
        if threads > 1 { openblas_set_num_threads(1) }
        defer { if threads > 1 { openblas_set_num_threads(Int32(threads)) } }
        withoutActuallyEscaping(body) { body in
            var task = Task(body: body)
            withUnsafeMutablePointer(to: &task) { t in
                ck_pool_for(pool, { ctx, begin, end, thread in
                    ctx!.assumingMemoryBound(to: Task.self).pointee.body(Int(begin), Int(end), Int(thread))
                }, t, Int32(items), Int32(max(1, chunk)))
            }
        }
    }

    private struct Task { let body: (Int, Int, Int) -> Void }
}
