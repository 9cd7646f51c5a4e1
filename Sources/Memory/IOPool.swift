// A small pool of threads that run blocking I/O jobs (pread/pwrite) in FIFO
// order, so several requests are in flight at once. Not for compute: the
// threads spend their time blocked in the kernel.
import Foundation

public final class IOPool: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [(@Sendable () -> Void)?] = []  // taken jobs are nil: they must not keep their captures alive
    private var head = 0
    private var stopping = false
    private var running = 0
    private let exited = DispatchGroup()
    public let threads: Int

    public init(threads: Int, name: String) {
        self.threads = max(1, threads)
        for i in 0..<self.threads {
            exited.enter()
            let t = Thread { [self] in work() }
            t.name = "\(name)-\(i)"
            t.stackSize = 256 << 10
            t.start()
        }
    }

    public func submit(_ job: @escaping @Sendable () -> Void) {
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Jobs queued or running.
    public var pending: Int {
        condition.lock(); defer { condition.unlock() }
        return jobs.count - head + running
    }

    /// Finishes the queued jobs, then stops the threads and waits for them.
    ///
    /// Called from one of the pool's own threads (the owner's deinit can run on
    /// the thread that dropped its last reference), it does not wait: that
    /// thread cannot exit while it is inside this call.
    public func shutdown() {
        condition.lock()
        let already = stopping
        stopping = true
        let onOwnThread = workers.contains { pthread_equal($0, pthread_self()) != 0 }
        condition.broadcast()
        condition.unlock()
        if !already && !onOwnThread { exited.wait() }
    }

    private var workers: [pthread_t] = []

    private func work() {
        defer { exited.leave() }
        condition.lock()
        workers.append(pthread_self())
        condition.unlock()
        while true {
            condition.lock()
            while head == jobs.count && !stopping { condition.wait() }
            if head == jobs.count {
                condition.unlock()
                return
            }
            let job = jobs[head]!
            jobs[head] = nil
            head += 1
            if head >= 1024 && head * 2 > jobs.count {
                jobs.removeFirst(head)
                head = 0
            }
            running += 1
            condition.unlock()
            job()
            condition.lock()
            running -= 1
            condition.unlock()
        }
    }
}
