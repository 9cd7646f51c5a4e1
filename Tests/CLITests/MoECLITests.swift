// `offload generate --budget` on a mixture of experts, as a user runs it: the experts it cannot
// keep are read from the GGUF file, and the tokens are the all-resident run's.
import Foundation
import Tensors
import XCTest

final class MoECLITests: XCTestCase {
    func tiny(_ f: String) throws -> String {
        let p = AssetCache.directory + "/models/tiny/" + f
        guard FileManager.default.fileExists(atPath: p) else {
            XCTFail("missing \(p): run python3 scripts/make-tiny-models.py")
            throw CocoaError(.fileNoSuchFile)
        }
        return p
    }

    func generate(_ model: String, _ extra: [String], line: UInt = #line) throws -> [String: Any] {
        let r = try CLI.run(["generate", "--model", model, "--prompt-tokens", "24", "--seed", "5", "--max-tokens", "10",
                             "--temperature", "0", "--ignore-eos", "--json", "--threads", "2"] + extra, line: line)
        XCTAssertEqual(r.status, 0, r.stderr, line: line)
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
    }

    func testBudgetedGenerationReadsExpertsAndGivesTheSameTokens() throws {
        for f in ["mixtral.f32.gguf", "qwen2moe.f32.gguf"] {
            let model = try tiny(f)
            let want = try generate(model, [])["tokens"] as! [Int]
            XCTAssertEqual(want.count, 10)
            for extra in [["--budget", "300KB"], ["--budget", "300KB", "--expert-policy", "lfu", "--expert-prefetch", "0"],
                          ["--budget", "2MB", "--expert-prefetch", "8"]] {
                let out = try generate(model, extra)
                XCTAssertEqual(out["tokens"] as! [Int], want, "\(f) \(extra)")
                let e = try XCTUnwrap(out["experts"] as? [String: Any], "\(f) \(extra): no experts report")
                let demands = e["demands"] as! Int, hits = e["hits"] as! Int
                XCTAssertGreaterThan(demands, 0)
                XCTAssertGreaterThan(e["bytes_read"] as! Int, 0, "\(f) \(extra): experts are read from the file")
                XCTAssertEqual((e["layers"] as! [[String: Any]]).count, 2)
                if extra.contains("300KB") { XCTAssertLessThan(hits, demands, "\(f) \(extra): a small pool misses") }
                if extra.contains("0") { XCTAssertEqual(e["prefetch_issued"] as! Int, 0) }
            }
        }
    }

    /// `plan` replays a run's routing trace and predicts the hit rate that run measured.
    func testPlanPredictsTheHitRateFromARoutingTrace() throws {
        let model = try tiny("mixtral.f32.gguf")
        let dir = try CLI.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let trace = dir.appendingPathComponent("routing.jsonl").path
        let run = try generate(model, ["--budget", "400KB", "--expert-prefetch", "0", "--routing-trace", trace])
        let measured = (run["experts"] as! [String: Any])["hit_rate"] as! Double
        let r = try CLI.run(["plan", "--model", model, "--mode", "generate", "--budget", "400KB", "--seq-len", "34",
                             "--prompt-tokens", "24", "--routing-trace", trace, "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let e = (try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any])["experts"] as! [String: Any]
        XCTAssertEqual(e["slots"] as? Int, (run["experts"] as! [String: Any])["slots"] as? Int, "the same pool")
        XCTAssertEqual(e["hit_rate"] as! Double, measured, accuracy: 1e-12)
        XCTAssertGreaterThan(e["bytes_per_token"] as! Double, 0)
        let bad = try CLI.run(["plan", "--model", model, "--mode", "generate", "--budget", "400KB", "--routing-trace", model])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("line 1"), bad.stderr)
    }

    func testBadExpertOffloadingInputIsRefusedClearly() throws {
        let model = try tiny("mixtral.f32.gguf")
        let small = try CLI.run(["generate", "--model", model, "--prompt-tokens", "8", "--budget", "100KB"])
        XCTAssertNotEqual(small.status, 0)
        XCTAssertTrue(small.stderr.contains("below the least this mixture of experts runs in"), small.stderr)
        let policy = try CLI.run(["generate", "--model", model, "--prompt-tokens", "8", "--budget", "1MB", "--expert-policy", "fifo"])
        XCTAssertNotEqual(policy.status, 0)
        XCTAssertTrue(policy.stderr.contains("--expert-policy must be one of lru, lfu"), policy.stderr)
        let prompts = try CLI.run(["generate", "--model", model, "--prompts", model, "--routing-trace", "/tmp/x.jsonl"])
        XCTAssertNotEqual(prompts.status, 0)
        XCTAssertTrue(prompts.stderr.contains("--routing-trace is not supported with --prompts"), prompts.stderr)
        let noBudget = try CLI.run(["generate", "--model", model, "--prompt-tokens", "8", "--expert-prefetch", "2"])
        XCTAssertNotEqual(noBudget.status, 0)
        XCTAssertTrue(noBudget.stderr.contains("give --budget too"), noBudget.stderr)
        let folder = try CLI.run(["generate", "--model", try tiny("mixtral"), "--prompt-tokens", "8", "--budget", "1MB"])
        XCTAssertNotEqual(folder.status, 0)
        XCTAssertTrue(folder.stderr.contains("from a GGUF file") || folder.stderr.contains("tokenizer"), folder.stderr)
        let train = try CLI.run(["plan", "--model", model, "--mode", "train", "--budget", "1MB"])
        XCTAssertNotEqual(train.status, 0)
        XCTAssertTrue(train.stderr.contains("mixture-of-experts"), train.stderr)
    }

    func testInspectShowsTheExperts() throws {
        let r = try CLI.run(["inspect", try tiny("qwen2moe.f32.gguf"), "--json", "--seq-len", "16"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        let e = try XCTUnwrap(o["experts"] as? [String: Any])
        XCTAssertEqual(e["count"] as? Int, 8)
        XCTAssertEqual(e["used"] as? Int, 4)
        XCTAssertEqual(e["shared_ffn_dim"] as? Int, 48)
        // 2 blocks × 4 unused experts × 3 matrices of 32 × 32 fewer parameters than the total per token.
        XCTAssertEqual(e["active_parameters"] as? Int, (o["parameters"] as! Int) - 2 * 4 * 3 * 32 * 32)
        XCTAssertLessThan(e["run_minimum_bytes"] as! Int, e["run_all_resident_bytes"] as! Int)
        // The least budget is the one `plan` names for the same context.
        let plan = try CLI.run(["plan", "--model", try tiny("qwen2moe.f32.gguf"), "--mode", "generate", "--budget", "10MB",
                                "--seq-len", "16", "--prompt-tokens", "16", "--json"])
        let p = (try JSONSerialization.jsonObject(with: Data(plan.stdout.utf8)) as! [String: Any])["experts"] as! [String: Any]
        XCTAssertEqual(p["minimum_budget"] as? Int, e["run_minimum_bytes"] as? Int)
        // --model, as every other command takes the model, says the same.
        XCTAssertEqual(try CLI.run(["inspect", "--model", try tiny("qwen2moe.f32.gguf"), "--json", "--seq-len", "16"]).stdout,
                       r.stdout)
        let text = try CLI.run(["inspect", try tiny("mixtral-split.f32.gguf")])
        XCTAssertTrue(text.stdout.contains("8 per block, 2 per token"), text.stdout)
        XCTAssertTrue(text.stdout.contains("blk.1.ffn_down.7.weight"), "the per-expert tensors are listed")
    }
}
