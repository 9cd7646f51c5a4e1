import ArgumentParser

struct Profile: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "profile", abstract: "(in progress)")
    func run() throws { throw ValidationError("'profile' is not built yet") }
}
