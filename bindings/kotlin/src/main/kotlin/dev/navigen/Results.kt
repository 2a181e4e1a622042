package dev.navigen

/** A predicted next item, best first. */
data class Prediction(val id: String, val title: String, val cid: String, val score: Double) {
    internal companion object {
        fun listFrom(json: String): List<Prediction> = Json.parse(json).list().map {
            val o = it.obj()
            Prediction(o.str("id"), o.str("title"), o.str("cid"), o.num("score"))
        }
    }
}

/**
 * A creation instruction: [targetTid] (the terms), [targetIns] (the instruction for an image or
 * video generator), the reasoning, whether the answer parsed as the trained JSON shape, everything
 * the model wrote ([raw]) and timings in ms and tokens.
 */
data class Instruction(
    val targetTid: List<String>,
    val targetIns: String,
    val reasoning: String?,
    val parsed: Boolean,
    val raw: String,
    val timings: Map<String, Double>,
) {
    internal companion object {
        fun from(json: String): Instruction {
            val o = Json.parse(json).obj()
            return Instruction(
                targetTid = o["target_tid"].list().map { it as? String ?: "" },
                targetIns = o.str("target_ins"),
                reasoning = o["reasoning"] as? String,
                parsed = o["parsed"] == true,
                raw = o.str("raw"),
                timings = o["timings"].obj().mapNotNull { (k, v) -> (v as? Double)?.let { k to it } }.toMap(),
            )
        }
    }
}

/** A catalog item. */
data class CatalogItem(val id: String, val title: String)

/**
 * Where a new item's text lands in the catalog's CID space: its [cid], the catalog item that already
 * holds it ([takenBy]), the nearest free CID with the same prefix, and the embedding's distance to it.
 */
data class Registration(val cid: String, val takenBy: CatalogItem?, val freeCid: String?, val distance: Double) {
    internal companion object {
        fun from(json: String): Registration {
            val o = Json.parse(json).obj()
            val t = o["taken_by"] as? Map<*, *>
            return Registration(
                cid = o.str("cid"),
                takenBy = t?.let { CatalogItem(it["id"] as? String ?: "", it["title"] as? String ?: "") },
                freeCid = o["free_cid"] as? String,
                distance = o.num("distance"),
            )
        }
    }
}

/** What happened with an item (the C ABI's `kind`). */
enum class EventKind(val code: Int) {
    VIEW(0), CLICK(1), PURCHASE(2), PLAY(3), RATE(4), LIKE(5), OTHER(255);

    internal companion object {
        fun named(name: String): EventKind = entries.firstOrNull { it.name.equals(name, ignoreCase = true) } ?: OTHER
    }
}

/** A stored event; [inCatalog] is known when exported with an engine. */
data class Event(val itemId: String, val kind: EventKind, val timestampMs: Long, val inCatalog: Boolean?) {
    internal companion object {
        fun listFrom(json: String): List<Event> = Json.parse(json).list().map {
            val o = it.obj()
            Event(o.str("item_id"), EventKind.named(o.str("kind")), o.num("timestamp_ms").toLong(), o["in_catalog"] as? Boolean)
        }
    }
}
