// `Matmul.linear(exact:)`: each row of a batch bit-identical to the same row alone,
// which is what lets a server decode many sequences together without changing any
// one's tokens. The ordinary batched path is not (its kernels specialize n = 1), so
// the test would catch a `linear(exact:)` that fell back to it.
import Foundation
import Kernels
import Tensors
import XCTest

final class ExactBatchTests: XCTestCase {
    func testEveryRowOfAnExactBatchEqualsThatRowAlone() throws {
        let pool = ComputePool(threads: 2)
        var differsSomewhere = false
        for dtype in DType.allCases {
            let rows = 45, cols = columns(9, dtype), n = 11   // more rows than the direct path's 8
            let w = randomWeights(dtype, rows: rows, cols: cols, seed: 7)
            var g = TestRNG(5)
            let x = g.floats(n * cols)
            for level in Set([Matmul.bestSIMDLevel, 0]) {
                Matmul.simdLevel = level
                defer { Matmul.simdLevel = Matmul.bestSIMDLevel }
                w.withUnsafeBytes { wb in
                    var m = WeightMatrix(data: wb.baseAddress!, dtype: dtype, rows: rows, cols: cols)
                    let split = level == 2 ? Matmul.splitForDecode(m) : nil
                    defer { split?.deallocate() }
                    m.split = split.map { UnsafeRawPointer($0) }
                    var batch = [Float](repeating: .nan, count: n * rows), alone = batch, plain = batch
                    var scratch = [Float](repeating: 0, count: rows * cols)
                    x.withUnsafeBufferPointer { xb in scratch.withUnsafeMutableBufferPointer { sb in
                        batch.withUnsafeMutableBufferPointer { yb in
                            Matmul.linear(pool, x: xb.baseAddress!, n: n, [(m, yb.baseAddress!)], scratch: sb.baseAddress!,
                                          exact: true)
                        }
                        alone.withUnsafeMutableBufferPointer { yb in
                            for i in 0..<n {
                                Matmul.linear(pool, x: xb.baseAddress! + i * cols, n: 1, [(m, yb.baseAddress! + i * rows)],
                                              scratch: sb.baseAddress!)
                            }
                        }
                        plain.withUnsafeMutableBufferPointer { yb in
                            Matmul.linear(pool, x: xb.baseAddress!, n: n, [(m, yb.baseAddress!)], scratch: sb.baseAddress!)
                        }
                    }}
                    XCTAssertEqual(batch.map(\.bitPattern), alone.map(\.bitPattern), "\(dtype) level \(level)")
                    if plain.map(\.bitPattern) != alone.map(\.bitPattern) { differsSomewhere = true }
                }
            }
        }
        // Otherwise the test above would pass for a batch path that is not exact at all.
        XCTAssertTrue(differsSomewhere, "the ordinary batched products equal the one-row ones for every type")
    }
}
