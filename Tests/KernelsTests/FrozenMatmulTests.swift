// The frozen-weight products (LoRA's base) against the fp32 products on the dequantized weight, for
// every kind of block Offload quantizes to, and the LoRA adapter kernels against plain loops.
import Kernels
import Tensors
import XCTest

final class FrozenMatmulTests: XCTestCase {
    override func setUp() { TrainingThreads.set(2) }

    func random(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<count).map { _ in rng.normal() * scale }
    }

    func close(_ a: [Float], _ b: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        let scale = b.map { abs($0) }.max() ?? 1
        let worst = zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
        XCTAssertLessThan(worst, 1e-5 * scale, "\(what): max difference \(worst) of values up to \(scale)", file: file, line: line)
    }

    func testFrozenProductsEqualTheDequantizedWeights() throws {
        // 600 rows: several tiles of 448 and a partial one; 512 columns: whole 256-element super-blocks.
        let rows = 600, cols = 512, n = 37
        let x = random(n * cols, seed: 1), dy = random(n * rows, seed: 2)
        for dtype in [DType.f32, .f16, .q8_0, .q5_0, .q5_1, .q4_k, .q6_k] {   // Q4_1: the SmolLM2 parity test
            let bytes = try Quantize.rows(random(rows * cols, seed: 3, scale: 0.05), to: dtype, cols: cols)
            try bytes.withUnsafeBytes { raw in
                let w = WeightMatrix(data: raw.baseAddress!, dtype: dtype, rows: rows, cols: cols)
                let dense = Dequantize.toF32(dtype, UnsafeRawBufferPointer(raw), count: rows * cols)
                var scratch = [Float](repeating: 0, count: w.scratchFloats)
                XCTAssertLessThan(w.scratchFloats, rows * cols, "\(dtype): tiles, not the whole matrix")
                // Forward, and accumulating into an existing output.
                for accumulate in [false, true] {
                    var got = random(n * rows, seed: 4), want = got
                    frozenMatmulForward(&got, x, w, n: n, accumulate: accumulate, scratch: &scratch)
                    matmulForward(&want, x, dense, n: n, inDim: cols, outDim: rows, accumulate: accumulate)
                    close(got, want, "\(dtype) forward, accumulate \(accumulate)")
                }
                // Input gradient (the weight has none).
                for accumulate in [false, true] {
                    var got = random(n * cols, seed: 5), want = got
                    frozenMatmulInputGradient(&got, dy, w, n: n, accumulate: accumulate, scratch: &scratch)
                    matmulBackward(&want, nil, dy, x, dense, n: n, inDim: cols, outDim: rows, accumulateInput: accumulate)
                    close(got, want, "\(dtype) input gradient, accumulate \(accumulate)")
                }
                // A row dequantized alone is the dense row.
                var row = [Float](repeating: 0, count: cols)
                w.dequantize(row: 417, into: &row)
                XCTAssertEqual(row, Array(dense[417 * cols ..< 418 * cols]), "\(dtype) row")
            }
        }
    }

    func testLoRAKernelsEqualPlainLoops() {
        let n = 19, inDim = 48, outDim = 40, rank = 3, scale: Float = 2.5
        let x = random(n * inDim, seed: 1), a = random(rank * inDim, seed: 2), b = random(outDim * rank, seed: 3)
        let dy = random(n * outDim, seed: 4)
        func xa(_ i: Int, _ j: Int) -> Float { (0..<inDim).reduce(0) { $0 + x[i * inDim + $1] * a[j * inDim + $1] } }
        // Forward: out += scale · (x·Aᵀ)·Bᵀ, and x·Aᵀ kept.
        var out = random(n * outDim, seed: 5), saved = [Float](repeating: 0, count: n * rank)
        let before = out
        loraForward(&out, saved: &saved, x, a: a, b: b, n: n, inDim: inDim, outDim: outDim, rank: rank, scale: scale)
        for i in 0..<n {
            for j in 0..<rank { XCTAssertEqual(saved[i * rank + j], xa(i, j), accuracy: 1e-4) }
            for o in 0..<outDim {
                let want = before[i * outDim + o] + scale * (0..<rank).reduce(0) { $0 + xa(i, $1) * b[o * rank + $1] }
                XCTAssertEqual(out[i * outDim + o], want, accuracy: 1e-4)
            }
        }
        // Backward: ds = scale·dy·B; gB += scale·dyᵀ·(x·Aᵀ); gA += dsᵀ·x; dx += ds·A.
        var dx = random(n * inDim, seed: 6), gA = random(rank * inDim, seed: 7), gB = random(outDim * rank, seed: 8)
        var ds = [Float](repeating: 0, count: n * rank)
        let (dx0, gA0, gB0) = (dx, gA, gB)
        loraBackward(&dx, gradA: &gA, gradB: &gB, dsaved: &ds, dy, x, saved: saved, a: a, b: b, n: n, inDim: inDim,
                     outDim: outDim, rank: rank, scale: scale)
        func dsv(_ i: Int, _ j: Int) -> Float { scale * (0..<outDim).reduce(0) { $0 + dy[i * outDim + $1] * b[$1 * rank + j] } }
        for o in 0..<outDim {
            for j in 0..<rank {
                let want = gB0[o * rank + j] + scale * (0..<n).reduce(0) { $0 + dy[$1 * outDim + o] * xa($1, j) }
                XCTAssertEqual(gB[o * rank + j], want, accuracy: 1e-3)
            }
        }
        for j in 0..<rank {
            for c in 0..<inDim {
                let want = gA0[j * inDim + c] + (0..<n).reduce(0) { $0 + dsv($1, j) * x[$1 * inDim + c] }
                XCTAssertEqual(gA[j * inDim + c], want, accuracy: 1e-3)
            }
        }
        for i in 0..<n {
            for c in 0..<inDim {
                let want = dx0[i * inDim + c] + (0..<rank).reduce(0) { $0 + dsv(i, $1) * a[$1 * inDim + c] }
                XCTAssertEqual(dx[i * inDim + c], want, accuracy: 1e-3)
            }
        }
        // Merging: W + scale·B·A.
        var w = random(outDim * inDim, seed: 9)
        let w0 = w
        loraMerge(&w, a: a, b: b, inDim: inDim, outDim: outDim, rank: rank, scale: scale)
        for o in 0..<outDim {
            for c in 0..<inDim {
                let want = w0[o * inDim + c] + scale * (0..<rank).reduce(0) { $0 + b[o * rank + $1] * a[$1 * inDim + c] }
                XCTAssertEqual(w[o * inDim + c], want, accuracy: 1e-4)
            }
        }
    }
}
