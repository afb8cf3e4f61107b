package com.edgec2i.demo.core

import org.junit.Assert.assertEquals
import org.junit.Assert.fail
import org.junit.Test

class JsonTest {
    @Test
    fun parsesValuesAndEscapes() {
        val v = Json.obj("""{"a": [1, -2.5e1, true, false, null], "s": "q\"\\\/\n\u00e9\ud83d\ude42", "o": {}, "l": []}""")
        assertEquals(listOf(1L, -25.0, true, false, null), v["a"])
        assertEquals("q\"\\/\né\uD83D\uDE42", v["s"])
        assertEquals(emptyMap<String, Any?>(), v["o"])
        assertEquals(emptyList<Any?>(), v["l"])
    }

    @Test
    fun rejectsBadJson() {
        for (bad in listOf("{", "[1,]", "{\"a\" 1}", "\"open", "[1] 2", "tru")) {
            try {
                Json.parse(bad)
                fail("parsed bad JSON: $bad")
            } catch (e: IllegalArgumentException) {
                // expected
            } catch (e: IndexOutOfBoundsException) {
                fail("crashed on $bad instead of a clear error")
            }
        }
    }
}
