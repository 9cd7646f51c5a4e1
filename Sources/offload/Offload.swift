// The `offload` command: plan, simulate and run Llama-family models beyond memory.
import ArgumentParser
import Memory
import Kernels

@main
struct Offload: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "offload",
        abstract: "Train and run Llama-family models larger than the memory that computes them.",
        discussion: """
        Offload reads real model files (GGUF, Hugging Face safetensors), plans where every \
        tensor lives (compute memory, host memory, disk) and what is recomputed, predicts the \
        cost, and runs the plan.
        """,
        subcommands: [Generate.self, Tokenize.self, Eval.self, Inspect.self, Plan.self, Profile.self,
                      Train.self, Export.self, QuantizeModel.self, Init.self, Serve.self, Chat.self])

    static func main() {
        BLASSetup.reexecWithAVX512KernelsIfUseful()
        MemoryTier.mapLargeAllocations()
        main(joiningNegativeValues(Array(CommandLine.arguments.dropFirst())))
    }

    /// `--opt -3` as `--opt=-3`: the argument parser takes a word that starts with a dash for an option,
    /// so a negative value would be reported as a missing one instead of reaching the option's own check
    /// ("--max-tokens must be 0 or more, got -3"). No option's name starts with a dash and a digit.
    static func joiningNegativeValues(_ args: [String]) -> [String] {
        var out: [String] = []
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "--" { out += args[i...]; break }
            if a.hasPrefix("--"), !a.contains("="), i + 1 < args.count, isNegativeNumber(args[i + 1]) {
                out.append(a + "=" + args[i + 1]); i += 2
            } else {
                out.append(a); i += 1
            }
        }
        return out
    }

    static func isNegativeNumber(_ s: String) -> Bool {
        let rest = s.dropFirst()
        return s.hasPrefix("-") && (rest.first?.isNumber == true || (rest.first == "." && rest.dropFirst().first?.isNumber == true))
    }
}
