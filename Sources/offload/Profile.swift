// `offload profile`: measures this machine (GEMM FLOP/s at transformer shapes,
// memory copy bandwidth, direct disk I/O at several request sizes and queue
// depths) and writes the hardware profile the planner reads.
// Hidden modes serve tests and benchmarks: `--spill-child` (a process that
// holds spill files until it exits or is signalled) and `--overlap-test`.
import ArgumentParser
import CBLAS
import Foundation
import Formats
import Kernels
import Memory
import Models
import Planning
import Runtime
import Tensors

struct Profile: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profile",
        abstract: "Measure this machine: GEMM FLOP/s, memory copy and direct disk I/O bandwidth.",
        discussion: """
        Writes a hardware profile (JSON) that the planner reads to predict run times, and prints \
        a table. The disk is measured with O_DIRECT in a spill folder made inside --disk and \
        removed afterwards. JSON keys (rates per second): gemm_flops, memcpy_bytes_per_second, \
        host_compute_bytes_per_second, disk_read_bytes_per_second, disk_write_bytes_per_second, \
        then each measurement under "gemm" and "disk".
        """)

    @Option(help: ArgumentHelp("Folder on the disk to measure (default: the temporary folder).", valueName: "dir"))
    var disk: String = NSTemporaryDirectory()

    @Flag(help: "Print the profile as JSON instead of a table.")
    var json = false

    @Option(name: .customLong("read-file"), help: ArgumentHelp(
        "Measure disk reads from this existing file (a model file) instead of from the file the profile has just "
            + "written, which a disk behind a host cache may serve from that cache (writes are still measured "
            + "in --disk).", valueName: "file"))
    var readFile: String?
    @Option(help: ArgumentHelp("Write the profile JSON to this file.", valueName: "file"))
    var out: String?

    @Option(help: ArgumentHelp("Bytes moved per disk measurement.", valueName: "size"))
    var diskBytes: String = "256MiB"

    @Flag(help: "Smaller and fewer measurements: seconds instead of a minute, less precise.")
    var quick = false

    @Flag(help: "Under mpirun: measure the ranks' collectives as data-parallel training runs them (bytes a rank hands to the others per second, and one collective's latency) and add them to the --out profile (measure the machine first with `offload profile --out FILE`), or print them. Example: mpirun -np 2 offload profile --collectives --out hw.json")
    var collectives = false

    // Hidden: disk measurements only, at chosen request sizes and queue depths
    // (Benchmarks/disk-vs-dd.sh).
    @Flag(help: .private) var diskOnly = false
    @Option(help: .private) var requestSizes: String?
    @Option(help: .private) var queueDepths: String?
    @Option(help: .private) var diskPasses: Int = 2

    // Hidden: the overlap benchmark (Benchmarks/overlap-*.sh).
    @Flag(help: .private) var overlapTest = false
    @Option(help: .private) var trace: String?
    @Option(help: .private) var repeats: Int = 1
    @Option(help: .private) var layers: Int = 16
    @Option(help: .private) var blasThreads: Int?

    // Hidden: a child process for the spill-cleanup tests.
    @Option(help: .private) var spillChild: String?
    @Option(help: .private) var spillChildThen: String = "wait"

    func validate() throws {
        guard parseBytes(diskBytes).map({ $0 >= 1 << 20 }) ?? false else {
            throw ValidationError("--disk-bytes must be a size of at least 1 MiB, such as 256MiB (got '\(diskBytes)')")
        }
        if let requestSizes {
            guard let sizes = Self.list(requestSizes, parseBytes), sizes.allSatisfy({ $0 > 0 && $0 % AlignedBuffer.alignment == 0 }) else {
                throw ValidationError("--request-sizes must be sizes that are multiples of 4 KiB, such as 1MiB,4MiB")
            }
        }
        if let queueDepths {
            guard let depths = Self.list(queueDepths, { Int($0) }), depths.allSatisfy({ $0 >= 1 && $0 <= 64 }) else {
                throw ValidationError("--queue-depths must be numbers from 1 to 64, such as 1,4")
            }
        }
        guard repeats >= 1, layers >= 1 else { throw ValidationError("--repeats and --layers must be at least 1") }
        guard ["wait", "busy", "exit", "fail"].contains(spillChildThen) else {
            throw ValidationError("--spill-child-then must be wait, busy, exit or fail")
        }
    }

    func run() throws {
        if let blasThreads { openblas_set_num_threads(Int32(max(1, blasThreads))) }
        if let folder = spillChild { return try runSpillChild(folder: folder, then: spillChildThen) }
        if collectives { return try measureCollectives() }
        if overlapTest {
            return try OverlapBench(folder: disk, layers: layers, repeats: repeats, quick: quick,
                                    tracePath: trace, json: json).run()
        }
        let profile = try measure()
        let data = try profile.encoded()
        if let out {
            try writeAtomically(data, to: out, context: "[profile]")
        }
        if json {
            print(String(decoding: data, as: UTF8.self))
        } else {
            print(profile.table())
            if let out { print("profile written to \(out)") }
        }
    }

    /// `--collectives`: every rank measures; rank 0 adds the rates to --out (an existing profile) or prints them.
    private func measureCollectives() throws {
        guard let comm = try Communicator.fromEnvironment(), comm.size > 1 else {
            throw OffloadError("[profile] --collectives measures the ranks of an MPI job: run it under mpirun with 2 or "
                               + "more ranks (mpirun -np 2 offload profile --collectives --out FILE)")
        }
        defer { comm.finalize() }
        var profile: [String: Any]?
        if comm.rank == 0, let out {
            guard (try? HardwareProfile.load(path: out)) != nil, let data = FileManager.default.contents(atPath: out),
                  let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
                comm.abort(message: "[profile] --out \(out): not an existing profile JSON; measure the machine first with `offload profile --out \(out)`")
            }
            profile = object
        }
        let rates = DataParallel.measure(comm, floats: quick ? 4 << 20 : 32 << 20, repeats: quick ? 3 : 5)
        guard comm.rank == 0 else { return }
        let line = String(format: "collectives of %d ranks: %@/s handed to the other ranks (the gradient exchange of training), latency %.1f µs",
                          rates.ranks, formatBytes(Int(rates.bytesPerSecond)), rates.latencySeconds * 1e6)
        if var profile, let out {
            profile["collectives"] = ["ranks": rates.ranks, "bytes_per_second": rates.bytesPerSecond,
                                      "latency_seconds": rates.latencySeconds]
            try writeAtomically(try JSONSerialization.data(withJSONObject: profile, options: [.prettyPrinted, .sortedKeys]),
                                to: out, context: "[profile]")
            print(line + "\nadded to \(out)")
        } else if json {
            print(String(decoding: try JSONEncoder().encode(rates), as: UTF8.self))
        } else {
            print(line)
        }
    }

    static func list<T>(_ text: String, _ parse: (String) -> T?) -> [T]? {
        let items = text.split(separator: ",").map { parse(String($0)) }
        guard !items.isEmpty, items.allSatisfy({ $0 != nil }) else { return nil }
        return items.map { $0! }
    }

    private func measure() throws -> MeasuredProfile {
        let threads = Int(openblas_get_num_threads())
        var p = MeasuredProfile(threads: threads, diskFolder: disk)
        if !diskOnly {
            say("GEMM at transformer shapes (\(threads) threads)")
            p.gemm = measureGemms(quick: quick)
            p.gemmFlops = median(p.gemm.map(\.flopsPerSecond))
            say("memory copy")
            p.memcpyBytesPerSecond = measureMemcpy(bytes: quick ? 64 << 20 : 256 << 20)
            p.hostComputeBytesPerSecond = p.memcpyBytesPerSecond  // the same memory on a CPU-only machine
            say("training kernels on a training step (SmolLM2-135M's layer shape and vocabulary, batch 4 × 256)")
            p.training = try measureTrainingKernels(threads: threads, repeats: quick ? 3 : 5)
        }
        let bytes = quick ? min(parseBytes(diskBytes)!, 64 << 20) : parseBytes(diskBytes)!
        say("disk \(disk), \(formatBytes(bytes)) per measurement")
        let sizes = requestSizes.flatMap { Self.list($0, parseBytes) }
            ?? (quick ? [1 << 20, 4 << 20] : [256 << 10, 1 << 20, 4 << 20, 16 << 20])
        let depths = queueDepths.flatMap { Self.list($0, { Int($0) }) } ?? (quick ? [1, 4] : [1, 2, 4, 8])
        var direct = true
        for size in sizes {
            for depth in depths {
                var m = try measureDisk(folder: disk, bytes: bytes, requestBytes: size, queueDepth: depth,
                                        passes: max(1, diskPasses))
                if let readFile {
                    m.result.readBytesPerSecond = try measureFileReads(path: readFile, bytes: bytes, requestBytes: size,
                                                                       queueDepth: depth, passes: max(1, diskPasses))
                }
                direct = direct && m.direct
                p.disk.append(m.result)
            }
        }
        p.diskDirectIO = direct
        // What the executor's disk store will see: its default request size and
        // queue depth when measured, else the best configuration measured.
        let defaults = DiskStoreOptions()
        let standard = p.disk.first { $0.requestBytes == defaults.requestBytes && $0.queueDepth == defaults.threadsPerDirection }
        p.diskReadBytesPerSecond = standard?.readBytesPerSecond ?? p.disk.map(\.readBytesPerSecond).max() ?? 0
        p.diskWriteBytesPerSecond = standard?.writeBytesPerSecond ?? p.disk.map(\.writeBytesPerSecond).max() ?? 0
        if !diskOnly {
            say("disk reads and writes at once, and GEMM beside them")
            p.diskDuplexBytesPerSecond = try measureDuplex(folder: disk, bytes: bytes)
            p.ioComputeSecondsPerByte = try measureInterference(folder: disk, bytes: min(bytes, 64 << 20), quick: quick)
        }
        return p
    }

    private func say(_ line: String) {
        if !json { FileHandle.standardError.write(Data("[profile] measuring \(line)\n".utf8)) }
    }
}

// MARK: - The profile

/// What `offload profile` writes. Rates are per second; bytes are bytes.
struct MeasuredProfile: Codable {
    struct Gemm: Codable {
        var shape: String
        var m: Int, n: Int, k: Int
        var flopsPerSecond: Double
        enum CodingKeys: String, CodingKey { case shape, m, n, k, flopsPerSecond = "flops_per_second" }
    }
    struct Disk: Codable {
        var requestBytes: Int
        var queueDepth: Int
        var readBytesPerSecond: Double
        var writeBytesPerSecond: Double
        enum CodingKeys: String, CodingKey {
            case requestBytes = "request_bytes", queueDepth = "queue_depth"
            case readBytesPerSecond = "read_bytes_per_second", writeBytesPerSecond = "write_bytes_per_second"
        }
    }

    var gemmFlops = 0.0
    var memcpyBytesPerSecond = 0.0
    var hostComputeBytesPerSecond = 0.0
    var diskReadBytesPerSecond = 0.0
    var diskWriteBytesPerSecond = 0.0
    /// Bytes per second of both directions together while one tensor is read and another written.
    var diskDuplexBytesPerSecond: Double?
    /// Compute seconds lost per byte of direct I/O running beside it (on a CPU-only machine the
    /// transfers' system calls, page pinning and interrupts run on the cores that compute).
    var ioComputeSecondsPerByte: Double?
    var diskDirectIO = true
    var diskFolder: String
    var threads: Int
    var machine: String
    var measuredAt: String
    var gemm: [Gemm] = []
    var disk: [Disk] = []
    var training: HardwareProfile.TrainingKernelRates?

    enum CodingKeys: String, CodingKey {
        case gemmFlops = "gemm_flops", memcpyBytesPerSecond = "memcpy_bytes_per_second"
        case hostComputeBytesPerSecond = "host_compute_bytes_per_second"
        case diskReadBytesPerSecond = "disk_read_bytes_per_second"
        case diskWriteBytesPerSecond = "disk_write_bytes_per_second"
        case diskDuplexBytesPerSecond = "disk_duplex_bytes_per_second"
        case ioComputeSecondsPerByte = "io_compute_seconds_per_byte"
        case diskDirectIO = "disk_direct_io", diskFolder = "disk_folder", threads, machine
        case measuredAt = "measured_at", gemm, disk, training = "training_kernels"
    }

    init(threads: Int, diskFolder: String) {
        self.threads = threads
        self.diskFolder = diskFolder
        machine = machineDescription()
        measuredAt = ISO8601DateFormatter().string(from: Date())
    }

    func encoded() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try e.encode(self)
    }

    func table() -> String {
        var lines = ["offload profile: \(machine), \(measuredAt)", ""]
        lines.append("GEMM (OpenBLAS sgemm, \(BLASSetup.coreName) kernels, \(threads) threads)")
        lines.append(pad("shape", 26) + lpad("M", 6) + lpad("N", 6) + lpad("K", 6) + lpad("GFLOP/s", 10))
        for g in gemm {
            lines.append(pad(g.shape, 26) + lpad("\(g.m)", 6) + lpad("\(g.n)", 6) + lpad("\(g.k)", 6)
                         + lpad(String(format: "%.1f", g.flopsPerSecond / 1e9), 10))
        }
        lines.append("")
        lines.append("memory copy: \(rate(memcpyBytesPerSecond))")
        if let t = training {
            lines.append("")
            lines.append("training kernels (a step at SmolLM2-135M's layer shape and vocabulary, batch 4 × 256, \(threads) threads)")
            lines.append(String(format: "  matrix products %.1f GFLOP/s forward, %.1f backward; attention %.1f / %.1f GFLOP/s",
                                t.matmulFlops / 1e9, t.matmulBackwardFlops / 1e9, t.attentionFlops / 1e9,
                                t.attentionBackwardFlops / 1e9))
            lines.append("  norms, RoPE, SwiGLU \(rate(t.elementwiseBytesPerSecond)); cross-entropy "
                         + String(format: "%.0f M logits/s; AdamW %.0f M parameters/s", t.crossEntropyLogitsPerSecond / 1e6,
                                  t.adamwParametersPerSecond / 1e6))
        }
        lines.append("")
        lines.append("disk \(diskFolder) (\(diskDirectIO ? "O_DIRECT" : "buffered: O_DIRECT refused"))")
        lines.append(pad("request", 12) + lpad("depth", 6) + lpad("write", 14) + lpad("read", 14))
        for d in disk {
            lines.append(pad(formatBytes(d.requestBytes), 12) + lpad("\(d.queueDepth)", 6)
                         + lpad(rate(d.writeBytesPerSecond), 14) + lpad(rate(d.readBytesPerSecond), 14))
        }
        if let d = diskDuplexBytesPerSecond { lines.append("reading and writing at once: \(rate(d)) in both directions together") }
        if let c = ioComputeSecondsPerByte {
            lines.append(String(format: "GEMM beside direct I/O: %.3f s of compute lost per GiB moved", c * Double(1 << 30)))
        }
        lines.append("")
        lines.append("profile: gemm \(String(format: "%.1f", gemmFlops / 1e9)) GFLOP/s, memory copy \(rate(memcpyBytesPerSecond)), "
                     + "disk write \(rate(diskWriteBytesPerSecond)), disk read \(rate(diskReadBytesPerSecond))")
        return lines.joined(separator: "\n")
    }
}

func rate(_ bytesPerSecond: Double) -> String { formatBytes(Int(bytesPerSecond)) + "/s" }
private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s + " " : s + String(repeating: " ", count: n - s.count) }
private func lpad(_ s: String, _ n: Int) -> String { s.count >= n ? " " + s : String(repeating: " ", count: n - s.count) + s }

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return 0 }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

func machineDescription() -> String {
    var u = utsname()
    uname(&u)
    let arch = withUnsafeBytes(of: &u.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    let memory = Int(ProcessInfo.processInfo.physicalMemory)
    var cpu = ""
    if let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
       let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
       let colon = line.firstIndex(of: ":") {
        cpu = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces) + ", "
    }
    return "\(cpu)\(arch), \(ProcessInfo.processInfo.activeProcessorCount) cores, \(formatBytes(memory))"
}

func seconds(_ body: () throws -> Void) rethrows -> Double {
    let t = DispatchTime.now().uptimeNanoseconds
    try body()
    return Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
}

// MARK: - Measurements

/// C[M×N] = A[M×K] · W[N×K]ᵀ, the layout of a linear layer with weights [out, in].
func sgemm(_ c: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ w: UnsafePointer<Float>, m: Int, n: Int, k: Int) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k),
                1, a, Int32(k), w, Int32(k), 0, c, Int32(n))
}

private func measureGemms(quick: Bool) -> [MeasuredProfile.Gemm] {
    // Tokens × (out, in) of the linear layers of two Llama-family sizes.
    let tokens = 512
    let shapes: [(String, Int, Int)] = [
        ("135M attention (576x576)", 576, 576),
        ("135M mlp up (1536x576)", 1536, 576),
        ("135M mlp down (576x1536)", 576, 1536),
        ("1B attention (2048x2048)", 2048, 2048),
        ("1B mlp up (8192x2048)", 8192, 2048),
        ("1B mlp down (2048x8192)", 2048, 8192),
    ]
    let minimum = quick ? 0.05 : 0.3
    return shapes.map { name, n, k in
        let a = [Float](repeating: 0.5, count: tokens * k)
        let w = [Float](repeating: 0.25, count: n * k)
        var c = [Float](repeating: 0, count: tokens * n)
        var best = 0.0
        a.withUnsafeBufferPointer { a in
            w.withUnsafeBufferPointer { w in
                c.withUnsafeMutableBufferPointer { c in
                    sgemm(c.baseAddress!, a.baseAddress!, w.baseAddress!, m: tokens, n: n, k: k)  // warm up
                    var runs = 0
                    var total = 0.0
                    while total < minimum || runs < 3 {
                        let t = seconds { sgemm(c.baseAddress!, a.baseAddress!, w.baseAddress!, m: tokens, n: n, k: k) }
                        best = max(best, 2.0 * Double(tokens * n * k) / t)
                        total += t
                        runs += 1
                    }
                }
            }
        }
        return MeasuredProfile.Gemm(shape: name, m: tokens, n: n, k: k, flopsPerSecond: best)
    }
}

private func measureMemcpy(bytes: Int) -> Double {
    guard let src = try? AlignedBuffer(byteCount: bytes), let dst = try? AlignedBuffer(byteCount: bytes) else { return 0 }
    memset(src.baseAddress, 1, bytes)
    memset(dst.baseAddress, 2, bytes)
    var best = 0.0
    for _ in 0..<5 {
        let t = seconds { memcpy(dst.baseAddress, src.baseAddress, bytes) }
        best = max(best, Double(bytes) / t)
    }
    return best
}

/// Writes then reads one tensor of `bytes` through a disk store with the given
/// request size and I/O threads (queue depth); the best of `passes` of each.
func measureDisk(folder: String, bytes: Int, requestBytes: Int, queueDepth: Int, passes: Int = 2) throws
    -> (result: MeasuredProfile.Disk, direct: Bool) {
    var o = DiskStoreOptions()
    o.requestBytes = requestBytes
    o.threadsPerDirection = queueDepth
    o.preallocate = min(passes, 2) * bytes  // spill files are preallocated; writes fill them
    let store = try DiskStore(roots: [folder], options: o, notice: { _ in })
    defer { store.close() }
    let buffer = try AlignedBuffer(byteCount: bytes)
    memset(buffer.baseAddress, 0x5A, bytes)
    var write = 0.0, read = 0.0
    for _ in 0..<passes { write = max(write, Double(bytes) / (try seconds { try store.write("probe", from: buffer) })) }
    for _ in 0..<passes { read = max(read, Double(bytes) / (try seconds { try store.read("probe", into: buffer) })) }
    return (MeasuredProfile.Disk(requestBytes: requestBytes, queueDepth: queueDepth,
                                 readBytesPerSecond: read, writeBytesPerSecond: write), store.usesDirectIO)
}

/// Direct reads of `bytes` from the existing file at `path` in requests of `requestBytes`, `queueDepth` at
/// a time, spread evenly over the file (each pass at other offsets, no range read twice in a run); the
/// best of `passes` in bytes per second.
func measureFileReads(path: String, bytes: Int, requestBytes: Int, queueDepth: Int, passes: Int) throws -> Double {
    let reader = try DirectFileReader(path: path)
    let requests = max(1, bytes / requestBytes)
    guard reader.size >= requestBytes * requests * passes else {
        throw OffloadError("[profile] --read-file \(path): \(formatBytes(reader.size)) is too small; it needs "
                           + "\(formatBytes(requestBytes * requests * passes)) (--disk-bytes × passes)")
    }
    let stride = AlignedBuffer.alignDown(reader.size / (requests * passes))
    let buffers = try (0..<queueDepth).map { _ in try AlignedBuffer(byteCount: requestBytes) }
    let failure = FirstError()
    var best = 0.0
    for pass in 0..<passes {
        let t = seconds {
            DispatchQueue.concurrentPerform(iterations: queueDepth) { w in
                for i in Swift.stride(from: w, to: requests, by: queueDepth) where failure.error == nil {
                    do {
                        try reader.read(into: buffers[w].baseAddress, offset: (i * passes + pass) * stride,
                                        length: requestBytes, needed: requestBytes, what: "a probe")
                    } catch { failure.set(error) }
                }
            }
        }
        if let e = failure.error { throw e }
        best = max(best, Double(requests * requestBytes) / t)
    }
    return best
}

/// A disk store in `folder` (the store's default request size and threads) holding tensor "in" of
/// `bytes`, with room for `more` tensors of that size, and buffers to write from and read into.
private func probeStore(folder: String, bytes: Int, more: Int) throws -> (store: DiskStore, out: AlignedBuffer, back: AlignedBuffer) {
    var o = DiskStoreOptions()
    o.preallocate = (1 + more) * bytes
    let store = try DiskStore(roots: [folder], options: o, notice: { _ in })
    let out = try AlignedBuffer(byteCount: bytes), back = try AlignedBuffer(byteCount: bytes)
    memset(out.baseAddress, 0x5A, bytes)
    do { try store.write("in", from: out) } catch { store.close(); throw error }
    return (store, out, back)
}

/// Writes one tensor of `bytes` while reading another through one store: bytes per second of both
/// directions together; the best of two.
func measureDuplex(folder: String, bytes: Int) throws -> Double {
    let (store, out, back) = try probeStore(folder: folder, bytes: bytes, more: 2)
    defer { store.close() }
    var best = 0.0
    for pass in 0..<2 {
        let group = DispatchGroup()
        let failure = FirstError()
        let t = seconds {
            let done: @Sendable (OffloadError?) -> Void = { e in failure.set(e); group.leave() }
            group.enter()
            do { try store.write("out\(pass)", from: out, completion: done) } catch { done(error as? OffloadError ?? OffloadError("\(error)")) }
            group.enter()
            do { try store.read("in", into: back, completion: done) } catch { done(error as? OffloadError ?? OffloadError("\(error)")) }
            group.wait()
        }
        if let e = failure.error { throw e }
        store.remove("out\(pass)")
        best = max(best, Double(2 * bytes) / t)
    }
    return best
}

/// Compute seconds that direct I/O beside it takes from a GEMM workload, per byte moved: the
/// workload alone, then while a thread writes and reads tensors of `bytes` without pause;
/// alternated three times (the median), so that other load on the machine falls on both.
func measureInterference(folder: String, bytes: Int, quick: Bool) throws -> Double {
    let (tokens, n, k) = (512, 1536, 576)  // a 135M-model MLP projection
    let a = [Float](repeating: 0.5, count: tokens * k), w = [Float](repeating: 0.25, count: n * k)
    var c = [Float](repeating: 0, count: tokens * n)
    func workload(_ repeats: Int) -> Double {
        a.withUnsafeBufferPointer { a in w.withUnsafeBufferPointer { w in c.withUnsafeMutableBufferPointer { c in
            seconds { for _ in 0..<repeats { sgemm(c.baseAddress!, a.baseAddress!, w.baseAddress!, m: tokens, n: n, k: k) } }
        } } }
    }
    _ = workload(2)
    let repeats = max(8, Int((quick ? 0.3 : 1.0) / (workload(8) / 8)))
    let (store, out, back) = try probeStore(folder: folder, bytes: bytes, more: 3)
    defer { store.close() }
    var costs: [Double] = []
    for _ in 0..<3 {
        let alone = workload(repeats)
        let moved = Counter(), stop = Counter(), failure = FirstError()
        let io = Thread {
            var i = 0
            while stop.value == 0 && failure.error == nil {
                do {
                    try store.write("out\(i % 2)", from: out)
                    try store.read("in", into: back)
                    moved.add(2 * bytes)
                } catch { failure.set(error as? OffloadError ?? OffloadError("[profile] \(error)")) }
                i += 1
            }
            stop.add(1)
        }
        io.start()
        while moved.value == 0 && failure.error == nil { usleep(1000) }  // the I/O is under way
        let before = moved.value, start = DispatchTime.now().uptimeNanoseconds
        let beside = workload(repeats)
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        let during = Double(moved.value - before)  // in whole transfers: a rate over the elapsed time
        stop.add(1)
        while stop.value < 2 { usleep(1000) }
        if let e = failure.error { throw e }
        if during > 0 { costs.append((beside - alone) / (during / elapsed * beside)) }
    }
    return max(0, median(costs))
}

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
    func add(_ x: Int) { lock.lock(); n += x; lock.unlock() }
}

// MARK: - Spill child (tests of spill-file cleanup)

/// Makes a disk store under `folder`, writes a few tensors, prints
/// "ready <spill folder>" and then exits, fails, or waits for a signal.
private func runSpillChild(folder: String, then: String) throws {
    let store = try DiskStore(roots: [folder])
    let buffer = try AlignedBuffer(byteCount: 1 << 20)
    memset(buffer.baseAddress, 0x33, buffer.byteCount)
    for i in 0..<3 { try store.write("t\(i)", from: buffer) }
    print("ready \(store.spillFolders[0])")
    fflush(nil)  // all streams: the parent waits for this line
    switch then {
    case "exit": exit(0)   // the store is still open: the atexit hook must clean up
    case "fail": throw OffloadError("[spill-child] failing on purpose with the store open")
    case "busy":
        var i = 0
        while true { try store.write("t\(i % 3)", from: buffer); i += 1 }
    default:
        while true { sleep(60) }
    }
}

/// The trainer's own kernels, timed on forward-backward steps of a two-layer model with
/// SmolLM2-135M's layer shape and vocabulary (dim 576, 9 heads, 3 KV heads, FFN 1536, 49152 tokens) at
/// batch 4 × 256, and AdamW over 32M parameters (the fastest of `repeats`), each kind as a rate in the
/// units the cost model counts its work in (`ModelChain.llama`), so the planner's training times are
/// this machine's for these kernels.
func measureTrainingKernels(threads: Int, repeats: Int) throws -> HardwareProfile.TrainingKernelRates {
    let c = LlamaConfig(name: "profile", vocabSize: 49152, dim: 576, ffnDim: 1536, layers: 2, heads: 9, kvHeads: 3)
    let batch = 4, seqLen = 256, n = batch * seqLen
    setTrainingThreads(threads)
    let model = try TrainableLlama.random(config: c, seed: 1)
    let trainer = try LlamaTrainer(model: model, batch: batch, seqLen: seqLen)
    var rng = SeededGenerator(seed: 2)
    let tokens = (0...n).map { _ in Int.random(in: 0..<c.vocabSize, using: &rng) }
    let inputs = Array(tokens[0..<n]), targets = Array(tokens[1...])
    try trainer.forwardBackward(inputs: inputs, targets: targets)   // warm up
    // Each step's kernels by kind, and the step's wall time: what no kind names (the embedding, the
    // loss, the threads' hand-offs) is shared among the kinds in proportion, so the rates add up to
    // the whole step. The fastest step is the one used: what the machine does when nothing else takes
    // its cores (on a shared machine a long run is slower by whatever else runs beside it).
    var steps: [(wall: Double, kinds: [String: Double])] = []
    trainer.profiling = true
    for _ in 0..<repeats {
        model.zeroGradients()
        trainer.resetProfile()
        let t0 = now()
        try trainer.forwardBackward(inputs: inputs, targets: targets)
        steps.append((now() - t0, trainer.profile))
    }
    trainer.profiling = false
    let step = steps.min { $0.wall < $1.wall }!
    let scale = step.wall / max(step.kinds.values.reduce(0, +), 1e-9)
    let best = step.kinds.mapValues { $0 * scale }
    // AdamW over 32M parameters (512 MiB of weights, gradients, m and v: from memory, as a model's are).
    let adam = AdamW(weightDecay: 0.1), count = 32 << 20
    let arrays = (0..<4).map { _ in UnsafeMutablePointer<Float>.allocate(capacity: count) }
    defer { arrays.forEach { $0.deallocate() } }
    for a in arrays { a.update(repeating: 0.5, count: count) }
    let adamSeconds = ((0...repeats).map { t in
        let t0 = now()
        TrainingThreads.forEachRange(count, minPerThread: 1 << 15) { s in
            adam.update(arrays[0] + s.lowerBound, gradient: arrays[1] + s.lowerBound,
                        m: arrays[2] + s.lowerBound, v: arrays[3] + s.lowerBound, count: s.count, lr: 1e-4, step: t + 1)
        }
        return now() - t0
    }.dropFirst().min()!)
    // The work as the cost model counts it, for this model and batch.
    let w = ModelChain.TrainingWork(config: c, batch: batch, seqLen: seqLen), L = Double(c.layers)
    let matForward = L * w.blockMatmulFLOPs + w.headFLOPs, attention = L * w.blockAttentionFLOPs
    let elementwise = L * (3 * w.blockElementwiseBytes + w.blockSavedBytes)
    func seconds(_ kinds: String...) throws -> Double {
        let s = kinds.reduce(0) { $0 + (best[$1] ?? 0) }
        guard s > 0 else { throw OffloadError("[profile] the training step timed no \(kinds.joined(separator: ", ")) kernels") }
        return s
    }
    return HardwareProfile.TrainingKernelRates(
        matmulFlops: matForward / (try seconds("matmul fwd")),
        matmulBackwardFlops: 2 * matForward / (try seconds("matmul bwd")),
        attentionFlops: attention / (try seconds("attention fwd")),
        attentionBackwardFlops: 2 * attention / (try seconds("attention bwd")),
        elementwiseBytesPerSecond: elementwise / (try seconds("rmsnorm", "rope", "swiglu")),
        crossEntropyLogitsPerSecond: 2 * w.logits / (try seconds("cross-entropy")),
        adamwParametersPerSecond: Double(count) / adamSeconds)
}
