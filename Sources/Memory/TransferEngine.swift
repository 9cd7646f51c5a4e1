// The transfer engine: asynchronous reads (disk -> memory) and writes
// (memory -> disk) that return handles the executor waits on, with one queue
// per direction and back-pressure on the bytes in flight. It moves bytes and
// counts them; the schedule decides what moves when.
import Foundation
import Tensors

/// A transfer in flight; `wait()` returns when it is done or throws its error.
public final class TransferHandle: @unchecked Sendable {
    public enum Direction: String, Sendable {
        case read   // disk -> memory
        case write  // memory -> disk
    }

    public let name: String
    public let direction: Direction
    public let bytes: Int
    /// The memory side: the destination of a read, the source of a write.
    public let buffer: TierBuffer
    private let condition = NSCondition()
    private var finished = false
    private var error: OffloadError?

    init(name: String, direction: Direction, buffer: TierBuffer) {
        self.name = name; self.direction = direction; self.bytes = buffer.byteCount; self.buffer = buffer
    }

    /// Blocks until the transfer is done; throws the error that ended it.
    public func wait() throws {
        condition.lock()
        while !finished { condition.wait() }
        let e = error
        condition.unlock()
        if let e { throw e }
    }

    public var isComplete: Bool {
        condition.lock(); defer { condition.unlock() }
        return finished
    }

    func finish(_ e: OffloadError?) {
        condition.lock(); error = e; finished = true; condition.broadcast(); condition.unlock()
    }
}

/// Moves tensors between a memory tier and the disk store, overlapped with
/// the caller's compute.
///
/// * Reads and writes have their own queue and I/O threads, so they overlap
///   each other as well as compute.
/// * Bytes count against the tier they land in when the transfer is issued: a
///   read's destination buffer is allocated (or already counted) in memory, a
///   write's space is reserved on disk, before the call returns.
/// * Back-pressure: at most `stagingLimit` bytes per direction are in flight;
///   issuing more blocks until earlier transfers finish. (On a CPU-only machine
///   the I/O goes straight into the tensor's buffer, so staging is the memory
///   pinned by transfers in flight rather than separate bounce buffers.)
public final class TransferEngine: @unchecked Sendable {
    public let memory: MemoryTier
    public let disk: DiskStore
    public let stagingLimit: Int
    private let trace: TraceRecorder?
    private let condition = NSCondition()
    private var inFlight: [TransferHandle.Direction: Int] = [.read: 0, .write: 0]
    private var peakInFlight: [TransferHandle.Direction: Int] = [.read: 0, .write: 0]
    private var outstanding: [ObjectIdentifier: TransferHandle] = [:]
    private var unreported: OffloadError?

    public init(memory: MemoryTier, disk: DiskStore, stagingLimit: Int = 256 << 20, trace: TraceRecorder? = nil) {
        self.memory = memory; self.disk = disk; self.stagingLimit = max(1, stagingLimit); self.trace = trace
    }

    /// Bytes issued and not yet finished, per direction.
    public func bytesInFlight(_ direction: TransferHandle.Direction) -> Int {
        condition.lock(); defer { condition.unlock() }
        return inFlight[direction]!
    }

    /// The most bytes in flight at once in `direction` since the engine was made.
    public func peakBytesInFlight(_ direction: TransferHandle.Direction) -> Int {
        condition.lock(); defer { condition.unlock() }
        return peakInFlight[direction]!
    }

    /// Reads tensor `name` from disk into a new buffer of the memory tier,
    /// counted against its budget now (an over-budget read throws here).
    public func read(_ name: String) throws -> TransferHandle {
        guard let bytes = disk.byteCount(of: name) else { throw OffloadError("[disk] read \(name): no such tensor on disk") }
        let buffer = try memory.allocate(name, bytes: bytes)
        do { return try read(name, into: buffer) } catch {
            buffer.free()
            throw error
        }
    }

    /// Reads tensor `name` from disk into `buffer` (already counted in its tier).
    public func read(_ name: String, into buffer: TierBuffer) throws -> TransferHandle {
        let handle = TransferHandle(name: name, direction: .read, buffer: buffer)
        let start = admit(handle)
        do {
            try disk.read(name, into: buffer.storage) { [self] error in complete(handle, start: start, error: error) }
        } catch {
            let e = error as? OffloadError ?? OffloadError("[disk] \(handle.direction.rawValue) \(name): \(error)")
            complete(handle, start: start, error: e, reported: true)
            throw e
        }
        return handle
    }

    /// Writes `buffer` to disk as tensor `name`; the disk space is reserved now
    /// (a full disk tier throws here). `buffer` must not change until the handle
    /// completes; the handle keeps it alive.
    public func write(_ name: String, from buffer: TierBuffer) throws -> TransferHandle {
        let handle = TransferHandle(name: name, direction: .write, buffer: buffer)
        let start = admit(handle)
        do {
            try disk.write(name, from: buffer.storage) { [self] error in complete(handle, start: start, error: error) }
        } catch {
            let e = error as? OffloadError ?? OffloadError("[disk] \(handle.direction.rawValue) \(name): \(error)")
            complete(handle, start: start, error: e, reported: true)
            throw e
        }
        return handle
    }

    /// Waits for every transfer issued so far; throws the first error of a
    /// transfer that failed after it was issued (once).
    public func waitAll() throws {
        condition.lock()
        let pending = Array(outstanding.values)
        condition.unlock()
        for h in pending { try? h.wait() }
        condition.lock()
        let e = unreported
        unreported = nil
        condition.unlock()
        if let e { throw e }
    }

    /// Blocks while the direction's staging is full, then counts the transfer.
    /// A transfer larger than the limit goes alone.
    private func admit(_ handle: TransferHandle) -> Double {
        let d = handle.direction
        let bytes = accountedBytes(handle.bytes)
        condition.lock()
        while inFlight[d]! > 0 && inFlight[d]! + bytes > stagingLimit { condition.wait() }
        inFlight[d]! += bytes
        peakInFlight[d] = max(peakInFlight[d]!, inFlight[d]!)
        outstanding[ObjectIdentifier(handle)] = handle
        condition.unlock()
        return trace?.now() ?? 0
    }

    private func complete(_ handle: TransferHandle, start: Double, error: OffloadError?, reported: Bool = false) {
        if let trace {
            var args: [String: Double] = ["bytes": Double(handle.bytes)]
            if error != nil { args["failed"] = 1 }
            trace.span("\(handle.direction.rawValue) \(handle.name)", stream: handle.direction.rawValue, since: start, args: args)
        }
        condition.lock()
        inFlight[handle.direction]! -= accountedBytes(handle.bytes)
        outstanding[ObjectIdentifier(handle)] = nil
        if let error, !reported, unreported == nil { unreported = error }
        condition.broadcast()
        condition.unlock()
        handle.finish(error)
    }
}
