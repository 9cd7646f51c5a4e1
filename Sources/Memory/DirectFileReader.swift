// Direct reads of ranges of an existing file (a GGUF's weights): O_DIRECT, so every
// byte comes from the device and none from the page cache. The disk store
// (DiskStore) owns files it writes; this reads files it does not own.
import CPlatform
import Foundation
import Tensors

/// Reads 4 KiB-aligned ranges of a file with O_DIRECT, so every byte comes from
/// the device and none from the page cache. Thread-safe (pread).
public final class DirectFileReader: @unchecked Sendable {
    public let path: String
    public let size: Int
    let fd: Int32

    public init(path: String) throws {
        self.path = path
        let r = cs_open(path, O_RDONLY, 0, 1)
        guard r >= 0 else {
            throw OffloadError("[read] cannot open \(path) for direct reads: \(String(cString: strerror(-r)))"
                               + (r == -EINVAL ? " (the file system refuses O_DIRECT)" : ""))
        }
        fd = r
        var st = stat()
        guard fstat(fd, &st) == 0 else { close(fd); throw OffloadError("[read] cannot stat \(path)") }
        size = Int(st.st_size)
    }

    deinit { close(fd) }

    /// Reads `length` bytes at `offset` (both multiples of 4096) into `buffer`
    /// (aligned to 4096). Bytes past the end of the file are left as they were;
    /// fewer than `needed` bytes is an error.
    public func read(into buffer: UnsafeMutableRawPointer, offset: Int, length: Int, needed: Int, what: String) throws {
        let a = AlignedBuffer.alignment
        precondition(offset % a == 0 && length % a == 0 && Int(bitPattern: buffer) % a == 0)
        let r = cs_pread_full(fd, buffer, Int64(length), Int64(offset))
        if r < 0 {
            throw OffloadError("[read] read \(what) from \(path) at offset \(offset): \(String(cString: strerror(Int32(-r))))")
        }
        if Int(r) < needed {
            throw OffloadError("[read] read \(what) from \(path) at offset \(offset): got \(r) of \(needed) bytes (file truncated?)")
        }
    }
}

public extension AlignedBuffer {
    /// `x` rounded down / up to the direct-I/O alignment.
    @inline(__always) static func alignDown(_ x: Int) -> Int { x / alignment * alignment }
    @inline(__always) static func alignUp(_ x: Int) -> Int { alignDown(x + alignment - 1) }
}
