package com.edgec2i.demo

import android.app.Activity
import android.os.Bundle
import android.os.SystemClock
import android.widget.Button
import android.widget.CheckBox
import android.widget.EditText
import android.widget.TextView
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/** Prompt in, greedy answer out; the model loads and runs on a worker thread, never on the UI thread. */
class MainActivity : Activity() {
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var model: LocalModel? = null // touched on the worker thread only
    @Volatile private var running = false

    private lateinit var prompt: EditText
    private lateinit var chat: CheckBox
    private lateinit var generate: Button
    private lateinit var status: TextView
    private lateinit var answer: TextView

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        prompt = findViewById(R.id.prompt)
        chat = findViewById(R.id.chat)
        generate = findViewById(R.id.generate)
        status = findViewById(R.id.status)
        answer = findViewById(R.id.answer)
        generate.setOnClickListener { if (running) running = false else start() }
    }

    private fun start() {
        val text = prompt.text.toString()
        val asChat = chat.isChecked
        running = true
        generate.setText(R.string.stop)
        answer.text = ""
        worker.execute {
            try {
                val m = model ?: run {
                    post(getString(R.string.loading))
                    val t0 = SystemClock.elapsedRealtime()
                    LocalModel.load(applicationContext, THREADS).also {
                        model = it
                        post(getString(R.string.loaded, SystemClock.elapsedRealtime() - t0))
                    }
                }
                val t0 = SystemClock.elapsedRealtime()
                val ids = m.generate(text, asChat, MAX_NEW_TOKENS) { soFar ->
                    runOnUiThread { answer.text = soFar }
                    running
                }
                val ms = SystemClock.elapsedRealtime() - t0
                post(getString(R.string.done, ids.size, ms, ids.size * 1000f / maxOf(ms, 1L)))
            } catch (t: Throwable) {
                post(getString(R.string.error, t.toString()))
            } finally {
                running = false
                runOnUiThread { generate.setText(R.string.generate) }
            }
        }
    }

    private fun post(message: String) = runOnUiThread { status.text = message }

    override fun onDestroy() {
        running = false
        worker.execute { model?.close(); model = null }
        worker.shutdown()
        super.onDestroy()
    }

    private companion object {
        const val MAX_NEW_TOKENS = 64
        const val THREADS = 4
    }
}
