// Spill files never outlive their process: a child (`offload profile
// --spill-child`, hidden) holds a disk store, then exits, fails, or is
// signalled, and its spill folder must be gone; after SIGKILL, which nothing
// can catch, the next store in the same folder removes it.
import Foundation
import Memory
import XCTest

final class SpillCleanupTests: XCTestCase {
    var root = ""
    override func setUp() { root = scratchFolder("cleanup") }
    override func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    /// Starts a child holding a disk store under `root`; returns it and its spill folder.
    func startChild(_ then: String) throws -> (Process, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try offloadBinary())
        p.arguments = ["profile", "--spill-child", root, "--spill-child-then", then]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("ready ") else {
            p.terminate()
            throw TestFailure("child did not get ready: '\(text)'")
        }
        return (p, String(text.dropFirst("ready ".count)))
    }

    func assertHeldSpillFiles(_ folder: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(folder.hasPrefix(root + "/offload-spill-"), folder, file: file, line: line)
        XCTAssertEqual(entries(folder), ["lock", "spill.bin"], file: file, line: line)
        let size = (try? FileManager.default.attributesOfItem(atPath: folder + "/spill.bin")[.size] as? Int) ?? 0
        XCTAssertGreaterThanOrEqual(size, 3 << 20, "three 1 MiB tensors written", file: file, line: line)
    }

    func testSpillFilesGoneAfterNormalExit() throws {
        let (p, folder) = try startChild("exit")
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .exit)
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertEqual(entries(root), [])
    }

    func testSpillFilesGoneAfterAnError() throws {
        let (p, folder) = try startChild("fail")
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .exit)
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertEqual(entries(root), [])
    }

    func testSpillFilesGoneAfterSIGTERMDuringWrites() throws {
        let (p, folder) = try startChild("busy")
        assertHeldSpillFiles(folder)
        Thread.sleep(forTimeInterval: 0.1)  // let writes be in flight
        kill(p.processIdentifier, SIGTERM)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .uncaughtSignal, "dies of the signal, as without the handler")
        XCTAssertEqual(p.terminationStatus, SIGTERM)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertEqual(entries(root), [])
    }

    func testSpillFilesGoneAfterSIGINT() throws {
        let (p, folder) = try startChild("wait")
        assertHeldSpillFiles(folder)
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationReason, .uncaughtSignal)
        XCTAssertEqual(p.terminationStatus, SIGINT)
        XCTAssertEqual(entries(root), [])
    }

    func testFolderLeftBySIGKILLIsRemovedAtNextStart() throws {
        let (p, folder) = try startChild("wait")
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, SIGKILL)
        assertHeldSpillFiles(folder)  // nothing runs on SIGKILL: the folder stays
        let notices = NoticeLog()
        let store = try DiskStore(roots: [root], notice: notices.sink)
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        XCTAssertEqual(notices.all.count, 1, "\(notices.all)")
        XCTAssertTrue(notices.all.first?.contains("removed stale spill folder \(folder)") ?? false, "\(notices.all)")
        XCTAssertTrue(notices.all.first?.contains("left by process \(p.processIdentifier)") ?? false, "\(notices.all)")
        XCTAssertEqual(entries(root), [URL(fileURLWithPath: store.spillFolders[0]).lastPathComponent])
        store.close()
        XCTAssertEqual(entries(root), [])
    }
}

