package com.edgec2i.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import com.edgec2i.demo.core.DecoderStep
import com.edgec2i.demo.core.ModelSpec
import java.nio.FloatBuffer
import java.nio.LongBuffer

/**
 * The exported decoder on ONNX Runtime: inputs input_ids, attention_mask,
 * past_key_values.{i}.key/value (and position_ids in optimum's layout, export --graph optimum);
 * outputs logits and present.{i}.key/value, which become the next step's past. Not
 * thread-safe: use one thread.
 */
class OrtDecoder(modelPath: String, private val spec: ModelSpec, threads: Int = 4) : DecoderStep, AutoCloseable {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession = OrtSession.SessionOptions().use { options ->
        options.setIntraOpNumThreads(threads)
        env.createSession(modelPath, options)
    }
    private val inputNames = session.inputNames
    private var cache: OrtSession.Result? = null // the last run's outputs: its present.* are the past
    private var cachedLength = 0

    override fun step(tokens: IntArray, pastLength: Int): FloatArray {
        if (pastLength == 0) dropCache()
        check(pastLength == cachedLength) { "past length $pastLength, but $cachedLength positions are cached" }
        val n = tokens.size
        val total = pastLength + n
        val owned = ArrayList<OnnxTensor>() // tensors made here, closed after the run
        fun longs(values: LongArray, vararg shape: Long) =
            OnnxTensor.createTensor(env, LongBuffer.wrap(values), shape).also { owned.add(it) }

        try {
            val inputs = HashMap<String, OnnxTensor>()
            inputs["input_ids"] = longs(LongArray(n) { tokens[it].toLong() }, 1, n.toLong())
            inputs["attention_mask"] = longs(LongArray(total) { 1L }, 1, total.toLong())
            if ("position_ids" in inputNames) {
                inputs["position_ids"] = longs(LongArray(n) { (pastLength + it).toLong() }, 1, n.toLong())
            }
            if ("use_cache_branch" in inputNames) { // optimum's merged decoder
                inputs["use_cache_branch"] = OnnxTensor.createTensor(env, booleanArrayOf(pastLength > 0)).also { owned.add(it) }
            }
            val emptyShape = longArrayOf(1, spec.numKvHeads.toLong(), 0, spec.headDim.toLong())
            val previous = cache
            for (i in 0 until spec.numLayers) {
                for (kind in KINDS) {
                    inputs["past_key_values.$i.$kind"] = if (previous == null) {
                        OnnxTensor.createTensor(env, FloatBuffer.allocate(0), emptyShape).also { owned.add(it) }
                    } else {
                        previous.get("present.$i.$kind")
                            .orElseThrow { IllegalStateException("the model has no output present.$i.$kind") } as OnnxTensor
                    }
                }
            }
            val result = session.run(inputs)
            val logits = result.get("logits").get() as OnnxTensor
            val vocab = logits.info.shape.last().toInt()
            val all = logits.floatBuffer // [1, n, vocab]: keep the last position
            val last = FloatArray(vocab)
            all.position(all.limit() - vocab)
            all.get(last)
            cache?.close()
            cache = result
            cachedLength = total
            return last
        } finally {
            owned.forEach { it.close() }
        }
    }

    private fun dropCache() {
        cache?.close()
        cache = null
        cachedLength = 0
    }

    override fun close() {
        dropCache()
        session.close()
    }

    private companion object {
        val KINDS = listOf("key", "value")
    }
}
