"""ONNX export and ONNX Runtime for edge-c2i models.

    export.onnx_export  export_model(): optimum's decoder-with-past export, int8, .ort, parity
    export.runtime      OnnxLM, evaluate_onnx(): torch-free (onnxruntime, tokenizers, numpy)
    export.parity       PyTorch vs ONNX Runtime figures and tolerances
    export.postprocess  tied LM head without a copy, int8 schemes, ORT format
    export.cli          the export / generate / eval --onnx / demo subcommands

Nothing is imported here, so ``import export.runtime`` stays free of torch.
"""
