package com.edgec2i.demo.core

/** One forward pass of a decoder that keeps its own KV cache (ONNX Runtime on Android, a stub in tests). */
interface DecoderStep {
    /**
     * Runs [tokens] at positions pastLength until pastLength + tokens.size, attending to the
     * [pastLength] positions already cached, and returns the logits (one float per vocab entry)
     * of the last position. pastLength 0 starts a new sequence: any old cache is dropped.
     */
    fun step(tokens: IntArray, pastLength: Int): FloatArray
}

/**
 * Greedy decoding with a KV cache: the prompt is fed once (prefill), then one token per step
 * with the past growing by one, until an EOS id (kept in the output, as transformers'
 * generate keeps it) or maxNewTokens.
 */
class GreedyGenerator(private val decoder: DecoderStep, private val eosIds: Set<Int>) {

    /** The new token ids; [onToken] sees each one as it comes and may return false to stop. */
    fun generate(promptIds: IntArray, maxNewTokens: Int, onToken: (Int) -> Boolean = { true }): IntArray {
        require(promptIds.isNotEmpty()) { "empty prompt" }
        val out = ArrayList<Int>()
        if (maxNewTokens <= 0) return IntArray(0)
        var logits = decoder.step(promptIds, 0)
        var past = promptIds.size
        while (true) {
            val next = argmax(logits)
            out.add(next)
            val goOn = onToken(next)
            if (!goOn || next in eosIds || out.size >= maxNewTokens) break
            logits = decoder.step(intArrayOf(next), past)
            past += 1
        }
        return out.toIntArray()
    }

    companion object {
        /** Index of the largest value; the first one on ties (as torch.argmax). */
        fun argmax(values: FloatArray): Int {
            require(values.isNotEmpty()) { "empty logits" }
            var best = 0
            for (k in 1 until values.size) if (values[k] > values[best]) best = k
            return best
        }
    }
}
