package com.edgec2i.demo.core

/** SmolLM2-Instruct's chat format (ChatML), one user turn, ready for the assistant's answer. */
object ChatMl {
    fun wrap(user: String): String = "<|im_start|>user\n$user<|im_end|>\n<|im_start|>assistant\n"
}
