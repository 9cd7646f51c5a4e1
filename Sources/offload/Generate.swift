import ArgumentParser
struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate")
}
