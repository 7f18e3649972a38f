"""An exported .onnx file as a classifier, run by ONNX Runtime: the same decoding, batching and
top-k as the PyTorch Classifier, with everything it needs read from the file's own metadata."""
from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..models import CheckpointMeta
from .export import META_KEY, _onnx_modules, check_images_input, session_options
from .classifier import ImageClassifier


def read_onnx_meta(path: Path) -> CheckpointMeta:
    """The checked metadata an exported .onnx file carries (`resnetlab export` writes it)."""
    onnx, _ = _onnx_modules()
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file")
    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as e:
        raise UserError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0]})") from None
    if META_KEY not in props:
        raise UserError(f"{path}: no resnetlab metadata in this ONNX file; export it with `resnetlab export`")
    return CheckpointMeta.from_deploy_json(props[META_KEY], path)


class GraphAsModule(torch.nn.Module):
    """An ONNX classifier where the evaluation loop expects a network: it takes the normalised float batches of
    the test loader, turns them back into the uint8 pixels the exported graph reads (rounded), and returns its
    logits."""

    def __init__(self, clf: "OnnxClassifier") -> None:
        super().__init__()
        self.clf = clf
        self.register_buffer("mean", torch.tensor(clf.metadata.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(clf.metadata.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = ((x.float() * self.std + self.mean) * 255).round().clamp(0, 255).to(torch.uint8)
        return self.clf.logits(pixels.cpu().contiguous()).to(x.device)


class OnnxClassifier(ImageClassifier):
    """Thread-safe: ONNX Runtime sessions may be run from several threads at once."""

    backend = "onnx"

    def __init__(self, path: str | Path, batch_size: int = 64, threads: int = 0) -> None:
        _, ort = _onnx_modules()
        self.path = Path(path)
        super().__init__(read_onnx_meta(self.path), batch_size)
        options = session_options(threads or torch.get_num_threads())
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's own refusal of the graph
            raise UserError(f"{self.path}: ONNX Runtime cannot load this graph ({str(e).splitlines()[0][:200]})") \
                from None
        self._check_graph()
        self.device = torch.device("cpu")
        self.model = None

    def _check_graph(self) -> None:
        """The graph's one input (N, 3, S, S) and one output (N, num_classes) against the metadata; a dimension
        the graph leaves symbolic is taken as given."""
        ins, outs = self.session.get_inputs(), self.session.get_outputs()
        m = self.metadata
        want_in, want_out = [None, 3, m.input_size, m.input_size], [None, m.num_classes]

        def fits(shape, want) -> bool:
            return len(shape) == len(want) and all(w is None or not isinstance(d, int) or d == w
                                                   for d, w in zip(shape, want))
        if len(ins) != 1 or ins[0].name != "input" or not fits(ins[0].shape, want_in):
            got = ", ".join(f"{i.name} {i.shape}" for i in ins)
            raise UserError(f"{self.path}: the graph's input ({got}) is not the 'input' (N, 3, {m.input_size}, "
                            f"{m.input_size}) its metadata describes; export it again with `resnetlab export`")
        if len(outs) < 1 or not fits(outs[0].shape, want_out):
            got = ", ".join(f"{o.name} {o.shape}" for o in outs)
            raise UserError(f"{self.path}: the graph's output ({got}) does not give the {m.num_classes} classes its "
                            f"metadata names; export it again with `resnetlab export`")

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        x = check_images_input(batch, self.metadata)  # the exported graph's own input, as in export's check
        return torch.from_numpy(self.session.run(None, {"input": x.numpy()})[0])
