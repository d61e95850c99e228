"""One training step of a classifier head, shared by the head and loss tests."""

from __future__ import annotations


def run_head(head, x, labels) -> dict:
    """Loss, its gradients and the loss statistics of one training step."""
    x = x.detach().clone().requires_grad_()
    head.weight.grad = None
    value = head.training_loss(x, labels)
    value.backward()
    return {
        "loss": value.detach(),
        "grad_x": x.grad,
        "grad_W": head.weight.grad,
        "stats": dict(head.loss.last_stats),
        "instance_fpr": head.loss.last_instance_fpr,
    }
