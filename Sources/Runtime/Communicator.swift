// The ranks of a job that Open MPI's `mpirun` started: rank, size and the few collectives data-parallel
// training needs (all-gather, all-to-all, gather, barrier), over CPlatform's dlopen of libmpi.so.40.
// MPI is optional: nothing here runs unless the process was started by mpirun, and a missing library
// is an error naming the Debian packages. Sums are never left to MPI (its reduction order may change
// with the algorithm it picks): callers move bytes with these calls and add in rank order themselves.

internal import CPlatform
import Foundation
import Tensors

public final class Communicator: @unchecked Sendable {
    public let rank: Int
    public let size: Int
    /// Ranks of the job on this machine (Open MPI's local size): the default thread count divides the cores by it.
    public let localSize: Int
    private var finalized = false

    /// What to install when libmpi is missing.
    public static let packageHint = "install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi3)"

    /// Whether this process was started by Open MPI's mpirun (OMPI_COMM_WORLD_SIZE set).
    public static var launchedByMPI: Bool { ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_SIZE"] != nil }

    /// The job's communicator when mpirun started this process; nil for a plain process. A launcher other than
    /// Open MPI's (PMI_RANK set by MPICH's hydra) is refused: Offload binds Open MPI's ABI.
    public static func fromEnvironment() throws -> Communicator? {
        let env = ProcessInfo.processInfo.environment
        guard env["OMPI_COMM_WORLD_SIZE"] != nil else {
            if env["PMI_RANK"] != nil || env["PMI_SIZE"] != nil {
                throw OffloadError("[mpi] this process was started by an MPI launcher other than Open MPI's mpirun "
                                   + "(PMI_RANK is set); Offload runs on Open MPI: \(packageHint)")
            }
            return nil
        }
        return try Communicator()
    }

    private init() throws {
        var message = [CChar](repeating: 0, count: 512)
        guard cm_load(&message, Int32(message.count)) == 0 else {
            let why = String(cString: message)
            throw OffloadError("[mpi] cannot load Open MPI's library (\(why)); \(Communicator.packageHint)")
        }
        guard cm_init() == 0 else { throw OffloadError("[mpi] MPI_Init failed") }
        rank = Int(cm_rank()); size = Int(cm_size())
        localSize = Int(ProcessInfo.processInfo.environment["OMPI_COMM_WORLD_LOCAL_SIZE"] ?? "") ?? 1
    }

    /// Ends MPI in this process (every rank must call it); nothing may be called after.
    public func finalize() {
        guard !finalized else { return }
        finalized = true
        _ = cm_finalize()
    }

    /// Ends every rank of the job: after an error on one rank, so the others do not wait in a collective.
    public func abort(code: Int32 = 1) -> Never {
        cm_abort(code)
        exit(code)
    }

    /// Prints `message` as this rank's error and ends every rank of the job.
    public func abort(message: String) -> Never {
        FileHandle.standardError.write(Data("error: \(size > 1 ? "rank \(rank): " : "")\(message)\n".utf8))
        abort()
    }

    private func check(_ code: Int32, _ what: String) {
        // Open MPI's default handler aborts the job on an error; this is the net for a handler that returns.
        if code != 0 {
            FileHandle.standardError.write(Data("error: [mpi] rank \(rank): \(what) failed (MPI error \(code))\n".utf8))
            abort()
        }
    }

    /// Every rank's `values` (the same count on every rank), in rank order.
    public func allGather<T: BitwiseCopyable>(_ values: [T]) -> [[T]] {
        let n = values.count
        var all = [T](unsafeUninitializedCapacity: n * size) { _, count in count = n * size }
        values.withUnsafeBytes { send in
            all.withUnsafeMutableBytes { receive in
                check(cm_allgather_bytes(send.baseAddress, Int32(send.count), receive.baseAddress), "MPI_Allgather")
            }
        }
        return (0..<size).map { Array(all[$0 * n ..< ($0 + 1) * n]) }
    }

    /// All-to-all of floats: piece j of `send` (counts[j] floats at displacements[j]) goes to rank j.
    public func allToAll(send: UnsafePointer<Float>, counts sendCounts: [Int32], displacements sendDisplacements: [Int32],
                         receive: UnsafeMutablePointer<Float>, counts receiveCounts: [Int32], displacements receiveDisplacements: [Int32]) {
        check(cm_alltoallv_floats(send, sendCounts, sendDisplacements, receive, receiveCounts, receiveDisplacements),
              "MPI_Alltoallv")
    }

    /// In place: rank i's counts[i] floats at displacements[i] of `buffer` reach every rank.
    public func allGatherInPlace(_ buffer: UnsafeMutablePointer<Float>, counts: [Int32], displacements: [Int32]) {
        check(cm_allgatherv_floats_in_place(buffer, counts, displacements), "MPI_Allgatherv")
    }

    /// Rank i's `count` bytes at `send` into `receive` + displacements[i] on `root`.
    public func gather(_ send: UnsafeRawPointer, count: Int, into receive: UnsafeMutableRawPointer?, counts: [Int32],
                       displacements: [Int32], root: Int = 0) {
        check(cm_gatherv_bytes(send, Int32(count), receive, counts, displacements, Int32(root)), "MPI_Gatherv")
    }

    public func barrier() { check(cm_barrier(), "MPI_Barrier") }
}
