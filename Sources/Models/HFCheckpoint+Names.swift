// Between the two ways Llama checkpoints are laid out: tensor names (GGUF's
// blk.3.attn_q.weight vs Hugging Face's model.layers.3.self_attn.q_proj.weight)
// and the order of Q and K rows within each head (RoPE convention).

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
    private static func pairs(_ a: ModelArchitecture) -> [(gguf: String, hf: String)] {
        a == .gemma3 ? gemma3BlockPairs : blockPairs
    }
    private static let globalPairs: [(gguf: String, hf: String)] = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ]

    /// The Hugging Face name of a GGUF tensor name, or nil for names outside the architecture's layout.
    public static func hf(_ gguf: String) -> String? { hf(gguf, architecture: .llama) }

    public static func hf(_ gguf: String, architecture: ModelArchitecture) -> String? {
        let blockPairs = pairs(architecture)
        if let p = globalPairs.first(where: { $0.gguf == gguf }) { return p.hf }
        let parts = gguf.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4, parts[0] == "blk", let i = Int(parts[1]), i >= 0, String(i) == parts[1],
              let p = blockPairs.first(where: { $0.gguf == parts[2] }) else { return nil }
        return "model.layers.\(i).\(p.hf).\(parts[3])"
    }

    /// The GGUF name of a Hugging Face tensor name, or nil for names outside the architecture's layout.
    public static func gguf(_ hf: String) -> String? { gguf(hf, architecture: .llama) }

    public static func gguf(_ hf: String, architecture: ModelArchitecture) -> String? {
        let blockPairs = pairs(architecture)
        if let p = globalPairs.first(where: { $0.hf == hf }) { return p.gguf }
        let prefix = "model.layers."
        guard hf.hasPrefix(prefix) else { return nil }
        let rest = hf.dropFirst(prefix.count)
        guard let dot = rest.firstIndex(of: "."), let i = Int(rest[..<dot]), i >= 0,
              String(i) == rest[..<dot] else { return nil }
        let tail = rest[rest.index(after: dot)...]
        guard let last = tail.lastIndex(of: ".") else { return nil }
        let module = String(tail[..<last]), suffix = tail[tail.index(after: last)...]
        guard let p = blockPairs.first(where: { $0.hf == module }) else { return nil }
        return "blk.\(i).\(p.gguf).\(suffix)"
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
