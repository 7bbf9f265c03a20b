"""One loaded model version: an onnxruntime session built once, warmed up, batch in, scores out."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from services.scorer.artifact import ArtifactError, VerifiedArtifact
from services.scorer.metadata import ModelMetadata
from streamml.errors import StreamMLError

log = logging.getLogger(__name__)

FloatMatrix = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float64]


class ModelRunError(StreamMLError):
    """The model failed on a batch (onnxruntime raised, or the output has the wrong shape)."""


class OnnxModel:
    """A verified model version with its onnxruntime session.

    The session is created once per version with ``intra_op_threads`` threads (the
    service is one process per core budget; more threads than cores only adds contention)
    and warmed up with ``warmup_rows`` rows of zeros, so the first real batch does not pay
    for lazy initialisation and a model that cannot run is refused before it serves.
    """

    def __init__(
        self, artifact: VerifiedArtifact, *, intra_op_threads: int = 1, warmup_rows: int = 16
    ) -> None:
        self.artifact = artifact
        self.metadata: ModelMetadata = artifact.metadata
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        try:
            self._session: Any = ort.InferenceSession(
                artifact.model_bytes, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ArtifactError("load_failed", f"{artifact.path}: onnxruntime: {exc}") from exc
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = [o.name for o in self._session.get_outputs()]
        meta = self.metadata
        if meta.onnx_input not in inputs:
            raise ArtifactError(
                "load_failed", f"{artifact.path}: no input {meta.onnx_input!r} (has {list(inputs)})"
            )
        if meta.onnx_output not in outputs:
            raise ArtifactError(
                "load_failed", f"{artifact.path}: no output {meta.onnx_output!r} (has {outputs})"
            )
        shape = inputs[meta.onnx_input].shape
        width = shape[1] if len(shape) == 2 else None
        if isinstance(width, int) and width != len(meta.input_names):
            raise ArtifactError(
                "load_failed",
                f"{artifact.path}: model takes {width} features, metadata names "
                f"{len(meta.input_names)}",
            )
        self._output_names = [meta.onnx_output]
        if warmup_rows:
            try:
                self.predict(np.zeros((warmup_rows, self.n_inputs), dtype=np.float32))
            except ModelRunError as exc:
                raise ArtifactError(
                    "load_failed", f"{artifact.path}: warm-up failed: {exc}"
                ) from exc

    @property
    def name(self) -> str:
        return self.metadata.model_name

    @property
    def version(self) -> str:
        return self.metadata.model_version

    @property
    def label(self) -> str:
        """``name/version``, for logs."""
        return f"{self.name}/{self.version}"

    @property
    def n_inputs(self) -> int:
        return len(self.metadata.input_names)

    @property
    def feature_set_hash(self) -> str:
        return self.metadata.feature_set_hash

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    def predict(self, batch: FloatMatrix) -> Scores:
        """Positive-class scores for a ``[n, n_inputs]`` float32 batch, as float64 ``[n]``.

        Raises ModelRunError when onnxruntime fails or the output is not one score per row.
        Scores are not checked for range or finiteness here; the caller decides.
        """
        try:
            (output,) = self._session.run(self._output_names, {self.metadata.onnx_input: batch})
        except Exception as exc:
            raise ModelRunError(f"{self.label}: {type(exc).__name__}: {exc}") from exc
        scores = np.asarray(output)
        if scores.ndim == 2 and scores.shape[1] == 2:
            scores = scores[:, 1]
        elif scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim != 1 or scores.shape[0] != batch.shape[0]:
            raise ModelRunError(
                f"{self.label}: output shape {np.asarray(output).shape} is not one score per "
                f"row of {batch.shape[0]}"
            )
        return scores.astype(np.float64, copy=False)
