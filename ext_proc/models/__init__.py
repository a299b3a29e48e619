"""Model clients: the :class:`Models` protocol the request path calls, its Triton implementation
(:mod:`ext_proc.models.triton`, imported only with a model server: it needs ``tritonclient``) and
the local OpenAI-compatible façade over Triton's LLMs (:mod:`ext_proc.models.local_llm`)."""

from ext_proc.models.base import GuardVerdict, Models, ToolCall

__all__ = ["GuardVerdict", "Models", "ToolCall"]
