"""The minimal LitServe API for a resnetlab checkpoint (or its .onnx export, run by ONNX Runtime), for benchmarks/reload.py's comparison: a multipart upload
(field `file`) decoded by the checkpoint's own preprocessing, LitServe's batching (up to 64 images, 5 ms), the
model's logits, the top 5 classes as JSON, the same answer `resnetlab serve` gives.

    python benchmarks/litserve_api.py CHECKPOINT PORT     (in an environment with litserve installed)
"""
from __future__ import annotations

import io
import sys

import litserve as ls
import torch

import resnetlab
from resnetlab.decoding import load_uint8


class ResnetlabAPI(ls.LitAPI):
    def __init__(self, checkpoint: str) -> None:
        super().__init__(max_batch_size=64, batch_timeout=0.005)
        self.checkpoint = checkpoint

    def setup(self, device) -> None:
        self.clf = resnetlab.load(self.checkpoint, device="cpu")

    def decode_request(self, request) -> torch.Tensor:
        upload = request["file"]
        return torch.from_numpy(load_uint8(io.BytesIO(upload.file.read()), self.clf.policy).copy())

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.clf.logits(x)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, logits: torch.Tensor) -> dict:
        top = logits.float().softmax(0).topk(min(5, len(self.clf.classes)))
        return {"predictions": [{"top": [{"class": self.clf.classes[j], "prob": round(p, 6)}
                                         for p, j in zip(top.values.tolist(), top.indices.tolist())]}]}


if __name__ == "__main__":
    server = ls.LitServer(ResnetlabAPI(sys.argv[1]), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), generate_client_file=False)
