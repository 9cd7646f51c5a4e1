// The shape of a Llama-family model, and the built-in shapes `--config NAME`
// selects (tiny for tests up to Llama-3-70B for planning).

public enum RopeStyle: String, Sendable, Codable {
    /// GGUF / llama.cpp: rotate adjacent pairs (x[2i], x[2i+1]).
    case adjacentPairs
    /// Hugging Face: rotate halves (x[i], x[i + headDim/2]).
    case halfSplit
}

/// The model families that share the Llama forward pass, by their GGUF `general.architecture`.
public enum ModelArchitecture: String, Sendable, Codable, CaseIterable {
    /// Llama 1–3, Mistral without sliding windows, SmolLM2, TinyLlama…
    case llama
    /// Qwen2 / Qwen2.5: Llama's shape plus biases on the q, k and v projections.
    case qwen2
    /// Gemma 3 (text): embeddings scaled by √dim, RMSNorm of each head's q and k, norms after
    /// attention and after the feed-forward too, GELU-tanh gate, and local layers (five of every
    /// six) that attend only to a sliding window, with their own RoPE base.
    case gemma3
    /// Qwen2-MoE / Qwen1.5-MoE: Qwen2's attention, a mixture-of-experts feed-forward with a shared
    /// expert behind a sigmoid gate.
    case qwen2moe
    /// OLMoE: Llama's attention plus RMSNorm over the whole q and k projections, a
    /// mixture-of-experts feed-forward. (Mixtral is `llama` with experts.)
    case olmoe
    /// Qwen3-MoE: RMSNorm of each head's q and k (as Gemma 3), a mixture-of-experts feed-forward
    /// with the chosen weights renormalized.
    case qwen3moe

    /// The RoPE convention of this architecture's GGUF files: llama.cpp's converter permutes
    /// Llama's Q/K rows to adjacent pairs, and leaves Qwen2's in Hugging Face's halves (NEOX).
    public var ggufRopeStyle: RopeStyle { self == .llama ? .adjacentPairs : .halfSplit }
}

public struct LlamaConfig: Sendable, Equatable, Codable {
    public var name: String
    public var architecture: ModelArchitecture
    public var vocabSize: Int
    public var dim: Int
    public var ffnDim: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var ropeTheta: Float
    public var rmsEps: Float
    public var contextLength: Int
    public var tiedEmbeddings: Bool
    /// RoPE frequency scaling (Llama 3.1's `llama3`, `linear`), nil for none.
    public var ropeScaling: RopeScaling?
    /// Local (sliding-window) attention layers (Gemma 3): the window, in positions a query sees
    /// (itself included), and every how many layers one is global (layer l is global when
    /// (l + 1) is a multiple of it). nil: every layer attends to the whole context.
    public var slidingWindow: (size: Int, pattern: Int, ropeTheta: Float)? {
        get { windowSize.map { ($0, windowPattern ?? 6, localRopeTheta ?? 10000) } }
        set { windowSize = newValue?.size; windowPattern = newValue?.pattern; localRopeTheta = newValue?.ropeTheta }
    }
    var windowSize: Int?, windowPattern: Int?, localRopeTheta: Float?
    /// logits = cap · tanh(logits / cap) when set (GGUF `final_logit_softcapping`).
    public var finalLogitSoftcap: Float?
    /// A mixture-of-experts feed-forward in every block (nil: dense). `ffnDim` is then one expert's.
    public var moe: MoEConfig?

    /// Whether layer `l` attends only to the sliding window.
    public func isLocalLayer(_ l: Int) -> Bool {
        guard let w = slidingWindow else { return false }
        return (l + 1) % w.pattern != 0
    }

    public init(name: String, architecture: ModelArchitecture = .llama, vocabSize: Int, dim: Int, ffnDim: Int, layers: Int, heads: Int,
                kvHeads: Int, headDim: Int? = nil, ropeTheta: Float = 10000, rmsEps: Float = 1e-5,
                contextLength: Int = 2048, tiedEmbeddings: Bool = false, ropeScaling: RopeScaling? = nil,
                moe: MoEConfig? = nil) {
        self.name = name; self.architecture = architecture; self.vocabSize = vocabSize; self.dim = dim; self.ffnDim = ffnDim
        self.layers = layers; self.heads = heads; self.kvHeads = kvHeads
        self.headDim = headDim ?? dim / heads
        self.ropeTheta = ropeTheta; self.rmsEps = rmsEps
        self.contextLength = contextLength; self.tiedEmbeddings = tiedEmbeddings
        self.ropeScaling = ropeScaling
        self.moe = moe
    }

    /// The RoPE table of this model for positions [0, maxPositions).
    public func ropeTable(maxPositions: Int) -> RopeTable {
        RopeTable(headDim: headDim, maxPositions: maxPositions, theta: ropeTheta, scaling: ropeScaling)
    }

    /// The sliding-window layers' RoPE table when their base differs (Gemma 3: 10,000, unscaled).
    public func localRopeTable(maxPositions: Int) -> RopeTable? {
        guard let w = slidingWindow, w.ropeTheta != ropeTheta || ropeScaling != nil else { return nil }
        return RopeTable(headDim: headDim, maxPositions: maxPositions, theta: w.ropeTheta)
    }

    /// Biases on the q, k and v projections (Qwen2).
    public var attentionBias: Bool { architecture == .qwen2 || architecture == .qwen2moe }

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }

    private enum CodingKeys: String, CodingKey {
        case name, architecture, vocabSize, dim, ffnDim, layers, heads, kvHeads, headDim, ropeTheta, rmsEps
        case contextLength, tiedEmbeddings, ropeScaling, windowSize, windowPattern, localRopeTheta, finalLogitSoftcap, moe
    }

    /// Decodes configs saved before `architecture` existed as Llama.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(name: try c.decode(String.self, forKey: .name),
                  architecture: try c.decodeIfPresent(ModelArchitecture.self, forKey: .architecture) ?? .llama,
                  vocabSize: try c.decode(Int.self, forKey: .vocabSize), dim: try c.decode(Int.self, forKey: .dim),
                  ffnDim: try c.decode(Int.self, forKey: .ffnDim), layers: try c.decode(Int.self, forKey: .layers),
                  heads: try c.decode(Int.self, forKey: .heads), kvHeads: try c.decode(Int.self, forKey: .kvHeads),
                  headDim: try c.decode(Int.self, forKey: .headDim), ropeTheta: try c.decode(Float.self, forKey: .ropeTheta),
                  rmsEps: try c.decode(Float.self, forKey: .rmsEps),
                  contextLength: try c.decode(Int.self, forKey: .contextLength),
                  tiedEmbeddings: try c.decode(Bool.self, forKey: .tiedEmbeddings),
                  ropeScaling: try c.decodeIfPresent(RopeScaling.self, forKey: .ropeScaling))
        windowSize = try c.decodeIfPresent(Int.self, forKey: .windowSize)
        windowPattern = try c.decodeIfPresent(Int.self, forKey: .windowPattern)
        localRopeTheta = try c.decodeIfPresent(Float.self, forKey: .localRopeTheta)
        finalLogitSoftcap = try c.decodeIfPresent(Float.self, forKey: .finalLogitSoftcap)
        moe = try c.decodeIfPresent(MoEConfig.self, forKey: .moe)
    }

    /// Checks the relations the kernels rely on.
    public func validate() throws {
        func need(_ ok: Bool, _ what: String) throws {
            if !ok { throw OffloadError("[config] \(name): \(what)") }
        }
        try need(vocabSize > 0 && dim > 0 && ffnDim > 0 && layers > 0, "sizes must be positive")
        try need(heads > 0 && kvHeads > 0 && heads % kvHeads == 0,
                 "heads (\(heads)) must be a positive multiple of kv heads (\(kvHeads))")
        try need(headDim > 0 && headDim % 2 == 0, "head dimension (\(headDim)) must be even")
        try need(rmsEps > 0 && ropeTheta > 0, "rms epsilon and rope theta must be positive")
        switch ropeScaling {
        case .linear(let f)?: try need(f > 0 && f.isFinite, "linear RoPE scaling factor (\(f)) must be positive")
        case .llama3(let f, let low, let high, let original)?:
            try need(f > 0 && low > 0 && high > low && original > 0,
                     "llama3 RoPE scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and an original context")
        case .divisors(let d)?:
            try need(d.count == headDim / 2 && d.allSatisfy { $0 > 0 && $0.isFinite },
                     "RoPE frequency divisors: \(d.count) values, expected \(headDim / 2) positive ones")
        case nil: break
        }
        if let w = slidingWindow {
            try need(w.size > 0 && w.pattern > 0 && w.ropeTheta > 0, "sliding window \(w) must be positive")
        }
        if let m = moe {
            try need(m.experts > 0, "expert count (\(m.experts)) must be positive")
            try need(m.used > 0 && m.used <= m.experts,
                     "experts used per token (\(m.used)) must be between 1 and the expert count (\(m.experts))")
            try need(m.sharedFFNDim.map { $0 > 0 } ?? true, "the shared expert's feed-forward size must be positive")
        }
        try need(moe != nil || ![.qwen2moe, .olmoe, .qwen3moe].contains(architecture),
                 "a \(architecture.rawValue) model needs an expert count")
    }

    /// Built-in shapes, by the name `--config` takes.
    public static let builtIn: [LlamaConfig] = [
        LlamaConfig(name: "tiny", vocabSize: 256, dim: 64, ffnDim: 176, layers: 2, heads: 4, kvHeads: 2,
                    contextLength: 256, tiedEmbeddings: true),
        LlamaConfig(name: "small", vocabSize: 1024, dim: 256, ffnDim: 688, layers: 4, heads: 8, kvHeads: 4,
                    contextLength: 512),
        LlamaConfig(name: "smollm2-135m", vocabSize: 49152, dim: 576, ffnDim: 1536, layers: 30, heads: 9,
                    kvHeads: 3, ropeTheta: 100000, contextLength: 8192, tiedEmbeddings: true),
        LlamaConfig(name: "smollm2-360m", vocabSize: 49152, dim: 960, ffnDim: 2560, layers: 32, heads: 15,
                    kvHeads: 5, ropeTheta: 100000, contextLength: 8192, tiedEmbeddings: true),
        LlamaConfig(name: "llama-1.5b", vocabSize: 32000, dim: 2048, ffnDim: 5632, layers: 28, heads: 16,
                    kvHeads: 8, contextLength: 4096),
        // OpenLLaMA 3B's shape: 3.4B parameters, 55 GB of fp32 training state.
        LlamaConfig(name: "open-llama-3b", vocabSize: 32000, dim: 3200, ffnDim: 8640, layers: 26, heads: 32,
                    kvHeads: 32, contextLength: 2048),
        LlamaConfig(name: "llama-3.2-1b", vocabSize: 128256, dim: 2048, ffnDim: 8192, layers: 16, heads: 32,
                    kvHeads: 8, ropeTheta: 500000, contextLength: 8192, tiedEmbeddings: true),
        LlamaConfig(name: "llama-3-8b", vocabSize: 128256, dim: 4096, ffnDim: 14336, layers: 32, heads: 32,
                    kvHeads: 8, ropeTheta: 500000, contextLength: 8192),
        LlamaConfig(name: "llama-3-70b", vocabSize: 128256, dim: 8192, ffnDim: 28672, layers: 80, heads: 64,
                    kvHeads: 8, ropeTheta: 500000, contextLength: 8192),
        // Mixtures of experts (`ffnDim` is one expert's): a small one for tests, and Mixtral-8x7B's
        // shape (46.7B parameters, 12.9B active per token).
        LlamaConfig(name: "small-moe", vocabSize: 1024, dim: 256, ffnDim: 512, layers: 4, heads: 8, kvHeads: 4,
                    contextLength: 512, moe: MoEConfig(experts: 8, used: 2, normalizeTopK: true)),
        LlamaConfig(name: "mixtral-8x7b", vocabSize: 32000, dim: 4096, ffnDim: 14336, layers: 32, heads: 32,
                    kvHeads: 8, ropeTheta: 1e6, contextLength: 32768, moe: MoEConfig(experts: 8, used: 2, normalizeTopK: true)),
    ]

    public static func named(_ name: String) throws -> LlamaConfig {
        if let c = builtIn.first(where: { $0.name == name.lowercased() }) { return c }
        throw OffloadError("[config] unknown config '\(name)'; expected one of: "
                           + builtIn.map(\.name).joined(separator: ", "))
    }
}

import Kernels
import Tensors
