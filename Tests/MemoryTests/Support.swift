// Helpers shared by the Memory tests: seeded random bytes, checksums, scratch folders.
import Foundation
import Memory
import Tensors
import XCTest

/// SplitMix64: the same bytes on every run, so a failure reproduces.
struct SeededBytes {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 { var g = SeededGenerator(seed: state); defer { state = g.state }; return g.next() }
    mutating func fill(_ p: UnsafeMutableRawBufferPointer) {
        var i = 0
        while i < p.count {
            var word = next()
            for _ in 0..<8 where i < p.count {
                p[i] = UInt8(truncatingIfNeeded: word)
                word >>= 8
                i += 1
            }
        }
    }
    mutating func int(in range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.count))
    }
}

/// FNV-1a over the bytes.
func checksum(_ p: UnsafeRawBufferPointer) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in p { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h
}

func checksum(_ b: AlignedBuffer) -> UInt64 { checksum(UnsafeRawBufferPointer(b.bytes)) }

/// A fresh folder under /tmp, removed by the caller.
func scratchFolder(_ label: String) -> String {
    let path = NSTemporaryDirectory() + "offload-memtest-\(label)-\(getpid())-\(UUID().uuidString.prefix(8))"
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func entries(_ folder: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []).sorted()
}

/// Notices a disk store printed, collected for assertions.
final class NoticeLog: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    var sink: @Sendable (String) -> Void { { [self] line in lock.lock(); lines.append(line); lock.unlock() } }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return lines }
}

/// Message of an error thrown by `body`, failing the test when nothing is thrown.
func errorMessage(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) -> String {
    do {
        try body()
        XCTFail("expected an error", file: file, line: line)
        return ""
    } catch {
        return "\(error)"
    }
}

/// Runs `command` through /bin/sh and returns its exit status.
@discardableResult
func shell(_ command: String) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { return -1 }
    p.waitUntilExit()
    return p.terminationStatus
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.lock(); n += 1; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

/// The `offload` executable built beside this test bundle.
func offloadBinary() throws -> String {
    var candidates = [URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()]
    candidates += Bundle.allBundles.map { $0.bundleURL.deletingLastPathComponent() }
    for folder in candidates {
        let path = folder.appendingPathComponent("offload").path
        if FileManager.default.isExecutableFile(atPath: path) { return path }
    }
    throw TestFailure("the offload executable is not built next to the tests (looked in \(candidates.map(\.path))); run `swift build` first")
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
