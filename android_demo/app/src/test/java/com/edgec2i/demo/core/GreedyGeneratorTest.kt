package com.edgec2i.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/** The generation loop against the greedy tokens of the PyTorch model (fixtures/generation.json). */
class GreedyGeneratorTest {
    private val fixture = Fixtures.load("generation.json")
    private val vocabSize = (fixture["vocab_size"] as Number).toInt()
    private val eosIds = Fixtures.ints(fixture["eos_token_ids"]).toSet()
    private val maxNewTokens = (fixture["max_new_tokens"] as Number).toInt()

    /** Replays recorded logits (top-5 of each step, the rest -inf) and records how it is called. */
    private class ReplayDecoder(private val vocabSize: Int, private val steps: List<List<Pair<Int, Float>>>) : DecoderStep {
        val calls = ArrayList<Pair<List<Int>, Int>>() // (tokens fed, past length)

        override fun step(tokens: IntArray, pastLength: Int): FloatArray {
            val logits = FloatArray(vocabSize) { Float.NEGATIVE_INFINITY }
            for ((id, value) in steps[calls.size]) logits[id] = value
            calls.add(tokens.toList() to pastLength)
            return logits
        }
    }

    private fun stepsOf(case: Map<String, Any?>): List<List<Pair<Int, Float>>> =
        (case["steps"] as List<*>).map { step ->
            (step as List<*>).map { pair -> (pair as List<*>).let { (it[0] as Number).toInt() to (it[1] as Number).toFloat() } }
        }

    @Test
    fun replaysPythonGreedyTokensWithGrowingPast() {
        val cases = Fixtures.cases("generation.json")
        assertTrue(cases.size >= 5)
        var stoppedAtEos = 0
        for (case in cases) {
            val prompt = Fixtures.ints(case["prompt_ids"])
            val expected = Fixtures.ints(case["generated_ids"])
            val decoder = ReplayDecoder(vocabSize, stepsOf(case))
            val got = GreedyGenerator(decoder, eosIds).generate(prompt, maxNewTokens)
            assertArrayEquals("tokens for ${case["prompt"]}", expected, got)

            // prefill once with past 0, then one token per call, the past growing by one each time
            assertEquals(expected.size, decoder.calls.size)
            assertEquals(prompt.toList() to 0, decoder.calls[0])
            for (k in 1 until decoder.calls.size) {
                assertEquals(listOf(expected[k - 1]) to prompt.size + k - 1, decoder.calls[k])
            }
            // stopped at EOS (kept, as generate keeps it), else at max_new_tokens
            if (got.last() in eosIds) stoppedAtEos++ else assertEquals(maxNewTokens, got.size)
            assertTrue(got.dropLast(1).none { it in eosIds })
        }
        assertTrue("the fixtures should include answers that end with EOS", stoppedAtEos >= 1)
    }

    @Test
    fun stopsAtMaxAtEosAndWhenTold() {
        val steps = List(10) { k -> listOf((if (k == 3) 2 else 100 + k) to 1f) }
        val prompt = intArrayOf(1, 5)

        var d = ReplayDecoder(300, steps)
        assertArrayEquals(intArrayOf(100, 101), GreedyGenerator(d, setOf(2)).generate(prompt, 2))
        assertEquals(2, d.calls.size)

        d = ReplayDecoder(300, steps)
        assertArrayEquals(intArrayOf(100, 101, 102, 2), GreedyGenerator(d, setOf(2)).generate(prompt, 10))
        assertEquals(listOf(listOf(102) to 4), d.calls.takeLast(1))

        d = ReplayDecoder(300, steps)
        assertArrayEquals(intArrayOf(100), GreedyGenerator(d, setOf(2)).generate(prompt, 10) { false })

        d = ReplayDecoder(300, steps)
        assertEquals(0, GreedyGenerator(d, setOf(2)).generate(prompt, 0).size)
        assertEquals(0, d.calls.size)
    }

    @Test
    fun argmaxTakesTheFirstMaximum() {
        assertEquals(1, GreedyGenerator.argmax(floatArrayOf(0f, 3f, 3f, -1f)))
        assertEquals(0, GreedyGenerator.argmax(floatArrayOf(Float.NEGATIVE_INFINITY)))
    }
}
