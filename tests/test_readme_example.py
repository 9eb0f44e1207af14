"""The README's example "NT in your own model's training", run exactly as written there: its step follows
the gradient of the model's loss + 1e-3 x the released three-pass NT penalty."""
import copy
import re
from pathlib import Path

import pytest
import torch

from families.base import mse_loss
from released_reference import released_three_pass_nt_loss

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## NT in your own model's training"


def readme_example() -> str:
    """The first ```python block of the README's section SECTION."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", len(SECTION))]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_the_readme_example_steps_along_the_loss_plus_the_nt_penalty():
    """Run in float64 (the default dtype while it runs), so that the penalty's small share of the
    gradient (about 1e-5 of it in this example) is checked sharply."""
    torch.manual_seed(0)
    namespace: dict = {}
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        exec(compile(readme_example(), str(README), "exec"), namespace)
    finally:
        torch.set_default_dtype(default)
    model, images, mos, optimizer = (namespace[k] for k in ("model", "images", "mos", "optimizer"))
    assert images.dtype == torch.float64
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["momentum"] == 0
    lr = optimizer.param_groups[0]["lr"]
    gradients = [p.grad.clone() for p in model.parameters()]
    before = copy.deepcopy(model)  # the parameters the step started from: plain SGD moved them by -lr * grad
    with torch.no_grad():
        for param, grad in zip(before.parameters(), gradients):
            param.add_(lr * grad)

    def score(x):
        return before(x)[:, 0]

    released = released_three_pass_nt_loss(score, images.detach(), mos, weight=1e-3, h=0.01, released_loss=mse_loss)
    expected = torch.autograd.grad(released.total, list(before.parameters()), retain_graph=True)
    mse_only = torch.autograd.grad(released.released, list(before.parameters()))
    assert namespace["loss"].item() == pytest.approx(released.total.item(), rel=1e-12)
    shares = [reference - plain for reference, plain in zip(expected, mse_only)]  # 1e-3 x the penalty's gradient
    largest = max(share.abs().max().item() for share in shares)
    assert largest > 0
    for grad, plain, share in zip(gradients, mse_only, shares):  # what the example added to its loss's gradient
        torch.testing.assert_close(grad - plain, share, rtol=1e-6, atol=1e-6 * largest)
