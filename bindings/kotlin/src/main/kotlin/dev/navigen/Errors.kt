package dev.navigen

/** The C ABI's navigen_status. */
enum class Status(val code: Int) {
    OK(0),
    /** A null or wrong argument, a closed handle, a value out of range. */
    INVALID_ARGUMENT(1),
    /** A file could not be read or written (also: a history folder held by another handle). */
    IO(2),
    /** A navigen file is damaged or of another version. */
    FORMAT(3),
    /** llama.cpp refused the model or a decode step. */
    MODEL(4),
    /** Stopped by [Engine.cancel], [Engine.close] or a consumer that went away. */
    CANCELLED(5),
    /** The bundle cannot do this (e.g. next-item prediction with a zero-shot model). */
    NOT_SUPPORTED(6),
    /** Files that do not belong together; an encrypted profile without its key. */
    MISMATCH(7),
    /** A bug inside navigen (a caught panic). */
    INTERNAL(8),
    /** A status this binding does not know (a newer library). */
    UNKNOWN(-1);

    companion object {
        fun of(code: Int): Status = entries.firstOrNull { it.code == code } ?: UNKNOWN
    }
}

/** A failed navigen call: its [status] and the library's readable message. */
class NavigenException(val status: Status, message: String) : Exception(message) {
    override fun toString(): String = "NavigenException($status): $message"
}
