// Tensors produced while the file is written (for models larger than memory) land
// exactly where the header says, and a producer that writes the wrong amount fails
// the write without leaving a file.
import Foundation
import Formats
import Kernels
import Tensors
import XCTest

final class GGUFProducedTensorTests: XCTestCase {
    func testProducedTensorsReadBackAndWrongSizesFail() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-produce-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let values = (0..<(3 * 37)).map { Float($0) * 0.5 - 7 }
        var w = GGUFWriter()
        w.set("general.architecture", .string("test"))
        w.tensors.append(.init(name: "a", dtype: .f32, shape: [3, 37]) { h in
            try values.withUnsafeBytes { try h.write(contentsOf: Data($0)) }
        })
        w.tensors.append(.init(name: "b", dtype: .f16, shape: [5], data: Data(Quantize.toF16([1, 2, 3, 4, 5]).flatMap {
            [UInt8($0 & 0xFF), UInt8($0 >> 8)] })))
        let path = dir.appendingPathComponent("m.gguf").path
        try w.write(to: path)
        let f = try GGUFFile(path: path)
        let a = try f.data("a"), b = try f.data("b")
        XCTAssertEqual(Dequantize.toF32(a.dtype, a.bytes, count: values.count), values)
        XCTAssertEqual(Dequantize.toF32(b.dtype, b.bytes, count: 5), [1, 2, 3, 4, 5])
        XCTAssertThrowsError(try w.encode())   // produced tensors are only for write(to:)

        var bad = GGUFWriter()
        bad.tensors.append(.init(name: "short", dtype: .f32, shape: [10]) { h in try h.write(contentsOf: Data(count: 36)) })
        let badPath = dir.appendingPathComponent("bad.gguf").path
        XCTAssertThrowsError(try bad.write(to: badPath)) { e in
            XCTAssertTrue("\(e)".contains("short") && "\(e)".contains("expected 40"), "\(e)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: badPath))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir.path), ["m.gguf"])   // no temporary left
    }
}
