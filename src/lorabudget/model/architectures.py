"""Published architecture configs of common encoders, so ``plan`` can count parameters offline.

Only ``plan`` reads these, and only when the real config is neither a local folder nor in the
Hugging Face cache: parameter counts depend on nothing else.
"""

from __future__ import annotations

from typing import Any

# Architecture configs of common encoders, used by ``plan`` only when the real config cannot be
# fetched (offline): parameter counts depend on nothing else. Values are the published configs.
_ROBERTA_COMMON = dict(
    model_type="roberta",
    vocab_size=50265,
    max_position_embeddings=514,
    type_vocab_size=1,
    layer_norm_eps=1e-5,
    pad_token_id=1,
    bos_token_id=0,
    eos_token_id=2,
    hidden_act="gelu",
)
BUILTIN_CONFIGS: dict[str, dict[str, Any]] = {
    "roberta-base": dict(
        _ROBERTA_COMMON, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
    ),
    "roberta-large": dict(
        _ROBERTA_COMMON,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        layer_norm_eps=1e-5,
    ),
    "bert-base-uncased": dict(
        model_type="bert",
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
        type_vocab_size=2,
        pad_token_id=0,
    ),
    # the mpnet-cpu-teacher preset's model
    "sentence-transformers/all-mpnet-base-v2": dict(
        model_type="mpnet",
        vocab_size=30527,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        relative_attention_num_buckets=32,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        hidden_act="gelu",
    ),
}
# One common checkpoint per family. distilbert-base-uncased and ModernBERT-base are the config classes'
# defaults; the others are their published config.json values (the transformers defaults are other sizes).
BUILTIN_CONFIGS.update(
    {
        "xlm-roberta-base": dict(
            _ROBERTA_COMMON,
            model_type="xlm-roberta",
            vocab_size=250002,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
        ),
        "google/electra-base-discriminator": dict(
            model_type="electra",
            vocab_size=30522,
            embedding_size=768,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=0,
        ),
        "distilbert-base-uncased": dict(
            model_type="distilbert",
            vocab_size=30522,
            dim=768,
            n_layers=6,
            n_heads=12,
            hidden_dim=3072,
            max_position_embeddings=512,
            pad_token_id=0,
        ),
        "microsoft/deberta-v3-base": dict(
            model_type="deberta-v2",
            vocab_size=128100,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
            type_vocab_size=0,
            layer_norm_eps=1e-7,
            relative_attention=True,
            max_relative_positions=-1,
            position_buckets=256,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            pad_token_id=0,
            pooler_hidden_size=768,
            pooler_dropout=0.0,
            pooler_hidden_act="gelu",
        ),
        "answerdotai/ModernBERT-base": dict(
            model_type="modernbert",
            vocab_size=50368,
            hidden_size=768,
            intermediate_size=1152,
            num_hidden_layers=22,
            num_attention_heads=12,
            max_position_embeddings=8192,
            global_attn_every_n_layers=3,
            local_attention=128,
            pad_token_id=50283,
            bos_token_id=50281,
            eos_token_id=50282,
            cls_token_id=50281,
            sep_token_id=50282,
        ),
        "albert-base-v2": dict(
            model_type="albert",
            vocab_size=30000,
            embedding_size=128,
            hidden_size=768,
            num_hidden_layers=12,
            num_hidden_groups=1,
            inner_group_num=1,
            num_attention_heads=12,
            intermediate_size=3072,
            hidden_act="gelu_new",
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            max_position_embeddings=512,
            type_vocab_size=2,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
        ),
    }
)
# Other names of the same checkpoints: hub organisation names and short names.
ALIASES = {
    "FacebookAI/roberta-base": "roberta-base",
    "FacebookAI/roberta-large": "roberta-large",
    "google-bert/bert-base-uncased": "bert-base-uncased",
    "FacebookAI/xlm-roberta-base": "xlm-roberta-base",
    "distilbert/distilbert-base-uncased": "distilbert-base-uncased",
    "albert/albert-base-v2": "albert-base-v2",
    "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
}
BUILTIN_CONFIGS.update({alias: BUILTIN_CONFIGS[name] for alias, name in ALIASES.items()})
