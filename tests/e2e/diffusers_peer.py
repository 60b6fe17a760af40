"""Python diffusers as the peer of `cargo xtask e2e --with-diffusers` (maintainers only: needs
torch, so it runs from `.venv-fixtures/`, never in CI).

Run by xtask with HF_ENDPOINT (the local Hub server), HF_HUB_CACHE, HF_TOKEN and
HF_HUB_DISABLE_XET=1 in the environment. Prints one JSON object on stdout.

  diffusers_peer.py generate REPO --out FILE [--variant V] [--prompt P] [--steps N] [--seed S]
                    [--height H] [--width W] [--save DIR]

`DiffusionPipeline.from_pretrained(REPO, variant=V, torch_dtype=torch.float32)` (on the CPU), then one generation
with `torch.Generator("cpu").manual_seed(S)` and `output_type="np"`; the float images
[N, H, W, 3] in [0, 1] are written to FILE (safetensors, key `images`, as
`burn-diffusers generate --out-array` writes them); with `--save`, the pipeline is then saved
with `pipe.save_pretrained(DIR)` (transformers 5.23 rewrites the tokenizer folders). The JSON names the pipeline class, each
component's class, the UNet's dtype, the image shape and the NSFW flags.
"""

import argparse
import json
import sys


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("repo")
    gen.add_argument("--out", required=True)
    gen.add_argument("--variant", default=None)
    gen.add_argument("--prompt", default="an astronaut riding a horse")
    gen.add_argument("--steps", type=int, default=3)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--height", type=int, default=None)
    gen.add_argument("--width", type=int, default=None)
    gen.add_argument("--save", default=None, help="then pipe.save_pretrained(SAVE)")
    args = parser.parse_args()

    import diffusers
    import torch
    from diffusers import DiffusionPipeline
    from safetensors.torch import save_file

    # torch_dtype is explicit: without it, an fp16 variant saved with a cast (by diffusers itself
    # as by us) records `"dtype": "float16"` in text_encoder/config.json, transformers 5 loads the
    # text encoder in float16 while diffusers keeps the UNet in float32, and the first UNet call
    # fails ("mat1 and mat2 must have the same dtype, but got Half and Float"; measured with
    # diffusers 0.42.1 / transformers 5.23). float32 is what `burn-diffusers generate` computes in
    # by default.
    pipe = DiffusionPipeline.from_pretrained(args.repo, variant=args.variant, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(args.seed)
    out = pipe(
        args.prompt,
        num_inference_steps=args.steps,
        generator=generator,
        height=args.height,
        width=args.width,
        output_type="np",
    )
    images = torch.from_numpy(out.images).to(torch.float32).contiguous()
    save_file({"images": images}, args.out)
    if args.save:
        pipe.save_pretrained(args.save)
    result = {
        "diffusers": diffusers.__version__,
        "torch": torch.__version__,
        "class": type(pipe).__name__,
        "components": {k: type(v).__name__ for k, v in pipe.components.items() if v is not None},
        "dtype": str(pipe.unet.dtype),
        "shape": list(images.shape),
        "nsfw": [bool(x) for x in (out.nsfw_content_detected or [])],
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
