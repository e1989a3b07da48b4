"""The loadspec contract as data: one ``Rule`` per testable sentence.

Levels: ``MUST`` is what vLLM does (at commit fe4c5dcd4) and its PRs intend;
``SHOULD`` is where loadspec is stricter than vLLM, and ``vllm_differs`` says how.
Tests cite rules with ``@pytest.mark.rule("SCALE-3")``; ``tests/test_rules.py``
checks that every rule is cited by a suite test and that the generated docs/CONTRACT.md matches this data.
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRACT_VERSION = "2026.12.2"

MUST = "MUST"
SHOULD = "SHOULD"

_KV = "vllm/model_executor/layers/quantization/kv_cache.py"
_ATTN = "vllm/model_executor/layers/attention/attention.py"
_UTILS = "vllm/model_executor/models/utils.py"
_WU = "vllm/model_executor/model_loader/weight_utils.py"
_BASE = "vllm/model_executor/layers/quantization/base_config.py"
_FP8 = "vllm/model_executor/layers/quantization/fp8.py"
_META = "vllm/model_executor/model_loader/reload/meta.py"
_LW = "vllm/model_executor/model_loader/reload/layerwise.py"
_CT_FP8 = "vllm/model_executor/layers/quantization/compressed_tensors/schemes/compressed_tensors_w8a8_fp8.py"
_CT_KV = ("vllm/model_executor/layers/quantization/compressed_tensors/compressed_tensors.py "
          "CompressedTensorsKVCacheMethod")


@dataclass(frozen=True)
class Rule:
    """One testable clause of the contract."""

    id: str
    level: str
    text: str
    source: str
    vllm_differs: str = ""

    @property
    def family(self) -> str:
        """The family prefix, e.g. ``SCALE`` for ``SCALE-3``."""
        return self.id.rsplit("-", 1)[0]


FAMILIES = {
    "SCALE": "The KV-cache scale parameter and its loader",
    "KVPROC": "Resolving KV-cache scale sentinels after loading",
    "MAP": "Weight-name mapping and mapper composition",
    "NAMES": "Checkpoint layouts of every producer reach the canonical scale parameters",
    "LOAD": "The default and the automatic weight loader",
    "COUNT": "Copy counting",
    "ORDER": "Processing order",
    "RELOAD": "The layerwise reload lifecycle",
    "E2E": "End to end: a real model (SmolLM2-135M) reloaded from FP8-KV checkpoints",
    "STATIC": "Static activation scales (input_scale) of FP8 linears",
    "HEADS": "Per-attention-head KV-cache scales (compressed-tensors kv_cache_scheme strategy attn_head)",
    "DTYPE": "The checkpoint's dtype: the model's parameters and the float32 scales",
}

RULES: tuple[Rule, ...] = (
    # ---------------------------------------------------------------- SCALE
    Rule("SCALE-1", MUST,
         "A new KV-cache scale parameter is a 0-d tensor holding the sentinel -1.0, with requires_grad=False.",
         f"{_KV} KVCacheScaleParameter.__new__ (#43167)"),
    Rule("SCALE-2", SHOULD,
         "A new KV-cache scale parameter is float32 whatever torch's default dtype is.",
         f"{_KV} KVCacheScaleParameter.__new__ (#43167)",
         "vLLM builds it with torch.tensor(-1.0), which takes torch.get_default_dtype(): bf16 when a layer is built under a bf16 default, so a float32 scale is rounded on load (257 becomes 256, 0.3 becomes 0.30078125) and one below bf16's range becomes 0, which then fails 'assert layer.k_scale > 0.0'. MUST tests therefore draw scales exact in the model's dtype."),
    Rule("SCALE-3", MUST,
         "The scale loader accepts any tensor with exactly one element, whatever its shape (e.g. (), (1,), (1,1,1)) and float dtype (fp32, bf16, fp16, fp64), and stores its value converted to the parameter's dtype.",
         f"{_KV} KVCacheScaleParameter.weight_loader (#43167)"),
    Rule("SCALE-4", MUST,
         "The scale loader rejects a tensor whose element count is not 1 with a ValueError whose message names the shape, and the parameter keeps its value.",
         f"{_KV} KVCacheScaleParameter.weight_loader: 'KV-cache scale expects a scalar weight, got shape (2,)' (#43167)"),
    Rule("SCALE-5", MUST,
         "The scale loader writes with copy_, so a copy counter sees exactly one element per scale load.",
         f"{_KV} KVCacheScaleParameter.weight_loader; {_META} CopyCounter (#38995, #43167)"),
    Rule("SCALE-6", MUST,
         "Loading a scale keeps the parameter's device, dtype and storage (data_ptr unchanged).",
         f"{_KV} KVCacheScaleParameter.weight_loader uses param.data.copy_ (#43167)"),
    Rule("SCALE-7", MUST,
         "A weight_loader assigned on a scale parameter instance takes precedence over the class loader.",
         f"{_KV} KVCacheScaleParameter docstring; {_LW} wraps loaders per instance (#43167)"),
    # --------------------------------------------------------------- KVPROC
    Rule("KVPROC-1", MUST,
         "Creating the KV-cache method's weights gives the attention layer exactly four fresh sentinel scale parameters q_scale, k_scale, v_scale, prob_scale; creating them again replaces them with fresh sentinels.",
         f"{_KV} BaseKVCacheMethod.create_weights (#43167)"),
    Rule("KVPROC-2", MUST,
         "With a quantized KV-cache dtype and k and v both loaded positive, the k and v outputs equal the loaded values.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading step 3a"),
    Rule("KVPROC-3", MUST,
         "With a quantized KV-cache dtype and neither k nor v loaded, every k and v output is exactly 1.0 (and a warning says so; the warning is checked by the reference's own tests only, since vLLM logs it once per process).",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading steps 3b, 3g"),
    Rule("KVPROC-4", MUST,
         "With a quantized KV-cache dtype and only k loaded, both the k and the v outputs equal k.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading step 3c (#6081)"),
    Rule("KVPROC-5", SHOULD,
         "With a quantized KV-cache dtype and only v loaded, both the k and the v outputs equal v.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading step 3c",
         "vLLM fails with a bare AssertionError ('assert layer.k_scale > 0.0') on v-only checkpoints (#46264; fix #46265 closed unmerged)."),
    Rule("KVPROC-6", MUST,
         "For every KV-cache dtype that is not per-token-head, the q and prob outputs equal the loaded q_scale and prob_scale when loaded, and 1.0 otherwise.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading step 4 (#14570)"),
    Rule("KVPROC-7", SHOULD,
         "A loaded scale that is NaN, infinite, zero, or negative other than the sentinel -1.0 is rejected with a ValueError naming the scale and its value, and the layer keeps every output it had.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading step 3",
         "vLLM treats any negative value as 'not loaded', accepts +inf, turns a NaN or zero v into a copy of k, and fails with a bare AssertionError on a NaN or zero k."),
    Rule("KVPROC-8", MUST,
         "For per-token-head KV-cache dtypes (int4/int8/fp8_per_token_head) the k and v outputs are 1.0 whatever was loaded.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading step 2 (#38378)"),
    Rule("KVPROC-9", MUST,
         "For a non-quantized KV-cache dtype (auto, bfloat16, ...) processing leaves the k and v outputs unchanged.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading step 3 (skipped)"),
    Rule("KVPROC-10", MUST,
         "Building an attention layer with KV-cache dtype fp8_e5m2 under a quantization config that loads KV scales raises ValueError.",
         f"{_ATTN} _init_kv_cache_quant: 'fp8_e5m2 kv-cache is not supported with fp8 checkpoints.'"),
    Rule("KVPROC-11", SHOULD,
         "After every load and reload, each host mirror (_k_scale_float, _v_scale_float, _q_scale_float, _prob_scale_float, _k_scale_cpu, _v_scale_cpu) equals its device scale.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading steps 3f, 4 (#42749)",
         "vLLM never updates _prob_scale_float from the checkpoint (it stays 1.0), and set_default_quant_scales replaces _k_scale_cpu/_v_scale_cpu with new objects."),
    Rule("KVPROC-12", MUST,
         "Processing deletes the four scale parameters, and processing a second time is a no-op: the outputs equal those of processing once.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading steps 1, 5 (#28480)"),
    Rule("KVPROC-13", MUST,
         "Processing writes the device scales _q_scale, _k_scale, _v_scale, _prob_scale in place: their data_ptr never changes.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading (copy_ into _k_scale etc.)"),
    # ------------------------------------------------------------------ MAP
    Rule("MAP-1", MUST,
         "A mapper applies its stages in the fixed order regex, substr, stacked, prefix, suffix, however it was composed.",
         f"{_UTILS} WeightsMapper._map_name_with_shard"),
    Rule("MAP-2", MUST,
         "Within a stage every matching entry is applied, in insertion order, each seeing the result of the previous one.",
         f"{_UTILS} WeightsMapper._map_name_with_shard"),
    Rule("MAP-3", MUST,
         "A regex entry replaces every match; a substr, stacked or prefix entry replaces the first occurrence; a suffix entry replaces the trailing occurrence.",
         f"{_UTILS} WeightsMapper._map_name_with_shard"),
    Rule("MAP-4", MUST,
         "An entry that maps a matching name to None drops the weight: it is not yielded and not loaded.",
         f"{_UTILS} WeightsMapper docstring, apply"),
    Rule("MAP-5", MUST,
         "a | b is a new mapper in which b's entry wins on an equal key; a and b are unchanged.",
         f"{_UTILS} WeightsMapper.__or__ (#43167, #44589)"),
    Rule("MAP-6", MUST,
         "The empty mapper maps every name to itself.",
         f"{_UTILS} WeightsMapper"),
    Rule("MAP-7", MUST,
         "Composition is associative in behaviour: (a | b) | c maps every name as a | (b | c) does.",
         f"{_UTILS} WeightsMapper.__or__"),
    Rule("MAP-8", MUST,
         "A cache-scale mapper is idempotent: mapping a mapped name again changes nothing, and canonical names map to themselves.",
         f"{_BASE} QuantizationConfig.get_cache_scale_mapper (negative lookbehind, #44589)"),
    Rule("MAP-9", SHOULD,
         "A mapper with an empty prefix, substr or suffix key, or a regex that does not compile, is rejected when it is built.",
         f"{_UTILS} WeightsMapper",
         "vLLM accepts them: an empty suffix key raises ValueError('empty separator') only when a name is mapped, and an empty prefix or substr silently prepends."),
    Rule("MAP-10", SHOULD,
         "Mapping never mutates the caller's tensors.",
         f"{_UTILS} WeightsMapper.apply",
         "vLLM sets data.shard_id on the caller's tensor, so a tensor reused under another name carries a stale shard id."),
    Rule("MAP-11", MUST,
         "A stacked entry renames the name and yields its shard id with the weight (the last matching entry's shard id wins).",
         f"{_UTILS} WeightsMapper.apply, orig_to_new_stacked (#44589)"),
    # ---------------------------------------------------------------- NAMES
    Rule("NAMES-1", MUST,
         "compressed-tensors names self_attn.{q,k,v}_scale load into the canonical self_attn.attn.{q,k,v}_scale.",
         f"{_BASE} get_cache_scale_mapper default regex (#44589)"),
    Rule("NAMES-2", SHOULD,
         "Legacy compressed-tensors names self_attn.{q,k,v}_proj.output_scale load into the canonical scales under every quantization config.",
         f"{_FP8} Fp8Config.get_cache_scale_mapper (#43167)",
         "vLLM maps output_scale names only under the Fp8 and Quark configs; the compressed-tensors and ModelOpt configs inherit the base mapper, so such names fail there."),
    Rule("NAMES-3", MUST,
         "ModelOpt names self_attn.k_proj.k_scale and self_attn.v_proj.v_scale load into the canonical scales.",
         f"{_BASE} get_cache_scale_mapper rule 2 (#44589)"),
    Rule("NAMES-4", MUST,
         "Quark names self_attn.{q,k,v}_proj.output_scale and self_attn.prob_output_scale load into the canonical scales.",
         "vllm/model_executor/layers/quantization/quark/quark.py QuarkConfig.get_cache_scale_mapper (#43167)"),
    Rule("NAMES-5", MUST,
         "AutoFP8 names self_attn.k_scale and self_attn.v_scale load into the canonical scales.",
         f"{_BASE} get_cache_scale_mapper default regex (#44589)"),
    Rule("NAMES-6", MUST,
         "The legacy fused name self_attn.kv_scale loads into the canonical k_scale (and v then follows k).",
         f"{_BASE} get_cache_scale_mapper rule 1; {_UTILS} kv_scale deprecation warning (#6081)"),
    Rule("NAMES-7", MUST,
         "Fused names self_attn.qkv_proj.{k,v}_scale load into the canonical scales, also when the model's own mapper stacks q/k/v_proj into qkv_proj.",
         f"{_BASE} get_cache_scale_mapper rule 3 (#44589; bugs #25047, #32199)"),
    Rule("NAMES-8", SHOULD,
         "MLA attention layers receive the KV-cache method, and MLA checkpoint names self_attn.{k,v}_scale load into them, under every quantization config.",
         "vllm/model_executor/layers/quantization/{fp8,quark/quark,compressed_tensors/compressed_tensors}.py get_quant_method",
         "vLLM's Fp8, Quark and compressed-tensors configs attach the KV-cache method to Attention only, so MLA scales are ignored there (only ModelOpt covers MLAAttention, #35430)."),
    Rule("NAMES-9", MUST,
         "NemotronH names mixer.k_proj.k_scale and mixer.v_proj.v_scale load into the canonical mixer.attn scales.",
         f"{_BASE} get_cache_scale_mapper rule 4 (#44589)"),
    Rule("NAMES-10", MUST,
         "The automatic loader merges the quantization config's cache-scale mapper to the right of the model's own mapper, so the cache-scale entry wins on an equal key.",
         f"{_UTILS} AutoWeightsLoader.load_weights (#43167)"),
    Rule("NAMES-11", SHOULD,
         "A bare self_attn.prob_scale loads into the canonical self_attn.attn.prob_scale.",
         f"{_BASE} get_cache_scale_mapper",
         "vLLM has no mapping and no ignore rule for .prob_scale, so such a checkpoint fails with 'There is no module or parameter named ...'."),
    Rule("NAMES-12", MUST,
         "Names that are not KV-cache scales (weights, weight_scale, input_scale) pass through the cache-scale mapper unchanged.",
         f"{_BASE} get_cache_scale_mapper (#44589)"),
    Rule("NAMES-13", MUST,
         "Scale names map the same way under any module prefix (model., language_model.model., ...); a name with no prefix at all is out of scope, since the engine's entries match from a leading dot.",
         f"{_BASE} get_cache_scale_mapper (regexes anchored at the end of the name)"),
    Rule("NAMES-14", SHOULD,
         "Quark names ({q,k,v}_proj.output_scale, prob_output_scale) and fused names (qkv_proj.{k,v}_scale) also load under a NemotronH mixer container.",
         "vllm/model_executor/layers/quantization/quark/quark.py QuarkConfig.get_cache_scale_mapper; "
         f"{_BASE} get_cache_scale_mapper rule 3",
         "vLLM writes these entries for self_attn only (the prob_output_scale entry and the qkv_proj regex name '.self_attn.'), so under mixer the names stay unmapped or land on mixer.qkv_proj.attn.*_scale."),
    Rule("NAMES-15", SHOULD,
         "ModelOpt FP8-attention names self_attn.q_proj.q_scale (and mixer.q_proj.q_scale) load into the canonical attn.q_scale.",
         "NVIDIA/TensorRT-Edge-LLM tensorrt_edgellm/quantization/quantize.py _collect_attention_q_scales_for_export "
         "(commit 9fccfef4: <attention>.q_proj.q_scale, float32 (1,), amax / maxbound, passed to ModelOpt's "
         f"export_hf_checkpoint as extra_state_dict next to its k_proj.k_scale/v_proj.v_scale); {_BASE} get_cache_scale_mapper",
         "vLLM has no entry for it: the base mapper's catch-all (?<!\\.attn)\\.([qkv])_scale$ rewrites it to self_attn.q_proj.attn.q_scale, "
         "the model's stacked entry to self_attn.qkv_proj.attn.q_scale (shard q), and AutoWeightsLoader hands attn.q_scale to "
         "QKVParallelLinear.load_weights (vllm/model_executor/layers/linear.py), whose get_submodule('attn') raises "
         "AttributeError 'QKVParallelLinear has no attribute `attn`' (seen running the suite against vLLM 0.33.0 on CPU)."),
    # ----------------------------------------------------------------- LOAD
    Rule("LOAD-1", MUST,
         "The default loader copies a one-element weight into a one-element parameter with copy_, whatever the two shapes.",
         f"{_WU} default_weight_loader (#7534, #38995)"),
    Rule("LOAD-2", SHOULD,
         "The default loader rejects a weight whose shape differs from the parameter's with a ValueError naming both shapes, and writes nothing.",
         f"{_WU} default_weight_loader",
         "vLLM raises AssertionError('Attempted to load weight (...) into parameter (...)')."),
    Rule("LOAD-3", MUST,
         "The automatic loader returns exactly the set of (mapped) names it loaded.",
         f"{_UTILS} AutoWeightsLoader.load_weights"),
    Rule("LOAD-4", MUST,
         "A name that maps to no parameter or module is rejected with a ValueError naming it.",
         f"{_UTILS} AutoWeightsLoader._load_module: 'There is no module or parameter named ...'"),
    Rule("LOAD-5", MUST,
         "Skip prefixes and skip substrings are tested against mapped names.",
         f"{_UTILS} AutoWeightsLoader.load_weights step 5"),
    Rule("LOAD-6", SHOULD,
         "A load that rejects any weight (unknown name, shape mismatch, bad scale) leaves every parameter and buffer of the model unchanged, and its message names the weight and lists close matches for unknown names.",
         f"{_UTILS} AutoWeightsLoader.load_weights",
         "vLLM loads weights as they stream, so the weights before the rejected one are already written."),
    Rule("LOAD-7", SHOULD,
         "A first load that leaves any parameter without a checkpoint value raises a ValueError listing the missing names.",
         "vllm/model_executor/model_loader/default_loader.py DefaultModelLoader.load_weights",
         "vLLM checks for unloaded parameters only when quantization is None (P21 in the field notes)."),
    Rule("LOAD-8", SHOULD,
         "A KV-cache scale present in the checkpoint is never dropped silently: it is loaded, or the load fails naming it.",
         f"{_UTILS} AutoWeightsLoader ignore-unexpected suffixes (#44589)",
         "vLLM silently ignores .k_scale/.v_scale/.q_scale names on an attention module without a KV-cache method (divergence 15; bugs #54623, sglang#39942)."),
    Rule("LOAD-9", MUST,
         "Persistent buffers are loadable by name; non-persistent buffers are not.",
         f"{_UTILS} AutoWeightsLoader._load_module"),
    Rule("LOAD-10", MUST,
         "A name that continues below a parameter is rejected with a ValueError naming it.",
         f"{_UTILS} AutoWeightsLoader._load_param: 'Attempted to load nested weight ...'"),
    Rule("LOAD-11", SHOULD,
         "A checkpoint tensor whose dtype its parameter's loader does not accept is rejected with a ValueError naming the weight and the dtype, and nothing is written: an FP8 weight accepts only float8_e4m3fn (not e5m2, bf16 or fp32), and float parameters and every scale accept only float16, bfloat16, float32 and float64 (no FP8, integer, bool or complex).",
         f"{_WU} default_weight_loader; {_KV} KVCacheScaleParameter.weight_loader (param.data.copy_)",
         "vLLM's loaders check shapes only and convert the dtype with copy_: a bf16 or fp32 tensor is rounded into an FP8 weight, an e5m2 weight is reinterpreted numerically (values beyond e4m3's range become NaN), integer, bool and complex tensors are cast (complex dropping its imaginary part with a warning)."),
    Rule("LOAD-12", SHOULD,
         "A linear weight_scale or input_scale in a checkpoint must be finite, positive and at most float32's maximum / 448 (about 7.6e35, so the largest FP8 value times the scale stays finite); a checkpoint with any other element is rejected with a ValueError naming the weight, on a first load and on a reload, before anything is written.",
         f"{_FP8} Fp8LinearMethod.process_weights_after_loading; {_WU} default_weight_loader",
         "vLLM never checks linear scale values: a NaN, infinite, zero or negative scale (or a finite 1e38) is loaded and processed into NaN, infinite or zero weights without an error."),
    Rule("LOAD-13", SHOULD,
         "A KV-cache scale in a checkpoint must be finite and positive: NaN, +-inf, 0, negative values and exactly -1.0 (the sentinel, which only create_weights may produce) are rejected with a ValueError naming the weight, on a first load and on a reload, before any weight of the model is written.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading (sentinel test k_scale < 0)",
         "vLLM reads any negative checkpoint scale, -1.0 included, as 'not loaded' (k=v=-1.0 gives 1.0; k=-1.0 with v>0 is an AssertionError), and finds a NaN or zero k_scale only as a bare AssertionError in processing, after every linear was written and processed; a NaN v_scale beside a positive k_scale silently becomes k."),
    Rule("LOAD-14", SHOULD,
         "Two checkpoint tensors that give a value for the same parameter (the same name twice, an engine-format qkv_proj.weight beside q/k/v_proj.weight, lm_head.weight beside embed_tokens.weight on a tied model) are rejected with a ValueError naming both sources, before anything is written.",
         f"{_UTILS} AutoWeightsLoader.load_weights; {_WU} default_weight_loader",
         "vLLM writes each tensor as it arrives, so the last source wins silently on a first load (a tied model's lm_head.weight overwrites the embedding unless the model skips 'lm_head.'), and a reload counts both towards the layer's size."),
    Rule("LOAD-15", SHOULD,
         "An attention layer's output scale buffers (_q_scale, _k_scale, _v_scale, _prob_scale) are not loadable by name: a checkpoint tensor addressing one is rejected with a ValueError naming it (an exception to LOAD-9), since only processing writes them, from the validated scale parameters.",
         f"{_ATTN} set_default_quant_scales (register_buffer persistent=True); {_UTILS} AutoWeightsLoader._load_module",
         "In vLLM they are persistent buffers, so a checkpoint tensor '...attn._k_scale' is loaded by name: it bypasses the scale checks (a NaN is accepted) and the host mirrors (_k_scale_float, _k_scale_cpu) keep the old value."),
    Rule("LOAD-16", SHOULD,
         "A checkpoint directory with a corrupt shard (e.g. truncated) or an index entry naming a file outside the directory is rejected by a first load and by a reload with a ValueError naming the file, before any weight is written; no file outside the directory is read.",
         "vllm/model_executor/model_loader/weight_utils.py safetensors_weights_iterator, filter_duplicate_safetensors_files",
         "vLLM iterates the directory's *.safetensors files with safetensors' own reader: a truncated shard raises safetensors' SafetensorError (not a ValueError) when the iteration reaches that shard, after the tensors of earlier shards were written; the index is only used to filter shard files, so an entry naming a file elsewhere is ignored rather than rejected."),
    Rule("LOAD-17", MUST,
         "A first load gives the kernel state the reference gives for the same spec and checkpoint, bit for bit in the canonical export: FP8 weights as [out, in], the shards of a fused per-tensor FP8 linear re-quantized to their largest scale (each byte equal to the reference's or one e4m3 step from it; LOAD-20 asks for equal), per-channel, input and KV-cache scales, norms and embeddings cut to the vocabulary.",
         f"{_FP8} Fp8LinearMethod.process_weights_after_loading (requantize_with_max_scale); {_KV} BaseKVCacheMethod.process_weights_after_loading"),
    Rule("LOAD-18", MUST,
         "With a quantized KV-cache dtype, after a first load and after a dummy load, every attention layer's host mirrors _q_scale_float, _k_scale_float, _v_scale_float, _k_scale_cpu and _v_scale_cpu exist and equal its device scales (_prob_scale_float is KVPROC-11's).",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading steps 3f, 4 (#42749)"),
    Rule("LOAD-19", MUST,
         "On a tied model whose checkpoint carries lm_head.weight beside embed_tokens.weight, a first load and a reload give the same outcome whatever the order of the two tensors: rejected both ways, or loaded to the same kernel state.",
         "vllm/model_executor/models/llama.py LlamaForCausalLM.load_weights (AutoWeightsLoader skip_prefixes=['lm_head.'] when tie_word_embeddings); " f"{_UTILS} AutoWeightsLoader.load_weights"),
    Rule("LOAD-20", SHOULD,
         "Re-quantizing the shards of a fused per-tensor FP8 linear to their largest scale is exact: each shard is dequantized in float32 and every byte equals the reference's round-to-nearest e4m3 of weight x shard scale / largest scale.",
         "vllm/model_executor/layers/quantization/utils/w8a8_utils.py requantize_with_max_scale, per_tensor_dequantize",
         "per_tensor_dequantize casts the FP8 shard to float16 and multiplies by the float32 scale in float16 (a 0-d float32 tensor does not promote a float16 tensor), so the dequantized value is rounded to 11 bits before ops.scaled_fp8_quant re-quantizes it: about 0.2% of the re-quantized bytes land one e4m3 step from the exact value (104 of 51,200 bytes over 50 random shards)."),
    # ---------------------------------------------------------------- COUNT
    Rule("COUNT-1", MUST,
         "The copy counter counts every element written by copy_, one-element and 0-d copies included.",
         f"{_META} CopyCounter (#32133, #38995)"),
    Rule("COUNT-2", MUST,
         "Writes that are not copy_ (fill_, zero_, index_copy_) are not counted.",
         f"{_META} CopyCounter counts only aten.copy_.default"),
    Rule("COUNT-3", MUST,
         "Within one weight-loader call, the count credited to a parameter is capped at its element count, so a loader that writes a parameter twice counts it once.",
         f"{_META} get_numel_loaded (#44814)"),
    Rule("COUNT-4", MUST,
         "Counting a full load of a layer gives exactly the layer's element count.",
         f"{_LW} online_process_loader, get_layer_size"),
    Rule("COUNT-5", SHOULD,
         "A broadcasting copy_ counts the destination's elements instead of failing.",
         f"{_META} CopyCounter",
         "vLLM's counter asserts equal element counts, so a broadcasting copy_ raises AssertionError inside the counter."),
    Rule("COUNT-6", SHOULD,
         "Across one reload, a region delivered more than once counts once, so a layer is not processed until every one of its elements has arrived.",
         f"{_META} get_numel_loaded; {_LW} online_process_loader",
         "vLLM caps counts per loader call only (#44814), so delivering the q shard of a fused qkv_proj three times (num_heads = num_kv_heads) adds up to the layer's size and the layer is processed with its k and v rows never written (the hazard of RELOAD-6 and RELOAD-9)."),
    # ---------------------------------------------------------------- ORDER
    Rule("ORDER-1", MUST,
         "During reload every attention-like layer (MHA, GQA, MLA) is processed after every non-attention layer, whatever the registration order.",
         f"{_LW} finalize_layerwise_processing deferred_attn (#38995, #49519)"),
    Rule("ORDER-2", MUST,
         "Each layer that receives weights is processed exactly once per load or reload.",
         f"{_LW} _layerwise_process, info.reset"),
    Rule("ORDER-3", SHOULD,
         "On the first load too, every attention-like layer is processed after every non-attention layer.",
         "vllm/model_executor/model_loader/utils.py process_weights_after_loading",
         "On a first load vLLM runs KV-cache quant methods in module order, interleaved with linear layers; only the layer-level hook is deferred (divergence 25)."),
    Rule("ORDER-4", MUST,
         "During reload a non-attention layer is processed when its last element arrives, not before.",
         f"{_LW} online_process_loader (load_numel >= load_numel_total)"),
    # --------------------------------------------------------------- RELOAD
    Rule("RELOAD-1", MUST,
         "After a reload every kernel parameter and buffer is the same tensor with the same data_ptr as before it (CUDA graphs stay valid).",
         f"{_LW} _copy_and_restore_kernel_tensors, _place_kernel_tensors (#32133, #38995)"),
    Rule("RELOAD-2", MUST,
         "After a reload that delivers every weight of every layer (for attention layers: at least their k_scale), the kernel state equals, bit for bit, the kernel state of a fresh load of the same checkpoint.",
         f"{_LW} _layerwise_process (#32133)"),
    Rule("RELOAD-3", MUST,
         "A reload that delivers some attention scales re-creates fresh sentinels first, so scales absent from it take their fresh-load defaults (only k: v follows k; no q: 1.0).",
         f"{_LW} _reload_attention_scales (#38995)"),
    Rule("RELOAD-4", MUST,
         "An attention layer that receives no weights in a reload keeps all its scales and host mirrors.",
         f"{_LW} _finalize_attention_layer (#38995)"),
    Rule("RELOAD-5", MUST,
         "A non-attention layer that receives no weights in a reload keeps its values.",
         f"{_LW} finalize_layerwise_processing ('Failed to load weights', _place_kernel_tensors)"),
    Rule("RELOAD-6", SHOULD,
         "A reload that delivers some but not all elements of a non-attention layer fails at finalize with a ValueError listing the missing weights, and that layer keeps its previous values.",
         f"{_LW} finalize_layerwise_processing ('Delayed processing')",
         "vLLM processes such a layer with uninitialized memory (torch.empty_strided) in place of the missing elements (divergence 10; bugs prime-rl#2714, #50523)."),
    Rule("RELOAD-7", MUST,
         "Reloading the same checkpoint twice gives bit-identical kernel state.",
         f"{_LW} (P11; bugs #48284, #50405)"),
    Rule("RELOAD-8", MUST,
         "Tied weights stay tied across reload: the tied parameters are one tensor holding the new value.",
         f"{_LW} module docstring, Limitation 2"),
    Rule("RELOAD-9", SHOULD,
         "A weight delivered to a layer that has already been processed in the same reload is rejected with a ValueError naming it.",
         f"{_LW} online_process_loader ('Excessive loading')",
         "vLLM drops such a load silently (debug log only, divergence 11)."),
    Rule("RELOAD-10", MUST,
         "The final state of a reload does not depend on the order or grouping of the weights (shuffled, interleaved across layers, one tensor per call).",
         f"{_LW} online_process_loader (#40317; P14)"),
    Rule("RELOAD-11", SHOULD,
         "A one-call reload that is rejected (a partial layer, a bad tensor in the last layer), or whose weights iterable raises at any position, leaves every kernel tensor and host mirror bit-identical: every layer is reloaded or none.",
         f"{_LW} online_process_loader, finalize_layerwise_processing; vllm/v1/worker/gpu_model_runner.py reload_weights",
         "vLLM's reload streams: a layer is processed and written back when its last element arrives, so a later failure (an exception from the iterator, a partial layer or a bad scale found at finalize) leaves a model mixing reloaded and old layers, and a partial layer is processed with uninitialized memory (RELOAD-6)."),
    Rule("RELOAD-12", SHOULD,
         "A reload session that is abandoned unfinished (dropped and garbage-collected without finish) leaves no data-less (meta) tensor registered in the model, and every layer it did not complete keeps its values.",
         f"{_LW} initialize_layerwise_reload (restore_layer_on_meta); {_META} restore_layer_on_meta",
         "vLLM has no abort: initialize_layerwise_reload puts every layer's parameters on the meta device and only finalize_layerwise_reload materializes them, so a reload given up half-way (an exception in the caller, a crashed trainer) leaves meta tensors registered and the model unusable."),
    Rule("RELOAD-13", MUST,
         "After any sequence of reloads (one call, a session in buckets, a dummy load followed by a reload), the kernel state equals, bit for bit in the canonical export, the reference's after the same steps on the same spec and checkpoints (re-quantized fused shards within one e4m3 step, as in LOAD-17).",
         f"{_LW} _layerwise_process, finalize_layerwise_processing (#32133, #38995)"),
    Rule("RELOAD-14", MUST,
         "With a quantized KV-cache dtype, after every reload (one call or a session, with or without scales delivered), every attention layer's host mirrors _q_scale_float, _k_scale_float, _v_scale_float, _k_scale_cpu and _v_scale_cpu equal its device scales.",
         f"{_LW} _reload_attention_scales; {_KV} BaseKVCacheMethod.process_weights_after_loading step 3f (#42749; stale mirrors after refit: ai-dynamo/modelexpress#711, #783)"),
    Rule("RELOAD-15", MUST,
         "An attention layer's parameters besides its KV-cache scales (attention sinks) stay registered as the same tensors with real data through every reload: a reload that does not deliver them leaves their values, one that does writes the delivered values in place.",
         f"{_LW} _finalize_attention_layer, _copy_and_restore_kernel_tensors; tests/model_executor/model_loader/test_reload.py (the attention-sink case)"),
    # ------------------------------------------------------------------ E2E
    Rule("E2E-1", MUST,
         "A model built with dummy weights and then reloaded from an FP8-KV checkpoint of SmolLM2-135M, in the layout of any producer whose NAMES rule is a MUST (compressed-tensors, ModelOpt, Quark, AutoFP8, legacy kv_scale, fused qkv), scores perplexity below 10 on 'The capital of France is the city of Paris' with the prefix 'The capital of France is' masked.",
         "tests/model_executor/model_loader/test_reload.py test_kv_scale_reload (#38995)"),
    Rule("E2E-2", MUST,
         "That reloaded model's kernel state is bit-identical to a fresh load of the same checkpoint, so the two perplexities are equal.",
         f"{_LW} (#38995; P11)"),
    Rule("E2E-3", MUST,
         "The KV-cache scales the model ends with are the checkpoint's: reloading a checkpoint whose k/v scales are divided by 16 (K and V saturate at +-448) makes perplexity exceed 1000.",
         f"{_KV} BaseKVCacheMethod.process_weights_after_loading; {_LW} _reload_attention_scales (#38995)"),
    Rule("E2E-4", SHOULD,
         "Checkpoints in the layouts whose NAMES rule is a SHOULD meet E2E-1 and E2E-2 too: legacy compressed-tensors (self_attn.{q,k,v}_proj.output_scale under a compressed-tensors quantization config, NAMES-2) and ModelOpt FP8 attention (a calibrated self_attn.q_proj.q_scale next to k_proj.k_scale/v_proj.v_scale, NAMES-15), with every KV-cache scale of the file, q included, ending in the kernel.",
         f"{_FP8} Fp8Config.get_cache_scale_mapper (#43167); NVIDIA/TensorRT-Edge-LLM tensorrt_edgellm/quantization/quantize.py _collect_attention_q_scales_for_export (commit 9fccfef4)",
         "vLLM's compressed-tensors config has no output_scale mapping (NAMES-2), so a legacy checkpoint does not load; ModelOpt's q_proj.q_scale has no entry of its own: the default (?<!\\.attn)\\.([qkv])_scale$ rule makes it q_proj.attn.q_scale, the model's stacked q_proj->qkv_proj entry then qkv_proj.attn.q_scale, and loading raises AttributeError: QKVParallelLinear has no attribute `attn` (NAMES-15)."),
)

RULES += (
    # --------------------------------------------------------------- STATIC
    Rule("STATIC-1", MUST,
         "When the quantization config says static activations (compressed-tensors input_activations.dynamic false, ModelOpt FP8, Quark input_tensors.is_dynamic false, Fp8Config activation_scheme static), every FP8 linear loads the checkpoint's input_scale of each of its projections, decided from the config and never from the method's name; with dynamic activations no linear has an input_scale.",
         f"{_FP8} Fp8LinearMethod.create_weights (act_q_static: create_fp8_input_scale); "
         f"{_CT_FP8} CompressedTensorsW8A8Fp8.create_weights (is_static_input_scheme); "
         "vllm/model_executor/layers/quantization/quark/schemes/quark_w8a8_fp8.py QuarkW8A8Fp8.create_weights"),
    Rule("STATIC-2", MUST,
         "Processing leaves each FP8 linear one 0-d float32 input_scale equal to the largest of its fused shards' checkpoint input_scale values (q/k/v for qkv_proj, gate/up for gate_up_proj), for per-tensor and per-channel weights, after a first load and after a reload alike.",
         f"{_FP8} Fp8LinearMethod.process_weights_after_loading (input_scale.max()); "
         f"{_CT_FP8} CompressedTensorsW8A8Fp8.process_weights_after_loading "
         "(replace_parameter(layer, 'input_scale', layer.input_scale.max()))"),
    Rule("STATIC-3", SHOULD,
         "A first load of a static-activation checkpoint that lacks the input_scale of any FP8 projection (one shard of a fused linear included) is rejected with a ValueError naming the engine's input_scale parameter, before anything is written.",
         "vllm/model_executor/layers/quantization/utils/fp8_utils.py create_fp8_input_scale",
         "vLLM fills input_scale with float32's minimum (-3.4e38) at creation and never checks that it was loaded: a missing shard silently drops out of the max, and a linear with no input_scale at all is processed with a scale of -3.4e38."),
)

RULES += (
    # ---------------------------------------------------------------- HEADS
    Rule("HEADS-1", MUST,
         "Under a compressed-tensors kv_cache_scheme with strategy attn_head, k_scale and v_scale load from checkpoint tensors of shape (num_kv_heads, 1, 1) and q_scale from one of shape (num_heads, 1, 1); after a first load the device scales _k_scale and _v_scale hold, per KV head, the checkpoint's value, and _q_scale holds per KV head the largest q scale of the query heads that share it (query head h uses KV head h // (num_heads / num_kv_heads)).",
         f"{_CT_KV}.create_weights (n_scales = num_kv_heads; _tp_aware_loader: flatten, q amax over head groups), .process_weights_after_loading (#30141)"),
    Rule("HEADS-2", SHOULD,
         "A per-head scale whose shape is not (heads, 1, 1), (heads, 1) or (heads,) (heads = num_kv_heads for k and v, num_heads for q) is rejected by a first load and by a reload with a ValueError naming the weight, its shape and the head count, and the model is unchanged.",
         f"{_CT_KV}.create_weights (_tp_aware_loader)",
         "vLLM's _tp_aware_loader flattens whatever it gets, slices its rank's heads and copies with copy_: a tensor with more elements than heads is silently cut to the first ones, a one-element tensor is broadcast to every head, a tensor of num_kv_heads elements in any shape is accepted, and a shorter one fails with a RuntimeError from copy_ (q: from view) after the weights before it were written."),
    Rule("HEADS-3", MUST,
         "A reload that delivers per-head k, v and q scales leaves the per-head device scales equal to those of a fresh load of the same checkpoint, and every kernel tensor keeps its data_ptr.",
         f"{_LW} _reload_attention_scales, _copy_and_restore_kernel_tensors (#38995); {_CT_KV}.process_weights_after_loading"),
    Rule("HEADS-4", SHOULD,
         "The per-head device scales _q_scale, _k_scale and _v_scale have shape (num_kv_heads,) from the moment the model is built, and no load or reload changes their data_ptr.",
         f"{_CT_KV}.process_weights_after_loading (register_buffer('_k_scale', ...))",
         "vLLM builds them 0-d (set_default_quant_scales) and the first processing registers new (num_kv_heads,) buffers in their place, so a tensor captured before the first load (a CUDA graph, a kernel argument) keeps reading the old 0-d 1.0."),
    Rule("HEADS-5", MUST,
         "With per-head scales, after every first load and reload the host mirrors _k_scale_float, _v_scale_float, _q_scale_float, _k_scale_cpu and _v_scale_cpu equal the largest head's device scale.",
         f"{_CT_KV}.process_weights_after_loading (_to_scalar: max().item(); _k_scale_cpu.fill_)"),
    Rule("HEADS-6", SHOULD,
         "Under a per-tensor KV-cache config, a checkpoint k_scale, v_scale or q_scale with more than one element (a per-head checkpoint) is rejected with a ValueError naming the weight and its shape, on a first load and on a reload, and the model is unchanged: a per-head checkpoint is never collapsed to one scale silently.",
         f"{_KV} KVCacheScaleParameter.weight_loader; {_WU} default_weight_loader; {_CT_KV}.create_weights (tensor strategy: one-element parameters)",
         "Under Fp8Config vLLM raises the ValueError (SCALE-4), but under a compressed-tensors tensor-strategy config the scales are plain one-element parameters loaded by default_weight_loader, which fails with a bare AssertionError after the weights before it were written."),
    Rule("HEADS-7", SHOULD,
         "With per-head scales and a quantized KV-cache dtype, the scales a checkpoint lacks take the per-tensor defaults head by head: only k given, v equals k per head (and only v, k equals v); neither, every head's k and v is 1.0; no q, every q is 1.0.",
         f"{_CT_KV}.create_weights (torch.ones placeholders); {_KV} BaseKVCacheMethod.process_weights_after_loading step 3c",
         "vLLM's compressed-tensors method creates its placeholders as 1.0, not the sentinel, so a scale the checkpoint lacks stays 1.0: with only k given, every v is 1.0 instead of k (unlike KVPROC-4)."),
    Rule("HEADS-8", MUST,
         "Under tensor parallelism of size tp, rank r holds the per-head scales of its own KV heads, q being first reduced to one scale per KV head: when num_kv_heads >= tp (tp divides it) entries [r*n, (r+1)*n) with n = num_kv_heads / tp; when num_kv_heads < tp (it divides tp), the single entry r // (tp / num_kv_heads) of the KV head the rank replicates.",
         f"{_CT_KV}.create_weights (_tp_aware_loader: 'heads evenly distributed' / 'heads replicated to match TP size')"),
)

RULES += (
    # ---------------------------------------------------------------- DTYPE
    Rule("DTYPE-1", MUST,
         "A model whose checkpoint says bfloat16 or float16 (config.json dtype or torch_dtype) is built in that dtype: after a first load and after a reload every unquantized weight, norm and embedding of the kernel state has that dtype and holds the checkpoint's values bit for bit.",
         "vllm/config/model.py _get_and_verify_dtype (dtype 'auto': the config's dtype); "
         "vllm/model_executor/model_loader/base_loader.py BaseModelLoader.load_model (set_default_torch_dtype(model_config.dtype))"),
    Rule("DTYPE-2", MUST,
         "In a model of any dtype, a linear weight_scale or input_scale stored in float32, bfloat16 or float16 ends as a float32 tensor holding exactly the stored value converted to float32 (for the shards of a fused per-tensor linear, the largest of them), never rounded through the model's dtype.",
         "vllm/model_executor/layers/quantization/utils/fp8_utils.py create_fp8_scale_parameter, create_fp8_input_scale (dtype=torch.float32); "
         "vllm/model_executor/parameter.py PerTensorScaleParameter._load_into_shard_id (param_data.copy_ converts)"),
)

RULES_BY_ID = {rule.id: rule for rule in RULES}


def rule(rule_id: str) -> Rule:
    """The rule with this ID; a ``KeyError`` names the unknown ID."""
    try:
        return RULES_BY_ID[rule_id]
    except KeyError:
        raise KeyError(f"unknown rule id {rule_id!r}") from None
