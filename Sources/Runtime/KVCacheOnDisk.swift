// KV heads on disk (HeadInfer on the CPU): one unlinked file (gone when the process
// is, however it ends) read and written with O_DIRECT. Each disk head of each layer
// keeps its keys and its values as pages of whole 4 KiB blocks of positions, a page of
// keys beside the page of values of the same positions, so a span of both is one request
// (preadv into the two buffers); the last partial page stays in memory (its tail) until it fills. Attention takes a head's
// keys a span of `spanPositions` at a time: readers fill a ring of span buffers ahead
// of it, in the order the forward will take them (every layer's disk heads, from
// position 0), so no step holds a whole layer's cache and reads overlap compute. The
// span holding the forward's own rows is completed from the tail and those rows.
//
// - Note: not the DiskStore: its tensors are read whole into buffers of their own
//   size; here a head's cache is a growing run of pages read in spans.
internal import CPlatform
import Foundation
import Kernels
import Memory
import Models
import Planning
import Tensors

public final class DiskKVStore: KVHeadStore, @unchecked Sendable {
    public let path: String
    /// Positions per page of one head: the fewest whose bytes are whole 4 KiB blocks.
    public let pagePositions: Int
    /// Positions per span read (a multiple of the page and of attention's key block, or the whole context).
    public let spanPositions: Int
    let fd: Int32
    let pageBytes: Int
    let pagesPerHead: Int
    let headDim: Int
    let kvDim: Int
    let residentHeads: [Int]
    /// (layer, head) → the disk head's index in the file (nil: resident).
    let diskIndex: [[Int?]]
    let memory: ComputeMemory
    let trace: TraceRecorder?
    private let names: [String]

    // Per disk head: its last partial page (positions [pageStart(stored), stored)).
    private let tailK: [UnsafeMutablePointer<Float>], tailV: [UnsafeMutablePointer<Float>]
    /// Positions each layer holds.
    private var stored: [Int]
    // Pages assembled for a write, or read for `read` and `truncate`.
    private let pageK: UnsafeMutablePointer<Float>, pageV: UnsafeMutablePointer<Float>
    private let bufferPages: Int

    // The read ring: span i of the forward's order is read into slot i % slots.
    private struct SpanRead { var layer: Int, head: Int, first: Int, count: Int, fromDisk: Int }
    private let slotK: [UnsafeMutablePointer<Float>], slotV: [UnsafeMutablePointer<Float>]
    private let io: IOPool
    private let cond = NSCondition()
    private var order: [SpanRead] = []
    private var filled: [Int]          // per slot: the span it holds (-1: none)
    private var readError: Error?
    private var inFlight = 0
    private var consumed = 0
    private var forwardStart = 0, forwardEnd = 0, diskEnd = 0

    private var _bytesRead = 0, _bytesWritten = 0, _seconds = 0.0

    /// A store for the heads `residentHeads` leaves on disk (per layer, heads from that count on),
    /// `capacity` positions each, in a file under `folder`; its buffers (`slots` spans of
    /// `spanPositions`, the tails, a write buffer of `bufferPages` pages) come from `memory`.
    public init(folder: String, config: LlamaConfig, capacity: Int, residentHeads: [Int], spanPositions: Int,
                slots: Int, readers: Int, bufferPages: Int = StreamingPlan.kvBufferPages, memory: ComputeMemory,
                trace: TraceRecorder? = nil) throws {
        headDim = config.headDim; kvDim = config.kvDim
        pagePositions = StreamingPlan.kvPagePositions(headDim: headDim)
        precondition(spanPositions > 0 && spanPositions % pagePositions == 0
                     && (spanPositions % attentionKeyBlock == 0 || spanPositions >= capacity),
                     "a span is whole pages and whole key blocks (or the whole context)")
        precondition(slots >= 1 && bufferPages >= 1)
        self.spanPositions = spanPositions
        pageBytes = pagePositions * headDim * 4
        pagesPerHead = (capacity + pagePositions - 1) / pagePositions
        self.residentHeads = residentHeads
        self.memory = memory
        self.trace = trace
        self.bufferPages = bufferPages
        var next = 0
        diskIndex = (0..<config.layers).map { l in
            (0..<config.kvHeads).map { h -> Int? in
                guard h >= residentHeads[l] else { return nil }
                defer { next += 1 }
                return next
            }
        }
        let diskHeads = next
        stored = Array(repeating: 0, count: config.layers)
        filled = Array(repeating: -1, count: slots)
        path = (folder as NSString).appendingPathComponent("offload-kv-\(getpid())-\(UUID().uuidString.prefix(8))")
        let r = cs_open(path, O_RDWR | O_CREAT | O_EXCL, 0o600, 1)
        guard r >= 0 else {
            throw OffloadError("[kv] cannot create \(path) for direct I/O: \(String(cString: strerror(-r)))"
                               + (r == -EINVAL ? " (the file system refuses O_DIRECT)" : ""))
        }
        fd = r
        unlink(path)   // the file lives as long as the descriptor: no leftovers, even after SIGKILL
        let size = Int64(2 * diskHeads * pagesPerHead * pageBytes)
        let e = cs_fallocate(fd, 0, size)
        if e != 0 && e != EOPNOTSUPP && e != EINVAL {
            close(fd)
            throw OffloadError("[kv] no room for the KV cache (\(formatBytes(Int(size)))) in \(folder): \(String(cString: strerror(e)))")
        }
        // Buffers from the budget.
        var names: [String] = []
        func take(_ name: String, _ floats: Int) throws -> UnsafeMutablePointer<Float> {
            names.append(name)
            return try memory.allocate(name, bytes: floats * 4).assumingMemoryBound(to: Float.self)
        }
        do {
            let spanFloats = spanPositions * headDim, pageFloats = pagePositions * headDim
            slotK = try (0..<slots).map { try take("kv.span.\($0).k", spanFloats) }
            slotV = try (0..<slots).map { try take("kv.span.\($0).v", spanFloats) }
            tailK = try (0..<diskHeads).map { try take("kv.tail.\($0).k", pageFloats) }
            tailV = try (0..<diskHeads).map { try take("kv.tail.\($0).v", pageFloats) }
            pageK = try take("kv.pages.k", bufferPages * pageFloats)
            pageV = try take("kv.pages.v", bufferPages * pageFloats)
        } catch {
            names.forEach { memory.free($0) }
            close(fd)
            throw error
        }
        self.names = names
        io = IOPool(threads: max(1, min(readers, slots)), name: "offload-kv")
    }

    deinit {
        io.shutdown()
        names.forEach { memory.free($0) }
        close(fd)
    }

    public var bytesRead: Int { cond.lock(); defer { cond.unlock() }; return _bytesRead }
    public var bytesWritten: Int { cond.lock(); defer { cond.unlock() }; return _bytesWritten }
    /// Seconds the compute spent waiting for KV reads and in KV writes.
    public var seconds: Double { cond.lock(); defer { cond.unlock() }; return _seconds }

    /// Where disk head `index`'s page `page` of keys is; its values follow it.
    private func offset(_ index: Int, page: Int) -> Int64 {
        Int64((index * pagesPerHead + page) * 2 * pageBytes)
    }
    private func pageStart(_ position: Int) -> Int { position / pagePositions * pagePositions }

    private func readPages(_ index: Int, first page: Int, count: Int, k: UnsafeMutablePointer<Float>,
                           v: UnsafeMutablePointer<Float>, what: String) throws {
        let length = 2 * count * pageBytes
        let r = cs_pio_pairs(fd, k, v, Int64(pageBytes), Int64(count), offset(index, page: page), 0)
        guard r == length else {
            throw OffloadError("[kv] read \(what) keys and values from \(path): "
                               + (r < 0 ? String(cString: strerror(Int32(-r))) : "got \(r) of \(length) bytes"))
        }
    }

    // MARK: Reads ahead of attention

    /// Waits for the reads in flight (a forward that stopped early leaves some) and forgets the order.
    private func drain() {
        cond.lock()
        while inFlight > 0 { cond.wait() }
        order = []; consumed = 0; readError = nil
        for i in filled.indices { filled[i] = -1 }
        cond.unlock()
    }

    public func beginForward(start: Int, rows: Int) throws {
        drain()
        forwardStart = start; forwardEnd = start + rows; diskEnd = pageStart(start)
        var spans: [SpanRead] = []
        for (l, heads) in diskIndex.enumerated() where heads.contains(where: { $0 != nil }) {
            guard stored[l] == start else {
                throw OffloadError("[kv] layer \(l) holds \(stored[l]) positions, the forward starts at \(start)")
            }
            for (h, index) in heads.enumerated() where index != nil {
                for first in stride(from: 0, to: forwardEnd, by: spanPositions) {
                    spans.append(SpanRead(layer: l, head: h, first: first, count: min(spanPositions, forwardEnd - first),
                                          fromDisk: max(0, min(first + spanPositions, diskEnd) - first)))
                }
            }
        }
        cond.lock()
        order = spans
        cond.unlock()
        for i in 0..<min(slotK.count, spans.count) { submit(i) }
    }

    private func submit(_ i: Int) {
        let s = order[i], slot = i % slotK.count
        guard s.fromDisk > 0 else {
            cond.lock(); filled[slot] = i; cond.broadcast(); cond.unlock()
            return
        }
        let index = diskIndex[s.layer][s.head]!
        cond.lock(); inFlight += 1; cond.unlock()
        io.submit { [self] in
            let tt = trace?.now() ?? 0
            var failure: Error?
            do {
                try readPages(index, first: s.first / pagePositions, count: s.fromDisk / pagePositions,
                              k: slotK[slot], v: slotV[slot],
                              what: "layer \(s.layer) head \(s.head)")
            } catch { failure = error }
            trace?.span("read kv.\(s.layer).\(s.head)", stream: "read", since: tt,
                        args: ["bytes": Double(2 * s.fromDisk * headDim * 4)])
            cond.lock()
            if let failure, readError == nil { readError = failure }
            _bytesRead += 2 * s.fromDisk * headDim * 4
            filled[slot] = i
            inFlight -= 1
            cond.broadcast()
            cond.unlock()
        }
    }

    public func nextSpan(layer: Int, head: Int, newK: UnsafePointer<Float>, newV: UnsafePointer<Float>) throws
        -> (k: UnsafePointer<Float>, v: UnsafePointer<Float>, first: Int, count: Int)? {
        let i = consumed
        guard i < order.count, order[i].layer == layer, order[i].head == head else {
            // The head's spans are all taken: the one before was its last.
            guard i > 0, order[i - 1].layer == layer, order[i - 1].head == head else {
                throw OffloadError("[kv] attention asked for layer \(layer) head \(head) out of the announced order")
            }
            return nil
        }
        let s = order[i], slot = i % slotK.count
        let t0 = now(), tw = trace?.now() ?? 0
        cond.lock()
        while filled[slot] != i && readError == nil { cond.wait() }
        let failure = readError
        let waited = now() - t0
        _seconds += waited
        cond.unlock()
        if waited > 20e-6 { trace?.span("wait kv.\(layer).\(head)", stream: "compute", since: tw) }
        if let failure { throw failure }
        // Positions past what is on disk: the tail (stored before this forward), then the forward's rows.
        let (k, v) = (slotK[slot], slotV[slot]), d = headDim
        let index = diskIndex[layer][head]!
        for p in max(s.first, diskEnd)..<max(s.first + s.count, diskEnd) {
            let dst = (p - s.first) * d
            if p < forwardStart {
                (k + dst).update(from: tailK[index] + (p - diskEnd) * d, count: d)
                (v + dst).update(from: tailV[index] + (p - diskEnd) * d, count: d)
            } else {
                (k + dst).update(from: newK + (p - forwardStart) * kvDim + head * d, count: d)
                (v + dst).update(from: newV + (p - forwardStart) * kvDim + head * d, count: d)
            }
        }
        return (UnsafePointer(k), UnsafePointer(v), s.first, s.count)
    }

    public func releaseSpan() {
        consumed += 1
        let next = consumed - 1 + slotK.count
        if next < order.count { submit(next) }
    }

    // MARK: Writes

    public func append(layer: Int, start: Int, rows: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>) throws {
        guard stored[layer] == start else {
            throw OffloadError("[kv] layer \(layer) holds \(stored[layer]) positions; rows were appended at \(start)")
        }
        let d = headDim, P = pagePositions, end = start + rows
        let from = pageStart(start), to = pageStart(end)   // whole pages [from, to) are written
        let t0 = now(), tt = trace?.now() ?? 0
        var written = 0
        for (h, index) in diskIndex[layer].enumerated() {
            guard let index else { continue }
            func row(_ p: Int) -> (UnsafePointer<Float>, UnsafePointer<Float>) {
                p < start ? (UnsafePointer(tailK[index] + (p - from) * d), UnsafePointer(tailV[index] + (p - from) * d))
                          : (k + (p - start) * kvDim + h * d, v + (p - start) * kvDim + h * d)
            }
            var page = from / P
            while page < to / P {
                let n = min(bufferPages, to / P - page)
                for p in page * P..<(page + n) * P {
                    let (sk, sv) = row(p), dst = (p - page * P) * d
                    (pageK + dst).update(from: sk, count: d); (pageV + dst).update(from: sv, count: d)
                }
                let length = 2 * n * pageBytes
                let r = cs_pio_pairs(fd, pageK, pageV, Int64(pageBytes), Int64(n), offset(index, page: page), 1)
                guard r == length else {
                    throw OffloadError("[kv] write layer \(layer) head \(h) keys and values to \(path): "
                                       + (r < 0 ? String(cString: strerror(Int32(-r))) : "wrote \(r) of \(length) bytes"))
                }
                written += 2 * n * pageBytes
                page += n
            }
            // The new tail: positions [to, end), the old tail's rows first when no page was completed.
            for p in max(to, start)..<end {
                let (sk, sv) = row(p)
                (tailK[index] + (p - to) * d).update(from: sk, count: d)
                (tailV[index] + (p - to) * d).update(from: sv, count: d)
            }
        }
        stored[layer] = end
        if written > 0 { trace?.span("write kv.\(layer)", stream: "write", since: tt, args: ["bytes": Double(written)]) }
        cond.lock(); _bytesWritten += written; _seconds += now() - t0; cond.unlock()
    }

    public func read(layer: Int, from: Int, to: Int, k: UnsafeMutablePointer<Float>, v: UnsafeMutablePointer<Float>) throws {
        drain()
        let d = headDim, P = pagePositions, onDisk = pageStart(stored[layer]), diskTo = min(to, onDisk)
        precondition(to <= stored[layer], "positions past the cache")
        for (h, index) in diskIndex[layer].enumerated() {
            guard let index else { continue }
            var p0 = pageStart(from)
            while p0 < diskTo {
                let n = min(bufferPages, (diskTo - p0 + P - 1) / P)
                try readPages(index, first: p0 / P, count: n, k: pageK, v: pageV, what: "layer \(layer) head \(h)")
                cond.lock(); _bytesRead += 2 * n * pageBytes; cond.unlock()
                for p in max(p0, from)..<min(p0 + n * P, diskTo) {
                    (k + (p - from) * kvDim + h * d).update(from: pageK + (p - p0) * d, count: d)
                    (v + (p - from) * kvDim + h * d).update(from: pageV + (p - p0) * d, count: d)
                }
                p0 += n * P
            }
            let first = max(onDisk, from)
            for p in first..<max(first, to) {
                (k + (p - from) * kvDim + h * d).update(from: tailK[index] + (p - onDisk) * d, count: d)
                (v + (p - from) * kvDim + h * d).update(from: tailV[index] + (p - onDisk) * d, count: d)
            }
        }
    }

    public func truncate(to length: Int) throws {
        drain()
        for layer in stored.indices {
            precondition(length <= stored[layer], "truncate past what the cache holds")
            let old = pageStart(stored[layer]), new = pageStart(length)
            if new < old && length > new {   // the new tail's positions are on disk
                for index in diskIndex[layer].compactMap({ $0 }) {
                    try readPages(index, first: new / pagePositions, count: 1, k: tailK[index], v: tailV[index],
                                  what: "layer \(layer)")
                }
            }
            stored[layer] = length
        }
    }
}
