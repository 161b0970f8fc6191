"""Golden values for src/train/optim.rs: five steps of torch.optim.SGD and
Adam on a tiny linear regression. Run with the cache's Python:
    $FEWLABELS_PYTHON benches/pretrain/optim_golden.py
"""
import torch

x = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
y = torch.tensor([[0.5], [1.0]])
for name, make in [
    ("sgd", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.5, 0.999))),
]:
    lin = torch.nn.Linear(2, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.1, 0.2]]))
        lin.bias.copy_(torch.tensor([0.3]))
    opt = make(lin.parameters())
    for _ in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(lin(x), y).backward()
        opt.step()
    print(name, [float(v) for v in torch.cat([lin.weight.detach().flatten(), lin.bias.detach()])])
