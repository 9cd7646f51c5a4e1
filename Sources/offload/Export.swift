// `offload export`: a training checkpoint as a GGUF file; `offload quantize`: any model file
// Offload reads as a GGUF file in one of llama-quantize's mixes. Both write atomically.
import ArgumentParser
import Foundation
import Formats
import Kernels
import Models
import Runtime
import Tensors

/// `--type` as an ExportType, or a ValidationError listing the valid names.
func parseExportType(_ s: String) throws -> ExportType {
    guard let t = ExportType(rawValue: s.lowercased()) else {
        throw ValidationError("--type must be one of \(ExportType.names), got '\(s)'")
    }
    return t
}

private let typeHelp = ArgumentHelp(
    "Type of the file: \(ExportType.names). q4_k_m, q5_k_m, q6_k and q8_0 are llama-quantize's mixes "
    + "(the same type for each tensor as llama-quantize chooses; norms stay f32).")

struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a training checkpoint as a GGUF model, or a base model with a LoRA adapter merged in.",
        discussion: """
        The tokenizer is copied from the GGUF the training started from, when there was one. With --merge, \
        FOLDER is a LoRA adapter (an `offload train --lora-rank` checkpoint, or any peft adapter folder with \
        --model): each targeted projection is written as W + (alpha/rank)·B·A, as peft's merge_and_unload.
        Examples:
          offload export run1 --out run1.gguf --type q4_k_m
          offload export --checkpoint run1 --out run1.gguf --type q8_0
          offload export adapter --merge --out merged.gguf --type q8_0
          offload export peft-adapter --merge --model SmolLM2.gguf --out merged.gguf
        """)

    @Argument(help: "A checkpoint folder written by `offload train --save` (with --merge: a LoRA adapter folder).") var folder: String?
    @Option(help: "The checkpoint folder (the same as the argument).") var checkpoint: String?
    @Option(help: "The GGUF file to write (atomically).") var out: String
    @Option(help: typeHelp) var type: String = "f32"
    @Flag(help: "FOLDER is a LoRA adapter: write its base model with the adapter merged in.") var merge = false
    @Option(help: "With --merge: the base model the adapter was trained on (default: the one an `offload train` checkpoint records).")
    var model: String?

    func validate() throws {
        if model != nil && !merge { throw ValidationError("--model names the base of a LoRA adapter: give --merge too") }
        _ = try parseExportType(type)
        if folder == nil, checkpoint == nil { throw ValidationError("give the checkpoint folder: offload export run1 --out run1.gguf") }
        if let folder, let checkpoint, folder != checkpoint {
            throw ValidationError("two checkpoint folders given: '\(folder)' and --checkpoint '\(checkpoint)'")
        }
    }

    func run() throws {
        let dir = folder ?? checkpoint ?? ""
        let t = try parseExportType(type)
        do {
            let start = Date()
            if merge { try exportMerged(dir, type: t) } else { try Checkpoint.exportGGUF(dir, to: out, type: t) }
            let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
            FileHandle.standardError.write(Data(String(format: "[export] %@ → %@ (%@, %@) in %.1f s\n", dir, out, t.rawValue,
                                                       formatBytes(size), Date().timeIntervalSince(start)).utf8))
        } catch let e as OffloadError {
            FileHandle.standardError.write(Data("error: \(e.message)\n".utf8))
            throw ExitCode.failure
        }
    }
}

extension Export {
    /// The base model with the adapter in `dir` merged in, as GGUF.
    func exportMerged(_ dir: String, type: ExportType) throws {
        let info = FileManager.default.fileExists(atPath: dir + "/trainer.json") ? try Checkpoint.readInfo(dir) : nil
        guard let basePath = model ?? info?.sourceModel else {
            throw OffloadError("[export] \(dir): give the adapter's base model with --model FILE")
        }
        let base = try loadWeights(basePath)
        let adapters = try info.map { try Checkpoint.loadAdapters(dir, info: $0) }
            ?? loadAdapter(dir, for: base)
        try exportGGUF(from: LoRAMergedWeights(base: base, adapters: adapters), to: out, type: type,
                       tokenizerFrom: (base as? GGUFWeights)?.file)
    }
}

struct QuantizeModel: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Write any model Offload reads as a GGUF file in one of llama-quantize's mixes.",
        discussion: """
        IN is a GGUF file (any type Offload reads; quantized tensors are dequantized first) or a \
        Hugging Face folder (config.json + safetensors). Each matrix gets the type llama-quantize \
        gives it for the mix, quantized as ggml's reference quantizers do (no importance matrix). \
        tokenizer.* metadata comes from IN when it is a GGUF, else from --tokenizer or a \
        tokenizer.gguf in the folder.
        Examples:
          offload quantize model.f32.gguf model.Q4_K_M.gguf --type q4_k_m
          offload quantize ./SmolLM2-135M ./smol.Q6_K.gguf --type q6_k
        """)

    @Argument(help: "The model to read: a GGUF file or a Hugging Face folder.") var input: String
    @Argument(help: "The GGUF file to write (atomically).") var output: String
    @Option(help: typeHelp) var type: String
    @Option(help: "A GGUF whose tokenizer.* metadata to copy (default: IN's, or IN/tokenizer.gguf).") var tokenizer: String?
    @Option(help: "Threads for quantizing.") var threads: Int = defaultThreads()

    func validate() throws {
        _ = try parseExportType(type)
        if threads < 1 { throw ValidationError("--threads must be at least 1, got \(threads)") }
    }

    func run() throws {
        let t = try parseExportType(type)
        do {
            let start = Date()
            let source = try loadWeights(input)
            var tok: GGUFFile?
            if let tokenizer { tok = try GGUFFile(path: tokenizer) }
            else if source is HFCheckpoint {
                let path = (input as NSString).appendingPathComponent("tokenizer.gguf")
                if FileManager.default.fileExists(atPath: path) { tok = try GGUFFile(path: path) }
                else { FileHandle.standardError.write(Data("[quantize] warning: no tokenizer.gguf in \(input); the file has no vocabulary\n".utf8)) }
            }
            let pool = ComputePool(threads: threads)
            let tty = isatty(2) != 0
            try exportGGUF(from: source, to: output, type: t, tokenizerFrom: tok, pool: pool) { done, total, name, dtype in
                guard tty || done == total else { return }
                let line = "\r[quantize] \(done)/\(total) \(name) → \(dtype)".padding(toLength: 72, withPad: " ", startingAt: 0)
                FileHandle.standardError.write(Data(line.utf8))
            }
            let size = (try? FileManager.default.attributesOfItem(atPath: output)[.size] as? Int) ?? 0
            FileHandle.standardError.write(Data(String(format: "\n[quantize] %@ → %@ (%@, %@) in %.1f s\n", input, output,
                                                       t.rawValue, formatBytes(size), Date().timeIntervalSince(start)).utf8))
        } catch let e as OffloadError {
            FileHandle.standardError.write(Data("\nerror: \(e.message)\n".utf8))
            throw ExitCode.failure
        }
    }
}
