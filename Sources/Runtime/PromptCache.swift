// A prompt's KV cache kept on disk across runs (LMCache's idea, for one machine): the keys and values
// of every whole block of `blockTokens` prompt tokens are stored in a file named by a hash of the
// model's identity and the tokens up to the block's end, so a later prompt that starts with the
// same tokens loads those blocks and prefills only the rest.
//
// Exact: a block starts at a multiple of 256 positions, where prefill passes may start without
// changing a bit (`LlamaModel.prefillPieces`), so restoring blocks and prefilling the rest gives the
// one-pass prefill's cache and logits bit for bit; more than `Matmul.directRowLimit` tokens are
// always left to prefill (fewer would take the decode kernels).
//
// Safe: an entry is written to a temporary name and renamed, so a killed writer leaves no entry;
// each entry carries the model's identity, its prefix hash, its shape and a checksum per layer
// (the checkpoints' `Checksum64`), and an entry that does not match in every one is never used (a
// corrupt one is deleted). The folder is kept under a size limit by deleting the least recently used entries.
import Foundation
import Formats
import Kernels
import Models
import Tensors

public final class PromptCache {
    /// Tokens per stored block: a multiple of `Matmul.rowBlock`, so blocks start where passes may.
    public static let blockTokens = 256
    static let magic = Array("OFFLOAD-KV-BLK-1".utf8)
    static let headerBytes = 128

    public let folder: String
    public let limitBytes: Int
    /// The model's identity: its shape, RoPE layout and samples of every parameter's bytes.
    let modelKey: [UInt8]
    let layers: Int
    let kvDim: Int
    /// Entries found unusable (torn or corrupt) and deleted; blocks stored.
    public private(set) var rejectedEntries = 0
    public private(set) var storedBlocks = 0

    /// A cache in `folder` (created if missing) for the model `source` holds.
    public init(folder: String, limitBytes: Int, model source: WeightSource) throws {
        precondition(Self.blockTokens % Matmul.rowBlock == 0)
        var isDir: ObjCBool = false
        if FileManager.default.fileExists(atPath: folder, isDirectory: &isDir) {
            guard isDir.boolValue else { throw OffloadError("[prompt-cache] \(folder) is not a folder") }
        } else {
            do { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) } catch {
                throw OffloadError("[prompt-cache] cannot create \(folder): \(error.localizedDescription)")
            }
        }
        guard access(folder, W_OK) == 0 else { throw OffloadError("[prompt-cache] \(folder) is not writable") }
        self.folder = folder
        self.limitBytes = limitBytes
        layers = source.config.layers
        kvDim = source.config.kvDim
        modelKey = try Self.identity(of: source)
        removeStaleTemporaries()
    }

    /// SHA-256 over the config, the RoPE layout and, for every parameter, its name, type, shape and
    /// its first, middle and last 4 KiB (another model, or a fine-tune of the same one, differs there).
    static func identity(of source: WeightSource) throws -> [UInt8] {
        var h = SHA256()
        func add(_ s: String) { Array(s.utf8).withUnsafeBytes { h.update($0) } }
        add("offload prompt cache 1\n\(source.config)\n\(source.ropeStyle)\n")
        for spec in source.config.parameterTable {
            let t = try source.tensor(spec.name)
            add("\(t.name) \(t.dtype) \(t.shape)\n")
            let n = t.bytes.count, piece = 4096
            for start in Set([0, max(0, n / 2 - piece / 2), max(0, n - piece)]).sorted() {
                h.update(UnsafeRawBufferPointer(rebasing: t.bytes[start..<min(n, start + piece)]))
            }
        }
        return h.finalize()
    }

    /// Hashes of the prompt's whole blocks: entry `i` names tokens [0, (i + 1) × blockTokens).
    func blockKeys(_ tokens: [Int], blocks: Int) -> [[UInt8]] {
        var h = SHA256()
        modelKey.withUnsafeBytes { h.update($0) }
        var keys: [[UInt8]] = []
        for b in 0..<blocks {
            let ids = tokens[b * Self.blockTokens..<(b + 1) * Self.blockTokens].map { Int32(truncatingIfNeeded: $0).littleEndian }
            ids.withUnsafeBytes { h.update($0) }
            var copy = h
            keys.append(copy.finalize())
        }
        return keys
    }

    func path(_ key: [UInt8]) -> String {
        (folder as NSString).appendingPathComponent(key.map { String(format: "%02x", $0) }.joined() + ".kvblock")
    }

    var sliceBytes: Int { 2 * Self.blockTokens * kvDim * 4 }
    var payloadOffset: Int { Self.headerBytes + 8 * layers }
    var entryBytes: Int { payloadOffset + layers * sliceBytes }

    /// The header an entry for block `block` with prefix hash `key` must carry.
    func header(block: Int, key: [UInt8]) -> [UInt8] {
        var b = Self.magic + modelKey + key
        for v in [UInt32(layers), UInt32(kvDim), UInt32(Self.blockTokens), UInt32(block)] {
            withUnsafeBytes(of: v.littleEndian) { b += $0 }
        }
        return b + [UInt8](repeating: 0, count: Self.headerBytes - b.count)
    }

    /// Loads the longest run of stored blocks that starts the prompt (leaving more than the direct
    /// path's rows to prefill) into `cache`, which must be empty; returns the positions loaded.
    public func restore(prompt: [Int], into cache: KVCache) throws -> Int {
        precondition(cache.length == 0, "restore into an empty cache")
        let usable = max(0, prompt.count - Matmul.directRowLimit - 1) / Self.blockTokens
        guard usable > 0 else { return 0 }
        let keys = blockKeys(prompt, blocks: usable)
        // Open every entry in order while its header matches; the first missing or foreign one ends the run.
        var files: [(fd: Int32, sums: [UInt64], path: String)] = []
        defer { for f in files { close(f.fd) } }
        for (b, key) in keys.enumerated() {
            let p = path(key)
            let fd = open(p, O_RDONLY)
            guard fd >= 0 else { break }
            var st = stat()
            let head = [UInt8](unsafeUninitializedCapacity: payloadOffset) { buf, n in
                n = max(0, pread(fd, buf.baseAddress, payloadOffset, 0))
            }
            guard fstat(fd, &st) == 0, Int(st.st_size) == entryBytes, head.count == payloadOffset,
                  Array(head[0..<Self.headerBytes]) == header(block: b, key: key) else {
                close(fd)
                reject(p)
                break
            }
            let sums = (0..<layers).map { l in
                head.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: Self.headerBytes + 8 * l, as: UInt64.self)) }
            }
            files.append((fd, sums, p))
        }
        var good = files.count
        guard good > 0 else { return 0 }
        let rows = Self.blockTokens * kvDim
        let slice = UnsafeMutableRawPointer.allocate(byteCount: sliceBytes, alignment: 64)
        defer { slice.deallocate() }
        var appended = 0   // the most blocks a layer took
        for l in 0..<layers {
            for b in 0..<good {
                let n = pread(files[b].fd, slice, sliceBytes, off_t(payloadOffset + l * sliceBytes))
                guard n == sliceBytes, checksum(slice) == files[b].sums[l] else {
                    reject(files[b].path)
                    good = b
                    break
                }
                let k = slice.assumingMemoryBound(to: Float.self)
                try cache.append(layer: l, start: b * Self.blockTokens, rows: Self.blockTokens, k: k, v: k + rows)
                appended = max(appended, b + 1)
            }
        }
        // Layers before a bad block took more blocks than the others keep.
        cache.setLength(appended * Self.blockTokens)
        try cache.truncate(to: good * Self.blockTokens)
        if good == 0 { return 0 }
        for f in files.prefix(good) { _ = utimes(f.path, nil) }   // recently used
        return good * Self.blockTokens
    }

    /// Stores the prompt's whole blocks past the first `restored` positions from `cache` (which holds
    /// the prompt's prefill), then trims the folder to the size limit. Failing to store is not an
    /// error for the run: it returns the reason.
    @discardableResult
    public func save(prompt: [Int], from cache: KVCache, restored: Int) -> String? {
        let blocks = min(prompt.count, cache.length) / Self.blockTokens
        let first = restored / Self.blockTokens
        guard blocks > first else { return nil }
        let keys = blockKeys(prompt, blocks: blocks)
        var temps: [(fd: Int32, temp: String, final: String, sums: [UInt64])] = []
        defer { for t in temps { close(t.fd); unlink(t.temp) } }
        let rows = Self.blockTokens * kvDim
        let slice = UnsafeMutableRawPointer.allocate(byteCount: sliceBytes, alignment: 64)
        defer { slice.deallocate() }
        let wanted = (first..<blocks).filter { !FileManager.default.fileExists(atPath: path(keys[$0])) }
        guard !wanted.isEmpty else { return nil }
        do {
            for b in wanted {
                let temp = (folder as NSString).appendingPathComponent(".tmp-\(getpid())-\(UUID().uuidString.prefix(8))")
                let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL, 0o644)
                guard fd >= 0 else { throw OffloadError("cannot create \(temp): \(String(cString: strerror(errno)))") }
                temps.append((fd, temp, path(keys[b]), []))
            }
            for l in 0..<layers {
                for (t, b) in zip(temps.indices, wanted) {
                    let k = slice.assumingMemoryBound(to: Float.self)
                    try cache.read(layer: l, from: b * Self.blockTokens, count: Self.blockTokens, k: k, v: k + rows)
                    temps[t].sums.append(checksum(slice))
                    guard pwrite(temps[t].fd, slice, sliceBytes, off_t(payloadOffset + l * sliceBytes)) == sliceBytes else {
                        throw OffloadError("write \(temps[t].temp): \(String(cString: strerror(errno)))")
                    }
                }
            }
            for (t, b) in zip(temps.indices, wanted) {
                var head = header(block: b, key: keys[b])
                for s in temps[t].sums { withUnsafeBytes(of: s.littleEndian) { head += $0 } }
                guard pwrite(temps[t].fd, head, head.count, 0) == head.count, fsync(temps[t].fd) == 0,
                      rename(temps[t].temp, temps[t].final) == 0 else {
                    throw OffloadError("write \(temps[t].final): \(String(cString: strerror(errno)))")
                }
                storedBlocks += 1
            }
        } catch {
            return "[prompt-cache] not stored: \(error)"
        }
        trim()
        return nil
    }

    /// Deletes the least recently used entries until the folder's entries fit the limit.
    func trim() {
        let fm = FileManager.default
        guard let names = try? fm.contentsOfDirectory(atPath: folder) else { return }
        var entries: [(path: String, size: Int, used: Date)] = names.filter { $0.hasSuffix(".kvblock") }.compactMap { n in
            let p = (folder as NSString).appendingPathComponent(n)
            guard let a = try? fm.attributesOfItem(atPath: p), let size = a[.size] as? Int,
                  let used = a[.modificationDate] as? Date else { return nil }
            return (p, size, used)
        }
        var total = entries.reduce(0) { $0 + $1.size }
        entries.sort { $0.used < $1.used }
        for e in entries where total > limitBytes {
            unlink(e.path)
            total -= e.size
        }
    }

    /// Temporary files of writers that died more than an hour ago.
    func removeStaleTemporaries() {
        let fm = FileManager.default
        for n in (try? fm.contentsOfDirectory(atPath: folder)) ?? [] where n.hasPrefix(".tmp-") {
            let p = (folder as NSString).appendingPathComponent(n)
            if let d = (try? fm.attributesOfItem(atPath: p))?[.modificationDate] as? Date, d < Date(timeIntervalSinceNow: -3600) {
                unlink(p)
            }
        }
    }

    /// The checkpoints' checksum of one layer's slice.
    private func checksum(_ slice: UnsafeRawPointer) -> UInt64 {
        var c = Checksum64()
        c.update(UnsafeRawBufferPointer(start: slice, count: sliceBytes))
        return c.value
    }

    private func reject(_ path: String) {
        rejectedEntries += 1
        unlink(path)
    }
}
