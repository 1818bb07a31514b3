"""Original X-MIR checkpoints: a PyTorch model with the original ``model.py`` module layout
(``densenet121.0.*`` / ``resnet50.N.*`` + optional ``fc``), random weights, converted and
compared embedding for embedding and neighbour for neighbour; then convert -> export -> retrieve."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.backbones import CheckpointMismatchError, read_state_dict
from jaxproto.common import cli
from jaxproto.common.errors import ConfigError
from jaxproto.methods.xmir.convert import convert_checkpoint
from jaxproto.methods.xmir.model import XmirNet

torch = pytest.importorskip("torch")
ref = pytest.importorskip("tests.torch_reference_models")
pytestmark = pytest.mark.torch

DENSENET_TINY = {"growth_rate": 8, "block_config": (2, 2, 2, 2), "num_init_features": 16}


class OriginalDenseNet(torch.nn.Module):
    """The original ``DenseNet121(embedding_dim)`` wrapper's layout around a DenseNet."""

    def __init__(self, embedding_dim, **cfg):
        super().__init__()
        net = ref.DenseNet(**cfg)
        self.densenet121 = torch.nn.Sequential(*list(net.children())[:-1])
        self.densenet121[0].add_module("relu", torch.nn.ReLU(inplace=True))
        self.densenet121.add_module("avgpool", torch.nn.AdaptiveAvgPool2d((1, 1)))
        ch = self.densenet121[0].norm5.num_features
        self.fc = torch.nn.Linear(ch, embedding_dim) if embedding_dim else None

    def forward(self, x):
        x = torch.flatten(self.densenet121(x), 1)
        if self.fc is not None:
            x = self.fc(x)
        return torch.nn.functional.normalize(x, dim=1)


class OriginalResNet(torch.nn.Module):
    """The original ``ResNet50(embedding_dim)`` wrapper's layout around a (tiny) ResNet."""

    def __init__(self, embedding_dim):
        super().__init__()
        net = ref.ResNet(ref.BasicBlock, (1, 1, 1, 1), widths=(8, 16, 32, 64))
        self.resnet50 = torch.nn.Sequential(*list(net.children())[:-1])
        self.fc = torch.nn.Linear(64, embedding_dim) if embedding_dim else None

    def forward(self, x):
        x = torch.flatten(self.resnet50(x), 1)
        if self.fc is not None:
            x = self.fc(x)
        return torch.nn.functional.normalize(x, dim=1)


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model.eval()


def _save(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


def _images(n=10, size=32, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize(
    "arch,dim,out_dim,factory",
    [
        ("densenet_tiny", 24, 24, lambda d: OriginalDenseNet(d, **DENSENET_TINY)),
        ("densenet_tiny", 0, 32, lambda d: OriginalDenseNet(d, **DENSENET_TINY)),
        ("resnet_tiny", 12, 12, OriginalResNet),
        ("resnet_tiny", 0, 64, OriginalResNet),
    ],
)
def test_converted_embeddings_and_neighbours_match_torch(tmp_path, arch, dim, out_dim, factory):
    model = _randomise(factory(dim), seed=1)
    path = _save(model, tmp_path / "ckpt.pth")
    variables = convert_checkpoint(read_state_dict(path), arch, dim, source=path)
    x = _images()
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    got = np.asarray(XmirNet(arch=arch, embedding_dim=dim).apply(variables, jnp.asarray(x)))
    assert got.shape == want.shape == (10, out_dim)
    np.testing.assert_allclose(got, want, atol=1e-5)

    def top3(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return np.argsort(d, axis=1)[:, :3]

    np.testing.assert_array_equal(top3(got), top3(want))


def test_densenet121_checkpoint_has_725_backbone_tensors_and_fc(tmp_path):
    model = OriginalDenseNet(256)
    sd = model.state_dict()
    backbone = [k for k in sd if k.startswith("densenet121.0.")]
    assert len(backbone) == 725 and {"fc.weight", "fc.bias"} <= set(sd)
    variables = convert_checkpoint(
        {k: v.numpy() for k, v in sd.items()}, "densenet121", 256, source="x.pth"
    )
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"]["backbone"]))
    assert n == 6_953_856
    assert variables["params"]["fc"]["kernel"].shape == (1024, 256)


def test_mismatches_are_errors_never_silently_dropped(tmp_path):
    sd = {k: v.numpy() for k, v in OriginalDenseNet(24, **DENSENET_TINY).state_dict().items()}
    with pytest.raises(
        ConfigError, match="24-d embedding layer fc.*embedding_dim=0.*:embedding_dim=24"
    ):
        convert_checkpoint(sd, "densenet_tiny", 0)
    no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    with pytest.raises(ConfigError, match="no embedding layer fc.*embedding_dim=256"):
        convert_checkpoint(no_fc, "densenet_tiny", 256)
    with pytest.raises(CheckpointMismatchError, match="missing: params/features/norm5/scale"):
        convert_checkpoint(
            {k: v for k, v in sd.items() if k != "densenet121.0.norm5.weight"}, "densenet_tiny", 24
        )
    with pytest.raises(CheckpointMismatchError, match="unexpected: extra.weight"):
        convert_checkpoint({**sd, "extra.weight": np.ones(3, np.float32)}, "densenet_tiny", 24)


@pytest.fixture(scope="module")
def original_export(tmp_path_factory, repo_root):
    """An original-layout 256-d checkpoint converted into a workdir and exported; a gallery."""
    from jaxproto import convert, export
    from jaxproto.viz.overlays import save_png

    tmp_path = tmp_path_factory.mktemp("original")
    model = _randomise(OriginalDenseNet(256, **DENSENET_TINY), seed=2)
    path = _save(model, tmp_path / "isic_densenet121_embed_256_seed_0_epoch_20_ckpt.pth")
    spec = os.path.join(repo_root, "configs", "xmir_isic.py") + ":synthetic,runlocal,image_size=32"
    workdir, exp = str(tmp_path / "run"), str(tmp_path / "export")
    argv = ["xmir", "--input", path, "--config", spec, "--out", workdir]
    assert cli.run(convert.main, argv) == 0
    assert cli.run(export.main, ["--workdir", workdir, "--out", exp]) == 0
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(3)
    for i in range(5):
        save_png(str(gallery / f"g{i}.png"), rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    return model, exp, gallery


def _index_and_query(exp, gallery, out_dir, index_flags=(), k=2):
    from jaxproto import retrieve

    index = str(out_dir / "index")
    argv = ["index", "--export", exp, "--images", str(gallery), "--out", index, *index_flags]
    assert cli.run(retrieve.main, argv) == 0
    argv = ["query", "--index", index, "--image", str(gallery / "g1.png"), "--k", str(k)]
    assert cli.run(retrieve.main, argv + ["--saliency", "none", "--out", str(out_dir / "q")]) == 0
    return index, json.loads((out_dir / "q" / "results.json").read_text())


def test_original_checkpoint_convert_export_retrieve(original_export, tmp_path):
    model, exp, gallery = original_export
    index, result = _index_and_query(exp, gallery, tmp_path)
    neighbours = result["neighbours"]
    assert result["search"] == "exact search"
    assert neighbours[0]["file"].endswith("g1.png") and neighbours[0]["distance"] < 1e-3
    # the index holds the torch model's embeddings of the same preprocessed images
    from jaxproto.data.images import load_image
    from jaxproto.methods.xmir.data import eval_transform

    x = np.stack([eval_transform(load_image(str(gallery / f"g{i}.png")), 32, 37) for i in range(5)])
    with torch.no_grad():
        want = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(np.load(os.path.join(index, "embeddings.npy")), want, atol=1e-5)
    d = np.linalg.norm(want - want[1], axis=1)
    assert [n["file"][-6:] for n in neighbours] == [f"g{j}.png" for j in np.argsort(d)[:2]]


def test_retrieve_index_faiss_flag_and_query_uses_it(original_export, tmp_path):
    pytest.importorskip("faiss")
    _, exp, gallery = original_export
    flags = ["--faiss", "ivf", "--nlist", "2", "--nprobe", "2"]
    index, got = _index_and_query(exp, gallery, tmp_path, flags, k=4)
    assert got["search"] == "approximate FAISS search (kind ivf, nlist 2, nprobe 2)"
    manifest = json.loads(open(os.path.join(index, "manifest.json")).read())
    assert manifest["faiss"] == {"kind": "ivf", "nlist": 2, "nprobe": 2}
    # both cells visited: the approximate search is exact here
    emb = np.load(os.path.join(index, "embeddings.npy"))
    d = np.linalg.norm(emb - emb[1], axis=1)
    assert [n["file"][-6:] for n in got["neighbours"]] == [f"g{j}.png" for j in np.argsort(d)[:4]]
    np.testing.assert_allclose(
        [n["distance"] for n in got["neighbours"]], np.sort(d)[:4], atol=1e-4
    )


def test_query_triplet_negative_box_and_self_saliency(original_export, tmp_path):
    from jaxproto import retrieve

    _, exp, gallery = original_export
    index = str(tmp_path / "index")
    assert (
        cli.run(retrieve.main, ["index", "--export", exp, "--images", str(gallery), "--out", index])
        == 0
    )
    out = tmp_path / "q"
    argv = ["query", "--index", index, "--image", str(gallery / "g1.png"), "--k", "3"]
    argv += ["--saliency", "simatt_triplet,simcam", "--saliency_top", "1", "--self_saliency"]
    assert (
        cli.run(retrieve.main, argv + ["--negative", str(gallery / "g4.png"), "--out", str(out)])
        == 0
    )
    saliency = json.loads((out / "results.json").read_text())["neighbours"][0]["saliency"]
    assert set(saliency) == {"simatt_triplet", "simcam"}
    assert np.load(out / "rank001_simatt_triplet.npy").shape == (32, 32)
    assert np.load(out / "query_self_simcam.npy").shape == (32, 32)
    assert "Self-similarity of the query" in (out / "index.html").read_text()
    bad = argv + ["--query_box", "100,100,4,4", "--out", str(tmp_path / "bad")]
    assert cli.run(retrieve.main, bad) == 2  # a box outside the 32x32 input
