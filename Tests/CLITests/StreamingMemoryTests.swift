// Peak resident memory of a budgeted `generate`: the budget plus a fixed overhead
// (binary, Swift runtime, OpenBLAS, tokenizer and GGUF metadata, norms, logits),
// documented in docs/STREAMING.md: 46–65 MiB here, the upper end when the GGUF is in
// the page cache (the kernel maps cached pages around each fault of the mapped file).
// The test allows 80 MiB; a run that kept the model resident (92 MiB of weights) or
// leaked its stream buffers would exceed it.
import Foundation
import XCTest

final class StreamingMemoryTests: XCTestCase {
    static let overhead = 80 << 20

    func testResidentMemoryStaysWithinBudgetPlusOverhead() throws {
        for budget in [8_000_000, 20_000_000, 60_000_000] {
            let r = try CLI.run(["generate", "--model", CLI.smolLM2, "--prompt", "To be, or not to be",
                                 "--max-tokens", "6", "--temperature", "0", "--budget", "\(budget)", "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
            let rss = try XCTUnwrap(obj["peak_resident_bytes"] as? Int)
            let streaming = try XCTUnwrap(obj["streaming"] as? [String: Any])
            let compute = try XCTUnwrap(streaming["peak_compute_bytes"] as? Int)
            XCTAssertLessThanOrEqual(compute, budget, "budget \(budget): compute peak")
            XCTAssertLessThanOrEqual(rss, budget + Self.overhead,
                                     "budget \(budget): VmHWM \(rss) exceeds the budget plus \(Self.overhead)")
        }
    }
}
