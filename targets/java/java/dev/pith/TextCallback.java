package dev.pith;

/** Receives generated text as it is produced: whole UTF-8 characters only, never a split one. */
@FunctionalInterface
public interface TextCallback {
    /** @return true to go on, false to stop generating. */
    boolean onText(String piece);
}
