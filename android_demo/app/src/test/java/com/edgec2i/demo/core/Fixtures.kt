package com.edgec2i.demo.core

import java.io.File

/** The committed fixtures (test resources) and the tokenizer.json that the tests load. */
object Fixtures {
    @Suppress("UNCHECKED_CAST")
    fun load(name: String): Map<String, Any?> {
        val stream = Fixtures::class.java.getResourceAsStream("/fixtures/$name")
            ?: error("missing test resource fixtures/$name (run android_demo/tools/make_fixtures.py)")
        return Json.obj(stream.reader(Charsets.UTF_8).readText())
    }

    @Suppress("UNCHECKED_CAST")
    fun cases(name: String): List<Map<String, Any?>> = load(name)["cases"] as List<Map<String, Any?>>

    fun ints(value: Any?): IntArray = (value as List<*>).map { (it as Number).toInt() }.toIntArray()

    /**
     * The folder with tokenizer.json: -Dedgec2i.tokenizerDir (jvm-test.sh copies it into
     * android_demo/build/tokenizer), else $EDGE_C2I_HOME/models/smollm2-135m.
     */
    fun tokenizerDir(): File {
        val candidates = ArrayList<File>()
        System.getProperty("edgec2i.tokenizerDir")?.let { candidates.add(File(it)) }
        val home = System.getenv("EDGE_C2I_HOME") ?: (System.getProperty("user.home") + "/.cache/edge-c2i")
        candidates.add(File(home, "models/smollm2-135m"))
        return candidates.firstOrNull { File(it, "tokenizer.json").isFile }
            ?: error("no tokenizer.json in ${candidates.joinToString()}")
    }

    val tokenizer: BpeTokenizer by lazy { BpeTokenizer.fromFile(File(tokenizerDir(), "tokenizer.json")) }
}
