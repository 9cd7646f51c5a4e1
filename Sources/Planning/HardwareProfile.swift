// The speeds the cost model turns FLOPs and bytes into seconds with. Not a
// measurement tool: `offload profile` measures and writes this same JSON.
import Foundation
import Memory
import Tensors

/// Speeds of one machine, in the units the cost model uses (FLOP/s, bytes/s).
///
/// JSON field names (`offload profile`'s snake_case names are accepted too):
/// `gemmFlops` (fp32 GEMM FLOP/s), `memoryBandwidth` (bytes/s a memory-bound kernel
/// streams), `diskReadBandwidth` / `diskWriteBandwidth` (bytes/s of direct I/O),
/// `hostLinkBandwidth` (bytes/s between host and compute memory; memcpy on a
/// CPU-only machine), optional `name`, optional `accelerator` (true when compute memory
/// is an accelerator's and host memory is separate; missing: false, a CPU-only machine),
/// optional `diskDuplexBandwidth` (bytes/s of both directions together while the disk reads
/// and writes at once; missing: the directions do not slow each other) and optional
/// `ioComputeSecondsPerByte` (compute seconds direct I/O takes from the cores per byte moved
/// on a CPU-only machine; missing: 0).
public struct HardwareProfile: Codable, Sendable, Equatable {
    public var name: String
    /// Compute runs on an accelerator with its own memory. False (the default, and what a
    /// profile without the key means) is a CPU-only machine: host memory *is* compute
    /// memory, so the planner has one RAM budget, no host↔compute copies and no separate
    /// host stream.
    public var accelerator: Bool
    public var gemmFlops: Double
    public var memoryBandwidth: Double
    public var diskReadBandwidth: Double
    public var diskWriteBandwidth: Double
    public var hostLinkBandwidth: Double
    /// Bytes per second of reads and writes together when the disk does both at once; nil: each
    /// direction keeps its own rate.
    public var diskDuplexBandwidth: Double?
    /// Seconds of compute lost per byte of direct I/O beside it (CPU-only machines: the I/O's
    /// system calls, page pinning and interrupts run on the cores that compute).
    public var ioComputeSecondsPerByte: Double
    /// Direct-I/O rates `offload profile` measured per request size and queue depth (its "disk"
    /// list); nil: only the single rates above.
    public var diskRates: [DiskRate]?
    /// Rates of the trainer's own kernels, measured by `offload profile` on a training step; nil:
    /// training time is modelled from `gemmFlops` and `memoryBandwidth` alone.
    public var training: TrainingKernelRates?
    /// Data-parallel ranks' collectives, measured by `mpirun -np N offload profile --collectives`; nil:
    /// communication is not predicted.
    public var collectives: CollectiveRates?

    /// What the ranks of one job reach exchanging gradients and weights as training does (an all-to-all,
    /// rank-order sums, an all-gather): bytes a rank hands to the others per second, and the fixed cost of
    /// one collective.
    public struct CollectiveRates: Codable, Sendable, Equatable {
        public var ranks: Int
        public var bytesPerSecond: Double
        public var latencySeconds: Double
        enum CodingKeys: String, CodingKey {
            case ranks, bytesPerSecond = "bytes_per_second", latencySeconds = "latency_seconds"
        }
        public init(ranks: Int, bytesPerSecond: Double, latencySeconds: Double) {
            self.ranks = ranks; self.bytesPerSecond = bytesPerSecond; self.latencySeconds = latencySeconds
        }
        /// Seconds for `collectives` collectives that hand `bytes` to the other ranks.
        public func seconds(bytes: Double, collectives: Int) -> Double {
            bytes / bytesPerSecond + Double(collectives) * latencySeconds
        }
    }

    /// How fast this machine runs the training step's kernels, each in the units the cost model counts
    /// them in (`ModelChain.llama`): so the model's time for a stage is the work it counts over these
    /// rates, whatever the kernels' overheads beyond peak GEMM and memory bandwidth.
    public struct TrainingKernelRates: Codable, Sendable, Equatable {
        /// Matrix products of the forward (blocks and head), FLOP/s.
        public var matmulFlops: Double
        /// Matrix products of the backward (both products of each), FLOP/s.
        public var matmulBackwardFlops: Double
        /// Causal attention, counted as `ModelChain.causalAttentionFLOPs` forward and twice that backward.
        public var attentionFlops: Double
        public var attentionBackwardFlops: Double
        /// Norms, RoPE and SwiGLU, forward and backward, per byte of the model's elementwise count.
        public var elementwiseBytesPerSecond: Double
        /// Cross-entropy over the vocabulary (each pass), logits per second.
        public var crossEntropyLogitsPerSecond: Double
        /// AdamW, parameters per second.
        public var adamwParametersPerSecond: Double
        enum CodingKeys: String, CodingKey {
            case matmulFlops = "matmul_flops_per_second", matmulBackwardFlops = "matmul_backward_flops_per_second"
            case attentionFlops = "attention_flops_per_second", attentionBackwardFlops = "attention_backward_flops_per_second"
            case elementwiseBytesPerSecond = "elementwise_bytes_per_second"
            case crossEntropyLogitsPerSecond = "cross_entropy_logits_per_second"
            case adamwParametersPerSecond = "adamw_parameters_per_second"
        }
        public init(matmulFlops: Double, matmulBackwardFlops: Double, attentionFlops: Double, attentionBackwardFlops: Double,
                    elementwiseBytesPerSecond: Double, crossEntropyLogitsPerSecond: Double, adamwParametersPerSecond: Double) {
            self.matmulFlops = matmulFlops; self.matmulBackwardFlops = matmulBackwardFlops
            self.attentionFlops = attentionFlops; self.attentionBackwardFlops = attentionBackwardFlops
            self.elementwiseBytesPerSecond = elementwiseBytesPerSecond
            self.crossEntropyLogitsPerSecond = crossEntropyLogitsPerSecond; self.adamwParametersPerSecond = adamwParametersPerSecond
        }
        var isValid: Bool {
            [matmulFlops, matmulBackwardFlops, attentionFlops, attentionBackwardFlops, elementwiseBytesPerSecond,
             crossEntropyLogitsPerSecond, adamwParametersPerSecond].allSatisfy { $0 > 0 && $0.isFinite }
        }
    }

    /// One measured direct-I/O rate.
    public struct DiskRate: Codable, Sendable, Equatable {
        public var requestBytes: Int
        public var queueDepth: Int
        public var readBytesPerSecond: Double
        public var writeBytesPerSecond: Double
        enum CodingKeys: String, CodingKey {
            case requestBytes = "request_bytes", queueDepth = "queue_depth"
            case readBytesPerSecond = "read_bytes_per_second", writeBytesPerSecond = "write_bytes_per_second"
        }
        public init(requestBytes: Int, queueDepth: Int, readBytesPerSecond: Double, writeBytesPerSecond: Double) {
            self.requestBytes = requestBytes; self.queueDepth = queueDepth
            self.readBytesPerSecond = readBytesPerSecond; self.writeBytesPerSecond = writeBytesPerSecond
        }
    }

    /// Bytes per second of direct reads of `requestBytes` each, `queueDepth` at a time: from the
    /// measured rates at the nearest queue depth, interpolated in the logarithm of the request size
    /// (clamped to the sizes measured); `diskReadBandwidth` when none were measured.
    public func diskReadBandwidth(requestBytes: Int, queueDepth: Int) -> Double {
        guard let rates = diskRates, !rates.isEmpty, requestBytes > 0 else { return diskReadBandwidth }
        let depth = rates.map(\.queueDepth).min { abs($0 - queueDepth) < abs($1 - queueDepth) }!
        let line = rates.filter { $0.queueDepth == depth }.sorted { $0.requestBytes < $1.requestBytes }
        let x = log(Double(requestBytes))
        guard let upper = line.firstIndex(where: { $0.requestBytes >= requestBytes }) else { return line.last!.readBytesPerSecond }
        if upper == 0 { return line[0].readBytesPerSecond }
        let a = line[upper - 1], b = line[upper]
        let t = (x - log(Double(a.requestBytes))) / (log(Double(b.requestBytes)) - log(Double(a.requestBytes)))
        return a.readBytesPerSecond + t * (b.readBytesPerSecond - a.readBytesPerSecond)
    }

    public init(name: String = "custom", gemmFlops: Double, memoryBandwidth: Double,
                diskReadBandwidth: Double, diskWriteBandwidth: Double, hostLinkBandwidth: Double,
                accelerator: Bool = false, diskDuplexBandwidth: Double? = nil, ioComputeSecondsPerByte: Double = 0) {
        self.name = name; self.accelerator = accelerator; self.gemmFlops = gemmFlops; self.memoryBandwidth = memoryBandwidth
        self.diskReadBandwidth = diskReadBandwidth; self.diskWriteBandwidth = diskWriteBandwidth
        self.hostLinkBandwidth = hostLinkBandwidth
        self.diskDuplexBandwidth = diskDuplexBandwidth; self.ioComputeSecondsPerByte = ioComputeSecondsPerByte
    }

    /// Compute seconds a byte of disk I/O takes from the cores that compute: on a CPU-only machine
    /// `ioComputeSecondsPerByte`; with an accelerator the host's cores do the I/O, 0.
    public var ioSecondsOnCompute: Double { hostIsCompute ? ioComputeSecondsPerByte : 0 }

    /// What each direction's rate is multiplied by while the disk reads and writes at once: both
    /// together move `diskDuplexBandwidth`, shared in proportion to their rates alone.
    public var duplexFactor: Double {
        guard let d = diskDuplexBandwidth else { return 1 }
        return min(1, d / (diskReadBandwidth + diskWriteBandwidth))
    }

    /// Weight bytes per second a decode step (one row through every matrix) reads from memory: the
    /// quantized kernels stream the weights once, at the memory bandwidth.
    public var decodeBytesPerSecond: Double { memoryBandwidth }

    /// Host memory and compute memory are the same RAM (no accelerator).
    public var hostIsCompute: Bool { !accelerator }

    enum CodingKeys: String, CodingKey {
        case name, gemmFlops, memoryBandwidth, diskReadBandwidth, diskWriteBandwidth, hostLinkBandwidth, accelerator
        case diskDuplexBandwidth, ioComputeSecondsPerByte, diskRates, training, collectives
    }

    /// Profiles written before `accelerator` existed decode as CPU-only.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name),
                  gemmFlops: try c.decode(Double.self, forKey: .gemmFlops),
                  memoryBandwidth: try c.decode(Double.self, forKey: .memoryBandwidth),
                  diskReadBandwidth: try c.decode(Double.self, forKey: .diskReadBandwidth),
                  diskWriteBandwidth: try c.decode(Double.self, forKey: .diskWriteBandwidth),
                  hostLinkBandwidth: try c.decode(Double.self, forKey: .hostLinkBandwidth),
                  accelerator: try c.decodeIfPresent(Bool.self, forKey: .accelerator) ?? false,
                  diskDuplexBandwidth: try c.decodeIfPresent(Double.self, forKey: .diskDuplexBandwidth),
                  ioComputeSecondsPerByte: try c.decodeIfPresent(Double.self, forKey: .ioComputeSecondsPerByte) ?? 0)
        diskRates = try c.decodeIfPresent([DiskRate].self, forKey: .diskRates)
        training = try c.decodeIfPresent(TrainingKernelRates.self, forKey: .training)
        collectives = try c.decodeIfPresent(CollectiveRates.self, forKey: .collectives)
    }

    /// Measured on the 2-core x86-64 build machine: OpenBLAS sgemm with 2 threads
    /// ≈ 180 GFLOP/s, memcpy ≈ 10 GB/s, O_DIRECT ≈ 0.84 GB/s read / 0.77 GB/s write (the disk
    /// store's transfers, under load). Its direct I/O by request size and queue depth, which streamed
    /// generation's reads are costed by: the median of three `offload profile --disk-only` runs on a
    /// quiet machine (2026-12-03), made non-decreasing in the queue depth and the request size (their
    /// noise, ±15%, otherwise ranks configurations at random). 128 KiB requests one at a time move a
    /// third less than 1 MiB ones.
    public static let defaultCPU: HardwareProfile = {
        var p = HardwareProfile(name: "default-cpu-2core", gemmFlops: 180e9, memoryBandwidth: 10e9,
                                diskReadBandwidth: 0.84e9, diskWriteBandwidth: 0.77e9, hostLinkBandwidth: 10e9)
        p.diskRates = [(128, 1, 1.15, 1.76), (128, 4, 1.29, 1.93), (128, 8, 1.38, 2.16),
                       (256, 1, 1.44, 2.19), (256, 4, 1.60, 2.58), (256, 8, 1.60, 2.58),
                       (512, 1, 1.48, 2.19), (512, 4, 1.60, 2.64), (512, 8, 1.67, 2.67),
                       (1024, 1, 1.69, 2.61), (1024, 4, 1.69, 2.88), (1024, 8, 1.69, 2.88)].map {
            DiskRate(requestBytes: $0.0 << 10, queueDepth: $0.1, readBytesPerSecond: $0.2 * 1e9, writeBytesPerSecond: $0.3 * 1e9)
        }
        return p
    }()

    /// Reads a profile from JSON; `name` may be missing.
    public static func load(path: String) throws -> HardwareProfile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw OffloadError("[hardware] cannot read \(path)")
        }
        // Either this type's own keys or the ones `offload profile` writes.
        struct Loose: Decodable {
            var name: String?; var gemmFlops: Double?; var memoryBandwidth: Double?
            var diskReadBandwidth: Double?; var diskWriteBandwidth: Double?; var hostLinkBandwidth: Double?
            var machine: String?; var gemm_flops: Double?; var memcpy_bytes_per_second: Double?
            var disk_read_bytes_per_second: Double?; var disk_write_bytes_per_second: Double?
            var host_compute_bytes_per_second: Double?
            var accelerator: Bool?
            var diskDuplexBandwidth: Double?; var disk_duplex_bytes_per_second: Double?
            var ioComputeSecondsPerByte: Double?; var io_compute_seconds_per_byte: Double?
            var disk: [DiskRate]?; var diskRates: [DiskRate]?
            var training: TrainingKernelRates?; var training_kernels: TrainingKernelRates?
            var collectives: CollectiveRates?
        }
        let loose: Loose
        do { loose = try JSONDecoder().decode(Loose.self, from: data) } catch {
            throw OffloadError("[hardware] \(path): not a hardware profile JSON object (\(error))")
        }
        func need(_ v: Double?, _ field: String) throws -> Double {
            guard let v else { throw OffloadError("[hardware] \(path): missing field '\(field)'") }
            guard v > 0, v.isFinite else { throw OffloadError("[hardware] \(path): field '\(field)' must be positive, found \(v)") }
            return v
        }
        let l = loose
        var profile = HardwareProfile(name: l.name ?? l.machine ?? path,
                               gemmFlops: try need(l.gemmFlops ?? l.gemm_flops, "gemmFlops"),
                               memoryBandwidth: try need(l.memoryBandwidth ?? l.memcpy_bytes_per_second, "memoryBandwidth"),
                               diskReadBandwidth: try need(l.diskReadBandwidth ?? l.disk_read_bytes_per_second,
                                                           "diskReadBandwidth"),
                               diskWriteBandwidth: try need(l.diskWriteBandwidth ?? l.disk_write_bytes_per_second,
                                                            "diskWriteBandwidth"),
                               hostLinkBandwidth: try need(l.hostLinkBandwidth ?? l.host_compute_bytes_per_second,
                                                           "hostLinkBandwidth"),
                               accelerator: l.accelerator ?? false,
                               diskDuplexBandwidth: try (l.diskDuplexBandwidth ?? l.disk_duplex_bytes_per_second)
                                   .map { try need($0, "diskDuplexBandwidth") },
                               ioComputeSecondsPerByte: try (l.ioComputeSecondsPerByte ?? l.io_compute_seconds_per_byte)
                                   .map { v -> Double in
                                       guard v >= 0, v.isFinite else {
                                           throw OffloadError("[hardware] \(path): field 'ioComputeSecondsPerByte' must be 0 or more, found \(v)")
                                       }
                                       return v
                                   } ?? 0)
        if let t = l.training ?? l.training_kernels {
            guard t.isValid else { throw OffloadError("[hardware] \(path): every training kernel rate must be positive") }
            profile.training = t
        }
        if let c = l.collectives {
            guard c.ranks > 1, c.bytesPerSecond > 0, c.bytesPerSecond.isFinite, c.latencySeconds >= 0 else {
                throw OffloadError("[hardware] \(path): 'collectives' needs ranks > 1, a positive bytes_per_second and latency_seconds ≥ 0")
            }
            profile.collectives = c
        }
        profile.diskRates = (l.diskRates ?? l.disk)?.filter {
            $0.requestBytes > 0 && $0.queueDepth > 0 && $0.readBytesPerSecond > 0 && $0.readBytesPerSecond.isFinite
        }
        return profile
    }

    /// Bytes per second moving from one tier to another. Host ↔ compute on a CPU-only
    /// machine is no copy at all: infinite.
    public func bandwidth(from: Tier, to: Tier) -> Double {
        switch (from, to) {
        case (.disk, _): return diskReadBandwidth
        case (_, .disk): return diskWriteBandwidth
        default: return hostIsCompute ? .infinity : hostLinkBandwidth
        }
    }
}
