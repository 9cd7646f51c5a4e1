// Safetensors writer. Tensors are produced one at a time and streamed to a
// temporary file that is renamed into place, so converting a model needs one
// tensor's worth of memory, and a crash never leaves a partial file (invariant 5).

import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

public struct SafetensorsWriter {
    public struct Tensor {
        public var name: String
        public var dtype: DType
        /// Row-major shape, outermost first.
        public var shape: [Int]
        /// Called once, while writing; returns exactly shape × dtype bytes.
        public var produce: () throws -> Data

        public init(name: String, dtype: DType, shape: [Int], data: Data) {
            self.init(name: name, dtype: dtype, shape: shape, produce: { data })
        }
        public init(name: String, dtype: DType, shape: [Int], produce: @escaping () throws -> Data) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.produce = produce
        }
        public var byteCount: Int? { dtype.byteCount(elements: shape.reduce(1, *)) }
    }

    /// Written as `__metadata__`; Hugging Face loaders want ["format": "pt"].
    public var metadata: [String: String] = [:]
    public var tensors: [Tensor] = []

    public init() {}

    /// Tensors in the order their bytes are written: the reference implementation's
    /// (dtype F32, BF16, F16, then name), so every tensor starts at a multiple of its
    /// element size, the file does not depend on insertion order, and the bytes
    /// equal what Python's safetensors writes for the same tensors.
    public var fileOrder: [Tensor] {
        func rank(_ d: DType) -> Int { d == .f32 ? 0 : d == .bf16 ? 1 : d == .f16 ? 2 : 3 }
        return tensors.sorted { a, b in rank(a.dtype) != rank(b.dtype) ? rank(a.dtype) < rank(b.dtype) : a.name < b.name }
    }

    /// The 8-byte length and the JSON header, padded with spaces to a multiple of 8.
    public func header() throws -> Data {
        var seen = Set<String>()
        var entries: [String] = []
        if !metadata.isEmpty {
            let kv = metadata.keys.sorted().map { jsonQuoted($0) + ":" + jsonQuoted(metadata[$0]!) }
            entries.append("\"__metadata__\":{" + kv.joined(separator: ",") + "}")
        }
        var offset = 0
        for t in fileOrder {
            guard t.name != "__metadata__", seen.insert(t.name).inserted else {
                throw OffloadError("[safetensors write] tensor \(t.name): name used twice or reserved")
            }
            guard let dname = Safetensors.name(t.dtype) else {
                throw OffloadError("[safetensors write] tensor \(t.name): \(t.dtype) has no safetensors dtype; "
                                   + "convert it to f32, f16 or bf16")
            }
            guard t.shape.allSatisfy({ $0 >= 0 }), let n = t.byteCount else {
                throw OffloadError("[safetensors write] tensor \(t.name): bad shape \(t.shape)")
            }
            entries.append(jsonQuoted(t.name) + ":{\"dtype\":\"\(dname)\",\"shape\":["
                           + t.shape.map(String.init).joined(separator: ",")
                           + "],\"data_offsets\":[\(offset),\(offset + n)]}")
            offset += n
        }
        var json = Array(("{" + entries.joined(separator: ",") + "}").utf8)
        while json.count % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out = Data()
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        return out
    }

    /// The complete file as bytes (for small files and tests).
    public func encode() throws -> Data {
        var out = try header()
        for t in fileOrder { out.append(try Self.checkedData(t)) }
        return out
    }

    /// Writes atomically, one tensor in memory at a time.
    public func write(to path: String) throws {
        let head = try header()
        let order = fileOrder
        try writeAtomically(to: path, context: "[safetensors write]") { out in
            try out.write(contentsOf: head)
            for t in order { try out.write(contentsOf: try Self.checkedData(t)) }
        }
    }

    private static func checkedData(_ t: Tensor) throws -> Data {
        let d = try t.produce()
        guard d.count == t.byteCount else {
            throw OffloadError("[safetensors write] tensor \(t.name): \(d.count) bytes do not hold "
                               + "\(t.shape.reduce(1, *)) \(t.dtype) values")
        }
        return d
    }
}

/// Streams a file to a temporary name beside `path`, flushes it to disk, then
/// renames it into place; on any error the temporary file is removed.
public func writeAtomically(to path: String, context: String, _ body: (FileHandle) throws -> Void) throws {
    let url = URL(fileURLWithPath: path)
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())")
    guard FileManager.default.createFile(atPath: tmp.path, contents: nil) else {
        throw OffloadError("\(context) \(path): cannot create \(tmp.path): \(String(cString: strerror(errno)))")
    }
    do {
        let h = try FileHandle(forWritingTo: tmp)
        do {
            try body(h)
            try h.synchronize()
            try h.close()
        } catch {
            try? h.close()
            throw error
        }
        guard rename(tmp.path, path) == 0 else {
            throw OffloadError("\(context) \(path): cannot rename into place: \(String(cString: strerror(errno)))")
        }
    } catch let e as OffloadError {
        try? FileManager.default.removeItem(at: tmp)
        throw e
    } catch {
        try? FileManager.default.removeItem(at: tmp)
        throw OffloadError("\(context) \(path): \(error.localizedDescription)")
    }
}
