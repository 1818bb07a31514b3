"""Official Med-MICN checkpoint import: a PyTorch Neural_Concat_Model built here from the spec's
module layout (models.py / train_skin_neural.py / torch_explain ConceptEmbedding and
ConceptReasoningLayer) with random weights; the converted workdir must give the same concept
probabilities, ŷ_neural and ỹ (eval-mode BN = fair outputs, train-mode BN = faithful outputs)."""

import os

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from jaxproto import convert  # noqa: E402
from jaxproto.inference import load_for_inference  # noqa: E402
from tests.torch_reference_models import BasicBlock, Bottleneck, ResNet, randomize_  # noqa: E402

pytestmark = pytest.mark.torch


class LogitsResNet(ResNet):
    def forward(self, x):
        return super().forward(x)["logits"]


class ConceptEmbedding(nn.Module):
    def __init__(self, in_features, n_concepts, emb_size):
        super().__init__()
        self.emb_size = emb_size
        self.concept_context_generators = nn.ModuleList(
            nn.Sequential(nn.Linear(in_features, 2 * emb_size), nn.LeakyReLU())
            for _ in range(n_concepts)
        )
        self.concept_prob_predictor = nn.Sequential(nn.Linear(2 * emb_size, 1), nn.Sigmoid())

    def forward(self, x):
        embs, preds = [], []
        for gen in self.concept_context_generators:
            ctx = gen(x)
            p = self.concept_prob_predictor(ctx)
            embs.append((ctx[:, : self.emb_size] * p + ctx[:, self.emb_size :] * (1 - p))[:, None])
            preds.append(p)
        return torch.cat(embs, 1), torch.cat(preds, 1)


class ConceptReasoningLayer(nn.Module):
    def __init__(self, emb_size, n_classes, temperature=100.0):
        super().__init__()
        mlp = lambda: nn.Sequential(  # noqa: E731
            nn.Linear(emb_size, emb_size), nn.LeakyReLU(), nn.Linear(emb_size, n_classes)
        )
        self.filter_nn, self.sign_nn, self.temperature = mlp(), mlp(), temperature

    def forward(self, x, c):
        values = c.unsqueeze(-1).repeat(1, 1, self.sign_nn[2].out_features)
        s = torch.sigmoid(self.sign_nn(x))
        iff = torch.minimum(torch.maximum(1 - s, values), torch.maximum(s, 1 - values))
        logp = torch.log_softmax(self.filter_nn(x), dim=1)
        r = torch.sigmoid(logp - self.temperature * logp.mean(dim=1, keepdim=True))
        return torch.maximum(iff, 1 - r).min(dim=1).values


class NeuralConcatModel(nn.Module):
    def __init__(self, backbone, n_concepts, emb, hidden, proj):
        super().__init__()
        self.backbone = backbone
        self.concept_encoder = nn.Sequential(
            nn.Linear(1000, proj), nn.LeakyReLU(), ConceptEmbedding(proj, n_concepts, emb)
        )
        self.task_predictor_neural = ConceptReasoningLayer(emb, 2)
        self.task_predictor = nn.Sequential(
            nn.Linear(n_concepts * emb + 1000, hidden), nn.LeakyReLU(), nn.Linear(hidden, 2),
            nn.Sigmoid(),
        )  # fmt: skip
        self.task_concept_predictor = nn.Sequential(nn.Linear(n_concepts * emb, 2), nn.Sigmoid())

    def forward(self, x):
        f = self.backbone(x).view(x.size(0), -1)
        c_emb, c_pred = self.concept_encoder(f)
        y_neural = self.task_predictor_neural(c_emb, c_pred)
        y = self.task_predictor(torch.cat((f, c_emb.view(x.shape[0], -1)), dim=1))
        return y, y_neural, c_pred


# The code's head (pre-projection 10, T = 100, as the torch reference here) on the tiny ResNet;
# the synthetic variant's 64-wide pre-projection and T = 1 differ from it.
TINY = "backbone=resnet_tiny"


def _check(tmp_path, repo_root, backbone, arg, size, proj, hidden):
    torch.manual_seed(0)
    model = randomize_(NeuralConcatModel(backbone, 13, 8, hidden, proj), seed=1)
    ckpt = str(tmp_path / "ckpt.pth")
    torch.save(model.state_dict(), ckpt)
    out = str(tmp_path / "wd")
    spec = os.path.join(repo_root, "configs", "medmicn_ddi.py") + f":{arg},image_size={size}"
    assert convert.main(["medmicn", "--input", ckpt, "--config", spec, "--out", out]) == 0
    _, method, state = load_for_inference(out)
    x = np.random.default_rng(0).normal(size=(4, size, size, 3)).astype(np.float32)
    got = jax.jit(method.predict)(state, {"image": x})
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        for mode, pre in (("eval", ""), ("train", "faithful_")):
            model.train(mode == "train")
            y, y_neural, c_pred = model(xt)
            np.testing.assert_allclose(got[f"{pre}concept_probs"], c_pred.numpy(), atol=1e-4)
            np.testing.assert_allclose(got[f"{pre}y_neural"], y_neural.numpy(), atol=1e-4)
            np.testing.assert_allclose(got[f"{pre}fused"], y.numpy(), atol=1e-4)


def test_convert_tiny_resnet_checkpoint_matches_torch(tmp_path, repo_root):
    backbone = LogitsResNet(BasicBlock, [1, 1, 1, 1], widths=(8, 16, 32, 64))
    _check(tmp_path, repo_root, backbone, TINY, 64, proj=10, hidden=1000)


@pytest.mark.slow
def test_convert_resnet50_checkpoint_matches_torch(tmp_path, repo_root):
    backbone = LogitsResNet(Bottleneck, [3, 4, 6, 3])
    _check(tmp_path, repo_root, backbone, "backbone=resnet50", 224, proj=10, hidden=1000)


def test_convert_rejects_a_mismatched_checkpoint(tmp_path, repo_root):
    backbone = LogitsResNet(BasicBlock, [1, 1, 1, 1], widths=(8, 16, 32, 64))
    with pytest.raises(Exception, match="pre_proj|shape"):
        _check(tmp_path, repo_root, backbone, TINY, 64, proj=12, hidden=1000)


def test_convert_cli_reports_a_mismatch_in_one_line(tmp_path, repo_root, capsys):
    from jaxproto.common import cli

    torch.save({"backbone.fc.weight": torch.zeros(3, 3)}, str(tmp_path / "bad.pth"))
    spec = os.path.join(repo_root, "configs", "medmicn_ddi.py") + ":synthetic"
    argv = ["medmicn", "--input", str(tmp_path / "bad.pth"), "--config", spec]
    assert cli.run(convert.main, [*argv, "--out", str(tmp_path / "wd")]) == 2
