"""edge-c2i: adapt an LLM to a task with one gradient pass (Compress to Impress), export it to ONNX."""
