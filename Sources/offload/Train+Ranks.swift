// `offload train` on several ranks: `mpirun -np N offload train ...` (or `--ranks N`, which starts
// mpirun itself on this machine). Every rank reads the same model and data; rank 0 alone prints and
// writes --log and checkpoints; flags, model and data are checked to be the same on every rank
// before the first step. The engine is Runtime.DataParallel.

import Foundation
import Models
import Runtime
import Tensors

/// Whether this process may print progress and notes (rank 0 of a job, or a lone process).
nonisolated(unsafe) var printsProgress = true

extension Train {
    /// `--ranks N` outside mpirun: runs `mpirun -np N` on this machine with the same command, and exits with its status.
    func launchRanks(_ n: Int) throws -> Never {
        guard let mpirun = findExecutable("mpirun") else {
            throw OffloadError("[train] --ranks \(n) starts Open MPI's mpirun, which is not on PATH; \(Communicator.packageHint)")
        }
        var args = ["-np", "\(n)"]
        if n > ProcessInfo.processInfo.activeProcessorCount { args.append("--oversubscribe") }
        if geteuid() == 0 { args.append("--allow-run-as-root") }
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        args.append(me)
        var rest = Array(CommandLine.arguments.dropFirst()), i = 0
        while i < rest.count {
            if rest[i] == "--ranks" { rest.removeSubrange(i..<min(i + 2, rest.count)) }
            else if rest[i].hasPrefix("--ranks=") { rest.remove(at: i) }
            else { i += 1 }
        }
        args += rest
        let p = Process()
        p.executableURL = URL(fileURLWithPath: mpirun)
        p.arguments = args
        try p.run()
        p.waitUntilExit()
        Foundation.exit(p.terminationStatus)
    }

    /// Checks that every rank runs the same flags, model weights and data; an error names the ranks that differ.
    /// `dataChecksum`: the data as checkpoints record it (`Checkpoint.dataChecksum`, hex).
    static func checkSameEverywhere(_ comm: Communicator, options: TrainingOptions, weights: FloatBuffer,
                                    dataChecksum: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var o = Checksum64(), w = Checksum64()
        try encoder.encode(options).withUnsafeBytes { o.update($0) }
        w.update(UnsafeRawBufferPointer(start: weights.base, count: weights.bytes))
        let all = comm.allGather([o.value, w.value, UInt64(dataChecksum, radix: 16) ?? 0])
        for (k, what) in ["training options (flags)", "model weights", "training data"].enumerated() {
            let differ = (1..<comm.size).filter { all[$0][k] != all[0][k] }
            if !differ.isEmpty {
                throw OffloadError("[train] rank\(differ.count > 1 ? "s" : "") \(differ.map(String.init).joined(separator: ", ")) "
                                   + "\(differ.count > 1 ? "have" : "has") other \(what) than rank 0: every rank must run the same command on the same files")
            }
        }
    }
}

func findExecutable(_ name: String) -> String? {
    (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        .map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}
