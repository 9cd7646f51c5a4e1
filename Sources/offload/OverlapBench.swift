// The overlap benchmark behind `offload profile --overlap-test`: a layer loop
// that computes (OpenBLAS GEMMs) while streaming weights in and activations out
// through the disk store, timed alone and together. Overlap is good when the
// together time is close to max(compute alone, I/O alone).
// Not a model: the bytes moved are not the bytes multiplied.
import CBLAS
import Foundation
import Memory
import Tensors

struct OverlapBench {
    let folder: String
    let layers: Int
    let repeats: Int
    let quick: Bool
    let tracePath: String?
    let json: Bool

    struct Run: Codable {
        var computeSeconds: Double
        var ioSeconds: Double
        var overlappedSeconds: Double
        var ratio: Double
        enum CodingKeys: String, CodingKey {
            case computeSeconds = "compute_s", ioSeconds = "io_s", overlappedSeconds = "overlapped_s", ratio
        }
    }

    struct Report: Codable {
        var layers: Int
        var bytesPerLayer: Int
        var gemmShape: String
        var blasThreads: Int
        var directIO: Bool
        var runs: [Run]
        var ratioMin: Double
        var ratioMedian: Double
        enum CodingKeys: String, CodingKey {
            case layers, bytesPerLayer = "bytes_per_layer", gemmShape = "gemm_shape", blasThreads = "blas_threads"
            case directIO = "direct_io"
            case runs, ratioMin = "ratio_min", ratioMedian = "ratio_median"
        }
    }

    /// One layer's compute: two linear layers of a 1B-class model on 512 tokens.
    final class Gemms: @unchecked Sendable {
        let m = 512, n: Int, k: Int
        let a: UnsafeMutablePointer<Float>, w: UnsafeMutablePointer<Float>, c: UnsafeMutablePointer<Float>
        init(n: Int, k: Int) {
            self.n = n; self.k = k
            a = .allocate(capacity: m * k); a.initialize(repeating: 0.5, count: m * k)
            w = .allocate(capacity: n * k); w.initialize(repeating: 0.25, count: n * k)
            c = .allocate(capacity: m * n); c.initialize(repeating: 0, count: m * n)
        }
        deinit { a.deallocate(); w.deallocate(); c.deallocate() }
        func layer() {
            sgemm(c, a, w, m: m, n: n, k: k)
            sgemm(c, a, w, m: m, n: n, k: k)
        }
    }

    func run() throws {
        let size = quick ? 1024 : 2048
        let gemms = Gemms(n: size, k: size)
        gemms.layer()  // warm up the BLAS threads

        var options = DiskStoreOptions()
        options.requestBytes = 4 << 20
        options.threadsPerDirection = 4
        let store = try DiskStore(roots: [folder], options: options)
        defer { store.close() }

        // Balance the two sides: as many bytes per layer as the disk store moves
        // (one read and one write, both directions at once) in one layer's compute,
        // found by timing the I/O loop itself at a probe size.
        let computePerLayer = seconds { for _ in 0..<3 { gemms.layer() } } / 3
        let probe = quick ? 8 << 20 : 32 << 20
        let probeLayers = 4
        let probeWeight = try AlignedBuffer(byteCount: probe)
        memset(probeWeight.baseAddress, 0x11, probe)
        for i in 0..<probeLayers { try store.write("w\(i)", from: probeWeight) }
        let probeOut = try (0..<3).map { _ in try AlignedBuffer(byteCount: probe) }
        _ = try loop(store, gemms, probeOut, layers: probeLayers, compute: false, io: true, trace: nil)
        let ioPerLayer = try loop(store, gemms, probeOut, layers: probeLayers, compute: false, io: true, trace: nil)
            / Double(probeLayers)
        let bytes = max(1 << 20, Int(Double(probe) * computePerLayer / ioPerLayer) / (1 << 20) * (1 << 20))

        let weight = try AlignedBuffer(byteCount: bytes)
        memset(weight.baseAddress, 0x22, bytes)
        for i in 0..<layers { try store.write("w\(i)", from: weight) }
        let activations = try (0..<3).map { i -> AlignedBuffer in
            let b = try AlignedBuffer(byteCount: bytes)
            memset(b.baseAddress, Int32(i), bytes)
            return b
        }

        if !json {
            print("overlap: \(layers) layers, 2 GEMMs (512x\(size)x\(size), \(openblas_get_num_threads()) BLAS threads) and \(formatBytes(bytes)) read + "
                  + "\(formatBytes(bytes)) written per layer, \(store.usesDirectIO ? "O_DIRECT" : "buffered") in \(folder)")
        }
        var runs: [Run] = []
        for r in 0..<repeats {
            let c = try loop(store, gemms, activations, layers: layers, compute: true, io: false, trace: nil)
            let io = try loop(store, gemms, activations, layers: layers, compute: false, io: true, trace: nil)
            let traced = r == repeats - 1 && tracePath != nil ? TraceRecorder() : nil
            let both = try loop(store, gemms, activations, layers: layers, compute: true, io: true, trace: traced)
            if let traced, let tracePath { try traced.write(to: tracePath, processName: "offload overlap-test") }
            let run = Run(computeSeconds: c, ioSeconds: io, overlappedSeconds: both, ratio: both / max(c, io))
            runs.append(run)
            if !json {
                print(String(format: "run %d: compute %.3f s, I/O %.3f s, overlapped %.3f s, ratio to max %.3f",
                             r + 1, c, io, both, run.ratio))
            }
        }
        let ratios = runs.map(\.ratio)
        let report = Report(layers: layers, bytesPerLayer: bytes, gemmShape: "512x\(size)x\(size)",
                            blasThreads: Int(openblas_get_num_threads()),
                            directIO: store.usesDirectIO, runs: runs,
                            ratioMin: ratios.min() ?? 0, ratioMedian: median(ratios))
        if json {
            let e = JSONEncoder()
            e.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try e.encode(report), as: UTF8.self))
        } else {
            print(String(format: "ratio min %.3f, median %.3f (target <= 1.10)", report.ratioMin, report.ratioMedian))
            if let tracePath { print("trace of the last overlapped run: \(tracePath)") }
        }
    }

    /// The layer loop: prefetch the next layer's weights, compute, write the
    /// activation out. Returns seconds.
    private func loop(_ store: DiskStore, _ gemms: Gemms, _ activations: [AlignedBuffer], layers: Int,
                      compute: Bool, io: Bool, trace: TraceRecorder?) throws -> Double {
        let memory = MemoryTier(.compute, trace: trace)
        store.trace = trace
        defer { store.trace = nil }
        let engine = TransferEngine(memory: memory, disk: store, stagingLimit: 8 * activations[0].byteCount, trace: trace)
        let outs = try activations.enumerated().map { i, b -> TierBuffer in
            let t = try memory.allocate("activation\(i)", bytes: b.byteCount)
            memcpy(t.baseAddress, b.baseAddress, b.byteCount)
            return t
        }
        var writes: [TransferHandle?] = Array(repeating: nil, count: outs.count)
        return try seconds {
            var next = io ? try engine.read("w0") : nil
            for i in 0..<layers {
                var current: TransferHandle?
                if io {
                    try next!.wait()
                    current = next
                    next = i + 1 < layers ? try engine.read("w\(i + 1)") : nil
                }
                if compute {
                    if let trace { trace.measure("layer \(i)", stream: "compute") { gemms.layer() } } else { gemms.layer() }
                }
                if io {
                    current!.buffer.free()
                    let slot = i % outs.count
                    try writes[slot]?.wait()
                    writes[slot] = try engine.write("a\(i)", from: outs[slot])
                }
            }
            try engine.waitAll()
        }
    }
}

