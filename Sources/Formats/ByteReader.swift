// A bounds-checked little-endian cursor over a byte range. Every read checks
// that it stays inside the range and throws a sentence naming what was being
// read, so a truncated or malformed file never crashes (ARCHITECTURE invariant 4).

import Tensors

struct ByteReader {
    let base: UnsafeRawPointer
    let count: Int
    var offset: Int = 0
    /// Prefix for error messages, e.g. "[gguf] model.gguf".
    let context: String

    init(_ buffer: UnsafeRawBufferPointer, context: String) {
        self.base = buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1)!
        self.count = buffer.count
        self.context = context
    }

    func fail(_ what: String) -> OffloadError { OffloadError("\(context): \(what)") }

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        guard n >= 0, n <= count - offset else {
            throw fail("truncated while reading \(what()) at offset \(offset): needs \(n) bytes, \(count - offset) left")
        }
    }

    mutating func read<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        let v = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    mutating func readF32(_ what: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try read(UInt32.self, what()))
    }
    mutating func readF64(_ what: @autoclosure () -> String) throws -> Double {
        Double(bitPattern: try read(UInt64.self, what()))
    }

    mutating func readBytes(_ n: Int, _ what: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        try need(n, what())
        let b = UnsafeRawBufferPointer(start: base + offset, count: n)
        offset += n
        return b
    }
}
