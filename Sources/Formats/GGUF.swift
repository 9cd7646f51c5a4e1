// GGUF (v2, v3) reader: metadata of every value type, tensor infos, alignment,
// and tensor bytes served straight from a read-only memory map. Reading one
// tensor never reads the rest of the file.

import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// A metadata value. Integers keep their sign; floats widen to Double.
public indirect enum GGUFValue: Sendable, Equatable {
    case uint(UInt64, GGUFValueType)
    case int(Int64, GGUFValueType)
    case float(Double, GGUFValueType)
    case bool(Bool)
    case string(String)
    case array([GGUFValue], GGUFValueType)

    public var int: Int? {
        switch self {
        case .uint(let v, _): return v <= UInt64(Int.max) ? Int(v) : nil
        case .int(let v, _): return Int(v)
        default: return nil
        }
    }
    public var double: Double? {
        switch self {
        case .float(let v, _): return v
        case .uint, .int: return int.map(Double.init)
        default: return nil
        }
    }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var array: [GGUFValue]? { if case .array(let a, _) = self { return a }; return nil }
}

public enum GGUFValueType: UInt32, Sendable {
    case uint8 = 0, int8, uint16, int16, uint32, int32, float32, bool, string, array, uint64, int64, float64
}

/// ggml tensor type ids for the types Offload reads and writes.
public enum GGMLType {
    public static func dtype(_ id: UInt32) -> DType? { DType(ggmlID: id) }
    public static func id(_ t: DType) -> UInt32 { t.ggmlID }
    static let names: [UInt32: String] = [
        0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
        10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
        17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
        24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
    ]
    public static func name(_ id: UInt32) -> String { names[id] ?? "type \(id)" }
    /// The types Offload reads, by ggml's names.
    public static var supportedNames: String { DType.allCases.map { name($0.ggmlID) }.joined(separator: ", ") }
}

/// One tensor's description. `shape` is row-major, outermost first (GGUF's
/// dims reversed): a weight of ne = [in, out] has shape [out, in].
public struct GGUFTensorInfo: Sendable, Equatable {
    public var name: String
    public var shape: [Int]
    public var typeID: UInt32
    /// Offset of the data relative to the start of the data section.
    public var offset: Int
    public var elements: Int { shape.reduce(1, *) }
    public var dtype: DType? { GGMLType.dtype(typeID) }
    public var byteCount: Int? { dtype?.byteCount(elements: elements) }
}

/// A memory-mapped GGUF file.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let alignment: Int
    /// Metadata in file order.
    public let metadataKeys: [String]
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    /// Absolute file offset where tensor data starts.
    public let dataOffset: Int
    public let fileSize: Int
    private let tensorIndex: [String: Int]
    private let map: UnsafeMutableRawPointer?

    /// Opens and validates `path`: header, every metadata value, every tensor
    /// info, and that every tensor's bytes lie inside the file.
    public init(path: String) throws {
        self.path = path
        let name = (path as NSString).lastPathComponent
        let ctx = "[gguf] \(name)"
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw OffloadError("\(ctx): cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw OffloadError("\(ctx): cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw OffloadError("\(ctx): not a regular file") }
        let size = Int(st.st_size)
        fileSize = size
        guard size >= 24 else { throw OffloadError("\(ctx): file is \(size) bytes, too short for a GGUF header (24)") }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw OffloadError("\(ctx): cannot map: \(String(cString: strerror(errno)))")
        }
        map = m
        do {
            var r = ByteReader(UnsafeRawBufferPointer(start: m, count: size), context: ctx)
            let magic = try r.read(UInt32.self, "magic")
            guard magic == 0x4655_4747 else {
                throw r.fail(String(format: "bad magic 0x%08x, expected 0x46554747 (\"GGUF\")", magic))
            }
            version = try r.read(UInt32.self, "version")
            guard version == 2 || version == 3 else { throw r.fail("unsupported version \(version), expected 2 or 3") }
            let tensorCount = try r.read(UInt64.self, "tensor count")
            let kvCount = try r.read(UInt64.self, "metadata count")
            // Each tensor info takes at least 8+4+8+4+8 bytes; each kv at least 8+4+1.
            guard tensorCount <= UInt64(size / 32) else {
                throw r.fail("tensor count \(tensorCount) is impossible for a file of \(size) bytes (truncated or corrupted)")
            }
            guard kvCount <= UInt64(size / 13) else {
                throw r.fail("metadata count \(kvCount) is impossible for a file of \(size) bytes (truncated or corrupted)")
            }
            var keys: [String] = []
            var meta: [String: GGUFValue] = [:]
            keys.reserveCapacity(Int(kvCount))
            for i in 0..<Int(kvCount) {
                let key = try Self.readString(&r, "key of metadata entry \(i)")
                let rawType = try r.read(UInt32.self, "type of \(key)")
                guard let type = GGUFValueType(rawValue: rawType) else {
                    throw r.fail("metadata \(key): unknown value type \(rawType)")
                }
                meta[key] = try Self.readValue(&r, type, key: key, depth: 0)
                keys.append(key)
            }
            metadataKeys = keys
            metadata = meta
            var align = 32
            if let a = meta["general.alignment"] {
                guard let v = a.int, v > 0, v & (v - 1) == 0, v <= 1 << 20 else {
                    throw r.fail("general.alignment must be a power of two, found \(a)")
                }
                align = v
            }
            alignment = align
            var infos: [GGUFTensorInfo] = []
            infos.reserveCapacity(Int(tensorCount))
            var index: [String: Int] = [:]
            for i in 0..<Int(tensorCount) {
                let tname = try Self.readString(&r, "name of tensor \(i)")
                let nd = try r.read(UInt32.self, "dimension count of \(tname)")
                guard (1...4).contains(nd) else { throw r.fail("tensor \(tname): \(nd) dimensions, expected 1 to 4") }
                var ne: [Int] = []
                var elements = 1
                for d in 0..<Int(nd) {
                    let v = try r.read(UInt64.self, "dimension \(d) of \(tname)")
                    guard v > 0, v < 1 << 40 else { throw r.fail("tensor \(tname): dimension \(d) is \(v), expected 1 to 2^40") }
                    let (p, o) = elements.multipliedReportingOverflow(by: Int(v))
                    guard !o, p < 1 << 48 else { throw r.fail("tensor \(tname): element count overflows") }
                    elements = p
                    ne.append(Int(v))
                }
                let typeID = try r.read(UInt32.self, "type of \(tname)")
                let off = try r.read(UInt64.self, "offset of \(tname)")
                guard off < UInt64(size) else { throw r.fail("tensor \(tname): offset \(off) past end of file (\(size))") }
                guard index[tname] == nil else { throw r.fail("tensor \(tname) appears twice") }
                index[tname] = infos.count
                infos.append(GGUFTensorInfo(name: tname, shape: ne.reversed(), typeID: typeID, offset: Int(off)))
            }
            tensors = infos
            tensorIndex = index
            dataOffset = (r.offset + align - 1) / align * align
            for t in infos {
                guard t.offset % align == 0 else {
                    throw r.fail("tensor \(t.name): offset \(t.offset) is not a multiple of the alignment \(align)")
                }
                // Only types we can size are checked here; others fail when used. A row (ggml's
                // ne0, the innermost dimension) must be whole blocks, as ggml requires.
                if let dt = t.dtype, t.shape.last! % dt.blockElements != 0 {
                    throw r.fail("tensor \(t.name): rows of \(t.shape.last!) values are not whole \(GGMLType.name(dt.ggmlID)) "
                                 + "blocks of \(dt.blockElements)")
                }
                if let bytes = t.byteCount {
                    let end = dataOffset + t.offset + bytes
                    guard end <= size else {
                        throw r.fail("tensor \(t.name): data ends at \(end), past end of file (\(size))")
                    }
                } else if let dt = t.dtype {
                    throw r.fail("tensor \(t.name): \(t.elements) elements is not a whole number of \(dt) blocks")
                }
            }
        } catch {
            munmap(m, size)
            throw error
        }
    }

    deinit { if let map { munmap(map, fileSize) } }

    /// Drops the file's pages from this process's resident memory: they stay in the page cache, and a
    /// later read of the mapping maps them back. For a caller that has copied out what it needed.
    public func dropResidentPages() { if let map { _ = madvise(map, fileSize, MADV_DONTNEED) } }

    public var fileName: String { (path as NSString).lastPathComponent }

    public func info(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// The tensor's bytes inside the mapping (valid while this object lives).
    public func data(_ name: String) throws -> (info: GGUFTensorInfo, dtype: DType, bytes: UnsafeRawBufferPointer) {
        guard let t = info(name) else { throw OffloadError("[gguf] \(fileName): missing tensor \(name)") }
        guard let dt = t.dtype, let n = t.byteCount else {
            throw OffloadError("[gguf] \(fileName): tensor \(name) has unsupported tensor type \(GGMLType.name(t.typeID)); "
                               + "supported: \(GGMLType.supportedNames)")
        }
        return (t, dt, UnsafeRawBufferPointer(start: map! + dataOffset + t.offset, count: n))
    }

    /// A copy of the tensor's bytes, read from the file without touching the mapping. For a caller
    /// that keeps the mapping out of its resident memory: the page cache may hold the file in large
    /// folios (after a sequential read of it), and one touch of the mapping maps a whole folio.
    public func copy(_ name: String) throws -> (info: GGUFTensorInfo, dtype: DType, bytes: [UInt8]) {
        let (t, dt, view) = try data(name)
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw OffloadError("[gguf] \(fileName): cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: view.count)
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(dataOffset + t.offset + done)) }
            guard n > 0 else {
                throw OffloadError("[gguf] \(fileName): cannot read tensor \(name): " + (n == 0 ? "file ends early" : String(cString: strerror(errno))))
            }
            done += n
        }
        return (t, dt, bytes)
    }

    /// Absolute file offset of a tensor's bytes (for direct I/O).
    public func fileOffset(of name: String) -> Int? { info(name).map { dataOffset + $0.offset } }

    // MARK: metadata accessors

    public func int(_ key: String) -> Int? { metadata[key]?.int }
    public func double(_ key: String) -> Double? { metadata[key]?.double }
    public func string(_ key: String) -> String? { metadata[key]?.string }
    public func bool(_ key: String) -> Bool? { metadata[key]?.bool }

    public func strings(_ key: String) -> [String]? {
        guard let a = metadata[key]?.array else { return nil }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for v in a { guard let s = v.string else { return nil }; out.append(s) }
        return out
    }
    public func ints(_ key: String) -> [Int]? {
        guard let a = metadata[key]?.array else { return nil }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for v in a { guard let s = v.int else { return nil }; out.append(s) }
        return out
    }
    public func doubles(_ key: String) -> [Double]? {
        guard let a = metadata[key]?.array else { return nil }
        return a.compactMap(\.double).count == a.count ? a.compactMap(\.double) : nil
    }

    // MARK: parsing

    static func readString(_ r: inout ByteReader, _ what: @autoclosure () -> String) throws -> String {
        let n = try r.read(UInt64.self, "length of \(what())")
        guard n <= UInt64(r.count - r.offset) else {
            throw r.fail("\(what()): string length \(n) past end of file")
        }
        let b = try r.readBytes(Int(n), what())
        return String(decoding: b, as: UTF8.self)
    }

    static func readValue(_ r: inout ByteReader, _ t: GGUFValueType, key: String, depth: Int) throws -> GGUFValue {
        switch t {
        case .uint8: return .uint(UInt64(try r.read(UInt8.self, key)), t)
        case .int8: return .int(Int64(try r.read(Int8.self, key)), t)
        case .uint16: return .uint(UInt64(try r.read(UInt16.self, key)), t)
        case .int16: return .int(Int64(try r.read(Int16.self, key)), t)
        case .uint32: return .uint(UInt64(try r.read(UInt32.self, key)), t)
        case .int32: return .int(Int64(try r.read(Int32.self, key)), t)
        case .uint64: return .uint(try r.read(UInt64.self, key), t)
        case .int64: return .int(try r.read(Int64.self, key), t)
        case .float32: return .float(Double(try r.readF32(key)), t)
        case .float64: return .float(try r.readF64(key), t)
        case .bool:
            let b = try r.read(UInt8.self, key)
            guard b <= 1 else { throw r.fail("metadata \(key): bool byte is \(b), expected 0 or 1") }
            return .bool(b == 1)
        case .string: return .string(try readString(&r, "metadata \(key)"))
        case .array:
            guard depth < 4 else { throw r.fail("metadata \(key): arrays nested too deeply") }
            let rawType = try r.read(UInt32.self, "element type of \(key)")
            guard let et = GGUFValueType(rawValue: rawType) else {
                throw r.fail("metadata \(key): unknown array element type \(rawType)")
            }
            let n = try r.read(UInt64.self, "length of \(key)")
            guard n <= UInt64(r.count - r.offset) else {
                throw r.fail("metadata \(key): array length \(n) past end of file")
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(n))
            for _ in 0..<Int(n) { items.append(try readValue(&r, et, key: key, depth: depth + 1)) }
            return .array(items, et)
        }
    }
}
