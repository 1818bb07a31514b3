"""Med-MICN losses, DCR layer, concept embedding, rules and metrics against independent numpy
loops (specs/medmicn.md §2-4, §8)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.methods.medmicn import dcr, evaluation, losses, rules
from jaxproto.methods.medmicn.model import ConceptEmbedding, ConceptReasoning


def _np_bce(p, y):
    total = 0.0
    for pi, yi in zip(p.ravel(), y.ravel(), strict=True):
        lp = max(math.log(pi), -100.0) if pi > 0 else -100.0
        lq = max(math.log(1 - pi), -100.0) if pi < 1 else -100.0
        total += -(yi * lp + (1 - yi) * lq)
    return total / p.size


def _np_ce(scores, labels):
    out = 0.0
    for s, y in zip(scores, labels, strict=True):
        m = max(s)
        out += -(s[y] - m - math.log(sum(math.exp(v - m) for v in s)))
    return out / len(labels)


def test_bce_matches_torch_semantics_including_the_clamp():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, (5, 4)).astype(np.float32)
    p[0, 0], p[1, 1], p[2, 2] = 0.0, 1.0, 1e-50  # saturated: clamp at -100, never inf
    y = (rng.random((5, 4)) < 0.5).astype(np.float32)
    y[0, 0], y[1, 1] = 1.0, 0.0
    got = float(losses.bce(jnp.asarray(p), jnp.asarray(y)))
    assert np.isfinite(got)
    assert got == pytest.approx(_np_bce(p.astype(np.float64), y), rel=1e-5)


@pytest.mark.parametrize("mode", ["ce_on_sigmoid", "ce_on_logits"])
def test_task_loss_modes(mode):
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (6, 2)).astype(np.float32)
    labels = rng.integers(0, 2, 6)
    scores = 1 / (1 + np.exp(-logits)) if mode == "ce_on_sigmoid" else logits
    want = _np_ce(scores.astype(np.float64).tolist(), labels.tolist())
    got = float(losses.task_loss(jnp.asarray(logits), jnp.asarray(labels), mode))
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="task_loss"):
        losses.task_loss(jnp.asarray(logits), jnp.asarray(labels), "mse")


def test_total_loss_weights_and_side_head_not_added():
    rng = np.random.default_rng(2)
    out = {
        "fused_logits": jnp.asarray(rng.normal(size=(4, 2)), jnp.float32),
        "concept_probs": jnp.asarray(rng.uniform(0.05, 0.95, (4, 3)), jnp.float32),
        "y_neural": jnp.asarray(rng.uniform(0.05, 0.95, (4, 2)), jnp.float32),
        "side": jnp.asarray(rng.uniform(0.05, 0.95, (4, 2)), jnp.float32),
    }
    labels = jnp.asarray([0, 1, 1, 0])
    concepts = jnp.asarray(rng.integers(0, 2, (4, 3)), jnp.float32)
    loss, terms = losses.total_loss(
        out, labels, concepts, task_mode="ce_on_sigmoid", w_task=1.0, w_concept=0.1, w_neural=0.1
    )
    onehot = np.eye(2)[np.asarray(labels)]
    task = _np_ce(
        np.asarray(jax.nn.sigmoid(out["fused_logits"]), np.float64).tolist(), [0, 1, 1, 0]
    )
    c = _np_bce(np.asarray(out["concept_probs"], np.float64), np.asarray(concepts))
    n = _np_bce(np.asarray(out["y_neural"], np.float64), onehot)
    assert float(loss) == pytest.approx(task + 0.1 * c + 0.1 * n, rel=1e-5)
    assert float(terms["side_loss"]) > 0


def _np_dcr(c, sign_logits, filter_logits, t):
    b, n, k = sign_logits.shape
    y = np.zeros((b, k))
    r = np.zeros((b, n, k))
    s = 1 / (1 + np.exp(-sign_logits))
    for i in range(b):
        for j in range(k):
            col = filter_logits[i, :, j]
            logp = col - (col.max() + math.log(np.exp(col - col.max()).sum()))
            r[i, :, j] = 1 / (1 + np.exp(-(logp - t * logp.mean())))
            terms = []
            for q in range(n):
                a, v = s[i, q, j], c[i, q]
                iff = min(max(1 - a, v), max(a, 1 - v))
                terms.append(max(iff, 1 - r[i, q, j]))
            y[i, j] = min(terms)
    return y, r


@pytest.mark.parametrize("temperature", [100.0, 1.0])
def test_dcr_reasoning_matches_numpy(temperature):
    rng = np.random.default_rng(3)
    c = rng.uniform(0, 1, (3, 5))
    sl, fl = rng.normal(0, 2, (3, 5, 2)), rng.normal(0, 2, (3, 5, 2))
    want_y, want_r = _np_dcr(c, sl, fl, temperature)
    r = dcr.relevance(jnp.asarray(fl), "softselect", temperature)
    y = dcr.reason(jnp.asarray(c), jax.nn.sigmoid(jnp.asarray(sl)), r)
    np.testing.assert_allclose(np.asarray(r), want_r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(y), want_y, rtol=1e-5, atol=1e-6)


def test_softselect_is_a_no_op_when_temperature_reaches_n():
    rng = np.random.default_rng(4)
    for n in (8, 13):
        logits = rng.normal(0, 10, (16, n, 2))
        assert float(jnp.min(dcr.softselect(jnp.asarray(logits), 100.0))) >= 0.5
        assert float(jnp.min(dcr.softselect(jnp.asarray(logits), float(n)))) >= 0.5
    sparse = dcr.softselect(jnp.asarray(rng.normal(0, 5, (16, 13, 2))), 1.0)
    assert float(jnp.min(sparse)) < 0.5  # below N some concepts are filtered out


def test_relevance_gates():
    fl = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 2)))
    np.testing.assert_allclose(dcr.relevance(fl, "sigmoid", 1.0), jax.nn.sigmoid(fl), rtol=1e-6)
    mx = np.asarray(dcr.relevance(fl, "softmax_max", 1.0))
    np.testing.assert_allclose(mx.max(axis=1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="relevance_gate"):
        dcr.relevance(fl, "hard", 1.0)


def test_concept_embedding_matches_numpy_per_concept_loop():
    z = np.random.default_rng(6).normal(size=(3, 4)).astype(np.float32)
    mod = ConceptEmbedding(num_concepts=5, emb_size=2, torch_init=True)
    params = mod.init(jax.random.key(0), jnp.asarray(z))["params"]
    emb, p, _ = mod.apply({"params": params}, jnp.asarray(z))
    w, b = np.asarray(params["context_kernel"]), np.asarray(params["context_bias"])
    u, beta = (
        np.asarray(params["prob_head"]["kernel"])[:, 0],
        np.asarray(params["prob_head"]["bias"]),
    )
    assert np.all(np.abs(w) <= 0.5 + 1e-6)  # torch init U(±1/√4)
    for i in range(5):
        h = z @ w[i] + b[i]
        h = np.where(h > 0, h, 0.01 * h)
        pi = 1 / (1 + np.exp(-(h @ u + beta[0])))
        np.testing.assert_allclose(np.asarray(p)[:, i], pi, rtol=1e-5)
        want = pi[:, None] * h[:, :2] + (1 - pi[:, None]) * h[:, 2:]
        np.testing.assert_allclose(np.asarray(emb)[:, i], want, rtol=1e-5, atol=1e-6)


def test_reasoning_module_shares_phi_psi_across_concepts():
    emb = jnp.asarray(np.random.default_rng(7).normal(size=(2, 3, 4)), jnp.float32)
    mod = ConceptReasoning(num_classes=2, temperature=100.0)
    params = mod.init(jax.random.key(1), emb, jnp.full((2, 3), 0.5))["params"]
    assert set(params) == {"sign_nn_0", "sign_nn_2", "filter_nn_0", "filter_nn_2"}
    assert params["sign_nn_0"]["kernel"].shape == (4, 4)


def test_local_and_global_rules_follow_the_dcr_explain_semantics():
    c = np.array([[0.9, 0.1, 0.8], [0.2, 0.9, 0.1], [0.5, 0.5, 0.5]])
    s = np.zeros((3, 3, 2))
    s[:, 0, 1], s[:, 1, 1], s[:, 2, 1] = 0.95, 0.05, 0.9  # class 1: c0 & ~c1 & c2
    r = np.ones((3, 3, 2))
    r[:, 2, 1] = 0.01  # c2 irrelevant for class 1
    y = np.array([[0.1, 0.9], [0.0, 0.2], [0.6, 0.7]])
    out = rules.local_rules(c, s, r, y, ["a", "b", "c"], ["neg", "pos"])
    assert [(o.sample, o.class_name) for o in out] == [(0, "pos"), (1, ""), (2, "neg"), (2, "pos")]
    assert out[0].minterm() == "a & ~b"
    assert out[0].text() == "pos <= a & ~b"
    assert out[0].literals[0].truth == pytest.approx(0.9)  # min(max(.05,.9), max(.95,.1))
    assert out[0].attention == (1.0, -1.0, 0.0)
    assert out[1].class_index == -1 and out[1].minterm() == ""
    assert out[0].minterm(exact=True).startswith("0.900 (a)")
    table = rules.global_rules(out, ["neg", "pos"])
    assert table["pos"][0] == ("a & ~b", 2) and sum(n for _, n in table["pos"]) == 2


def test_check_planted_counts_extra_literals():
    planted = [[("Papule", True), ("Xerosis", False)]]
    ok = rules.check_planted("Papule & ~Xerosis & Cyst", planted)
    assert ok["ok"] and ok["extra_literals"] == 1 and ok["extra"] == ["Cyst"]
    bad = rules.check_planted("Papule & Xerosis", planted)
    assert not bad["ok"] and bad["missing"] == ["~Xerosis"]
    dnf = rules.check_planted("Xerosis", [[("Papule", False)], [("Xerosis", True)]])
    assert dnf["ok"] and dnf["extra_literals"] == 0


def _rule(sample, cls, name, text):
    lits = tuple(
        rules.Literal(0, t.lstrip("~"), not t.startswith("~"), 1.0) for t in text.split(" & ") if t
    )
    return rules.LocalRule(sample, cls, name, lits, (), 1.0)


def test_planted_check_per_class_and_per_disjunct():
    # malignant <=> P & ~X (a conjunction: its top global minterm); benign <=> ~P | X (each
    # disjunct on the samples where only it holds; P=0 & X=1 satisfies both: not checked).
    concepts = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0], [0, 0, 1], [1, 1, 0]])
    concepts = np.vstack([concepts, [[0, 1, 0]]])
    local = [
        _rule(0, 1, "mal", "P & ~X & ~C"),
        _rule(1, 1, "mal", "P & ~X & ~C"),
        _rule(2, 1, "mal", "P & C"),
        _rule(3, 0, "ben", "~P & ~C"),
        _rule(4, 0, "ben", "~P & ~X"),
        _rule(4, 1, "mal", "~X"),  # a second active class on the same sample
        _rule(5, 0, "ben", "~C"),
        _rule(6, 0, "ben", "~C"),
    ]
    planted = {"mal": [[("P", True), ("X", False)]], "ben": [[("P", False)], [("X", True)]]}
    out = rules.check_planted_rules(local, concepts, ["P", "X", "C"], planted)
    mal = out["mal"]["alternatives"]
    assert len(mal) == 1 and mal[0]["samples"] == 4 and mal[0]["count"] == 2
    assert mal[0]["rule"] == "P & ~X & ~C" and mal[0]["ok"] and mal[0]["extra"] == ["~C"]
    assert out["mal"]["ok"] and out["mal"]["ambiguous"] == 0
    not_p, x = out["ben"]["alternatives"]
    assert not_p["samples"] == 2 and not_p["ok"] and not_p["count"] == 1
    assert not_p["rule"] == "~P & ~C"  # tie at one sample each: the first minterm by text
    assert x["samples"] == 1 and not x["ok"] and x["missing"] == ["X"]
    assert out["ben"]["ambiguous"] == 1 and not out["ben"]["ok"]


def test_protocol_metrics_against_numpy():
    labels = np.array([0, 1, 1, 0, 1, 0])
    fused = np.array([[0.9, 0.2], [0.6, 0.7], [0.3, 0.4], [0.2, 0.1], [0.1, 0.8], [0.7, 0.6]])
    cp = np.array([[0.9, 0.1]] * 6)
    cc = np.array([[1, 0], [1, 1], [1, 0], [0, 0], [1, 0], [1, 0]])
    faithful = evaluation.protocol_metrics("faithful", fused, fused, cp, labels, cc)
    onehot = np.eye(2)[labels]
    hard = (fused > 0.5).astype(int)
    subset = np.mean([np.array_equal(h, o) for h, o in zip(hard, onehot, strict=True)])
    assert faithful["task_accuracy"] == pytest.approx(subset)  # rows 0, 4, 5? exact-column match
    assert faithful["concept_accuracy"] == pytest.approx(np.mean((cp > 0.5) == cc))

    def auc(y, s):  # Mann-Whitney with ties counted half
        pos, neg = s[y == 1], s[y == 0]
        return np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])

    want_auc = np.mean([auc(onehot[:, j], hard[:, j]) for j in range(2)])
    assert faithful["auc"] == pytest.approx(want_auc)
    fair = evaluation.protocol_metrics("fair", fused, fused, cp, labels, cc)
    assert fair["task_accuracy"] == pytest.approx(np.mean(fused.argmax(1) == labels))
    assert fair["auc"] == pytest.approx(np.mean([auc(onehot[:, j], fused[:, j]) for j in range(2)]))


@pytest.mark.torch
def test_bce_gradient_is_torch_s_and_finite_at_saturated_probabilities():
    torch = pytest.importorskip("torch")
    p = np.array([0.0, 1.0, 0.3, 1.0, 0.0, 0.999], np.float32)
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0], np.float32)
    tp = torch.tensor(p, requires_grad=True)
    want = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(y))
    want.backward()
    value, grad = jax.value_and_grad(losses.bce)(jnp.asarray(p), jnp.asarray(y))
    assert np.isfinite(np.asarray(grad)).all()
    np.testing.assert_allclose(float(value), want.item(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(grad), tp.grad.numpy(), rtol=1e-5)
