"""LOAD-17: a per-channel FP8 linear stores its kernel weight with reshape(in, out) where a transpose belongs:
the shape is right, the bytes are scrambled (non-square) or untransposed (square), on first load and reload alike."""

import torch

from loadspec.reference.layers.linear import Fp8LinearMethod
from mutants._linear import LinearMethodMutant


class ReshapedMethod(Fp8LinearMethod):
    def process_weights_after_loading(self, layer):
        if self.strategy != "channel":
            return super().process_weights_after_loading(layer)
        weight, scale = layer.weight, layer.weight_scale
        reshaped = weight.detach().reshape(weight.shape[1], weight.shape[0]).clone()
        del layer.weight, layer.weight_scale
        layer.register_parameter("weight", torch.nn.Parameter(reshaped, requires_grad=False))
        layer.register_parameter("weight_scale", torch.nn.Parameter(scale.detach().clone(), requires_grad=False))
        if self.static_input:
            input_scale = layer.input_scale.max().reshape(())
            del layer.input_scale
            layer.register_parameter("input_scale", torch.nn.Parameter(input_scale.clone(), requires_grad=False))


class ReshapedTransposeAdapter(LinearMethodMutant):
    name = report_id = "mutant-reshaped-transpose"
    targets = ("LOAD-17", "RELOAD-13")
    suite = ("test_load.py", "test_reload.py")
    method_class = ReshapedMethod
