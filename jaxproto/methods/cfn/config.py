"""CFN defaults (cfn.md) and dataset variants.

``get_config(dataset, arg)``: dataset in {ham10000, fairvlmed, mimic}; ``arg`` flags:
``synthetic`` (procedural primitives with reports, tiny DenseNet, 2-CPU minutes),
``backbone=NAME`` (densenet121 default; resnet18/50, convnext_tiny/base, vit_b_16: the CLS
token after the encoder's final LayerNorm), ``image_size=N``,
``runlocal`` (tiny shapes for smoke tests), ``data_format=class2images`` (CFN's split pickles
``class2images_{train,val,test}.p`` with ``notes.json`` / ``reports.json`` instead of the
published FairVLMed / R2Gen MIMIC-CXR files, ``jaxproto.data.fairvlmed`` / ``mimic_cxr``).
"""

from __future__ import annotations

import ml_collections

from jaxproto.common import config as common
from jaxproto.data import registry

# Paper setups (cfn.md §2, §4, §7): backbone tap and selection size per dataset.
TAPS = {"densenet": "final_relu", "resnet": "layer4", "convnext": "pooled", "vit": "cls"}
NUM_CONCEPTS = {"ham10000": 800, "fairvlmed": 500, "mimic": 700}
DATA = {
    "ham10000": {"name": "ham10000", "naming": "csv"},
    "fairvlmed": {"name": "fairvlmed", "naming": "reports"},
    "mimic": {"name": "mimic_cxr", "naming": "reports"},
}


def _family(backbone: str) -> str:
    for family in TAPS:
        if backbone.startswith(family):
            return family
    raise ValueError(f"backbone {backbone!r}: CFN supports {', '.join(TAPS)} backbones")


def get_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
    if dataset not in DATA:
        raise ValueError(f"CFN dataset must be one of {sorted(DATA)}, got {dataset!r}")
    arg = common.parse_arg(
        arg, synthetic=False, runlocal=False, backbone="", image_size=0, data_format=""
    )
    if arg.data_format not in ("", "class2images"):
        raise ValueError(f"data_format must be class2images (or unset), got {arg.data_format!r}")
    backbone = arg.backbone or ("densenet_tiny" if arg.synthetic else "densenet121")
    c = ml_collections.ConfigDict()
    c.method = "cfn"
    c.model = ml_collections.ConfigDict()
    c.model.backbone = backbone
    c.model.tap = TAPS[_family(backbone)]
    c.model.image_size = arg.image_size or (64 if arg.synthetic else 224)
    c.model.compute_dtype = "float32"  # | bfloat16: backbone compute, float32 params
    c.model.conv1x1 = "xla"  # | matmul: 1x1 convs as matmuls (faster on XLA:CPU)
    c.model.stem_conv = "xla"  # | im2col_grad: the 7x7 stem's kernel gradient as a matmul
    c.model.conv_backend = "xla"  # | onednn: convolutions by oneDNN (pip install -e ".[onednn]")
    c.model.clip_norm = True  # cfn.md §2: CLIP mean/std even for ImageNet-pretrained nets
    c.model.init_from = ""  # user-supplied torchvision weights (.pth)

    c.augment = ml_collections.ConfigDict(
        {"rotation_degrees": 30.0, "hflip": True, "blur_sigma": (0.1, 2.0)}
    )
    if arg.synthetic:
        c.data = ml_collections.ConfigDict(
            {
                "name": "primitives", "like": dataset, "root": "", "cache_dir": "",
                "image_size": c.model.get_ref("image_size"), "num_train": 1600, "num_val": 400,
                "num_test": 600, "distractor_p": 0.35, "seed": 0, "on_bad_sample": "error",
                "val_fraction": 0.0, "prepared": "",
            }
        )  # fmt: skip
    elif arg.data_format == "class2images":
        c.data = registry.default_data_config("class2images")
        c.data.image_size = c.model.get_ref("image_size")
        if dataset == "fairvlmed":
            c.data.class_names = ["no", "yes"]
            c.data.reports_file = "notes.json"
        if dataset == "mimic":
            c.data.multilabel_keys = True
            c.data.reports_file = "reports.json"
    else:
        c.data = registry.default_data_config(DATA[dataset]["name"])
        c.data.image_size = c.model.get_ref("image_size")

    c.train = common.train_block(
        batch_size=16,
        eval_batch_size=64,
        epochs=200.0,
        best_metric="accuracy",
        checkpoint_every_steps=500,
    )
    c.optim = ml_collections.ConfigDict({"lr": 1e-4, "weight_decay": 0.01})

    c.cfn = ml_collections.ConfigDict()
    c.cfn.opaque_checkpoint = "best"  # best (validation accuracy, the code's) | last
    c.cfn.embed_batch_size = 64
    c.cfn.sae = ml_collections.ConfigDict(
        {"expansion": 8, "l1": 3e-5, "lr": 5e-4, "batch_size": 4096, "epochs": 200.0, "steps": 0}
    )
    c.cfn.naming = ml_collections.ConfigDict(
        {
            "source": DATA[dataset]["naming"], "top_k": 20, "csv": "", "command": "",
            "timeout_s": 300.0, "ngram_max": 2, "prior_scale": 10.0,
        }
    )  # fmt: skip
    c.cfn.cav = ml_collections.ConfigDict(
        {
            "source": "linear_probe", "positives": "top20", "classifier": "logreg",
            "negatives_per_positive": 5.0, "min_negatives": 100,
        }
    )  # fmt: skip
    c.cfn.select = ml_collections.ConfigDict({"k": NUM_CONCEPTS[dataset]})
    c.cfn.omp = ml_collections.ConfigDict({"n_nonzero": 160, "fit_intercept": True, "chunk": 256})
    c.cfn.cbm = ml_collections.ConfigDict(
        {"features": "reconstruction", "max_iter": 1000, "bisection_rounds": 8}
    )
    c.cfn.explain_top = 4
    # The concept pages (report stage): probing images shown per latent (the top of naming's
    # top_k), their thumbnail size in pixels, latents per detail page.
    c.cfn.report = ml_collections.ConfigDict(
        {"images_per_latent": 6, "thumb_size": 96, "latents_per_page": 50}
    )
    common.add_run_blocks(c)  # eval (validation | paper, core.protocol), mesh, distributed

    if arg.synthetic:
        c.train.batch_size, c.train.epochs = 32, 8.0
        c.train.checkpoint_every_steps = 100
        c.optim.lr = 2e-3
        c.cfn.naming.source = "reports"
        c.cfn.sae.steps = 2000
        c.cfn.select.k = 64
        c.cfn.omp.n_nonzero = 16
    if arg.runlocal:
        c.data.num_train, c.data.num_val, c.data.num_test = 64, 32, 32
        c.train.batch_size, c.train.epochs = 16, 1.0
        c.cfn.sae.steps, c.cfn.select.k, c.cfn.omp.n_nonzero = 50, 16, 4
    return c
