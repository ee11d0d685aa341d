package dev.pith;

/** A failed pith call: the message starts with the C status name, e.g. "[PITH_ERR_IO] ...". */
public class PithException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    public PithException(String message) {
        super(message);
    }
}
