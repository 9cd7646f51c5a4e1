// Safetensors reader: 8-byte little-endian header length, a JSON header naming
// each tensor's dtype, shape and byte range, then the raw bytes, served from a
// read-only memory map. Every range is checked at open (inside the file, the
// size its shape and dtype need, no overlaps), so `data` never reads out of bounds.

import Foundation
import Tensors
#if canImport(Glibc)
import Glibc
#endif

/// One tensor's entry in the header. `shape` is row-major, outermost first.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public var name: String
    /// The dtype as the file spells it ("F32", "BF16", "I64", ...).
    public var dtypeName: String
    public var shape: [Int]
    /// Byte range relative to the start of the data section (after the header).
    public var dataOffsets: Range<Int>
    public var elements: Int { shape.reduce(1, *) }
    /// The element type, or nil when Offload cannot read it (I64, F64, F8_*, ...).
    public var dtype: DType? { Safetensors.dtype(dtypeName) }
}

public enum Safetensors {
    /// The header-length limit the reference implementation uses; a larger value
    /// means a corrupt file, not a big model.
    public static let maxHeaderLength = 100_000_000

    public static func dtype(_ name: String) -> DType? {
        switch name {
        case "F32": return .f32
        case "F16": return .f16
        case "BF16": return .bf16
        default: return nil
        }
    }

    public static func name(_ dtype: DType) -> String? {
        switch dtype {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        default: return nil   // block formats exist only in GGUF
        }
    }

    /// Bytes per element of every dtype the format defines, readable or not, so
    /// that ranges of tensors Offload cannot use are still checked.
    static let elementBytes: [String: Int] = [
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
        "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
        "I32": 4, "U32": 4, "F32": 4,
        "I64": 8, "U64": 8, "F64": 8,
    ]
}

/// A memory-mapped safetensors file.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    /// `__metadata__` (string to string), empty when absent.
    public let metadata: [String: String]
    /// Tensors in the order their bytes appear in the file.
    public let tensors: [SafetensorsTensorInfo]
    /// Absolute file offset where the data section starts (8 + header length).
    public let dataOffset: Int
    public let fileSize: Int
    private let tensorIndex: [String: Int]
    private let map: UnsafeMutableRawPointer?

    public var fileName: String { (path as NSString).lastPathComponent }

    /// Opens and validates `path`: the header, every entry, and every byte range.
    public init(path: String) throws {
        self.path = path
        let ctx = "[safetensors] \((path as NSString).lastPathComponent)"
        func fail(_ what: String) -> OffloadError { OffloadError("\(ctx): \(what)") }
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw fail("cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw fail("cannot stat: \(String(cString: strerror(errno)))") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw fail("not a regular file") }
        let size = Int(st.st_size)
        fileSize = size
        guard size >= 8 else { throw fail("file is \(size) bytes, too short for the 8-byte header length") }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw fail("cannot map: \(String(cString: strerror(errno)))")
        }
        map = m
        do {
            let headerLength = UInt64(littleEndian: m.loadUnaligned(as: UInt64.self))
            guard headerLength <= UInt64(size - 8) else {
                throw fail("header length \(headerLength) runs past end of file (\(size) bytes)")
            }
            guard headerLength <= UInt64(Safetensors.maxHeaderLength) else {
                throw fail("header length \(headerLength) is absurd (limit \(Safetensors.maxHeaderLength))")
            }
            let n = Int(headerLength)
            dataOffset = 8 + n
            let dataSize = size - dataOffset
            let headerBytes = Data(bytes: m + 8, count: n)
            guard headerBytes.first == UInt8(ascii: "{") else {
                throw fail("header does not start with '{' (bad JSON header)")
            }
            let root: [String: JSONValue]
            do {
                guard let obj = try JSONValue.parse(headerBytes).object else {
                    throw fail("header is not a JSON object")
                }
                root = obj
            } catch let e as OffloadJSONError {
                throw fail("bad JSON header: \(e.message)")
            }

            var meta: [String: String] = [:]
            if let mv = root["__metadata__"] {
                guard let mo = mv.object else { throw fail("__metadata__ is \(mv.kind), expected an object") }
                for (k, v) in mo {
                    guard let s = v.string else { throw fail("__metadata__ \(k) is \(v.kind), expected a string") }
                    meta[k] = s
                }
            }
            metadata = meta

            var infos: [SafetensorsTensorInfo] = []
            for name in root.keys.sorted() where name != "__metadata__" {
                infos.append(try Self.parseEntry(name, root[name]!, dataSize: dataSize, fail: fail))
            }
            // Byte order; ties (empty tensors) by name, so the order is stable.
            infos.sort { ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name)
                < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name) }
            var previous: SafetensorsTensorInfo?
            for t in infos where !t.dataOffsets.isEmpty {
                if let p = previous, t.dataOffsets.lowerBound < p.dataOffsets.upperBound {
                    throw fail("tensor \(t.name): bytes \(Self.show(t.dataOffsets)) overlap tensor \(p.name) "
                               + "\(Self.show(p.dataOffsets))")
                }
                previous = t
            }
            tensors = infos
            var index: [String: Int] = [:]
            for (i, t) in infos.enumerated() { index[t.name] = i }
            tensorIndex = index
        } catch {
            munmap(m, size)
            throw error
        }
    }

    deinit { if let map { munmap(map, fileSize) } }

    /// Drops the file's pages from this process's resident memory: they stay in the page cache, and a
    /// later read of the mapping maps them back. For a caller that has copied out what it needed.
    public func dropResidentPages() { if let map { _ = madvise(map, fileSize, MADV_DONTNEED) } }

    public func info(_ name: String) -> SafetensorsTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// The tensor's bytes inside the mapping (valid while this object lives).
    public func data(_ name: String) throws -> (info: SafetensorsTensorInfo, dtype: DType, bytes: UnsafeRawBufferPointer) {
        guard let t = info(name) else { throw OffloadError("[safetensors] \(fileName): missing tensor \(name)") }
        guard let dt = t.dtype else {
            throw OffloadError("[safetensors] \(fileName): tensor \(name): unsupported dtype \(t.dtypeName); "
                               + "supported: F32, F16, BF16")
        }
        return (t, dt, UnsafeRawBufferPointer(start: map! + dataOffset + t.dataOffsets.lowerBound,
                                              count: t.dataOffsets.count))
    }

    // MARK: parsing

    private static func show(_ r: Range<Int>) -> String { "[\(r.lowerBound), \(r.upperBound))" }

    private static func parseEntry(_ name: String, _ v: JSONValue, dataSize: Int,
                                   fail: (String) -> OffloadError) throws -> SafetensorsTensorInfo {
        func bad(_ what: String) -> OffloadError { fail("tensor \(name): \(what)") }
        guard let o = v.object else { throw bad("entry is \(v.kind), expected an object") }
        guard let dv = o["dtype"] else { throw bad("missing dtype") }
        guard let dtypeName = dv.string else { throw bad("dtype is \(dv.kind), expected a string") }
        guard let sv = o["shape"] else { throw bad("missing shape") }
        guard let sa = sv.array else { throw bad("shape is \(sv.kind), expected an array") }
        var shape: [Int] = []
        var elements = 1
        for (i, d) in sa.enumerated() {
            guard let x = d.int, x >= 0 else { throw bad("shape[\(i)] is \(d), expected a non-negative integer") }
            let (p, o) = elements.multipliedReportingOverflow(by: x)
            guard !o, p < 1 << 48 else { throw bad("shape \(sa.map { $0.int ?? -1 }) has too many elements") }
            elements = p
            shape.append(x)
        }
        guard let ov = o["data_offsets"] else { throw bad("missing data_offsets") }
        guard let oa = ov.array, oa.count == 2, let begin = oa[0].int, let end = oa[1].int else {
            throw bad("data_offsets is \(ov), expected [begin, end] integers")
        }
        guard begin >= 0, begin <= end else { throw bad("data_offsets [\(begin), \(end)] are not an ascending pair") }
        guard end <= dataSize else {
            throw bad("data_offsets [\(begin), \(end)] run past end of file (data section is \(dataSize) bytes)")
        }
        if let eb = Safetensors.elementBytes[dtypeName] {
            let need = elements * eb
            guard end - begin == need else {
                throw bad("data_offsets [\(begin), \(end)] hold \(end - begin) bytes, but shape \(shape) of "
                          + "\(dtypeName) needs \(need)")
            }
        }
        return SafetensorsTensorInfo(name: name, dtypeName: dtypeName, shape: shape, dataOffsets: begin..<end)
    }
}
