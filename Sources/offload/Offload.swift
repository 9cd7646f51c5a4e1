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
        main(nil)
    }
}
