// Each fast kernel against its plain reference.
import Foundation
import Kernels
import Tensors
import XCTest

/// Random bytes of `rows` × `cols` values of `dtype`, with finite block scales.
func randomWeights(_ dtype: DType, rows: Int, cols: Int, seed: UInt64) -> [UInt8] {
    var g = TestRNG(seed)
    let n = rows * cols
    switch dtype {
    case .f32: return (0..<n).flatMap { _ in withUnsafeBytes(of: g.float()) { Array($0) } }
    case .f16: return (0..<n).flatMap { _ in withUnsafeBytes(of: Float16(g.float()).bitPattern) { Array($0) } }
    case .bf16: return (0..<n).flatMap { _ in withUnsafeBytes(of: UInt16(g.float().bitPattern >> 16)) { Array($0) } }
    default:
        // Random quantized values; every fp16 scale or min field a finite value (ggml-common.h offsets).
        let halfFields: [Int]
        switch dtype {
        case .q4_1, .q5_1, .q4_k, .q5_k: halfFields = [0, 2]
        case .q2_k: halfFields = [80, 82]
        case .q3_k: halfFields = [108]
        case .q6_k: halfFields = [208]
        default: halfFields = [0]
        }
        var out: [UInt8] = []
        for _ in 0..<(n / dtype.blockElements) {
            var blk = (0..<dtype.blockBytes).map { _ in UInt8.random(in: 0...255, using: &g) }
            for (i, at) in halfFields.enumerated() {
                let h = Float16(g.float() * (i == 0 ? 0.05 : 0.1)).bitPattern
                blk[at] = UInt8(h & 0xFF); blk[at + 1] = UInt8(h >> 8)
            }
            out += blk
        }
        return out
    }
}

/// Σ|w||x| for every output of y = x·Wᵀ: the scale of the rounding error of a float sum.
func absoluteSums(x: [Float], n: Int, w: WeightMatrix) -> [Float] {
    let wf = Dequantize.toF32(w.dtype, UnsafeRawBufferPointer(start: w.data, count: w.rows * w.rowBytes),
                              count: w.rows * w.cols)
    var out = [Float](repeating: 0, count: n * w.rows)
    for i in 0..<n {
        for r in 0..<w.rows {
            var s: Float = 0
            for c in 0..<w.cols { s += abs(wf[r * w.cols + c] * x[i * w.cols + c]) }
            out[i * w.rows + r] = s
        }
    }
    return out
}

/// `blocks` whole blocks of `dtype` (of 32 values for the plain float types).
func columns(_ blocks: Int, _ dtype: DType) -> Int { blocks * max(32, dtype.blockElements) }

struct TestRNG: RandomNumberGenerator {
    var s: UInt64
    init(_ seed: UInt64) { s = seed &+ 0x1234_5678 }
    mutating func next() -> UInt64 { var g = SeededGenerator(seed: s); defer { s = g.state }; return g.next() }
    mutating func float() -> Float { Float.random(in: -1...1, using: &self) }
    mutating func floats(_ n: Int) -> [Float] { (0..<n).map { _ in float() } }
}

func assertClose(_ a: [Float], _ b: [Float], rtol: Float, atol: Float, _ what: String,
                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    var worst: (Int, Float) = (-1, 0)
    for i in 0..<min(a.count, b.count) {
        let err = abs(a[i] - b[i]) - (atol + rtol * abs(b[i]))
        if err > worst.1 { worst = (i, err) }
    }
    if worst.0 >= 0 {
        XCTFail("\(what): element \(worst.0) is \(a[worst.0]), expected \(b[worst.0])", file: file, line: line)
    }
}

final class KernelTests: XCTestCase {
    let pool = ComputePool(threads: 2)

    func testQuantizedMatvecMatchesReferenceForEveryType() {
        for dtype in DType.allCases {
            // 3 and 11 blocks, through every unrolled path (4, 2, 1 blocks).
            for (rows, n, blocks) in [(37, 1, 3), (21, 1, 11), (64, 3, 3), (19, 8, 11)] {
                let cols = columns(blocks, dtype)
                let w = randomWeights(dtype, rows: rows, cols: cols, seed: UInt64(rows * 10 + n))
                var g = TestRNG(99)
                let x = g.floats(n * cols)
                for simd in 0...Matmul.bestSIMDLevel {
                    Matmul.simdLevel = simd
                    defer { Matmul.simdLevel = Matmul.bestSIMDLevel }
                    w.withUnsafeBytes { wb in
                        let m = WeightMatrix(data: wb.baseAddress!, dtype: dtype, rows: rows, cols: cols)
                        let ref = Matmul.reference(x: x, n: n, w: m)
                        var y = [Float](repeating: .nan, count: n * rows)
                        var scratch = [Float](repeating: 0, count: rows * cols)
                        x.withUnsafeBufferPointer { xb in
                            y.withUnsafeMutableBufferPointer { yb in
                                scratch.withUnsafeMutableBufferPointer { sb in
                                    Matmul.linear(pool, x: xb.baseAddress!, n: n, [(m, yb.baseAddress!)],
                                                  scratch: sb.baseAddress!)
                                }
                            }
                        }
                        // Float sums of 2,816 terms that cancel: bound the error by the sum of |terms|.
                        let scale = absoluteSums(x: x, n: n, w: m)
                        for i in 0..<y.count where abs(y[i] - ref[i]) > 1e-4 * abs(ref[i]) + 1e-5 * scale[i] {
                            XCTFail("\(dtype) \(rows)×\(cols) n \(n) simd \(simd): element \(i) is \(y[i]), expected \(ref[i])")
                            break
                        }
                    }
                }
            }
        }
    }

    func testPoolForEachRunsEveryItemOnceOnAPoolThread() {
        for (items, chunk) in [(1, 1), (37, 1), (1000, 7), (64, 64)] {
            let seen = UnsafeMutablePointer<Int>.allocate(capacity: items)
            seen.initialize(repeating: 0, count: items)
            defer { seen.deallocate() }
            let badThread = UnsafeMutablePointer<Int>.allocate(capacity: 1)
            badThread.initialize(to: 0)
            defer { badThread.deallocate() }
            pool.forEach(items: items, chunk: chunk) { begin, end, thread in
                if thread < 0 || thread >= pool.threads { badThread.pointee = 1 }
                for i in begin..<end { seen[i] += 1 }  // each item belongs to one chunk: no race
            }
            XCTAssertEqual(badThread.pointee, 0, "a thread index outside 0..<\(pool.threads)")
            XCTAssertEqual((0..<items).filter { seen[$0] != 1 }, [], "items run other than once (\(items) items, chunk \(chunk))")
        }
    }

    func testSgemmPathWithSeveralMatricesInSlicesMatchesReference() {
        // Two outputs sharing the input, one longer than the 256-row slices and not a multiple of them.
        let cols = 64, n = Matmul.directRowLimit + 20
        let shapes = [45, 600]
        var g = TestRNG(11)
        let x = g.floats(n * cols)
        let ws = shapes.enumerated().map { randomWeights(.q4_1, rows: $0.element, cols: cols, seed: UInt64(20 + $0.offset)) }
        var y0 = [Float](repeating: .nan, count: n * shapes[0]), y1 = [Float](repeating: .nan, count: n * shapes[1])
        var scratch = [Float](repeating: 0, count: shapes.max()! * cols)
        ws[0].withUnsafeBytes { w0 in ws[1].withUnsafeBytes { w1 in
            let ms = [WeightMatrix(data: w0.baseAddress!, dtype: .q4_1, rows: shapes[0], cols: cols),
                      WeightMatrix(data: w1.baseAddress!, dtype: .q4_1, rows: shapes[1], cols: cols)]
            x.withUnsafeBufferPointer { xb in y0.withUnsafeMutableBufferPointer { b0 in y1.withUnsafeMutableBufferPointer { b1 in
                scratch.withUnsafeMutableBufferPointer { sb in
                    Matmul.linear(pool, x: xb.baseAddress!, n: n, [(ms[0], b0.baseAddress!), (ms[1], b1.baseAddress!)],
                                  scratch: sb.baseAddress!)
                }
            }}}
            for (y, m) in zip([y0, y1], ms) {
                assertClose(y, Matmul.reference(x: x, n: n, w: m), rtol: 1e-4, atol: 1e-4, "output of \(m.rows) rows")
            }
        }}
    }

    func testSgemmPathMatchesReference() {
        // More input rows than the direct limit: dequantize + OpenBLAS.
        for dtype in DType.allCases {
            let rows = 45, cols = columns(2, dtype), n = Matmul.directRowLimit + 5
            let w = randomWeights(dtype, rows: rows, cols: cols, seed: 7)
            var g = TestRNG(3)
            let x = g.floats(n * cols)
            w.withUnsafeBytes { wb in
                let m = WeightMatrix(data: wb.baseAddress!, dtype: dtype, rows: rows, cols: cols)
                // In Double from the scalar dequantizer: random K-quant scales make weights up to ~200 whose
                // products cancel, so fp32 sums in another order (OpenBLAS's kernel for this CPU) may differ by
                // far more than 1e-4 of a small result: each element is held to its own Σ|x·w|.
                let wf = Dequantize.toF32(dtype, UnsafeRawBufferPointer(wb), count: rows * cols)
                var ref = [Float](repeating: 0, count: n * rows), size = [Float](repeating: 0, count: n * rows)
                for i in 0..<n {
                    for r in 0..<rows {
                        var sum = 0.0, mag = 0.0
                        for k in 0..<cols {
                            let t = Double(x[i * cols + k]) * Double(wf[r * cols + k])
                            sum += t; mag += abs(t)
                        }
                        ref[i * rows + r] = Float(sum); size[i * rows + r] = Float(mag)
                    }
                }
                var y = [Float](repeating: .nan, count: n * rows)
                var scratch = [Float](repeating: 0, count: rows * cols)
                x.withUnsafeBufferPointer { xb in
                    y.withUnsafeMutableBufferPointer { yb in
                        scratch.withUnsafeMutableBufferPointer { sb in
                            Matmul.linear(pool, x: xb.baseAddress!, n: n, [(m, yb.baseAddress!)], scratch: sb.baseAddress!)
                        }
                    }
                }
                for i in y.indices where !(abs(y[i] - ref[i]) <= 1e-4 * abs(ref[i]) + 1e-6 * size[i] + 1e-6) {
                    XCTFail("sgemm \(dtype): element \(i) is \(y[i]), expected \(ref[i]) (Σ|x·w| \(size[i]))")
                    break
                }
            }
        }
    }

    func testSIMDDequantizeMatchesScalar() {
        for dtype in DType.allCases {
            let rows = 5, cols = columns(4, dtype)
            let w = randomWeights(dtype, rows: rows, cols: cols, seed: 11)
            for level in 1...max(1, Matmul.bestSIMDLevel) {
            Matmul.simdLevel = level
            defer { Matmul.simdLevel = Matmul.bestSIMDLevel }
            w.withUnsafeBytes { wb in
                let scalar = Dequantize.toF32(dtype, wb, count: rows * cols)
                var fast = [Float](repeating: .nan, count: rows * cols)
                fast.withUnsafeMutableBufferPointer {
                    Matmul.dequantize(pool, WeightMatrix(data: wb.baseAddress!, dtype: dtype, rows: rows, cols: cols),
                                      into: $0.baseAddress!)
                }
                assertClose(fast, scalar, rtol: 1e-6, atol: 1e-7, "dequantize \(dtype) level \(level)")
            }
            }
        }
    }

    func testKnownQ4_1Block() {
        // d = 0.5, m = -1, nibbles j for element j (low) and 15 - j (high).
        var blk = [UInt8](repeating: 0, count: 20)
        let d = Float16(0.5).bitPattern, m = Float16(-1).bitPattern
        blk[0] = UInt8(d & 0xFF); blk[1] = UInt8(d >> 8); blk[2] = UInt8(m & 0xFF); blk[3] = UInt8(m >> 8)
        for j in 0..<16 { blk[4 + j] = UInt8(j) | UInt8(15 - j) << 4 }
        let v = blk.withUnsafeBytes { Dequantize.toF32(.q4_1, $0, count: 32) }
        var expected: [Float] = []
        for j in 0..<16 { expected.append(0.5 * Float(j) - 1) }
        for j in 0..<16 { expected.append(0.5 * Float(15 - j) - 1) }
        XCTAssertEqual(v, expected)
    }

    func testAttentionMatchesReference() {
        let shape = AttentionShape(heads: 6, kvHeads: 2, headDim: 16)
        // (130, 3): three bands of 64 query rows, the last partial; (70, 600): keys in three blocks,
        // the band straddling a block's bound.
        for (rows, start) in [(1, 0), (1, 9), (3, 5), (1, 700), (7, 0), (12, 4), (130, 3), (70, 230), (70, 600)] {
            var g = TestRNG(UInt64(rows * 100 + start))
            let keys = start + rows
            let q = g.floats(rows * 6 * 16), k = g.floats(keys * 2 * 16), v = g.floats(keys * 2 * 16)
            let ref = attentionReference(q: q, k: k, v: v, rows: rows, start: start, shape: shape)
            let out = attend(q, k, v, rows: rows, start: start, shape: shape)
            assertClose(out, ref, rtol: 1e-4, atol: 1e-5, "attention rows \(rows) start \(start)")
        }
    }

    private func attend(_ q: [Float], _ k: [Float], _ v: [Float], rows: Int, start: Int, lo: Int = 0,
                        shape: AttentionShape) -> [Float] {
        var out = [Float](repeating: .nan, count: rows * shape.heads * shape.headDim)
        var scratch = [Float](repeating: .nan, count: attentionScratchFloats(rows: rows, keys: start + rows, shape: shape))
        q.withUnsafeBufferPointer { qb in k.withUnsafeBufferPointer { kb in v.withUnsafeBufferPointer { vb in
            out.withUnsafeMutableBufferPointer { ob in scratch.withUnsafeMutableBufferPointer { sb in
                attentionForward(pool, ob.baseAddress!, qb.baseAddress!, kb.baseAddress!, vb.baseAddress!,
                                 scratch: sb.baseAddress!, rows: rows, start: start, lo: lo, shape: shape)
            }}
        }}}
        return out
    }

    /// Keys taken a KV head and a span of blocks at a time (as from disk) give the bits of all at once.
    func testAttentionBySpansIsBitIdentical() {
        let shape = AttentionShape(heads: 6, kvHeads: 3, headDim: 16)
        let d = 16, kvs = 3 * d
        for (rows, start, span) in [(1, 900, 256), (2, 1000, 512), (70, 600, 256), (200, 333, 512)] {
            var g = TestRNG(UInt64(rows + start))
            let keys = start + rows
            let q = g.floats(rows * 6 * d), k = g.floats(keys * kvs), v = g.floats(keys * kvs)
            let whole = attend(q, k, v, rows: rows, start: start, shape: shape)
            var out = [Float](repeating: .nan, count: rows * 6 * d)
            var scratch = [Float](repeating: .nan, count: attentionScratchFloats(rows: rows, keys: keys, shape: shape))
            q.withUnsafeBufferPointer { qb in out.withUnsafeMutableBufferPointer { ob in scratch.withUnsafeMutableBufferPointer { sb in
                let a = AttentionRows(out: ob.baseAddress!, q: qb.baseAddress!, rows: rows, start: start, shape: shape,
                                      scratch: sb.baseAddress!)
                a.begin()
                for kh in 0..<3 {
                    for first in stride(from: 0, to: keys, by: span) {
                        let n = min(span, keys - first)
                        // One head's rows packed (ld = d), as a disk head's read slot holds them.
                        var ks = [Float](), vs = [Float]()
                        for p in first..<first + n {
                            ks += k[(p * kvs + kh * d)..<(p * kvs + kh * d + d)]
                            vs += v[(p * kvs + kh * d)..<(p * kvs + kh * d + d)]
                        }
                        a.accumulate(pool, kvHeads: kh..<kh + 1, k: ks, v: vs, ld: d, first: first, count: n)
                    }
                }
                a.finish()
            }}}
            XCTAssertEqual(out, whole, "rows \(rows) start \(start) in spans of \(span)")
        }
    }

    /// A row that sees keys from `lo` (a sliding window) is the reference over those keys alone.
    func testAttentionFromAWindowStart() {
        let shape = AttentionShape(heads: 2, kvHeads: 1, headDim: 16)
        let (pos, lo) = (600, 300)
        var g = TestRNG(77)
        let q = g.floats(2 * 16), k = g.floats((pos + 1) * 16), v = g.floats((pos + 1) * 16)
        let out = attend(q, k, v, rows: 1, start: pos, lo: lo, shape: shape)
        let ref = attentionReference(q: q, k: Array(k[(lo * 16)...]), v: Array(v[(lo * 16)...]), rows: 1,
                                     start: pos - lo, shape: shape)
        assertClose(out, ref, rtol: 1e-4, atol: 1e-5, "window from \(lo)")
    }

    func testRopeConventionsAgreeUnderThePermutation() {
        // GGUF files permute each head's rows so that adjacent-pair RoPE on the
        // permuted vector equals half-split RoPE on the original (HF) vector.
        let d = 16, heads = 3, rows = 4
        let table = RopeTable(headDim: d, maxPositions: 64, theta: 10000)
        var g = TestRNG(5)
        let hf = g.floats(rows * heads * d)
        // HF index i < d/2 pairs with i + d/2; GGUF puts them at 2i and 2i+1.
        var gguf = hf
        for r in 0..<rows * heads {
            for i in 0..<d / 2 {
                gguf[r * d + 2 * i] = hf[r * d + i]
                gguf[r * d + 2 * i + 1] = hf[r * d + i + d / 2]
            }
        }
        let positions: [Int32] = [0, 3, 17, 63]
        var a = hf, b = gguf
        positions.withUnsafeBufferPointer { p in
            ropeForward(&a, positions: p.baseAddress!, rows: rows, heads: heads, table: table, halfSplit: true)
            ropeForward(&b, positions: p.baseAddress!, rows: rows, heads: heads, table: table, halfSplit: false)
        }
        for r in 0..<rows * heads {
            for i in 0..<d / 2 {
                XCTAssertEqual(a[r * d + i], b[r * d + 2 * i])
                XCTAssertEqual(a[r * d + i + d / 2], b[r * d + 2 * i + 1])
            }
        }
        // Position 0 is the identity; later positions rotate by cos/sin of pos·theta^(-2i/d).
        XCTAssertEqual(Array(a[0..<heads * d]), Array(hf[0..<heads * d]))
        let angle = 17.0 * pow(10000.0, -2.0 * 1 / 16)
        let (x0, x1) = (Double(hf[2 * heads * d + 1]), Double(hf[2 * heads * d + 1 + d / 2]))
        XCTAssertEqual(Double(a[2 * heads * d + 1]), x0 * cos(angle) - x1 * sin(angle), accuracy: 1e-5)
    }

    func testRMSNormAndSwiGLUAgainstDoubleFormulas() {
        var g = TestRNG(8)
        let rows = 3, dim = 40
        let x = g.floats(rows * dim), w = g.floats(dim)
        var out = [Float](repeating: 0, count: rows * dim)
        rmsnormForward(&out, x, w, rows: rows, dim: dim, eps: 1e-5)
        for r in 0..<rows {
            let ms = (0..<dim).map { Double(x[r * dim + $0]) * Double(x[r * dim + $0]) }.reduce(0, +) / Double(dim)
            for i in 0..<dim {
                XCTAssertEqual(Double(out[r * dim + i]), Double(x[r * dim + i]) / (ms + 1e-5).squareRoot() * Double(w[i]),
                               accuracy: 1e-5)
            }
        }
        let gate = g.floats(50).map { $0 * 6 }, up = g.floats(50)
        var s = [Float](repeating: 0, count: 50)
        swigluForward(&s, gate, up, count: 50)
        for i in 0..<50 {
            let gd = Double(gate[i])
            XCTAssertEqual(Double(s[i]), gd / (1 + exp(-gd)) * Double(up[i]), accuracy: 1e-6)
        }
    }
}

final class SplitQ4_1Tests: XCTestCase {
    func testSplitLayoutDecodeMatchesReference() throws {
        let pool = ComputePool(threads: 2)
        for (rows, cols) in [(37, 96), (21, 1536), (5, 544)] {   // 3, 48 and 17 blocks a row
            let w = randomWeights(.q4_1, rows: rows, cols: cols, seed: UInt64(rows))
            var g = TestRNG(4)
            let x = g.floats(cols)
            try w.withUnsafeBytes { wb in
                var m = WeightMatrix(data: wb.baseAddress!, dtype: .q4_1, rows: rows, cols: cols)
                let ref = Matmul.reference(x: x, n: 1, w: m)
                guard let split = Matmul.splitForDecode(m) else {
                    // No AVX-512 here: decode reads the blocks directly and there is nothing to test.
                    XCTAssertLessThan(Matmul.bestSIMDLevel, 2)
                    return
                }
                defer { split.deallocate() }
                m.split = UnsafeRawPointer(split)
                for level in [Matmul.bestSIMDLevel, 0] {   // the AVX-512 kernel and the scalar fallback
                    Matmul.simdLevel = level
                    defer { Matmul.simdLevel = Matmul.bestSIMDLevel }
                    var y = [Float](repeating: .nan, count: rows), s: [Float] = [0]
                    x.withUnsafeBufferPointer { xb in y.withUnsafeMutableBufferPointer { yb in s.withUnsafeMutableBufferPointer { sb in
                        Matmul.linear(pool, x: xb.baseAddress!, n: 1, [(m, yb.baseAddress!)], scratch: sb.baseAddress!)
                    }}}
                    assertClose(y, ref, rtol: 1e-4, atol: 1e-4, "split \(rows)×\(cols) level \(level)")
                }
                _ = try XCTUnwrap(m.split)
            }
        }
    }
}
