package com.edgec2i.demo.core

import java.io.ByteArrayOutputStream
import java.io.File
import java.util.regex.Pattern

/**
 * A byte-level BPE tokenizer (GPT-2 style, as SmolLM2's) read from a Hugging Face tokenizer.json.
 *
 * encode = split out the added tokens, split the rest with the ByteLevel regex, map the UTF-8
 * bytes of each piece to the byte-level alphabet, merge by BPE rank, then the post-processor
 * template (SmolLM2's adds the BOS <|im_start|>), exactly as `tok(text)["input_ids"]` in Python.
 * decode = the decoder chain (ByteFallback, Fuse, Replace, ByteLevel), plus transformers'
 * clean_up_tokenization_spaces when asked.
 */
class BpeTokenizer(tokenizerJson: String) {
    private val vocab = HashMap<String, Int>()
    private val idToToken = HashMap<Int, String>()
    private val mergeRanks = HashMap<String, Int>()
    private val addedTokens = ArrayList<String>() // longest first
    private val specialIds = HashSet<Int>()
    private val prefixIds = ArrayList<Int>()
    private val suffixIds = ArrayList<Int>()
    private val decoders = ArrayList<Map<String, Any?>>()
    private val unkId: Int?
    private val cache = HashMap<String, List<Int>>()

    val vocabSize: Int get() = idToToken.size

    init {
        val root = Json.obj(tokenizerJson)
        val model = root.objOrNull("model") ?: error("tokenizer.json has no model")
        require(model["type"] == "BPE") { "only BPE tokenizers are supported, not ${model["type"]}" }
        model.objOrNull("vocab")!!.forEach { (token, id) -> vocab[token] = (id as Number).toInt() }
        model.listOrNull("merges")!!.forEachIndexed { rank, m ->
            val key = if (m is List<*>) "${m[0]} ${m[1]}" else m as String // ["a","b"] or "a b"
            mergeRanks.putIfAbsent(key, rank)
        }
        for (t in root.listOrNull("added_tokens").orEmpty()) {
            @Suppress("UNCHECKED_CAST") val a = t as Map<String, Any?>
            val content = a["content"] as String
            val id = a.intOrNull("id")!!
            vocab[content] = id
            addedTokens.add(content)
            if (a["special"] == true) specialIds.add(id)
        }
        addedTokens.sortByDescending { it.length }
        vocab.forEach { (token, id) -> idToToken[id] = token }
        unkId = (model["unk_token"] as? String)?.let { vocab[it] }

        checkSupported(root.objOrNull("normalizer"), setOf("Sequence"), "normalizer") { it.listOrNull("normalizers").isNullOrEmpty() }
        checkSupported(root.objOrNull("pre_tokenizer"), setOf("ByteLevel", "Sequence"), "pre_tokenizer") { isGpt2Split(it) }
        readTemplate(root.objOrNull("post_processor"))
        flatten(root.objOrNull("decoder"), "decoders", decoders)
    }

    /** Token ids of [text], with the post-processor's special tokens when [addSpecialTokens]. */
    fun encode(text: String, addSpecialTokens: Boolean = true): IntArray {
        val ids = ArrayList<Int>()
        if (addSpecialTokens) ids.addAll(prefixIds)
        var start = 0
        var i = 0
        while (i < text.length) {
            val added = addedTokens.firstOrNull { text.startsWith(it, i) }
            if (added == null) { i++; continue }
            encodeOrdinary(text.substring(start, i), ids)
            ids.add(vocab[added]!!)
            i += added.length
            start = i
        }
        encodeOrdinary(text.substring(start), ids)
        if (addSpecialTokens) ids.addAll(suffixIds)
        return ids.toIntArray()
    }

    /** The text of [ids]; like `tok.decode(ids, skip_special_tokens=..., clean_up_tokenization_spaces=...)`. */
    fun decode(ids: IntArray, skipSpecialTokens: Boolean = false, cleanUpSpaces: Boolean = false): String {
        var tokens: List<String> = ids.filter { !(skipSpecialTokens && it in specialIds) }.mapNotNull { idToToken[it] }
        for (d in decoders) tokens = applyDecoder(d, tokens)
        val text = tokens.joinToString("")
        return if (cleanUpSpaces) cleanUp(text) else text
    }

    fun tokenId(token: String): Int? = vocab[token]

    fun isSpecial(id: Int): Boolean = id in specialIds

    private fun encodeOrdinary(text: String, out: MutableList<Int>) {
        if (text.isEmpty()) return
        val m = SPLIT.matcher(text)
        while (m.find()) {
            val piece = m.group()
            out.addAll(cache.getOrPut(piece) { bpe(toByteLevel(piece)) })
        }
    }

    private fun bpe(word: String): List<Int> {
        val parts = word.map { it.toString() }.toMutableList()
        while (parts.size > 1) {
            var best = -1
            var bestRank = Int.MAX_VALUE
            for (k in 0 until parts.size - 1) {
                val rank = mergeRanks["${parts[k]} ${parts[k + 1]}"] ?: continue
                if (rank < bestRank) { bestRank = rank; best = k }
            }
            if (best < 0) break
            val a = parts[best]
            val b = parts[best + 1]
            var k = best // merge every occurrence of the best pair, left to right
            while (k < parts.size - 1) {
                if (parts[k] == a && parts[k + 1] == b) { parts[k] = a + b; parts.removeAt(k + 1) }
                k++
            }
        }
        val ids = ArrayList<Int>()
        for (p in parts) {
            val id = vocab[p]
            if (id != null) { ids.add(id); continue }
            for (c in p) { // byte fallback, else unk
                val byteToken = "<0x%02X>".format(UNICODE_TO_BYTE[c] ?: 0)
                ids.add(vocab[byteToken] ?: unkId ?: error("no token for '$p'"))
            }
        }
        return ids
    }

    private fun readTemplate(post: Map<String, Any?>?) {
        val steps = ArrayList<Map<String, Any?>>()
        flatten(post, "processors", steps)
        for (step in steps) {
            when (step["type"]) {
                "TemplateProcessing" -> {
                    val special = step.objOrNull("special_tokens").orEmpty()
                    var seenSequence = false
                    for (item in step.listOrNull("single").orEmpty()) {
                        @Suppress("UNCHECKED_CAST") val entry = item as Map<String, Any?>
                        if (entry.containsKey("Sequence")) { seenSequence = true; continue }
                        val name = entry.objOrNull("SpecialToken")!!["id"] as String
                        val ids = special.objOrNull(name)?.listOrNull("ids")?.map { (it as Number).toInt() }
                            ?: listOf(vocab[name]!!)
                        (if (seenSequence) suffixIds else prefixIds).addAll(ids)
                    }
                }
                "ByteLevel" -> {} // offsets only
                else -> throw IllegalArgumentException("unsupported post_processor ${step["type"]}")
            }
        }
    }

    private fun applyDecoder(d: Map<String, Any?>, tokens: List<String>): List<String> = when (d["type"]) {
        "ByteFallback" -> byteFallback(tokens)
        "Fuse" -> listOf(tokens.joinToString(""))
        "Replace" -> {
            val pattern = d.objOrNull("pattern")?.get("String") as? String
                ?: throw IllegalArgumentException("only string Replace decoders are supported")
            tokens.map { it.replace(pattern, d["content"] as String) }
        }
        "ByteLevel" -> listOf(fromByteLevel(tokens))
        else -> throw IllegalArgumentException("unsupported decoder ${d["type"]}")
    }

    private fun byteFallback(tokens: List<String>): List<String> {
        val out = ArrayList<String>()
        val bytes = ByteArrayOutputStream()
        fun flush() {
            if (bytes.size() > 0) { out.add(String(bytes.toByteArray(), Charsets.UTF_8)); bytes.reset() }
        }
        for (t in tokens) {
            if (t.length == 6 && t.startsWith("<0x") && t.endsWith(">")) {
                val b = t.substring(3, 5).toIntOrNull(16)
                if (b != null) { bytes.write(b); continue }
            }
            flush()
            out.add(t)
        }
        flush()
        return out
    }

    companion object {
        /** GPT-2's pre-tokenizer regex (tokenizers' ByteLevel with use_regex); \s is Unicode whitespace there too. */
        private val SPLIT: Pattern = Pattern.compile(
            "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
            Pattern.UNICODE_CHARACTER_CLASS
        )

        /** GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256 + n. */
        private val BYTE_TO_UNICODE = CharArray(256)
        private val UNICODE_TO_BYTE = HashMap<Char, Int>()

        init {
            var n = 0
            for (b in 0 until 256) {
                val printable = b in 33..126 || b in 161..172 || b in 174..255
                BYTE_TO_UNICODE[b] = if (printable) b.toChar() else (256 + n++).toChar()
                UNICODE_TO_BYTE[BYTE_TO_UNICODE[b]] = b
            }
        }

        fun fromFile(file: File): BpeTokenizer = BpeTokenizer(file.readText(Charsets.UTF_8))

        private fun toByteLevel(piece: String): String {
            val sb = StringBuilder()
            for (b in piece.toByteArray(Charsets.UTF_8)) sb.append(BYTE_TO_UNICODE[b.toInt() and 0xFF])
            return sb.toString()
        }

        /** Byte-level chars back to bytes, then UTF-8 text; a token with other chars gives its own UTF-8 bytes (as tokenizers does). */
        private fun fromByteLevel(tokens: List<String>): String {
            val bytes = ByteArrayOutputStream()
            for (t in tokens) {
                if (t.all { UNICODE_TO_BYTE.containsKey(it) }) t.forEach { bytes.write(UNICODE_TO_BYTE[it]!!) }
                else bytes.write(t.toByteArray(Charsets.UTF_8))
            }
            return String(bytes.toByteArray(), Charsets.UTF_8)
        }

        /** transformers' clean_up_tokenization. */
        fun cleanUp(text: String): String = text
            .replace(" .", ".").replace(" ?", "?").replace(" !", "!").replace(" ,", ",")
            .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m")
            .replace(" 's", "'s").replace(" 've", "'ve").replace(" 're", "'re")

        private fun flatten(node: Map<String, Any?>?, listKey: String, out: MutableList<Map<String, Any?>>) {
            if (node == null) return
            if (node["type"] == "Sequence") {
                @Suppress("UNCHECKED_CAST")
                for (child in node.listOrNull(listKey).orEmpty()) flatten(child as Map<String, Any?>, listKey, out)
            } else out.add(node)
        }

        /**
         * The one pre-tokenization this class does: GPT-2's split, then bytes to the byte-level
         * alphabet. tokenizer.json writes it as ByteLevel (use_regex), or, as edge-c2i exports it
         * for onnxruntime-genai, as Sequence[Split(that regex, Isolated), ByteLevel(no regex)].
         */
        private fun isGpt2Split(node: Map<String, Any?>): Boolean {
            if (node["type"] == "ByteLevel") return node["add_prefix_space"] != true && node["use_regex"] != false
            val steps = node.listOrNull("pretokenizers").orEmpty()
            if (steps.size != 2) return false
            @Suppress("UNCHECKED_CAST") val split = steps[0] as Map<String, Any?>
            @Suppress("UNCHECKED_CAST") val byteLevel = steps[1] as Map<String, Any?>
            return split["type"] == "Split" && split.objOrNull("pattern")?.get("Regex") == SPLIT.pattern() &&
                split["behavior"] == "Isolated" && split["invert"] != true &&
                byteLevel["type"] == "ByteLevel" && byteLevel["add_prefix_space"] != true &&
                byteLevel["use_regex"] == false
        }

        private fun checkSupported(
            node: Map<String, Any?>?, types: Set<String>, what: String, ok: (Map<String, Any?>) -> Boolean
        ) {
            if (node != null) require(node["type"] in types && ok(node)) { "unsupported $what: $node".take(200) }
        }
    }
}
