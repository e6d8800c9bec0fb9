"""The two networks GenEval scores with, from local ``transformers`` directories (nothing is downloaded).

* :class:`Mask2FormerDetector`: COCO instance segmentation decoded as mmdetection decodes Mask2Former (GenEval's
  detector): the top ``max_per_image`` (query, class) pairs by class probability, each with its mask (logit > 0 after
  bilinear upsampling to the image), score = class probability x the mean mask probability inside the mask, and the
  mask's box (``x_max + 1``, ``y_max + 1``, mmdetection's ``mask2bbox``).
* :class:`ClipColors`: the colour of a detected object by CLIP zero-shot classification over GenEval's ten colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .geneval_common import COLOR_TEMPLATES, COLORS, Detection


def _embeds(out) -> torch.Tensor:
    """``get_*_features``' projected embeddings: a tensor (transformers 4) or the output's ``pooler_output`` (5)."""
    return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()


def _local(path: str | Path, what: str, hint: str) -> Path:
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no {what} at {path} (config.json missing): {hint}")
    return path


class Mask2FormerDetector:
    def __init__(self, path: str | Path, device: torch.device, max_per_image: int = 100):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        path = _local(
            path,
            "Mask2Former",
            "save facebook/mask2former-swin-small-coco-instance with save_pretrained and pass its folder",
        )
        self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = (
            Mask2FormerForUniversalSegmentation.from_pretrained(str(path), local_files_only=True).to(device).eval()
        )
        self.device, self.max_per_image = device, max_per_image
        labels = self.model.config.id2label
        self.class_names = [labels[i] for i in range(len(labels))]

    @torch.no_grad()
    def detect(self, images) -> list[dict[str, tuple[np.ndarray, list]]]:
        """Per image ``{class: (boxes [N, 5] = x1, y1, x2, y2, score; masks [N] of bool [H, W])}``."""
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        outputs = self.model(**inputs)
        results = []
        for i, image in enumerate(images):
            logits = outputs.class_queries_logits[i].float()  # [Q, K + 1]
            scores = logits.softmax(-1)[:, :-1]
            q, k = scores.shape
            top, flat = scores.flatten().topk(min(self.max_per_image, q * k))
            query, label = flat // k, flat % k
            masks = F.interpolate(
                outputs.masks_queries_logits[i][query][None].float(), size=image.size[::-1], mode="bilinear",
                align_corners=False,
            )[0]  # fmt: skip
            binary = masks > 0
            mask_score = (masks.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
            score = (top * mask_score).cpu().numpy()
            binary = binary.cpu().numpy()
            per_class: dict[str, tuple[list, list]] = {}
            for j in range(len(flat)):
                ys, xs = np.nonzero(binary[j])
                box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] if len(xs) else [0, 0, 0, 0]
                entry = per_class.setdefault(self.class_names[int(label[j])], ([], []))
                entry[0].append([*map(float, box), float(score[j])])
                entry[1].append(binary[j])
            results.append({name: (np.array(b).reshape(-1, 5), m) for name, (b, m) in per_class.items()})
        return results


class ClipColors:
    def __init__(self, path: str | Path, device: torch.device):
        from transformers import CLIPModel, CLIPProcessor

        path = _local(path, "CLIP", "save openai/clip-vit-large-patch14 with save_pretrained and pass its folder")
        self.processor = CLIPProcessor.from_pretrained(str(path), local_files_only=True)
        self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.device = device
        self.classifiers: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def classifier(self, name: str) -> torch.Tensor:
        """[D, 10]: per colour the renormalised mean of its three normalised template embeddings."""
        if name not in self.classifiers:
            weights = []
            for c in COLORS:
                texts = [t.format(c=c, obj=name) for t in COLOR_TEMPLATES]
                tokens = self.processor(text=texts, return_tensors="pt", padding=True).to(self.device)
                emb = F.normalize(_embeds(self.model.get_text_features(**tokens)), dim=-1).mean(0)
                weights.append(F.normalize(emb, dim=-1))
            self.classifiers[name] = torch.stack(weights, dim=1)
        return self.classifiers[name]

    @torch.no_grad()
    def classify(self, image, objects: list[Detection], name: str) -> list[str]:
        """GenEval's crops: the object's mask over grey #999, cropped to its box; the argmax colour of each."""
        from PIL import Image

        blank = Image.new("RGB", image.size, color="#999")
        crops = []
        for box, mask in objects:
            crop = image if mask is None else Image.composite(image, blank, Image.fromarray(np.asarray(mask, bool)))
            crops.append(crop.crop(tuple(float(v) for v in box[:4])))
        # GenEval's CLIP transform (open_clip: torchvision Resize + CenterCrop, whose crop offset rounds where
        # transformers' processor floors it), then the processor's rescale and normalisation only
        from torchvision.transforms import CenterCrop, InterpolationMode, Resize

        side = self.processor.image_processor.crop_size["height"]
        resize, centre = Resize(side, interpolation=InterpolationMode.BICUBIC), CenterCrop(side)
        crops = [centre(resize(crop)) for crop in crops]
        pixels = self.processor(images=crops, return_tensors="pt", do_resize=False, do_center_crop=False)
        pixels = pixels["pixel_values"].to(self.device)
        features = F.normalize(_embeds(self.model.get_image_features(pixel_values=pixels)), dim=-1)
        return [COLORS[i] for i in (100.0 * features @ self.classifier(name)).argmax(1).tolist()]
