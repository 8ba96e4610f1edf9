"""Spiking networks (snntorch) to ONNX: the time loop unrolled, every neuron state annotated.

The protocol
------------
The network you pass runs **one time step**: ``net(x_t) -> spk_out`` maps the input of one
step (``[batch, *features]``, float32) to the spikes of its output layer
(``[batch, classes]``). Its spiking layers are snntorch neurons built with
``init_hidden=False`` (the default) and called with the input current only; the exporter
owns and carries their state from step to step::

    import snntorch as snn
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(64, 128)
            self.lif1 = snn.Synaptic(alpha=0.8, beta=0.9, learn_alpha=True,
                                     learn_beta=True, learn_threshold=True)
            self.fc2 = nn.Linear(128, 10)
            self.lif2 = snn.Leaky(beta=0.9, learn_beta=True, learn_threshold=True)

        def forward(self, x_t):
            spk1, _syn1, _mem1 = self.lif1(self.fc1(x_t))   # no state arguments
            spk2, _mem2 = self.lif2(self.fc2(spk1))
            return spk2

:func:`unroll` wraps it in a module that runs ``T`` steps over ``x`` of shape
``[batch, T, *features]`` (e.g. rate-coded spikes) and returns the **spike counts**
``[batch, classes]`` (the output spikes summed over the ``T`` steps, float32 holding whole
numbers); the states start at zero for every forward. Train with that same module
(``torch.autograd`` runs through the unrolled steps: backpropagation through time with
snntorch's surrogate gradients), then export it with :func:`export_snn`.

Supported neurons (``snntorch.Leaky`` and ``snntorch.Synaptic``; any other
``snntorch`` spiking neuron raises :class:`~enpheeph_onnx.errors.EnpheephError`), their
equations from the snntorch documentation
(https://snntorch.readthedocs.io/en/latest/snn.neurons_leaky.html and
https://snntorch.readthedocs.io/en/latest/snn.neurons_synaptic.html), with
``S[t] = Heaviside(U[t] - U_thr) = (U[t] - U_thr > 0)`` and reset by subtraction (the
default ``reset_mechanism="subtract"``)::

    Leaky:     U[t] = clamp(beta, 0, 1) * U[t-1] + I_in[t] - S[t-1] * U_thr
    Synaptic:  I_syn[t] = clamp(alpha, 0, 1) * I_syn[t-1] + I_in[t]
               U[t]     = clamp(beta, 0, 1) * U[t-1] + I_syn[t] - S[t-1] * U_thr

with ``U[-1] = I_syn[-1] = 0``. ``U``, ``I_syn`` and ``U_thr`` are in the same arbitrary
units as the input current ``I_in`` (the preceding layer's output); ``alpha`` and ``beta``
are dimensionless decay factors per time step; spikes are 0 or 1 (times
``graded_spikes_factor``).

What the ONNX model holds
-------------------------
* input ``input``: float32 ``[batch, T, *features]`` (``batch`` symbolic); output
  ``spike_counts``: float32 ``[batch, classes]``; top-1 = ``argmax`` (ties: lowest index);
* per neuron layer ``L`` (its attribute path in ``net``, e.g. ``lif1``) and step ``t``
  (0-based), tensors named ``L.membrane.t<t>`` (``U[t]``, the membrane potential the layer
  returns), ``L.spike.t<t>`` (``S[t]``) and, for ``Synaptic``, ``L.synaptic_current.t<t>``
  (``I_syn[t]``), annotated with ``layer``, ``role`` (``"membrane"``, ``"spike"``,
  ``"synaptic_current"``) and ``time_step``: :func:`enpheeph_onnx.discover_sites` reports
  them. Each is the tensor the computation really uses (a fault on ``L.membrane.t3`` hits
  the spike decision of step 3 and everything after it), not a copy;
* the neuron parameters as initializers ``L.beta``, ``L.alpha``, ``L.threshold`` (and
  ``L.graded_spikes_factor``), annotated with role ``"beta"``, ``"alpha"``,
  ``"threshold"``, ``"graded_spikes_factor"`` and no time step: one stored value shared by
  every step, so a fault there is permanent. They are stored as given (``clamp`` runs in
  the graph);
* every other node of step ``t`` is named ``/<module path>/<op>_t<t>`` (e.g.
  ``/fc1/Gemm_t3``, output ``/fc1/Gemm_t3_output_0``), weights keep their ``net`` names
  (``fc1.weight``). The zero initial states are computed as ``Cast(Greater(I, I))`` of
  the layer's step-0 input ``I`` (exactly 0 whatever ``I`` holds; unlike
  ``ConstantOfShape(Shape(I))`` it keeps the symbolic ``batch`` through ONNX shape
  inference). The scalars of the neuron equations (``0`` of the spike comparison, the
  ``clamp`` bounds) are ``Constant`` nodes, i.e. weight sites with source ``constant``.

How the annotation works: while tracing, every state a neuron returns passes through a
tiny marker module (``x * 1.0``) with a unique scope name; the postprocessing finds those
nodes by name, removes them (their consumers read the marker's input again: the graph
computes exactly what torch does), renames the marked tensors and returns their
annotations. The TorchScript exporter also replaces initializers of equal value by
``Identity`` nodes reading one of them (e.g. ``lif2.threshold`` read from
``lif1.threshold``); the postprocessing turns them back into separate initializers, so a
weight fault hits one parameter only.

Exactness
---------
The export is checked with ``exact=True``: onnxruntime's spike counts must equal torch's
on the example and the check inputs. A membrane potential within float rounding of its
threshold can spike in one runtime and not the other (``Gemm``/``MatMul`` sum in different
orders); when the counts differ, :func:`export_snn` reports the smallest distance between
a membrane potential and its threshold seen in torch, so a tie can be told from a real
export bug. Weights and biases on a dyadic grid (multiples of ``2**-k`` with a bounded
magnitude) make every sum of 0/1 spikes exact in any order, and the two runtimes then agree
bit for bit on every state (``scripts/train_digits_snn.py`` does this).
:func:`trace_states` returns torch's value of every annotated tensor, by its ONNX name, to
compare with onnxruntime's (add them as graph outputs).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from ..errors import EnpheephError
from .core import ExportMismatchError, _split_initializer_identities, _torch, export_model

log = logging.getLogger(__name__)

ROLES = ("membrane", "spike", "synaptic_current")
"""Roles of the annotated neuron-state tensors."""

PARAM_ROLES = ("alpha", "beta", "threshold", "graded_spikes_factor")
"""Roles of the annotated neuron parameters (initializers ``<layer>.<role>``)."""

_MARK = "enpheeph_mark_"
_STEP = "enpheeph_step_"
_MARK_RE = re.compile(rf"(?:^|/){_MARK}(\d+)/Mul$")


@dataclass(frozen=True)
class NeuronSpec:
    """How one snntorch neuron class is called and what it returns.

    Attributes:
        kind: the class name (``"Leaky"``, ``"Synaptic"``).
        states: roles of the state arguments after the input, in call order; the neuron
            returns ``(spike, *states)`` in the same order.
        params: names of its parameter/buffer attributes annotated as weight sites.
    """

    kind: str
    states: tuple[str, ...]
    params: tuple[str, ...]


SPECS: dict[str, NeuronSpec] = {
    "Leaky": NeuronSpec("Leaky", ("membrane",), ("beta", "threshold", "graded_spikes_factor")),
    "Synaptic": NeuronSpec("Synaptic", ("synaptic_current", "membrane"),
                           ("alpha", "beta", "threshold", "graded_spikes_factor")),
}
"""The supported neuron classes, by ``snntorch`` class name."""


def _snntorch() -> Any:
    try:
        import snntorch
    except ImportError:
        raise EnpheephError("exporting spiking networks needs snntorch: "
                            "pip install 'enpheeph-onnx[torch]'") from None
    return snntorch


def neuron_layers(net: Any) -> list[tuple[str, Any, NeuronSpec]]:
    """The snntorch neurons of ``net``: ``(attribute path, module, spec)`` in module order.

    Raises:
        EnpheephError: ``net`` is not a ``torch.nn.Module``, holds no neuron, holds an
            unsupported snntorch neuron, or a neuron built with ``init_hidden=True``.
    """
    torch = _torch()
    snn = _snntorch()
    if not isinstance(net, torch.nn.Module):
        raise EnpheephError(f"export_snn needs a torch.nn.Module, got {type(net).__name__}")
    base = snn.SpikingNeuron
    found = []
    for name, mod in net.named_modules():
        if not isinstance(mod, base):
            continue
        kind = type(mod).__name__
        if kind not in SPECS or type(mod) is not getattr(snn, kind, None):
            raise EnpheephError(
                f"spiking layer {name!r} is a {kind}: export_snn supports "
                f"{', '.join('snntorch.' + k for k in SPECS)}")
        if mod.init_hidden:
            raise EnpheephError(
                f"spiking layer {name!r} was built with init_hidden=True: build it with "
                "init_hidden=False (the exporter carries the state)")
        if not name:
            raise EnpheephError("pass a network that contains the neurons, not a neuron alone")
        found.append((name, mod, SPECS[kind]))
    if not found:
        raise EnpheephError("the network has no snntorch Leaky or Synaptic neuron")
    return found


@functools.cache
def _classes() -> tuple[type, type, type]:
    """``(Marker, Step, Unrolled)``, defined on first use: importing this module does not
    import torch."""
    torch = _torch()
    nn = torch.nn

    class Marker(nn.Module):
        """``x * 1.0``: an exact no-op whose node the exporter names after this module."""

        def forward(self, x: Any) -> Any:
            return x * 1.0

    class Step(nn.Module):
        """Runs step ``t`` on ``x[:, t]``; scopes its nodes (``/enpheeph_step_<t>/...``)."""

        def __init__(self, t: int) -> None:
            super().__init__()
            self.t = t

        def forward(self, net: Any, x: Any) -> Any:
            return net(x[:, self.t])

    class Unrolled(nn.Module):
        """``x [batch, T, *features] -> spike counts [batch, classes]``; see :func:`unroll`."""

        def __init__(self, net: Any, num_steps: int) -> None:
            super().__init__()
            self.net = net
            self.num_steps = num_steps
            self.layers = neuron_layers(net)
            self.table: list[tuple[str, str, int]] = []
            self.index: dict[tuple[str, str, int], int] = {}
            for t in range(num_steps):
                for name, _mod, spec in self.layers:
                    for role in ("spike", *spec.states):
                        self.index[(name, role, t)] = len(self.table)
                        self.table.append((name, role, t))
            self.marks = nn.ModuleDict({f"{_MARK}{k}": Marker() for k in range(len(self.table))})
            self.steps = nn.ModuleDict({f"{_STEP}{t}": Step(t) for t in range(num_steps)})
            self.marked: list[tuple[int, Any]] = []
            self.record = False

        def forward(self, x: Any) -> Any:
            if x.dim() < 2 or int(x.shape[1]) != self.num_steps:
                raise EnpheephError(
                    f"the unrolled network takes [batch, {self.num_steps}, *features], got "
                    f"shape {list(x.shape)}")
            names = {id(mod): (name, spec) for name, mod, spec in self.layers}
            state: dict[str, tuple[Any, ...]] = {}
            calls: dict[str, int] = {}
            step = [0]
            marked: list[tuple[int, Any]] = []

            def mark(key: tuple[str, str, int], v: Any) -> Any:
                k = self.index[key]
                y = self.marks[f"{_MARK}{k}"](v)
                marked.append((k, y))
                return y

            def pre(mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
                name, spec = names[id(mod)]
                if len(args) != 1 or kwargs:
                    raise EnpheephError(
                        f"call {name} with the input current only ({name}(cur)): the "
                        "exporter carries its state from step to step")
                if calls.get(name, -1) == step[0]:
                    raise EnpheephError(f"{name} is called twice in one time step")
                calls[name] = step[0]
                prev = state.get(name)
                if prev is None:
                    # zeros as (cur > cur): exactly 0 for any cur (NaN, inf too), and ONNX
                    # shape inference keeps the symbolic batch dimension, which it loses
                    # through zeros_like's ConstantOfShape(Shape(cur))
                    cur = args[0]
                    prev = tuple(torch.gt(cur, cur).to(cur.dtype) for _ in spec.states)
                return (args[0], *prev), {}

            def post(mod: Any, args: Any, kwargs: Any, out: Any) -> Any:
                name, spec = names[id(mod)]
                if not isinstance(out, tuple) or len(out) != 1 + len(spec.states):
                    raise EnpheephError(f"{name} did not return (spike, *states)")
                t = step[0]
                spk = mark((name, "spike", t), out[0])
                states = tuple(mark((name, role, t), s)
                               for role, s in zip(spec.states, out[1:], strict=True))
                state[name] = states
                return (spk, *states)

            handles = []
            try:
                for _name, mod, _spec in self.layers:
                    handles.append(mod.register_forward_pre_hook(pre, with_kwargs=True))
                    handles.append(mod.register_forward_hook(post, with_kwargs=True))
                spikes = []
                for t in range(self.num_steps):
                    step[0] = t
                    out = self.steps[f"{_STEP}{t}"](self.net, x)
                    if not isinstance(out, torch.Tensor):
                        raise EnpheephError(
                            "the network must return the output spikes of one step as a "
                            f"tensor, got {type(out).__name__}")
                    spikes.append(out)
            finally:
                for h in handles:
                    h.remove()
            counts = torch.stack(spikes, 1).sum(1)
            self.marked = [(k, y.detach()) for k, y in marked] if self.record else []
            if torch.onnx.is_in_onnx_export():
                # While tracing, every marked state is an extra output too, so that no
                # marker is dead code (e.g. the last step's membrane potential, which no
                # later step reads); the postprocessing drops these outputs again.
                self.marked = [(k, None) for k, _ in marked]
                return (counts, *[y for _, y in marked])
            return counts

    return Marker, Step, Unrolled


def _check_steps(num_steps: Any) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise EnpheephError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if num_steps < 1:
        raise EnpheephError(f"num_steps must be >= 1, got {num_steps}")
    return int(num_steps)


def unroll(net: Any, num_steps: int) -> Any:
    """Wrap a one-step spiking network into a ``T``-step one (the module exported).

    Args:
        net: a ``torch.nn.Module`` following the protocol of this module: ``net(x_t)``
            runs one step and returns the output layer's spikes; its snntorch ``Leaky``
            and ``Synaptic`` neurons (``init_hidden=False``) are called with the input
            current only.
        num_steps: ``T >= 1``, the number of time steps.

    Returns:
        A ``torch.nn.Module`` mapping ``x`` (float32 ``[batch, T, *features]``) to the
        spike counts (float32 ``[batch, classes]``, whole numbers in ``0..T`` times the
        ``graded_spikes_factor``); neuron states start at zero in every call. It holds
        ``net`` as the submodule ``net`` and has no parameters of its own, so training it
        trains ``net``.

    Raises:
        EnpheephError: ``num_steps < 1``; ``net`` is not a module, has no supported neuron,
            has an unsupported or ``init_hidden=True`` neuron. Calling the module raises it
            for an input of the wrong shape or a network that breaks the protocol.
    """
    steps = _check_steps(num_steps)
    _, _, unrolled = _classes()
    if isinstance(net, unrolled):
        net = net.net
    return unrolled(net, steps)


# -- postprocessing of the raw export -----------------------------------------------------

def _rename_everywhere(g: onnx.GraphProto, names: dict[str, str]) -> None:
    if not names:
        return
    for n in g.node:
        for i, x in enumerate(n.input):
            if x in names:
                n.input[i] = names[x]
        for i, x in enumerate(n.output):
            if x in names:
                n.output[i] = names[x]
    for coll in (g.input, g.output, g.value_info):
        for vi in coll:
            if vi.name in names:
                vi.name = names[vi.name]
    for t in g.initializer:
        if t.name in names:
            t.name = names[t.name]


def _all_names(g: onnx.GraphProto) -> set[str]:
    out = {t.name for t in g.initializer} | {i.name for i in g.input}
    for n in g.node:
        out.update(x for x in n.output if x)
    return out


def _remove_markers(g: onnx.GraphProto, table: list[tuple[str, str, int]],
                    used: list[int]) -> dict[str, dict[str, Any]]:
    """Drop the marker nodes, name the marked tensors ``layer.role.t<t>`` and return their
    annotations.

    Raises:
        EnpheephError: the export lost or duplicated a marker.
    """
    markers: dict[int, onnx.NodeProto] = {}
    for n in g.node:
        m = _MARK_RE.search(n.name)
        if m and n.op_type == "Mul":
            k = int(m.group(1))
            if k in markers:
                raise EnpheephError(f"export_snn: state marker {k} was exported twice")
            markers[k] = n
    if sorted(markers) != sorted(set(used)):
        lost = sorted(set(used) - set(markers))
        raise EnpheephError(
            "export_snn: the TorchScript export lost the state markers of "
            + ", ".join(f"{table[k][0]}.{table[k][1]}.t{table[k][2]}" for k in lost[:3])
            + ("..." if len(lost) > 3 else "") + "; this torch version is not supported")
    producers = {o for n in g.node for o in n.output if o}
    fixed = {i.name for i in g.input} | {t.name for t in g.initializer} | {
        o.name for o in g.output}
    taken = _all_names(g)
    alias: dict[str, str] = {}
    replace: dict[str, onnx.NodeProto | None] = {}
    notes: dict[str, dict[str, Any]] = {}
    for k in sorted(markers):
        node = markers[k]
        layer, role, t = table[k]
        target = f"{layer}.{role}.t{t}"
        if target in taken:
            raise EnpheephError(f"export_snn: tensor name {target!r} is already used")
        src = alias.get(node.input[0], node.input[0])
        notes[target] = {"layer": layer, "role": role, "time_step": t}
        alias[node.output[0]] = target
        if src in producers and src not in fixed and src not in alias.values():
            alias[src] = target  # the marked tensor itself takes the name
            replace[node.name] = None
        else:  # an input, a weight or an already named tensor: a distinct copy, in place
            replace[node.name] = helper.make_node(
                "Identity", [src], [target], name=f"/{layer}/Identity_{role}_t{t}")
    nodes = []
    for n in g.node:
        if n.name not in replace:
            nodes.append(n)
        elif replace[n.name] is not None:
            nodes.append(replace[n.name])
    del g.node[:]
    g.node.extend(nodes)
    _rename_everywhere(g, alias)
    return notes


def _drop_dead_constants(g: onnx.GraphProto) -> None:
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    keep = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(keep)


_SCOPE_SUFFIX = re.compile(r"_\d+$")


def _tidy_names(g: onnx.GraphProto) -> None:
    """``/enpheeph_step_3/net/fc1/Gemm`` -> ``/fc1/Gemm_t3`` (node and output tensor; no
    ``_t<t>`` for nodes that compute from weights only, e.g. ``/lif1/Clip``, done once for
    every step), and initializers ``net.fc1.weight`` -> ``fc1.weight``; a name that would
    collide is kept."""
    step_re = re.compile(rf"^{_STEP}(\d+)(?:_\d+)?$")
    taken = _all_names(g) | {n.name for n in g.node}
    static = {t.name for t in g.initializer}  # tensors computed from weights only
    for n in g.node:
        if all(x in static for x in n.input if x):
            static.update(n.output)
    tensors: dict[str, str] = {}
    for t in g.initializer:
        if t.name.startswith("net.") and t.name[4:] not in taken:
            tensors[t.name] = t.name[4:]
            taken.add(t.name[4:])
    for n in g.node:
        if not n.name.startswith("/"):
            continue
        parts = n.name.split("/")[1:]
        step = None
        if parts and step_re.match(parts[0]):
            step = int(step_re.match(parts[0]).group(1))  # type: ignore[union-attr]
            parts = parts[1:]
            if parts and _SCOPE_SUFFIX.sub("", parts[0]) == "net" and len(parts) > 1:
                parts = parts[1:]
        elif parts and _SCOPE_SUFFIX.sub("", parts[0]) == "net" and len(parts) > 1:
            parts = parts[1:]
        if step is None or (len(n.input) and all(o in static for o in n.output)):
            new = "/" + "/".join(parts)
        else:
            new = "/" + "/".join(parts) + f"_t{step}"
        if new == n.name or new in taken:
            continue
        taken.add(new)
        for o in n.output:
            if o.startswith(n.name + "_output_"):
                to = new + o[len(n.name):]
                if to not in taken:
                    tensors[o] = to
                    taken.add(to)
        n.name = new
    _rename_everywhere(g, tensors)


def _postprocess(unrolled: Any, model: onnx.ModelProto
                 ) -> tuple[onnx.ModelProto, dict[str, dict[str, Any]]]:
    g = model.graph
    del g.output[1:]
    _split_initializer_identities(g)
    used = [k for k, _ in unrolled.marked]
    notes = _remove_markers(g, unrolled.table, used)
    _drop_dead_constants(g)
    inits = {t.name for t in g.initializer}
    for layer, _mod, spec in unrolled.layers:
        for p in spec.params:
            if f"net.{layer}.{p}" in inits or f"{layer}.{p}" in inits:
                notes[f"{layer}.{p}"] = {"layer": layer, "role": p}
            elif p != "graded_spikes_factor":
                log.warning("parameter %s.%s is not an initializer of the export", layer, p)
    _tidy_names(g)
    missing = [n for n in notes if n not in _all_names(g)]
    if missing:
        raise EnpheephError(f"export_snn: annotated tensor {missing[0]!r} is not in the graph")
    del g.value_info[:]
    return model, dict(sorted(notes.items()))


# -- export -------------------------------------------------------------------------------

def _as_tensor(x: Any, what: str, num_steps: int) -> Any:
    torch = _torch()
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise EnpheephError(f"{what} must be a torch tensor or numpy array, got "
                            f"{type(x).__name__}")
    if x.dtype != torch.float32:
        raise EnpheephError(f"{what} must be float32, got {x.dtype}")
    if x.dim() < 2 or int(x.shape[1]) != num_steps or int(x.shape[0]) < 1:
        raise EnpheephError(f"{what} must have shape [batch >= 1, {num_steps}, *features], "
                            f"got {list(x.shape)}")
    return x


def _record(unrolled: Any, x: Any) -> list[tuple[str, str, int, Any]]:
    torch = _torch()
    was = unrolled.record
    unrolled.record = True
    try:
        with torch.no_grad():
            unrolled(x)
        return [(*unrolled.table[k], y) for k, y in unrolled.marked]
    finally:
        unrolled.record = was
        unrolled.marked = []


def trace_states(net: Any, num_steps: int, x: Any) -> dict[str, np.ndarray]:
    """Every neuron state torch computes on ``x``, keyed by its ONNX tensor name.

    Args:
        net, num_steps: as for :func:`export_snn`.
        x: float32 ``[batch, T, *features]`` (torch tensor or numpy array).

    Returns:
        ``{"lif1.membrane.t0": array, ...}``: float32 ``[batch, *neurons]`` per layer, role
        and step, the values the exported model's tensors of the same names hold.

    Raises:
        EnpheephError: as :func:`unroll`, or a malformed ``x``.
    """
    unrolled = unroll(net, num_steps)
    x = _as_tensor(x, "x", unrolled.num_steps)
    return {f"{layer}.{role}.t{t}": y.cpu().numpy()
            for layer, role, t, y in _record(unrolled, x)}


def threshold_margin(unrolled: Any, inputs: Sequence[Any]) -> tuple[float, str, int] | None:
    """The smallest ``|U[t] - U_thr|`` over every membrane potential of ``unrolled`` (the
    module :func:`unroll` returns) on ``inputs`` in torch: ``(distance, layer, step)``, or
    ``None`` when there is none.

    A distance within float rounding (about ``1e-7`` times the magnitudes summed) is a
    threshold tie: the spike may differ between runtimes that sum in other orders.
    """
    best: tuple[float, str, int] | None = None
    thr = {name: mod.threshold.detach() for name, mod, _ in unrolled.layers}
    for x in inputs:
        for layer, role, t, y in _record(unrolled, x):
            if role != "membrane" or y.numel() == 0:
                continue
            d = float((y - thr[layer]).abs().min())
            if best is None or d < best[0]:
                best = (d, layer, t)
    return best


def export_snn(
    net: Any,
    num_steps: int,
    example_input: Any,
    out: str | os.PathLike[str] | None = None,
    check_inputs: Sequence[Any] = (),
    input_name: str = "input",
    output_name: str = "spike_counts",
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """Export a one-step snntorch network unrolled over ``num_steps`` steps, its neuron
    states annotated (see the module docstring for the protocol, names and equations).

    Args:
        net: the one-step network (or the module :func:`unroll` returned for it).
        num_steps: ``T >= 1``.
        example_input: float32 ``[batch, T, *features]`` (torch tensor or numpy array),
            e.g. rate-coded spikes in {0, 1}; traced, then run in torch and onnxruntime.
        out: path to write atomically, or ``None``.
        check_inputs: more float32 ``[batch, T, *features]`` inputs on which onnxruntime's
            spike counts must equal torch's.
        input_name: ONNX name of the input.
        output_name: ONNX name of the output (the spike counts, float32 ``[batch,
            classes]``).
        metadata: extra ``metadata_props`` (e.g. how the inputs were encoded).

    Returns:
        The checked ``ModelProto`` (default-domain opset 26, dynamic batch), with the
        ``enpheeph.annotations`` metadata that :func:`enpheeph_onnx.discover_sites` reads
        and ``enpheeph.snn`` (JSON: ``num_steps`` and the neuron class of every layer).

    Raises:
        EnpheephError: ``num_steps < 1``; a malformed input; a network outside the
            protocol (see :func:`unroll`); torch cannot export it; or onnxruntime's spike
            counts differ from torch's (the message then gives the smallest distance of a
            membrane potential to its threshold, to tell a float-rounding tie from a bug).
    """
    steps = _check_steps(num_steps)
    unrolled = unroll(net, steps)
    example = _as_tensor(example_input, "example_input", steps)
    checks = [_as_tensor(c, f"check_inputs[{i}]", steps) for i, c in enumerate(check_inputs)]
    meta = {"enpheeph.snn": json.dumps({
        "num_steps": steps, "input": input_name, "output": output_name,
        "layers": {name: spec.kind for name, _m, spec in unrolled.layers}}, sort_keys=True),
        **(metadata or {})}
    try:
        return export_model(unrolled, (example,), out, input_names=(input_name,),
                            output_names=(output_name,), check_inputs=[(c,) for c in checks],
                            exact=True, postprocess=functools.partial(_postprocess, unrolled),
                            metadata=meta)
    except EnpheephError as e:
        if not isinstance(e, ExportMismatchError):
            raise
        margin = threshold_margin(unrolled, [example, *checks])
        where = ("" if margin is None else
                 f"; the closest membrane potential in torch is {margin[0]:.3g} from its "
                 f"threshold ({margin[1]}, step {margin[2]})")
        raise EnpheephError(
            f"onnxruntime's spike counts differ from torch's{where}: a membrane potential "
            "within float rounding of the threshold spikes in one runtime only (sums in "
            "another order); weights on a dyadic grid make the sums exact") from None
    finally:
        unrolled.marked = []


__all__ = ["PARAM_ROLES", "ROLES", "SPECS", "NeuronSpec", "export_snn", "neuron_layers",
           "threshold_margin", "trace_states", "unroll"]
