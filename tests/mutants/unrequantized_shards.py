"""LOAD-17: a fused per-tensor FP8 linear (qkv_proj, gate_up_proj) takes the largest shard scale without
re-quantizing the other shards to it, so every shard but the largest-scale one is dequantized with the wrong scale.
vLLM re-quantizes (requantize_with_max_scale); first load and reload share the bug, so only the oracle sees it."""


from loadspec.reference.layers.linear import Fp8LinearMethod
from mutants._linear import LinearMethodMutant


class UnrequantizedMethod(Fp8LinearMethod):
    def process_weights_after_loading(self, layer):
        if self.strategy != "tensor":
            return super().process_weights_after_loading(layer)
        weight, scale = layer.weight.detach().clone(), layer.weight_scale.max().reshape(())
        self.install_processed(layer, weight, scale)


class UnrequantizedShardsAdapter(LinearMethodMutant):
    name = report_id = "mutant-unrequantized-shards"
    targets = ("LOAD-17", "RELOAD-13")
    suite = ("test_load.py", "test_reload.py")
    method_class = UnrequantizedMethod
