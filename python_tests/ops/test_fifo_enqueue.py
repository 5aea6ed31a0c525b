"""fifo_enqueue_ (Triton kernel and torch formulation) against a FIFO written one key at a time."""
import pytest
import torch

import rdkernels
from conftest import DEVICE, backends
from helpers import naive_enqueue_
import interpreter_bf16
from rdkernels.backend import BackendUnavailable, cuda_device_reason, triton_interpreter_enabled
from rdkernels.ops import fifo_enqueue_
from rdkernels.ops.fifo_enqueue import MAX_ELEMENTS, _fifo_enqueue_op, _resolve, fifo_enqueue_reference_

# cuda has no kernel of its own: it runs Triton's (tested as triton)
BACKENDS = [p for p in backends("fifo_enqueue_") if p.id != "cuda"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
INTERPRETER = triton_interpreter_enabled()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("queue_size,batch,start", [(5, 7, 3), (50, 7, 46), (12, 12, 5), (12, 25, 11), (9, 1, 8),
                                                     (16, 4, 0), (16, 40, 0), (7, 3, -3), (7, 3, 19)])
@pytest.mark.parametrize("dim", [3, 16, 300])
def test_matches_one_by_one_writes(backend, queue_size, batch, start, dim):
    """Any B against N (smaller, equal, larger, N % B != 0), any start (wrapped as torch's
    remainder wraps it), widths under and over one column block: the queue and the
    pointer a row-by-row FIFO leaves, over three calls."""
    queue = torch.randn(queue_size, dim, device=DEVICE)
    ptr = torch.tensor([start], device=DEVICE)
    expected_queue, expected_ptr = queue.clone(), ptr.clone()
    for _ in range(3):
        keys = torch.randn(batch, dim, device=DEVICE)
        assert fifo_enqueue_(queue, ptr, keys, backend=backend) is queue
        naive_enqueue_(expected_queue, expected_ptr, keys)
        assert torch.equal(queue, expected_queue)
        assert torch.equal(ptr, expected_ptr) and ptr.dtype == torch.long and ptr.shape == (1,)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("queue_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("keys_dtype", DTYPES, ids=str)
def test_dtypes_convert_as_torch(backend, queue_dtype, keys_dtype, monkeypatch):
    """Keys of any float type are rounded to the queue's as ``Tensor.to`` rounds them
    (against keys written one at a time with ``Tensor.to``, not the torch backend's
    own formulation)."""
    if backend == "triton" and INTERPRETER:
        # the interpreter truncates to bf16 where a GPU rounds to nearest even: give it a GPU's rounding
        interpreter_bf16.install(monkeypatch)
    queue = torch.randn(10, 24, device=DEVICE).to(queue_dtype)
    ptr = torch.tensor([8], device=DEVICE)
    keys = torch.randn(5, 24, device=DEVICE).to(keys_dtype)
    expected_queue, expected_ptr = queue.clone(), ptr.clone()
    fifo_enqueue_(queue, ptr, keys, backend=backend)
    naive_enqueue_(expected_queue, expected_ptr, keys)
    assert torch.equal(ptr, expected_ptr)
    assert torch.equal(queue, expected_queue)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wraps_and_keeps_last_rows(backend):
    queue = torch.zeros(5, 2, device=DEVICE)
    ptr = torch.tensor([3], device=DEVICE)
    keys = torch.arange(14, dtype=torch.float32, device=DEVICE).reshape(7, 2)
    fifo_enqueue_(queue, ptr, keys, backend=backend)
    # rows written in order 3,4,0,1,2,3,4: the last five keys (2..6) survive at 0,1,2,3,4
    assert torch.equal(queue[[0, 1, 2, 3, 4]], keys[[2, 3, 4, 5, 6]])
    assert int(ptr) == (3 + 7) % 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_keys_with_history_and_a_scalar_pointer(backend):
    """Transposed keys that require grad, a 0-dim pointer, an empty batch: as the reference."""
    queue = torch.randn(9, 6, device=DEVICE)
    ptr = torch.tensor(7, device=DEVICE)
    keys = torch.randn(6, 4, device=DEVICE, requires_grad=True).t()
    expected_queue, expected_ptr = queue.clone(), ptr.clone()
    fifo_enqueue_(queue, ptr, keys, backend=backend)
    fifo_enqueue_reference_(expected_queue, expected_ptr, keys.detach())
    assert torch.equal(queue, expected_queue) and torch.equal(ptr, expected_ptr)
    fifo_enqueue_(queue, ptr, torch.empty(0, 6, device=DEVICE), backend=backend)
    assert torch.equal(queue, expected_queue) and int(ptr) == int(expected_ptr)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keys_that_are_queue_rows(backend):
    """Keys viewing the queue's own rows: written as if read first, whatever overlaps."""
    queue = torch.randn(8, 5, device=DEVICE)
    ptr = torch.tensor([1], device=DEVICE)
    expected_queue, expected_ptr = queue.clone(), ptr.clone()
    fifo_enqueue_(queue, ptr, queue[0:6], backend=backend)
    fifo_enqueue_reference_(expected_queue, expected_ptr, expected_queue[0:6].clone())
    assert torch.equal(queue, expected_queue) and torch.equal(ptr, expected_ptr)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bumps_version_counters(backend):
    """A backward that saved the queue must see that it changed, as after index_copy_."""
    queue, ptr = torch.randn(6, 4, device=DEVICE), torch.tensor([0], device=DEVICE)
    versions = queue._version, ptr._version
    fifo_enqueue_(queue, ptr, torch.randn(2, 4, device=DEVICE), backend=backend)
    assert queue._version > versions[0] and ptr._version > versions[1]


def test_wide_batches_and_cpu_tensors_take_the_torch_formulation():
    keys = torch.empty(MAX_ELEMENTS // 128 + 1, 128, device=DEVICE)
    assert _resolve(keys, "triton") == "torch"
    assert _resolve(keys[:1], "torch") == "torch"
    if DEVICE.type == "cpu":
        assert _resolve(keys[:1], "auto") == "torch"   # auto runs Triton on a GPU only
    if cuda_device_reason(DEVICE):   # CPU tensors (the tests' emulated cuda backend takes them)
        for rows in (keys[:1], keys):   # cuda on CPU tensors raises, as for the ops with a CUDA kernel
            with pytest.raises(BackendUnavailable, match="fifo_enqueue_: the cuda backend needs CUDA tensors"):
                _resolve(rows, "cuda")


def test_a_misspelt_backend_raises_at_any_batch_size():
    keys = torch.empty(MAX_ELEMENTS // 128 + 1, 128, device=DEVICE)
    with pytest.raises(ValueError, match="backend must be one of"):
        _resolve(keys, "gpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_queue_is_written_only_in_inference_mode(backend):
    with torch.inference_mode():
        queue, ptr = torch.randn(6, 4, device=DEVICE), torch.tensor([5], device=DEVICE)
    keys = torch.randn(2, 4, device=DEVICE)
    before = queue.clone(), ptr.clone()
    with pytest.raises(ValueError, match="queue was created under torch.inference_mode"):
        fifo_enqueue_(queue, ptr, keys, backend=backend)
    assert torch.equal(queue, before[0]) and torch.equal(ptr, before[1])
    with torch.inference_mode():  # no version counter to bump: must not fail
        fifo_enqueue_(queue, ptr, keys, backend=backend)
    expected_queue, expected_ptr = before[0].clone(), before[1].clone()
    naive_enqueue_(expected_queue, expected_ptr, keys)
    assert torch.equal(queue, expected_queue) and torch.equal(ptr, expected_ptr)


def test_inference_ptr_is_refused():
    queue = torch.randn(6, 4, device=DEVICE)
    with torch.inference_mode():
        ptr = torch.tensor([1], device=DEVICE)
    with pytest.raises(ValueError, match="ptr was created under torch.inference_mode"):
        fifo_enqueue_(queue, ptr, torch.randn(2, 4, device=DEVICE))


def test_triton_unavailable_raises(monkeypatch):
    monkeypatch.setattr(rdkernels.backend, "triton_unavailable_reason", lambda device: "no Triton here")
    with pytest.raises(BackendUnavailable, match="fifo_enqueue_: no Triton here"):
        fifo_enqueue_(torch.zeros(4, 2, device=DEVICE), torch.zeros(1, dtype=torch.long, device=DEVICE),
                      torch.ones(1, 2, device=DEVICE), backend="triton")


@pytest.mark.parametrize("bad,match", [
    (dict(ptr=torch.zeros(1, dtype=torch.int32)), "ptr must have dtype in \\(int64\\)"),
    (dict(ptr=torch.zeros(2, dtype=torch.long)), "ptr must hold exactly one element"),
    (dict(keys=torch.ones(3, 5)), "keys has size 5 in dimension 1 but must match the queue's row width \\(4\\)"),
    (dict(keys=torch.ones(3)), "keys must have 2 dimensions"),
    (dict(keys=torch.ones(3, 4, dtype=torch.float64)), "keys must have dtype in"),
    (dict(queue=torch.zeros(4, 8).t()), "queue must be contiguous"),  # dense, so .to(device) keeps its strides
    (dict(queue=torch.zeros(8, 4, requires_grad=True)), "queue requires grad"),
    (dict(backend="gpu"), "backend"),
])
def test_bad_inputs_raise_and_leave_state_untouched(bad, match):
    args = dict(queue=torch.zeros(8, 4), ptr=torch.tensor([2]), keys=torch.ones(3, 4), backend=None)
    args.update({k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in bad.items()})
    if "queue" not in bad:
        args["queue"] = args["queue"].to(DEVICE)
    args["ptr"], args["keys"] = args["ptr"].to(DEVICE), args["keys"].to(DEVICE)
    before = args["queue"].detach().clone(), args["ptr"].clone()
    with pytest.raises((ValueError, TypeError), match=match):
        fifo_enqueue_(args["queue"], args["ptr"], args["keys"], backend=args["backend"])
    assert torch.equal(args["queue"], before[0]) and torch.equal(args["ptr"], before[1])


def test_opcheck():
    queue, ptr = torch.randn(10, 4, device=DEVICE), torch.tensor([7], device=DEVICE)
    torch.library.opcheck(_fifo_enqueue_op, (queue, ptr, torch.randn(5, 4, device=DEVICE), "torch"))


def test_compiled_step_matches_eager():
    """Under torch.compile the op is an opaque node that declares both mutations."""
    @torch.compile(fullgraph=True, backend="eager")
    def step(queue, ptr, keys):
        fifo_enqueue_(queue, ptr, keys)
        return queue.sum()

    queue, ptr = torch.randn(10, 4, device=DEVICE), torch.tensor([7], device=DEVICE)
    expected_queue, expected_ptr = queue.clone(), ptr.clone()
    for _ in range(2):
        keys = torch.randn(6, 4, device=DEVICE)
        step(queue, ptr, keys)
        naive_enqueue_(expected_queue, expected_ptr, keys)
    assert torch.equal(queue, expected_queue) and torch.equal(ptr, expected_ptr)
