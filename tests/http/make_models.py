"""Tiny models and cards for the daemon tests (written to --out, not committed).

seg:  1x1 conv on a 64x64 input: red pixels -> class 1 "red", green -> class 2
      "green", the rest background.  Exact enough to check boxes.
det:  a dense detector on the same 64x64 input: two candidates, the bounding
      boxes of the red and of the green pixels (in input pixels), scored by
      whether any such pixel exists.
slow: the segmenter's answer plus a stack of 3x3 convs (weighted by 1e-6) on 192x192,
      so one inference takes long enough to fill a queue.
"""
import json
import os
import sys

import torch


class Seg(torch.nn.Module):
    def __init__(self, deep=0, ch=40):
        super().__init__()
        self.head = torch.nn.Conv2d(3, 3, 1)
        w = torch.tensor([[0.0, 0.0, 0.0], [10.0, -10.0, -10.0], [-10.0, 10.0, -10.0]])
        self.head.weight.data = w.view(3, 3, 1, 1)
        self.head.bias.data = torch.tensor([0.0, -3.0, -3.0])
        self.deep = deep
        if deep:
            layers = [torch.nn.Conv2d(3, ch, 3, padding=1), torch.nn.ReLU()]
            for _ in range(deep):
                layers += [torch.nn.Conv2d(ch, ch, 3, padding=1), torch.nn.ReLU()]
            layers += [torch.nn.Conv2d(ch, 3, 1)]
            self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        y = self.head(x)
        if self.deep:
            y = y + 1e-6 * self.body(x)
        return y


class Det(torch.nn.Module):
    def forward(self, x):
        rows = []
        n = x.shape[-1]
        pos = torch.arange(n, dtype=torch.float32)
        for c in (0, 1):  # red, green
            other = x.sum(dim=1) - x[:, c]
            m = torch.clamp((x[:, c] - other) * 2.0, 0.0, 1.0)[0]  # [H, W]
            cols = m.amax(dim=0)
            rows_ = m.amax(dim=1)
            x1 = n - (cols * (n - pos)).amax(dim=0)
            x2 = (cols * (pos + 1)).amax(dim=0)
            y1 = n - (rows_ * (n - pos)).amax(dim=0)
            y2 = (rows_ * (pos + 1)).amax(dim=0)
            score = cols.amax(dim=0)
            scores = [score, torch.zeros_like(score)] if c == 0 else [torch.zeros_like(score), score]
            rows.append(torch.stack([x1, y1, x2, y2, *scores]))
        return torch.stack(rows).unsqueeze(0)  # [1, 2, 4 + 2]


def det_card(name, onnx, size):
    return {
        "name": name,
        "pipeline": "detect-dense",
        "files": {"model": onnx},
        "input": {"name": "image", "width": size, "height": size, "resize": "stretch",
                  "scale": "0..1", "mean": [0, 0, 0], "std": [1, 1, 1]},
        "labels": ["background", "red", "green"],
        "background_class": 0,
        "dense": {"output": "dets", "box_format": "xyxy", "class_offset": 1},
        "nms": {"default": {"method": "hard", "iou": 0.5, "score_threshold": 0.3, "max_detections": 10}},
    }


def card(name, onnx, size):
    return {
        "name": name,
        "pipeline": "segment",
        "files": {"model": onnx},
        "input": {"name": "image", "width": size, "height": size, "resize": "stretch",
                  "scale": "0..1", "mean": [0, 0, 0], "std": [1, 1, 1]},
        "labels": ["background", "red", "green"],
        "background_class": 0,
    }


def main():
    out = sys.argv[sys.argv.index("--out") + 1]
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    for name, deep, size in (("seg", 0, 64), ("slow", 8, 192)):
        m = Seg(deep).eval()
        path = os.path.join(out, name + ".onnx")
        torch.onnx.export(m, torch.zeros(1, 3, size, size), path, input_names=["image"],
                          output_names=["logits"], opset_version=13)
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(card(name, name + ".onnx", size), f, indent=1)
    path = os.path.join(out, "det.onnx")
    torch.onnx.export(Det().eval(), torch.zeros(1, 3, 64, 64), path, input_names=["image"],
                      output_names=["dets"], opset_version=13)
    with open(os.path.join(out, "det.json"), "w") as f:
        json.dump(det_card("det", "det.onnx", 64), f, indent=1)


if __name__ == "__main__":
    main()
