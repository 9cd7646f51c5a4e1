// Runs the built `offload` binary and captures what a user would see.
import Foundation
import Tensors
import XCTest

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

enum CLI {
    /// The products folder holding both this test bundle and `offload`.
    static var binary: String {
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        // swift test runs `<products>/OffloadPackageTests.xctest`; Xcode-style bundles nest deeper.
        while !FileManager.default.fileExists(atPath: dir.appendingPathComponent("offload").path), dir.path != "/" {
            dir = dir.deletingLastPathComponent()
        }
        return dir.appendingPathComponent("offload").path
    }

    static var cache: String {
        AssetCache.directory
    }
    static var smolLM2: String { cache + "/models/SmolLM2-135M-Instruct.Q4_1.gguf" }
    static var fixtures: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Fixtures")
    }

    static func run(_ args: [String], file: StaticString = #filePath, line: UInt = #line) throws -> CommandResult {
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            XCTFail("offload binary not found at \(binary): build it with `swift build -c release`", file: file, line: line)
            throw CocoaError(.fileNoSuchFile)
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Read before waiting so a large output cannot fill the pipe and block the child.
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .exit, "offload \(args.joined(separator: " ")) was killed by a signal",
                       file: file, line: line)
        return CommandResult(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                             stderr: String(decoding: e, as: UTF8.self))
    }

    static func tempDir() throws -> URL {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("offload-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        return d
    }
}
