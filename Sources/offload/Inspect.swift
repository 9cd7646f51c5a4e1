// `offload inspect FILE`: what a model file holds and what it needs to run and train.
import ArgumentParser
import Foundation
import Formats
import Models
import Runtime
import Tensors

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a model's architecture, tensors, and the memory it needs to run and to train.",
        discussion: """
        FILE is a GGUF file or a Hugging Face folder (config.json + *.safetensors), as the argument or as --model.
        Example: offload inspect SmolLM2-135M-Instruct.Q4_1.gguf --batch 4 --seq-len 256
        """)

    @Argument(help: ArgumentHelp("A GGUF file or a Hugging Face model folder.", valueName: "file")) var fileArgument: String?
    @Option(help: "The same as the argument, as generate, train and plan take it.") var model: String?
    var file: String { fileArgument ?? model! }
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "Batch size for the memory estimate.") var batch = 1
    @Option(name: .customLong("seq-len"), help: "Sequence length for the memory estimate.") var seqLen = 512
    @Flag(help: "Print one JSON object instead of tables.") var json = false

    func validate() throws {
        guard (fileArgument == nil) != (model == nil) else {
            throw ValidationError("give the model once: as the argument or as --model")
        }
        guard batch > 0 else { throw ValidationError("--batch must be a positive integer, got \(batch)") }
        guard seqLen > 0 else { throw ValidationError("--seq-len must be a positive integer, got \(seqLen)") }
    }

    func run() throws {
        let source = try loadWeights(file, sha256: sha256)
        let c = source.config
        var rows: [(name: String, type: String, shape: [Int], bytes: Int)] = []
        for spec in try source.storedParameterTable() {
            let t = try source.tensor(spec.name)
            rows.append((spec.name, t.dtype.rawValue.uppercased(), t.shape, t.bytes.count))
        }
        let weightBytes = rows.reduce(0) { $0 + $1.bytes }
        let est = c.memoryEstimate(weightBytes: weightBytes, batch: batch, seqLen: seqLen)
        // A mixture of experts: the bytes of its experts, and what one token reads.
        let expertBytes = rows.filter { isExpertTensorName($0.name) }
            .reduce(0) { $0 + $1.bytes }
        // Expert offloading's least budget (GGUF files): everything but the experts, and one token's
        // experts, as `generate --budget` and `plan` size it for a context of --seq-len.
        let moe = try c.moe.map { _ -> (experts: Int, minimum: Int?) in
            let least = try (source as? GGUFWeights).map {
                try ExpertOffloadPlan(source: $0, budget: Int.max / 2, promptTokens: seqLen, contextCapacity: seqLen).minimumBudget
            }
            return (expertBytes, least)
        }
        if json {
            var obj: [String: Any] = [
                "file": file, "architecture": c.architecture.rawValue, "name": c.name, "parameters": c.parameterCount,
                "config": ["vocab_size": c.vocabSize, "dim": c.dim, "ffn_dim": c.ffnDim, "layers": c.layers,
                           "heads": c.heads, "kv_heads": c.kvHeads, "head_dim": c.headDim,
                           "rope_theta": Double(c.ropeTheta), "rms_eps": Double(c.rmsEps),
                           "context_length": c.contextLength, "tied_embeddings": c.tiedEmbeddings,
                           "rope_style": source.ropeStyle.rawValue, "rope_scaling": c.ropeScaling?.summary ?? "none"],
                "tensors": rows.map { ["name": $0.name, "type": $0.type, "shape": $0.shape, "bytes": $0.bytes] },
                "memory": ["batch": batch, "seq_len": seqLen, "weight_bytes": est.weightBytes,
                           "kv_cache_bytes": est.kvCacheBytes, "inference_bytes": est.inferenceBytes,
                           "training_state_bytes": est.trainingStateBytes,
                           "training_activation_bytes": est.trainingActivationBytes,
                           "training_bytes": est.trainingBytes],
            ]
            if let m = c.moe, let b = moe {
                obj["experts"] = ["count": m.experts, "used": m.used, "normalize_top_k": m.normalizeTopK,
                                  "shared_ffn_dim": m.sharedFFNDim ?? 0, "active_parameters": c.activeParameterCount,
                                  "expert_bytes": b.experts, "run_all_resident_bytes": est.inferenceBytes,
                                  "run_minimum_bytes": b.minimum ?? NSNull()]
            }
            print(try jsonString(obj))
            return
        }
        print("""
        \(source.sourceName): \(c.architecture.rawValue), \(c.name)
          parameters      \(formatCount(c.parameterCount)) (\(c.parameterCount))
          layers          \(c.layers), dim \(c.dim), ffn \(c.ffnDim), heads \(c.heads) (kv \(c.kvHeads)), head dim \(c.headDim)
          vocabulary      \(c.vocabSize), context \(c.contextLength), rope theta \(c.ropeTheta) (\(source.ropeStyle.rawValue))\(c.ropeScaling.map { ", scaling " + $0.summary } ?? "")
          embeddings      \(c.tiedEmbeddings ? "tied (the head reuses token_embd)" : "untied")\(c.moe.map { m in
            "\n  experts         \(m.experts) per block, \(m.used) per token (weights \(m.normalizeTopK ? "renormalized" : "as softmax gives them"))"
            + (m.sharedFFNDim.map { ", a shared expert of ffn \($0)" } ?? "")
            + "\n  active          \(formatCount(c.activeParameterCount)) of \(formatCount(c.parameterCount)) parameters per token" } ?? "")

        """)
        let nameWidth = max(4, rows.map(\.name.count).max() ?? 0)
        print("  " + "name".padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  type   shape           bytes")
        for r in rows {
            let shape = r.shape.map(String.init).joined(separator: " × ")
            print("  " + r.name.padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  "
                  + r.type.padding(toLength: 5, withPad: " ", startingAt: 0) + "  "
                  + shape.padding(toLength: 14, withPad: " ", startingAt: 0) + "  " + formatBytes(r.bytes))
        }
        print("""

        Memory at batch \(batch) × seq-len \(seqLen), everything in compute memory:
          run    \(formatBytes(est.inferenceBytes).leftPad(11))  = weights \(formatBytes(est.weightBytes)) + KV cache \(formatBytes(est.kvCacheBytes)) + activations \(formatBytes(est.inferenceActivationBytes))
        """)
        if moe == nil {
            print("  train  \(formatBytes(est.trainingBytes).leftPad(11))  = fp32 weights, gradients, AdamW moments \(formatBytes(est.trainingStateBytes)) + saved activations \(formatBytes(est.trainingActivationBytes))")
        }
        if let b = moe {
            print("  experts \(formatBytes(b.experts).leftPad(10))  of the weights; "
                  + (b.minimum.map { "`generate --budget` runs from \(formatBytes($0)), keeping one token's experts in memory "
                      + "and reading the rest from the file (`plan --mode generate` sizes the pool)" }
                     ?? "a Hugging Face folder runs with every expert in memory (expert offloading reads GGUF files)"))
        }
    }
}

func formatCount(_ n: Int) -> String {
    n >= 1_000_000_000 ? String(format: "%.2fB", Double(n) / 1e9)
        : n >= 1_000_000 ? String(format: "%.1fM", Double(n) / 1e6) : "\(n)"
}

extension String {
    func leftPad(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
