package dev.pith;

/** The JNI entry points (targets/java/src/lib.rs). Handles are C pointers; 0 = closed. */
final class Native {
    private Native() {}

    static {
        String path = System.getProperty("pith.library");
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("pith_jni");
        }
    }

    static native int abiVersion();

    static native long modelLoad(String path, int threads);

    static native void modelFree(long model);

    static native int[] tokenize(long model, String text, boolean addBos);

    static native String detokenize(long model, int[] ids);

    static native long sessionNew(long model, int nCtx, int threads);

    static native void sessionFree(long session);

    static native void sessionCancel(long session);

    static native void sessionReset(long session);

    /** Returns {stopReason, nPromptTokens, nTokens}. */
    static native int[] sessionGenerate(long session, String prompt, int maxTokens, float temperature, int topK,
            float topP, float minP, float repeatPenalty, long seed, String[] stop, TextCallback callback);

    static native byte[] sessionSave(long session);

    static native void sessionLoad(long session, byte[] state);

    /** Nanoseconds for n callback invocations the way generation makes them. */
    static native long benchCallbacks(TextCallback callback, int n);
}
