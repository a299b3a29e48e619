"""The ``function_call`` engine, in the order a call goes through it.

* :mod:`.schema`: an OpenAI tool as a :class:`Tool` whose parameter schema the decoder can express;
* :mod:`.grammar`: that schema as a llama.cpp GBNF grammar, and the model's text read back;
* :mod:`.grounding`: which values the user's own words support;
* :mod:`.prompt`: what the model reads (instructions, the tool, the conversation; the chooser's list);
* :mod:`.engine`: :class:`FunctionCaller`, which loads the GGUF and runs the above.

Each module imports only the ones above it. The names below are the public surface
(``triton_models/function_call/1/model.py``, ``bench/function_call_eval.py``, the tests).
"""

from sidegate_models.function_call.engine import WEATHER_TOOL, FunctionCaller
from sidegate_models.function_call.grammar import Grammar
from sidegate_models.function_call.grounding import grounded, split_off
from sidegate_models.function_call.prompt import (
    NONE_MARGIN,
    ContextTooLong,
    ToolTooLong,
    choice_prompt,
    shorten,
    transcript,
)
from sidegate_models.function_call.schema import Tool, UnsupportedSchema, described_default, listed_form, normalize_tool

__all__ = [
    "NONE_MARGIN",
    "WEATHER_TOOL",
    "ContextTooLong",
    "FunctionCaller",
    "Grammar",
    "Tool",
    "ToolTooLong",
    "UnsupportedSchema",
    "choice_prompt",
    "described_default",
    "grounded",
    "listed_form",
    "normalize_tool",
    "shorten",
    "split_off",
    "transcript",
]
