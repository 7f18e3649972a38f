"""An exported .onnx file as a classifier, run by ONNX Runtime: the same decoding, batching and
top-k as the PyTorch Classifier, with everything it needs read from the file's own metadata."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..models import CheckpointMeta
from .export import META_KEY, _onnx_modules, check_images_input, session_options
from .classifier import ImageClassifier


class OnnxClassifier(ImageClassifier):
    """Thread-safe: ONNX Runtime sessions may be run from several threads at once."""

    backend = "onnx"

    def __init__(self, path: str | Path, batch_size: int = 64, threads: int = 0) -> None:
        onnx, ort = _onnx_modules()
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: no such ONNX file")
        try:
            props = {p.key: p.value for p in onnx.load(str(self.path), load_external_data=False).metadata_props}
        except Exception as e:
            raise UserError(f"{self.path}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
        if META_KEY not in props:
            raise UserError(f"{self.path}: no resnetlab metadata in this ONNX file; export it with `resnetlab export`")
        super().__init__(CheckpointMeta.from_deploy_json(props[META_KEY], self.path), batch_size)
        options = session_options(threads or torch.get_num_threads())
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.device = torch.device("cpu")
        self.model = None

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = check_images_input(batch, self.metadata)  # the exported graph's own input, as in export's check
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])
