// The quantizers (ck_quantize_rows through Quantize.rows): a round trip through each block
// format stays within that format's error, the formats rank by their bits, and what they
// cannot write is refused. Agreement with llama-quantize itself is checked on whole models
// (RuntimeTests/QuantizeExportTests, against Fixtures/quantize).
import Foundation
import Kernels
import Tensors
import XCTest

final class QuantizeTests: XCTestCase {
    /// Gaussian-ish values (sum of uniforms) with a few outliers, as trained weights have.
    static func weights(_ n: Int, seed: UInt64) -> [Float] {
        var rng = SeededGenerator(seed: seed)
        return (0..<n).map { i in
            var s: Float = 0
            for _ in 0..<4 { s += Float(rng.next() >> 40) / Float(1 << 24) - 0.5 }
            return (i % 97 == 0 ? 6 : 1) * 0.05 * s
        }
    }

    static func rmse(_ a: [Float], _ b: [Float]) -> Double {
        var s = 0.0
        for i in a.indices { let d = Double(a[i] - b[i]); s += d * d }
        return (s / Double(a.count)).squareRoot()
    }

    func testRoundTripErrorOfEachFormat() throws {
        let cols = 512, rows = 24
        let x = Self.weights(rows * cols, seed: 3)
        let sd = Self.rmse(x, [Float](repeating: 0, count: x.count))
        // RMSE / standard deviation after a round trip: measured 0.0077 (Q8_0), 0.023 (Q6_K),
        // 0.042 (Q5_K), 0.043 (Q5_1), 0.061 (Q5_0), 0.083 (Q4_K), 0.090 (Q4_1), 0.124 (Q4_0) — bounds a
        // little above.
        let bounds: [(DType, Double)] = [(.q8_0, 0.0095), (.q6_k, 0.028), (.q5_k, 0.05), (.q5_1, 0.052),
                                         (.q5_0, 0.073), (.q4_k, 0.1), (.q4_1, 0.11), (.q4_0, 0.15)]
        var errors: [DType: Double] = [:]
        let pool = ComputePool(threads: 2)
        for (dtype, bound) in bounds {
            XCTAssertTrue(Quantize.canWrite(dtype))
            let q = try Quantize.rows(x, to: dtype, cols: cols, pool: pool)
            XCTAssertEqual(q.count, dtype.byteCount(elements: x.count), "\(dtype) size")
            XCTAssertEqual(try Quantize.rows(x, to: dtype, cols: cols), q, "\(dtype): the pool changes nothing")
            let back = q.withUnsafeBytes { Dequantize.toF32(dtype, $0, count: x.count) }
            let e = Self.rmse(x, back) / sd
            errors[dtype] = e
            XCTAssertLessThan(e, bound, "\(dtype) relative RMSE")
            XCTAssertGreaterThan(e, bound / 4, "\(dtype) relative RMSE suspiciously small")
            // Quantizing the dequantized values again returns the same values: every value is
            // already on the block's grid (Q8_0 and Q6_K hold exactly; the min/scale types nearly).
            let again = try Quantize.rows(back, to: dtype, cols: cols)
            let back2 = again.withUnsafeBytes { Dequantize.toF32(dtype, $0, count: x.count) }
            XCTAssertLessThan(Self.rmse(back, back2) / sd, bound / 2, "\(dtype) requantized")
        }
        XCTAssertLessThan(errors[.q8_0]!, errors[.q6_k]!)
        XCTAssertLessThan(errors[.q6_k]!, errors[.q5_k]!)
        XCTAssertLessThan(errors[.q5_k]!, errors[.q4_k]!)
        XCTAssertLessThan(errors[.q5_1]!, errors[.q4_1]!)
        XCTAssertLessThan(errors[.q5_0]!, errors[.q4_0]!)
    }

    func testQ8_0MatchesTheSwiftReference() throws {
        // d = amax/127 rounded to f16, q = round(x/d) half away from zero: Quantize.toQ8_0's definition.
        let x = Self.weights(64, seed: 5) + [Float](repeating: 0, count: 32)
        let q = Quantize.toQ8_0(x)
        for b in 0..<3 {
            let amax = x[b * 32 ..< b * 32 + 32].map(abs).max()!
            let d = amax / 127
            XCTAssertEqual(UInt16(q[b * 34]) | UInt16(q[b * 34 + 1]) << 8, Float16(d).bitPattern, "block \(b) scale")
            for j in 0..<32 {
                let want = d == 0 ? 0 : Int8((x[b * 32 + j] * (1 / d)).rounded())
                XCTAssertEqual(Int8(bitPattern: q[b * 34 + 2 + j]), want, "block \(b) value \(j)")
            }
        }
    }

    func testAllZeroAndConstantBlocks() throws {
        for dtype: DType in [.q8_0, .q5_0, .q5_1, .q4_0, .q4_1, .q4_k, .q5_k, .q6_k] {
            for v: Float in [0, 0.25, -3] {
                let x = [Float](repeating: v, count: 256)
                let q = try Quantize.rows(x, to: dtype, cols: 256)
                let back = q.withUnsafeBytes { Dequantize.toF32(dtype, $0, count: 256) }
                XCTAssertLessThanOrEqual(Self.rmse(x, back), Double(abs(v)) * 0.01 + 1e-7, "\(dtype) constant \(v)")
            }
        }
    }

    func testUnwritableTypesAndShapesAreRefused() {
        for dtype: DType in [.q2_k, .q3_k, .iq4_nl, .iq4_xs] {
            XCTAssertFalse(Quantize.canWrite(dtype), "\(dtype)")
            XCTAssertThrowsError(try Quantize.rows([Float](repeating: 1, count: 256), to: dtype, cols: 256))
        }
        // Q4_K rows must be whole 256-value blocks.
        XCTAssertThrowsError(try Quantize.rows([Float](repeating: 1, count: 576), to: .q4_k, cols: 576)) {
            XCTAssertTrue(($0 as? OffloadError)?.message.contains("q4_k") ?? false, "\($0)")
        }
        XCTAssertEqual(try Quantize.rows([Float](repeating: 1, count: 576), to: .q5_0, cols: 576).count, 18 * 22)
    }
}
