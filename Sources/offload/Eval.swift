import ArgumentParser
struct Eval: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "eval")
}
