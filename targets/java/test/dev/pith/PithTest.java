package dev.pith;

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

/**
 * The Java binding end to end on the default model (path in $PITH_MODEL), JUnit-style
 * assertions without JUnit: every test method runs, failures are listed, exit status 1.
 */
public final class PithTest {
    private static String model;
    private static int checks = 0;

    static void check(boolean cond, String what) {
        checks++;
        if (!cond) {
            throw new AssertionError(what);
        }
    }

    static <T extends Throwable> T expectThrows(Class<T> type, Runnable r, String what) {
        try {
            r.run();
        } catch (Throwable t) {
            checks++;
            if (type.isInstance(t)) {
                return type.cast(t);
            }
            throw new AssertionError(what + ": expected " + type.getSimpleName() + ", got " + t, t);
        }
        throw new AssertionError(what + ": expected " + type.getSimpleName() + ", nothing was thrown");
    }

    static void abiVersion() {
        check(Pith.abiVersion() == (1 << 16), "ABI 1.0, got " + Integer.toHexString(Pith.abiVersion()));
    }

    static void missingFileThrows() {
        PithException e = expectThrows(PithException.class, () -> Pith.load("/nonexistent/model.gguf", 1), "missing file");
        check(e.getMessage().contains("PITH_ERR_IO") && e.getMessage().contains("/nonexistent/model.gguf"), e.getMessage());
        expectThrows(PithException.class, () -> Pith.load(null, 1), "null path");
        expectThrows(PithException.class, () -> Pith.load("/tmp", 1), "a directory");
    }

    static void tokenizeRoundTrip() {
        try (Pith p = Pith.load(model, 1)) {
            String text = "Hello world, héllo ✓!";
            int[] ids = p.tokenize(text, false);
            check(ids.length > 3, "ids " + ids.length);
            check(p.detokenize(ids).equals(text), "round trip: " + p.detokenize(ids));
            expectThrows(PithException.class, () -> p.detokenize(new int[] {1_000_000}), "bad id");
            expectThrows(PithException.class, () -> p.tokenize("a\0b", false), "NUL in text");
        }
    }

    static void greedyStreamsWholePieces() {
        try (Pith p = Pith.load(model, 1); Session s = p.newSession(256, 1)) {
            List<String> pieces = new ArrayList<>();
            Result r = s.generate("The capital of France is", GenerateParams.greedy(6), pieces::add);
            check(r.text.startsWith(" Paris."), "text: " + r.text);
            check(String.join("", pieces).equals(r.text), "pieces add up");
            check(r.tokens == 6 && r.stop == Result.Stop.LENGTH, "result " + r.tokens + " " + r.stop);

            s.reset();
            GenerateParams stop = GenerateParams.greedy(6);
            stop.stop = new String[] {"."};
            Result r2 = s.generate("The capital of France is", stop, null);
            check(r2.text.equals(" Paris") && r2.stop == Result.Stop.STOP_STRING, "stop string: '" + r2.text + "' " + r2.stop);

            s.reset();
            Result r3 = s.generate("The capital of France is", GenerateParams.greedy(20), piece -> false);
            check(r3.stop == Result.Stop.CALLBACK, "callback stop: " + r3.stop);

            s.reset();
            RuntimeException boom = expectThrows(RuntimeException.class, () -> s.generate("The capital of France is",
                    GenerateParams.greedy(20), piece -> { throw new IllegalStateException("boom"); }), "callback throws");
            check("boom".equals(boom.getMessage()), "the callback's exception: " + boom);
            // The session is still usable.
            s.reset();
            check(s.generate("The capital of France is", 2).startsWith(" Paris"), "after exception");

            GenerateParams bad = GenerateParams.greedy(2);
            bad.topP = 5;
            expectThrows(PithException.class, () -> s.generate("x", bad, null), "bad top-p");
            expectThrows(PithException.class, () -> s.generate(null, bad, null), "null prompt");
        }
    }

    static void cancelFromAnotherThread() throws Exception {
        try (Pith p = Pith.load(model, 1); Session s = p.newSession(512, 1)) {
            AtomicInteger pieces = new AtomicInteger();
            AtomicReference<Result> result = new AtomicReference<>();
            AtomicReference<Throwable> error = new AtomicReference<>();
            Thread t = new Thread(() -> {
                try {
                    result.set(s.generate("Once upon a time", GenerateParams.greedy(400), piece -> {
                        pieces.incrementAndGet();
                        return true;
                    }));
                } catch (Throwable e) {
                    error.set(e);
                }
            });
            t.start();
            long deadline = System.currentTimeMillis() + 600_000;
            while (pieces.get() < 3 && System.currentTimeMillis() < deadline && t.isAlive()) {
                Thread.sleep(1);
            }
            PithException busy = expectThrows(PithException.class, () -> s.generate("x", 1), "second thread");
            check(busy.getMessage().contains("PITH_ERR_BUSY"), busy.getMessage());
            s.cancel();
            int atCancel = pieces.get();
            t.join();
            check(error.get() == null, "generation failed: " + error.get());
            Result r = result.get();
            check(r.stop == Result.Stop.CANCELLED, "stop " + r.stop);
            check(pieces.get() - atCancel <= 1, "pieces after cancel: " + (pieces.get() - atCancel));
            System.out.println("cancel: stopped after " + r.tokens + " tokens, " + (pieces.get() - atCancel)
                    + " piece(s) after the cancel");
        }
    }

    static void stateRestoresExactly() {
        try (Pith p = Pith.load(model, 1); Session a = p.newSession(128, 1); Session b = p.newSession(128, 1)) {
            GenerateParams g = new GenerateParams();
            g.temperature = 0.9f;
            g.seed = 99;
            g.maxTokens = 4;
            a.generate("Once upon a time", g, null);
            byte[] state = a.saveState();
            g.maxTokens = 6;
            String original = a.generate("", g, null).text;
            b.loadState(state);
            String restored = b.generate("", g, null).text;
            check(original.equals(restored), "restored '" + restored + "' vs '" + original + "'");
            byte[] broken = state.clone();
            broken[0] = 'X';
            PithException e = expectThrows(PithException.class, () -> b.loadState(broken), "corrupt state");
            check(e.getMessage().contains("PITH_ERR_BAD_STATE"), e.getMessage());
        }
    }

    static void closedObjectsThrow() {
        Pith p = Pith.load(model, 1);
        Session s = p.newSession(64, 1);
        s.close();
        s.close(); // twice is fine
        expectThrows(IllegalStateException.class, () -> s.generate("x", 1), "closed session");
        expectThrows(IllegalStateException.class, () -> s.saveState(), "closed session state");
        s.cancel(); // a no-op on a closed session
        p.close();
        expectThrows(IllegalStateException.class, () -> p.newSession(64, 1), "closed model");
        expectThrows(IllegalStateException.class, () -> p.tokenize("x", false), "closed model tokenize");
    }

    static void callbackOverhead() {
        try (Pith p = Pith.load(model, 1); Session s = p.newSession(256, 1)) {
            AtomicInteger n = new AtomicInteger();
            TextCallback cb = piece -> n.incrementAndGet() >= 0;
            Native.benchCallbacks(cb, 20_000); // warm-up (JIT)
            int calls = 200_000;
            long ns = Native.benchCallbacks(cb, calls);
            double perCall = (double) ns / calls;
            long t0 = System.nanoTime();
            Result r = s.generate("The capital of France is", GenerateParams.greedy(16), cb);
            double perToken = (System.nanoTime() - t0) / 1e6 / Math.max(1, r.tokens + 1);
            check(perCall > 0, "measured");
            System.out.printf("JNI streaming callback: %.0f ns per piece (new String + onText call); one token of the "
                    + "model takes %.1f ms here (1 thread, prefill included), so the callback is %.4f %% of it%n",
                    perCall, perToken, 100 * perCall / (perToken * 1e6));
        }
    }

    public static void main(String[] args) throws Exception {
        model = System.getenv("PITH_MODEL");
        if (model == null || model.isEmpty()) {
            System.err.println("set PITH_MODEL (targets/java/test.sh does)");
            System.exit(2);
        }
        String[] names = {"abiVersion", "missingFileThrows", "tokenizeRoundTrip", "greedyStreamsWholePieces",
                "cancelFromAnotherThread", "stateRestoresExactly", "closedObjectsThrow", "callbackOverhead"};
        int failed = 0;
        for (String name : names) {
            try {
                PithTest.class.getDeclaredMethod(name).invoke(null);
                System.out.println("ok   " + name);
            } catch (java.lang.reflect.InvocationTargetException e) {
                failed++;
                System.out.println("FAIL " + name + ": " + e.getCause());
                e.getCause().printStackTrace(System.out);
            }
        }
        System.out.println(checks + " checks, " + failed + " failed test(s) of " + names.length);
        System.exit(failed == 0 ? 0 : 1);
    }
}
