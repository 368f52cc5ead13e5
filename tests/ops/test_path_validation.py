"""Scan-path validation (issue 29): user-built ``paths`` for ``multi_scan`` / ``projected_multi_scan`` on every backend
(the reference, the PyTorch path and the Triton kernels, interpreter on CPU): valid routes match the float64
reference, malformed ones raise a ValueError naming the route before any kernel runs; each tensor is read once;
torch.compile (no lru_cache warning, fake tensors skipped, real ones checked by the op) and torch.jit.trace (no
TracerWarnings from vssm.ops)."""
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vssm.ops.common as ops_common
from vssm.ops import multi_scan, multi_scan_ref, projected_multi_scan, projected_multi_scan_composed, scan_paths

from .scan_cases import KERNEL_DEVICE, backend, kernel_device, rel_err

PAD = scan_paths.PAD
BACKENDS = ("ref", "torch", "triton")
# (mutation, what the message names); None: the routes stay valid
MUTATIONS = (None, "index_L", "index_huge", "index_minus_2", "repeat", "pad_for_token", "short")


def _scan_inputs(num_directions, length, batch=1, dim=2, d_state=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(batch, dim, length, generator=g),
                delta=torch.randn(batch, num_directions, dim, length, generator=g) * 0.5,
                A=-torch.rand(num_directions, dim, d_state, generator=g) - 0.2,
                B=torch.randn(batch, num_directions, d_state, length, generator=g),
                C=torch.randn(batch, num_directions, d_state, length, generator=g),
                D=torch.randn(num_directions, dim, generator=g),
                z=torch.randn(batch, dim, length, generator=g),
                delta_bias=torch.randn(num_directions, dim, generator=g))


@st.composite
def path_cases(draw):
    """(paths, L, mutation, route, (batch, dim, N)): K routes, each a random permutation of range(L) with PAD steps
    anywhere, then at most one mutation in route ``route``; the map's other sizes."""
    num_directions = draw(st.integers(1, 3))
    length = draw(st.integers(1, 6))
    pads = draw(st.integers(0, 2))
    rows = []
    for _ in range(num_directions):
        row = draw(st.permutations(list(range(length)) + [PAD] * pads))
        rows.append(row)
    mutation = draw(st.sampled_from(MUTATIONS + (None,) * 5))  # about half the examples valid
    route = draw(st.integers(0, num_directions - 1))
    row = rows[route]
    real_steps = [j for j, v in enumerate(row) if v != PAD]
    step = draw(st.sampled_from(real_steps))
    if mutation == "index_L":
        row[step] = length
    elif mutation == "index_huge":
        row[step] = 10 ** 7
    elif mutation == "index_minus_2":
        row[step] = -2
    elif mutation == "repeat":
        if length == 1:
            row.append(row[step])  # the one token twice
        else:
            row[step] = row[real_steps[0] if step != real_steps[0] else real_steps[-1]]
    elif mutation == "pad_for_token":
        row[step] = PAD
    elif mutation == "short":  # every route shorter than L: drop every PAD and one real step
        rows = [[v for v in r if v != PAD][:-1] for r in rows]
    width = max(len(r) for r in rows)
    if mutation != "short":
        rows = [r + [PAD] * (width - len(r)) for r in rows]  # "repeat" on L = 1 made one row longer
    dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    sizes = (draw(st.integers(0, 2)), draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 5])))
    return torch.tensor(rows, dtype=dtype).view(num_directions, width), length, mutation, route, sizes


def _expected_message(mutation, route, length):
    if mutation == "short":
        return rf"fewer than the L={length} tokens"
    return rf"route {route} \(row {route} of paths\)"


@settings(max_examples=60, deadline=None)
@given(case=path_cases())
def test_valid_paths_match_reference_and_malformed_ones_raise(case):
    """Property: on every backend, valid routes give the float64 reference's output and gradients; malformed routes
    (an index equal to L or far out of range, -2, a repeated token, PAD in place of a token, routes shorter than L)
    raise a ValueError naming the route, never a crash or a silent result."""
    paths, length, mutation, route, (batch, dim, d_state) = case
    num_directions = paths.shape[0]
    inputs = _scan_inputs(num_directions, length, batch, dim, d_state)
    weights = torch.randn(batch, dim, length, dtype=torch.float64)
    if mutation is None:
        ref64 = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
        y_ref = multi_scan_ref(**ref64, paths=paths, delta_softplus=True)
        g_ref = torch.autograd.grad((y_ref * weights).sum(), list(ref64.values()))
    for name in BACKENDS:
        with backend(name):
            device = kernel_device()
            leaves = {k: v.to(device).requires_grad_(True) for k, v in inputs.items()}
            if mutation is None:
                y = multi_scan(**leaves, paths=paths.to(device), delta_softplus=True)
                grads = torch.autograd.grad((y.double() * weights.to(device)).sum(), list(leaves.values()))
                assert rel_err(y.detach().cpu(), y_ref.detach()) < 2e-5, name
                for key, g, ref in zip(leaves, grads, g_ref):
                    assert rel_err(g.cpu(), ref) < 1e-4, (name, key)
            else:
                with pytest.raises(ValueError, match=_expected_message(mutation, route, length)):
                    multi_scan(**leaves, paths=paths.to(device), delta_softplus=True)


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("mutation", MUTATIONS[1:])
def test_projected_multi_scan_rejects_malformed_paths(name, mutation):
    """The fused (Triton) and composed paths of projected_multi_scan: the same checks, before the GEMMs."""
    paths = scan_paths.build("cross", (2, 3)).clone()
    length = 6
    if mutation == "index_L":
        paths[1, 2] = length
    elif mutation == "index_huge":
        paths[1, 2] = 10 ** 7
    elif mutation == "index_minus_2":
        paths[1, 2] = -2
    elif mutation == "repeat":
        paths[1, 2] = paths[1, 3]
    elif mutation == "pad_for_token":
        paths[1, 2] = PAD
    else:
        paths = paths[:, :5]
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(2, 4, length, generator=g), torch.randn(4, 1 + 2 * 2, 4, generator=g),
            torch.randn(4, 4, 1, generator=g), torch.zeros(4, 4), torch.zeros(4, 4, 2), torch.ones(4, 4))
    with backend(name):
        device = kernel_device()
        with pytest.raises(ValueError, match=_expected_message(mutation, 1, length)):
            projected_multi_scan(*(a.to(device) for a in args), paths.to(device))


def test_messages_name_the_route_and_the_index():
    cases = [
        ([[0, 1, 2, 3], [0, 1, 2, 4]], "route 1 (row 1 of paths) holds index 4 at step 3"),
        ([[0, 1, 2, 3], [0, 10 ** 7, 2, 3]], "holds index 10000000 at step 1"),
        ([[0, 1, -2, 3]], "route 0 (row 0 of paths) holds index -2 at step 2"),
        ([[3, 2, 1, 0], [0, 1, 1, 3]], "route 1 (row 1 of paths) visits token 1 2 times (steps [1, 2])"),
        ([[0, PAD, 2, 3]], "route 0 (row 0 of paths) never visits token 1"),
        ([[0, 1, 2]], "paths have 3 steps per route, fewer than the L=4 tokens"),
    ]
    for rows, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            scan_paths.check(torch.tensor(rows), 4, "multi_scan")
    with pytest.raises(TypeError, match="paths must be an integer tensor"):
        scan_paths.check(torch.zeros(1, 4), 4)
    with pytest.raises(ValueError, match=re.escape("paths must be 2-D (K, Lp) with K >= 1, got shape (4,)")):
        scan_paths.check(torch.arange(4), 4)
    with pytest.raises(ValueError, match="K >= 1"):
        scan_paths.check(torch.zeros(0, 4, dtype=torch.long), 4)


def _count_value_checks(monkeypatch) -> list:
    calls = []
    check_values = ops_common._check_path_values

    def counting(paths, length, fn):
        calls.append(fn)
        return check_values(paths, length, fn)

    monkeypatch.setattr(ops_common, "_check_path_values", counting)
    return calls


@pytest.mark.parametrize("name", BACKENDS)
def test_each_paths_tensor_is_read_once(monkeypatch, name):
    """A user tensor's values are read on its first call only (forward and backward included); ``build``'s results
    never; an in-place edit makes the tensor checked again (and a malformed edit raises)."""
    calls = _count_value_checks(monkeypatch)
    device = KERNEL_DEVICE if name == "triton" else "cpu"
    built = scan_paths.build("zigzag", (2, 3), device=device)
    user = built.flip(1).clone()  # reversed routes: valid, not from build
    inputs = _scan_inputs(4, 6)
    with backend(name):
        for paths in (built, user, user, built, user):
            leaves = {k: v.to(device).requires_grad_(True) for k, v in inputs.items()}
            multi_scan(**leaves, paths=paths, delta_softplus=True).sum().backward()
        assert len(calls) == 1
        user[0, 0] = user[0, 1]  # _version bumps: checked again, and now malformed
        with pytest.raises(ValueError, match="route 0"):
            multi_scan(**inputs_on(inputs, device), paths=user, delta_softplus=True)
        assert len(calls) == 2


def inputs_on(inputs: dict, device) -> dict:
    return {k: v.to(device) for k, v in inputs.items()}


def test_fake_tensors_are_not_read_and_real_ones_are_checked_under_compile(monkeypatch):
    """torch.compile traces with fake tensors (layout checked, values not read); the registered op checks the real
    tensors it runs on, once per tensor."""
    calls = _count_value_checks(monkeypatch)
    inputs = _scan_inputs(2, 5)

    def fn(x, delta, A, B, C, D, z, delta_bias, paths):
        return multi_scan(x, delta, A, B, C, paths, D, z, delta_bias, True) * 2

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    good = torch.tensor([[4, 3, 2, 1, 0], [0, 2, 4, 1, 3]])
    torch.testing.assert_close(compiled(**inputs, paths=good), fn(**inputs, paths=good))
    compiled(**inputs, paths=good)
    assert len(calls) == 1
    bad = torch.tensor([[4, 3, 2, 1, 0], [0, 2, 2, 1, 3]])
    with pytest.raises(ValueError, match="route 1"):
        compiled(**inputs, paths=bad)


def test_compiled_build_keeps_the_cache_without_warnings():
    """``build`` inside compiled code: no lru_cache warning, the cached tensor is a graph constant (fullgraph too)."""

    def fn(x):
        paths = scan_paths.build("cross", (3, 4))
        return x[..., paths[1]] + 1

    x = torch.randn(2, 12)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = torch.compile(fn, fullgraph=False, backend="eager")(x)
        out_full = torch.compile(fn, fullgraph=True, backend="aot_eager")(x)
    assert not [w for w in caught if "lru_cache" in str(w.message)], [str(w.message) for w in caught]
    torch.testing.assert_close(out, fn(x))
    torch.testing.assert_close(out_full, fn(x))


def test_trace_records_no_tracer_warnings_from_the_ops():
    """torch.jit.trace of op calls (paths built inside, shapes read in the ops' checks) warns nothing from vssm.ops."""
    from vssm.ops import causal_conv1d, selective_scan
    from vssm.ops.layer_norm import layer_norm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.A = torch.nn.Parameter(-torch.rand(4, 4, 3) - 0.1)
            self.conv = torch.nn.Parameter(torch.randn(2, 4, 3))

        def forward(self, x):
            batch, dim, length = x.shape
            paths = scan_paths.build("cross", (3, length // 3), device=x.device)
            bc = x[:, None, :3].expand(batch, 4, 3, length)
            y = multi_scan(x, x[:, None].expand(batch, 4, dim, length), self.A, bc, bc, paths, delta_softplus=True)
            y = y + selective_scan(x, x, self.A[0], x[:, :3], x[:, 1:], None, None, None, True, False)
            y = y + causal_conv1d(x, self.conv, None, [False, True]).sum(1)
            return layer_norm(y.transpose(1, 2), torch.ones(dim), None)

    net, x = Net(), torch.randn(2, 4, 12)
    with backend("torch"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(net, (x,), check_trace=False)
    ours = [f"{w.filename}:{w.lineno} {w.message}" for w in caught if "vssm" in w.filename.replace("\\", "/")]
    assert not ours, ours
    with backend("torch"):
        torch.testing.assert_close(traced(x), net(x))


@pytest.mark.parametrize("name", BACKENDS)
def test_int32_paths_on_every_backend(name):
    paths = scan_paths.build("local", (3, 3), directions=("h", "w2_flip"))
    inputs = _scan_inputs(2, 9)
    expected = multi_scan_ref(**inputs, paths=paths, delta_softplus=True)
    with backend(name):
        device = kernel_device()
        y = multi_scan(**inputs_on(inputs, device), paths=paths.to(device, torch.int32), delta_softplus=True)
    torch.testing.assert_close(y.cpu(), expected, rtol=2e-5, atol=2e-5)


def test_projected_multi_scan_takes_user_routes():
    """Valid user routes (not from ``build``) through the fused path equal the composed form."""
    paths = torch.stack([torch.randperm(6, generator=torch.Generator().manual_seed(k)) for k in range(4)])
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(2, 4, 6, generator=g), torch.randn(4, 5, 4, generator=g) / 2,
            torch.randn(4, 4, 1, generator=g), torch.zeros(4, 4) - 2, torch.zeros(4, 4, 2), torch.ones(4, 4))
    expected = projected_multi_scan_composed(*(a.double() for a in args), paths)
    with backend("triton"):
        y = projected_multi_scan(*(a.to(KERNEL_DEVICE) for a in args), paths.to(KERNEL_DEVICE))
    assert rel_err(y.cpu(), expected) < 2e-5
