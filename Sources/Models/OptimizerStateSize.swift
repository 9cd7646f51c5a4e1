// Bytes of optimizer state a parameter tensor needs, by method: what Planning counts for a
// schedule and what Runtime's optimizers allocate (a test holds the two to the same numbers).

/// How much state an optimizer keeps per parameter tensor.
public enum OptimizerStateSize: String, Codable, Sendable, CaseIterable {
    /// AdamW: m and v in fp32, 8 bytes per weight.
    case adamw
    /// 8-bit AdamW: a byte per weight for m and for v, and an fp32 scale per block of 256 weights for
    /// each; tensors under 4096 weights or not whole blocks keep fp32 m and v.
    case adamw8bit
    /// SGD with momentum: one fp32 buffer.
    case momentum
    /// Plain SGD and zeroth-order SGD: nothing.
    case none

    public static let blockSize = 256

    /// Whether 8-bit AdamW keeps a tensor of `count` weights in 8 bits (bitsandbytes' and torchao's rule).
    public static func quantizes8bit(count: Int) -> Bool { count >= 4096 && count % blockSize == 0 }

    /// The optimizer's state for `optimizer` as `offload train --optimizer` names it (with SGD's momentum).
    public init(optimizer: String, momentum: Float = 0.9) {
        switch optimizer {
        case "adamw8bit": self = .adamw8bit
        case "sgd": self = momentum != 0 ? .momentum : .none
        case "zo-sgd": self = .none
        default: self = .adamw
        }
    }

    /// State bytes of one tensor of `count` weights.
    public func bytes(count: Int) -> Int {
        switch self {
        case .adamw: return 8 * count
        case .adamw8bit:
            return Self.quantizes8bit(count: count) ? 2 * count + 2 * 4 * (count / Self.blockSize) : 8 * count
        case .momentum: return 4 * count
        case .none: return 0
        }
    }

    /// State bytes of every parameter of a model of shape `config`.
    public func bytes(config: LlamaConfig) -> Int {
        ParameterLayout(config: config).entries.reduce(0) { $0 + bytes(count: $1.elements) }
    }
}

/// Where a parameter's weights lie in the order the reference implementation (Hugging Face) lays them out, when
/// that differs from how Offload stores them: attn_q/attn_k read from a GGUF keep llama.cpp's rows, in which each
/// head's two rotary halves are interleaved. Elementwise updates do not care; 8-bit AdamW's blocks of 256 do.
public struct ReferenceOrder: Sendable, Equatable {
    public var headDim: Int
    public var columns: Int
    public init(headDim: Int, columns: Int) { self.headDim = headDim; self.columns = columns }

    /// The stored index of the weight at `index` in the reference order.
    @inline(__always) public func stored(_ index: Int) -> Int {
        let row = index / columns
        return RopeRowOrder.adjacentPairsRow(ofHalfSplitRow: row, headDim: headDim) * columns + (index - row * columns)
    }
}
