"""CIPL configuration (cipl.md §2.5, §3): every default, the dataset variants, ``synthetic``.

``get_config(dataset, arg)`` serves ``configs/cipl_<dataset>.py``. ``arg`` is
``[synthetic][,backbone=NAME][,image_size=N][,prototypes_per_class=N]``. Real-data defaults are
the official settings; the synthetic variant shrinks the backbone, image size, prototype count
and schedule so every phase (incl. two pushes and last-layer epochs) runs on a CPU in minutes,
on procedural data mimicking ``dataset``.
"""

from __future__ import annotations

import ml_collections

from jaxproto.common import config as common
from jaxproto.data.loading import AUTO
from jaxproto.data.registry import default_data_config

# cipl.md §3.3: hard-coded sampler weights (Pneumonia 100, Hernia 150; No Finding base weight,
# multiplied by data.background_weight_single / _pairs).
CHESTXRAY14_CLASS_WEIGHTS = [
    12.617,
    61.201,
    12.065,
    7.580,
    25.897,
    22.190,
    100.0,
    39.617,
    36.630,
    75.813,
    73.415,
    83.509,
    46.597,
    150.0,
    2.0687,
]
# cipl.md §5: sampler weights (Normal base weight, multiplied by the background factors).
ODIR_CLASS_WEIGHTS = [4.151, 22.933, 23.885, 26.7, 38.736, 27.896, 6.23, 2.4155]

DATASETS = ("chestxray14", "odir")


def get_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The CIPL config for ``dataset`` ("chestxray14" or "odir") and variant ``arg``."""
    if dataset not in DATASETS:
        raise ValueError(f"CIPL has no config for dataset {dataset!r}; known: {DATASETS}")
    arg = common.parse_arg(arg, synthetic=False, backbone="", image_size=0, prototypes_per_class=0)
    if dataset == "odir" and not arg.synthetic and not arg.image_size:
        arg.image_size = 640  # cipl.md §5: 20 x 20 feature grid
    c = _base(arg, dataset, common.train_block())
    if not arg.synthetic:
        if dataset == "chestxray14":
            c.data.class_weights = CHESTXRAY14_CLASS_WEIGHTS
        else:
            c.data.class_weights = ODIR_CLASS_WEIGHTS
            # cipl.md §5: RandomResizedCrop 672 then 640, affine ±30°/0.3/0.8-1.2/±25 shear.
            c.data.augment.pair_pad = 32
            c.data.augment.pair_degrees = 30.0
            c.data.augment.pair_scale = [0.8, 1.2]
            c.data.augment.pair_shear = 25.0
    common.add_run_blocks(c)  # eval (validation | paper, core.protocol), mesh, distributed
    return c


def _base(
    arg: ml_collections.ConfigDict, dataset: str, train: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """CIPL config without the mesh/distributed blocks; ``arg.synthetic`` selects the synthetic
    dataset mimicking ``dataset``; ``train`` is ``common.train_block()``, completed with CIPL's
    schedule."""
    synthetic = bool(arg.synthetic)
    like = dataset if synthetic else ""
    c = ml_collections.ConfigDict()
    c.method = "cipl"

    c.model = ml_collections.ConfigDict()
    c.model.backbone = arg.backbone or ("resnet_tiny" if synthetic else "densenet121")
    # Backbone feature map; "" = DenseNet's pre-norm5 map (cipl.md §1.1). The synthetic demo
    # taps the tiny ResNet at stride 16 (8 x 8 maps at 128 px, 99 px receptive field).
    c.model.tap = "layer3" if synthetic and not arg.backbone else ""
    c.model.init_from = ""  # torchvision densenet121-a639ec97.pth for real runs
    c.model.image_size = arg.image_size or (128 if synthetic else 512)
    c.model.prototypes_per_class = arg.prototypes_per_class or (5 if synthetic else 50)
    c.model.proto_dim = 64 if synthetic else 256
    # 0 = proto_dim (the official exp(-d/256)). The synthetic demo uses a sharper scale: with 5
    # prototypes per class (not 50) the logits' dynamic range is too small to learn in minutes.
    c.model.similarity_scale = 8.0 if synthetic else 0.0
    c.model.bn_running_var = "unbiased"
    c.model.compute_dtype = "float32"  # | bfloat16: backbone compute, float32 params
    c.model.conv1x1 = "xla"  # | matmul: 1x1 convs as matmuls (faster on XLA:CPU)
    c.model.stem_conv = "xla"  # | im2col_grad: the 7x7 stem's kernel gradient as a matmul
    c.model.conv_backend = "xla"  # | onednn: convolutions by oneDNN (pip install -e ".[onednn]")
    c.model.student_bn_split = True
    c.model.ema_momentum = 0.999
    c.model.predict_similarity_maps = False

    c.data = default_data_config("synthetic" if synthetic else dataset)  # + the loader's keys
    c.data.image_size = c.model.get_ref("image_size")
    c.data.like = like
    c.data.num_train = 960 if synthetic else 0
    c.data.num_test = 200 if synthetic else 0
    c.data.num_val = AUTO  # synthetic: a val split of num_test images (validation protocol)
    c.data.class_weights = []  # empty = total positives / class count (cipl.md §3.3)
    c.data.background_weight_single = 2.0  # background weight multiplier, warm-up loader
    c.data.background_weight_pairs = 3.0  # and main/last-layer loader
    # cipl.md §3.4 (chest X-ray values; configs/cipl_odir.py sets ODIR's).
    c.data.augment = ml_collections.ConfigDict()
    # "official": cipl.md §3.4; "light": resize + jitter + flip for small synthetic sets.
    c.data.augment.policy = "light" if synthetic else "official"
    c.data.augment.single_degrees = 30.0
    c.data.augment.single_translate = 0.3
    c.data.augment.single_scale = [0.8, 1.2]
    c.data.augment.single_shear = 25.0
    c.data.augment.pair_pad = 0  # 0 = size // 16 (544 for 512)
    c.data.augment.pair_degrees = 45.0
    c.data.augment.pair_translate = 0.3
    c.data.augment.pair_scale = [0.7, 1.3]
    c.data.augment.pair_shear = 40.0
    c.data.augment.elastic_grayscale = True  # odir_elastic_grayscale flag (cipl.md §8)

    c.train = train
    c.train.update(
        batch_size=16 if synthetic else 24,
        eval_batch_size=64,
        best_metric="mean_auc",
        eval_every_epochs=0.0 if synthetic else 1.0,
        checkpoint_every_steps=200 if synthetic else 1000,
    )
    # In-domain supervised pretraining of the backbone (GAP linear head, multi-label BCE) before
    # the warm-up: the stand-in for the ImageNet weights (model.init_from) that real runs start
    # from. Not part of CIPL; 0 for real data.
    c.train.pretrain_epochs = 3 if synthetic else 0
    c.train.warmup_epochs = 8 if synthetic else 15
    c.train.num_epochs = 12 if synthetic else 41
    c.train.push_epochs = [9, 11] if synthetic else [35, 40]
    c.train.last_layer_epochs = 1 if synthetic else 6
    c.train.push_batch_size = 32 if synthetic else 20
    c.train.push_candidates = 0  # 0 = the exact bound (number of prototypes)

    c.loss = ml_collections.ConfigDict()
    c.loss.crs_ent = 1.0
    c.loss.clst = 0.02
    c.loss.sep = 0.02
    c.loss.sep_margin = 2.0
    c.loss.cross_att = 0.5
    c.loss.inte_align = 0.5
    c.loss.pred_align = 10.0
    c.loss.pred_temperature = 1.0
    c.loss.fix_last_class = False  # False = official off-by-one (drops the last foreground class)
    c.loss.coattn_distance = "explicit"  # or "expanded"

    c.optim = ml_collections.ConfigDict()
    c.optim.backbone_lr = 1e-3 if synthetic else 1e-4
    c.optim.add_on_lr = 3e-3
    c.optim.prototypes_lr = 3e-3
    c.optim.lr_halving_epochs = [6, 10] if synthetic else [10, 20, 25, 30, 35]
    c.optim.lr_gamma = 0.5
    c.optim.last_layer_lr = 1e-3 if synthetic else 1e-4
    c.optim.pretrain_lr = 3e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8

    c.localization = ml_collections.ConfigDict()
    c.localization.threshold = 0.5
    c.localization.mode = "minmax"  # or "max": pixels >= threshold * max
    # Map cells drawn at their receptive-field centres; "stretch" = cv2.resize as the official
    # visualisations (1.5 px off for DenseNet-121, half a cell for a ResNet tap).
    c.localization.grid = "receptive_field"
    # Pointing game: hit if the arg-max is within this many original-image pixels of a box
    # (Zhang et al. 2016 use 15); the strict variant (inside the box) is reported as well.
    c.localization.pointing_tolerance = 15.0

    c.explain = ml_collections.ConfigDict()
    c.explain.top_prototypes = 3 if synthetic else 10
    c.explain.threshold = 0.5

    return c
