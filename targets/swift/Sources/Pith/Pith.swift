// A thin Swift API over pith.h: a model shared by sessions, and generation as an
// AsyncThrowingStream of whole-UTF-8 text pieces that is cancelled (pith_session_cancel,
// within one token) when the consuming task is cancelled.
import CPith
import Foundation

/// A failed pith call: the C status and `pith_last_error`'s message.
public struct PithError: Error, CustomStringConvertible {
    public let status: PithStatus
    public let message: String
    public var description: String { "pith: \(String(cString: pith_status_string(status))): \(message)" }
}

@inline(__always)
private func check(_ st: PithStatus, _ handle: UnsafeRawPointer?) throws {
    if st != PITH_OK {
        throw PithError(status: st, message: String(cString: pith_last_error(handle)))
    }
}

/// A loaded model: read-only, shareable across threads and tasks.
public final class Model: @unchecked Sendable {
    let handle: OpaquePointer

    /// Memory-maps a GGUF file. `threads`: default worker threads of new sessions (0 = one per core).
    public init(path: String, threads: Int32 = 0) throws {
        var p = pith_model_params_default()
        p.n_threads = threads
        var out: OpaquePointer?
        try check(pith_model_load(path, &p, &out), nil)
        guard let h = out else { throw PithError(status: PITH_ERR_OTHER, message: "no handle") }
        handle = h
    }

    /// Loads a model from bytes (copied).
    public init(data: Data, threads: Int32 = 0) throws {
        var p = pith_model_params_default()
        p.n_threads = threads
        var out: OpaquePointer?
        let st = data.withUnsafeBytes { pith_model_load_from_buffer($0.baseAddress, $0.count, &p, &out) }
        try check(st, nil)
        guard let h = out else { throw PithError(status: PITH_ERR_OTHER, message: "no handle") }
        handle = h
    }

    deinit { _ = pith_model_free(handle) }

    public func tokenize(_ text: String, addBos: Bool = false) throws -> [UInt32] {
        var n = 0
        let st = pith_tokenize(handle, text, addBos, true, nil, 0, &n)
        if st != PITH_ERR_BUFFER_TOO_SMALL { try check(st, UnsafeRawPointer(handle)) }
        var ids = [UInt32](repeating: 0, count: n)
        try check(pith_tokenize(handle, text, addBos, true, &ids, n, &n), UnsafeRawPointer(handle))
        return ids
    }

    public func newSession(contextSize: UInt32 = 2048, threads: Int32 = -1) throws -> Session {
        var p = pith_session_params_default()
        p.n_ctx = contextSize
        p.n_threads = threads
        var out: OpaquePointer?
        try check(pith_session_new(handle, &p, &out), UnsafeRawPointer(handle))
        guard let h = out else { throw PithError(status: PITH_ERR_OTHER, message: "no handle") }
        return Session(handle: h, model: self)
    }
}

/// Sampling and stopping options.
public struct GenerateOptions: Sendable {
    public var maxTokens: Int32 = 128
    public var temperature: Float = 0.8
    public var topK: Int32 = 40
    public var topP: Float = 0.95
    public var minP: Float = 0.05
    public var seed: UInt64 = 42
    public init() {}
}

/// One conversation. Use it from one task at a time; `cancel()` is safe from anywhere.
public final class Session: @unchecked Sendable {
    let handle: OpaquePointer
    let model: Model  // keeps the model alive

    init(handle: OpaquePointer, model: Model) {
        self.handle = handle
        self.model = model
    }

    deinit { _ = pith_session_free(handle) }

    /// Stops the running generation within one token.
    public func cancel() { _ = pith_session_cancel(handle) }

    /// Generates a continuation of `prompt` as a stream of text pieces (whole UTF-8 only).
    /// Cancelling the consuming task cancels the generation.
    public func generate(_ prompt: String, options: GenerateOptions = GenerateOptions())
        -> AsyncThrowingStream<String, Error>
    {
        AsyncThrowingStream { continuation in
            final class Box {
                let c: AsyncThrowingStream<String, Error>.Continuation
                init(_ c: AsyncThrowingStream<String, Error>.Continuation) { self.c = c }
            }
            let box = Unmanaged.passRetained(Box(continuation))
            continuation.onTermination = { [handle] _ in _ = pith_session_cancel(handle) }
            // Generation blocks; run it on its own thread, not on the cooperative pool.
            let thread = Thread { [self] in
                var gp = pith_gen_params_default()
                gp.max_tokens = options.maxTokens
                gp.temperature = options.temperature
                gp.top_k = options.topK
                gp.top_p = options.topP
                gp.min_p = options.minP
                gp.seed = options.seed
                gp.user_data = box.toOpaque()
                gp.on_text = { text, _, user in
                    guard let text = text, let user = user else { return 1 }
                    let b = Unmanaged<Box>.fromOpaque(user).takeUnretainedValue()
                    if case .terminated = b.c.yield(String(cString: text)) { return 1 }
                    return 0
                }
                let st = pith_session_generate(self.handle, prompt, &gp, nil)
                if st == PITH_OK {
                    continuation.finish()
                } else {
                    continuation.finish(throwing: PithError(
                        status: st, message: String(cString: pith_last_error(UnsafeRawPointer(self.handle)))))
                }
                box.release()
            }
            thread.start()
        }
    }
}
