"""SCALE-1: the scale parameter is built as ``nn.Parameter(torch.tensor(-1.0))``, whose default is requires_grad=True.

torch's ``Parameter`` defaults to ``requires_grad=True``; an engine that forgets ``requires_grad=False``
(vLLM and SGLang both pass it explicitly in ``BaseKVCacheMethod.create_weights``) ships scales that
autograd tracks.
"""

from loadspec.conformance.adapters.reference import ReferenceAdapter


class GradScaleAdapter(ReferenceAdapter):
    name = report_id = "mutant-grad-scale"
    targets = ("SCALE-1",)
    suite = ("test_scale.py",)

    def new_scale_parameter(self, *, device):
        return super().new_scale_parameter(device=device).requires_grad_(True)
