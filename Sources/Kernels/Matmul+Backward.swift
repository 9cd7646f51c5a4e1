// Training matmuls (fp32 weights, OpenBLAS sgemm over all batch × seq rows) as a
// forward/backward pair, and the fixed-partition row parallelism the other
// training kernels use. Not for quantized weights: inference keeps Matmul.linear.

import CBLAS
import Dispatch

/// out: (n, outDim) = inp (n, inDim) · weightᵀ, plus out's old value when `accumulate`;
/// weight: (outDim, inDim) row-major, as GGUF stores it.
public func matmulForward(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>,
                          _ weight: UnsafePointer<Float>, n: Int, inDim: Int, outDim: Int,
                          accumulate: Bool = false) {
    splitRows(n) { r0, r1 in
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(r1 - r0), Int32(outDim), Int32(inDim), 1,
                    inp + r0 * inDim, Int32(inDim), weight, Int32(inDim), accumulate ? 1 : 0,
                    out + r0 * outDim, Int32(outDim))
    }
}

/// dinp: (n, inDim) = dout · weight, plus dinp's old value when `accumulateInput`; nil skips it.
/// dweight: (outDim, inDim) += doutᵀ · inp (always accumulated: gradients sum over micro-batches); nil
/// (a frozen weight) skips it. dout: (n, outDim); inp: (n, inDim); weight: (outDim, inDim).
public func matmulBackward(_ dinp: UnsafeMutablePointer<Float>?, _ dweight: UnsafeMutablePointer<Float>?,
                           _ dout: UnsafePointer<Float>, _ inp: UnsafePointer<Float>, _ weight: UnsafePointer<Float>,
                           n: Int, inDim: Int, outDim: Int, accumulateInput: Bool = false) {
    if let dinp {
        splitRows(n) { r0, r1 in
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(r1 - r0), Int32(inDim), Int32(outDim), 1,
                        dout + r0 * outDim, Int32(outDim), weight, Int32(inDim), accumulateInput ? 1 : 0,
                        dinp + r0 * inDim, Int32(inDim))
        }
    }
    guard let dweight else { return }
    splitRows(outDim) { r0, r1 in
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(r1 - r0), Int32(inDim), Int32(n), 1,
                    dout + r0, Int32(outDim), inp, Int32(inDim), 1, dweight + r0 * inDim, Int32(inDim))
    }
}

/// Splits the output rows [0, rows) of one sgemm into fixed contiguous parts, one per training
/// thread, each run by single-threaded OpenBLAS (no OpenBLAS threads spinning between calls, which
/// on a small shared machine steal the cores our own loops need).
/// - Note: OpenBLAS's rounding depends on the shape of each call (its kernels and blocking differ
///   with m and n), so results are bit-identical for a given thread count, not across thread counts.
///   `TrainingThreads.blasThreads` > 1 lets OpenBLAS split calls itself instead (for comparison).
@inline(__always)
func splitRows(_ rows: Int, _ body: (Int, Int) -> Void) {
    if TrainingThreads.blasThreads > 1 { body(0, rows); return }
    let parts = min(TrainingThreads.count, max(1, rows / 32))
    if parts <= 1 { body(0, rows); return }
    withoutActuallyEscaping(body) { body in
        let box = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: parts) { t in
            // Cut at multiples of 16 rows so every part keeps whole micro-kernel tiles.
            let a = (rows * t / parts) / 16 * 16, b = t == parts - 1 ? rows : (rows * (t + 1) / parts) / 16 * 16
            box.value(a, b)
        }
    }
}

/// C[m, n] = alpha · A[k, m]ᵀ · B[k, n] + beta · C (row-major).
@inline(__always)
func sgemmTN(m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
             b: UnsafePointer<Float>, ldb: Int, beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
}

/// Threads the training kernels split independent rows over. Each call cuts
/// [0, rows) into `threads` fixed contiguous ranges, and no range's result
/// depends on another's, so results are the same whichever thread runs a range.
public enum TrainingThreads {
    nonisolated(unsafe) public static private(set) var count = 1

    /// OpenBLAS's own threads per call: 1 (the default) when the training kernels split every
    /// sgemm themselves.
    nonisolated(unsafe) public static private(set) var blasThreads = 1

    /// Uses `threads` for the training kernels. OpenBLAS runs single-threaded inside them, each
    /// sgemm split by rows across our threads (`blas` > 1 lets OpenBLAS thread its calls instead).
    /// - Note: results are bit-identical run to run for a given thread count; a different count
    ///   splits the sgemm calls differently, and OpenBLAS rounds differently per call shape.
    public static func set(_ threads: Int, blas: Int = 1) {
        count = max(1, threads)
        blasThreads = max(1, blas)
        openblas_set_num_threads(Int32(blasThreads))
    }

    /// Puts OpenBLAS back on `blasThreads` (an inference ComputePool created since may have changed it).
    public static func claimBLAS() {
        if openblas_get_num_threads() != Int32(blasThreads) { openblas_set_num_threads(Int32(blasThreads)) }
    }

    /// Runs `body` over fixed contiguous pieces of [0, count), at most one per thread and
    /// none shorter than `minPerThread`. Pieces must not depend on one another.
    public static func forEachRange(_ count: Int, minPerThread: Int = 1, _ body: (Range<Int>) -> Void) {
        parallelRows(count, minRowsPerThread: minPerThread, body)
    }
}

@inline(__always)
func parallelRows(_ rows: Int, minRowsPerThread: Int = 1, _ body: (Range<Int>) -> Void) {
    let t = min(TrainingThreads.count, max(1, rows / max(minRowsPerThread, 1)))
    if t <= 1 { body(0..<rows); return }
    withoutActuallyEscaping(body) { body in
        let box = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: t) { i in
            box.value(rows * i / t ..< rows * (i + 1) / t)
        }
    }
}

/// Hands a closure over raw pointers to worker threads; the ranges it gets never overlap.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// Runs `body(item, part)` for every item in [0, count): fixed contiguous ranges of items, one per
/// part, at most min(threads, scratchParts) parts. OpenBLAS runs single-threaded meanwhile, so each
/// item's sgemm calls give the same bits whichever thread runs them and however many there are.
func forEachItem(_ count: Int, scratchParts: Int, _ body: (_ item: Int, _ part: Int) -> Void) {
    let parts = max(1, min(TrainingThreads.count, count, scratchParts))
    if parts == 1 {
        withSingleThreadedBLAS { for i in 0..<count { body(i, 0) } }
        return
    }
    withSingleThreadedBLAS {
        withoutActuallyEscaping(body) { body in
            let box = UncheckedSendable(body)
            DispatchQueue.concurrentPerform(iterations: parts) { t in
                for i in count * t / parts ..< count * (t + 1) / parts { box.value(i, t) }
            }
        }
    }
}

/// OpenBLAS on one thread for the duration of `body` (callers parallelise around it).
func withSingleThreadedBLAS(_ body: () -> Void) {
    let before = openblas_get_num_threads()
    if before != 1 { openblas_set_num_threads(1) }
    body()
    if before != 1 { openblas_set_num_threads(before) }
}
