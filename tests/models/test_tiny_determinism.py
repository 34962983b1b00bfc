"""The demo's first stage must not depend on library internals: the same seed gives the same tiny model and
the same tokenizer on any transformers release.

The pinned numbers below come from our own code (``init_tiny_weights``) and from the BPE trainer of
`tokenizers`; they do not change when transformers changes its ``_init_weights``. When these tests fail:

* ``test_init_is_pinned``: the init scheme in ``rklu/models/tiny.py`` changed (then every demo number
  changes too: rerun the demo and update the docs and these pins), or torch changed the float64 normal
  sampler of ``torch.Generator`` (then the model differs between torch releases: pin torch in the
  constraints file the README names). Values are compared to ~1 float32 ulp, so a last-bit difference of
  libm between platforms does not fail it.
* ``test_tokenizer_is_pinned``: the `tokenizers` release trains a different BPE vocabulary from the same
  texts (merge order or tie-breaking changed), or the bundled TOFU data changed.
"""
import hashlib
import json

import pytest
import torch

from rklu.data.qa import load_qa
from rklu.models.tiny import build_tiny_llama, init_tiny_weights, qa_texts, train_bpe_tokenizer


class _Vocab:
    """What build_tiny_llama reads from a tokenizer, without training one."""
    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def __len__(self):
        return 96


def _model(seed=7):
    return build_tiny_llama(_Vocab(), hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32, seed=seed)


# per parameter: (sum, sum of squares, first three values) of the seed-7 model above
PINNED = {
    "lm_head.weight": (-0.22559504878518055, 0.6324851314929724,
                       (0.0013253508368507028, 0.0009398310794495046, 0.036730773746967316)),
    "model.embed_tokens.weight": (-0.15327338209317531, 0.594041307647384, (0.0, 0.0, 0.0)),  # row 0 = padding
    "model.layers.0.mlp.down_proj.weight": (-0.1594466004971764, 0.19795579425308424,
                                            (0.0068453336134552956, -0.00048324017552658916, -0.01048340741544962)),
    "model.layers.0.mlp.gate_proj.weight": (-0.4955462900470593, 0.20665672598426194,
                                            (0.004519246052950621, -0.026247872039675713, -0.014592833817005157)),
    "model.layers.0.mlp.up_proj.weight": (0.19136563779466087, 0.19555596517061136,
                                          (0.014119641855359077, -0.012759200297296047, 0.02185032144188881)),
    "model.layers.0.self_attn.k_proj.weight": (-0.15919210336869583, 0.10104245820881327,
                                               (0.01355713326483965, -0.013537747785449028, 0.017807191237807274)),
    "model.layers.0.self_attn.o_proj.weight": (0.533444895518187, 0.10732396481417374,
                                               (0.0165876317769289, -0.023211045190691948, -0.019245192408561707)),
    "model.layers.0.self_attn.q_proj.weight": (-0.088652312362683, 0.09255869303383084,
                                               (0.025262102484703064, -0.019287513568997383, 0.015288556925952435)),
    "model.layers.0.self_attn.v_proj.weight": (-0.4545747681077046, 0.10721696364115493,
                                               (-0.009272756986320019, -0.058336853981018066, -0.03598052263259888)),
}
NORMS = ("model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight", "model.norm.weight")

# sha256 of the merges and of the sorted vocabulary trained on full[3600:3700] with vocab 512
TOKENIZER_MERGES = "b13a4db9044b97acc864de7e3e5059d91b4630a62618e47f31688eb6e12dd356"
TOKENIZER_VOCAB = "3f33f68747ba195f70802e3bac7823bb9e7cd5dd7a0f4552cdacd0ef24f86866"


def test_init_is_pinned():
    state = _model().state_dict()
    assert set(state) == set(PINNED) | set(NORMS)
    for name, (total, squares, first) in PINNED.items():
        values = state[name].double()
        assert values.sum().item() == pytest.approx(total, abs=1e-6), name
        assert values.square().sum().item() == pytest.approx(squares, rel=1e-6), name
        assert values.flatten()[:3].tolist() == pytest.approx(first, rel=1e-6, abs=1e-12), name
    for name in NORMS:
        assert torch.equal(state[name], torch.ones_like(state[name])), name


def test_init_ignores_the_global_rng_and_leaves_it_alone():
    torch.manual_seed(123)
    first = _model().state_dict()
    after = torch.get_rng_state()
    torch.manual_seed(123)
    assert torch.equal(torch.get_rng_state(), after), "building the model consumed the global RNG"
    torch.manual_seed(999)
    second = _model().state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = _model(seed=8).state_dict()
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


def test_init_scale_and_padding_row():
    model = build_tiny_llama(_Vocab(), hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, seed=0)
    assert model.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(model.model.embed_tokens.weight[0]) == 0  # pad_token_id 0


def test_init_refuses_an_unknown_parameter():
    model = _model()
    model.extra = torch.nn.Parameter(torch.zeros(2, 2, 2))
    with pytest.raises(ValueError, match="no rule for parameter 'extra'"):
        init_tiny_weights(model, seed=0)


def test_tokenizer_is_pinned():
    tok = train_bpe_tokenizer(qa_texts(load_qa("tofu:full[3600:3700]")), vocab_size=512)
    model = json.loads(tok.backend_tokenizer.to_str())["model"]
    merges = hashlib.sha256(json.dumps(model["merges"]).encode()).hexdigest()
    vocab = hashlib.sha256(json.dumps(sorted(model["vocab"].items())).encode()).hexdigest()
    assert (merges, vocab) == (TOKENIZER_MERGES, TOKENIZER_VOCAB)
