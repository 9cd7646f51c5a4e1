// One reservation of address space the size of a tier's budget, handed out in
// page-aligned extents. A budgeted training step allocates and frees the same
// few sizes thousands of times; from fresh mappings, every read into a new
// buffer makes the kernel fault in and zero its pages first (measured: 6% of a
// streamed step's CPU time in clear_page). Pages of the arena, once touched,
// stay with the process, and the whole arena never holds more than the budget.
//
// A step fills its budget to the last megabyte, so free bytes are often in
// pieces too small for the next buffer. Then the pieces' pages are moved
// (mremap, no copy) side by side into a fresh range of addresses, and moved
// back when the buffer is freed. The pieces' own addresses stay mapped, empty,
// meanwhile (MREMAP_DONTUNMAP): nothing else may be placed there.
import CPlatform
import Foundation
import Tensors

/// A pool of memory touched once: `take` finds the smallest free extent that fits
/// (best fit) or gathers several; `give` returns them and merges free neighbours.
/// Thread-safe: transfer threads give buffers back.
final class Arena: @unchecked Sendable {
    typealias Extent = (offset: Int, length: Int)
    let base: UnsafeMutableRawPointer
    let size: Int
    private let lock = NSLock()
    /// Free extents, sorted by offset, never adjacent.
    private var free: [Extent] = []
    /// Buffers made of moved pieces: their address, and where each piece came from.
    private var gathered: [UnsafeMutableRawPointer: [Extent]] = [:]
    private var gatherCount = 0

    /// Reserves `size` bytes of address space (rounded up to 2 MiB); nil when the
    /// system refuses. With `hugePages`, it asks for transparent huge pages.
    init?(size: Int, hugePages: Bool) {
        let huge = 2 << 20
        let size = (max(size, huge) + huge - 1) / huge * huge
        guard let p = Arena.reserve(size) else { return nil }
        if hugePages { _ = madvise(p, size, 14 /* MADV_HUGEPAGE */) }
        base = p
        self.size = size
        free = [(0, size)]
    }

    deinit {
        for (p, pieces) in gathered { munmap(p, pieces.reduce(0) { $0 + $1.length }) }
        munmap(base, size)
    }

    private static func reserve(_ bytes: Int) -> UnsafeMutableRawPointer? {
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        return p == MAP_FAILED ? nil : p
    }

    /// `capacity` bytes (a multiple of the page size), or nil when the free extents
    /// together are smaller.
    func take(capacity: Int) -> UnsafeMutableRawPointer? {
        lock.lock(); defer { lock.unlock() }
        var best: Int?
        for (i, e) in free.enumerated() where e.length >= capacity {
            if best == nil || e.length < free[best!].length { best = i }
        }
        if let i = best {
            let offset = free[i].offset
            if free[i].length == capacity { free.remove(at: i) } else { free[i].offset += capacity; free[i].length -= capacity }
            return base + offset
        }
        return gather(capacity)
    }

    /// Moves free pieces, largest first, into one new range of `capacity` bytes.
    private func gather(_ capacity: Int) -> UnsafeMutableRawPointer? {
        guard free.reduce(0, { $0 + $1.length }) >= capacity, let target = Arena.reserve(capacity) else { return nil }
        var pieces: [Extent] = []
        var filled = 0
        for e in free.sorted(by: { $0.length > $1.length }) where filled < capacity {
            let piece = (offset: e.offset, length: min(e.length, capacity - filled))
            // Fails when the piece spans two of the system's mappings (pieces moved back are
            // mappings of their own until the system merges them); then this is a miss.
            guard cs_move_pages(base + piece.offset, piece.length, target + filled, 1) == 0 else {
                for q in pieces.reversed() { filled -= q.length; _ = cs_move_pages(target + filled, q.length, base + q.offset, 0) }
                munmap(target, capacity)
                return nil
            }
            pieces.append(piece)
            filled += piece.length
        }
        for piece in pieces { remove(piece) }
        gathered[target] = pieces
        gatherCount += 1
        return target
    }

    /// Takes `piece` (the start of a free extent) out of the free list.
    private func remove(_ piece: Extent) {
        guard let i = free.firstIndex(where: { $0.offset == piece.offset }) else { return }
        if free[i].length == piece.length { free.remove(at: i) } else {
            free[i].offset += piece.length; free[i].length -= piece.length
        }
    }

    /// Whether `p` came from this arena.
    func owns(_ p: UnsafeMutableRawPointer) -> Bool {
        if p >= base && p < base + size { return true }
        lock.lock(); defer { lock.unlock() }
        return gathered[p] != nil
    }

    /// Returns what `take` gave out.
    func give(_ p: UnsafeMutableRawPointer, capacity: Int) {
        lock.lock(); defer { lock.unlock() }
        guard let pieces = gathered.removeValue(forKey: p) else { insert((p - base, capacity)); return }
        var at = 0
        for piece in pieces {
            // Moving back into the hole it left cannot fail for lack of room; if the system
            // refuses anyway, the piece's pages are lost to the arena but not to correctness.
            if cs_move_pages(p + at, piece.length, base + piece.offset, 0) == 0 { insert(piece) }
            at += piece.length
        }
    }

    /// Adds a free extent, merging it with its neighbours.
    private func insert(_ e: Extent) {
        var lo = 0, hi = free.count
        while lo < hi { let mid = (lo + hi) / 2; if free[mid].offset < e.offset { lo = mid + 1 } else { hi = mid } }
        var extent = e
        var at = lo
        if at > 0, free[at - 1].offset + free[at - 1].length == extent.offset {
            at -= 1
            extent = (free[at].offset, free[at].length + extent.length)
            free.remove(at: at)
        }
        if at < free.count, extent.offset + extent.length == free[at].offset {
            extent.length += free[at].length
            free.remove(at: at)
        }
        free.insert(extent, at: at)
    }

    /// Buffers made of moved pieces so far.
    var gathers: Int { lock.lock(); defer { lock.unlock() }; return gatherCount }
}
