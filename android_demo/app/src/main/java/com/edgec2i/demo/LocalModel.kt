package com.edgec2i.demo

import android.content.Context
import com.edgec2i.demo.core.BpeTokenizer
import com.edgec2i.demo.core.ChatMl
import com.edgec2i.demo.core.GreedyGenerator
import com.edgec2i.demo.core.ModelSpec
import java.io.File
import java.io.FileNotFoundException

/**
 * The exported model that copy_model.sh put in assets/model/: model.ort (or model.onnx),
 * tokenizer.json, edge_c2i_export.json, and optionally config.json and tokenizer_config.json.
 */
class LocalModel private constructor(
    private val tokenizer: BpeTokenizer,
    private val spec: ModelSpec,
    private val decoder: OrtDecoder
) : AutoCloseable {
    private val eosIds = spec.eosIds.ifEmpty {
        listOf("<|im_end|>", "<|endoftext|>").mapNotNull { tokenizer.tokenId(it) }.toSet()
    }
    private val generator = GreedyGenerator(decoder, eosIds)

    /** Greedy answer to [prompt]; [onText] gets the text so far after each token and may return false to stop. */
    fun generate(prompt: String, chat: Boolean, maxNewTokens: Int, onText: (String) -> Boolean): IntArray {
        val ids = spec.withBos(tokenizer.encode(if (chat) ChatMl.wrap(prompt) else prompt))
        val generated = ArrayList<Int>()
        return generator.generate(ids, maxNewTokens) { id ->
            generated.add(id)
            onText(tokenizer.decode(generated.toIntArray(), skipSpecialTokens = true, cleanUpSpaces = spec.cleanUpSpaces))
        }
    }

    override fun close() = decoder.close()

    companion object {
        private const val DIR = "model"

        /** Loads the model from the assets (copying the model file to internal storage once). */
        fun load(context: Context, threads: Int): LocalModel {
            fun text(name: String): String? = try {
                context.assets.open("$DIR/$name").use { it.reader(Charsets.UTF_8).readText() }
            } catch (e: FileNotFoundException) {
                null
            }
            val tokenizerJson = text("tokenizer.json")
                ?: throw IllegalStateException("no assets/$DIR/tokenizer.json: run android_demo/copy_model.sh first")
            val spec = ModelSpec.parse(text("edge_c2i_export.json"), text("config.json"), text("tokenizer_config.json"))
            val modelFile = copyModel(context)
            return LocalModel(BpeTokenizer(tokenizerJson), spec, OrtDecoder(modelFile.path, spec, threads))
        }

        /** ORT creates its session from a file path, so the model goes to files/ once (re-copied when its size changes). */
        private fun copyModel(context: Context): File {
            val assets = context.assets.list(DIR).orEmpty()
            val name = listOf("model.ort", "model.onnx").firstOrNull { it in assets }
                ?: throw IllegalStateException("no model.ort or model.onnx in assets/$DIR: run android_demo/copy_model.sh first")
            val target = File(context.filesDir, "$DIR/$name")
            val size = context.assets.openFd("$DIR/$name").use { it.length }
            if (!target.isFile || target.length() != size) {
                target.parentFile!!.mkdirs()
                val tmp = File(target.path + ".tmp")
                context.assets.open("$DIR/$name").use { input -> tmp.outputStream().use { input.copyTo(it, 1 shl 20) } }
                check(tmp.renameTo(target)) { "could not write $target" }
            }
            return target
        }
    }
}
