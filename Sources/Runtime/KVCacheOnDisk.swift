// KV-cache layers on disk: one unlinked file (gone when the process is, however
// it ends) read and written with O_DIRECT straight from and into the cache's
// staging pair, in pages of whole 4 KiB blocks. A layer's keys (or values) for
// positions [0, n) are one contiguous read; the rows a step appends are one write
// of the pages they fall in.
//
// - Note: not the DiskStore: its tensors are read whole into buffers of their
//   own size, and a layer's cache is a growing prefix read into one staging buffer.
internal import CPlatform
import Foundation
import Memory
import Models
import Planning
import Tensors

public final class DiskKVStore: KVLayerStore, @unchecked Sendable {
    public let path: String
    public let pagePositions: Int
    let fd: Int32
    let pageBytes: Int
    let pagesPerLayer: Int
    let kvDim: Int
    private let lock = NSLock()
    private var _bytesRead = 0, _bytesWritten = 0, _seconds = 0.0
    let trace: TraceRecorder?

    /// Positions per page for rows of `kvDim` floats: the fewest whose bytes are whole 4 KiB blocks.
    public static func pagePositions(kvDim: Int) -> Int { StreamingPlan.kvPagePositions(kvDim: kvDim) }

    /// A store for `layers` layers of `capacity` positions, in a file under `folder`.
    public init(folder: String, config: LlamaConfig, capacity: Int, trace: TraceRecorder? = nil) throws {
        kvDim = config.kvDim
        pagePositions = DiskKVStore.pagePositions(kvDim: kvDim)
        pageBytes = pagePositions * kvDim * 4
        pagesPerLayer = (capacity + pagePositions - 1) / pagePositions
        self.trace = trace
        path = (folder as NSString).appendingPathComponent("offload-kv-\(getpid())-\(UUID().uuidString.prefix(8))")
        let r = cs_open(path, O_RDWR | O_CREAT | O_EXCL, 0o600, 1)
        guard r >= 0 else {
            throw OffloadError("[kv] cannot create \(path) for direct I/O: \(String(cString: strerror(-r)))"
                               + (r == -EINVAL ? " (the file system refuses O_DIRECT)" : ""))
        }
        fd = r
        unlink(path)   // the file lives as long as the descriptor: no leftovers, even after SIGKILL
        let size = Int64(2 * config.layers * pagesPerLayer * pageBytes)
        let e = cs_fallocate(fd, 0, size)
        if e != 0 && e != EOPNOTSUPP && e != EINVAL {
            close(fd)
            throw OffloadError("[kv] no room for the KV cache (\(formatBytes(Int(size)))) in \(folder): \(String(cString: strerror(e)))")
        }
    }

    deinit { close(fd) }

    public var bytesRead: Int { lock.lock(); defer { lock.unlock() }; return _bytesRead }
    public var bytesWritten: Int { lock.lock(); defer { lock.unlock() }; return _bytesWritten }
    /// Seconds the compute spent in KV reads and writes.
    public var seconds: Double { lock.lock(); defer { lock.unlock() }; return _seconds }

    private func offset(_ layer: Int, _ which: Int, page: Int) -> Int64 {
        Int64(((layer * 2 + which) * pagesPerLayer + page) * pageBytes)
    }

    public func load(layer: Int, count: Int, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>) throws {
        let pages = (count + pagePositions - 1) / pagePositions
        let length = pages * pageBytes
        let t0 = now(), tt = trace?.now() ?? 0
        for (which, dst) in [(0, k), (1, v)] {
            let r = cs_pread_full(fd, UnsafeMutableRawPointer(dst), Int64(length), offset(layer, which, page: 0))
            guard r == length else {
                throw OffloadError("[kv] read layer \(layer) \(which == 0 ? "keys" : "values") (\(count) positions) from \(path): "
                                   + (r < 0 ? String(cString: strerror(Int32(-r))) : "got \(r) of \(length) bytes"))
            }
        }
        trace?.span("read kv.\(layer)", stream: "read", since: tt, args: ["bytes": Double(2 * length)])
        lock.lock(); _bytesRead += 2 * length; _seconds += now() - t0; lock.unlock()
    }

    public func save(layer: Int, from start: Int, to end: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>) throws {
        guard end > start else { return }
        let p0 = start / pagePositions, p1 = (end + pagePositions - 1) / pagePositions
        let length = (p1 - p0) * pageBytes
        let t0 = now(), tt = trace?.now() ?? 0
        for (which, src) in [(0, k), (1, v)] {
            var done: Int64 = 0
            let r = cs_pwrite_full(fd, UnsafeRawPointer(src) + p0 * pageBytes, Int64(length), offset(layer, which, page: p0), &done)
            guard r == length else {
                throw OffloadError("[kv] write layer \(layer) \(which == 0 ? "keys" : "values") to \(path): "
                                   + (r < 0 ? String(cString: strerror(Int32(-r))) : "wrote \(done) of \(length) bytes"))
            }
        }
        trace?.span("write kv.\(layer)", stream: "write", since: tt, args: ["bytes": Double(2 * length)])
        lock.lock(); _bytesWritten += 2 * length; _seconds += now() - t0; lock.unlock()
    }
}
