// Between the two ways Llama checkpoints are laid out: tensor names (GGUF's
// blk.3.attn_q.weight vs Hugging Face's model.layers.3.self_attn.q_proj.weight)
// and the order of Q and K rows within each head (RoPE convention).

import Foundation
import Tensors

public enum HFNames {
    private static let blockPairs: [(gguf: String, hf: String)] = [
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ]
    /// Gemma 3's blocks: four norms per block (pre and post, around attention and the
    /// feed-forward) and per-head q/k norms; GGUF's ffn_norm is the norm before the feed-forward.
    private static let gemma3BlockPairs: [(gguf: String, hf: String)] = [
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
        ("post_attention_norm", "post_attention_layernorm"),
        ("ffn_norm", "pre_feedforward_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
        ("post_ffw_norm", "post_feedforward_layernorm"),
    ]
    /// Mixture-of-experts modules: `*` is an expert's index. Mixtral's checkpoints name them
    /// block_sparse_moe.*; Qwen2-MoE's and OLMoE's mlp.*, with Qwen2-MoE's shared expert.
    private static let mixtralPairs: [(gguf: String, hf: String)] = [
        ("ffn_gate_inp", "block_sparse_moe.gate"),
        ("ffn_gate.*", "block_sparse_moe.experts.*.w1"),
        ("ffn_up.*", "block_sparse_moe.experts.*.w3"),
        ("ffn_down.*", "block_sparse_moe.experts.*.w2"),
    ]
    private static let mlpExpertPairs: [(gguf: String, hf: String)] = [
        ("ffn_gate_inp", "mlp.gate"),
        ("ffn_gate.*", "mlp.experts.*.gate_proj"),
        ("ffn_up.*", "mlp.experts.*.up_proj"),
        ("ffn_down.*", "mlp.experts.*.down_proj"),
        ("ffn_gate_inp_shexp", "mlp.shared_expert_gate"),
        ("ffn_gate_shexp", "mlp.shared_expert.gate_proj"),
        ("ffn_up_shexp", "mlp.shared_expert.up_proj"),
        ("ffn_down_shexp", "mlp.shared_expert.down_proj"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
    ]
    private static func pairs(_ a: ModelArchitecture) -> [(gguf: String, hf: String)] {
        switch a {
        case .gemma3: return gemma3BlockPairs
        case .llama: return blockPairs + mixtralPairs
        case .qwen2moe, .olmoe, .qwen3moe: return blockPairs + mlpExpertPairs
        case .qwen2: return blockPairs
        }
    }
    private static let globalPairs: [(gguf: String, hf: String)] = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ]

    /// `module` (dot-separated) against `pattern`, where a `*` component matches a decimal index:
    /// the index matched, -1 when the pattern has none, nil when they differ.
    private static func match(_ module: [Substring], _ pattern: String) -> Int? {
        let p = pattern.split(separator: ".")
        guard p.count == module.count else { return nil }
        var index = -1
        for (a, b) in zip(module, p) {
            if b == "*" {
                guard let i = Int(a), i >= 0, String(i) == a else { return nil }
                index = i
            } else if a != b { return nil }
        }
        return index
    }

    private static func fill(_ pattern: String, _ index: Int) -> String {
        index < 0 ? pattern : pattern.replacingOccurrences(of: "*", with: String(index))
    }

    /// The Hugging Face name of a GGUF tensor name, or nil for names outside the architecture's layout.
    public static func hf(_ gguf: String) -> String? { hf(gguf, architecture: .llama) }

    public static func hf(_ gguf: String, architecture: ModelArchitecture) -> String? {
        if let p = globalPairs.first(where: { $0.gguf == gguf }) { return p.hf }
        let parts = gguf.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 4, parts[0] == "blk", let i = Int(parts[1]), i >= 0, String(i) == parts[1] else { return nil }
        let module = Array(parts[2..<parts.count - 1])
        for p in pairs(architecture) {
            if let e = match(module, p.gguf) { return "model.layers.\(i).\(fill(p.hf, e)).\(parts.last!)" }
        }
        return nil
    }

    /// The GGUF name of a Hugging Face tensor name, or nil for names outside the architecture's layout.
    public static func gguf(_ hf: String) -> String? { gguf(hf, architecture: .llama) }

    public static func gguf(_ hf: String, architecture: ModelArchitecture) -> String? {
        if let p = globalPairs.first(where: { $0.hf == hf }) { return p.gguf }
        let prefix = "model.layers."
        guard hf.hasPrefix(prefix) else { return nil }
        let parts = hf.dropFirst(prefix.count).split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 3, let i = Int(parts[0]), i >= 0, String(i) == parts[0] else { return nil }
        let module = Array(parts[1..<parts.count - 1])
        for p in pairs(architecture) {
            if let e = match(module, p.hf) { return "blk.\(i).\(fill(p.gguf, e)).\(parts.last!)" }
        }
        return nil
    }
}

/// Reorders the rows of a Q or K projection between the RoPE conventions.
///
/// Within each head of `headDim` rows, Hugging Face rotates row i with row
/// i + headDim/2 (`halfSplit`); GGUF rotates rows 2i and 2i+1 (`adjacentPairs`).
/// llama.cpp's convert_hf_to_gguf.py `LlamaModel.permute` goes from the first to
/// the second: `w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(w.shape)`,
/// i.e. GGUF row h·d + 2i + p is HF row h·d + p·d/2 + i.
/// - Note: pass the number of heads the projection has: `heads` for Q, `kvHeads` for K.
public enum RopeRowOrder {
    /// The half-split (HF) row that adjacent-pairs (GGUF) row `row` holds.
    public static func halfSplitRow(ofAdjacentPairsRow row: Int, headDim: Int) -> Int {
        let h = row / headDim, r = row % headDim
        return h * headDim + (r % 2) * (headDim / 2) + r / 2
    }

    /// The adjacent-pairs (GGUF) row that holds half-split (HF) row `row`.
    @inline(__always)
    public static func adjacentPairsRow(ofHalfSplitRow row: Int, headDim: Int) -> Int {
        let h = row / headDim, r = row % headDim, half = headDim / 2
        return h * headDim + 2 * (r % half) + r / half
    }

    /// HF → GGUF (llama.cpp's permute). `w` is rows × cols, row-major.
    public static func toAdjacentPairs<T>(_ w: [T], heads: Int, cols: Int) throws -> [T] {
        try reorder(w, heads: heads, cols: cols, forward: true)
    }

    /// GGUF → HF (the inverse of llama.cpp's permute). `w` is rows × cols, row-major.
    public static func toHalfSplit<T>(_ w: [T], heads: Int, cols: Int) throws -> [T] {
        try reorder(w, heads: heads, cols: cols, forward: false)
    }

    private static func reorder<T>(_ w: [T], heads: Int, cols: Int, forward: Bool) throws -> [T] {
        guard heads > 0, cols > 0, w.count % cols == 0, (w.count / cols) % (2 * heads) == 0 else {
            throw OffloadError("[rope] cannot reorder \(w.count) values as rows of \(cols) "
                               + "into \(heads) heads of an even number of rows")
        }
        let headDim = w.count / cols / heads
        var out = w
        w.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for row in 0..<(w.count / cols) {
                    let hf = halfSplitRow(ofAdjacentPairsRow: row, headDim: headDim)
                    let (to, from) = forward ? (row, hf) : (hf, row)
                    for c in 0..<cols { dst[to * cols + c] = src[from * cols + c] }
                }
            }
        }
        return out
    }
}
