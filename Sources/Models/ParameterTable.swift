// The one table of (name, shape) that describes a model's parameters. Names are
// GGUF's (token_embd.weight, blk.3.attn_q.weight, ...). Shapes are [rows, cols]
// row-major with rows = outputs, cols = inputs (GGUF's ne0 is cols).
// Parameters are grouped by stage (embedding, each block, head) so a planner can
// move one stage's parameters as a whole.

public struct ParameterSpec: Sendable, Equatable {
    public var name: String
    public var shape: [Int]
    public var elements: Int { shape.reduce(1, *) }
}

public enum ParameterStage: Sendable, Equatable, Hashable {
    case embedding
    case block(Int)
    case head
}

extension LlamaConfig {
    /// Parameters of block `i`, in a fixed order.
    /// A mixture-of-experts block lists its router and its experts in llama.cpp's merged layout
    /// (`ffn_gate_exps` [experts, ffn, dim]; files in other layouts are checked against theirs).
    public func blockParameters(_ i: Int) -> [ParameterSpec] {
        let p = "blk.\(i)."
        let ffn: [ParameterSpec]
        if let m = moe {
            ffn = [ParameterSpec(name: p + "ffn_gate_inp.weight", shape: [m.experts, dim])]
                + MoELayout.specs(self, layer: i, layout: .merged)
                + (m.sharedFFNDim.map { s in
                    [ParameterSpec(name: p + "ffn_gate_inp_shexp.weight", shape: [dim]),
                     ParameterSpec(name: p + "ffn_gate_shexp.weight", shape: [s, dim]),
                     ParameterSpec(name: p + "ffn_up_shexp.weight", shape: [s, dim]),
                     ParameterSpec(name: p + "ffn_down_shexp.weight", shape: [dim, s])]
                } ?? [])
        } else {
            ffn = [ParameterSpec(name: p + "ffn_gate.weight", shape: [ffnDim, dim]),
                   ParameterSpec(name: p + "ffn_up.weight", shape: [ffnDim, dim]),
                   ParameterSpec(name: p + "ffn_down.weight", shape: [dim, ffnDim])]
        }
        return [
            ParameterSpec(name: p + "attn_norm.weight", shape: [dim]),
            ParameterSpec(name: p + "attn_q.weight", shape: [qDim, dim]),
            ParameterSpec(name: p + "attn_k.weight", shape: [kvDim, dim]),
            ParameterSpec(name: p + "attn_v.weight", shape: [kvDim, dim]),
            ParameterSpec(name: p + "attn_output.weight", shape: [dim, qDim]),
            ParameterSpec(name: p + "ffn_norm.weight", shape: [dim]),
        ] + ffn + (attentionBias ? [ParameterSpec(name: p + "attn_q.bias", shape: [qDim]),
                              ParameterSpec(name: p + "attn_k.bias", shape: [kvDim]),
                              ParameterSpec(name: p + "attn_v.bias", shape: [kvDim])] : [])
          + (architecture == .gemma3 ? [ParameterSpec(name: p + "attn_q_norm.weight", shape: [headDim]),
                                        ParameterSpec(name: p + "attn_k_norm.weight", shape: [headDim]),
                                        ParameterSpec(name: p + "post_attention_norm.weight", shape: [dim]),
                                        ParameterSpec(name: p + "post_ffw_norm.weight", shape: [dim])] : [])
          + (architecture == .qwen3moe ? [ParameterSpec(name: p + "attn_q_norm.weight", shape: [headDim]),
                                          ParameterSpec(name: p + "attn_k_norm.weight", shape: [headDim])] : [])
          + (architecture == .olmoe ? [ParameterSpec(name: p + "attn_q_norm.weight", shape: [qDim]),
                                       ParameterSpec(name: p + "attn_k_norm.weight", shape: [kvDim])] : [])
    }

    public func parameters(of stage: ParameterStage) -> [ParameterSpec] {
        switch stage {
        case .embedding: return [ParameterSpec(name: "token_embd.weight", shape: [vocabSize, dim])]
        case .block(let i): return blockParameters(i)
        case .head:
            var specs = [ParameterSpec(name: "output_norm.weight", shape: [dim])]
            if !tiedEmbeddings { specs.append(ParameterSpec(name: "output.weight", shape: [vocabSize, dim])) }
            return specs
        }
    }

    public var stages: [ParameterStage] { [.embedding] + (0..<layers).map { .block($0) } + [.head] }

    /// Every parameter, stage by stage.
    public var parameterTable: [ParameterSpec] { stages.flatMap { parameters(of: $0) } }

    public var parameterCount: Int { parameterTable.reduce(0) { $0 + $1.elements } }
}
