"""The optimizer a run builds, checked against hand-computed values: which parameters decay, the learning rate at
every step (scaling, warm-up, cosine, constant), and the lr TensorBoard shows."""

from __future__ import annotations

import pytest
import torch
from conftest import events, setup, train

BASE = 0.1  # sgd's optim.lr at optim.base_batch_size=128; adamw's is 2e-3


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_weight_decay_shrinks_weight_matrices_and_kernels_only(optim) -> None:
    """With zero gradients, one step of SGD (momentum) or AdamW moves a parameter only by its weight decay:
    p ← p · (1 − lr · wd) for p.dim() > 1 (the optimizer's own update is 0), unchanged for γ, β and biases."""
    built = setup(f"optim={optim}", "optim.weight_decay=0.5", "optim.schedule=constant")
    model, lr = built.model, built.optimizer.param_groups[0]["lr"]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # a zero gradient, not None: None would skip the parameter
    built.optimizer.step()
    kinds = {p.dim() for p in model.parameters()}
    assert kinds == {1, 2, 4}  # conv kernels, the head's matrix, and vectors (γ, β, biases)
    for name, p in model.named_parameters():
        factor = 1 - lr * 0.5 if p.dim() > 1 else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0, msg=name)


@pytest.mark.parametrize(
    ("optim", "scaling", "batch", "expected"),
    [
        ("sgd", "none", 8, 0.1),
        ("sgd", "linear", 8, 0.1 * 8 / 128),
        ("sgd", "sqrt", 32, 0.1 * 0.5),
        ("adamw", "none", 32, 2e-3),
        ("adamw", "sqrt", 8, 2e-3 * 0.25),
    ],
)
def test_the_optimizer_starts_at_the_scaled_learning_rate(optim, scaling, batch, expected) -> None:
    built = setup(f"optim={optim}", f"optim.lr_scaling={scaling}", f"batch_size={batch}")
    assert [g["lr"] for g in built.optimizer.param_groups] == pytest.approx([expected] * 2, rel=1e-12)


# Hand-computed factors of the base lr after k scheduler steps, k = 0 … 6, for 6 steps with 2 of warm-up:
# warm-up (k + 1) / 2, then cosine 0.5 · (1 + cos(π · (k − 2) / 4)) or constant 1.
SCHEDULES = {
    "cosine": [0.5, 1.0, 1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0],
    "constant": [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
    "step": [0.5, 1.0, 1.0, 0.1, 0.01, 0.01, 0.01],  # milestones 0.5, 0.75 of 6 steps: steps 3 and 4
}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_learning_rate_at_every_step_with_warm_up(schedule) -> None:
    built = setup("budget=steps", "max_steps=6", "optim.warmup_steps=2", f"optim.schedule={schedule}",
                  "optim.lr_scaling=none")  # fmt: skip
    seen = []
    for _ in range(7):
        seen.append([g["lr"] for g in built.optimizer.param_groups])
        built.optimizer.step()
        built.scheduler.step()
    assert seen == [pytest.approx([BASE * f] * 2, abs=1e-12) for f in SCHEDULES[schedule]]


def test_tensorboard_shows_the_cosine_learning_rate_of_every_step(tmp_path) -> None:
    """The lr tag after step s is lr · 0.5 · (1 + cos(π s / 4)) for a 4-step budget (s = 1 … 4)."""
    train(tmp_path, "model=mlp", "model.width=16", "budget=steps", "max_steps=4", "optim.lr_scaling=none",
          "log.x_axis=steps", "log.activations=false")  # fmt: skip
    lr = events(tmp_path).Scalars("train/lr")
    assert [e.step for e in lr] == [1, 2, 3, 4]
    assert [e.value for e in lr] == pytest.approx([BASE * f for f in (0.8535534, 0.5, 0.1464466, 0.0)], abs=1e-7)


def test_adamw_takes_two_hand_computed_steps_with_decoupled_weight_decay() -> None:
    """optim=adamw, by hand in float64 (Loshchilov & Hutter): p ← p · (1 − lr · wd) − lr · m̂ / (sqrt(v̂) + 1e-8),
    m and v the betas' moving averages of g and g², bias-corrected; wd only for p.dim() > 1. The decay is not
    added to the gradient (that would be Adam with L2), and the configured betas are the ones used."""
    built = setup("optim=adamw", "optim.weight_decay=0.5", "optim.betas=[0.8,0.95]", "optim.schedule=constant",
                  "optim.lr_scaling=none")  # fmt: skip
    lr, (b1, b2), model = 2e-3, (0.8, 0.95), built.model
    assert built.optimizer.param_groups[0]["lr"] == lr
    g = torch.Generator().manual_seed(0)
    hand = {name: [p.detach().double().clone(), 0.0, 0.0] for name, p in model.named_parameters()}  # p, m, v
    for t in (1, 2):
        for name, p in model.named_parameters():
            p.grad = torch.randn(p.shape, generator=g) * 10**t  # the second step's gradients 10× the first's
            value, m, v = hand[name]
            grad = p.grad.double()
            m, v = b1 * m + (1 - b1) * grad, b2 * v + (1 - b2) * grad**2
            decay = 0.5 if p.dim() > 1 else 0.0
            value = value * (1 - lr * decay) - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + 1e-8)
            hand[name] = [value, m, v]
        built.optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p.detach().double(), hand[name][0], rtol=1e-5, atol=1e-7, msg=f"{name} {t}")
