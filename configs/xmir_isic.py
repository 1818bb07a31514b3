"""X-MIR retrieval embedder on ISIC 2017 (nevus / seborrheic keratosis / melanoma).

Faithful defaults (specs/xmir.md §2): DenseNet-121 from ImageNet weights (``init_from`` = a
torchvision densenet121 file or its converted .msgpack), 256-d embedding (the ISIC README
example), P x K = 3 x 16, batch-all triplet loss with margin 0.2, Adam 1e-4, 20 PK epochs (15
steps each on ISIC), seed 0, no evaluation during training.

Variants: ``synthetic`` (procedural ISIC-like images, densenet_tiny at 64 px, 3000 training
images: the class is a logical function of four small concept patterns, which 600 images x 12
PK epochs = 84 steps under-learn; CPU minutes),
``anomaly`` (melanoma left out of training, P = 2, batch 32), ``embedding_dim=N`` (0 = GAP
features), ``backbone=NAME``, ``image_size=N``, ``epochs=E``, ``runlocal`` (a few steps).
``build`` is shared with configs/xmir_covidx.py.
"""

import ml_collections

from jaxproto.common import config as common


def build(
    arg, dataset: str, anomaly_class: str, embedding_dim: int, synthetic_train: int = 600
) -> ml_collections.ConfigDict:
    """The X-MIR config for ``dataset`` (see the module docstring for the ``arg`` variants);
    ``synthetic_train`` is the number of training images of the ``synthetic`` variant."""
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
    c.model.embedding_dim = embedding_dim if arg.embedding_dim < 0 else arg.embedding_dim
    c.model.init_from = ""
    c.model.image_size = arg.image_size or (64 if arg.synthetic else 224)
    c.model.resize = 0  # shorter side before the centre crop; 0 = image_size * 256 / 224
    c.model.rand_resize = False  # RandomResizedCrop instead of the centre crop ("+RR")
    c.model.bn_running_var = "unbiased"

    c.data = ml_collections.ConfigDict()
    c.data.name = "synthetic" if arg.synthetic else dataset
    c.data.root = ""
    c.data.image_size = c.model.get_ref("image_size")
    c.data.on_bad_sample = "error"
    c.data.val_fraction = 0.0
    c.data.seed = 0
    c.data.like = dataset
    c.data.num_train = 600
    c.data.num_test = 270
    c.data.num_val = 0
    c.data.clever_hans = False
    c.data.prepared = ""

    c.loss = ml_collections.ConfigDict()
    c.loss.margin = 0.2
    c.loss.classes_per_batch = 0  # 0 = every training class (3; 2 with anomaly)
    c.loss.samples_per_class = 16
    c.loss.anomaly = arg.anomaly
    c.loss.anomaly_class = anomaly_class
    c.loss.map_includes_self = True  # the original's mAP counts the query at the last rank
    c.eval_ks = (1, 5, 10)

    n_classes = 2 if arg.anomaly else 3
    epochs = arg.epochs or 20.0
    c.train = common.train_block(
        batch_size=n_classes * 16,
        eval_batch_size=64,
        epochs=epochs,
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
    c.saliency.insdel_mode = "intended"  # or "bug_compat_flat_curves" (§5.3)
    c.saliency.insdel_model = "retrieval_model"  # or "gap1024_compat" (§5.1)
    c.saliency.tie_break = "torch_parity"  # or "stable"
    c.saliency.output_keying = "full_filename_rank_order"  # or "stem_compat"

    if arg.synthetic:
        c.optim.lr = 1e-3
        c.train.epochs = arg.epochs or 12.0
        c.data.num_train = synthetic_train  # procedural images are free; still 270 test images
        # the tiny net sees 32-px cells at 64 px: occlude a quarter of the side (24/224 is ~7 px)
        c.saliency.sbsm_window, c.saliency.sbsm_stride = 16, 4

    c.mesh = common.mesh_block()
    c.distributed = common.distributed_block()
    if arg.runlocal:
        c.data.num_train, c.data.num_test = 120, 40
        c.loss.samples_per_class = 4
        c.train.batch_size = n_classes * 4
        c.train.epochs = 1.0
    return c


def get_config(arg=None):
    return build(
        arg, dataset="isic2017", anomaly_class="melanoma", embedding_dim=256, synthetic_train=3000
    )
