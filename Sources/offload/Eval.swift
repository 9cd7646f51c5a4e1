// `offload eval`: perplexity of a model on a text file.
import ArgumentParser
import Foundation
import Models
import Runtime
import Tensors

struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure a model's perplexity on a text file.",
        discussion: """
        The whole file is tokenized (no BOS); every token after the first is scored exactly once,
        with a context that restarts every --seq-len tokens (windows of seq-len+1 tokens, stride seq-len).
        Example: offload eval --model SmolLM2-135M-Instruct.Q4_1.gguf --data hamlet.txt --seq-len 256
        """)

    @Option(help: "A GGUF file or a Hugging Face model folder.") var model: String
    @Option(help: "Refuse the model file unless its SHA-256 digest is this (64 hex digits).") var sha256: String?
    @Option(help: "Apply this LoRA adapter (a peft adapter folder, or an `offload train --lora-rank` checkpoint) without merging it.")
    var lora: String?
    @Option(help: "A UTF-8 text file.") var data: String
    @Option(name: .customLong("seq-len"), help: "Context length of each window.") var seqLen = 512
    @Option(help: "Compute threads (default: all cores).") var threads: Int?
    @Flag(help: "Print one JSON object: tokens_scored, mean_nll, perplexity.") var json = false

    func validate() throws {
        guard seqLen >= 1 else { throw ValidationError("--seq-len must be at least 1, got \(seqLen)") }
        if let t = threads, t < 1 { throw ValidationError("--threads must be at least 1, got \(t)") }
    }

    func run() throws {
        guard let bytes = FileManager.default.contents(atPath: data) else {
            throw OffloadError("[eval] \(data): cannot read the file")
        }
        guard let text = String(data: bytes, encoding: .utf8) else {
            throw OffloadError("[eval] \(data): not valid UTF-8 text")
        }
        let source = try loadWeights(model, sha256: sha256)
        let tokenizer = try loadTokenizer(for: source, modelPath: model)
        let llama = try LlamaModel(source: source, threads: threads ?? defaultThreads())
        if let lora { try llama.setAdapters(loadAdapter(lora, for: source)) }
        let tokens = tokenizer.encode(text, addBOS: false)
        let start = now()
        let tty = isatty(2) != 0
        let r = try perplexity(model: llama, tokens: tokens, seqLen: seqLen) { done, total in
            if tty {
                FileHandle.standardError.write(Data("\r[eval] window \(done)/\(total)".utf8))
                if done == total { FileHandle.standardError.write(Data("\n".utf8)) }
            }
        }
        let seconds = now() - start
        if json {
            print(try jsonString(["tokens": tokens.count, "tokens_scored": r.tokensScored, "mean_nll": r.meanNLL,
                                  "perplexity": r.perplexity, "seq_len": seqLen, "seconds": seconds] as [String: Any]))
        } else {
            print(String(format: "%@: %d tokens scored, mean NLL %.4f, perplexity %.3f (%.1f s)",
                         (data as NSString).lastPathComponent, r.tokensScored, r.meanNLL, r.perplexity, seconds))
        }
    }
}
