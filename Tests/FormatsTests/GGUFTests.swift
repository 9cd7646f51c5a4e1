// GGUF: bit-exact round trips through GGUFWriter / GGUFFile, the real SmolLM2
// file against facts from gguf-py, and malformed files, each of which must give
// a one-line error naming the file and the problem (never a crash).

import Foundation
import Formats
import Kernels
import Tensors
import XCTest

private struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 { var g = SeededGenerator(seed: state); defer { state = g.state }; return g.next() }
    mutating func bytes(_ n: Int) -> Data { Data((0..<n).map { _ in UInt8(truncatingIfNeeded: next()) }) }
}

private func makeTempDir() throws -> String {
    let dir = NSTemporaryDirectory() + "offload-gguf-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

private func realModelPath() throws -> String {
    let cache = AssetCache.directory
    let path = cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    guard FileManager.default.fileExists(atPath: path) else {
        XCTFail("missing \(path): run scripts/fetch-assets.sh")
        throw OffloadError("missing asset")
    }
    return path
}

/// The message of the OffloadError `body` throws; fails the test when it does not throw one.
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

/// Byte offset of the tensor info of `name` (just after its name) in an encoded file.
private func tensorInfoOffset(_ data: Data, _ name: String) -> Int {
    var pattern = Data()
    withUnsafeBytes(of: UInt64(name.utf8.count).littleEndian) { pattern.append(contentsOf: $0) }
    pattern.append(contentsOf: Array(name.utf8))
    guard let r = data.range(of: pattern) else { fatalError("tensor \(name) not in file") }
    return r.upperBound - data.startIndex
}

private func patch<T: FixedWidthInteger>(_ data: inout Data, at offset: Int, _ value: T) {
    withUnsafeBytes(of: value.littleEndian) { data.replaceSubrange(offset..<offset + MemoryLayout<T>.size, with: $0) }
}

final class GGUFTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try makeTempDir() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    /// Metadata of every value type, arrays of strings and nested arrays included.
    static let everyValue: [(String, GGUFValue)] = [
        ("t.u8", .uint(250, .uint8)), ("t.i8", .int(-128, .int8)),
        ("t.u16", .uint(65535, .uint16)), ("t.i16", .int(-30000, .int16)),
        ("t.u32", .uint(4_000_000_000, .uint32)), ("t.i32", .int(-2_000_000_000, .int32)),
        ("t.u64", .uint(UInt64.max - 7, .uint64)), ("t.i64", .int(Int64.min + 3, .int64)),
        ("t.f32", .float(Double(Float(0.1)), .float32)), ("t.f64", .float(-1.0 / 3.0, .float64)),
        ("t.true", .bool(true)), ("t.false", .bool(false)),
        ("t.str", .string("héllo ✓ \u{0}")), ("t.empty", .string("")),
        ("t.strs", .array([.string("a"), .string(""), .string("Ġt ok")], .string)),
        ("t.ints", .array([.int(-1, .int32), .int(7, .int32)], .int32)),
        ("t.noitems", .array([], .float32)),
        ("t.nested", .array([.array([.uint(1, .uint16), .uint(2, .uint16)], .uint16),
                             .array([], .uint16)], .array)),
        ("t.nested_strs", .array([.array([.string("x")], .string)], .array)),
    ]

    /// Tensors of every supported dtype with odd shapes, filled with random bytes
    /// (bit patterns are what must survive, whatever they mean).
    static func everyTensor(seed: UInt64) -> [GGUFWriter.Tensor] {
        var rng = SplitMix(state: seed)
        let specs: [(String, DType, [Int])] = [
            ("f32.odd", .f32, [3, 5]), ("f16.vec", .f16, [7]), ("bf16.3d", .bf16, [2, 3, 5]),
            ("q8_0.rows", .q8_0, [3, 32]), ("q4_0.wide", .q4_0, [1, 96]), ("q4_1.4d", .q4_1, [1, 2, 5, 32]),
            ("f32.one", .f32, [1]),
        ]
        return specs.map { name, dt, shape in
            GGUFWriter.Tensor(name: name, dtype: dt, shape: shape,
                              data: rng.bytes(dt.byteCount(elements: shape.reduce(1, *))!))
        }
    }

    func writeEvery(_ name: String, alignment: Int = 32) throws -> (String, GGUFWriter) {
        var w = GGUFWriter()
        for (k, v) in Self.everyValue { w.set(k, v) }
        w.tensors = Self.everyTensor(seed: 42)
        w.alignment = alignment
        let path = dir + "/" + name
        try w.write(to: path)
        return (path, w)
    }

    func checkEqual(_ f: GGUFFile, _ w: GGUFWriter) throws {
        let userKeys = f.metadataKeys.filter { $0 != "general.alignment" }
        XCTAssertEqual(userKeys, Self.everyValue.map(\.0))
        for (k, v) in Self.everyValue { XCTAssertEqual(f.metadata[k], v, k) }
        XCTAssertEqual(f.tensors.map(\.name), w.tensors.map(\.name))
        for t in w.tensors {
            let (info, dt, bytes) = try f.data(t.name)
            XCTAssertEqual(info.shape, t.shape, t.name)
            XCTAssertEqual(dt, t.dtype, t.name)
            XCTAssertEqual(info.typeID, GGMLType.id(t.dtype), t.name)
            XCTAssertEqual(info.offset % f.alignment, 0, t.name)
            XCTAssertEqual((f.dataOffset + info.offset) % f.alignment, 0, t.name)
            XCTAssertEqual(Data(bytes), t.data, t.name)
        }
    }

    func testRoundTripEveryValueTypeAndDType() throws {
        let (path, w) = try writeEvery("every.gguf")
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.alignment, 32)
        try checkEqual(f, w)
        XCTAssertEqual(f.strings("t.strs"), ["a", "", "Ġt ok"])
        XCTAssertEqual(f.ints("t.ints"), [-1, 7])
        XCTAssertEqual(f.int("t.u64"), nil, "a UInt64 above Int.max has no Int value")
        XCTAssertEqual(f.double("t.f32"), Double(Float(0.1)))
        // Encoding is deterministic and the file is exactly what encode() gives.
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), try w.encode())
    }

    func testRoundTripWithWideAlignment() throws {
        let (path, w) = try writeEvery("aligned.gguf", alignment: 256)
        let f = try GGUFFile(path: path)
        XCTAssertEqual(f.alignment, 256)
        XCTAssertEqual(f.int("general.alignment"), 256)
        try checkEqual(f, w)
    }

    func testVersion2Accepted() throws {
        let (path, w) = try writeEvery("v3.gguf")
        var data = try Data(contentsOf: URL(fileURLWithPath: path))
        patch(&data, at: 4, UInt32(2))
        let v2 = dir + "/v2.gguf"
        try data.write(to: URL(fileURLWithPath: v2))
        let f = try GGUFFile(path: v2)
        XCTAssertEqual(f.version, 2)
        try checkEqual(f, w)
    }

    func testWriterRejectsValuesThatDisagreeWithTheirType() throws {
        let cases: [GGUFValue] = [
            .uint(256, .uint8), .uint(1, .float32), .int(1 << 40, .int32), .int(-1, .uint32),
            .float(1, .int16), .array([.int(1, .int32)], .uint32), .array([.string("a"), .bool(true)], .string),
        ]
        for v in cases {
            var w = GGUFWriter()
            w.set("bad", v)
            assertContains(errorMessage { _ = try w.encode() }, "[gguf write] metadata bad", "does not fit")
        }
        var w = GGUFWriter()
        w.tensors = [.init(name: "x", dtype: .f32, shape: [2], data: Data(count: 8)),
                     .init(name: "x", dtype: .f32, shape: [2], data: Data(count: 8))]
        assertContains(errorMessage { _ = try w.encode() }, "tensor x appears twice")
        w.tensors = [.init(name: "q", dtype: .q8_0, shape: [31], data: Data(count: 34))]
        assertContains(errorMessage { _ = try w.encode() }, "tensor q", "do not hold 31 q8_0 values")
        w.tensors = []
        w.alignment = 48
        assertContains(errorMessage { _ = try w.encode() }, "alignment 48 is not a power of two")
    }

    // MARK: the real model

    func testSmolLM2MetadataAndTensorTable() throws {
        let f = try GGUFFile(path: try realModelPath())
        XCTAssertEqual(f.version, 3)
        XCTAssertEqual(f.metadataKeys.count, 33)
        XCTAssertEqual(f.tensors.count, 272)
        XCTAssertEqual(f.alignment, 32)
        XCTAssertEqual(f.dataOffset, 1_785_664)
        XCTAssertEqual(f.fileSize, 98_362_432)
        XCTAssertEqual(f.string("general.architecture"), "llama")
        XCTAssertEqual(f.string("general.name"), "Smollm2 135M 8k Lc100K Mix1 Ep2")
        XCTAssertEqual(f.int("llama.block_count"), 30)
        XCTAssertEqual(f.int("llama.embedding_length"), 576)
        XCTAssertEqual(f.int("llama.attention.head_count_kv"), 3)
        XCTAssertEqual(f.double("llama.rope.freq_base"), 100000)
        XCTAssertEqual(f.double("llama.attention.layer_norm_rms_epsilon"), Double(Float(1e-5)))
        let tokens = try XCTUnwrap(f.strings("tokenizer.ggml.tokens"))
        XCTAssertEqual(tokens.count, 49152)
        XCTAssertEqual(Array(tokens.prefix(3)), ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        XCTAssertEqual(tokens.last, "ectable")
        XCTAssertEqual(f.strings("tokenizer.ggml.merges")?.count, 48900)
        XCTAssertEqual(f.strings("tokenizer.ggml.merges")?.first, "Ġ t")

        let blocks = Set(f.tensors.compactMap { t -> Int? in
            let p = t.name.split(separator: ".")
            return p.first == "blk" ? Int(p[1]) : nil
        })
        XCTAssertEqual(blocks, Set(0..<30))
        XCTAssertNil(f.info("output.weight"), "embeddings are tied")
        var types: [String: Int] = [:]
        for t in f.tensors { types[GGMLType.name(t.typeID), default: 0] += 1 }
        XCTAssertEqual(types, ["Q4_1": 210, "F32": 61, "Q8_0": 1])

        let embd = try XCTUnwrap(f.info("token_embd.weight"))
        XCTAssertEqual(embd.dtype, .q8_0)
        XCTAssertEqual(embd.shape, [49152, 576])
        XCTAssertEqual(embd.offset, 0)
        XCTAssertEqual(f.info("blk.0.attn_k.weight")?.shape, [192, 576])
        XCTAssertEqual(f.info("blk.0.attn_k.weight")?.dtype, .q4_1)
        XCTAssertEqual(f.info("blk.0.attn_k.weight").map { f.dataOffset + $0.offset }, 33_530_176)
        XCTAssertEqual(f.info("blk.29.ffn_down.weight")?.shape, [576, 1536])

        // Dequantized values, as gguf-py's dequantize gives them.
        let (_, dt, bytes) = try f.data("token_embd.weight")
        let e = Dequantize.toF32(dt, bytes, count: 576 * 2)
        XCTAssertEqual(Array(e.prefix(4)), [-0.10654449462890625, 0.032978057861328125, 0.048198699951171875,
                                            -0.022830963134765625])
        let (qi, qdt, qbytes) = try f.data("blk.0.attn_q.weight")
        let q = Dequantize.toF32(qdt, qbytes, count: qi.elements)
        XCTAssertEqual(Array(q.prefix(4)), [-0.0963134765625, 0.1573486328125, -0.0963134765625, -0.73046875])
        XCTAssertEqual(Array(q.suffix(3)), [-0.096832275390625, -0.14984130859375, -0.255859375])
        let (_, ndt, nbytes) = try f.data("output_norm.weight")
        XCTAssertEqual(Array(Dequantize.toF32(ndt, nbytes, count: 576).prefix(3)), [1.7578125, 1.8203125, 1.78125])
    }

    // MARK: bad input

    func writeBad(_ name: String, _ data: Data) throws -> String {
        let path = dir + "/" + name
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    func validFile() throws -> Data { try Data(contentsOf: URL(fileURLWithPath: try writeEvery("good.gguf").0)) }

    func testTruncatedAnywhere() throws {
        let data = try validFile()
        let good = try GGUFFile(path: try writeBad("whole.gguf", data))
        // The file ends with the last tensor's alignment padding; a cut there loses nothing.
        let lastEnd = good.dataOffset + good.info("f32.one")!.offset + 4
        // Every byte of the header, then every 1/20 of the file.
        let headerEnd = tensorInfoOffset(data, "f32.one") + 4 + 8 + 4 + 8
        var cuts = Array(0..<headerEnd)
        cuts += (1..<20).map { lastEnd * $0 / 20 } + [lastEnd - 1]
        // Cut one file shorter and shorter in place: no rewriting per cut.
        let path = try writeBad("cut.gguf", data)
        for cut in cuts.sorted(by: >) {
            XCTAssertEqual(truncate(path, off_t(cut)), 0)
            let m = errorMessage { _ = try GGUFFile(path: path) }
            XCTAssertTrue(m.hasPrefix("[gguf] cut.gguf: "), "cut at \(cut): \(m)")
            XCTAssertTrue(["truncated", "past end of file", "too short", "impossible"].contains { m.contains($0) },
                          "cut at \(cut): \(m)")
        }
        // A cut inside the tensor data names the tensor whose bytes are missing.
        let last = try writeBad("last.gguf", data.prefix(lastEnd - 1))
        assertContains(errorMessage { _ = try GGUFFile(path: last) },
                       "[gguf] last.gguf: tensor f32.one: data ends at \(lastEnd), past end of file (\(lastEnd - 1))")
        let tiny = try writeBad("tiny.gguf", data.prefix(10))
        assertContains(errorMessage { _ = try GGUFFile(path: tiny) }, "[gguf] tiny.gguf: file is 10 bytes, too short")
        // A header cut names what it was reading.
        var w = GGUFWriter()
        w.set("general.name", .string("x"))
        let inKey = try writeBad("inkey.gguf", try w.encode().prefix(24 + 8 + 2))
        assertContains(errorMessage { _ = try GGUFFile(path: inKey) }, "[gguf] inkey.gguf: key of metadata entry 0")
    }

    func testCorruptedMagic() throws {
        var data = try validFile()
        data[0] = UInt8(ascii: "X")
        let path = try writeBad("magic.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "[gguf] magic.gguf: bad magic 0x46554758")
    }

    func testUnsupportedVersion() throws {
        for v: UInt32 in [1, 4, 0x0300_0000] {
            var data = try validFile()
            patch(&data, at: 4, v)
            let path = try writeBad("version.gguf", data)
            assertContains(errorMessage { _ = try GGUFFile(path: path) },
                           "[gguf] version.gguf: unsupported version \(v), expected 2 or 3")
        }
    }

    func testAbsurdCounts() throws {
        var data = try validFile()
        patch(&data, at: 8, UInt64(1) << 60)
        var path = try writeBad("count.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) },
                       "[gguf] count.gguf: tensor count 1152921504606846976 is impossible for a file of \(data.count) bytes")
        data = try validFile()
        patch(&data, at: 16, UInt64.max)
        path = try writeBad("kv.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "[gguf] kv.gguf: metadata count", "is impossible")
    }

    func testAbsurdDimensionAndDimensionCount() throws {
        var data = try validFile()
        let at = tensorInfoOffset(data, "bf16.3d")
        patch(&data, at: at + 4 + 8, UInt64(1) << 50)
        var path = try writeBad("dim.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) },
                       "[gguf] dim.gguf: tensor bf16.3d: dimension 1 is 1125899906842624, expected 1 to 2^40")
        data = try validFile()
        patch(&data, at: at + 4 + 8, UInt64(0))
        path = try writeBad("zero.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "tensor bf16.3d: dimension 1 is 0")
        data = try validFile()
        patch(&data, at: at, UInt32(7))
        path = try writeBad("ndim.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "tensor bf16.3d: 7 dimensions, expected 1 to 4")
        // Dimensions that are each fine but multiply past any real tensor.
        data = try validFile()
        for d in 0..<3 { patch(&data, at: at + 4 + 8 * d, UInt64(1) << 39) }
        path = try writeBad("product.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "tensor bf16.3d: element count overflows")
    }

    func testTensorOffsetPastEndOfFile() throws {
        var data = try validFile()
        let at = tensorInfoOffset(data, "f32.odd") + 4 + 16 + 4   // after n_dims, 2 dims, type
        patch(&data, at: at, UInt64(1) << 40)
        var path = try writeBad("offset.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) },
                       "[gguf] offset.gguf: tensor f32.odd: offset 1099511627776 past end of file (\(data.count))")
        // Inside the file, but its bytes run past the end.
        data = try validFile()
        let f = try GGUFFile(path: try writeBad("ok.gguf", data))
        let late = (data.count - f.dataOffset) / 32 * 32
        patch(&data, at: at, UInt64(late))
        path = try writeBad("late.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) },
                       "[gguf] late.gguf: tensor f32.odd: data ends at \(f.dataOffset + late + 60), past end of file")
    }

    func testMissingTensor() throws {
        let f = try GGUFFile(path: try writeEvery("every.gguf").0)
        assertContains(errorMessage { _ = try f.data("blk.0.attn_q.weight") },
                       "[gguf] every.gguf: missing tensor blk.0.attn_q.weight")
    }

    func testUnsupportedTensorTypeWhenRequested() throws {
        var data = try validFile()
        let at = tensorInfoOffset(data, "f32.odd") + 4 + 16
        patch(&data, at: at, UInt32(16))   // IQ2_XXS
        let path = try writeBad("iq2.gguf", data)
        let f = try GGUFFile(path: path)    // the table opens; other tensors stay usable
        XCTAssertEqual(f.info("f32.odd")?.typeID, 16)
        XCTAssertNil(f.info("f32.odd")?.dtype)
        XCTAssertEqual(try f.data("f16.vec").bytes.count, 14)
        assertContains(errorMessage { _ = try f.data("f32.odd") },
                       "[gguf] iq2.gguf: tensor f32.odd has unsupported tensor type IQ2_XXS; supported: F32, F16, BF16, Q8_0")
        // A type Offload reads, but rows (5 values) that are not whole blocks: refused at open, by ggml's rule.
        patch(&data, at: at, UInt32(12))   // Q4_K
        assertContains(errorMessage { _ = try GGUFFile(path: try self.writeBad("q4k.gguf", data)) },
                       "[gguf] q4k.gguf: tensor f32.odd: rows of 5 values are not whole Q4_K blocks of 256")
        // An id ggml does not define at all.
        patch(&data, at: at, UInt32(999))
        let f2 = try GGUFFile(path: try writeBad("t999.gguf", data))
        assertContains(errorMessage { _ = try f2.data("f32.odd") }, "unsupported tensor type type 999")
    }

    func testBadAlignment() throws {
        var w = GGUFWriter()
        w.set("general.alignment", .uint(48, .uint32))
        w.tensors = [.init(name: "x", dtype: .f32, shape: [4], data: Data(count: 16))]
        var data = try w.encode()
        var path = try writeBad("align48.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) },
                       "[gguf] align48.gguf: general.alignment must be a power of two, found")
        w.set("general.alignment", .string("32"))
        path = try writeBad("alignstr.gguf", try w.encode())
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "general.alignment must be a power of two")
        // A tensor offset that is not a multiple of the alignment.
        data = try validFile()
        patch(&data, at: tensorInfoOffset(data, "f16.vec") + 4 + 8 + 4, UInt64(8))
        path = try writeBad("misaligned.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) },
                       "[gguf] misaligned.gguf: tensor f16.vec: offset 8 is not a multiple of the alignment 32")
    }

    func testBadMetadata() throws {
        var w = GGUFWriter()
        w.set("flag", .bool(true))
        w.set("kind", .uint(1, .uint32))
        let good = try w.encode()
        // Layout: 24-byte header, then key "flag" (8 + 4), type (4), one byte.
        var data = good
        data[24 + 12 + 4] = 2
        var path = try writeBad("bool.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "[gguf] bool.gguf: metadata flag: bool byte is 2")
        data = good
        patch(&data, at: 24 + 12, UInt32(13))
        path = try writeBad("vtype.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "[gguf] vtype.gguf: metadata flag: unknown value type 13")
        data = good
        patch(&data, at: 24, UInt64(1) << 62)
        path = try writeBad("keylen.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "[gguf] keylen.gguf: key of metadata entry 0",
                       "past end of file")
        // A string array whose length runs past the file.
        var w2 = GGUFWriter()
        w2.set("s", .array([.string("ab")], .string))
        data = try w2.encode()
        patch(&data, at: 24 + 9 + 4 + 4, UInt64(1) << 40)
        path = try writeBad("arr.gguf", data)
        assertContains(errorMessage { _ = try GGUFFile(path: path) }, "[gguf] arr.gguf: metadata s: array length", "past end of file")
    }

    func testNotAFile() throws {
        assertContains(errorMessage { _ = try GGUFFile(path: dir + "/absent.gguf") }, "[gguf] absent.gguf: cannot open")
        assertContains(errorMessage { _ = try GGUFFile(path: dir) }, "not a regular file")
    }
}
