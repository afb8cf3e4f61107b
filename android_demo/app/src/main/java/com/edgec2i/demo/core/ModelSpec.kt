package com.edgec2i.demo.core

/**
 * What the app needs to know about an exported model: read from the export manifest
 * (edge_c2i_export.json), with config.json (and tokenizer_config.json) as fallbacks.
 *
 *   numLayers      num_layers | num_hidden_layers
 *   numKvHeads     num_kv_heads | num_key_value_heads | num_attention_heads
 *   headDim        head_dim | hidden_size / num_attention_heads
 *   eosIds         eos_token_ids | eos_token_id (an int or a list)
 *   bosId, addBos  bos_token_id, add_bos_token (addBos null: the tokenizer's template decides)
 *   cleanUpSpaces  clean_up_tokenization_spaces (also read from tokenizer_config.json; default false)
 *
 * Each key is looked up in the manifest's top level, then in a nested "config" or "model"
 * object of the manifest, then in config.json.
 */
class ModelSpec(
    val numLayers: Int,
    val numKvHeads: Int,
    val headDim: Int,
    val eosIds: Set<Int>,
    val bosId: Int?,
    val addBos: Boolean?,
    val cleanUpSpaces: Boolean = false
) {
    /** [ids] with the BOS in front when the manifest asks for one and the tokenizer did not add it. */
    fun withBos(ids: IntArray): IntArray {
        val bos = bosId ?: return ids
        if (addBos != true || (ids.isNotEmpty() && ids[0] == bos)) return ids
        return intArrayOf(bos) + ids
    }

    override fun toString() =
        "ModelSpec(layers=$numLayers, kvHeads=$numKvHeads, headDim=$headDim, eos=$eosIds, bos=$bosId, " +
            "addBos=$addBos, cleanUpSpaces=$cleanUpSpaces)"

    companion object {
        fun parse(manifestJson: String?, configJson: String?, tokenizerConfigJson: String? = null): ModelSpec {
            val manifest = manifestJson?.let { Json.obj(it) }
            val tokenizerConfig = tokenizerConfigJson?.let { Json.obj(it) }
            val config = configJson?.let { Json.obj(it) }
            val sources = listOfNotNull(manifest, manifest?.objOrNull("config"), manifest?.objOrNull("model"), config)
            fun find(vararg keys: String): Any? {
                for (src in sources) for (k in keys) if (src[k] != null) return src[k]
                return null
            }
            fun int(vararg keys: String): Int? = (find(*keys) as? Number)?.toInt()

            val layers = int("num_layers", "num_hidden_layers") ?: error("no num_layers in the manifest or config.json")
            val heads = int("num_attention_heads")
            val kvHeads = int("num_kv_heads", "num_key_value_heads") ?: heads
                ?: error("no num_kv_heads in the manifest or config.json")
            val hidden = int("hidden_size")
            val headDim = int("head_dim") ?: (if (hidden != null && heads != null) hidden / heads else null)
                ?: error("no head_dim in the manifest or config.json")
            val eos = when (val e = find("eos_token_ids", "eos_token_id")) {
                is Number -> setOf(e.toInt())
                is List<*> -> e.map { (it as Number).toInt() }.toSet()
                else -> emptySet()
            }
            val cleanUp = (find("clean_up_tokenization_spaces") ?: tokenizerConfig?.get("clean_up_tokenization_spaces")) == true
            return ModelSpec(layers, kvHeads, headDim, eos, int("bos_token_id"), find("add_bos_token") as? Boolean, cleanUp)
        }
    }
}
