package dev.pith;

/** What a generation did. */
public final class Result {
    public enum Stop { LENGTH, END_OF_GENERATION, CONTEXT_FULL, CALLBACK, CANCELLED, STOP_STRING }

    public final Stop stop;
    public final int promptTokens;
    public final int tokens;
    public final String text;

    Result(int[] r, String text) {
        this.stop = Stop.values()[r[0]];
        this.promptTokens = r[1];
        this.tokens = r[2];
        this.text = text;
    }
}
