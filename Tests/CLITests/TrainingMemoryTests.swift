// Peak resident memory of `offload train --budget` with parameters streamed from disk: the
// budget plus a fixed overhead (binary, Swift runtime, OpenBLAS, data), documented in
// docs/EXECUTOR.md: 31 MiB here for --config smollm2-135m at batch 4 × 256 under 256 MB. The
// test allows 48 MiB. The same run peaked 80 MiB over the budget while freed tier buffers stayed
// resident until their last reference went (a block's activations, 42 MiB, past its backward).
import Foundation
import XCTest

final class TrainingMemoryTests: XCTestCase {
    static let overhead = 48 << 20

    func testStreamedTrainingStaysWithinBudgetPlusOverhead() throws {
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let data = dir.appendingPathComponent("text.txt")
        try String(repeating: "To be, or not to be, that is the question. ", count: 200)
            .write(to: data, atomically: true, encoding: .utf8)
        let budget = 256_000_000
        let r = try CLI.run(["train", "--config", "smollm2-135m", "--data", data.path, "--batch", "4", "--seq-len", "256",
                             "--steps", "1", "--threads", "2", "--budget", "\(budget)", "--disk", dir.path])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stderr.contains("+stream: parameters, gradients and AdamW state on"), r.stderr)
        func bytes(_ number: Substring, _ unit: Substring) -> Int {
            let units: [Substring: Double] = ["B": 1, "KiB": 1024, "MiB": 1_048_576, "GiB": 1_073_741_824]
            return Int((Double(number) ?? .nan) * (units[unit] ?? .nan))
        }
        let m = try XCTUnwrap(r.stderr.firstMatch(of: /compute peak ([\d.]+) (\w+) \(\d+ bytes\), process peak resident \(VmHWM\) ([\d.]+) (\w+)/),
                              r.stderr)
        let compute = bytes(m.1, m.2), hwm = bytes(m.3, m.4)
        XCTAssertLessThanOrEqual(compute, budget, "compute peak")
        XCTAssertLessThanOrEqual(hwm, budget + Self.overhead,
                                 "VmHWM \(hwm) exceeds the budget \(budget) plus \(Self.overhead): \(m.0)")
    }
}
