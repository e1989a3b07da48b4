"""``loadspec.reference.registration``: the reload's direct paths leave a module exactly as torch's own calls would,
and fall back to them (their errors and hooks included) wherever they differ."""

from __future__ import annotations

import pytest
import torch

from loadspec.reference.registration import (
    has_parameter_or_attribute,
    module_attribute,
    put_parameter,
    registered_tensor,
    set_plain,
)


class WithProperty(torch.nn.Module):
    @property
    def mirror(self) -> float:
        return 2.0


def module() -> torch.nn.Module:
    m = WithProperty()
    m.register_parameter("weight", torch.nn.Parameter(torch.zeros(2), requires_grad=False))
    m.register_buffer("_k_scale", torch.ones(()))
    m.child = torch.nn.Linear(1, 1)
    m.plain_value = 1.0
    return m


def _value(v: object) -> object:
    return ("tensor", type(v).__name__, v.tolist()) if isinstance(v, torch.Tensor) else v


def state(m: torch.nn.Module) -> tuple:
    """Everything registered or set on ``m``, compared by value (two fresh modules hold distinct objects)."""
    plain = {k: _value(v) for k, v in m.__dict__.items() if k not in ("_parameters", "_buffers", "_modules")
             and not k.startswith(("_forward", "_backward", "_state_dict", "_load_state_dict"))}
    return ({k: _value(v) for k, v in m._parameters.items()}, {k: _value(v) for k, v in m._buffers.items()},
            sorted(m._modules), plain)


@pytest.mark.parametrize("name", ["new_scale", "weight"])
def test_put_parameter_is_register_parameter_for_free_names(name):
    param = torch.nn.Parameter(torch.full((), -1.0), requires_grad=False)
    a, b = module(), module()
    if name == "weight":
        del a.weight, b.weight
    put_parameter(a, name, param)
    b.register_parameter(name, param)
    assert state(a) == state(b) and a._parameters[name] is param


@pytest.mark.parametrize("name, error", [("_k_scale", KeyError), ("child", KeyError), ("plain_value", KeyError),
                                         ("mirror", KeyError), ("a.b", KeyError), ("", KeyError)])
def test_put_parameter_raises_as_torch_does_for_taken_or_bad_names(name, error):
    param = torch.nn.Parameter(torch.zeros(()), requires_grad=False)
    with pytest.raises(error) as ours:
        put_parameter(module(), name, param)
    with pytest.raises(error) as torchs:
        module().register_parameter(name, param)
    assert str(ours.value) == str(torchs.value)


def test_put_parameter_rejects_a_plain_tensor_as_torch_does():
    with pytest.raises(TypeError):
        put_parameter(module(), "x", torch.zeros(()))


def test_put_parameter_runs_global_registration_hooks():
    seen, target = [], module()
    handle = torch.nn.modules.module.register_module_parameter_registration_hook(
        lambda mod, name, param: seen.append(name))
    try:
        put_parameter(target, "hooked", torch.nn.Parameter(torch.zeros(()), requires_grad=False))
    finally:
        handle.remove()
    assert seen == ["hooked"]


@pytest.mark.parametrize("name", ["weight", "_k_scale", "child", "plain_value", "mirror", "forward", "absent",
                                  "_parameters"])
def test_has_parameter_or_attribute_is_hasattr(name):
    assert has_parameter_or_attribute(module(), name) == hasattr(module(), name)


@pytest.mark.parametrize("name, value", [("_k_scale_float", 0.5), ("plain_value", 3.0), ("mirror", 1.0),
                                         ("_k_scale", torch.full((), 4.0)), ("weight", None)])
def test_set_plain_is_setattr(name, value):
    a, b = module(), module()
    errors = []
    for m, call in ((a, set_plain), (b, setattr)):
        try:
            call(m, name, value)
        except Exception as exc:  # a property without a setter: both raise the same
            errors.append((type(exc), str(exc)))
    assert len(errors) in (0, 2) and (not errors or errors[0] == errors[1])
    assert state(a) == state(b)


@pytest.mark.parametrize("name", ["weight", "_k_scale", "mirror", "plain_value", "absent"])
def test_registered_tensor_is_getattr(name):
    m = module()
    try:
        expected = getattr(m, name)
    except AttributeError as exc:
        with pytest.raises(AttributeError, match=str(exc)):
            registered_tensor(m, name)
        return
    assert registered_tensor(m, name) is expected or registered_tensor(m, name) == expected


@pytest.mark.parametrize("name", ["weight", "_k_scale", "child", "mirror", "plain_value", "forward", "absent"])
def test_module_attribute_is_getattr_with_a_default(name):
    m, default = module(), object()
    got, expected = module_attribute(m, name, default), getattr(m, name, default)
    assert got is expected or (callable(expected) and got == expected)
