"""Every loss checks its constructor arguments the same way (rdkernels._validation):
sizes are positive integers (Python or NumPy, never bool), temperatures are
positive finite reals, weights finite and >= 0, momenta in [0, 1]; every error
names the argument, and what is stored is a plain Python number."""
import numpy as np
import pytest
import torch

import rdkernels

BANK = dict(s_dim=8, t_dim=12, n_data=30, feat_dim=16, nce_k=4)
# class, valid arguments, and its arguments by kind
LOSSES = {
    "crd": (rdkernels.CRDLoss, BANK,
            dict(ints=("s_dim", "t_dim", "n_data", "feat_dim", "nce_k"), positive=("nce_t",), unit=("nce_m",))),
    "wcord": (rdkernels.WCoRDLoss, BANK,
              dict(ints=("s_dim", "t_dim", "n_data", "feat_dim", "nce_k", "iters"), positive=("nce_t", "eps"),
                   unit=("nce_m",), non_negative=("lambda_global", "lambda_local", "gp_weight"))),
    "rrd_momentum": (rdkernels.RRDMomentumLoss, BANK,
                     dict(ints=("s_dim", "t_dim", "n_data", "feat_dim", "nce_k"),
                          positive=("nce_t", "tau_s", "tau_t"), unit=("nce_m",))),
    "rrd": (rdkernels.RRDLoss, dict(s_dim=8, t_dim=12, feat_dim=16, queue_size=10),
            dict(ints=("s_dim", "t_dim", "feat_dim", "queue_size"), positive=("tau_s", "tau_t"))),
    "dcd": (rdkernels.DCDLoss, dict(s_dim=8, t_dim=12, feat_dim=16),
            dict(ints=("s_dim", "t_dim", "feat_dim"), non_negative=("alpha",), finite=("init_tau", "init_bias"))),
    "kd": (rdkernels.KDLoss, dict(T=4.0), dict(positive=("T",))),
}

# kind: (bad value, error type), each refused for every argument of that kind
BAD = {
    "ints": [(0, ValueError), (-3, ValueError), (True, TypeError), (2.5, TypeError), ("8", TypeError),
             (torch.tensor(8), TypeError)],
    "positive": [(0.0, ValueError), (-0.1, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                 (True, TypeError), ("0.1", TypeError), (torch.tensor(0.1), TypeError)],
    "unit": [(1.5, ValueError), (-0.1, ValueError), (float("nan"), ValueError), (True, TypeError),
             ("0.5", TypeError)],
    "non_negative": [(-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError), (True, TypeError),
                     ("1", TypeError)],
    "finite": [(float("inf"), ValueError), (float("nan"), ValueError), (True, TypeError), ("1", TypeError)],
}
# kind: a NumPy value of it that must be accepted and stored as a Python number
NUMPY_GOOD = {"ints": np.int64(6), "positive": np.float32(0.25), "unit": np.float64(0.25),
              "non_negative": np.float32(0.5), "finite": np.float64(-0.5)}


def _cases(values):
    for loss, (_, _, kinds) in LOSSES.items():
        for kind, names in kinds.items():
            for name in names:
                for value in values(kind):
                    yield pytest.param(loss, name, *value, id=f"{loss}-{name}-{value[0]!r}")


@pytest.mark.parametrize("loss,name,value,error", list(_cases(lambda kind: BAD[kind])))
def test_bad_argument_raises_naming_it(loss, name, value, error):
    cls, good, _ = LOSSES[loss]
    with pytest.raises(error, match=rf"\b{name}\b"):
        cls(**dict(good, **{name: value}))


# where an argument lands when the module keeps no attribute of its name
STORED_AT = {
    ("crd", "feat_dim"): lambda m: m.embed_s.linear.out_features,
    ("crd", "nce_t"): lambda m: m.contrast.params[1],   # RepDistiller's params buffer: [K, T, Z_v1, Z_v2, m]
    ("crd", "nce_m"): lambda m: m.contrast.params[4],
    ("wcord", "feat_dim"): lambda m: m.memory_s.dim,
    ("wcord", "nce_m"): lambda m: m.memory_s.momentum,
    ("rrd_momentum", "nce_m"): lambda m: m.memory_s.momentum,
    ("dcd", "init_tau"): lambda m: m.tau,
    ("dcd", "init_bias"): lambda m: m.bias,
}


@pytest.mark.parametrize("loss,name,value", [p.values[:3] for p in _cases(lambda kind: [(NUMPY_GOOD[kind],)])])
def test_numpy_numbers_are_accepted(loss, name, value):
    """Stored as a plain Python number (not a NumPy scalar), or in a float32 buffer or
    parameter, with the value given."""
    cls, good, _ = LOSSES[loss]
    module = cls(**dict(good, **{name: value}))
    if (loss, name) in STORED_AT:
        stored = STORED_AT[loss, name](module)
    else:
        assert hasattr(module, name), f"say in STORED_AT where {loss}'s {name} is kept"
        stored = getattr(module, name)
    if isinstance(stored, torch.Tensor):
        assert stored.dtype == torch.float32 and stored.numel() == 1 and stored.item() == float(value)
    else:
        assert type(stored) in (int, float) and stored == value


def test_crd_z_momentum():
    with pytest.raises(ValueError, match="z_momentum"):
        rdkernels.CRDLoss(**BANK, z_momentum=1.0)
    with pytest.raises(TypeError, match="z_momentum"):
        rdkernels.CRDLoss(**BANK, z_momentum="0.9")
    assert type(rdkernels.CRDLoss(**BANK, z_momentum=np.float32(0.5)).contrast.z_momentum) is float
