// Every block format against an independent decoder: the gguf package's numpy
// dequantize (what transformers uses to read GGUF), on random blocks whose every
// quantized bit is random (Fixtures/quants, scripts/fixtures/make_quant_fixtures.py).
// Bit for bit, on the Swift entry point and on the C kernels at every SIMD level.
import Foundation
import Kernels
import Tensors
import XCTest

final class QuantBlockTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fixtures/quants")

    struct Index: Decodable {
        struct Entry: Decodable {
            let ggml_type_id: UInt32, block_values: Int, block_bytes: Int, blocks: Int
            let blocks_file: String, f32_file: String
        }
        let types: [String: Entry]
    }

    func testEveryBlockFormatDecodesAsTheGGUFPackage() throws {
        let index = try JSONDecoder().decode(Index.self, from: Data(contentsOf: Self.root.appendingPathComponent("blocks.json")))
        let quantized = DType.allCases.filter(\.isQuantized)
        XCTAssertEqual(Set(index.types.keys), Set(quantized.map(\.rawValue)), "a fixture for every block format")
        let pool = ComputePool(threads: 2)
        for dtype in quantized {
            let e = try XCTUnwrap(index.types[dtype.rawValue])
            XCTAssertEqual(e.ggml_type_id, dtype.ggmlID, "\(dtype) id")
            XCTAssertEqual(e.block_values, dtype.blockElements, "\(dtype) values per block")
            XCTAssertEqual(e.block_bytes, dtype.blockBytes, "\(dtype) bytes per block")
            let blocks = try Data(contentsOf: Self.root.appendingPathComponent(e.blocks_file))
            let want = try Data(contentsOf: Self.root.appendingPathComponent(e.f32_file))
                .withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            let count = e.blocks * e.block_values
            XCTAssertEqual(blocks.count, dtype.byteCount(elements: count))
            XCTAssertEqual(want.count, count)
            blocks.withUnsafeBytes { raw in
                XCTAssertEqual(Dequantize.toF32(dtype, raw, count: count), want, "\(dtype): Dequantize.toF32")
                // The same values as rows of a matrix, through the pool, at every SIMD level.
                let cols = 256, rows = count / cols
                for level in 0...Matmul.bestSIMDLevel {
                    Matmul.simdLevel = level
                    defer { Matmul.simdLevel = Matmul.bestSIMDLevel }
                    var got = [Float](repeating: .nan, count: count)
                    got.withUnsafeMutableBufferPointer {
                        Matmul.dequantize(pool, WeightMatrix(data: raw.baseAddress!, dtype: dtype, rows: rows, cols: cols),
                                          into: $0.baseAddress!)
                    }
                    XCTAssertEqual(got, want, "\(dtype): SIMD level \(level)")
                }
            }
        }
    }
}
