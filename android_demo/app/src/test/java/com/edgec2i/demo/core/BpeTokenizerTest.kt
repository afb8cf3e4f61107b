package com.edgec2i.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

/** The Kotlin tokenizer against the ids and texts of the Python tokenizer (fixtures/tokenizer_cases.json). */
class BpeTokenizerTest {
    private val tok = Fixtures.tokenizer
    private val fixture = Fixtures.load("tokenizer_cases.json")
    private val cleanUp = fixture["clean_up_tokenization_spaces"] == true

    @Test
    fun encodeMatchesPython() {
        val cases = Fixtures.cases("tokenizer_cases.json")
        assertTrue(cases.size >= 20)
        val wrong = cases.filter { !tok.encode(it["text"] as String).contentEquals(Fixtures.ints(it["ids"])) }
        assertEquals("mismatched encodes: " + wrong.joinToString { "${it["text"]}" }, 0, wrong.size)
    }

    @Test
    fun decodeMatchesPython() {
        for (case in Fixtures.cases("tokenizer_cases.json")) {
            val ids = Fixtures.ints(case["ids"])
            assertEquals(case["decoded"], tok.decode(ids, cleanUpSpaces = cleanUp))
            assertEquals(case["decoded_skip_special"], tok.decode(ids, skipSpecialTokens = true, cleanUpSpaces = cleanUp))
        }
    }

    @Test
    fun generationPromptsAndAnswersMatchPython() {
        for (case in Fixtures.cases("generation.json")) {
            assertArrayEquals(Fixtures.ints(case["prompt_ids"]), tok.encode(case["prompt"] as String))
            val generated = Fixtures.ints(case["generated_ids"])
            assertEquals(case["text"], tok.decode(generated, skipSpecialTokens = true, cleanUpSpaces = cleanUp))
        }
    }

    @Test
    fun bosSpecialTokensAndRoundTrip() {
        assertEquals(1, tok.tokenId("<|im_start|>"))
        assertArrayEquals(intArrayOf(), tok.encode(""))  // SmolLM2 adds no BOS (its GGUF says add_bos_token false)
        assertArrayEquals(intArrayOf(), tok.encode("", addSpecialTokens = false))
        assertTrue(tok.isSpecial(2) && !tok.isSpecial(504))
        assertEquals(49152, tok.vocabSize)
        val text = "Round trip: ünïcode 🙂, tabs\tand  spaces \n"
        assertEquals(text, tok.decode(tok.encode(text, addSpecialTokens = false)))
    }

    @Test
    fun cleanUpLikeTransformers() {
        assertEquals("Hello, world. isn't it? yes! I'm", BpeTokenizer.cleanUp("Hello , world . is n't it ? yes ! I 'm"))
    }

    @Test
    fun chatMlWrapIsThePythonChatPrompt() {
        val prompts = Fixtures.cases("generation.json").map { it["prompt"] as String }
        assertTrue(ChatMl.wrap("What is 2+2?") in prompts)
    }
}
