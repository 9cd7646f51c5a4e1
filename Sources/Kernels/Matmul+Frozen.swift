// Training products with a frozen weight kept in its file's own type (Q4_0, Q4_1,
// Q8_0, the K-quants, F16, F32): the forward product and the input gradient,
// never the weight's gradient. The weight is dequantized a tile of rows at a time
// into a small scratch (never whole in fp32) and each tile goes through sgemm, so
// the values are those of the dequantized fp32 matrix: what a reference that
// dequantizes the file (transformers' GGUF loader) computes, up to summation order.

import CBLAS
import CKernels
import Tensors

/// A frozen weight is a `WeightMatrix` (rows of whole blocks in the file's type).
extension WeightMatrix {
    /// Rows dequantized per tile of the frozen products: about 256 Ki floats (1 MiB), a multiple of 16 rows.
    public var tileRows: Int { min(rows, max(16, (1 << 18) / max(cols, 1) / 16 * 16)) }

    /// Scratch floats the frozen products need for this matrix.
    public var scratchFloats: Int { tileRows * cols }

    /// Row `r` dequantized into `out` (cols floats).
    public func dequantize(row r: Int, into out: UnsafeMutablePointer<Float>) {
        ck_dequantize_rows(nil, data + r * rowBytes, ckType, out, 1, Int32(cols))
    }

    /// Rows [r, r + count) dequantized into `out` (count × cols), split over the training threads.
    public func dequantize(rows r: Int, count: Int, into out: UnsafeMutablePointer<Float>) {
        let stride = rowBytes, cols = cols, type = ckType, data = data
        parallelRows(count, minRowsPerThread: 16) { part in
            ck_dequantize_rows(nil, data + (r + part.lowerBound) * stride, type, out + part.lowerBound * cols,
                               Int32(part.count), Int32(cols))
        }
    }

    /// `body(first row, rows)` for each tile of rows in order, the tile dequantized into `scratch` first.
    func forEachTile(scratch: UnsafeMutablePointer<Float>, _ body: (Int, Int) -> Void) {
        var r = 0
        while r < rows {
            let count = min(tileRows, rows - r)
            dequantize(rows: r, count: count, into: scratch)
            body(r, count)
            r += count
        }
    }
}

/// out (n, w.rows) = inp (n, w.cols) · wᵀ, plus out's old value when `accumulate`. `scratch` holds
/// `w.scratchFloats` floats. The same values as `matmulForward` with the dequantized weight.
public func frozenMatmulForward(_ out: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>, _ w: WeightMatrix,
                                n: Int, accumulate: Bool = false, scratch: UnsafeMutablePointer<Float>) {
    let inDim = w.cols, outDim = w.rows
    w.forEachTile(scratch: scratch) { r0, count in
        splitRows(n) { a, b in
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(b - a), Int32(count), Int32(inDim), 1,
                        inp + a * inDim, Int32(inDim), scratch, Int32(inDim), accumulate ? 1 : 0,
                        out + a * outDim + r0, Int32(outDim))
        }
    }
}

/// dinp (n, w.cols) = dout (n, w.rows) · w, plus dinp's old value when `accumulate`: the input gradient
/// of a frozen product (its weight has none). Tiles are added in row order.
public func frozenMatmulInputGradient(_ dinp: UnsafeMutablePointer<Float>, _ dout: UnsafePointer<Float>, _ w: WeightMatrix,
                                      n: Int, accumulate: Bool = false, scratch: UnsafeMutablePointer<Float>) {
    let inDim = w.cols, outDim = w.rows
    w.forEachTile(scratch: scratch) { r0, count in
        let beta: Float = accumulate || r0 > 0 ? 1 : 0
        splitRows(n) { a, b in
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(b - a), Int32(inDim), Int32(count), 1,
                        dout + a * outDim + r0, Int32(outDim), scratch, Int32(inDim), beta,
                        dinp + a * inDim, Int32(inDim))
        }
    }
}

/// A LoRA adapter's part of a product: saved (n, rank) = inp · Aᵀ, then out (n, outDim) += scale · saved · Bᵀ.
/// A: (rank, inDim); B: (outDim, rank). `saved` is what `loraBackward` needs.
public func loraForward(_ out: UnsafeMutablePointer<Float>, saved: UnsafeMutablePointer<Float>, _ inp: UnsafePointer<Float>,
                        a: UnsafePointer<Float>, b: UnsafePointer<Float>, n: Int, inDim: Int, outDim: Int, rank: Int,
                        scale: Float) {
    matmulForward(saved, inp, a, n: n, inDim: inDim, outDim: rank)
    splitRows(n) { r0, r1 in
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(r1 - r0), Int32(outDim), Int32(rank), scale,
                    saved + r0 * rank, Int32(rank), b, Int32(rank), 1, out + r0 * outDim, Int32(outDim))
    }
}

/// The backward of `loraForward`: with dout (n, outDim), adds the gradients of B (scale · doutᵀ · saved) and
/// A (dsavedᵀ · inp, dsaved = scale · dout · B) and adds dsaved · A into dinp (n, inDim). `dsaved` is
/// (n, rank) scratch.
public func loraBackward(_ dinp: UnsafeMutablePointer<Float>, gradA: UnsafeMutablePointer<Float>,
                         gradB: UnsafeMutablePointer<Float>, dsaved: UnsafeMutablePointer<Float>,
                         _ dout: UnsafePointer<Float>, _ inp: UnsafePointer<Float>, saved: UnsafePointer<Float>,
                         a: UnsafePointer<Float>, b: UnsafePointer<Float>, n: Int, inDim: Int, outDim: Int, rank: Int,
                         scale: Float) {
    splitRows(n) { r0, r1 in
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(r1 - r0), Int32(rank), Int32(outDim), scale,
                    dout + r0 * outDim, Int32(outDim), b, Int32(rank), 0, dsaved + r0 * rank, Int32(rank))
    }
    splitRows(outDim) { r0, r1 in
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(r1 - r0), Int32(rank), Int32(n), scale,
                    dout + r0, Int32(outDim), saved, Int32(rank), 1, gradB + r0 * rank, Int32(rank))
    }
    // gradA's columns split over the threads (it has only `rank` rows).
    splitRows(inDim) { c0, c1 in
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(rank), Int32(c1 - c0), Int32(n), 1,
                    dsaved, Int32(rank), inp + c0, Int32(inDim), 1, gradA + c0, Int32(inDim))
    }
    splitRows(n) { r0, r1 in
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(r1 - r0), Int32(inDim), Int32(rank), 1,
                    dsaved + r0 * rank, Int32(rank), a, Int32(inDim), 1, dinp + r0 * inDim, Int32(inDim))
    }
}

/// w (outDim, inDim) += scale · B · A: a LoRA adapter merged into its weight, as peft's merge computes it
/// ((B·A)·scale added). A: (rank, inDim); B: (outDim, rank).
public func loraMerge(_ w: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, inDim: Int,
                      outDim: Int, rank: Int, scale: Float) {
    splitRows(outDim) { r0, r1 in
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(r1 - r0), Int32(inDim), Int32(rank), scale,
                    b + r0 * rank, Int32(rank), a, Int32(inDim), 1, w + r0 * inDim, Int32(inDim))
    }
}
