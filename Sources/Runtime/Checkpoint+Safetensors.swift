// A minimal fp32 safetensors writer and reader for checkpoints, streaming
// straight from and to the parameter buffers, with a 64-bit checksum of the file
// computed on the way. Stand-in for the shared Formats/Safetensors code: swap the
// bodies of `writeCheckpointTensors` / `readCheckpointTensors` when that lands.

import Foundation
import Tensors

/// One fp32 tensor to write or fill: `count` floats at `data`, shape row-major.
public struct CheckpointTensor {
    public var name: String
    public var shape: [Int]
    public var data: UnsafeMutableRawPointer
    public var element: StateElement
    public var count: Int { shape.reduce(1, *) }
    public var bytes: Int { count * element.size }
    public init(name: String, shape: [Int], data: UnsafeMutablePointer<Float>) {
        self.name = name; self.shape = shape; self.data = UnsafeMutableRawPointer(data); self.element = .f32
    }
    public init(name: String, shape: [Int], bytes: UnsafeMutableRawPointer, element: StateElement) {
        self.name = name; self.shape = shape; self.data = bytes; self.element = element
    }
}

/// A streaming 64-bit checksum over bytes, by 8-byte little-endian words (the tail zero-padded).
public struct Checksum64 {
    private var h: UInt64 = 0xCBF2_9CE4_8422_2325
    private var pending: UInt64 = 0
    private var pendingBytes = 0
    private var total: UInt64 = 0
    public init() {}

    @inline(__always) private mutating func word(_ w: UInt64) {
        h = (h ^ w) &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 31
    }

    public mutating func update(_ buf: UnsafeRawBufferPointer) {
        var i = 0
        let n = buf.count
        while pendingBytes != 0 && i < n {
            pending |= UInt64(buf[i]) << (8 * UInt64(pendingBytes))
            pendingBytes += 1; i += 1
            if pendingBytes == 8 { word(pending); pending = 0; pendingBytes = 0 }
        }
        while i + 8 <= n { word(buf.loadUnaligned(fromByteOffset: i, as: UInt64.self)); i += 8 }
        while i < n { pending |= UInt64(buf[i]) << (8 * UInt64(pendingBytes)); pendingBytes += 1; i += 1 }
        total &+= UInt64(n)
    }

    public var value: UInt64 {
        var c = self
        if c.pendingBytes > 0 { c.word(c.pending) }
        c.word(total)
        return c.h
    }

    public var hex: String { String(format: "%016llx", value) }
}

/// Writes `tensors` (F32 or U8) as a safetensors file at `path` (not atomically: callers write into a
/// temporary folder). Returns the file's size and checksum.
public func writeCheckpointTensors(_ tensors: [CheckpointTensor], metadata: [String: String] = [:],
                                   to path: String) throws -> (bytes: Int, checksum: String) {
    try writeCheckpointTensors(tensors.map { ($0.name, $0.shape, $0.element) }, metadata: metadata, to: path) { put in
        for t in tensors { try put(UnsafeRawBufferPointer(start: t.data, count: t.bytes)) }
    }
}

/// Writes an F32 safetensors file of tensors (name, shape) whose data `body` hands to `put`, in
/// the order given and with no gap (pieces of one tensor may come in several calls).
public func writeCheckpointTensors(_ tensors: [(name: String, shape: [Int])], metadata: [String: String] = [:],
                                   to path: String,
                                   body: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws -> (bytes: Int, checksum: String) {
    try writeCheckpointTensors(tensors.map { ($0.name, $0.shape, StateElement.f32) }, metadata: metadata, to: path, body: body)
}

/// Writes a safetensors file of tensors (name, shape, element type) whose data `body` hands to `put`.
public func writeCheckpointTensors(_ tensors: [(name: String, shape: [Int], element: StateElement)], metadata: [String: String] = [:],
                                   to path: String,
                                   body: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws -> (bytes: Int, checksum: String) {
    var header: [String: Any] = [:]
    var offset = 0
    for t in tensors {
        let bytes = t.shape.reduce(1, *) * t.element.size
        header[t.name] = ["dtype": t.element.rawValue, "shape": t.shape, "data_offsets": [offset, offset + bytes]]
        offset += bytes
    }
    if !metadata.isEmpty { header["__metadata__"] = metadata }
    var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
    while json.count % 8 != 0 { json.append(0x20) }

    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    guard fd >= 0 else { throw OffloadError("[checkpoint] \(path): cannot create: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var sum = Checksum64()
    var written = 0
    func put(_ buf: UnsafeRawBufferPointer) throws {
        sum.update(buf)
        var done = 0
        while done < buf.count {
            let n = write(fd, buf.baseAddress! + done, min(buf.count - done, 1 << 26))
            guard n > 0 else {
                throw OffloadError("[checkpoint] \(path): write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
        written += buf.count
    }
    var length = UInt64(json.count).littleEndian
    try withUnsafeBytes(of: &length) { try put($0) }
    try json.withUnsafeBytes { try put($0) }
    try body(put)
    guard written == 8 + json.count + offset else {
        throw OffloadError("[checkpoint] \(path): internal: wrote \(written - 8 - json.count) data bytes of \(offset)")
    }
    guard fsync(fd) == 0 else { throw OffloadError("[checkpoint] \(path): fsync failed: \(String(cString: strerror(errno)))") }
    return (8 + json.count + offset, sum.hex)
}

/// A safetensors checkpoint file (F32 and U8 tensors) read piece by piece with pread (a streamed run never holds
/// it whole), after checking its size and checksum in one pass.
public final class CheckpointFileReader {
    let path: String
    let fd: Int32
    let body: Int
    let size: Int
    let entries: [String: (shape: [Int], element: StateElement, start: Int, end: Int)]

    public init(path: String, expectBytes: Int?, expectChecksum: String?) throws {
        let ctx = "[checkpoint] \(path)"
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw OffloadError("\(ctx): cannot read the file: \(String(cString: strerror(errno)))") }
        var st = stat()
        fstat(fd, &st)
        let size = Int(st.st_size)
        do {
            if let expectBytes, size != expectBytes {
                throw OffloadError("\(ctx): file is \(size) bytes, expected \(expectBytes) (truncated or replaced?)")
            }
            let block = 1 << 24
            let buf = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 64)
            defer { buf.deallocate() }
            func readAt(_ offset: Int, _ count: Int) throws {
                var done = 0
                while done < count {
                    let n = pread(fd, buf + done, count - done, off_t(offset + done))
                    guard n > 0 else { throw OffloadError("\(ctx): read failed at byte \(offset + done)") }
                    done += n
                }
            }
            if let expectChecksum {
                var sum = Checksum64(), at = 0
                while at < size {
                    let n = min(block, size - at)
                    try readAt(at, n)
                    sum.update(UnsafeRawBufferPointer(start: buf, count: n))
                    at += n
                }
                guard sum.hex == expectChecksum else {
                    throw OffloadError("\(ctx): checksum \(sum.hex) does not match the recorded \(expectChecksum) (corrupted)")
                }
            }
            guard size >= 8 else { throw OffloadError("\(ctx): too short for a safetensors header") }
            try readAt(0, 8)
            let n = Int(buf.loadUnaligned(as: UInt64.self).littleEndian)
            guard n <= size - 8, n <= block else { throw OffloadError("\(ctx): header length \(n) runs past the end (\(size))") }
            try readAt(8, n)
            guard let header = try? JSONSerialization.jsonObject(with: Data(bytes: buf, count: n)) as? [String: Any] else {
                throw OffloadError("\(ctx): header is not a JSON object")
            }
            var entries: [String: (shape: [Int], element: StateElement, start: Int, end: Int)] = [:]
            for (name, value) in header where name != "__metadata__" {
                guard let info = value as? [String: Any], let element = (info["dtype"] as? String).flatMap(StateElement.init) else {
                    throw OffloadError("\(ctx): tensor \(name) is neither F32 nor U8")
                }
                let shape = (info["shape"] as? [Any])?.compactMap { ($0 as? NSNumber)?.intValue } ?? []
                let offs = (info["data_offsets"] as? [Any])?.compactMap { ($0 as? NSNumber)?.intValue } ?? []
                guard offs.count == 2, offs[0] >= 0, offs[1] >= offs[0], 8 + n + offs[1] <= size else {
                    throw OffloadError("\(ctx): tensor \(name) has offsets \(offs) outside the file (\(size) bytes)")
                }
                entries[name] = (shape, element, offs[0], offs[1])
            }
            (self.fd, self.size, self.body, self.entries) = (fd, size, 8 + n, entries)
        } catch {
            close(fd)
            throw error
        }
    }
    deinit { close(fd) }

    /// Elements `range` of tensor `name` (which must have `shape` and, unless said, be F32) into `p`.
    public func read(_ name: String, shape: [Int], elements range: Range<Int>, into p: UnsafeMutableRawPointer,
                     element: StateElement = .f32) throws {
        let ctx = "[checkpoint] \(path)"
        guard let e = entries[name] else { throw OffloadError("\(ctx): tensor \(name) is missing") }
        guard e.element == element else {
            throw OffloadError("\(ctx): tensor \(name) is \(e.element.rawValue), expected \(element.rawValue)")
        }
        let size = element.size
        guard e.shape == shape, e.end - e.start == shape.reduce(1, *) * size else {
            throw OffloadError("\(ctx): tensor \(name) has shape \(e.shape), expected \(shape)")
        }
        var done = 0
        let count = range.count * size, start = body + e.start + range.lowerBound * size
        while done < count {
            let n = pread(fd, p + done, count - done, off_t(start + done))
            guard n > 0 else { throw OffloadError("\(ctx): read of \(name) failed") }
            done += n
        }
    }
}

/// Fills `tensors` from the F32 safetensors file at `path`, checking every name, shape and
/// offset, and (when given) the file's size and checksum.
public func readCheckpointTensors(_ tensors: [CheckpointTensor], from path: String,
                                  expectBytes: Int? = nil, expectChecksum: String? = nil) throws {
    let file = try CheckpointFileReader(path: path, expectBytes: expectBytes, expectChecksum: expectChecksum)
    for t in tensors { try file.read(t.name, shape: t.shape, elements: 0..<t.count, into: t.data, element: t.element) }
}
