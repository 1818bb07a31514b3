"""X-MIR defaults and dataset variants (specs/xmir.md §2): ``get_config(dataset, arg)``.

Faithful defaults: DenseNet-121 (``model.init_from`` = a torchvision densenet121 file for ISIC,
the CheXNet ``model.pth.tar`` for COVIDx, or their converted .msgpack), P x K = 3 x 16,
batch-all triplet loss with margin 0.2, Adam 1e-4, 20 PK epochs (15 steps each on ISIC, 31 on
COVIDx), seed 0, no evaluation during training. Embedding: 256-d on ISIC (its README example),
the 1024-d GAP features on COVIDx (its README example).

``arg`` variants: ``synthetic`` (procedural images, densenet_tiny at 64 px; the class is a
logical function of four small concept patterns; CPU minutes), ``anomaly`` (the dataset's
anomaly class left out of training, P = 2, batch 32), ``embedding_dim=N`` (0 = GAP features),
``backbone=NAME``, ``image_size=N``, ``epochs=E``, ``runlocal`` (a few steps).
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jaxproto.common import config as common
from jaxproto.data.loading import AUTO
from jaxproto.data.registry import default_data_config


@dataclasses.dataclass(frozen=True)
class DatasetDefaults:
    """What differs between the X-MIR datasets."""

    anomaly_class: str
    embedding_dim: int
    synthetic_train: int  # training images of the ``synthetic`` variant


DATASETS = {
    "isic2017": DatasetDefaults("melanoma", 256, 3000),
    "covidx": DatasetDefaults("COVID-19", 0, 600),
}


def get_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The X-MIR config for ``dataset`` (a key of ``DATASETS``) and the ``arg`` variants of the
    module docstring."""
    if dataset not in DATASETS:
        raise ValueError(f"X-MIR has no dataset {dataset!r}; known: {', '.join(DATASETS)}")
    ds = DATASETS[dataset]
    arg = common.parse_arg(
        arg,
        synthetic=False,
        runlocal=False,
        anomaly=False,
        backbone="",
        image_size=0,
        embedding_dim=-1,
        epochs=0.0,
    )
    c = ml_collections.ConfigDict()
    c.method = "xmir"
    c.model = ml_collections.ConfigDict()
    c.model.backbone = arg.backbone or ("densenet_tiny" if arg.synthetic else "densenet121")
    c.model.embedding_dim = ds.embedding_dim if arg.embedding_dim < 0 else arg.embedding_dim
    c.model.init_from = ""
    c.model.image_size = arg.image_size or (64 if arg.synthetic else 224)
    c.model.resize = 0  # shorter side before the centre crop; 0 = image_size * 256 / 224
    c.model.rand_resize = False  # RandomResizedCrop instead of the centre crop ("+RR")
    c.model.bn_running_var = "unbiased"
    c.model.compute_dtype = "float32"  # | bfloat16: backbone compute, float32 params
    c.model.conv1x1 = "xla"  # | matmul: 1x1 convs as matmuls (faster on XLA:CPU)
    c.model.stem_conv = "xla"  # | im2col_grad: the 7x7 stem's kernel gradient as a matmul
    c.model.conv_backend = "xla"  # | onednn: convolutions by oneDNN (pip install -e ".[onednn]")

    c.data = default_data_config("synthetic" if arg.synthetic else dataset)
    c.data.image_size = c.model.get_ref("image_size")
    # X-MIR's read_data.py --mask-dir: lung masks <image stem>_xslor.png composited onto the
    # images (outside the lung -> black) before the transforms; "" = off (the default)
    c.data.lung_mask_dir = ""
    if arg.synthetic:
        # procedural images are free: ds.synthetic_train training images, still 270 test
        c.data.update({"like": dataset, "num_train": ds.synthetic_train, "num_test": 270})
        c.data.update({"num_val": AUTO, "clever_hans": False})

    c.loss = ml_collections.ConfigDict()
    c.loss.margin = 0.2
    c.loss.classes_per_batch = 0  # 0 = every training class (3; 2 with anomaly)
    c.loss.samples_per_class = 16
    c.loss.anomaly = arg.anomaly
    c.loss.anomaly_class = ds.anomaly_class
    c.loss.map_includes_self = True  # the original's mAP counts the query at the last rank
    c.eval_ks = (1, 5, 10)
    # queries with no other item of their class: "miss" (score 0, as the original's R@K) or
    # "exclude" (left out of the means, as pytorch-metric-learning)
    c.eval_no_positive = "miss"

    n_classes = 2 if arg.anomaly else 3
    c.train = common.train_block(
        batch_size=n_classes * 16,
        eval_batch_size=64,
        epochs=arg.epochs or 20.0,
        seed=0,
        eval_every_epochs=0.0,
        best_metric="mAP",
        checkpoint_every_steps=100,
    )
    c.optim = ml_collections.ConfigDict({"lr": 1e-4})
    c.saliency = ml_collections.ConfigDict()
    c.saliency.methods = ("sbsm", "simatt", "simcam")
    c.saliency.topk = 5
    c.saliency.sbsm_window = 24
    c.saliency.sbsm_stride = 5
    c.saliency.chunk_size = 250
    c.saliency.blur_sigma = 8.0  # sbsm_blur: Gaussian sigma of the blurred query (the original)
    c.saliency.feature_window = 1  # sbsm_feature: occluded cells of the explanation layer
    c.saliency.feature_stride = 1
    c.saliency.scorecam_masking = "multiply"  # or "matmul_compat" (the original's torch.matmul)
    c.saliency.insdel_mode = "intended"  # or "bug_compat_flat_curves" (§5.3)
    c.saliency.insdel_model = "retrieval_model"  # or "gap1024_compat" (§5.1)
    c.saliency.tie_break = "torch_parity"  # or "stable"
    c.saliency.output_keying = "full_filename_rank_order"  # or "stem_compat"

    if arg.synthetic:
        c.optim.lr = 1e-3
        c.train.epochs = arg.epochs or 12.0
        # the tiny net sees 32-px cells at 64 px: occlude a quarter of the side (24/224 ~ 7 px)
        c.saliency.sbsm_window, c.saliency.sbsm_stride = 16, 4

    common.add_run_blocks(c)  # eval (validation | paper, core.protocol), mesh, distributed
    if arg.runlocal:
        c.data.num_train, c.data.num_test = 120, 40
        c.loss.samples_per_class = 4
        c.train.batch_size = n_classes * 4
        c.train.epochs = 1.0
    return c
