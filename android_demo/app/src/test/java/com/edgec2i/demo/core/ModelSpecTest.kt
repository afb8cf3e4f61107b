package com.edgec2i.demo.core

import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Test

class ModelSpecTest {
    private val config = """{"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "hidden_size": 576, "eos_token_id": 2, "bos_token_id": 1}"""

    @Test
    fun fallsBackToConfigJson() {
        val spec = ModelSpec.parse(null, config)
        assertEquals(30, spec.numLayers)
        assertEquals(3, spec.numKvHeads)
        assertEquals(64, spec.headDim) // 576 / 9
        assertEquals(setOf(2), spec.eosIds)
        assertEquals(null, spec.addBos)
    }

    @Test
    fun manifestWins() {
        val manifest = """{"num_layers": 2, "num_kv_heads": 1, "head_dim": 8, "eos_token_id": [2, 0],
            "bos_token_id": 1, "add_bos_token": true}"""
        val spec = ModelSpec.parse(manifest, config)
        assertEquals(2, spec.numLayers)
        assertEquals(1, spec.numKvHeads)
        assertEquals(8, spec.headDim)
        assertEquals(setOf(2, 0), spec.eosIds)
        assertArrayEquals(intArrayOf(1, 7), spec.withBos(intArrayOf(7)))
        assertArrayEquals(intArrayOf(1, 7), spec.withBos(intArrayOf(1, 7)))
    }

    @Test
    fun nestedManifestConfig() {
        val spec = ModelSpec.parse("""{"config": {"num_hidden_layers": 4, "num_attention_heads": 4, "hidden_size": 64}}""", null)
        assertEquals(4, spec.numLayers)
        assertEquals(4, spec.numKvHeads)
        assertEquals(16, spec.headDim)
        assertArrayEquals(intArrayOf(7), spec.withBos(intArrayOf(7)))
    }

    @Test
    fun cleanUpFlagFromManifestOrTokenizerConfig() {
        assertEquals(false, ModelSpec.parse(null, config).cleanUpSpaces)
        assertEquals(true, ModelSpec.parse(null, config, """{"clean_up_tokenization_spaces": true}""").cleanUpSpaces)
        val manifest = """{"clean_up_tokenization_spaces": false}"""
        assertEquals(false, ModelSpec.parse(manifest, config, """{"clean_up_tokenization_spaces": true}""").cleanUpSpaces)
    }
}
