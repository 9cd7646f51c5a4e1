// Matrix products. Weights are stored row-major [out, in] in their file type.
//   - few input rows (decode): SIMD dot products straight from quantized blocks;
//   - many rows (prefill, training): dequantize to fp32 scratch, then OpenBLAS sgemm.

import CBLAS
import CKernels
import Tensors

/// A weight matrix in its stored type: `rows` outputs × `cols` inputs.
public struct WeightMatrix {
    public var data: UnsafeRawPointer
    public var dtype: DType
    public var rows: Int
    public var cols: Int
    public init(data: UnsafeRawPointer, dtype: DType, rows: Int, cols: Int) {
        self.data = data; self.dtype = dtype; self.rows = rows; self.cols = cols
    }
    var ckType: Int32 { Int32(dtype.ggmlID) }   // the C kernels use ggml's ids
    public var rowBytes: Int { dtype.byteCount(elements: cols)! }
    /// For Q4_1: the same rows in the split layout of `ck_split_q4_1`, read by
    /// one-vector products (decode), where it is about a quarter faster.
    public var split: UnsafeRawPointer?
    /// Rows [start, start+count) as their own matrix.
    public func rows(_ start: Int, _ count: Int) -> WeightMatrix {
        WeightMatrix(data: data + start * rowBytes, dtype: dtype, rows: count, cols: cols)
    }
}

public enum Matmul {
    /// Rows of input at or below which the direct quantized path is used.
    nonisolated(unsafe) public static var directRowLimit = 8

    /// Token rows per sgemm call in the many-row paths (these products and the head's), each call
    /// on one thread; attention's bands (`attentionBandRows`) divide it. A row's result then depends
    /// only on its block counted from the pass's first row, never on how many rows the pass has
    /// (OpenBLAS picks kernels and thread splits by the row count): passes whose boundaries are
    /// multiples of it (`LlamaModel.prefillPieces`) give one pass's rows bit for bit. 256: blocks of
    /// 64 rows cost 12% of SmolLM2's prefill (OpenBLAS packs the weights once per call), 128 6%,
    /// 256 nothing measurable.
    nonisolated(unsafe) public static var rowBlock = 256

    /// y_j[n, W_j.rows] = x[n, cols] · W_jᵀ for every (W_j, y_j) pair; all W_j share `cols`.
    /// `scratch` must hold max(W_j.rows × cols) floats when n > directRowLimit and not `exact`.
    /// `exact`: each of the n rows is computed bit for bit as `linear` computes it alone (n = 1),
    /// whatever n: independent sequences decoded together (`LlamaModel.forwardDecode`) share
    /// each weight row's read and keep their own results.
    public static func linear(_ pool: ComputePool, x: UnsafePointer<Float>, n: Int,
                              _ outputs: [(w: WeightMatrix, y: UnsafeMutablePointer<Float>)],
                              scratch: UnsafeMutablePointer<Float>, exact: Bool = false) {
        guard let cols = outputs.first?.w.cols else { return }
        if n <= directRowLimit || exact {
            let oneVector = n == 1 || exact
            var jobs = outputs.map { o -> ck_matvec_job in
                if oneVector, let split = o.w.split {
                    return ck_matvec_job(w: split, dtype: Int32(CK_Q4_1_SPLIT), y: o.y, rows: Int32(o.w.rows))
                }
                return ck_matvec_job(w: o.w.data, dtype: o.w.ckType, y: o.y, rows: Int32(o.w.rows))
            }
            jobs.withUnsafeMutableBufferPointer { j in
                if exact {
                    ck_matmat_exact(pool.pool, j.baseAddress, Int32(j.count), x, Int32(n), Int32(cols))
                } else {
                    ck_matmat(pool.pool, j.baseAddress, Int32(j.count), x, Int32(n), Int32(cols))
                }
            }
            return
        }
        // Many rows: slices of each matrix's rows, spread over the pool; a thread dequantizes
        // its slice into its own part of `scratch` (still in its cache) and multiplies it with
        // a single-threaded sgemm. Which thread runs a slice never changes its result.
        let maxRows = outputs.map(\.w.rows).max()!
        let sliceRows = max(1, min(256, maxRows / pool.threads))
        var slices: [(output: Int, row: Int)] = []
        for (j, o) in outputs.enumerated() {
            for r in stride(from: 0, to: o.w.rows, by: sliceRows) { slices.append((j, r)) }
        }
        slices.withUnsafeBufferPointer { slices in
            pool.forEach(items: slices.count) { begin, end, thread in
                for (j, r0) in slices[begin..<end] {
                    let (w, y) = outputs[j], m = min(sliceRows, w.rows - r0)
                    let wf: UnsafePointer<Float>
                    if w.dtype == .f32 {
                        wf = w.data.assumingMemoryBound(to: Float.self) + r0 * cols
                    } else {
                        let part = scratch + thread * sliceRows * cols
                        ck_dequantize_rows(nil, w.data + r0 * w.rowBytes, w.ckType, part, Int32(m), Int32(cols))
                        wf = UnsafePointer(part)
                    }
                    for i in stride(from: 0, to: n, by: rowBlock) {
                        sgemmNT(m: min(rowBlock, n - i), n: m, k: cols, a: x + i * cols, lda: cols, b: wf, ldb: cols,
                                c: y + i * w.rows + r0, ldc: w.rows)
                    }
                }
            }
        }
    }

    /// C[m, n] = alpha · A[m, k] · B[n, k]ᵀ + beta · C (row-major).
    @inline(__always)
    public static func sgemmNT(m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                               b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
                               c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// C[m, n] = alpha · A[m, k] · B[k, n] + beta · C (row-major).
    @inline(__always)
    public static func sgemmNN(m: Int, n: Int, k: Int, alpha: Float = 1, a: UnsafePointer<Float>, lda: Int,
                               b: UnsafePointer<Float>, ldb: Int, beta: Float = 0,
                               c: UnsafeMutablePointer<Float>, ldc: Int) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
                    a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Plain reference: y[n, rows] = x[n, cols] · Wᵀ with W dequantized by the scalar
    /// path and Double accumulation.
    public static func reference(x: [Float], n: Int, w: WeightMatrix) -> [Float] {
        var y = [Float](repeating: 0, count: n * w.rows)
        for i in 0..<n {
            x.withUnsafeBufferPointer { xb in
                y.withUnsafeMutableBufferPointer { yb in
                    ck_matvec_reference(w.data, w.ckType, yb.baseAddress! + i * w.rows, Int32(w.rows),
                                        xb.baseAddress! + i * w.cols, Int32(w.cols))
                }
            }
        }
        return y
    }

    /// A copy of a Q4_1 matrix in the decode kernel's split layout (same size);
    /// nil for other types or without AVX-512, where the split layout is not faster.
    public static func splitForDecode(_ w: WeightMatrix) -> UnsafeMutableRawPointer? {
        guard w.dtype == .q4_1, bestSIMDLevel == 2 else { return nil }
        let bytes = w.rows * w.rowBytes
        let p = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        ck_split_q4_1(w.data, p, Int32(w.rows), Int32(w.cols))
        return p
    }

    /// Rewrites the Q4_1 matrix at `data` in place into the split layout of `splitForDecode`
    /// (same bytes), through `staging` (as large as the matrix), on the pool (the calling thread when nil).
    public static func splitInPlace(_ pool: ComputePool?, _ data: UnsafeMutableRawPointer,
                                    staging: UnsafeMutableRawPointer, rows: Int, cols: Int) {
        ck_split_q4_1_inplace(pool?.pool, data, staging, Int32(rows), Int32(cols))
    }

    /// Dequantizes all rows of `w` into `dst` (rows × cols floats) on the pool.
    public static func dequantize(_ pool: ComputePool, _ w: WeightMatrix, into dst: UnsafeMutablePointer<Float>) {
        ck_dequantize_rows(pool.pool, w.data, w.ckType, dst, Int32(w.rows), Int32(w.cols))
    }

    /// SIMD level of the direct kernels: 0 scalar, 1 AVX2, 2 AVX-512 (tests compare them).
    public static var simdLevel: Int {
        get { Int(ck_simd_enabled()) }
        set { _ = ck_set_simd(Int32(newValue)) }
    }
    /// The best level this CPU supports.
    public static var bestSIMDLevel: Int { Int(ck_simd_best()) }
}
