// Every training kernel's backward against central differences of a plain
// Double reference of its forward, and every training forward against that
// reference. Shapes are tiny so the Double differences are exact to ~1e-9 and
// the tolerances only have to absorb fp32 rounding in the kernels.
import Foundation
import Kernels
import XCTest

/// Central differences of f at x, step h (Double, so h can be small).
func numericalGradient(_ x: [Double], h: Double = 1e-5, only: [Int]? = nil, _ f: ([Double]) -> Double) -> [Double] {
    var x = x
    return (only ?? Array(0..<x.count)).map { i in
        let old = x[i]
        x[i] = old + h; let fp = f(x)
        x[i] = old - h; let fm = f(x)
        x[i] = old
        return (fp - fm) / (2 * h)
    }
}

func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
func dbl(_ a: [Float]) -> [Double] { a.map(Double.init) }

/// Asserts |a − b| ≤ atol + rtol·|b| everywhere, and that the check is not vacuous (b not all ~0).
func assertGradient(_ a: [Float], _ b: [Double], rtol: Double = 1e-3, atol: Double = 1e-4, _ what: String,
                    file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, what, file: file, line: line)
    XCTAssertGreaterThan(b.map(abs).max() ?? 0, 10 * atol, "\(what): reference gradient is ~0", file: file, line: line)
    for i in 0..<min(a.count, b.count) where abs(Double(a[i]) - b[i]) > atol + rtol * abs(b[i]) {
        XCTFail("\(what): element \(i) is \(a[i]), expected \(b[i])", file: file, line: line)
        return
    }
}

final class BackwardKernelTests: XCTestCase {
    override func setUp() { TrainingThreads.set(2) }

    func testMatmulBackward() {
        let n = 5, inDim = 7, outDim = 6
        var g = TestRNG(1)
        let x = g.floats(n * inDim), w = g.floats(outDim * inDim), r = g.floats(n * outDim)
        func ref(_ x: [Double], _ w: [Double]) -> [Double] {
            var y = [Double](repeating: 0, count: n * outDim)
            for i in 0..<n { for o in 0..<outDim { for c in 0..<inDim { y[i * outDim + o] += x[i * inDim + c] * w[o * inDim + c] } } }
            return y
        }
        var y = [Float](repeating: 0, count: n * outDim)
        matmulForward(&y, x, w, n: n, inDim: inDim, outDim: outDim)
        assertGradient(y, ref(dbl(x), dbl(w)), rtol: 1e-5, atol: 1e-5, "matmul forward")
        // Accumulating forms: dinp and dweight start non-zero.
        let dx0 = g.floats(n * inDim), dw0 = g.floats(outDim * inDim)
        var dx = dx0, dw = dw0
        matmulBackward(&dx, &dw, r, x, w, n: n, inDim: inDim, outDim: outDim, accumulateInput: true)
        let ndx = numericalGradient(dbl(x)) { dot(ref($0, dbl(w)), dbl(r)) }
        let ndw = numericalGradient(dbl(w)) { dot(ref(dbl(x), $0), dbl(r)) }
        assertGradient(dx, zip(ndx, dx0).map { $0 + Double($1) }, "matmul dinp (accumulated)")
        assertGradient(dw, zip(ndw, dw0).map { $0 + Double($1) }, "matmul dweight (accumulated)")
        var dx2 = dx0
        matmulBackward(&dx2, &dw, r, x, w, n: n, inDim: inDim, outDim: outDim, accumulateInput: false)
        assertGradient(dx2, ndx, "matmul dinp (overwritten)")
    }

    func testEmbeddingBackwardSumsRepeatedTokens() {
        let vocab = 6, dim = 4
        let tokens: [Int32] = [2, 5, 2, 0, 2]
        var g = TestRNG(2)
        let table = g.floats(vocab * dim), r = g.floats(tokens.count * dim)
        var out = [Float](repeating: 0, count: tokens.count * dim)
        embeddingForward(&out, table, tokens, n: tokens.count, dim: dim)
        XCTAssertEqual(Array(out[8..<12]), Array(table[8..<12]))
        func ref(_ t: [Double]) -> [Double] { tokens.flatMap { Array(t[Int($0) * dim ..< Int($0) * dim + dim]) } }
        var dt = [Float](repeating: 0, count: vocab * dim)
        embeddingBackward(&dt, r, tokens, n: tokens.count, dim: dim)
        assertGradient(dt, numericalGradient(dbl(table)) { dot(ref($0), dbl(r)) }, "embedding dtable")
        XCTAssertEqual(dt[4], 0, "token 1 never appears: no gradient")
    }

    func testRMSNormBackward() {
        let rows = 3, dim = 8, eps: Float = 1e-5
        var g = TestRNG(3)
        let x = g.floats(rows * dim), w = g.floats(dim).map { $0 + 1 }, r = g.floats(rows * dim)
        func ref(_ x: [Double], _ w: [Double]) -> [Double] {
            var y = x
            for i in 0..<rows {
                let row = x[i * dim ..< i * dim + dim]
                let s = 1 / (row.reduce(0) { $0 + $1 * $1 } / Double(dim) + Double(eps)).squareRoot()
                for j in 0..<dim { y[i * dim + j] = x[i * dim + j] * s * w[j] }
            }
            return y
        }
        var y = [Float](repeating: 0, count: rows * dim), rstd = [Float](repeating: 0, count: rows)
        rmsnormForward(&y, rstd: &rstd, x, w, rows: rows, dim: dim, eps: eps)
        assertGradient(y, ref(dbl(x), dbl(w)), rtol: 1e-5, atol: 1e-5, "rmsnorm forward")
        var yInference = [Float](repeating: 0, count: rows * dim)
        rmsnormForward(&yInference, x, w, rows: rows, dim: dim, eps: eps)
        XCTAssertEqual(y, yInference, "training and inference forwards agree bit for bit")
        let dx0 = g.floats(rows * dim)
        var dx = dx0, dw = [Float](repeating: 0, count: dim)
        rmsnormBackward(&dx, &dw, r, x, w, rstd: rstd, rows: rows, dim: dim)
        let ndx = numericalGradient(dbl(x)) { dot(ref($0, dbl(w)), dbl(r)) }
        assertGradient(dx, zip(ndx, dx0).map { $0 + Double($1) }, "rmsnorm dx (accumulated)")
        assertGradient(dw, numericalGradient(dbl(w)) { dot(ref(dbl(x), $0), dbl(r)) }, "rmsnorm dweight")
    }

    func testRopeBackwardBothConventions() {
        let rows = 4, heads = 3, d = 8
        let table = RopeTable(headDim: d, maxPositions: 16, theta: 10000)
        let positions: [Int32] = [0, 3, 7, 15]
        var g = TestRNG(4)
        let x = g.floats(rows * heads * d), r = g.floats(rows * heads * d)
        for halfSplit in [false, true] {
            func ref(_ x: [Double]) -> [Double] {
                var y = x
                for row in 0..<rows {
                    for h in 0..<heads {
                        let base = (row * heads + h) * d
                        for i in 0..<d / 2 {
                            let c = Double(table.cos[Int(positions[row]) * d / 2 + i])
                            let s = Double(table.sin[Int(positions[row]) * d / 2 + i])
                            let (ia, ib) = halfSplit ? (base + i, base + i + d / 2) : (base + 2 * i, base + 2 * i + 1)
                            y[ia] = x[ia] * c - x[ib] * s
                            y[ib] = x[ib] * c + x[ia] * s
                        }
                    }
                }
                return y
            }
            var y = x
            ropeForward(&y, positions: positions, rows: rows, heads: heads, table: table, halfSplit: halfSplit)
            assertGradient(y, ref(dbl(x)), rtol: 1e-5, atol: 1e-5, "rope forward halfSplit \(halfSplit)")
            var dx = r
            ropeBackward(&dx, positions: positions, rows: rows, heads: heads, table: table, halfSplit: halfSplit)
            assertGradient(dx, numericalGradient(dbl(x)) { dot(ref($0), dbl(r)) }, "rope dx halfSplit \(halfSplit)")
        }
    }

    func testSwiGLUBackward() {
        let n = 40
        var g = TestRNG(5)
        let gate = g.floats(n).map { $0 * 4 }, up = g.floats(n), r = g.floats(n)
        func silu(_ v: Double) -> Double { v / (1 + Foundation.exp(-v)) }
        var dg = [Float](repeating: 0, count: n), du = dg
        swigluBackward(&dg, &du, r, gate, up, count: n)
        assertGradient(dg, numericalGradient(dbl(gate)) { gg in (0..<n).reduce(0) { $0 + silu(gg[$1]) * Double(up[$1]) * Double(r[$1]) } }, "swiglu dgate")
        assertGradient(du, numericalGradient(dbl(up)) { uu in (0..<n).reduce(0) { $0 + silu(Double(gate[$1])) * uu[$1] * Double(r[$1]) } }, "swiglu dup")
    }

    func testAttentionBackwardGroupedQueryCausal() {
        // T = 5: one band; T = 70: two bands (64 + 6); T = 300: five bands over two key blocks
        // (256 + 44), so bands, blocks and the causal edge inside a block are exercised.
        for (B, T) in [(2, 5), (1, 70), (1, 300)] {
            checkAttention(B: B, T: T)
        }
    }

    func checkAttention(B: Int, T: Int, file: StaticString = #filePath, line: UInt = #line) {
        let shape = AttentionShape(heads: 4, kvHeads: 2, headDim: 4)
        let qs = 16, kvs = 8, d = 4
        var g = TestRNG(6)
        let q = g.floats(B * T * qs), k = g.floats(B * T * kvs), v = g.floats(B * T * kvs), r = g.floats(B * T * qs)
        func ref(_ q: [Double], _ k: [Double], _ v: [Double]) -> [Double] {
            var out = [Double](repeating: 0, count: B * T * qs)
            for b in 0..<B { for h in 0..<4 {
                let kh = (h / 2) * d
                for i in 0..<T {
                    var s = (0...i).map { j in (0..<d).reduce(0.0) { $0 + q[(b * T + i) * qs + h * d + $1] * k[(b * T + j) * kvs + kh + $1] } / 2 }
                    let m = s.max()!
                    s = s.map { Foundation.exp($0 - m) }
                    let z = s.reduce(0, +)
                    for t in 0..<d { out[(b * T + i) * qs + h * d + t] = (0...i).reduce(0.0) { $0 + s[$1] / z * v[(b * T + $1) * kvs + kh + t] } }
                }
            } }
            return out
        }
        let scratchCount = attentionTrainingScratch(threads: 2, seqLen: T, shape: shape)
        var out = [Float](repeating: 0, count: B * T * qs), lse = [Float](repeating: .nan, count: B * T * 4)
        var scratch = [Float](repeating: .nan, count: scratchCount)
        attentionForward(&out, lse: &lse, q, k, v, scratch: &scratch, scratchCount: scratchCount, batch: B, seqLen: T, shape: shape)
        assertGradient(out, ref(dbl(q), dbl(k), dbl(v)), rtol: 1e-5, atol: 1e-5, "attention forward T \(T)", file: file, line: line)
        // The log-sum-exp of row 0 of head 0: its only score.
        let s00 = (0..<d).reduce(Float(0)) { $0 + q[$1] * k[$1] } / 2
        XCTAssertEqual(lse[0], s00, accuracy: 1e-5, "row 0 sees only itself")
        var dq = [Float](repeating: .nan, count: q.count), dk = [Float](repeating: .nan, count: k.count)
        var dv = dk
        attentionBackward(&dq, &dk, &dv, r, out: out, lse: lse, q, k, v, scratch: &scratch, scratchCount: scratchCount,
                          batch: B, seqLen: T, shape: shape)
        let rd = dbl(r)
        // Long sequences: a spread of elements (every row of early and late positions) keeps the test fast.
        func pick(_ n: Int, _ width: Int) -> [Int] { T <= 8 ? Array(0..<n) : (0..<n).filter { ($0 / width) % 23 < 2 || $0 % 17 == 0 } }
        let iq = pick(q.count, qs), ik = pick(k.count, kvs)
        assertGradient(iq.map { dq[$0] }, numericalGradient(dbl(q), only: iq) { dot(ref($0, dbl(k), dbl(v)), rd) }, "attention dq T \(T)", file: file, line: line)
        assertGradient(ik.map { dk[$0] }, numericalGradient(dbl(k), only: ik) { dot(ref(dbl(q), $0, dbl(v)), rd) }, "attention dk T \(T)", file: file, line: line)
        assertGradient(ik.map { dv[$0] }, numericalGradient(dbl(v), only: ik) { dot(ref(dbl(q), dbl(k), $0), rd) }, "attention dv T \(T)", file: file, line: line)
    }

    func testCrossEntropyMeanLossAndBackward() {
        let n = 6, vocab = 11
        var g = TestRNG(7)
        let logits = g.floats(n * vocab).map { $0 * 3 }
        let targets: [Int32] = [0, 10, 3, 3, 7, 1]
        func ref(_ l: [Double]) -> Double {
            (0..<n).reduce(0.0) { acc, r in
                let row = l[r * vocab ..< r * vocab + vocab]
                let m = row.max()!
                return acc + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - m) }) + m - l[r * vocab + Int(targets[r])]
            } / Double(n)
        }
        var losses = [Float](repeating: 0, count: n), probs = logits
        crossEntropyForward(&losses, probs: &probs, logits, targets: targets, n: n, vocab: vocab)
        let mean = losses.reduce(0.0) { $0 + Double($1) } / Double(n)
        XCTAssertEqual(mean, ref(dbl(logits)), accuracy: 1e-6)
        var dl = probs
        crossEntropyBackward(&dl, probs, targets: targets, dloss: 1 / Float(n), n: n, vocab: vocab)
        assertGradient(dl, numericalGradient(dbl(logits), ref), "cross-entropy dlogits")
    }
}
