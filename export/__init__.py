"""ONNX export and ONNX Runtime for edge-c2i models: the package ``edge_c2i.export``.

The checkout keeps it in the top-level folder ``export/``; pyproject.toml's ``package-dir``
installs that folder as ``edge_c2i.export`` (there is no top-level ``export`` package).

    onnx_export  export_model(): optimum's decoder-with-past export, int8, .ort, parity
    runtime      OnnxLM, evaluate_onnx(): torch-free (onnxruntime, tokenizers, numpy)
    parity       PyTorch vs ONNX Runtime figures and tolerances
    postprocess  tied LM head without a copy, int8 schemes, ORT format
    cli          the export / generate / eval --onnx / demo subcommands

Nothing is imported here, so ``import edge_c2i.export.runtime`` stays free of torch.
"""
