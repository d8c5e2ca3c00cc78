"""Where adapters go: the six short module names a placement uses, and where each lives inside one
encoder layer of the BERT family (BERT, RoBERTa, MPNet, MiniLM).

This is the one table of module paths; the budget breakdown, placement and the search space read it.
"""

# Short names of the linear layers an adapter can be placed on, in layer order.
MODULE_SHORT_NAMES = ("query", "key", "value", "attention_output", "intermediate", "output")

# Where each short module name lives inside one encoder layer.
LINEAR_PATHS = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attention_output": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}
# LayerNorms, named after the sublayer they close (ln_tuning and full fine-tuning use them).
NORM_PATHS = {
    "attention_output": "attention.output.LayerNorm",
    "output": "output.LayerNorm",
}
# Short names shown by the budget breakdown for LayerNorm sites.
NORM_SHORT = {"attention_output": "attention_norm", "output": "output_norm"}
