import ArgumentParser
struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspect")
}
