"""Assignment-head metrics (issue 18) against fp64 references and inputs with known answers."""
import math

import pytest
import torch

from spherewatch.metrics import (
    dead_prototype_fraction,
    max_mean_probability,
    prototypes_in_use,
    teacher_entropy,
    teacher_student_kl,
    usage_entropy,
)
from spherewatch.metrics.head import head_stats, head_values, merge_head_stats


def _ref(t, s=None, tt=1.0, st=1.0, center=None):
    """Loop-free fp64 references written from the definitions (numpy-free, explicit sums)."""
    t = t.double()
    if center is not None:
        t = t - center.double()
    p = torch.softmax(t / tt, dim=1)
    k = p.shape[1]
    ent_rows = [-sum(float(v) * math.log(float(v)) for v in row if v > 0) for row in p]
    mean = p.mean(dim=0)
    usage = -sum(float(v) * math.log(float(v)) for v in mean if v > 0)
    out = {
        "teacher_entropy": sum(ent_rows) / len(ent_rows) / math.log(k),
        "usage_entropy": usage / math.log(k),
        "prototypes_in_use": math.exp(usage),
        "max_mean_probability": float(mean.max()),
        "dead_prototype_fraction": 1 - len(set(p.argmax(dim=1).tolist())) / k,
    }
    if s is not None:
        q = torch.softmax(s.double() / st, dim=1)
        out["teacher_student_kl"] = float((p * (p.log() - q.log())).sum(dim=1).mean())
    return out


@pytest.mark.parametrize("k,tt", [(16, 0.04), (256, 0.07), (1000, 1.0)])
def test_head_metrics_match_fp64_references(k, tt):
    g = torch.Generator().manual_seed(k)
    t = torch.randn(64, k, generator=g)
    s = torch.randn(64, k, generator=g)
    c = torch.randn(k, generator=g) * 0.1
    ref = _ref(t, s, tt, 0.1, c)
    got = {
        "teacher_entropy": teacher_entropy(t, tt, center=c),
        "usage_entropy": usage_entropy(t, tt, center=c),
        "prototypes_in_use": prototypes_in_use(t, tt, center=c),
        "max_mean_probability": max_mean_probability(t, tt, center=c),
        "dead_prototype_fraction": dead_prototype_fraction(t, tt, center=c),
        "teacher_student_kl": teacher_student_kl(t, s, tt, 0.1, center=c),
    }
    for name, v in got.items():
        assert v.dtype == torch.float32 and v.ndim == 0
        assert float(v) == pytest.approx(ref[name], rel=2e-5, abs=2e-6), name
    # the Monitor's path (sufficient statistics, split into two batches and merged) gives the same values
    a = head_stats(t[:40], s[:40], teacher_temp=tt, student_temp=0.1, center=c)
    b = head_stats(t[40:], s[40:], teacher_temp=tt, student_temp=0.1, center=c)
    vals = head_values(merge_head_stats(a, b))
    for name, v in vals.items():
        assert float(v) == pytest.approx(ref[name], rel=2e-5, abs=2e-6), name


def test_known_answers_uniform_one_prototype_balanced():
    k = 32
    uniform = torch.zeros(50, k)
    assert float(teacher_entropy(uniform)) == pytest.approx(1.0, abs=1e-6)
    assert float(usage_entropy(uniform)) == pytest.approx(1.0, abs=1e-6)
    assert float(prototypes_in_use(uniform)) == pytest.approx(k, rel=1e-5)
    assert float(max_mean_probability(uniform)) == pytest.approx(1 / k, rel=1e-5)
    assert float(teacher_student_kl(uniform, uniform)) == pytest.approx(0.0, abs=1e-7)

    one = torch.zeros(50, k)
    one[:, 7] = 1.0
    assert float(teacher_entropy(one, probs=True)) == 0.0
    assert float(usage_entropy(one, probs=True)) == 0.0
    assert float(prototypes_in_use(one, probs=True)) == pytest.approx(1.0)
    assert float(max_mean_probability(one, probs=True)) == pytest.approx(1.0)
    assert float(dead_prototype_fraction(one, probs=True)) == pytest.approx(1 - 1 / k)
    # the same from logits with a cold temperature
    logits = torch.randn(50, k) * 0.01
    logits[:, 7] += 1.0
    assert float(usage_entropy(logits, 0.001)) == pytest.approx(0.0, abs=1e-6)

    balanced = torch.eye(k).repeat(3, 1)  # every prototype argmax of 3 rows, one-hot
    assert float(teacher_entropy(balanced, probs=True)) == 0.0
    assert float(usage_entropy(balanced, probs=True)) == pytest.approx(1.0, abs=1e-6)
    assert float(prototypes_in_use(balanced, probs=True)) == pytest.approx(k, rel=1e-5)
    assert float(max_mean_probability(balanced, probs=True)) == pytest.approx(1 / k, rel=1e-5)
    assert float(dead_prototype_fraction(balanced, probs=True)) == 0.0


def test_two_prototypes_read_as_two_in_use():
    p = torch.zeros(10, 64)
    p[:5, 0] = 1.0
    p[5:, 1] = 1.0
    assert float(prototypes_in_use(p, probs=True)) == pytest.approx(2.0, rel=1e-5)
    assert float(usage_entropy(p, probs=True)) == pytest.approx(math.log(2) / math.log(64), rel=1e-5)


def test_probabilities_are_renormalised_per_row():
    p = torch.rand(20, 8) + 0.01
    assert float(usage_entropy(p * 3.0, probs=True)) == pytest.approx(float(usage_entropy(p, probs=True)), rel=1e-6)
    assert float(teacher_entropy(p.log(), 1.0)) == pytest.approx(float(teacher_entropy(p, probs=True)), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_any_float_dtype(dtype):
    t = torch.randn(32, 48, generator=torch.Generator().manual_seed(3))
    s = torch.randn(32, 48, generator=torch.Generator().manual_seed(4))
    x, y = t.to(dtype), s.to(dtype)
    ref = _ref(x.double(), y.double(), 0.5, 0.5)  # the reference on the rounded inputs
    assert float(teacher_entropy(x, 0.5)) == pytest.approx(ref["teacher_entropy"], rel=1e-4)
    assert float(usage_entropy(x, 0.5)) == pytest.approx(ref["usage_entropy"], rel=1e-4)
    assert float(teacher_student_kl(x, y, 0.5, 0.5)) == pytest.approx(ref["teacher_student_kl"], rel=1e-4)
    out = teacher_entropy(x, 0.5)
    assert out.dtype in (torch.float32, torch.float64)


def test_nonfinite_rows_are_dropped_from_the_statistics():
    t = torch.randn(10, 8)
    t[3, 2] = float("nan")
    st = head_stats(t)
    assert float(st["rows"]) == 9 and float(st["nonfinite_rows"]) == 1
    assert torch.isfinite(torch.stack(list(head_values(st).values()))).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        teacher_entropy(torch.zeros(4))
    with pytest.raises(ValueError):
        teacher_entropy(torch.zeros(4, 1))
    with pytest.raises(ValueError):
        teacher_student_kl(torch.zeros(4, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError):
        teacher_entropy(torch.zeros(4, 3), 0.0)
    with pytest.raises(ValueError):
        merge_head_stats(head_stats(torch.zeros(2, 3)), head_stats(torch.zeros(2, 4)))
