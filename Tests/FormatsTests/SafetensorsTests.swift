// Safetensors: byte-identical output to Python's safetensors, round trips of
// odd shapes, atomic writes, and malformed files giving one-line errors that
// name the file, the tensor and the problem.

import Foundation
import Formats
import Kernels
import Tensors
import XCTest

private func errorMessage(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> String {
    do {
        try body()
        XCTFail("expected an error", file: file, line: line)
        return ""
    } catch let e as OffloadError {
        XCTAssertFalse(e.message.contains("\n"), "error is not one line: \(e.message)", file: file, line: line)
        return e.message
    } catch {
        XCTFail("expected OffloadError, got \(error)", file: file, line: line)
        return ""
    }
}

private func assertContains(_ s: String, _ parts: String..., file: StaticString = #filePath, line: UInt = #line) {
    for p in parts { XCTAssertTrue(s.contains(p), "\"\(s)\" does not contain \"\(p)\"", file: file, line: line) }
}

private func bytes<T>(_ values: [T]) -> Data { values.withUnsafeBytes { Data($0) } }

final class SafetensorsTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "offload-st-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// Written by Python: safetensors.torch.save({"w": arange(6).reshape(2,3)/4 (f32),
    /// "h": [1.5, -2, 65504] (f16), "b": [[3], [-0.5]] (bf16)}, metadata={"format": "pt"}).
    static let pythonFile = Data(base64Encoded:
        "0AAAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJmb3JtYXQiOiJwdCJ9LCJ3Ijp7ImR0eXBlIjoiRjMyIiwic2hhcGUiOlsyLDNdLCJkYXRh"
        + "X29mZnNldHMiOlswLDI0XX0sImIiOnsiZHR5cGUiOiJCRjE2Iiwic2hhcGUiOlsyLDFdLCJkYXRhX29mZnNldHMiOlsyNCwyOF19LCJo"
        + "Ijp7ImR0eXBlIjoiRjE2Iiwic2hhcGUiOlszXSwiZGF0YV9vZmZzZXRzIjpbMjgsMzRdfX0gICAgICAgAAAAAAAAgD4AAAA/AABAPwAA"
        + "gD8AAKA/QEAAvwA+AMD/ew==")!

    func write(_ name: String, _ data: Data) throws -> String {
        let path = dir + "/" + name
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    /// A file with the given header text (not padded) followed by `dataCount` zero bytes.
    func file(_ name: String, header: String, dataCount: Int = 64) throws -> String {
        var d = Data()
        withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { d.append(contentsOf: $0) }
        d.append(contentsOf: Array(header.utf8))
        d.append(Data(count: dataCount))
        return try write(name, d)
    }

    func testReadsAndWritesWhatPythonWrites() throws {
        let f = try SafetensorsFile(path: try write("py.safetensors", Self.pythonFile))
        XCTAssertEqual(f.metadata, ["format": "pt"])
        XCTAssertEqual(f.tensors.map(\.name), ["w", "b", "h"])
        XCTAssertEqual(f.dataOffset, 8 + 208)
        let (wi, wdt, wb) = try f.data("w")
        XCTAssertEqual(wi.shape, [2, 3])
        XCTAssertEqual(wdt, .f32)
        XCTAssertEqual(Dequantize.toF32(wdt, wb, count: 6), [0, 0.25, 0.5, 0.75, 1, 1.25])
        let (hi, hdt, hb) = try f.data("h")
        XCTAssertEqual(hi.shape, [3])
        XCTAssertEqual(hdt, .f16)
        XCTAssertEqual(Dequantize.toF32(hdt, hb, count: 3), [1.5, -2, 65504])
        let (bi, bdt, bb) = try f.data("b")
        XCTAssertEqual(bi.shape, [2, 1])
        XCTAssertEqual(bdt, .bf16)
        XCTAssertEqual(Dequantize.toF32(bdt, bb, count: 2), [3, -0.5])

        // Our writer, given the same tensors in another order, writes the same bytes.
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt"]
        w.tensors = [
            .init(name: "h", dtype: .f16, shape: [3], data: bytes(Quantize.toF16([1.5, -2, 65504]))),
            .init(name: "b", dtype: .bf16, shape: [2, 1], data: bytes(Quantize.toBF16([3, -0.5]))),
            .init(name: "w", dtype: .f32, shape: [2, 3], data: bytes([Float](arrayLiteral: 0, 0.25, 0.5, 0.75, 1, 1.25))),
        ]
        XCTAssertEqual(try w.encode(), Self.pythonFile)
    }

    func testRoundTripOddShapes() throws {
        var rng = SystemRandomNumberGenerator()
        func random(_ n: Int) -> Data { Data((0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }) }
        let specs: [(String, DType, [Int])] = [
            ("f32 odd", .f32, [3, 5]), ("f16.vec", .f16, [7]), ("bf16.\"3d\"", .bf16, [2, 3, 5]),
            ("scalar", .f32, []), ("empty", .f32, [0, 4]), ("ünï", .bf16, [1, 1, 1, 3]), ("f16.big", .f16, [33, 17]),
        ]
        var w = SafetensorsWriter()
        w.metadata = ["format": "pt", "note": "quote \" and\nnewline"]
        w.tensors = specs.map { .init(name: $0.0, dtype: $0.1, shape: $0.2, data: random($0.1.byteCount(elements: $0.2.reduce(1, *))!)) }
        let path = dir + "/odd.safetensors"
        try w.write(to: path)
        let written = try Data(contentsOf: URL(fileURLWithPath: path))
        XCTAssertEqual(written, try w.encode(), "streamed and in-memory files agree")

        let f = try SafetensorsFile(path: path)
        XCTAssertEqual(f.metadata, w.metadata)
        XCTAssertEqual(f.dataOffset % 8, 0, "header padded to 8 bytes")
        XCTAssertEqual(Set(f.tensors.map(\.name)), Set(specs.map(\.0)))
        for t in w.tensors {
            let (info, dt, b) = try f.data(t.name)
            XCTAssertEqual(info.shape, t.shape, t.name)
            XCTAssertEqual(dt, t.dtype, t.name)
            XCTAssertEqual(Data(b), try t.produce(), t.name)
            XCTAssertEqual((f.dataOffset + info.dataOffsets.lowerBound) % (dt == .f32 ? 4 : 2), 0, "\(t.name) aligned")
        }
        // Insertion order does not change the file.
        var r = w
        r.tensors.reverse()
        XCTAssertEqual(try r.encode(), written)
    }

    func testWriteIsAtomic() throws {
        let path = dir + "/model.safetensors"
        try Data("previous".utf8).write(to: URL(fileURLWithPath: path))
        var w = SafetensorsWriter()
        w.tensors = [
            .init(name: "a", dtype: .f32, shape: [2], data: Data(count: 8)),
            .init(name: "b", dtype: .f32, shape: [2]) { throw OffloadError("disk on fire") },
        ]
        assertContains(errorMessage { try w.write(to: path) }, "disk on fire")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), Data("previous".utf8), "old file intact")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["model.safetensors"], "no temporary left")
        // A producer returning the wrong size is caught before anything is renamed.
        w.tensors[1] = .init(name: "b", dtype: .f32, shape: [2]) { Data(count: 7) }
        assertContains(errorMessage { try w.write(to: path) }, "[safetensors write] tensor b: 7 bytes do not hold 2 f32 values")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), Data("previous".utf8))
    }

    func testWriterRejectsWhatTheFormatCannotHold() throws {
        var w = SafetensorsWriter()
        w.tensors = [.init(name: "q", dtype: .q4_1, shape: [32], data: Data(count: 20))]
        assertContains(errorMessage { _ = try w.encode() }, "[safetensors write] tensor q: q4_1 has no safetensors dtype")
        w.tensors = [.init(name: "x", dtype: .f32, shape: [1], data: Data(count: 4)),
                     .init(name: "x", dtype: .f32, shape: [1], data: Data(count: 4))]
        assertContains(errorMessage { _ = try w.encode() }, "tensor x: name used twice")
        w.tensors = [.init(name: "__metadata__", dtype: .f32, shape: [1], data: Data(count: 4))]
        assertContains(errorMessage { _ = try w.encode() }, "reserved")
    }

    // MARK: bad input

    func testTruncated() throws {
        let good = Self.pythonFile
        for cut in [0, 3, 7] {
            let p = try write("cut.safetensors", good.prefix(cut))
            assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                           "[safetensors] cut.safetensors: file is \(cut) bytes, too short for the 8-byte header length")
        }
        for cut in [8, 9, 100, 215] {
            let p = try write("cut.safetensors", good.prefix(cut))
            assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                           "[safetensors] cut.safetensors: header length 208 runs past end of file (\(cut) bytes)")
        }
        // Inside the data: the last tensor (h, bytes 28..<34) no longer fits.
        for cut in [216, 230, good.count - 1] {
            let p = try write("cut.safetensors", good.prefix(cut))
            assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                           "[safetensors] cut.safetensors: tensor ", "run past end of file (data section is \(cut - 216) bytes)")
        }
        let p = try write("cut.safetensors", good.prefix(good.count - 1))
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) }, "tensor h: data_offsets [28, 34] run past end")
    }

    func testHeaderLengthPastEndOfFileOrAbsurd() throws {
        var d = Self.pythonFile
        d.replaceSubrange(0..<8, with: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f])
        var p = try write("huge.safetensors", d)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                       "[safetensors] huge.safetensors: header length 9223372036854775807 runs past end of file (250 bytes)")
        // A 200 MB sparse file claiming a 150 MB header: inside the file, but no real header is that big.
        p = dir + "/sparse.safetensors"
        FileManager.default.createFile(atPath: p, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: p))
        try h.write(contentsOf: withUnsafeBytes(of: UInt64(150_000_000).littleEndian) { Data($0) })
        try h.truncate(atOffset: 200_000_000)
        try h.close()
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                       "[safetensors] sparse.safetensors: header length 150000000 is absurd (limit 100000000)")
    }

    func testOffsetsInconsistentWithShape() throws {
        var p = try file("short.safetensors", header: #"{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                       "[safetensors] short.safetensors: tensor w: data_offsets [0, 20] hold 20 bytes, but shape [2, 3] of F32 needs 24")
        // Sizes of dtypes Offload cannot read are still checked.
        p = try file("i64.safetensors", header: #"{"i":{"dtype":"I64","shape":[2],"data_offsets":[0,8]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) }, "tensor i: data_offsets [0, 8] hold 8 bytes, but shape [2] of I64 needs 16")
        p = try file("desc.safetensors", header: #"{"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) }, "tensor w: data_offsets [8, 4] are not an ascending pair")
        p = try file("neg.safetensors", header: #"{"w":{"dtype":"F32","shape":[-1,4],"data_offsets":[0,16]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) }, "tensor w: shape[0] is -1, expected a non-negative integer")
        p = try file("past.safetensors", header: #"{"w":{"dtype":"F32","shape":[20],"data_offsets":[0,80]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                       "tensor w: data_offsets [0, 80] run past end of file (data section is 64 bytes)")
        p = try file("huge.safetensors", header: #"{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) }, "tensor w: shape [4294967296, 4294967296] has too many elements")
    }

    func testOverlappingRanges() throws {
        let p = try file("overlap.safetensors", header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#
                         + #""b":{"dtype":"F16","shape":[4],"data_offsets":[4,12]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: p) },
                       "[safetensors] overlap.safetensors: tensor b: bytes [4, 12) overlap tensor a [0, 8)")
        // The same range twice.
        let q = try file("twice.safetensors", header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"#
                         + #""z":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#)
        assertContains(errorMessage { _ = try SafetensorsFile(path: q) }, "tensor z: bytes [8, 16) overlap tensor a [8, 16)")
        // Empty tensors share offsets without overlapping anything.
        let e = try file("empty.safetensors", header: #"{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"#
                         + #""b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#)
        XCTAssertEqual(try SafetensorsFile(path: e).tensors.map(\.name), ["b", "a"])
    }

    func testBadJSON() throws {
        let cases: [(String, String)] = [
            (#"{"w": {"dtype": "F32""#, "bad JSON header"),
            ("[1, 2]", "header does not start with '{'"),
            ("", "header does not start with '{'"),
            (#"{"w": 3}"#, "tensor w: entry is an integer, expected an object"),
            (#"{"w": {"shape": [1], "data_offsets": [0, 4]}}"#, "tensor w: missing dtype"),
            (#"{"w": {"dtype": 5, "shape": [1], "data_offsets": [0, 4]}}"#, "tensor w: dtype is an integer, expected a string"),
            (#"{"w": {"dtype": "F32", "data_offsets": [0, 4]}}"#, "tensor w: missing shape"),
            (#"{"w": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 4]}}"#, "tensor w: shape[0] is 1.5"),
            (#"{"w": {"dtype": "F32", "shape": [1]}}"#, "tensor w: missing data_offsets"),
            (#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}"#, "tensor w: data_offsets is [0], expected [begin, end]"),
            (#"{"__metadata__": {"format": 1}}"#, "__metadata__ format is an integer, expected a string"),
            (#"{"__metadata__": []}"#, "__metadata__ is an array, expected an object"),
        ]
        for (header, want) in cases {
            let p = try file("bad.safetensors", header: header)
            assertContains(errorMessage { _ = try SafetensorsFile(path: p) }, "[safetensors] bad.safetensors: " + want)
        }
    }

    func testUnsupportedDtypeAndMissingTensorWhenRequested() throws {
        let p = try file("mixed.safetensors", header: #"{"i":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"#
                         + #""f":{"dtype":"F32","shape":[2],"data_offsets":[16,24]}}"#)
        let f = try SafetensorsFile(path: p)
        XCTAssertEqual(f.info("i")?.dtypeName, "I64")
        XCTAssertNil(f.info("i")?.dtype)
        XCTAssertEqual(try f.data("f").bytes.count, 8)
        assertContains(errorMessage { _ = try f.data("i") },
                       "[safetensors] mixed.safetensors: tensor i: unsupported dtype I64; supported: F32, F16, BF16")
        assertContains(errorMessage { _ = try f.data("nope") }, "[safetensors] mixed.safetensors: missing tensor nope")
        assertContains(errorMessage { _ = try SafetensorsFile(path: dir + "/absent.safetensors") },
                       "[safetensors] absent.safetensors: cannot open")
    }
}
