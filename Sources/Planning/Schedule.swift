// The schedule IR: what runs where and when, in an order an executor can follow
// op by op. It says nothing about how a kernel works; only which logical tensors
// an op reads, creates, moves or frees, on which stream, after which ops.
import Foundation
import Memory
import Tensors

/// A queue of operations that run one after another; different streams overlap.
public enum Stream: String, Codable, Sendable, CaseIterable {
    /// Kernels on the compute device (forward, recompute, backward, optimizer in compute memory).
    case compute
    /// Transfers into compute memory (prefetch) and disk → host reads.
    case read
    /// Transfers out of compute memory (offload) and host → disk writes.
    case write
    /// The host CPU's own work: the optimizer step of ZeRO-Offload.
    case host
}

/// What a forward keeps for its backward.
public enum SaveMode: String, Codable, Sendable {
    /// Every activation the backward needs (and the input).
    case all
    /// Only the input, as a checkpoint to recompute from.
    case input
    /// Nothing: the input is freed once the output exists.
    case none
}

public enum OperationKind: String, Codable, Sendable {
    case forward, recompute, backward, optimizerStep, prefetch, offload, free
}

/// What a compute op runs when it is finer than a chain stage (the streamed step works on
/// half-blocks, vocabulary chunks and parts of a unit's optimizer state). The executor
/// dispatches on it; the buffers it works on are the op's `reads` and `creates`.
public enum StepAction: Codable, Sendable, Equatable {
    /// Only allocates its `creates` and frees its `frees`.
    case memory
    case embeddingForward(chunk: Int)
    case attentionForward(layer: Int)
    case ffnForward(layer: Int)
    /// The head's final norm.
    case headNorm
    /// Pass 1 of a head chunk; after the last one, the loss.
    case headForward(chunk: Int)
    /// Pass 2 of a head chunk.
    case headBackward(chunk: Int)
    /// The final norm's backward, once every chunk's pass 2 is done.
    case headNormBackward
    /// A block's forward again, from its input, for its backward.
    case recompute(layer: Int)
    case ffnBackward(layer: Int)
    case attentionBackward(layer: Int)
    case embeddingBackward(chunk: Int)
    /// AdamW on part `part` of a parameter unit, with its gradient in buffer `gradient`.
    case update(unit: String, part: Int, gradient: String)
}

/// A named tensor the schedule talks about: `act.7.attn_in`, `w.7.ffn_up`,
/// `grad.7.ffn_up`, `adam.m.7.ffn_up`, `kv.7`.
public struct LogicalTensor: Codable, Sendable, Equatable {
    public var name: String
    public var bytes: Int
    public init(name: String, bytes: Int) { self.name = name; self.bytes = bytes }
}

/// One step of a schedule.
///
/// Memory semantics (what the simulator and the executor both follow):
/// `creates` are allocated in `tier` when the op starts; `tempBytes` are allocated
/// in the compute tier at start and released at the end; `frees` are released in
/// `tier` when the op ends. A `prefetch`/`offload` creates its tensors in `to`
/// (the copy in `from` stays until a `free` names it). `reads` must be resident
/// in `tier` (for transfers: in `from`) when the op starts.
public struct Operation: Codable, Sendable, Equatable {
    public var id: Int
    public var kind: OperationKind
    public var stream: Stream
    /// Chain stage index (forward, recompute, backward, optimizer step), if any.
    public var stage: Int?
    /// For forward and recompute.
    public var save: SaveMode?
    /// Tier the op computes in or frees from; for transfers the destination.
    public var tier: Tier
    /// For transfers: the source tier.
    public var from: Tier?
    public var reads: [String]
    public var creates: [String]
    public var frees: [String]
    public var tempBytes: Int
    /// Predicted seconds, from the cost model.
    public var seconds: Double
    /// Ops that must end before this one starts (besides the previous op on its stream).
    public var deps: [Int]
    /// For compute ops finer than a stage: what the op runs.
    public var action: StepAction?

    public init(id: Int, kind: OperationKind, stream: Stream, stage: Int? = nil, save: SaveMode? = nil,
                tier: Tier = .compute, from: Tier? = nil, reads: [String] = [], creates: [String] = [],
                frees: [String] = [], tempBytes: Int = 0, seconds: Double = 0, deps: [Int] = [],
                action: StepAction? = nil) {
        self.id = id; self.kind = kind; self.stream = stream; self.stage = stage; self.save = save
        self.tier = tier; self.from = from; self.reads = reads; self.creates = creates; self.frees = frees
        self.tempBytes = tempBytes; self.seconds = seconds; self.deps = deps; self.action = action
    }
}

/// Where a tensor is when the step starts (and must be again when it ends).
public struct Placement: Codable, Sendable, Equatable {
    public var tensor: String
    public var tier: Tier
    public init(tensor: String, tier: Tier) { self.tensor = tensor; self.tier = tier }
}

/// One training step (or one generation step) as a list of operations.
public struct Schedule: Codable, Sendable, Equatable {
    public var strategy: String
    public var model: String
    public var mode: String
    public var stageNames: [String]
    public var tensors: [LogicalTensor]
    public var initial: [Placement]
    public var operations: [Operation]

    public init(strategy: String, model: String, mode: String, stageNames: [String],
                tensors: [LogicalTensor], initial: [Placement], operations: [Operation]) {
        self.strategy = strategy; self.model = model; self.mode = mode; self.stageNames = stageNames
        self.tensors = tensors; self.initial = initial; self.operations = operations
    }

    public func jsonData(pretty: Bool = true) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys] : [.sortedKeys]
        return try encoder.encode(self)
    }

    public static func load(json data: Data) throws -> Schedule {
        do { return try JSONDecoder().decode(Schedule.self, from: data) } catch {
            throw OffloadError("[schedule] not a schedule JSON: \(error)")
        }
    }

    public var tensorBytes: [String: Int] {
        Dictionary(tensors.map { ($0.name, $0.bytes) }, uniquingKeysWith: { a, _ in a })
    }
}

extension Operation: CustomStringConvertible {
    /// One line: `#12 compute  backward 7 (reads act.7.attn_in, ...) after #9`.
    public var description: String {
        var s = "#\(id) \(stream.rawValue.padding(toLength: 7, withPad: " ", startingAt: 0)) "
        switch kind {
        case .forward, .recompute:
            s += "\(kind.rawValue) \(stage.map(String.init) ?? "?") save=\(save?.rawValue ?? "?")"
        case .backward: s += "backward \(stage.map(String.init) ?? "?")"
        case .optimizerStep: s += "optimizerStep \(stage.map(String.init) ?? "?") in \(tier.rawValue)"
        case .prefetch, .offload:
            s += "\(kind.rawValue) \(from?.rawValue ?? "?")→\(tier.rawValue) \(creates.joined(separator: ","))"
        case .free: s += "free \(tier.rawValue) \(frees.joined(separator: ","))"
        }
        if kind != .free && !frees.isEmpty { s += " frees \(frees.joined(separator: ","))" }
        if seconds > 0 { s += String(format: " %.3f ms", seconds * 1e3) }
        if !deps.isEmpty { s += " after " + deps.map { "#\($0)" }.joined(separator: ",") }
        return s
    }
}

extension Schedule: CustomStringConvertible {
    public var description: String {
        var lines = ["schedule \(strategy) for \(model) (\(mode)): \(operations.count) ops, \(tensors.count) tensors"]
        lines += operations.map(\.description)
        return lines.joined(separator: "\n")
    }
}
