"""NAMES-3: the cache-scale mapper lacks the ModelOpt ``k_proj.k_scale`` layout (sglang#20870-style)."""

from dataclasses import dataclass

from loadspec.conformance.adapters.reference import ReferenceAdapter
from loadspec.reference.cache_scale_mappers import CACHE_SCALE_MAPPER
from loadspec.reference.mapper import WeightsMapper
from loadspec.reference.quant_config import QuantConfig

WITHOUT_MODELOPT = WeightsMapper(regex={p: v for p, v in CACHE_SCALE_MAPPER.regex.items()
                                        if r"[kv]_proj\.([kv])_scale" not in p.pattern})


@dataclass(frozen=True)
class ForgetfulConfig(QuantConfig):
    def get_cache_scale_mapper(self):
        return WITHOUT_MODELOPT


class MissingModelOptAdapter(ReferenceAdapter):
    name = report_id = "mutant-missing-modelopt"
    targets = ("NAMES-3",)
    suite = ("test_names.py",)

    def cache_scale_mapper(self, quant_method):
        return WITHOUT_MODELOPT

    def build_model(self, spec, *, device):
        model = super().build_model(spec, device=device)
        if model.quant_config is not None:
            model.quant_config = ForgetfulConfig(model.quant_config.quant_method)
        return model
