// Mixture-of-experts feed-forward blocks (Mixtral, Qwen2-MoE, OLMoE): the shape, where each
// expert's matrices are in a file (three layouts), and the router's choice.

import Foundation
import Kernels
import Tensors

/// The mixture-of-experts part of a model's shape. Every block routes each token to `used` of
/// `experts` SwiGLU experts: softmax over all experts' router logits, the `used` largest chosen
/// (ties: the lower expert index first), their probabilities renormalized to sum to 1 when
/// `normalizeTopK`; the block's output is the weighted sum of the chosen experts' outputs, plus
/// a shared expert scaled by sigmoid(shared gate · x) when there is one (Qwen2-MoE).
public struct MoEConfig: Sendable, Equatable, Codable {
    public var experts: Int
    public var used: Int
    public var normalizeTopK: Bool
    /// The shared expert's feed-forward size (nil: none).
    public var sharedFFNDim: Int?
    public init(experts: Int, used: Int, normalizeTopK: Bool, sharedFFNDim: Int? = nil) {
        self.experts = experts; self.used = used; self.normalizeTopK = normalizeTopK; self.sharedFFNDim = sharedFFNDim
    }
}

extension LlamaConfig {
    public var isMoE: Bool { moe != nil }

    /// Refuses a mixture-of-experts model for a path that runs only dense blocks today.
    public func requireDense(for what: String) throws {
        guard let m = moe else { return }
        throw OffloadError("[model] \(name) is a mixture-of-experts model (\(m.experts) experts, \(m.used) per token); "
                           + "\(what) is not supported for it yet (it runs in memory with `generate`, `chat`, `serve` "
                           + "and `eval`, and `generate --budget` keeps only some experts in memory)")
    }

    /// Parameters one token reads: everything but the experts it is not routed to.
    public var activeParameterCount: Int {
        guard let m = moe else { return parameterCount }
        let perExpert = 3 * ffnDim * dim
        return parameterCount - layers * (m.experts - m.used) * perExpert
    }
}

/// Whether a tensor name is an expert's (`blk.L.ffn_*_exps.weight` or, one per expert, `blk.L.ffn_*.E.weight`):
/// the bytes expert offloading keeps out of memory.
public func isExpertTensorName(_ name: String) -> Bool {
    let parts = name.split(separator: ".")
    return parts.count == 5 || (parts.count == 4 && parts[2].hasSuffix("_exps"))
}

/// One expert's three matrices.
public struct ExpertMatrices {
    public var gate, up, down: WeightMatrix
    public init(gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix) { self.gate = gate; self.up = up; self.down = down }
}

/// Block `l`'s router and experts, as views into `source`'s tensors, from whichever layout the
/// file has: merged (`ffn_gate_exps` [E, ff, dim], llama.cpp's converters today), fused gate and
/// up (`ffn_gate_up_exps` [E, 2·ff, dim], gate rows first), or one tensor per expert
/// (`ffn_gate.E.weight`, older Mixtral GGUFs and every Hugging Face checkpoint).
public struct MoEBlockWeights {
    public var router: WeightMatrix
    public var experts: [ExpertMatrices]
    public var shared: (gate: WeightMatrix, up: WeightMatrix, down: WeightMatrix, gateInput: [Float])?

    public init(_ source: WeightSource, layer l: Int) throws {
        let c = source.config, p = "blk.\(l).", m = c.moe!
        func matrix(_ t: StoredTensor) throws -> WeightMatrix {
            guard t.shape.count == 2 else {
                throw OffloadError("[model] \(source.sourceName): \(t.name) has shape \(t.shape), expected a matrix")
            }
            return WeightMatrix(data: t.bytes.baseAddress!, dtype: t.dtype, rows: t.shape[0], cols: t.shape[1])
        }
        router = try matrix(try source.tensor(p + "ffn_gate_inp.weight"))
        let layout = try MoELayout(source, layer: l)
        experts = try (0..<m.experts).map { e in
            func slice(_ name: String, rows: Int, cols: Int, first: Int = 0) throws -> WeightMatrix {
                let t = try source.tensor(name)
                let full = WeightMatrix(data: t.bytes.baseAddress!, dtype: t.dtype, rows: t.shape[1], cols: cols)
                let base = t.bytes.baseAddress! + e * t.shape[1] * full.rowBytes
                return WeightMatrix(data: base + first * full.rowBytes, dtype: t.dtype, rows: rows, cols: cols)
            }
            switch layout {
            case .merged:
                return ExpertMatrices(gate: try slice(p + "ffn_gate_exps.weight", rows: c.ffnDim, cols: c.dim),
                                      up: try slice(p + "ffn_up_exps.weight", rows: c.ffnDim, cols: c.dim),
                                      down: try slice(p + "ffn_down_exps.weight", rows: c.dim, cols: c.ffnDim))
            case .fusedGateUp:
                return ExpertMatrices(gate: try slice(p + "ffn_gate_up_exps.weight", rows: c.ffnDim, cols: c.dim),
                                      up: try slice(p + "ffn_gate_up_exps.weight", rows: c.ffnDim, cols: c.dim, first: c.ffnDim),
                                      down: try slice(p + "ffn_down_exps.weight", rows: c.dim, cols: c.ffnDim))
            case .perExpert:
                return ExpertMatrices(gate: try matrix(try source.tensor(p + "ffn_gate.\(e).weight")),
                                      up: try matrix(try source.tensor(p + "ffn_up.\(e).weight")),
                                      down: try matrix(try source.tensor(p + "ffn_down.\(e).weight")))
            }
        }
        if m.sharedFFNDim != nil {
            shared = (try matrix(try source.tensor(p + "ffn_gate_shexp.weight")),
                      try matrix(try source.tensor(p + "ffn_up_shexp.weight")),
                      try matrix(try source.tensor(p + "ffn_down_shexp.weight")),
                      try source.vector(p + "ffn_gate_inp_shexp.weight"))
        }
    }
}

/// How a file stores a block's experts.
enum MoELayout {
    case merged, fusedGateUp, perExpert

    init(_ source: WeightSource, layer l: Int) throws {
        let p = "blk.\(l)."
        func has(_ name: String) -> Bool { (try? source.tensor(name)) != nil }
        if has(p + "ffn_gate_up_exps.weight") { self = .fusedGateUp }
        else if has(p + "ffn_gate_exps.weight") || has(p + "ffn_up_exps.weight") || has(p + "ffn_down_exps.weight") {
            self = .merged
        } else if has(p + "ffn_gate.0.weight") { self = .perExpert }
        else {
            throw OffloadError("[model] \(source.sourceName): block \(l) has no experts: expected tensor "
                               + "\(p)ffn_gate_exps.weight (or \(p)ffn_gate_up_exps.weight, or per expert \(p)ffn_gate.0.weight)")
        }
    }

    /// The (name, shape) this layout needs for block `l`, in place of the merged specs.
    static func specs(_ c: LlamaConfig, layer l: Int, layout: MoELayout) -> [ParameterSpec] {
        let p = "blk.\(l).", e = c.moe!.experts
        switch layout {
        case .merged:
            return [ParameterSpec(name: p + "ffn_gate_exps.weight", shape: [e, c.ffnDim, c.dim]),
                    ParameterSpec(name: p + "ffn_up_exps.weight", shape: [e, c.ffnDim, c.dim]),
                    ParameterSpec(name: p + "ffn_down_exps.weight", shape: [e, c.dim, c.ffnDim])]
        case .fusedGateUp:
            return [ParameterSpec(name: p + "ffn_gate_up_exps.weight", shape: [e, 2 * c.ffnDim, c.dim]),
                    ParameterSpec(name: p + "ffn_down_exps.weight", shape: [e, c.dim, c.ffnDim])]
        case .perExpert:
            return (0..<e).flatMap { i in
                [ParameterSpec(name: p + "ffn_gate.\(i).weight", shape: [c.ffnDim, c.dim]),
                 ParameterSpec(name: p + "ffn_up.\(i).weight", shape: [c.ffnDim, c.dim]),
                 ParameterSpec(name: p + "ffn_down.\(i).weight", shape: [c.dim, c.ffnDim])]
            }
        }
    }
}

/// The router's choice for one token: the `k` experts with the largest softmax probabilities
/// (ties: the lower index first), in ascending expert order, with their weights. `logits` holds
/// the router's E logits; softmax in fp32 with the maximum subtracted (as torch computes it).
public func routeTopK(_ logits: UnsafePointer<Float>, experts: Int, k: Int, normalize: Bool,
                      into chosen: inout [(expert: Int, weight: Float)]) {
    var mx = -Float.infinity
    for e in 0..<experts { mx = max(mx, logits[e]) }
    var probs = [Float](repeating: 0, count: experts), sum: Float = 0
    for e in 0..<experts { probs[e] = Foundation.exp(logits[e] - mx); sum += probs[e] }
    for e in 0..<experts { probs[e] /= sum }
    // Selection by rank: a stable order (probability descending, index ascending).
    let order = (0..<experts).sorted { probs[$0] > probs[$1] || (probs[$0] == probs[$1] && $0 < $1) }
    let top = order.prefix(k).sorted()
    var total: Float = 0
    for e in order.prefix(k) { total += probs[e] }
    chosen.removeAll(keepingCapacity: true)
    for e in top { chosen.append((e, normalize ? probs[e] / total : probs[e])) }
}
