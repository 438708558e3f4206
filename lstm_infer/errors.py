"""Exception types raised by lstm_infer. Each subclasses the builtin a caller would expect."""

from __future__ import annotations


class LstmInferError(Exception):
    """Base class of every lstm_infer error."""


class ModelFormatError(LstmInferError, ValueError):
    """A model file or object is malformed, inconsistent or uses something unsupported."""


class UnsupportedModelError(ModelFormatError):
    """The model is well-formed but uses an operator or option lstm_infer cannot run."""


class CheckpointFormatError(ModelFormatError):
    """A checkpoint is truncated, corrupt, ambiguous or of an unsupported layout."""


class UnsafeCheckpointError(ModelFormatError):
    """A checkpoint's pickle asks for a global outside the allow-list (it could run code).

    Nothing from the file was executed.
    """


class InputError(LstmInferError, ValueError):
    """A feed has the wrong name, shape or value (names the input, expected and received)."""


class InputTypeError(LstmInferError, TypeError):
    """A feed has a dtype that cannot be converted to what the model needs."""


class StreamError(LstmInferError, RuntimeError):
    """A stream was misused (e.g. a bidirectional model, or two threads stepping at once)."""


class MissingDependencyError(LstmInferError, ImportError):
    """An optional package (onnx, onnxruntime, torch) is needed for this call."""


class SessionError(StreamError, KeyError):
    """A stream pool was given a session id that is not open (never opened, or closed)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
