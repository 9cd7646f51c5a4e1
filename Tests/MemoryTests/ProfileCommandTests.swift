// `offload profile` end to end: the JSON has the keys the planner reads, with
// measured (positive, plausible) values, and the disk is left clean.
import Foundation
import XCTest

final class ProfileCommandTests: XCTestCase {
    func run(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try offloadBinary())
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func testProfileWritesTheKeysThePlannerReads() throws {
        let root = scratchFolder("profile")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let outPath = root + "/profile.json"
        let r = try run(["profile", "--quick", "--json", "--disk", root, "--disk-bytes", "4MiB", "--out", outPath])
        XCTAssertEqual(r.status, 0, r.stderr)
        let printed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let written = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: outPath))) as? [String: Any])
        XCTAssertEqual(NSDictionary(dictionary: printed), NSDictionary(dictionary: written))
        for key in ["gemm_flops", "memcpy_bytes_per_second", "host_compute_bytes_per_second",
                    "disk_read_bytes_per_second", "disk_write_bytes_per_second"] {
            let value = try XCTUnwrap(printed[key] as? Double, key)
            XCTAssertGreaterThan(value, 1e7, "\(key) = \(value): not measured")
            XCTAssertLessThan(value, 1e14, "\(key) = \(value): not plausible")
        }
        let disk = try XCTUnwrap(printed["disk"] as? [[String: Any]])
        XCTAssertEqual(disk.map { $0["request_bytes"] as? Int }, [1 << 20, 1 << 20, 4 << 20, 4 << 20])
        XCTAssertEqual(disk.map { $0["queue_depth"] as? Int }, [1, 4, 1, 4])
        // The headline disk numbers are the disk store's default configuration (4 MiB, 4 threads).
        XCTAssertEqual(printed["disk_read_bytes_per_second"] as? Double, disk[3]["read_bytes_per_second"] as? Double)
        XCTAssertEqual((printed["gemm"] as? [Any])?.count, 6)
        // Both directions at once, and what I/O beside a GEMM takes from it (a 4 MiB tensor moves in
        // a few milliseconds, so the cost per byte is measured, if noisily, but must be a rate).
        let duplex = try XCTUnwrap(printed["disk_duplex_bytes_per_second"] as? Double)
        XCTAssertGreaterThan(duplex, 1e7); XCTAssertLessThan(duplex, 1e14)
        let ioCost = try XCTUnwrap(printed["io_compute_seconds_per_byte"] as? Double)
        XCTAssertGreaterThanOrEqual(ioCost, 0); XCTAssertLessThan(ioCost, 1e-6, "a microsecond per byte is not plausible")
        // The trainer's own kernels, timed on a training step: every rate measured and plausible, and
        // attention below the matrix products (it is not one big GEMM).
        let training = try XCTUnwrap(printed["training_kernels"] as? [String: Double], "training_kernels")
        for key in ["matmul_flops_per_second", "matmul_backward_flops_per_second", "attention_flops_per_second",
                    "attention_backward_flops_per_second", "elementwise_bytes_per_second",
                    "cross_entropy_logits_per_second", "adamw_parameters_per_second"] {
            let value = try XCTUnwrap(training[key], key)
            XCTAssertGreaterThan(value, 1e6, "\(key) = \(value): not measured")
            XCTAssertLessThan(value, 1e14, "\(key) = \(value): not plausible")
        }
        XCTAssertLessThan(training["attention_flops_per_second"]!, training["matmul_flops_per_second"]!)
        XCTAssertEqual(entries(root), ["profile.json"], "measurement spill folders removed")
    }

    /// `--read-file`: reads are measured from an existing file (every request inside it), writes still in
    /// --disk; a file too small for the measurement is refused by name.
    func testProfileReadsAnExistingFile() throws {
        let root = scratchFolder("profile-read")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let file = root + "/model.bin"
        FileManager.default.createFile(atPath: file, contents: Data(repeating: 7, count: 8 << 20))
        let r = try run(["profile", "--disk-only", "--json", "--disk", root, "--disk-bytes", "1MiB",
                         "--request-sizes", "256KiB,1MiB", "--queue-depths", "1,2", "--read-file", file])
        XCTAssertEqual(r.status, 0, r.stderr)
        let printed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        let disk = try XCTUnwrap(printed["disk"] as? [[String: Any]])
        XCTAssertEqual(disk.count, 4)
        for d in disk {
            let read = try XCTUnwrap(d["read_bytes_per_second"] as? Double), write = try XCTUnwrap(d["write_bytes_per_second"] as? Double)
            XCTAssertGreaterThan(read, 1e6); XCTAssertLessThan(read, 1e14)
            XCTAssertGreaterThan(write, 1e6); XCTAssertLessThan(write, 1e14)
        }
        XCTAssertEqual(entries(root), ["model.bin"], "the file is read, not changed; spill folders removed")
        let small = try run(["profile", "--disk-only", "--disk", root, "--disk-bytes", "8MiB", "--read-file", file])
        XCTAssertNotEqual(small.status, 0)
        XCTAssertTrue(small.stderr.contains("--read-file") && small.stderr.contains("too small"), small.stderr)
    }

    func testProfileRejectsABadSize() throws {
        let r = try run(["profile", "--disk-bytes", "lots"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(r.stderr.contains("--disk-bytes must be a size"), r.stderr)
    }
}
