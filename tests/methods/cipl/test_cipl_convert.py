"""Official CIPL checkpoint import: a PyTorch CIPL built here (cipl.md §1 module and key layout,
small DenseNet with torchvision names, random weights) vs the converted jaxproto model."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxproto.data.records import DatasetIndex  # noqa: E402
from jaxproto.methods.cipl import config  # noqa: E402
from jaxproto.methods.cipl.convert import convert_official  # noqa: E402
from jaxproto.methods.cipl.method import CiplMethod  # noqa: E402

pytestmark = pytest.mark.torch

from tests import torch_reference_models as ref  # noqa: E402

F, tnn = torch.nn.functional, torch.nn

C, PPC, D, SIZE = 4, 2, 16, 64
DENSE = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)


class Features(tnn.Module):
    """densenet_features: torchvision DenseNet ``features`` + the biased 1x1 ``toplayer``."""

    def __init__(self):
        super().__init__()
        self.features = ref.DenseNet(**DENSE).features
        self.toplayer = tnn.Conv2d(self.features.norm5.num_features, D, 1, bias=True)

    def forward(self, x):
        tap = x
        for name, module in self.features.named_children():
            if name == "norm5":
                tap = x  # denseblock4 output; norm5 still runs (its output is discarded)
            x = module(x)
        return self.toplayer(tap)


def _add_on():
    return tnn.Sequential(tnn.Conv2d(D, D, 1), tnn.ReLU(), tnn.Conv2d(D, D, 1), tnn.Sigmoid())


class TorchCipl(tnn.Module):
    def __init__(self):
        super().__init__()
        p = C * PPC
        self.prototype_vectors = tnn.Parameter(torch.rand(p, D, 1, 1))
        self.ones = tnn.Parameter(torch.ones(p, D, 1, 1), requires_grad=False)
        self.prototype_vectors_ema = tnn.Parameter(torch.rand(p, D, 1, 1))
        self.features = Features()
        self.add_on_layers = _add_on()
        self.last_layer = tnn.Linear(p, C, bias=False)
        self.features_ema = Features()
        self.add_on_layers_ema = _add_on()
        self.last_layer_ema = tnn.Linear(p, C, bias=False)

    def forward(self, x):
        z = self.add_on_layers(self.features(x))
        x2 = F.conv2d(z**2, self.ones)
        xp = F.conv2d(z, self.prototype_vectors)
        p2 = torch.sum(self.prototype_vectors**2, dim=(1, 2, 3)).view(-1, 1, 1)
        d = F.relu(x2 + (-2 * xp + p2))
        min_d = -F.max_pool2d(-d, kernel_size=(d.shape[2], d.shape[3])).flatten(1)
        logits = self.last_layer(torch.exp(-min_d / D))
        return logits, min_d, torch.exp(-d / D)


def _randomise(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean") or name.endswith("norm0.weight"):
                t.copy_(0.2 * torch.randn(t.shape, generator=g))
            elif "last_layer" in name:
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    model = TorchCipl().eval()
    _randomise(model)
    cfg = config.get_config("chestxray14", "synthetic")
    # The official DenseNet layout and exp(-d / D) similarity (the synthetic variant uses a tiny
    # ResNet, a sharper scale and a pretraining head).
    cfg.model.update(
        backbone="densenet_tiny",
        tap="",
        image_size=SIZE,
        prototypes_per_class=PPC,
        proto_dim=D,
        similarity_scale=0.0,
    )
    cfg.train.pretrain_epochs = 0
    index = DatasetIndex("t", [f"c{k}" for k in range(C)], {}, background_class=C - 1)
    method = CiplMethod(cfg, index)
    template = jax.eval_shape(method.init, jax.random.key(0))
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    return model, method, convert_official(sd, cfg, template=template), sd


def test_state_dict_layout(pair):
    _, _, _, sd = pair
    keys = list(sd)
    assert keys[:3] == ["prototype_vectors", "ones", "prototype_vectors_ema"]
    assert keys[3] == "features.features.conv0.weight"
    assert "features.toplayer.bias" in keys and "add_on_layers.2.weight" in keys
    assert keys[-1] == "last_layer_ema.weight"


def test_converted_model_matches_torch(pair):
    model, method, state, _ = pair
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.no_grad():
        logits, min_d, sim = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    with jax.default_matmul_precision("highest"):
        out = jax.jit(method.apply_eval)(state, x)
        pred = jax.jit(method.predict)(state, {"image": x})
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["min_distances"], min_d.numpy(), rtol=1e-4, atol=1e-4)
    got_sim = np.exp(-np.asarray(out["distances"]) / D)
    np.testing.assert_allclose(got_sim, sim.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-5)
    z = logits.numpy()
    np.testing.assert_allclose(
        pred["probs"], 1 / (1 + np.exp(-(z[:, :3] - z[:, 3:]))), rtol=1e-4, atol=1e-5
    )


def test_ema_branch_and_errors(pair):
    model, method, state, sd = pair
    np.testing.assert_allclose(
        state["extra"]["ema_params"]["prototype_vectors"], sd["prototype_vectors_ema"][:, :, 0, 0]
    )
    np.testing.assert_allclose(
        state["extra"]["ema_params"]["last_layer"]["kernel"], sd["last_layer_ema.weight"].T
    )
    np.testing.assert_allclose(
        state["extra"]["ema_batch_stats"]["backbone"]["features"]["norm5"]["var"],
        sd["features_ema.features.norm5.running_var"],
    )
    bad = dict(sd)
    del bad["features.toplayer.bias"]
    with pytest.raises(KeyError, match="toplayer.bias"):
        convert_official(bad, method.config)
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_official({**sd, "extra.weight": np.zeros(1)}, method.config)
