// The disk tier: tensors in preallocated spill files, read and written with
// O_DIRECT in 4 KiB-aligned chunks by a small pool of I/O threads per direction.
// Spill files live in a folder of their own that is removed at exit, on error
// and on SIGINT/SIGTERM; folders left by killed runs are removed at start.
// Not a file format: the files mean nothing once the process is gone.
import CPlatform
import Foundation
import Tensors

/// How the disk store treats the page cache.
public enum DirectIO: String, Sendable {
    /// O_DIRECT where the file system accepts it, buffered I/O (with one notice) where not.
    case auto
    /// Buffered I/O everywhere.
    case off
}

/// Faults injected into the disk store's I/O, for tests of the error paths
/// that real hardware rarely shows on demand.
public struct DiskFaults: Sendable {
    /// Open spill files as if the file system refused O_DIRECT (EINVAL).
    public var refuseDirectIO = false
    /// After this many bytes in total, writes stop short as on a full device.
    public var shortWriteAfterBytes: Int?
    /// Reads of this tensor fail with EIO.
    public var readErrorOn: String?
    /// Every request takes at least this long, as on a slow device.
    public var requestDelay: Double = 0
    public init(refuseDirectIO: Bool = false, shortWriteAfterBytes: Int? = nil, readErrorOn: String? = nil,
                requestDelay: Double = 0) {
        self.refuseDirectIO = refuseDirectIO
        self.shortWriteAfterBytes = shortWriteAfterBytes
        self.readErrorOn = readErrorOn
        self.requestDelay = requestDelay
    }
}

public struct DiskStoreOptions: Sendable {
    /// Budget of the disk tier (aligned bytes of live tensors).
    public var capacity: Int = .max
    /// Spill files grow (posix_fallocate) by at least this much at a time.
    public var growthStep: Int = 64 << 20
    /// Bytes the files are preallocated with at creation, per folder.
    public var preallocate: Int = 0
    /// Size of one pread/pwrite; a tensor is split into requests of this size.
    public var requestBytes: Int = 4 << 20
    /// I/O threads per direction: how many requests of each direction are in flight.
    public var threadsPerDirection: Int = 4
    public var directIO: DirectIO = .auto
    public var faults = DiskFaults()
    public init() {}
}

/// Tensors on local disk, in spill files under one or more folders.
///
/// Offsets, lengths and buffers are multiples of 4096 so the files can be opened
/// with O_DIRECT and bytes go from memory to the device without the page cache.
/// Requests run on I/O threads, one pool for reads and one for writes, so reads
/// and writes overlap each other and the caller's compute.
///
/// - Note: a tensor's disk bytes are counted (against `options.capacity`) when
///   its write is issued, and uncounted when it is removed or replaced.
public final class DiskStore: @unchecked Sendable {
    public let options: DiskStoreOptions
    /// The folders made for this store's spill files, one per root given.
    public var spillFolders: [String] { files.map(\.folder) }
    /// Whether every spill file is open with O_DIRECT.
    public var usesDirectIO: Bool { files.allSatisfy(\.direct) }

    let ledger: Ledger
    private let files: [SpillFile]
    private let lock = NSLock()
    private var tensors: [String: Extent] = [:]
    private var closed = false
    private var injectedWritten = 0
    private let readPool: IOPool
    private let writePool: IOPool

    /// Creates a spill folder under each root (made if missing), after removing
    /// stale folders that killed runs left there.
    /// - Parameter notice: where one-line notices go (stale folders removed,
    ///   O_DIRECT refused); standard error by default.
    public init(roots: [String], options: DiskStoreOptions = DiskStoreOptions(), trace: TraceRecorder? = nil,
                notice: @escaping @Sendable (String) -> Void = DiskStore.printNotice) throws {
        guard !roots.isEmpty else { throw OffloadError("[disk] no spill folder given") }
        guard options.requestBytes > 0, options.requestBytes % AlignedBuffer.alignment == 0 else {
            throw OffloadError("[disk] request size \(options.requestBytes) is not a positive multiple of \(AlignedBuffer.alignment)")
        }
        cs_cleanup_install()
        self.options = options
        var made: [SpillFile] = []
        do {
            for root in roots {
                for stale in try DiskStore.removeStaleFolders(in: root) { notice(stale) }
                made.append(try SpillFile(root: root, options: options, notice: notice))
            }
        } catch {
            made.forEach { $0.close() }
            throw error
        }
        files = made
        let folders = made.map(\.folder)
        ledger = Ledger(tier: .disk, limit: options.capacity, trace: trace,
                        place: (folders.count == 1 ? "spill folder " : "spill folders ") + folders.joined(separator: ", "))
        readPool = IOPool(threads: options.threadsPerDirection, name: "offload-read")
        writePool = IOPool(threads: options.threadsPerDirection, name: "offload-write")
    }

    deinit { close() }

    public static let printNotice: @Sendable (String) -> Void = { line in
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    /// Where allocations and frees of disk space are recorded (nil: nowhere).
    /// Set it while no transfer is being issued.
    public var trace: TraceRecorder? {
        get { ledger.trace }
        set { ledger.trace = newValue }
    }

    /// A snapshot of the disk tier's bytes.
    public var stats: TierStats { ledger.stats }

    public func contains(_ name: String) -> Bool {
        lock.lock(); defer { lock.unlock() }
        return tensors[name] != nil
    }

    /// Bytes of tensor `name` as written, nil when the store does not hold it.
    public func byteCount(of name: String) -> Int? {
        lock.lock(); defer { lock.unlock() }
        return tensors[name]?.byteCount
    }

    /// Names of the tensors held.
    public var names: [String] {
        lock.lock(); defer { lock.unlock() }
        return tensors.keys.sorted()
    }

    /// The spill file that holds `name` and where (for messages and tests).
    public func location(of name: String) -> (path: String, offset: Int)? {
        lock.lock(); defer { lock.unlock() }
        guard let e = tensors[name] else { return nil }
        return (files[e.file].path, e.offset)
    }

    // MARK: Synchronous I/O

    /// Writes `buffer` as tensor `name`, replacing an earlier tensor of that name
    /// only once the new bytes are on disk.
    public func write(_ name: String, from buffer: AlignedBuffer) throws {
        let done = Completion()
        try write(name, from: buffer) { done.finish($0) }
        try done.wait()
    }

    /// Reads tensor `name` into `buffer`, whose byte count must equal the tensor's.
    public func read(_ name: String, into buffer: AlignedBuffer) throws {
        let done = Completion()
        try read(name, into: buffer) { done.finish($0) }
        try done.wait()
    }

    /// Forgets tensor `name` and returns its bytes to the tier (after reads in flight).
    public func remove(_ name: String) {
        lock.lock()
        let e = tensors.removeValue(forKey: name)
        lock.unlock()
        if let e { retire(e) }
    }

    // MARK: Asynchronous I/O

    /// Issues a write of `buffer` as tensor `name` and returns at once; `completion`
    /// runs on an I/O thread when the bytes are on disk or the write failed.
    ///
    /// Space is counted and reserved in a spill file now, so a full budget or a
    /// full device throws here; `buffer` must not change until completion, and is
    /// pinned until then (a tier buffer freed meanwhile gives its memory back then).
    public func write(_ name: String, from buffer: AlignedBuffer,
                      completion: @escaping @Sendable (OffloadError?) -> Void) throws {
        let extent = try reserve(name, bytes: buffer.byteCount)
        let file = files[extent.file]
        let chunks = chunkRanges(extent.length)
        buffer.pin()
        let group = ChunkGroup(count: chunks.count) { [self] error in
            buffer.unpin()
            if let error {
                release(extent)
                completion(error)
                return
            }
            lock.lock()
            let replaced = closed ? nil : tensors.updateValue(extent, forKey: name)
            lock.unlock()
            if let replaced { retire(replaced) }
            completion(nil)
        }
        for (offset, length) in chunks {
            writePool.submit { [self] in
                group.done(writeChunk(file, name: name, from: buffer.baseAddress + offset,
                                      length: length, at: extent.offset + offset))
            }
        }
    }

    /// Issues a read of tensor `name` into `buffer` and returns at once;
    /// `completion` runs on an I/O thread when the bytes are in `buffer` or the
    /// read failed (a failed read is an error, never zeros). `buffer` is pinned until then.
    public func read(_ name: String, into buffer: AlignedBuffer,
                     completion: @escaping @Sendable (OffloadError?) -> Void) throws {
        lock.lock()
        guard !closed else { lock.unlock(); throw OffloadError("[disk] read \(name): the disk store is closed") }
        guard let extent = tensors[name] else {
            lock.unlock()
            throw OffloadError("[disk] read \(name): no such tensor on disk")
        }
        guard buffer.byteCount == extent.byteCount else {
            lock.unlock()
            throw OffloadError("[disk] read \(name): the buffer holds \(buffer.byteCount) bytes, the tensor \(extent.byteCount)")
        }
        extent.readers += 1
        lock.unlock()
        let file = files[extent.file]
        let chunks = chunkRanges(extent.length)
        buffer.pin()
        let group = ChunkGroup(count: chunks.count) { [self] error in
            buffer.unpin()
            lock.lock()
            extent.readers -= 1
            let free = extent.readers == 0 && extent.retired
            lock.unlock()
            if free { release(extent) }
            completion(error)
        }
        for (offset, length) in chunks {
            readPool.submit { [self] in
                group.done(readChunk(file, name: name, into: buffer.baseAddress + offset,
                                     length: length, at: extent.offset + offset))
            }
        }
    }

    /// Removes the spill files and folders. Idempotent; also runs at deinit, at
    /// exit and on SIGINT/SIGTERM.
    public func close() {
        lock.lock()
        let was = closed
        closed = true
        lock.unlock()
        if was { return }
        readPool.shutdown()
        writePool.shutdown()
        files.forEach { $0.close() }
    }

    // MARK: Internals

    private func chunkRanges(_ length: Int) -> [(Int, Int)] {
        let step = options.requestBytes
        var out: [(Int, Int)] = []
        out.reserveCapacity(length / step + 1)
        var offset = 0
        while offset < length {
            out.append((offset, min(step, length - offset)))
            offset += step
        }
        if out.isEmpty { out.append((0, 0)) }
        return out
    }

    private func reserve(_ name: String, bytes: Int) throws -> Extent {
        let length = accountedBytes(bytes)
        lock.lock()
        if closed { lock.unlock(); throw OffloadError("[disk] write \(name): the disk store is closed") }
        lock.unlock()
        let ticket = try ledger.reserve(name, bytes: length)
        lock.lock()
        let fileIndex = files.indices.min { files[$0].used < files[$1].used }!
        let file = files[fileIndex]
        let offset = file.allocate(length)
        lock.unlock()
        let extent = Extent(file: fileIndex, offset: offset, length: length, byteCount: bytes, ticket: ticket)
        do {
            try file.ensureAllocated(upTo: offset + length, for: name, bytes: bytes)
        } catch {
            release(extent)
            throw error
        }
        return extent
    }

    /// Marks an extent no longer reachable by name; frees it once no read uses it.
    private func retire(_ e: Extent) {
        lock.lock()
        e.retired = true
        let free = e.readers == 0
        lock.unlock()
        if free { release(e) }
    }

    private func release(_ e: Extent) {
        lock.lock()
        files[e.file].free(offset: e.offset, length: e.length)
        lock.unlock()
        ledger.release(e.ticket)
    }

    private func writeChunk(_ file: SpillFile, name: String, from pointer: UnsafeMutableRawPointer,
                            length: Int, at offset: Int) -> OffloadError? {
        if length == 0 { return nil }
        if options.faults.requestDelay > 0 { Thread.sleep(forTimeInterval: options.faults.requestDelay) }
        var allowed = length
        if let limit = options.faults.shortWriteAfterBytes {
            lock.lock()
            allowed = max(0, min(length, limit - injectedWritten)) / AlignedBuffer.alignment * AlignedBuffer.alignment
            injectedWritten += allowed
            lock.unlock()
        }
        var done: Int64 = 0
        let r = cs_pwrite_full(file.fd, pointer, Int64(allowed), Int64(offset), &done)
        let reason: String
        if r < 0 {
            reason = String(cString: strerror(Int32(-r)))
        } else if allowed < length {
            reason = "\(String(cString: strerror(ENOSPC))) (injected)"
            done = r
        } else if r < length {
            reason = "the device accepted no more bytes"
        } else {
            return nil
        }
        return OffloadError("[disk] write \(name) to \(file.path) at offset \(offset): wrote \(done) of \(length) bytes: \(reason)")
    }

    private func readChunk(_ file: SpillFile, name: String, into pointer: UnsafeMutableRawPointer,
                           length: Int, at offset: Int) -> OffloadError? {
        if length == 0 { return nil }
        if options.faults.requestDelay > 0 { Thread.sleep(forTimeInterval: options.faults.requestDelay) }
        if options.faults.readErrorOn == name {
            return OffloadError("[disk] read \(name) from \(file.path) at offset \(offset): \(String(cString: strerror(EIO))) (injected)")
        }
        let r = cs_pread_full(file.fd, pointer, Int64(length), Int64(offset))
        if r < 0 {
            return OffloadError("[disk] read \(name) from \(file.path) at offset \(offset): \(String(cString: strerror(Int32(-r))))")
        }
        if r < length {
            return OffloadError("[disk] read \(name) from \(file.path) at offset \(offset): got \(r) of \(length) bytes (spill file truncated?)")
        }
        return nil
    }
}

// MARK: - Stale folders

extension DiskStore {
    static let folderPrefix = "offload-spill-"

    /// Removes spill folders under `root` whose process is gone: their lock file
    /// can be locked (the kernel drops a dead process's flock), or there is no
    /// lock file and the pid in the folder's name is not running.
    /// Returns one notice per folder removed.
    public static func removeStaleFolders(in root: String) throws -> [String] {
        let fm = FileManager.default
        guard let entries = try? fm.contentsOfDirectory(atPath: root) else { return [] }
        var notices: [String] = []
        for entry in entries.sorted() where entry.hasPrefix(folderPrefix) {
            let folder = (root as NSString).appendingPathComponent(entry)
            let pid = Int(entry.dropFirst(folderPrefix.count).prefix { $0.isNumber }) ?? 0
            let lockPath = (folder as NSString).appendingPathComponent("lock")
            let fd = cs_open(lockPath, O_RDWR, 0, 0)
            var stale: Bool
            if fd >= 0 {
                stale = cs_try_lock(fd) == 0
            } else {
                stale = fd == -ENOENT && cs_process_alive(Int32(pid)) == 0
            }
            if stale {
                var bytes = 0
                for f in (try? fm.contentsOfDirectory(atPath: folder)) ?? [] {
                    let p = (folder as NSString).appendingPathComponent(f)
                    bytes += ((try? fm.attributesOfItem(atPath: p))?[.size] as? Int) ?? 0
                }
                do { try fm.removeItem(atPath: folder) } catch {
                    if fd >= 0 { closeDescriptor(fd) }
                    throw OffloadError("[disk] cannot remove stale spill folder \(folder): \(error.localizedDescription)")
                }
                notices.append("[disk] removed stale spill folder \(folder) (\(formatBytes(bytes))) left by process \(pid)")
            }
            if fd >= 0 { closeDescriptor(fd) }
        }
        return notices
    }
}

// MARK: - Pieces

/// Where one tensor's bytes are.
final class Extent: @unchecked Sendable {
    let file: Int
    let offset: Int
    let length: Int
    let byteCount: Int
    let ticket: Int
    var readers = 0     // guarded by the store's lock
    var retired = false // guarded by the store's lock
    init(file: Int, offset: Int, length: Int, byteCount: Int, ticket: Int) {
        self.file = file; self.offset = offset; self.length = length; self.byteCount = byteCount; self.ticket = ticket
    }
}

/// One spill folder with its lock file and spill file.
final class SpillFile: @unchecked Sendable {
    let folder: String
    let path: String
    let lockPath: String
    let fd: Int32
    let lockFD: Int32
    let direct: Bool
    private let growthStep: Int
    private var slots: [Int32] = []
    // Extent allocation, guarded by the store's lock.
    private(set) var used = 0
    private var end = 0
    private var holes: [(offset: Int, length: Int)] = []
    // File growth, guarded by its own lock.
    private let growLock = NSLock()
    private var allocated = 0
    private let closeLock = NSLock()
    private var isClosed = false

    private static let counter = Counter()

    init(root: String, options: DiskStoreOptions, notice: (String) -> Void) throws {
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: root, withIntermediateDirectories: true) } catch {
            throw OffloadError("[disk] cannot create spill folder root \(root): \(error.localizedDescription)")
        }
        let pid = getpid()
        let folder = (root as NSString).appendingPathComponent("\(DiskStore.folderPrefix)\(pid)-\(SpillFile.counter.next())")
        let path = (folder as NSString).appendingPathComponent("spill.bin")
        let lockPath = (folder as NSString).appendingPathComponent("lock")
        self.folder = folder; self.path = path; self.lockPath = lockPath
        growthStep = max(AlignedBuffer.alignment, accountedBytes(options.growthStep))

        guard mkdir(folder, 0o700) == 0 else {
            throw OffloadError("[disk] cannot create spill folder \(folder): \(String(cString: strerror(errno)))")
        }
        var slots: [Int32] = [cs_cleanup_register(folder, 1)]
        var lockFD: Int32 = -1
        var fd: Int32 = -1
        func undo() {
            if fd >= 0 { closeDescriptor(fd) }
            if lockFD >= 0 { closeDescriptor(lockFD) }
            unlink(path); unlink(lockPath); rmdir(folder)
            slots.forEach { cs_cleanup_unregister($0) }
        }
        slots.append(cs_cleanup_register(lockPath, 0))
        lockFD = cs_open(lockPath, O_RDWR | O_CREAT | O_EXCL, 0o600, 0)
        guard lockFD >= 0, cs_try_lock(lockFD) == 0 else {
            let e = lockFD < 0 ? -lockFD : errno
            undo()
            throw OffloadError("[disk] cannot create lock file \(lockPath): \(String(cString: strerror(e)))")
        }
        let pidText = "\(pid)\n"
        _ = pidText.withCString { writeDescriptor(lockFD, $0, strlen($0)) }

        slots.append(cs_cleanup_register(path, 0))
        var direct = false
        if options.directIO == .auto {
            let r = options.faults.refuseDirectIO ? -EINVAL : cs_open(path, O_RDWR | O_CREAT | O_EXCL, 0o600, 1)
            if r >= 0 {
                fd = r
                direct = true
            } else if r == -EINVAL || r == -EOPNOTSUPP {
                notice("[disk] \(root) refuses O_DIRECT (\(String(cString: strerror(-r)))); spilling there through the page cache")
            } else {
                undo()
                throw OffloadError("[disk] cannot create spill file \(path): \(String(cString: strerror(-r)))")
            }
        }
        if fd < 0 {
            // Not O_EXCL: a refused O_DIRECT open may already have made the file (ramfs does).
            let r = cs_open(path, O_RDWR | O_CREAT, 0o600, 0)
            guard r >= 0 else {
                undo()
                throw OffloadError("[disk] cannot create spill file \(path): \(String(cString: strerror(-r)))")
            }
            fd = r
        }
        self.fd = fd
        self.lockFD = lockFD
        self.direct = direct
        self.slots = slots
        if options.preallocate > 0 {
            do { try ensureAllocated(upTo: accountedBytes(options.preallocate), for: "preallocation", bytes: options.preallocate) } catch {
                close()
                throw error
            }
        }
    }

    /// An offset for `length` bytes (first fit in the holes, else at the end).
    /// Called with the store's lock held.
    func allocate(_ length: Int) -> Int {
        used += length
        if let i = holes.firstIndex(where: { $0.length >= length }) {
            let offset = holes[i].offset
            if holes[i].length == length { holes.remove(at: i) } else {
                holes[i] = (offset + length, holes[i].length - length)
            }
            return offset
        }
        let offset = end
        end += length
        return offset
    }

    /// Called with the store's lock held.
    func free(offset: Int, length: Int) {
        used -= length
        if length == 0 { return }
        var i = holes.firstIndex { $0.offset > offset } ?? holes.count
        holes.insert((offset, length), at: i)
        if i + 1 < holes.count, holes[i].offset + holes[i].length == holes[i + 1].offset {
            holes[i].length += holes[i + 1].length
            holes.remove(at: i + 1)
        }
        if i > 0, holes[i - 1].offset + holes[i - 1].length == holes[i].offset {
            holes[i - 1].length += holes[i].length
            holes.remove(at: i)
            i -= 1
        }
        if holes[i].offset + holes[i].length == end {
            end = holes[i].offset
            holes.remove(at: i)
        }
    }

    /// Makes sure the file owns blocks up to `size`, growing it by at least the
    /// growth step; a device without room is an error naming the file.
    func ensureAllocated(upTo size: Int, for name: String, bytes: Int) throws {
        growLock.lock()
        defer { growLock.unlock() }
        if size <= allocated { return }
        let generous = max(size, (allocated + growthStep) / growthStep * growthStep)
        var r = cs_fallocate(fd, Int64(allocated), Int64(generous - allocated))
        if r == 0 { allocated = generous; return }
        if r == ENOSPC && generous > size {
            r = cs_fallocate(fd, Int64(allocated), Int64(size - allocated))
            if r == 0 { allocated = size; return }
        }
        if r == EOPNOTSUPP || r == EINVAL {
            allocated = size   // no preallocation here; a full device shows up as a short write
            return
        }
        throw OffloadError("[disk] no room for \(name) (\(formatBytes(bytes))) in spill file \(path): "
            + "cannot grow it to \(size) bytes: \(String(cString: strerror(r)))")
    }

    func close() {
        closeLock.lock()
        defer { closeLock.unlock() }
        if isClosed { return }
        isClosed = true
        closeDescriptor(fd)
        unlink(path)
        closeDescriptor(lockFD)
        unlink(lockPath)
        rmdir(folder)
        slots.forEach { cs_cleanup_unregister($0) }
    }
}

private func closeDescriptor(_ fd: Int32) { _ = close(fd) }
private func writeDescriptor(_ fd: Int32, _ p: UnsafePointer<CChar>, _ n: Int) -> Int { write(fd, p, n) }

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func next() -> Int {
        lock.lock(); defer { lock.unlock() }
        value += 1
        return value
    }
}

/// Joins the chunks of one request: the first error wins, `finish` runs once
/// after the last chunk.
final class ChunkGroup: @unchecked Sendable {
    private let lock = NSLock()
    private var remaining: Int
    private var error: OffloadError?
    private let finish: @Sendable (OffloadError?) -> Void
    init(count: Int, finish: @escaping @Sendable (OffloadError?) -> Void) {
        remaining = count; self.finish = finish
    }
    func done(_ e: OffloadError?) {
        lock.lock()
        if error == nil { error = e }
        remaining -= 1
        let last = remaining == 0
        let result = error
        lock.unlock()
        if last { finish(result) }
    }
}

/// A one-shot result a thread can wait for.
final class Completion: @unchecked Sendable {
    private let condition = NSCondition()
    private var finished = false
    private var error: OffloadError?
    func finish(_ e: OffloadError?) {
        condition.lock(); error = e; finished = true; condition.broadcast(); condition.unlock()
    }
    func wait() throws {
        condition.lock()
        while !finished { condition.wait() }
        let e = error
        condition.unlock()
        if let e { throw e }
    }
}
