package dev.pith;

/** Sampling and stopping options of one generation (defaults as the C ABI's). */
public final class GenerateParams {
    public int maxTokens = 128;
    /** 0 or less = greedy. */
    public float temperature = 0.8f;
    public int topK = 40;
    public float topP = 0.95f;
    public float minP = 0.05f;
    public float repeatPenalty = 1.0f;
    public long seed = 42;
    public String[] stop = new String[0];

    public static GenerateParams greedy(int maxTokens) {
        GenerateParams p = new GenerateParams();
        p.temperature = 0;
        p.maxTokens = maxTokens;
        return p;
    }
}
