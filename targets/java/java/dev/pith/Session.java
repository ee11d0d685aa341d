package dev.pith;

/**
 * One conversation (KV cache, sampler). Used by one thread at a time (a second thread's call
 * fails with PITH_ERR_BUSY); {@link #cancel()} may be called from any thread.
 */
public final class Session implements AutoCloseable {
    private volatile long handle;

    Session(long handle) {
        this.handle = handle;
    }

    private long handle() {
        long h = handle;
        if (h == 0) {
            throw new IllegalStateException("the session is closed");
        }
        return h;
    }

    /**
     * Continues the session's text with prompt and generates, streaming pieces to callback
     * (may be null). An empty prompt continues where the last call stopped.
     */
    public Result generate(String prompt, GenerateParams p, TextCallback callback) {
        StringBuilder text = new StringBuilder();
        TextCallback cb = piece -> {
            text.append(piece);
            return callback == null || callback.onText(piece);
        };
        int[] r = Native.sessionGenerate(handle(), prompt, p.maxTokens, p.temperature, p.topK, p.topP, p.minP,
                p.repeatPenalty, p.seed, p.stop, cb);
        return new Result(r, text.toString());
    }

    /** Greedy generation of up to maxTokens tokens; returns the text. */
    public String generate(String prompt, int maxTokens) {
        return generate(prompt, GenerateParams.greedy(maxTokens), null).text;
    }

    /** Stops the current generation within one token; callable from any thread. */
    public void cancel() {
        long h = handle;
        if (h != 0) {
            Native.sessionCancel(h);
        }
    }

    public void reset() {
        Native.sessionReset(handle());
    }

    /** The session's state (KV cache, tokens, sampler position). */
    public byte[] saveState() {
        return Native.sessionSave(handle());
    }

    /** Restores a saved state; the session then continues exactly as the saved one would. */
    public void loadState(byte[] state) {
        Native.sessionLoad(handle(), state);
    }

    @Override
    public synchronized void close() {
        long h = handle;
        handle = 0;
        if (h != 0) {
            Native.sessionFree(h);
        }
    }
}
