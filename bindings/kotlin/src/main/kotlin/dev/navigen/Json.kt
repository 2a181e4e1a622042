package dev.navigen

/**
 * The JSON of navigen's results, read into Map/List/String/Double/Boolean/null. A few dozen lines
 * instead of a dependency: kotlinx-serialization needs a compiler plugin in every app build, and
 * Android's org.json is not on a desktop JVM.
 */
internal class Json private constructor(private val s: String) {
    private var i = 0

    companion object {
        fun parse(text: String): Any? {
            val p = Json(text)
            val v = p.value()
            p.ws()
            if (p.i != p.s.length) p.fail("trailing text")
            return v
        }
    }

    private fun fail(what: String): Nothing =
        throw NavigenException(Status.INTERNAL, "navigen returned JSON this binding cannot read ($what at $i)")

    private fun ws() {
        while (i < s.length && s[i] in " \t\r\n") i++
    }

    private fun value(): Any? {
        ws()
        if (i >= s.length) fail("end of text")
        return when (s[i]) {
            '{' -> obj()
            '[' -> arr()
            '"' -> str()
            't' -> word("true", true)
            'f' -> word("false", false)
            'n' -> word("null", null)
            else -> num()
        }
    }

    private fun word(w: String, v: Any?): Any? {
        if (!s.startsWith(w, i)) fail("a bad literal")
        i += w.length
        return v
    }

    private fun num(): Double {
        val start = i
        while (i < s.length && (s[i].isDigit() || s[i] in "+-.eE")) i++
        return s.substring(start, i).toDoubleOrNull() ?: fail("a bad number")
    }

    private fun str(): String {
        i++ // "
        val b = StringBuilder()
        while (true) {
            if (i >= s.length) fail("an unterminated string")
            val c = s[i++]
            when (c) {
                '"' -> return b.toString()
                '\\' -> {
                    if (i >= s.length) fail("an unterminated escape")
                    when (val e = s[i++]) {
                        'n' -> b.append('\n')
                        't' -> b.append('\t')
                        'r' -> b.append('\r')
                        'b' -> b.append('\b')
                        'f' -> b.append('\u000c')
                        'u' -> {
                            if (i + 4 > s.length) fail("a short \\u escape")
                            b.append(s.substring(i, i + 4).toIntOrNull(16)?.toChar() ?: fail("a bad \\u escape"))
                            i += 4
                        }
                        else -> b.append(e) // " \ /
                    }
                }
                else -> b.append(c)
            }
        }
    }

    private fun arr(): List<Any?> {
        i++
        val out = ArrayList<Any?>()
        ws()
        if (i < s.length && s[i] == ']') return out.also { i++ }
        while (true) {
            out.add(value())
            ws()
            when (s.getOrNull(i++)) {
                ',' -> continue
                ']' -> return out
                else -> fail("a bad array")
            }
        }
    }

    private fun obj(): Map<String, Any?> {
        i++
        val out = LinkedHashMap<String, Any?>()
        ws()
        if (i < s.length && s[i] == '}') return out.also { i++ }
        while (true) {
            ws()
            if (s.getOrNull(i) != '"') fail("a bad key")
            val k = str()
            ws()
            if (s.getOrNull(i++) != ':') fail("a missing colon")
            out[k] = value()
            ws()
            when (s.getOrNull(i++)) {
                ',' -> continue
                '}' -> return out
                else -> fail("a bad object")
            }
        }
    }
}

// Json builds only String-keyed maps, so the casts hold.
@Suppress("UNCHECKED_CAST")
internal fun Any?.obj(): Map<String, Any?> = this as? Map<String, Any?> ?: emptyMap()
internal fun Any?.list(): List<Any?> = this as? List<Any?> ?: emptyList()
internal fun Map<String, Any?>.str(k: String): String = this[k] as? String ?: ""
internal fun Map<String, Any?>.num(k: String): Double = (this[k] as? Double) ?: 0.0
