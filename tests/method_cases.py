"""Every adapter method's settings for the tiny test models, shared by the method tables of
tests/test_methods.py and tests/test_families.py (a module of test data, not a test file)."""

# Settings small enough for the tiny models (hidden 32, 3 layers); every method with its own knobs.
METHOD_SETTINGS = {
    "lora": {"r": 4, "modules": ["query", "value", "output"]},
    "adalora": {"r": 4, "modules": ["query", "value"]},
    "vera": {"r": 16, "modules": ["query", "value", "intermediate"]},
    "vblora": {"r": 2, "modules": ["query", "value"], "options": {"num_vectors": 8, "vector_length": 16}},
    "tinylora": {"r": 2, "modules": ["query", "value"], "options": {"u": 8, "weight_tying": 0.5}},
    "fourierft": {"modules": ["query", "value"], "options": {"n_frequency": 20}},
    "ia3": {"modules": ["key", "value", "output"]},
    "loha": {"r": 2, "modules": ["query", "value"]},
    "lokr": {"r": 2, "modules": ["query", "value"]},
    "bitfit": {"modules": ["query", "attention_output", "output"]},
    "ln_tuning": {"modules": ["attention_output", "output"]},
    "full": {},
}
# Methods whose update is zero at initialisation (PEFT's defaults): the adapted model is the base.
IDENTITY_AT_INIT = {"lora", "adalora", "vera", "ia3", "loha", "lokr", "bitfit", "ln_tuning"}
