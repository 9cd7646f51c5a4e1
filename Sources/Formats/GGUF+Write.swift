// GGUF v3 writer. The file is written to a temporary name beside the target and
// renamed into place, so a crash never leaves a partial model (invariant 5).

import Foundation
import Tensors

public struct GGUFWriter {
    public struct Tensor {
        public var name: String
        public var dtype: DType
        /// Row-major shape, outermost first (written to the file reversed, as ne).
        public var shape: [Int]
        public var data: Data
        /// For a tensor too large to hold: writes exactly its bytes when the file is
        /// written (`write(to:)` only; `encode()` refuses it).
        public var produce: ((FileHandle) throws -> Void)?
        public init(name: String, dtype: DType, shape: [Int], data: Data) {
            self.name = name; self.dtype = dtype; self.shape = shape; self.data = data
        }
        public init(name: String, dtype: DType, shape: [Int], produce: @escaping (FileHandle) throws -> Void) {
            self.name = name; self.dtype = dtype; self.shape = shape; data = Data(); self.produce = produce
        }
        var byteCount: Int? { dtype.byteCount(elements: shape.reduce(1, *)) }
    }

    public var metadata: [(key: String, value: GGUFValue)] = []
    public var tensors: [Tensor] = []
    public var alignment = 32

    public init() {}

    public mutating func set(_ key: String, _ value: GGUFValue) {
        if let i = metadata.firstIndex(where: { $0.key == key }) { metadata[i].value = value }
        else { metadata.append((key, value)) }
    }

    /// The complete file as bytes (every tensor's data in memory).
    public func encode() throws -> Data {
        if let t = tensors.first(where: { $0.produce != nil }) {
            throw OffloadError("[gguf write] tensor \(t.name) is produced while writing; use write(to:)")
        }
        var out = try header()
        for t in tensors { out.append(t.data); pad(&out) }
        return out
    }

    private func pad(_ out: inout Data) {
        let r = out.count % alignment
        if r != 0 { out.append(Data(count: alignment - r)) }
    }

    /// Metadata and tensor infos, padded to the alignment: everything before the first tensor.
    func header() throws -> Data {
        var out = Data()
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        func str(_ s: String) { let u = Array(s.utf8); u64(UInt64(u.count)); out.append(contentsOf: u) }
        func value(_ v: GGUFValue, typed: Bool, key: String) throws {
            // A value whose case, width or element type disagrees with its type tag
            // would be written as bytes the reader parses differently.
            guard v.checkedType != nil else {
                throw OffloadError("[gguf write] metadata \(key): value \(v) does not fit its declared type")
            }
            func tag(_ t: GGUFValueType) { if typed { u32(t.rawValue) } }
            switch v {
            case .uint(let x, let t):
                tag(t)
                switch t {
                case .uint8: out.append(UInt8(truncatingIfNeeded: x))
                case .uint16: withUnsafeBytes(of: UInt16(truncatingIfNeeded: x).littleEndian) { out.append(contentsOf: $0) }
                case .uint32: u32(UInt32(truncatingIfNeeded: x))
                default: u64(x)
                }
            case .int(let x, let t):
                tag(t)
                switch t {
                case .int8: out.append(UInt8(bitPattern: Int8(truncatingIfNeeded: x)))
                case .int16: withUnsafeBytes(of: Int16(truncatingIfNeeded: x).littleEndian) { out.append(contentsOf: $0) }
                case .int32: u32(UInt32(bitPattern: Int32(truncatingIfNeeded: x)))
                default: u64(UInt64(bitPattern: x))
                }
            case .float(let x, let t):
                tag(t)
                if t == .float64 { u64(x.bitPattern) } else { u32(Float(x).bitPattern) }
            case .bool(let b): tag(.bool); out.append(b ? 1 : 0)
            case .string(let s): tag(.string); str(s)
            case .array(let items, let et):
                tag(.array); u32(et.rawValue); u64(UInt64(items.count))
                for item in items { try value(item, typed: false, key: key) }
            }
        }
        var meta = metadata
        if alignment != 32, !meta.contains(where: { $0.key == "general.alignment" }) {
            meta.append(("general.alignment", .uint(UInt64(alignment), .uint32)))
        }
        u32(0x4655_4747); u32(3); u64(UInt64(tensors.count)); u64(UInt64(meta.count))
        guard alignment > 0, alignment & (alignment - 1) == 0 else {
            throw OffloadError("[gguf write] alignment \(alignment) is not a power of two")
        }
        var seenKeys = Set<String>(), seenTensors = Set<String>()
        for (k, _) in meta where !seenKeys.insert(k).inserted {
            throw OffloadError("[gguf write] metadata \(k) appears twice")
        }
        for t in tensors where !seenTensors.insert(t.name).inserted {
            throw OffloadError("[gguf write] tensor \(t.name) appears twice")
        }
        for (k, v) in meta { str(k); try value(v, typed: true, key: k) }
        var offset = 0
        var offsets: [Int] = []
        for t in tensors {
            let elements = t.shape.reduce(1, *)
            guard let n = t.byteCount, t.produce != nil || n == t.data.count else {
                throw OffloadError("[gguf write] tensor \(t.name): \(t.data.count) bytes do not hold \(elements) \(t.dtype) values")
            }
            str(t.name); u32(UInt32(t.shape.count))
            for d in t.shape.reversed() { u64(UInt64(d)) }
            u32(GGMLType.id(t.dtype)); u64(UInt64(offset))
            offsets.append(offset)
            offset = (offset + n + alignment - 1) / alignment * alignment
        }
        pad(&out)
        return out
    }

    /// Writes atomically (temporary file in the same folder, then rename), one tensor
    /// at a time, so a file larger than memory can be written from produced tensors.
    public func write(to path: String) throws {
        let head = try header()
        try writeAtomically(to: path, context: "[gguf write]") { h in
            try h.write(contentsOf: head)
            var written = head.count
            for t in tensors {
                let n = t.byteCount ?? 0
                if let produce = t.produce {
                    let before = try h.offset()
                    try produce(h)
                    let made = Int(try h.offset() - before)
                    guard made == n else {
                        throw OffloadError("[gguf write] tensor \(t.name): produced \(made) bytes, expected \(n)")
                    }
                } else {
                    try h.write(contentsOf: t.data)
                }
                written += n
                let r = written % alignment
                if r != 0 { try h.write(contentsOf: Data(count: alignment - r)); written += alignment - r }
            }
        }
    }
}

/// Writes `data` to `path` through a temporary file, an fsync and a rename.
public func writeAtomically(_ data: Data, to path: String, context: String) throws {
    try writeAtomically(to: path, context: context) { try $0.write(contentsOf: data) }
}

extension GGUFValue {
    /// The type tag this value is written with, or nil when the value does not fit
    /// it (an integer out of range for its width, a case that disagrees with its
    /// tag, an array element of another type).
    var checkedType: GGUFValueType? {
        switch self {
        case .uint(let x, let t):
            let limit: UInt64
            switch t {
            case .uint8: limit = UInt64(UInt8.max)
            case .uint16: limit = UInt64(UInt16.max)
            case .uint32: limit = UInt64(UInt32.max)
            case .uint64: limit = UInt64.max
            default: return nil
            }
            return x <= limit ? t : nil
        case .int(let x, let t):
            let range: ClosedRange<Int64>
            switch t {
            case .int8: range = Int64(Int8.min)...Int64(Int8.max)
            case .int16: range = Int64(Int16.min)...Int64(Int16.max)
            case .int32: range = Int64(Int32.min)...Int64(Int32.max)
            case .int64: range = Int64.min...Int64.max
            default: return nil
            }
            return range.contains(x) ? t : nil
        case .float(_, let t): return t == .float32 || t == .float64 ? t : nil
        case .bool: return .bool
        case .string: return .string
        case .array(let items, let et):
            for item in items { guard item.checkedType == et else { return nil } }
            return .array
        }
    }
}
