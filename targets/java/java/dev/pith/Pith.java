package dev.pith;

/**
 * A loaded model: read-only, shared by any number of {@link Session}s on any threads. Close it
 * when done (sessions made from it keep the weights alive until they are closed too).
 */
public final class Pith implements AutoCloseable {
    private volatile long handle;

    private Pith(long handle) {
        this.handle = handle;
    }

    /** Memory-maps and loads a GGUF model. threads: default worker threads of its sessions (0 = one per core). */
    public static Pith load(String path, int threads) {
        return new Pith(Native.modelLoad(path, threads));
    }

    /** The C ABI version of the native library, (major << 16) | minor. */
    public static int abiVersion() {
        return Native.abiVersion();
    }

    long handle() {
        long h = handle;
        if (h == 0) {
            throw new IllegalStateException("the model is closed");
        }
        return h;
    }

    public int[] tokenize(String text, boolean addBos) {
        return Native.tokenize(handle(), text, addBos);
    }

    public String detokenize(int[] ids) {
        return Native.detokenize(handle(), ids);
    }

    /** A new conversation with a context of nCtx tokens (threads: -1 = the model's default). */
    public Session newSession(int nCtx, int threads) {
        return new Session(Native.sessionNew(handle(), nCtx, threads));
    }

    @Override
    public synchronized void close() {
        long h = handle;
        handle = 0;
        if (h != 0) {
            Native.modelFree(h);
        }
    }
}
