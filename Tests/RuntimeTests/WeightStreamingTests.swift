// Weight streaming under a budget: logits bit-identical to the resident model
// for budgets from everything resident down to the minimum, the budget held,
// the bytes read, and the error below the minimum.
import Foundation
import Formats
import Models
import Planning
import Runtime
import Tensors
import XCTest

final class WeightStreamingTests: XCTestCase {
    static var modelPath: String {
        AssetCache.directory
            + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    }
    let prompt = [1, 504, 905, 436, 253, 1379, 288, 325, 8167, 28, 564, 4642]   // 12 rows: the sgemm prefill path
    let decodeSteps = 6

    func weights() throws -> GGUFWeights {
        guard FileManager.default.fileExists(atPath: Self.modelPath) else {
            XCTFail("missing asset \(Self.modelPath): run scripts/fetch-assets.sh")
            throw CocoaError(.fileNoSuchFile)
        }
        return try GGUFWeights(path: Self.modelPath)
    }

    /// Logits of the prompt, then of each greedy decode step.
    func run(_ m: LlamaModel) throws -> [[Float]] {
        let cache = try m.newCache(capacity: prompt.count + decodeSteps)
        var out = [try m.forward(prompt, cache: cache)]
        for _ in 0..<decodeSteps {
            let next = out.last!.indices.max { out.last![$0] < out.last![$1] }!
            out.append(try m.forward([next], cache: cache))
        }
        return out
    }

    func streamed(_ w: GGUFWeights, budget: Int, context: Int? = nil) throws -> (LlamaModel, WeightStreamer) {
        try makeStreamingModel(weights: w, budget: budget, threads: 2, promptTokens: prompt.count,
                               contextCapacity: context ?? prompt.count + decodeSteps)
    }

    func minimumBudget(_ w: GGUFWeights) throws -> Int {
        do {
            _ = try streamed(w, budget: 1)
            XCTFail("a 1-byte budget was accepted")
            return 0
        } catch let e as OffloadError {
            // "... below the minimum 5.44 MiB (5705728 bytes) ..."
            let m = e.message
            guard let r = m.range(of: #"minimum [0-9.]+ [KMG]iB \(([0-9]+) bytes\)"#, options: .regularExpression) else {
                XCTFail("no minimum in: \(m)"); return 0
            }
            return Int(m[r].split(separator: "(")[1].split(separator: " ")[0])!
        }
    }

    func testLogitsBitIdenticalForBudgetsDownToTheMinimum() throws {
        let w = try weights()
        let reference = try run(LlamaModel(source: w, threads: 2))
        let minimum = try minimumBudget(w)
        var seen = Set<Int>()
        for budget in [400_000_000, 60_000_000, 20_000_000, minimum + 3 << 20, minimum] {
            let (m, s) = try streamed(w, budget: budget)
            let got = try run(m)
            s.stop()
            seen.insert(s.plan.streamed.count)
            XCTAssertEqual(got.count, reference.count)
            for (i, (a, b)) in zip(got, reference).enumerated() {
                XCTAssertTrue(a == b, "budget \(budget): logits of step \(i) differ from the resident model "
                              + "(max |Δ| \(zip(a, b).map { abs($0 - $1) }.max() ?? 0))")
            }
            XCTAssertLessThanOrEqual(s.peakComputeBytes, budget, "budget \(budget) exceeded")
            // The tier really holds the weights and cache: at least one stage buffer and the KV cache.
            XCTAssertGreaterThanOrEqual(s.peakComputeBytes, s.plan.slotBytes + s.plan.kvCacheBytes)
        }
        // The budgets span everything resident to everything streamed.
        XCTAssertTrue(seen.contains(0), "no budget kept every stage resident: \(seen)")
        XCTAssertTrue(seen.contains { $0 >= 43 }, "no budget streamed (nearly) every stage: \(seen)")
    }

    func testBelowMinimumIsAnErrorNamingTheMinimumAndTheMinimumRuns() throws {
        let w = try weights()
        let minimum = try minimumBudget(w)
        XCTAssertGreaterThan(minimum, 2 << 20)
        XCTAssertThrowsError(try streamed(w, budget: minimum - 1)) { e in
            XCTAssertTrue("\(e)".contains("below the minimum"), "\(e)")
        }
        let (m, s) = try streamed(w, budget: minimum)
        defer { s.stop() }
        XCTAssertEqual(s.plan.ringSlots, 1)
        _ = try run(m)
        XCTAssertLessThanOrEqual(s.peakComputeBytes, minimum)
    }

    func testDecodeReadsEveryStreamedStageOncePerToken() throws {
        let w = try weights()
        let (m, s) = try streamed(w, budget: 12_000_000)
        _ = try run(m)
        s.stop()
        let st = s.stats
        XCTAssertEqual(st.decodeForwards, decodeSteps)
        let perStep = s.plan.streamed.map { s.plan.stages[$0].bufferBytes }.reduce(0, +)
        XCTAssertGreaterThan(perStep, 60 << 20)
        // Each decode step reads the streamed stages and one embedding row (one or two pages).
        let extra = st.decodeBytesRead - decodeSteps * perStep
        XCTAssertGreaterThanOrEqual(extra, decodeSteps * 4096)
        XCTAssertLessThanOrEqual(extra, decodeSteps * 8192)
        XCTAssertEqual(st.bytesDiscarded, 0, "decode read-ahead was thrown away")
    }

    func testStagesCoverEveryMatrixOnceInForwardOrder() throws {
        let w = try weights()
        let stages = try weightStages(of: w.file, config: w.config)
        XCTAssertEqual(Array(stages.prefix(30).map(\.name)), (0..<30).map { "blk.\($0)" })
        let head = stages.dropFirst(30)
        XCTAssertGreaterThan(head.count, 1)
        // Head chunks tile the vocabulary without gap or overlap.
        var next = 0
        for s in head {
            XCTAssertEqual(s.matrices[0].firstRow, next)
            next += s.matrices[0].rows
        }
        XCTAssertEqual(next, w.config.vocabSize)
        for s in stages {
            for m in s.matrices {
                // Each matrix lies inside one read run, at the same place as in the file.
                XCTAssertTrue(s.runs.contains { r in
                    m.bufferOffset - r.bufferOffset == m.fileOffset - r.fileOffset
                        && m.fileOffset >= r.fileOffset && m.fileOffset + m.byteCount <= r.fileOffset + r.length
                }, "\(m.name) in \(s.name)")
                XCTAssertEqual(m.byteCount, (try w.tensor(m.name).bytes.count) * m.rows / (try w.tensor(m.name).shape[0]))
            }
            XCTAssertTrue(s.runs.allSatisfy { $0.fileOffset % 4096 == 0 && $0.length % 4096 == 0 })
        }
    }

    func testKVCacheOnDiskIsBitIdenticalAndGoesThroughTheDisk() throws {
        let w = try weights()
        let reference = try run(LlamaModel(source: w, threads: 2))
        // A 2048-position context: 94 MiB of KV cache, far more than the budget.
        for budget in [12_000_000, 30_000_000] {
            let (m, s) = try streamed(w, budget: budget, context: 2048)
            XCTAssertGreaterThan(s.plan.kvDiskHeads, 45, "budget \(budget)")
            XCTAssertEqual(s.plan.kvResidentHeads.last, 0, "the last layer's heads are the first on disk")
            let got = try run(m)
            s.stop()
            for (i, (a, b)) in zip(got, reference).enumerated() {
                XCTAssertTrue(a == b, "budget \(budget), KV on disk: logits of step \(i) differ")
            }
            let kv = try XCTUnwrap(s.kvStore)
            // Every disk head read its prefix's whole pages back each step (a page is 16 positions of 64
            // floats, so the 12-token prompt's first page is on disk from step 4 on), and wrote that page.
            let heads = s.plan.kvDiskHeads, page = 16 * 64 * 4
            XCTAssertGreaterThanOrEqual(kv.bytesWritten, heads * 2 * page)
            XCTAssertGreaterThanOrEqual(kv.bytesRead, heads * 2 * page * (decodeSteps - 4))
            XCTAssertLessThanOrEqual(s.peakComputeBytes, budget)
        }
    }
}
