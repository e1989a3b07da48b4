"""LOAD-17: a per-channel FP8 linear stores its kernel weight with reshape(in, out) where a transpose belongs:
the shape is right, the bytes are scrambled (non-square) or untransposed (square), on first load and reload alike."""


from loadspec.reference.layers.linear import Fp8LinearMethod
from mutants._linear import LinearMethodMutant


class ReshapedMethod(Fp8LinearMethod):
    def process_weights_after_loading(self, layer):
        if self.strategy != "channel":
            return super().process_weights_after_loading(layer)
        weight, scale = layer.weight, layer.weight_scale
        reshaped = weight.detach().reshape(weight.shape[1], weight.shape[0]).clone()
        self.install_processed(layer, reshaped, scale.detach())


class ReshapedTransposeAdapter(LinearMethodMutant):
    name = report_id = "mutant-reshaped-transpose"
    targets = ("LOAD-17", "RELOAD-13")
    suite = ("test_load.py", "test_reload.py")
    method_class = ReshapedMethod
