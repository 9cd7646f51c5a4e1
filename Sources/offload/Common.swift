// Shared by the commands: loading a model, JSON output, errors.
import ArgumentParser
import Foundation
import Formats
import Kernels
import Models
import Planning
import Runtime
import Tensors

/// A GGUF file, or a Hugging Face folder (config.json + safetensors). With
/// `sha256`, a file must have that digest before anything else is read.
func loadWeights(_ path: String, sha256: String? = nil) throws -> WeightSource {
    if try checkModelPath(path, sha256: sha256) { return try HFCheckpoint(folder: path) }
    return try GGUFWeights(path: path)
}

/// Checks that `path` exists and, when `sha256` is given, that it is a file with that digest.
/// Returns whether it is a folder.
func checkModelPath(_ path: String, sha256: String?) throws -> Bool {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
        throw OffloadError("[model] \(path): no such file or folder")
    }
    if let want = sha256?.lowercased() {
        guard !isDir.boolValue else { throw OffloadError("[model] \(path): --sha256 needs a file, not a folder") }
        let got = try sha256Hex(ofFile: path)
        guard got == want else {
            throw OffloadError("[model] \((path as NSString).lastPathComponent): sha256 mismatch: expected \(want), found \(got)")
        }
    }
    return isDir.boolValue
}

func jsonString(_ obj: Any) throws -> String {
    let data = try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])
    return String(decoding: data, as: UTF8.self)
}

func defaultThreads() -> Int { max(1, ProcessInfo.processInfo.activeProcessorCount) }

/// The sampling flags `generate` and `chat` share.
struct SamplingFlags: ParsableArguments {
    @Option(help: "Sampling temperature; 0 picks the most likely token (greedy).") var temperature: Float = 0.8
    @Option(name: .customLong("top-k"), help: "Sample among the K most likely tokens (0: all).") var topK = 40
    @Option(name: .customLong("top-p"), help: "Sample within the smallest set of tokens with this total probability.")
    var topP: Float = 0.95
    @Option(help: "Random seed (default: a random one; generate --json prints it).") var seed: UInt64?

    func validate() throws {
        guard temperature >= 0, temperature.isFinite else {
            throw ValidationError("--temperature must be a number ≥ 0, got \(temperature)")
        }
        guard topK >= 0 else { throw ValidationError("--top-k must be 0 or more, got \(topK)") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1], got \(topP)") }
    }

    var options: SamplingOptions { SamplingOptions(temperature: temperature, topK: topK, topP: topP) }
    /// --seed, or a random one.
    var seedOrRandom: UInt64 { seed ?? UInt64.random(in: 0...UInt64(UInt32.max)) }
}

/// Checks a --budget value (nil: none given).
func validateBudget(_ budget: String?) throws {
    if let b = budget, parseBytes(b) == nil || parseBytes(b)! <= 0 {
        throw ValidationError("--budget must be a size such as 512MB, 2GiB or a byte count, got '\(b)'")
    }
}

/// --prompt-cache and --prompt-cache-limit, the same in `generate` and `serve`.
struct PromptCacheFlags: ParsableArguments {
    @Option(name: .customLong("prompt-cache"), help: ArgumentHelp(
        "Folder of stored prompt KV caches (created if missing): a prompt's blocks of 256 tokens found there are "
            + "loaded instead of prefilled, and its new ones stored; the output is the same bit for bit.",
        valueName: "folder"))
    var folder: String?
    @Option(name: .customLong("prompt-cache-limit"), help: ArgumentHelp(
        "With --prompt-cache: the most bytes its entries take (default 4GB); the least recently used go first.",
        valueName: "bytes"))
    var limit: String?

    func validate() throws {
        guard let limit else { return }
        if folder == nil { throw ValidationError("--prompt-cache-limit needs --prompt-cache") }
        if parseBytes(limit).map({ $0 <= 0 }) ?? true {
            throw ValidationError("--prompt-cache-limit must be a size such as 512MB or 4GB, got '\(limit)'")
        }
    }

    /// The cache for `source`'s model, when --prompt-cache is given.
    func make(for source: WeightSource) throws -> PromptCache? {
        try folder.map { try PromptCache(folder: $0, limitBytes: parseBytes(limit ?? "4GB")!, model: source) }
    }
}

/// Checks a --prefill-chunk value (nil: none given): whole attention bands, so the passes give one pass's result.
func validatePrefillChunk(_ chunk: Int?) throws {
    if let n = chunk, n <= 0 || n % Matmul.rowBlock != 0 {
        throw ValidationError("--prefill-chunk must be a positive multiple of \(Matmul.rowBlock) tokens, got \(n)")
    }
}

/// The peft adapter in `folder` (an `offload train` LoRA checkpoint is one) for the model `source` holds.
func loadAdapter(_ folder: String, for source: WeightSource) throws -> LoRAAdapters {
    try LoRAAdapters.load(folder: folder, config: source.config, ropeStyle: source.ropeStyle)
}

/// `--expert-policy` as given (nil: the standard one), or a usage error naming the choices.
func parseExpertPolicy(_ name: String?) throws -> ExpertPolicy {
    guard let name else { return .standard }
    guard let p = ExpertPolicy(rawValue: name) else {
        throw ValidationError("--expert-policy must be one of "
                              + ExpertPolicy.allCases.map(\.rawValue).joined(separator: ", ") + ", got '\(name)'")
    }
    return p
}
